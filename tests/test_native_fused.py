"""The fused native paths of the Wilson Nf = 2 HMC against the torch reference paths: the whole
conjugate gradient on ``K^dag K`` in one call, the Schur-operator force bilinear, the even-odd
hop links, an HMC chain with and without the native kernels, and the build cache of
bridge/_native_build.py.  Skipped, with the reason, where the extension cannot be built."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from bridge import _native_build
from bridge.errors import ConvergenceError
from bridge.fermions import WilsonDirac, _native
from bridge.fermions.forces import hop_bilinear_directional
from bridge.fermions.hopping import kernel_links
from bridge.fermions.pseudofermion import TwoFlavorEOPrecWilsonMonomial
from bridge.gauge import random_gauge
from bridge.lattice import Lattice
from bridge.mcmc.hmc import hmc_kernel
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.solvers import CG


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv(_native.ENV, "1")
    if not _native.available():
        pytest.skip(f"native hopping kernel not available: {_native._state['error']}")
    return _native


def _op(nrow, gen, batch=2, dtype=torch.complex128, **kw) -> WilsonDirac:
    u = random_gauge(Lattice(nrow), "SU3", batch, generator=gen).to(dtype)
    return WilsonDirac(u, 0.12, normalisation="chroma", **kw)


def _field(op: WilsonDirac, gen: torch.Generator, nrhs: int) -> torch.Tensor:
    return torch.randn(op.eo_shape(nrhs), dtype=torch.complex128, generator=gen).to(op.dtype)


def _err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _both(monkeypatch, fn):
    """``fn()`` with the native kernels, then on the torch path."""
    monkeypatch.setenv(_native.ENV, "1")
    got = fn()
    monkeypatch.setenv(_native.ENV, "0")
    want = fn()
    monkeypatch.setenv(_native.ENV, "1")
    return got, want


@pytest.mark.parametrize("nrow", [(4, 4, 4, 4), (2, 4, 2, 6)])
@pytest.mark.parametrize("guess", [False, True])
def test_fused_cg_equals_python_cg(native, monkeypatch, cpu_generator, nrow, guess):
    """Same solution (1e-12), the same iteration count per system (a batch of 2 configurations
    x 3 right-hand sides), operator applications, restarts and residuals."""
    op = _op(nrow, cpu_generator, boundary=(1, -1, 1j, -1))
    b, x0 = _field(op, cpu_generator, 3), _field(op, cpu_generator, 3)
    a = op.linear_operator("schur_normal")
    assert a.fused_cg(b, None, 1e-10, 100, 5) is not None  # the fused path is taken

    def solve():
        return CG(tol=1e-10).solve(a, b, x0 if guess else None)

    (x1, s1), (x2, s2) = _both(monkeypatch, solve)
    assert _err(x1, x2) < 1e-12
    assert torch.equal(s1.iterations_per_system, s2.iterations_per_system)
    assert s1.iterations_per_system.shape == (6,) and s1.iterations > 10
    assert (s1.operator_applications, s1.restarts) == (s2.operator_applications, s2.restarts)
    assert s1.converged and s2.converged
    assert torch.allclose(s1.residuals, s2.residuals, rtol=1e-3, atol=0)
    # the solution solves the system
    r = b - a(x1)
    assert float(r.abs().max() / b.abs().max()) < 1e-9


def test_fused_cg_limits_and_fallbacks(native, monkeypatch, cpu_generator):
    """``max_iter``: the same ConvergenceError (or, without raising, the same unconverged
    stats); clover and complex64 operators take the Python loop."""
    op = _op((4, 4, 2, 2), cpu_generator, batch=1)
    b = _field(op, cpu_generator, 1)
    a = op.linear_operator("schur_normal")
    msgs = []
    for flag in ("1", "0"):
        monkeypatch.setenv(_native.ENV, flag)
        with pytest.raises(ConvergenceError, match="did not converge") as info:
            CG(tol=1e-12, max_iter=4).solve(a, b)
        msgs.append(str(info.value).split("reached")[0])
    assert msgs[0] == msgs[1]

    def quiet():
        return CG(tol=1e-12, max_iter=4, raise_on_failure=False).solve(a, b)

    (x1, s1), (x2, s2) = _both(monkeypatch, quiet)
    assert not s1.converged and s1.iterations == s2.iterations == 4
    assert _err(x1, x2) < 1e-12
    clover = _op((2, 2, 2, 2), cpu_generator, batch=1, c_sw=1.5)
    assert clover.linear_operator("schur_normal").fused_cg(
        _field(clover, cpu_generator, 1), None, 1e-8, 10, 1) is None
    single = op.to(torch.complex64).linear_operator("schur_normal")
    assert single.fused_cg(b.to(torch.complex64), None, 1e-5, 10, 1) is None
    assert op.linear_operator("DdagD").fused_cg(b, None, 1e-8, 10, 1) is None


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64])
def test_native_schur_force_equals_torch(native, monkeypatch, cpu_generator, dtype):
    """``G_K(X, Y)`` of the native kernel against the torch path (gather form) and against the
    direction-by-direction form of the full-lattice bilinear; boundary phases, 2 x 2 fields."""
    op = _op((4, 2, 2, 4), cpu_generator, dtype=dtype, boundary=(1j, 1, -1, -1))
    xo, yo = _field(op, cpu_generator, 2), _field(op, cpu_generator, 2)
    got, want = _both(monkeypatch, lambda: op.schur_force_bilinear(xo, yo))
    tol = 1e-12 if dtype == torch.complex128 else 1e-5
    assert _err(got, want) < tol
    eo = op._eo_setup()
    x5, y5 = op._in(xo, True), op._in(yo, True)
    monkeypatch.setenv(_native.ENV, "0")
    ze, we = eo.hop(x5, 0), eo.hop(y5, 0, dagger=True)
    direct = hop_bilinear_directional(op._links, op._geo, eo.merge(ze, x5), eo.merge(we, y5))
    assert _err(got, -(op.kappa**2) * op.scale * direct) < tol


def test_native_eo_links_equal_kernel_links(native, cpu_generator):
    """The one-pass even-odd links are the same numbers as the term-by-term torch build."""
    for group in ("SU3", "SU2", "U1"):
        u = random_gauge(Lattice((2, 4, 2, 6)), group, 2, generator=cpu_generator)
        op = WilsonDirac(u, 0.1, boundary=(1, 1j, 1, -1))
        eo = op._eo_setup()
        parts = eo.split(op._uph)
        for p in (0, 1):
            ref = kernel_links(parts[p], parts[1 - p], eo.geo[p])
            assert torch.equal(ref.stacked(), eo.links[p].stacked())
            assert all(torch.equal(ref[k], eo.links[p][k]) for k in range(8))


def _chain(seed: int) -> list[tuple[float, float, int]]:
    lat = Lattice((4, 4, 4, 4))
    mons = [TwoFlavorEOPrecWilsonMonomial(0.12, predictor="last_solution"), GaugeMonomial(5.0)]
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 4, mons)]), 0.5)
    u0 = random_gauge(lat, "SU3", 1, generator=torch.Generator().manual_seed(seed))
    st = k.init(u0, seed=seed)
    out = []
    for _ in range(3):
        st, info = k.step(st)
        out.append((float(info.delta_h[0]), float(info.w_plaq[0]), info.solver_iterations))
    return out


def test_hmc_chain_native_equals_torch(native, monkeypatch):
    """Three Nf = 2 trajectories from the same seed: the same deltaH and plaquette to rounding
    and the same CG iteration counts with the native kernels and on the torch path."""
    got, want = _both(monkeypatch, lambda: _chain(5))
    for (dh1, p1, n1), (dh2, p2, n2) in zip(got, want, strict=True):
        assert abs(dh1 - dh2) < 1e-8 and abs(p1 - p2) < 1e-12 and n1 == n2
    assert all(n > 0 for _, _, n in got)


def test_build_message_and_cache(native, monkeypatch, tmp_path, capfd):
    """A first build says on one stderr line what it compiles and roughly for how long; a
    library whose key matches is loaded without the build tool; another source rebuilds."""
    import torch.utils.cpp_extension as cpp

    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    calls = []

    def fake_load_inline(*, name, build_directory, **kwargs):
        calls.append(name)
        real = _native._state["module"]
        # stand in for the compiler: reuse the library this process already loaded
        import shutil

        shutil.copy(real.__file__, f"{build_directory}/{name}.so")
        return real

    monkeypatch.setattr(cpp, "load_inline", fake_load_inline)
    src, fns, name = _native._source(), list(_native._FUNCTIONS), _native._NAME
    state = _native_build.new_state()
    assert _native_build.build(state, name, src, fns, "test kernel")
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "compiling the native test kernel" in err[0]
    assert _native_build.BUILD_SECONDS_HINT in err[0] and str(tmp_path) in err[0]
    assert len(calls) == 1
    # a second process: loaded from the cache, silently, no build (a real process: loading a
    # copy of an extension this process already holds would map it twice, which crashes at exit)
    code = (
        "import torch.utils.cpp_extension as cpp\n"
        "def no_build(**kw):\n    raise SystemExit('built again')\n"
        "cpp.load_inline = no_build\n"
        "from bridge import _native_build\n"
        "from bridge.fermions import _native\n"
        f"mod = _native_build.build(_native_build.new_state(), {name!r}, _native._source(), "
        "list(_native._FUNCTIONS), 'test kernel')\n"
        "assert mod is not None and hasattr(mod, 'cg_schur_normal')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env={**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)})
    assert out.returncode == 0 and out.stderr == "", out.stderr[-2000:]
    assert len(calls) == 1
    capfd.readouterr()
    # a changed source is built again
    state = _native_build.new_state()
    _native_build.build(state, name, src + "\n// v2\n", fns, "test kernel")
    assert len(calls) == 2 and "compiling" in capfd.readouterr().err


def test_monomial_finite_check():
    """The monomial's one-scalar finiteness check raises for a NaN or an infinity anywhere
    (real or imaginary part) and passes finite fields through unchanged."""
    from bridge.errors import PhysicsError

    m = TwoFlavorEOPrecWilsonMonomial(0.1)
    f = torch.zeros(1, 4, 2, 2, 2, 2, 3, 3, dtype=torch.complex128)
    assert m._check_finite("force", f) is f
    for bad in (complex(float("nan"), 0), complex(0, float("inf")), complex(-float("inf"), 1)):
        g = f.clone()
        g[0, 2, 1, 0, 1, 1, 2, 0] = bad
        with pytest.raises(PhysicsError, match="wilson_two_flav: the force is not finite"):
            m._check_finite("force", g)
    with pytest.raises(PhysicsError, match="the action is not finite"):
        m._check_finite("action", torch.tensor([1.0, float("nan")], dtype=torch.float64))


def test_fused_cg_zero_rhs_and_breakdown(native, monkeypatch, cpu_generator):
    """A zero right-hand side next to a random one converges at once (x = 0) as in the Python
    loop; a NaN link makes <p, A p> not positive: both paths raise the same breakdown error."""
    op = _op((2, 2, 4, 2), cpu_generator, batch=1)
    b = _field(op, cpu_generator, 2)
    b[1] = 0
    a = op.linear_operator("schur_normal")
    (x1, s1), (x2, s2) = _both(monkeypatch, lambda: CG(tol=1e-10).solve(a, b))
    assert torch.equal(x1[1], torch.zeros_like(x1[1])) and _err(x1, x2) < 1e-12
    assert s1.iterations_per_system.tolist() == s2.iterations_per_system.tolist()
    assert s1.iterations_per_system[1] == 0 and s1.converged
    u = op.U.clone()
    u[0, 2, 1, 0, 1, 0, 0, 0] = float("nan")
    bad = WilsonDirac(u, 0.12, normalisation="chroma").linear_operator("schur_normal")
    msgs = []
    for flag in ("1", "0"):
        monkeypatch.setenv(_native.ENV, flag)
        with pytest.raises(ConvergenceError, match="CG broke down at iteration 0") as info:
            CG(tol=1e-10).solve(bad, b[:1])
        msgs.append(str(info.value))
    assert msgs[0] == msgs[1] and "batch entry 0" in msgs[0]
