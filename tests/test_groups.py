"""Group maths: Haar measure, exponential, projections, algebra normalisation, eigenphases."""

from __future__ import annotations

import math

import pytest
import torch

from bridge import groups as G
from bridge.testing import assert_in_group
from bridge.testing.reference import expm_su3_reference

GROUPS = ["U1", "SU2", "SU3", "SU4"]


def _tol(dtype, f64):
    return f64 if dtype == torch.complex128 else 5e-6


@pytest.mark.parametrize("group", GROUPS)
def test_haar_in_group(group, device, dtype, generator):
    u = G.haar(group, (500,), generator=generator, dtype=dtype, device=device)
    assert u.dtype == dtype and u.device.type == device.type
    assert_in_group(u, group, atol=_tol(dtype, 1e-13))


@pytest.mark.parametrize("group", ["SU2", "SU3", "SU4"])
def test_haar_moments_sun(group, cpu_generator):
    """E[Tr U] = 0 and E[|Tr U|^2] = 1 for Haar SU(N) (N >= 2), within 4 sigma on 1e5 samples."""
    n = 100_000
    tr = G.trace(G.haar(group, (n,), generator=cpu_generator))
    for part in (tr.real, tr.imag):
        assert abs(float(part.mean())) < 4 * float(part.std()) / math.sqrt(n)
    a2 = tr.abs() ** 2
    assert abs(float(a2.mean()) - 1.0) < 4 * float(a2.std()) / math.sqrt(n)
    # and not trivially so: second moment of the trace is far from that of a constant matrix
    assert float(a2.std()) > 0.5


def test_haar_moments_u1(cpu_generator):
    n = 100_000
    u = G.haar("U1", (n,), generator=cpu_generator)[..., 0, 0]
    for part in (u.real, u.imag):
        assert abs(float(part.mean())) < 4 * float(part.std()) / math.sqrt(n)


@pytest.mark.parametrize("group", GROUPS)
def test_random_algebra_normalisation(group, cpu_generator):
    """Density exp(-Tr P^dagger P): E[Tr P^dagger P] = dim/2 (dim = N^2 - 1, or 1 for U(1))."""
    g = G.get_group(group)
    n = 40_000
    p = G.random_algebra(g, (n,), generator=cpu_generator)
    assert torch.allclose(p, -G.dagger(p), atol=1e-15)
    if g.special:
        assert float(G.trace(p).abs().max()) < 1e-14
    ke = G.trace(G.dagger(p) @ p).real
    assert abs(float(ke.mean()) - g.dim / 2) < 4 * float(ke.std()) / math.sqrt(n)
    # Gaussian with the right variance in every direction: Var(Tr P^dag P) = dim/2
    assert abs(float(ke.var()) - g.dim / 2) < 0.05 * g.dim


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("scale", [1e-9, 0.3, 2.0, 7.0])
def test_expm_matches_matrix_exp(group, scale, device, dtype, generator):
    x = scale * G.random_algebra(group, (300,), generator=generator, dtype=dtype, device=device)
    e = G.expm_algebra(x)
    ref = torch.linalg.matrix_exp(x)
    tol = _tol(dtype, 1e-13) * max(1.0, scale)
    assert float((e - ref).abs().max()) < tol
    assert_in_group(e, group, atol=_tol(dtype, 1e-13) * max(1.0, scale))


def test_expm_su3_special_points():
    """Q = 0 (exact limit), degenerate spectra (c0 = +-c0max) and c0 < 0 all exact."""
    x = torch.zeros(4, 3, 3, dtype=torch.complex128)
    x[1] = 1j * torch.diag(torch.tensor([1.0, 1.0, -2.0]))  # c0 > 0, degenerate
    x[2] = -x[1]  # c0 < 0, degenerate
    x[3] = 1j * torch.diag(torch.tensor([0.5, -0.5, 0.0]))  # c0 = 0
    assert float((G.expm_algebra(x) - torch.linalg.matrix_exp(x)).abs().max()) < 1e-14


@pytest.mark.parametrize("group", ["SU2", "SU3", "SU4"])
def test_reunitarize_and_projection(group, cpu_generator):
    u = G.haar(group, (200,), generator=cpu_generator)
    noisy = u + 1e-3 * torch.randn(u.shape, dtype=u.dtype, generator=cpu_generator)
    for f in (G.reunitarize, G.project_to_group):
        v = f(noisy, group)
        assert_in_group(v, group, atol=1e-13)
        assert float((v - u).abs().max()) < 1e-2
        # an element of the group is a fixed point
        assert float((f(u, group) - u).abs().max()) < 1e-13


def test_project_algebra():
    m = torch.randn(50, 3, 3, dtype=torch.complex128)
    a = G.project_algebra(m)
    assert torch.allclose(a, -G.dagger(a)) and float(G.trace(a).abs().max()) < 1e-14
    assert torch.allclose(G.project_algebra(a), a)
    # U(1): anti-Hermitian part only, no trace removal
    z = torch.randn(10, 1, 1, dtype=torch.complex128)
    assert torch.allclose(G.project_algebra(z, "U1"), 1j * z.imag)


@pytest.mark.parametrize("group", ["SU2", "SU3"])
def test_eigenphases(group, cpu_generator):
    u = G.haar(group, (100,), generator=cpu_generator)
    th = G.eigenphases(u)
    assert torch.all(th[..., 1:] >= th[..., :-1])
    # sum of eigenphases is 0 mod 2 pi, and Tr U = sum exp(i theta)
    s = th.sum(-1)
    assert float(torch.remainder(s + math.pi, 2 * math.pi).sub(math.pi).abs().max()) < 1e-12
    assert torch.allclose(torch.exp(1j * th).sum(-1), G.trace(u), atol=1e-12)


@pytest.mark.parametrize(
    "name, expected",
    [("U1", G.U1), ("u(1)", G.U1), ("SU3", G.SU3), ("su(2)", G.SU2), (3, G.SU3)],
)
def test_get_group(name, expected):
    assert G.get_group(name) == expected
    assert G.get_group("SU5").nc == 5


@pytest.mark.parametrize(
    "bad, match",
    [("SO3", "expected 'U1', 'SU2'"), ("U2", r"only U\(1\)"), ("SU1", r"N >= 2"), (1, "N >= 2")],
)
def test_get_group_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        G.get_group(bad)


def test_bad_dtype_and_shape():
    with pytest.raises(ValueError, match="dtype: expected float64, float32"):
        G.haar("SU3", (2,), dtype=torch.int32)
    with pytest.raises(ValueError, match=r"x: expected square matrices .* got shape \(3, 2\)"):
        G.expm_algebra(torch.zeros(3, 2, dtype=torch.complex128))


@pytest.mark.parametrize("scale", [1e-9, 0.3, 2.0, 7.0])
def test_expm_su3_fast_matches_reference(scale, device, dtype, generator):
    """The optimised Cayley-Hamilton exponential (scalars in real arithmetic, scale folded in,
    assembled in place) against the straightforward reference, to rounding."""
    x = G.random_algebra("SU3", (4, 50), generator=generator, dtype=dtype, device=device)
    u = G.haar("SU3", (4, 50), generator=generator, dtype=dtype, device=device)
    ref = expm_su3_reference(scale * x)
    tol = _tol(dtype, 1e-13) * max(1.0, scale)
    assert float((G.expm_algebra(scale * x) - ref).abs().max()) < tol
    assert float((G.expm_algebra_mul(x, u, scale) - G.mm(ref, u)).abs().max()) < tol
    # the special points of test_expm_su3_special_points through the scaled path
    z = torch.zeros(3, 3, 3, dtype=dtype, device=device)
    z[1] = 1j * torch.diag(torch.tensor([1.0, 1.0, -2.0])).to(dtype)
    z[2] = -z[1]
    eye = torch.eye(3, dtype=dtype, device=device).expand(3, 3, 3)
    assert float((G.expm_algebra_mul(z, eye, scale) - expm_su3_reference(scale * z))
                 .abs().max()) < tol


@pytest.mark.parametrize("group", ["U1", "SU2", "SU4"])
def test_expm_algebra_mul_other_groups(group, generator):
    x = G.random_algebra(group, (40,), generator=generator)
    u = G.haar(group, (40,), generator=generator)
    ref = G.mm(G.expm_algebra(0.7 * x), u)
    assert float((G.expm_algebra_mul(x, u, 0.7) - ref).abs().max()) < 1e-13
