"""The optional native (C++) gauge kernels (bridge/_native_gauge.py): the Wilson force and the
plaquette traces against the torch reference, the force against the derivative of the action,
the SU(3) link update against the torch Cayley-Hamilton form, the environment switch and the
fallback when the build fails.  Skipped, with the reason, where the extension cannot be built."""

from __future__ import annotations

import warnings

import pytest
import torch

from bridge import _native_gauge
from bridge import gauge as G
from bridge.gauge import loops as gauge_loops
from bridge.groups import _expm_su3, expm_algebra_mul, random_algebra
from bridge.lattice import Lattice
from bridge.testing import assert_force_matches_action

TOL = {torch.complex128: 1e-13, torch.complex64: 1e-5}
CASES = [  # (lattice, group)
    ((4, 4), "U1"),
    ((8, 6), "U1"),
    ((2, 2, 2, 2), "SU2"),
    ((4, 4, 4, 4), "SU3"),
    ((4, 4, 4, 8), "SU3"),  # (x, y, z, t): 4^3 x 8
]


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv(_native_gauge.ENV, "1")
    if not _native_gauge.available():
        pytest.skip(f"native gauge kernel not available: {_native_gauge._state['error']}")
    return _native_gauge


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _torch_traces(u: torch.Tensor, monkeypatch) -> torch.Tensor:
    with monkeypatch.context() as m:
        m.setenv(_native_gauge.ENV, "0")
        gauge_loops._TRACE_CACHE.clear()
        return G.plaquette_traces(u)


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
@pytest.mark.parametrize(("nrow", "group"), CASES)
def test_force_and_action_match_reference(native, monkeypatch, cpu_generator, nrow, group,
                                          dtype):
    u = G.random_gauge(Lattice(nrow), group, 2, generator=cpu_generator).to(dtype)
    beta = 5.5
    gauge_loops._TRACE_CACHE.clear()
    f = G.wilson_force(u, beta)
    assert f.dtype == dtype and f.shape == u.shape
    assert _native_gauge.usable(u)
    assert _err(f, G.wilson_force_reference(u, beta)) < TOL[dtype]
    # traces: the ones the force cached, and from scratch (traces-only kernel)
    want_tr = _torch_traces(u, monkeypatch)
    gauge_loops._TRACE_CACHE.clear()
    G.wilson_force(u, beta)
    cached = G.plaquette_traces(u)
    gauge_loops._TRACE_CACHE.clear()
    fresh = G.plaquette_traces(u)
    for tr in (cached, fresh):
        assert tr.dtype == want_tr.dtype and tr.shape == want_tr.shape
        assert float((tr - want_tr).abs().max()) < TOL[dtype]
    gauge_loops._TRACE_CACHE.clear()
    s = G.wilson_action(u, beta)
    with monkeypatch.context() as m:
        m.setenv(_native_gauge.ENV, "0")
        gauge_loops._TRACE_CACHE.clear()
        s_ref = G.wilson_action(u, beta)
    assert _err(s, s_ref) < TOL[dtype]


def test_tensor_beta_per_configuration(native, cpu_generator):
    u = G.random_gauge(Lattice((4, 4, 4, 4)), "SU3", 2, generator=cpu_generator)
    beta = torch.tensor([5.5, 6.1], dtype=torch.float64)
    assert _err(G.wilson_force(u, beta), G.wilson_force_reference(u, beta)) < 1e-13
    # a float64 beta would promote a complex64 force: that case keeps the torch path's dtype
    u32 = u.to(torch.complex64)
    got, want = G.wilson_force(u32, beta), G.wilson_force_reference(u32, beta)
    assert got.dtype == want.dtype and _err(got, want) < 1e-5
    # a float32 beta does not promote: native
    beta32 = beta.float()
    got = G.wilson_force(u32, beta32)
    assert got.dtype == torch.complex64 and _err(got, G.wilson_force_reference(u32, beta32)) < 1e-5


@pytest.mark.parametrize(("nrow", "group"), [((4, 4), "U1"), ((2, 2, 2, 2), "SU2"),
                                             ((2, 2, 2, 4), "SU3")])
def test_force_is_derivative_of_action(native, cpu_generator, nrow, group):
    """The native force against the finite-difference derivative of the native action (no
    autograd involved, so both come from the C++ kernel)."""
    u = G.random_gauge(Lattice(nrow), group, 2, generator=cpu_generator)
    beta = 2.7
    assert_force_matches_action(
        lambda v: G.wilson_action(v, beta), lambda v: G.wilson_force(v, beta), u,
        generator=cpu_generator, rtol=1e-8, method="fd", eps=1e-3, n_directions=2,
    )


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_expm_su3_mul_matches_torch(native, cpu_generator, dtype):
    shape = (2, 4, 4, 4, 4, 4)
    u = G.random_gauge(Lattice((4, 4, 4, 4)), "SU3", 2, generator=cpu_generator).to(dtype)
    x = random_algebra(3, shape, generator=cpu_generator, dtype=dtype)
    for scale in (0.1, -0.37, 2.0):
        got = expm_algebra_mul(x, u, scale)
        assert _err(got, _expm_su3(x, scale, u)) < TOL[dtype]
    # X = 0 is exactly the identity
    assert torch.equal(expm_algebra_mul(torch.zeros_like(x), u.contiguous(), 0.5),
                       u.contiguous())


def test_disabled_by_env(monkeypatch):
    monkeypatch.setenv(_native_gauge.ENV, "0")
    assert not _native_gauge.enabled()
    assert not _native_gauge.available()
    assert not _native_gauge.usable(torch.zeros(1, 4, 2, 3, 3, dtype=torch.complex128))


def test_autograd_takes_torch_path(native, cpu_generator):
    u = G.random_gauge(Lattice((2, 2)), "U1", 1, generator=cpu_generator).requires_grad_()
    assert not _native_gauge.usable(u)
    G.wilson_action(u, 1.0).sum().backward()
    assert u.grad is not None


def test_build_failure_warns_once_and_falls_back(monkeypatch, cpu_generator, tmp_path):
    """A failed build warns once; force, action and link update keep working (torch path)."""
    import torch.utils.cpp_extension as cpp

    def broken(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))  # an empty cache: must build
    monkeypatch.setenv(_native_gauge.ENV, "1")
    monkeypatch.setattr(_native_gauge, "_state",
                        {"module": None, "tried": False, "seconds": None, "error": None})
    monkeypatch.setattr(cpp, "load_inline", broken)
    u = G.random_gauge(Lattice((2, 2, 2, 2)), "SU3", 1, generator=cpu_generator)
    with pytest.warns(RuntimeWarning, match="could not be built"):
        f = G.wilson_force(u, 5.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = G.wilson_force(u, 5.5)
        gauge_loops._TRACE_CACHE.clear()
        G.wilson_action(u, 5.5)
        x = random_algebra(3, tuple(u.shape[:-2]), generator=cpu_generator)
        assert _err(expm_algebra_mul(x, u, 0.1), _expm_su3(x, 0.1, u)) < 1e-15
    assert not _native_gauge.available()
    assert torch.equal(f, again)
    assert _err(f, G.wilson_force_reference(u, 5.5)) < 1e-13


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_uses_torch_path():
    assert not _native_gauge.usable(torch.zeros(1, 4, 2, 3, 3, dtype=torch.complex128,
                                                device="cuda"))


@pytest.mark.parametrize("nrow,group", [((4, 4, 4, 4), "SU3"), ((2, 4, 6, 4), "SU3"),
                                        ((4, 2, 2, 2), "SU2"), ((2, 2, 4, 2), "U1")])
@pytest.mark.parametrize("t_dir", [3, 1])
def test_clover_energy_matches_torch(native, monkeypatch, cpu_generator, nrow, group, t_dir):
    """Chroma's ``(wflow_gact4i, wflow_gactij)`` by the native kernel against the clover field
    strength of the torch path (1e-12), batch 2; complex64 to single precision."""
    from bridge.observables.field_strength import energy_density, energy_density_split

    u = G.random_gauge(Lattice(nrow), group, 2, generator=cpu_generator)
    got = energy_density_split(u, t_dir=t_dir)
    with monkeypatch.context() as m:
        m.setenv(_native_gauge.ENV, "0")
        want = energy_density_split(u, t_dir=t_dir)
        total = energy_density(u)
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype == torch.float64 and _err(g, w) < 1e-12
    assert _err(got[0] + got[1], total) < 1e-12
    single = energy_density_split(u.to(torch.complex64), t_dir=t_dir)
    assert single[0].dtype == torch.float32 and _err(single[0].double(), want[0]) < 1e-5


def test_wilson_flow_native_equals_torch(native, monkeypatch, cpu_generator):
    """Ten RK3 steps of Chroma's WILSON_FLOW: the same flowed field and energies with the
    native kernels (force, exponential, clover energy) and on the torch path."""
    from bridge.observables import chroma_wilson_flow

    u = G.random_gauge(Lattice((4, 4, 4, 4)), "SU3", 1, generator=cpu_generator)
    got = chroma_wilson_flow(u, 10, 0.1)
    with monkeypatch.context() as m:
        m.setenv(_native_gauge.ENV, "0")
        want = chroma_wilson_flow(u, 10, 0.1)
    assert _err(got.U, want.U) < 1e-12
    assert _err(got.t2E, want.t2E) < 1e-12
    assert _err(got.wflow_gact4i, want.wflow_gact4i) < 1e-12


def test_flow_step_embedded_native_equals_torch(native, monkeypatch, cpu_generator):
    """The native RK3 step and its embedded second-order step against the torch stages (1e-12),
    batch 2; the embedded call's accepted field is the plain step, bit for bit."""
    from bridge.observables.wilson_flow import rk3_step, rk3_step_embedded

    u = G.random_gauge(Lattice((2, 4, 2, 4)), "SU3", 2, generator=cpu_generator)
    high, dist = rk3_step_embedded(u, 0.05)
    assert torch.equal(high, rk3_step(u, 0.05))
    with monkeypatch.context() as m:
        m.setenv(_native_gauge.ENV, "0")
        want_high, want_dist = rk3_step_embedded(u, 0.05)
    assert _err(high, want_high) < 1e-12
    assert _err(dist, want_dist) < 1e-9 and float(dist.min()) > 0
