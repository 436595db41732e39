"""PyQUDA (CLQCD/PyQUDA, arXiv:2411.08461) as an optional back end: the layout of its fields and
a solver behind the project's solver protocol that calls QUDA's Wilson/clover inverters.

Layouts (docs/formats.md section 5; PyQUDA's ``LatticeInfo.evenodd``/``lexico``)::

    gauge    ours U[(batch,) mu, t, z, y, x, a, b]    PyQUDA [(batch,) mu, p, t, z, y, x // 2, a, b]
    fermion  ours psi[(batch,) t, z, y, x, s, c]      PyQUDA [(batch,) p, t, z, y, x // 2, s, c]

with parity ``p = (x + y + z + t) % 2`` and, within a parity, the lexicographic ``t, z, y`` order
and ``x // 2`` (``x = 2 (x // 2) + (p + t + z + y) % 2``).  Directions (x, y, z, t), the link
convention, spin-before-colour and the DeGrand-Rossi gamma basis are the same on both sides, so
the conversion is one gather of the sites; it works on torch tensors, numpy and cupy arrays and
keeps the device.  The gather cannot be zero-copy; moving the result between torch and cupy
without a copy is :mod:`bridge.io.dlpack`.

:class:`PyQudaSolver` imports PyQUDA only when it solves; without PyQUDA it raises a
:class:`~bridge.errors.ConfigError` naming ``pip install qcd-bridge[quda]``.  Its PyQUDA calls are
untested here (PyQUDA needs QUDA built with CUDA and a GPU; docs/quda.md); what is tested without
it is the layout and the composition of the full-operator inverse into every operator view
(:class:`InverseSolver`), with the answer checked against the project's own operator.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import numpy as np
import torch

from ..errors import ConfigError, ConvergenceError, FormatError
from ..fermions.gamma import apply_gamma5
from ..solvers.base import SolveStats, batch_norm2

__all__ = ["QUDA_INSTALL_HINT", "lexico_to_evenodd", "evenodd_to_lexico", "gauge_to_pyquda",
           "gauge_from_pyquda", "fermion_to_pyquda", "fermion_from_pyquda", "require_pyquda",
           "InverseSolver", "PyQudaSolver"]

QUDA_INSTALL_HINT = ("pip install qcd-bridge[quda] (PyQUDA and pyquda-utils; they need QUDA "
                     "built with CUDA, QUDA_PATH set, and a GPU; see docs/quda.md)")


@lru_cache(maxsize=32)
def _evenodd_sites(lt: int, lz: int, ly: int, lx: int) -> np.ndarray:
    """For each even-odd position ``(p, t, z, y, xh)`` (flattened in that order), the
    lexicographic site ``x + lx (y + ly (z + lz t))`` it holds."""
    p, t, z, y, xh = np.meshgrid(np.arange(2), np.arange(lt), np.arange(lz), np.arange(ly),
                                 np.arange(lx // 2), indexing="ij")
    x = 2 * xh + (p + t + z + y) % 2
    return (x + lx * (y + ly * (z + lz * t))).reshape(-1)


def _take(a: Any, idx: np.ndarray, what: str) -> Any:
    """``a[:, idx, :]`` along axis 1 of a 3-axis array, in ``a``'s own library and device."""
    if isinstance(a, torch.Tensor):
        return a.index_select(1, torch.as_tensor(idx, device=a.device))
    module = sys.modules.get(type(a).__module__.split(".")[0])
    if module is None or not hasattr(module, "asarray") or not hasattr(a, "take"):
        raise FormatError(f"{what}: expected a torch tensor, numpy or cupy array, got "
                          f"{type(a).__name__}")
    return a.take(module.asarray(idx), axis=1)


def _check_lattice(what: str, shape: tuple[int, ...], first: int, n: int) -> tuple[int, ...]:
    if len(shape) < first + n + 2 or first < 0:
        raise FormatError(f"{what}: expected lattice axes followed by 2 matrix/spin-colour axes, "
                          f"got shape {shape}")
    return tuple(shape[first:first + n])


def lexico_to_evenodd(a: Any, what: str = "field") -> Any:
    """``a[..., t, z, y, x, i, j]`` -> ``[..., 2, t, z, y, x // 2, i, j]`` (PyQUDA's even-odd
    order; the lattice axes are the 4 before the last two).  ``x`` must be even."""
    shape = tuple(getattr(a, "shape", ()))
    lt, lz, ly, lx = _check_lattice(what, shape, len(shape) - 6, 4)
    if lx % 2:
        raise FormatError(f"{what}: the even-odd layout halves x; expected an even x extent, "
                          f"got lattice (t, z, y, x) = {(lt, lz, ly, lx)}")
    pre, suf = math.prod(shape[:-6]), math.prod(shape[-2:])
    out = _take(a.reshape(pre, lt * lz * ly * lx, suf), _evenodd_sites(lt, lz, ly, lx), what)
    return out.reshape(*shape[:-6], 2, lt, lz, ly, lx // 2, *shape[-2:])


def evenodd_to_lexico(a: Any, what: str = "field") -> Any:
    """Inverse of :func:`lexico_to_evenodd`: ``[..., 2, t, z, y, x // 2, i, j]`` ->
    ``[..., t, z, y, x, i, j]``."""
    shape = tuple(getattr(a, "shape", ()))
    dims = _check_lattice(what, shape, len(shape) - 7, 5)
    if dims[0] != 2:
        raise FormatError(f"{what}: expected a parity axis of length 2 before (t, z, y, x // 2), "
                          f"got shape {shape}")
    lt, lz, ly, lxh = dims[1:]
    pre, suf = math.prod(shape[:-7]), math.prod(shape[-2:])
    inverse = np.argsort(_evenodd_sites(lt, lz, ly, 2 * lxh))
    out = _take(a.reshape(pre, 2 * lt * lz * ly * lxh, suf), inverse, what)
    return out.reshape(*shape[:-7], lt, lz, ly, 2 * lxh, *shape[-2:])


def _check_rank(what: str, a: Any, ranks: tuple[int, ...], layout: str) -> None:
    if len(getattr(a, "shape", ())) not in ranks:
        raise FormatError(f"{what}: expected {layout}, got shape {tuple(getattr(a, 'shape', ()))}")


def gauge_to_pyquda(u: Any) -> Any:
    """Our ``U[(batch,) mu, t, z, y, x, a, b]`` -> PyQUDA's ``LatticeGauge`` data
    ``[(batch,) mu, 2, t, z, y, x // 2, a, b]``."""
    _check_rank("gauge field", u, (7, 8), "U[(batch,) mu, t, z, y, x, a, b]")
    return lexico_to_evenodd(u, "gauge field")


def gauge_from_pyquda(g: Any) -> Any:
    """PyQUDA's ``[(batch,) mu, 2, t, z, y, x // 2, a, b]`` -> our ``U[(batch,) mu, t, z, y, x,
    a, b]``."""
    _check_rank("PyQUDA gauge field", g, (8, 9), "[(batch,) mu, 2, t, z, y, x // 2, a, b]")
    return evenodd_to_lexico(g, "PyQUDA gauge field")


def fermion_to_pyquda(psi: Any) -> Any:
    """Our ``psi[(batch,) t, z, y, x, spin, colour]`` -> PyQUDA's ``LatticeFermion`` data
    ``[(batch,) 2, t, z, y, x // 2, spin, colour]`` (a batch is a ``MultiLatticeFermion``)."""
    _check_rank("fermion field", psi, (6, 7), "psi[(batch,) t, z, y, x, spin, colour]")
    return lexico_to_evenodd(psi, "fermion field")


def fermion_from_pyquda(f: Any) -> Any:
    """PyQUDA's ``[(batch,) 2, t, z, y, x // 2, spin, colour]`` -> our ``psi[(batch,) t, z, y,
    x, spin, colour]``."""
    _check_rank("PyQUDA fermion field", f, (7, 8), "[(batch,) 2, t, z, y, x // 2, spin, colour]")
    return evenodd_to_lexico(f, "PyQUDA fermion field")


def require_pyquda() -> Any:
    """``pyquda_utils.core``, or a :class:`ConfigError` naming the extra to install."""
    try:
        import pyquda  # noqa: F401
        from pyquda_utils import core
    except ImportError as exc:  # also when PyQUDA is installed but QUDA was not built
        raise ConfigError(f"the QUDA solver back end needs PyQUDA, which cannot be imported "
                          f"({exc}); install it with {QUDA_INSTALL_HINT}") from None
    return core


Inverse = Callable[[Any, torch.Tensor], torch.Tensor]
"""``(WilsonDirac, b[B * R, t, z, y, x, 4, Nc]) -> D^{-1} b``: a full-operator inverse."""


class InverseSolver:
    """The :class:`~bridge.solvers.base.Solver` protocol on top of a full-operator inverse
    ``D^{-1}`` (a QUDA solve, or any other): ``op`` must be a view of a
    :class:`~bridge.fermions.wilson.WilsonDirac` (``WilsonDirac.linear_operator(kind)``), and
    every kind is composed from ``D^{-1}`` with gamma_5-hermiticity ``D^dag = g5 D g5``,
    ``K^dag = g5 K g5`` and the Schur complement ``K^{-1} c = [D^{-1} (0, c)]_odd``
    (bridge/fermions/evenodd.py).  The answer is checked with the project's operator: a true
    relative residual above ``tol`` raises :class:`~bridge.errors.ConvergenceError` (a wrong
    normalisation or layout shows up there, never as a silently wrong solution);
    ``tolerance_factor`` allows for the amplification of the inner solves' residual in the
    composed kinds (as Chroma's ``RsdToleranceFactor``)."""

    _KINDS = ("D", "Ddag", "DdagD", "schur", "schur_dagger", "schur_normal")

    def __init__(self, inverse: Inverse, tol: float = 1e-10, name: str = "inverse",
                 tolerance_factor: float = 10.0) -> None:
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ConfigError(f"{name}: tol: expected a relative residual in (0, 1), got {tol!r}")
        if not isinstance(tolerance_factor, (int, float)) or not tolerance_factor >= 1:
            raise ConfigError(f"{name}: tolerance_factor: expected a number >= 1, got "
                              f"{tolerance_factor!r}")
        self.inverse, self.tol, self.name = inverse, float(tol), name
        self.tolerance_factor = float(tolerance_factor)

    def _wilson(self, op: Any) -> tuple[Any, str]:
        wd, kind = getattr(op, "op", None), getattr(op, "kind", None)
        if kind not in self._KINDS or not hasattr(wd, "split") or not hasattr(wd, "kappa"):
            raise ConfigError(f"{self.name}: expected a WilsonDirac operator view "
                              f"(WilsonDirac.linear_operator(kind), kind one of "
                              f"{', '.join(self._KINDS)}), got {op!r}")
        return wd, kind

    def _schur_inverse(self, wd: Any, c: torch.Tensor) -> torch.Tensor:
        return wd.split(self.inverse(wd, wd.merge(torch.zeros_like(c), c)))[1]

    def solve(self, op: Any, b: torch.Tensor,
              x0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveStats]:
        """Solve ``op(x) = b`` (``x0`` is not used: the inverse starts from its own guess)."""
        wd, kind = self._wilson(op)
        t0 = time.perf_counter()
        g5 = apply_gamma5
        full = self.inverse if not kind.startswith("schur") else self._schur_inverse
        if kind in ("D", "schur"):
            x = full(wd, b)
        elif kind in ("Ddag", "schur_dagger"):
            x = g5(full(wd, g5(b)))
        else:  # (D^dag D)^{-1} = D^{-1} g5 D^{-1} g5, the same for K
            x = full(wd, g5(full(wd, g5(b))))
        res = (batch_norm2(b - op(x)) / batch_norm2(b).clamp_min(1e-300)).sqrt()
        calls = 1 if kind in ("D", "Ddag", "schur", "schur_dagger") else 2
        stats = SolveStats(solver=self.name, tol=self.tol, iterations=calls,
                           iterations_per_system=torch.full((b.shape[0],), calls),
                           residual=float(res.max()), residuals=res,
                           seconds=time.perf_counter() - t0,
                           converged=bool((res <= self.tol).all()), operator_applications=1)
        limit = self.tol * self.tolerance_factor
        if stats.residual > limit:
            raise ConvergenceError(
                f"{self.name} ({kind}): the solution misses the relative residual {limit:.3g} "
                f"(tol {self.tol:.3g} x tolerance_factor {self.tolerance_factor:g}) of the "
                f"project's operator: {stats.residual:.3g} (QUDA's "
                f"tolerance, precision, or its normalisation/layout disagree with "
                f"{wd!r})")
        return x, stats


def _pyquda_inverse(core: Any, tol: float, max_iter: int,
                    multigrid: Sequence[Sequence[int]] | None) -> Inverse:
    """``D^{-1}`` by PyQUDA: ``getWilson``/``getClover`` with ``mass = 1/(2 kappa) - 4``
    (PyQUDA's ``kappa = 1/(2 (mass + 1 + 3/xi))``, isotropic), the links in its even-odd layout
    (:func:`gauge_to_pyquda`), ``dirac.invert`` per right-hand side.  PyQUDA solves Chroma's
    ``M = D_kappa / (2 kappa)``; our ``D = scale D_kappa``, so ``D^{-1} b = M^{-1} b / (2 kappa
    scale)``.  Untested without PyQUDA and a GPU (docs/quda.md)."""

    def inverse(wd: Any, b: torch.Tensor) -> torch.Tensor:
        lt, lz, ly, lx = wd.lattice.shape
        if tuple(wd.boundary[:3]) != (1, 1, 1) or wd.boundary[3] not in (1, -1):
            raise ConfigError(f"PyQUDA solver: boundary: expected (1, 1, 1, +-1) (QUDA sets "
                              f"only the time boundary), got {wd.boundary}")
        latt = core.LatticeInfo([lx, ly, lz, lt], int(wd.boundary[3].real), 1.0)
        mass = 1.0 / (2.0 * wd.kappa) - 4.0
        if wd.c_sw:
            dirac = core.getClover(latt, mass, tol, max_iter, 1.0, wd.c_sw, 1.0, multigrid)
        else:
            dirac = core.getWilson(latt, mass, tol, max_iter, multigrid)
        rhs = b.reshape(wd.batch, -1, *b.shape[1:])
        out = torch.empty_like(rhs)
        try:
            for i in range(wd.batch):
                dirac.loadGauge(core.LatticeGauge(latt, gauge_to_pyquda(wd.U[i])))
                for r in range(rhs.shape[1]):
                    x = dirac.invert(core.LatticeFermion(latt, fermion_to_pyquda(rhs[i, r])))
                    out[i, r] = torch.as_tensor(fermion_from_pyquda(x.data), device=b.device)
        finally:  # PyQUDA's operators free their multigrid with destroy() (newer versions)
            getattr(dirac, "destroy", lambda: None)()
        return (out / (2.0 * wd.kappa * wd.scale)).reshape(b.shape)

    return inverse


class PyQudaSolver(InverseSolver):
    """QUDA's Wilson/clover inverters through PyQUDA behind the solver protocol (see
    :class:`InverseSolver` for the operator kinds and the residual check): ``tol`` and
    ``max_iter`` of QUDA's solve, ``multigrid`` PyQUDA's block sizes per level (``None``: no
    multigrid).  PyQUDA must be initialised by the caller (``pyquda.init(...,
    backend="torch")``) before the first solve.  Without PyQUDA, :meth:`solve` raises a
    :class:`ConfigError` naming ``pip install qcd-bridge[quda]``.  The PyQUDA calls are
    untested without PyQUDA and a GPU."""

    def __init__(self, tol: float = 1e-10, max_iter: int = 1000,
                 multigrid: Sequence[Sequence[int]] | None = None) -> None:
        super().__init__(self._lazy_inverse, tol, "PyQUDA")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ConfigError(f"PyQUDA: max_iter: expected a positive integer, got {max_iter!r}")
        self.max_iter, self.multigrid = max_iter, multigrid
        self._inverse: Inverse | None = None

    def _lazy_inverse(self, wd: Any, b: torch.Tensor) -> torch.Tensor:
        if self._inverse is None:
            self._inverse = _pyquda_inverse(require_pyquda(), self.tol, self.max_iter,
                                            self.multigrid)
        return self._inverse(wd, b)
