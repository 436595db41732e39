"""The PyQUDA adapter without PyQUDA: the even-odd layout against an independent loop
implementation and a hand-checked 2^4 example, round trips, the composition of a full-operator
inverse into every operator view (checked against the project's CG), the residual check, and the
messages when PyQUDA or cupy is missing.  The PyQUDA calls themselves need PyQUDA and a GPU and
are not run here (docs/quda.md)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from bridge.errors import ConfigError, ConvergenceError, FormatError
from bridge.fermions.wilson import WilsonDirac
from bridge.gauge.fields import random_gauge
from bridge.io.dlpack import as_torch, require_cupy, to_cupy
from bridge.io.pyquda import (
    InverseSolver,
    PyQudaSolver,
    evenodd_to_lexico,
    fermion_from_pyquda,
    fermion_to_pyquda,
    gauge_from_pyquda,
    gauge_to_pyquda,
    require_pyquda,
)
from bridge.lattice import Lattice
from bridge.solvers import CG


def _loop_evenodd(u: np.ndarray) -> np.ndarray:
    """PyQUDA's documented layout written out site by site: the site (x, y, z, t) goes to
    parity (x + y + z + t) % 2 at (t, z, y, x // 2)."""
    lt, lz, ly, lx = u.shape[-6:-2]
    out = np.zeros((*u.shape[:-6], 2, lt, lz, ly, lx // 2, *u.shape[-2:]), u.dtype)
    for t in range(lt):
        for z in range(lz):
            for y in range(ly):
                for x in range(lx):
                    out[..., (x + y + z + t) % 2, t, z, y, x // 2, :, :] = u[..., t, z, y, x, :, :]
    return out


def _labelled(shape: tuple[int, ...]) -> np.ndarray:
    """Every entry distinct, so that any misplaced element shows."""
    n = int(np.prod(shape))
    return (np.arange(n) + 1j * np.arange(n, 2 * n)).reshape(shape)


def test_gauge_layout_matches_a_hand_checked_2x2x2x2_example():
    # U[mu, t, z, y, x, a, b] with one number per site: 1000 t + 100 z + 10 y + x
    u = np.zeros((4, 2, 2, 2, 2, 1, 1))
    for t, z, y, x in np.ndindex(2, 2, 2, 2):
        u[:, t, z, y, x] = 1000 * t + 100 * z + 10 * y + x
    eo = gauge_to_pyquda(u)
    assert eo.shape == (4, 2, 2, 2, 2, 1, 1, 1)
    # worked out by hand: within a parity, x // 2 = 0 holds the one x of that parity on the row
    # (t, z, y); even rows (t + z + y even) put x = 0 on parity 0, odd rows x = 1
    expected = {  # (parity, t, z, y) -> site label
        (0, 0, 0, 0): 0, (1, 0, 0, 0): 1,          # row t=z=y=0: x=0 even, x=1 odd
        (0, 0, 0, 1): 11, (1, 0, 0, 1): 10,        # y=1: x=1 is even (1+1), x=0 odd
        (0, 0, 1, 0): 101, (1, 0, 1, 0): 100,
        (0, 0, 1, 1): 110, (1, 0, 1, 1): 111,
        (0, 1, 0, 0): 1001, (1, 1, 0, 0): 1000,
        (0, 1, 0, 1): 1010, (1, 1, 0, 1): 1011,
        (0, 1, 1, 0): 1100, (1, 1, 1, 0): 1101,
        (0, 1, 1, 1): 1111, (1, 1, 1, 1): 1110,
    }
    for (p, t, z, y), label in expected.items():
        assert (eo[:, p, t, z, y, 0, 0, 0] == label).all(), (p, t, z, y)
    np.testing.assert_array_equal(gauge_from_pyquda(eo), u)


@pytest.mark.parametrize("nrow", [(2, 2, 2, 2), (4, 2, 6, 2), (6, 4, 2, 8)])
def test_layout_matches_the_loop_implementation_and_round_trips(nrow):
    lat = Lattice(nrow)
    u = _labelled((4, *lat.shape, 3, 3))
    eo = gauge_to_pyquda(u)
    np.testing.assert_array_equal(eo, _loop_evenodd(u))
    np.testing.assert_array_equal(gauge_from_pyquda(eo), u)
    batched = _labelled((3, 4, *lat.shape, 3, 3))  # a batch keeps its leading axis
    np.testing.assert_array_equal(gauge_to_pyquda(batched)[2], _loop_evenodd(batched[2]))
    psi = _labelled((*lat.shape, 4, 3))
    f = fermion_to_pyquda(psi)
    assert f.shape == (2, *lat.shape[:3], lat.shape[3] // 2, 4, 3)
    np.testing.assert_array_equal(f, _loop_evenodd(psi))
    np.testing.assert_array_equal(fermion_from_pyquda(f), psi)
    # and from the even-odd side: any array in PyQUDA's layout comes back unchanged
    g = _labelled((4, 2, *lat.shape[:3], lat.shape[3] // 2, 3, 3))
    np.testing.assert_array_equal(gauge_to_pyquda(gauge_from_pyquda(g)), g)


def test_torch_tensors_keep_library_dtype_and_values(cpu_generator):
    u = random_gauge(Lattice((4, 2, 2, 4)), "SU3", 2, generator=cpu_generator,
                     dtype=torch.complex64)
    eo = gauge_to_pyquda(u)
    assert isinstance(eo, torch.Tensor) and eo.dtype == torch.complex64
    assert eo.shape == (2, 4, 2, 4, 2, 2, 2, 3, 3)
    np.testing.assert_array_equal(eo.numpy(), _loop_evenodd(u.numpy()))
    assert torch.equal(gauge_from_pyquda(eo), u)
    psi = torch.randn(3, 4, 2, 2, 4, 4, 3, dtype=torch.complex128, generator=cpu_generator)
    assert torch.equal(fermion_from_pyquda(fermion_to_pyquda(psi)), psi)
    # the parity of a site is Lattice's (x + y + z + t) % 2, as in the project's Schur fields
    lat = Lattice((4, 2, 2, 4))
    wd = WilsonDirac(random_gauge(lat, "SU3", 1, generator=cpu_generator), 0.1)
    even, odd = wd.split(psi[:1])
    eo_psi = fermion_to_pyquda(psi[0])
    assert torch.equal(eo_psi[0], even[0]) and torch.equal(eo_psi[1], odd[0])


@pytest.mark.parametrize("call, arg, message", [
    (gauge_to_pyquda, np.zeros((4, 2, 2, 2, 3, 3, 3)), "gauge field: the even-odd layout halves "
     "x; expected an even x extent, got lattice (t, z, y, x) = (2, 2, 2, 3)"),
    (gauge_to_pyquda, np.zeros((2, 2, 2, 2, 3, 3)), "gauge field: expected U[(batch,) mu, t, z, "
     "y, x, a, b], got shape (2, 2, 2, 2, 3, 3)"),
    (fermion_from_pyquda, np.zeros((3, 2, 2, 2, 1, 4, 3)), "PyQUDA fermion field: expected a "
     "parity axis of length 2 before (t, z, y, x // 2), got shape (3, 2, 2, 2, 1, 4, 3)"),
    (evenodd_to_lexico, [[1]], "field: expected lattice axes followed by 2 matrix/spin-colour "
     "axes"),
    (fermion_to_pyquda, "text", "fermion field: expected psi[(batch,) t, z, y, x, spin, colour], "
     "got shape ()"),
])
def test_layout_errors_name_the_field_and_shape(call, arg, message):
    with pytest.raises(FormatError) as exc:
        call(arg)
    assert message in str(exc.value)


def _cg_inverse(wd: WilsonDirac, b: torch.Tensor) -> torch.Tensor:
    """An independent ``D^{-1}``: the project's CG on the normal equations."""
    return wd.solve(b, solver=CG(tol=1e-13, max_iter=5000), method="normal")[0]


@pytest.mark.parametrize("c_sw, normalisation", [(0.0, "kappa"), (1.3, "chroma")])
@pytest.mark.parametrize("kind", ["D", "Ddag", "DdagD", "schur", "schur_dagger",
                                  "schur_normal"])
def test_inverse_solver_composes_every_operator_view(kind, c_sw, normalisation, cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = random_gauge(lat, "SU3", 2, generator=cpu_generator)
    wd = WilsonDirac(u, 0.11, c_sw=c_sw, normalisation=normalisation)
    shape = wd.eo_shape(1) if kind.startswith("schur") else wd.field_shape(1)
    b = torch.randn(shape, dtype=torch.complex128, generator=cpu_generator)
    view = wd.linear_operator(kind)
    x, stats = InverseSolver(_cg_inverse, tol=1e-9).solve(view, b)
    assert stats.converged and stats.residual < 1e-9
    assert stats.iterations == (2 if kind.endswith("normal") or kind == "DdagD" else 1)
    dense = wd.dense(kind)  # an independent reference: the dense solve
    ref = torch.linalg.solve(dense, b.reshape(2, -1, 1)).reshape(b.shape)
    torch.testing.assert_close(x, ref, rtol=0, atol=1e-8)


def test_inverse_solver_reports_a_wrong_inverse_and_a_foreign_operator(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    wd = WilsonDirac(random_gauge(lat, "SU3", 1, generator=cpu_generator), 0.11)
    b = torch.randn(wd.field_shape(), dtype=torch.complex128, generator=cpu_generator)
    twice = InverseSolver(lambda w, v: 2 * _cg_inverse(w, v), tol=1e-8, name="QUDA-like")
    with pytest.raises(ConvergenceError, match=r"QUDA-like \(D\): the solution misses the "
                       r"relative residual 1e-07 \(tol 1e-08 x tolerance_factor 10\) of the "
                       r"project's operator: 1 "):
        twice.solve(wd.linear_operator("D"), b)
    with pytest.raises(ConfigError, match="inverse: expected a WilsonDirac operator view"):
        InverseSolver(_cg_inverse).solve(lambda v: v, b)
    with pytest.raises(ConfigError, match="inverse: tol: expected a relative residual in "
                       r"\(0, 1\), got 0"):
        InverseSolver(_cg_inverse, tol=0)


def test_missing_pyquda_names_the_extra(monkeypatch, cpu_generator):
    monkeypatch.setitem(sys.modules, "pyquda", None)  # an import of it fails, installed or not
    with pytest.raises(ConfigError) as exc:
        require_pyquda()
    assert "the QUDA solver back end needs PyQUDA, which cannot be imported" in str(exc.value)
    assert "install it with pip install qcd-bridge[quda]" in str(exc.value)
    wd = WilsonDirac(random_gauge(Lattice((2, 2, 2, 2)), "SU3", 1, generator=cpu_generator),
                     0.1)
    solver = PyQudaSolver(tol=1e-9, max_iter=100)  # constructing it needs no PyQUDA
    with pytest.raises(ConfigError, match=r"pip install qcd-bridge\[quda\]"):
        solver.solve(wd.linear_operator("D"), torch.zeros(wd.field_shape(),
                                                          dtype=torch.complex128))
    with pytest.raises(ConfigError, match="PyQUDA: max_iter: expected a positive integer, got 0"):
        PyQudaSolver(max_iter=0)


def test_dlpack_views_and_the_missing_cupy_message(monkeypatch):
    a = np.arange(6.0).reshape(2, 3)
    t = as_torch(a)
    t[0, 0] = 7.0  # a view: the numpy array sees the write
    assert a[0, 0] == 7.0 and as_torch(t) is t
    with pytest.raises(ConfigError, match="as_torch: expected a torch tensor, a numpy array or "
                       "a DLPack array"):
        as_torch([1, 2])
    monkeypatch.setitem(sys.modules, "cupy", None)
    with pytest.raises(ConfigError) as exc:
        require_cupy()
    assert "cupy interop needs cupy, which cannot be imported" in str(exc.value)
    assert "install it with pip install qcd-bridge[gpu]" in str(exc.value)
    with pytest.raises(ConfigError, match=r"pip install qcd-bridge\[gpu\]"):
        to_cupy(torch.zeros(2))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and cupy")
def test_dlpack_round_trip_shares_gpu_memory():
    cupy = pytest.importorskip("cupy")
    t = torch.arange(12, dtype=torch.float64, device="cuda").reshape(3, 4)
    c = to_cupy(t)
    c[1, 2] = -1.0  # the same buffer
    assert t[1, 2].item() == -1.0 and isinstance(c, cupy.ndarray)
    back = as_torch(c)
    assert back.data_ptr() == t.data_ptr()
    eo = gauge_to_pyquda(cupy.asarray(_labelled((4, 2, 2, 2, 2, 3, 3))))
    assert isinstance(eo, cupy.ndarray)
