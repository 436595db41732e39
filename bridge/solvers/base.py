"""The solver protocol shared by the built-in Krylov solvers and (later) a QUDA back end.

A *linear operator* is any callable ``op(x) -> y`` acting on batched fields ``x[batch, ...]``
(the leading axis indexes independent systems: configurations and/or right-hand sides).  It may
also offer ``op.to(dtype) -> op'``, the same operator in another precision; mixed-precision
solvers use it for their inner solves (otherwise they cast around the full-precision operator,
which is correct but gains no speed).

A :class:`Solver` solves ``op(x) = b`` for every batch entry independently and returns the
solution and a :class:`SolveStats`.  Solvers raise :class:`bridge.errors.ConvergenceError` when a
system misses its target; the message names the solver, the target, the residual reached and the
iteration count.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import torch

from ..errors import ConvergenceError

__all__ = [
    "LinearOperator",
    "Solver",
    "SolveStats",
    "batch_dot",
    "batch_norm2",
    "operator_in_dtype",
    "check_solver_params",
]


@runtime_checkable
class LinearOperator(Protocol):
    """A callable linear map on batched fields (optionally with ``to(dtype)``)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


@dataclass
class SolveStats:
    """Statistics of one (batched) solve.

    ``iterations``: the largest iteration count over the systems (for mixed precision: the
    total number of inner iterations); ``iterations_per_system``: per batch entry;
    ``residual``: the largest *true* final relative residual ``|b - A x| / |b|`` (recomputed
    from scratch, not the recursively updated one); ``residuals``: per batch entry;
    ``seconds``: wall-clock time; ``converged``: every system reached the target;
    ``operator_applications``: number of calls of the operator (batched calls count once);
    ``restarts``: number of reliable-update restarts (CG/BiCGStab) or outer defect-correction
    steps (mixed precision).
    """

    solver: str
    tol: float
    iterations: int
    iterations_per_system: torch.Tensor
    residual: float
    residuals: torch.Tensor
    seconds: float
    converged: bool
    operator_applications: int = 0
    restarts: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def final_stats(solver: str, tol: float, iters: torch.Tensor, rr: torch.Tensor,
                bnorm2: torch.Tensor, seconds: float, applications: int, restarts: int,
                iterations: int | None = None) -> SolveStats:
    """The :class:`SolveStats` of a finished batched solve from its true squared residuals
    ``rr`` and ``|b|^2`` (relative residuals; ``|r|`` itself where ``b = 0``); ``iterations``
    defaults to the largest of ``iters``."""
    nb = int(rr.shape[0])
    res = torch.where(bnorm2 > 0, (rr / torch.where(bnorm2 > 0, bnorm2, 1.0)).sqrt(), rr.sqrt())
    return SolveStats(
        solver=solver, tol=tol,
        iterations=(int(iters.max()) if nb else 0) if iterations is None else iterations,
        iterations_per_system=iters, residual=float(res.max()) if nb else 0.0, residuals=res,
        seconds=seconds, converged=bool((rr <= (tol**2) * bnorm2).all()),
        operator_applications=applications, restarts=restarts)


class FusedCG(NamedTuple):
    """What an operator's own fused conjugate gradient returns (``op.fused_cg``, see
    :class:`bridge.solvers.CG`): the solution and the per-system numbers the solver reports.
    ``breakdown``: ``(batch entry, <p, A p>)`` where ``<p, A p> <= 0`` stopped the iteration
    (``rr`` then holds the residuals before that step)."""

    x: torch.Tensor
    iterations_per_system: torch.Tensor  # [batch] long
    rr: torch.Tensor  # [batch] true |r|^2 at the end
    bnorm2: torch.Tensor  # [batch] |b|^2
    operator_applications: int
    restarts: int
    total: int  # iterations counted against max_iter (over restarts)
    breakdown: tuple[int, float] | None


class Solver(Protocol):
    """``solve(op, b, x0=None) -> (x, SolveStats)``; raises ``ConvergenceError`` on failure."""

    def solve(
        self,
        op: Callable[[torch.Tensor], torch.Tensor],
        b: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SolveStats]: ...


def batch_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``<a, b> = sum conj(a) b`` over all axes but the first: shape ``[batch]`` (complex)."""
    return torch.linalg.vecdot(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1))


def batch_norm2(a: torch.Tensor) -> torch.Tensor:
    """``|a|^2`` per batch entry (real), shape ``[batch]``."""
    v = torch.view_as_real(a) if a.is_complex() else a
    return v.reshape(a.shape[0], -1).square().sum(1)


def bview(s: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-batch scalar to broadcast against ``like``."""
    return s.reshape(-1, *([1] * (like.dim() - 1)))


def operator_in_dtype(
    op: Callable[[torch.Tensor], torch.Tensor], dtype: torch.dtype
) -> Callable[[torch.Tensor], torch.Tensor]:
    """``op`` in precision ``dtype``: ``op.to(dtype)`` when offered, else a casting wrapper."""
    to = getattr(op, "to", None)
    if callable(to):
        try:
            return to(dtype)
        except (TypeError, ValueError, NotImplementedError):
            pass

    def cast(x: torch.Tensor) -> torch.Tensor:
        y = op(x.to(_high_dtype(x.dtype)))
        return y.to(x.dtype)

    return cast


def _high_dtype(dt: torch.dtype) -> torch.dtype:
    return torch.complex128 if dt.is_complex else torch.float64


def check_solver_params(name: str, tol: float, max_iter: int) -> tuple[float, int]:
    """Validate a relative-residual target and an iteration limit."""
    try:
        tol_f = float(tol)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: tol must be a number, got {tol!r}") from exc
    if not (0.0 < tol_f < 1.0):
        raise ValueError(f"{name}: tol must lie in (0, 1), got {tol!r}")
    if isinstance(max_iter, bool) or int(max_iter) != max_iter or int(max_iter) < 1:
        raise ValueError(f"{name}: max_iter must be a positive integer, got {max_iter!r}")
    return tol_f, int(max_iter)


def check_restarts(name: str, max_restarts: int) -> int:
    """Validate a number of reliable-update restarts (a non-negative integer)."""
    if isinstance(max_restarts, bool) or int(max_restarts) != max_restarts or max_restarts < 0:
        raise ValueError(
            f"{name}: max_restarts must be a non-negative integer, got {max_restarts!r}"
        )
    return int(max_restarts)


def initial_residual(
    op: Callable[[torch.Tensor], torch.Tensor], b: torch.Tensor, x0: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Start of a Krylov solve: ``(x, r = b - op(x), operator applications)``; a zero guess
    costs no application."""
    if x0 is None:
        return torch.zeros_like(b), b.clone(), 0
    x = x0.clone()
    return x, b - op(x), 1


def check_rhs(name: str, b: torch.Tensor, x0: torch.Tensor | None) -> None:
    if not isinstance(b, torch.Tensor) or b.dim() < 1:
        raise ValueError(f"{name}: b must be a batched tensor [batch, ...], got {type(b).__name__}")
    if x0 is not None and (x0.shape != b.shape or x0.dtype != b.dtype):
        raise ValueError(
            f"{name}: x0 must match b (shape {tuple(b.shape)}, dtype {b.dtype}), got shape "
            f"{tuple(x0.shape)}, dtype {x0.dtype}"
        )


def raise_unconverged(stats: SolveStats, max_iter: int, limit: str = "max_iter") -> None:
    """Raise ``ConvergenceError`` describing an unconverged solve."""
    bad = (stats.residuals > stats.tol).nonzero().flatten().tolist()
    raise ConvergenceError(
        f"{stats.solver} did not converge: target relative residual {stats.tol:.3g}, reached "
        f"{stats.residual:.3g} after {stats.iterations} iterations ({limit}={max_iter}); "
        f"unconverged systems (batch entries): {bad[:10]}{' ...' if len(bad) > 10 else ''}"
    )


class Timer:
    """Wall-clock timer (synchronises CUDA so device timings are honest)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sync()
        self.t0 = time.perf_counter()

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def seconds(self) -> float:
        self._sync()
        return time.perf_counter() - self.t0
