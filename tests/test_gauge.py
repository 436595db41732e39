"""Gauge-field operations: invariances, exact values, force = derivative of the action."""

from __future__ import annotations

import math

import pytest
import torch

from bridge import gauge as Gg
from bridge.gauge import loops as gauge_loops
from bridge.groups import reunitarize
from bridge.lattice import Lattice
from bridge.testing import (
    assert_force_matches_action,
    assert_gauge_covariant,
    assert_gauge_invariant,
    assert_in_group,
)

CASES = [
    ("U1", (4, 6)),
    ("SU2", (4, 6)),
    ("SU3", (4, 6)),
    ("U1", (2, 4, 2, 6)),
    ("SU2", (2, 4, 2, 6)),
    ("SU3", (2, 4, 2, 6)),
]


def _rough(lat, group, generator, device, dtype=torch.complex128, batch=2):
    """A configuration between cold and hot (plaquettes neither 0 nor 1)."""
    hot = Gg.random_gauge(lat, group, batch, generator=generator, device=device, dtype=dtype)
    cold = Gg.unit_gauge(lat, group, batch, device=device, dtype=dtype)
    return reunitarize(cold + 0.7 * hot, group)


@pytest.mark.parametrize("group, nrow", CASES)
def test_gauge_invariance(group, nrow, device, generator):
    lat = Lattice(nrow)
    u = _rough(lat, group, generator, device)
    assert_in_group(u, group, atol=1e-13)
    for fn in (
        lambda v: Gg.wilson_action(v, 2.3),
        Gg.plaquette_traces,
        lambda v: torch.stack([Gg.polyakov_loop(v, mu) for mu in range(lat.nd)]),
        lambda v: torch.stack(list(Gg.mesplq(v).planes.values())),
    ):
        assert_gauge_invariant(fn, u, generator=generator, atol=1e-12, rtol=1e-12)
    # the plaquette field and the force are covariant
    assert_gauge_covariant(lambda v: Gg.plaquette_field(v, 0, lat.nd - 1), u, generator=generator)
    assert_gauge_covariant(lambda v: Gg.wilson_force(v, 1.7), u, generator=generator)


@pytest.mark.parametrize("group, nrow", CASES)
def test_force_is_derivative_of_action(group, nrow, device, generator):
    lat = Lattice(nrow)
    u = _rough(lat, group, generator, device)
    beta = 2.7
    assert_force_matches_action(
        lambda v: Gg.wilson_action(v, beta), lambda v: Gg.wilson_force(v, beta), u,
        generator=generator, rtol=1e-8,
    )
    # the finite-difference route agrees too (4th-order central difference)
    assert_force_matches_action(
        lambda v: Gg.wilson_action(v, beta), lambda v: Gg.wilson_force(v, beta), u,
        generator=generator, rtol=1e-8, method="fd", eps=1e-3, n_directions=1,
    )


def test_force_check_detects_a_wrong_force(cpu_generator):
    lat = Lattice((4, 4))
    u = _rough(lat, "SU2", cpu_generator, "cpu")
    with pytest.raises(AssertionError, match="force vs directional derivative"):
        assert_force_matches_action(
            lambda v: Gg.wilson_action(v, 1.0), lambda v: 2 * Gg.wilson_force(v, 1.0), u,
            generator=cpu_generator,
        )


@pytest.mark.parametrize("group, nrow", CASES)
def test_unit_field(group, nrow, device, dtype):
    lat = Lattice(nrow)
    u = Gg.unit_gauge(lat, group, 3, device=device, dtype=dtype)
    assert u.dtype == dtype and u.device.type == device.type
    assert torch.all(Gg.wilson_action(u, 5.5) == 0)
    m = Gg.mesplq(u)
    for v in [m.w_plaq, m.t_plaq, m.link, *m.planes.values()] + ([m.s_plaq] if lat.nd > 2 else []):
        assert torch.allclose(v, torch.ones_like(v))
    assert torch.allclose(Gg.polyakov_loop(u), torch.ones(3, dtype=dtype, device=device))
    assert float(Gg.wilson_force(u, 5.5).abs().max()) == 0.0
    assert len(m.planes) == lat.nd * (lat.nd - 1) // 2
    assert (m.s_plaq is None) == (lat.nd == 2)


def test_constant_field_strength_u1(device):
    """U_x(x, t) = exp(i 2 pi t / L): every plaquette is exp(-2 pi i / L) exactly."""
    L = 6
    lat = Lattice((L, L))
    u = Gg.unit_gauge(lat, "U1", 1, device=device)
    t = lat.coordinates(device)[1]
    u[0, 0, ..., 0, 0] = torch.exp(2j * math.pi * t / L)
    p = Gg.plaquette_field(u, 0, 1)[0, ..., 0, 0]
    assert torch.allclose(p, torch.full_like(p, complex(math.cos(2 * math.pi / L),
                                                        -math.sin(2 * math.pi / L))))
    assert torch.allclose(Gg.wilson_action(u, 2.0),
                          torch.tensor([2.0 * L * L * (1 - math.cos(2 * math.pi / L))],
                                       dtype=torch.float64, device=device))
    # Polyakov loop along x: prod_x exp(2 pi i t / L) = exp(2 pi i t); along t: 1
    assert torch.allclose(Gg.polyakov_loop(u, 1), torch.ones(1, dtype=u.dtype, device=device))


def test_normalisations(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = _rough(lat, "SU3", cpu_generator, "cpu")
    m = Gg.mesplq(u)
    assert torch.allclose(Gg.seed_plaquette(u), 6 * m.w_plaq)
    assert torch.allclose((m.s_plaq + m.t_plaq) / 2, m.w_plaq)
    for mu in range(4):
        assert torch.allclose(Gg.polyakov_loop(u, mu, "seed"), 3 * Gg.polyakov_loop(u, mu))
    # the action is beta * sum (1 - plaq): S = beta V n_planes (1 - w_plaq)
    assert torch.allclose(Gg.wilson_action(u, 5.5), 5.5 * lat.volume * 6 * (1 - m.w_plaq))


def test_batched_beta():
    lat = Lattice((4, 4))
    g = torch.Generator().manual_seed(5)
    u = _rough(lat, "U1", g, "cpu", batch=3)
    beta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    s = Gg.wilson_action(u, beta)
    f = Gg.wilson_force(u, beta)
    for i in range(3):
        assert torch.allclose(s[i], Gg.wilson_action(u[i : i + 1], float(beta[i]))[0])
        assert torch.allclose(f[i], Gg.wilson_force(u[i : i + 1], float(beta[i]))[0])


def test_bad_input():
    lat = Lattice((4, 4))
    u = Gg.unit_gauge(lat, "SU3")
    with pytest.raises(ValueError, match=r"omega: expected shape \(1, 4, 4, 3, 3\)"):
        Gg.gauge_transform(u, torch.zeros(1, 4, 4, 2, 2, dtype=u.dtype))
    with pytest.raises(ValueError, match="beta: expected a finite number, got nan"):
        Gg.wilson_action(u, float("nan"))
    with pytest.raises(ValueError, match="nu: a plaquette needs two different directions"):
        Gg.plaquette_field(u, 1, 1)
    with pytest.raises(ValueError, match="normalisation: expected 'chroma' or 'seed'"):
        Gg.polyakov_loop(u, normalisation="paper")
    with pytest.raises(ValueError, match="batch: expected a positive integer, got 0"):
        Gg.unit_gauge(lat, "SU3", 0)
    with pytest.raises(ValueError, match=r"U: axis 1 must hold Nd = 2 directions"):
        Gg.mesplq(torch.zeros(1, 3, 4, 4, 3, 3, dtype=torch.complex128))


@pytest.mark.parametrize("all_planes", [0, 10**9], ids=["plane_by_plane", "all_planes"])
@pytest.mark.parametrize("group, nrow", CASES)
def test_wilson_force_fast_matches_reference(group, nrow, all_planes, device, dtype, generator,
                                             monkeypatch):
    """Both optimised force kernels against the reference (sum of plaquette_loops, then
    project_algebra), float64 to 1e-13 and complex64 to 1e-5, scalar and per-chain beta."""
    monkeypatch.setattr(gauge_loops, "_ALL_PLANES_MAX_SITES", all_planes)
    lat = Lattice(nrow)
    u = _rough(lat, group, generator, device, dtype=dtype)
    tol = 1e-13 if dtype == torch.complex128 else 1e-5
    for beta in (5.5, torch.tensor([5.5, 1.25], dtype=torch.float64, device=device)):
        f = Gg.wilson_force(u, beta)
        ref = Gg.wilson_force_reference(u, beta)
        assert f.dtype == ref.dtype and f.shape == ref.shape
        assert float((f - ref).abs().max()) < tol
    # the plaquette traces, fresh and left behind by the force, against the direct definition
    direct = torch.stack([(Gg.plaquette_field(u, mu, nu).diagonal(dim1=-2, dim2=-1).sum(-1).real
                           / u.shape[-1]) for mu, nu in lat.planes()], dim=1)
    assert float((Gg.plaquette_traces(u) - direct).abs().max()) < tol
    assert float((Gg.plaquette_traces(u.clone()) - direct).abs().max()) < tol


@pytest.mark.parametrize("all_planes", [0, 10**9], ids=["plane_by_plane", "all_planes"])
def test_action_cache_is_exact_and_invalidated(all_planes, generator, monkeypatch):
    """The action left behind by the force equals, bit for bit, the one computed from scratch
    (restarted chains depend on it); an in-place change of U invalidates it."""
    monkeypatch.setattr(gauge_loops, "_ALL_PLANES_MAX_SITES", all_planes)
    lat = Lattice((4, 4, 4, 4))
    u = _rough(lat, "SU3", generator, torch.device("cpu"))
    fresh = Gg.wilson_action(u.clone(), 5.5)
    Gg.wilson_force(u, 5.5)
    assert torch.equal(Gg.wilson_action(u, 5.5), fresh)
    assert torch.equal(Gg.mesplq(u).w_plaq, Gg.mesplq(u.clone()).w_plaq)
    before = Gg.wilson_action(u, 5.5)
    u[:, 0] = u[:, 1]
    after = Gg.wilson_action(u, 5.5)
    assert not torch.equal(after, before)
    assert torch.equal(after, Gg.wilson_action(u.clone(), 5.5))


@pytest.mark.parametrize("extent", [1, 2, 3, 4, 5, 6, 7, 8])
def test_polyakov_line_by_doubling_equals_the_ordered_product(extent):
    # the doubling product against the plain ordered product of the extent's links
    lat = Lattice((2, 3, extent))
    u = Gg.random_gauge(lat, "SU3", 2, generator=torch.Generator().manual_seed(extent))
    link = u[:, 2]
    ref, shifted = link, link
    for _ in range(extent - 1):
        shifted = lat.shift(shifted, 2)
        ref = ref @ shifted
    got = gauge_loops._line_product(link, lat, 2, extent)
    torch.testing.assert_close(got, ref, atol=1e-13, rtol=0)
    with pytest.raises(ValueError, match="n: expected a number of links >= 1, got 0"):
        gauge_loops._line_product(link, lat, 2, 0)
