"""The optional native (C++) Wilson hopping kernel (bridge/fermions/_native.py) against the torch
reference kernels.  Skipped, with the reason, where the extension cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch

from bridge.fermions import WilsonDirac, _native, apply_gamma5, clover
from bridge.fermions.hopping import _TERMS, hop, hop_fused, hop_native
from bridge.gauge import random_gauge
from bridge.lattice import Lattice
from bridge.testing.reference import hop_gather_reference, schur5_reference

TOL = {torch.complex128: 1e-13, torch.complex64: 1e-5}
LATTICES = [(2, 2, 2, 2), (4, 4, 4, 4), (4, 4, 4, 8)]  # (x, y, z, t); the last is 4^3 x 8


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv(_native.ENV, "1")
    if not _native.available():
        pytest.skip(f"native hopping kernel not available: {_native._state['error']}")
    return _native


def _op(nrow, dtype, gen, batch=2, **kw) -> WilsonDirac:
    u = random_gauge(Lattice(nrow), "SU3", batch, generator=gen).to(dtype)
    return WilsonDirac(u, 0.13, **kw)


def _field(op: WilsonDirac, gen: torch.Generator, nrhs: int, eo: bool) -> torch.Tensor:
    shape = op.eo_shape(nrhs) if eo else op.field_shape(nrhs)
    return torch.randn(shape, dtype=torch.complex128, generator=gen).to(op.dtype)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _reference_hop(x5, links, geo, dagger):
    """``H`` (``dagger``: ``gamma_5 H gamma_5``) by the torch reference gather kernel."""
    if dagger:
        return apply_gamma5(hop_gather_reference(apply_gamma5(x5), links, geo))
    return hop_gather_reference(x5, links, geo)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("nrow", LATTICES)
@pytest.mark.parametrize("dagger", [False, True])
def test_eo_hop_matches_reference(native, cpu_generator, nrow, dtype, dagger):
    op = _op(nrow, dtype, cpu_generator)
    eo = op._eo_setup()
    x5 = op._in(_field(op, cpu_generator, 3, True), True)
    for target in (0, 1):
        links, geo = eo.links[target], eo.geo[target]
        got = hop_native(x5, links, geo, dagger)
        want = _reference_hop(x5, links, geo, dagger)
        assert _err(got, want) < TOL[dtype], (target, _err(got, want))
        # scale and fused add: scale H x + alpha y
        y5 = torch.randn_like(x5)
        got = hop_native(x5, links, geo, dagger, -0.3 + 0.2j, y5, 0.7)
        assert _err(got, (-0.3 + 0.2j) * want + 0.7 * y5) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("nrow", LATTICES)
@pytest.mark.parametrize("dagger", [False, True])
def test_full_hop_matches_reference(native, cpu_generator, nrow, dtype, dagger):
    op = _op(nrow, dtype, cpu_generator)
    p5 = op._in(_field(op, cpu_generator, 2, False))
    got = hop_native(p5, op._links, op._geo, dagger)
    want = _reference_hop(p5, op._links, op._geo, dagger)
    assert _err(got, want) < TOL[dtype]
    # and through the public method (native path) against the large-field fused torch kernel
    assert _err(hop(p5, op._links, op._geo), hop_fused(p5, op._links, op._geo)) < TOL[dtype]


def test_public_methods_native_vs_torch(native, monkeypatch, cpu_generator):
    """Every public operator method gives the same result with the native kernel and with the
    torch path (``QCD_BRIDGE_NATIVE=0``): boundary phases in all directions, batch, chroma
    normalisation."""
    op = _op((4, 2, 2, 4), torch.complex128, cpu_generator, batch=2,
             boundary=(1j, -1, 1, -1), normalisation="chroma")
    psi = _field(op, cpu_generator, 2, False)
    xo = _field(op, cpu_generator, 2, True)
    calls = [op.hopping, op.apply, op.apply_dagger, op.apply_normal]
    eo_calls = [op.hopping_eo, op.hopping_oe, op.schur, op.schur_dagger, op.schur_normal]
    got = [f(psi) for f in calls] + [f(xo) for f in eo_calls] + [op.schur_rhs(psi)]
    monkeypatch.setenv(_native.ENV, "0")
    assert not _native.usable(psi)
    want = [f(psi) for f in calls] + [f(xo) for f in eo_calls] + [op.schur_rhs(psi)]
    for i, (a, b) in enumerate(zip(got, want, strict=True)):
        assert _err(a, b) < 1e-13, i


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize("nrow", LATTICES)
@pytest.mark.parametrize("c_sw", [0.0, 1.7])
def test_schur_normal_identity(native, cpu_generator, nrow, dtype, c_sw):
    """``K^dag K`` through the native kernel equals the literal reference
    ``s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo)`` (torch kernels), with ``K^dag = g5 K g5``."""
    op = _op(nrow, dtype, cpu_generator, c_sw=c_sw, normalisation="chroma")
    xo = _field(op, cpu_generator, 2, True)
    x5 = op._in(xo, True)
    k = schur5_reference(op, x5)
    want = apply_gamma5(schur5_reference(op, apply_gamma5(k)))
    assert _err(op.schur_normal(xo), op._out(want)) < TOL[dtype]
    # the full operator D = s (A - kappa H), Wilson and clover
    psi = _field(op, cpu_generator, 1, False)
    p5 = op._in(psi)
    diag = p5 if op._a is None else clover.clover_apply(op._a, p5)
    d = diag - op.kappa * hop_fused(p5, op._links, op._geo)
    assert _err(op.apply(psi), op._out(d * op.scale)) < TOL[dtype]


def test_su2_and_u1(native, cpu_generator):
    """The kernel is templated on Nc = 1, 2, 3."""
    for group, nc in (("SU2", 2), ("U1", 1)):
        u = random_gauge(Lattice((2, 2, 2, 4)), group, 1, generator=cpu_generator)
        op = WilsonDirac(u, 0.12)
        x5 = op._in(torch.randn(op.eo_shape(2), dtype=torch.complex128, generator=cpu_generator),
                    True)
        eo = op._eo_setup()
        got = hop_native(x5, eo.links[1], eo.geo[1])
        want = hop_gather_reference(x5, eo.links[1], eo.geo[1])
        assert x5.shape[-1] == nc and _err(got, want) < 1e-13


def test_neighbour_table(native, cpu_generator):
    op = _op((4, 4, 4, 4), torch.complex128, cpu_generator, batch=1)
    nb = op._geo.native_index()
    assert nb.dtype == torch.int64 and nb.is_contiguous() and nb.numel() == 8 * 256
    assert len(_TERMS) == 8


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv(_native.ENV, "0")
    assert not _native.enabled()
    assert not _native.available()
    assert not _native.usable(torch.zeros(1, 4, 3, dtype=torch.complex128))


def test_build_failure_warns_once_and_falls_back(monkeypatch, cpu_generator, tmp_path):
    """A failed build warns once and every operator keeps working on the torch path."""
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: must build
    monkeypatch.setenv(_native.ENV, "1")
    monkeypatch.setattr(_native, "_state",
                        {"module": None, "tried": False, "seconds": None, "error": None})
    monkeypatch.setattr(cpp, "load_inline", broken)
    op = _op((2, 2, 2, 2), torch.complex128, cpu_generator, batch=1)
    xo = _field(op, cpu_generator, 1, True)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        got = op.schur_normal(xo)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = op.schur_normal(xo)
    assert not _native.available()
    assert torch.equal(got, again)
    x5 = op._in(xo, True)
    want = apply_gamma5(schur5_reference(op, apply_gamma5(schur5_reference(op, x5))))
    assert _err(got, op._out(want)) < 1e-13


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_torch_path(cpu_generator):
    assert not _native.usable(torch.zeros(1, 4, 3, dtype=torch.complex128, device="cuda"))
