"""Mixed-precision defect correction: low-precision inner solves, high-precision outer loop.

Outer loop (in the precision of ``b``, normally complex128)::

    r = b - A x;  while |r| > tol |b|:  solve A_low d = r / |r|  (inner, low precision,
                                          loose tolerance);  x += |r| d;  r = b - A x

Each outer step reduces the true residual by roughly the inner tolerance, so the float64 target is
reached although the inner solver runs in float32 (e.g. Strzodka & Goeddeke, FCCM 2006; Clark et
al., arXiv:0911.3191, sec. V for lattice QCD).  The inner operator is ``op.to(low_dtype)`` when the
operator offers it (the Wilson operators do: links cast once), else a casting wrapper.  The right
hand side is normalised per system before the inner solve so float32's range is never an issue.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from .base import (
    Solver,
    SolveStats,
    Timer,
    batch_norm2,
    bview,
    check_rhs,
    check_solver_params,
    final_stats,
    operator_in_dtype,
    raise_unconverged,
)
from .cg import CG

__all__ = ["MixedPrecision"]


class MixedPrecision:
    """Defect-correction wrapper: ``solve(op, b, x0=None) -> (x, SolveStats)``.

    Parameters
    ----------
    inner:
        The low-precision solver (default ``CG(tol=1e-5)``); it is run with
        ``raise_on_failure`` off (a partially converged correction still helps).
    tol:
        Target *true* relative residual in the outer (high) precision.
    max_outer:
        Limit on outer corrections.
    low_dtype:
        Precision of the inner solves (complex64 by default).
    """

    name = "MixedPrecision"

    def __init__(
        self,
        inner: Solver | None = None,
        tol: float = 1e-10,
        max_outer: int = 50,
        *,
        low_dtype: torch.dtype = torch.complex64,
        raise_on_failure: bool = True,
    ) -> None:
        self.tol, self.max_outer = check_solver_params("MixedPrecision", tol, max_outer)
        # a private copy of the inner solver that returns partial corrections instead of raising
        self.inner = copy.copy(inner) if inner is not None else CG(tol=1e-5, max_iter=10000)
        if hasattr(self.inner, "raise_on_failure"):
            self.inner.raise_on_failure = False
        if low_dtype not in (torch.complex64, torch.float32, torch.complex128, torch.float64):
            raise ValueError(
                f"MixedPrecision: low_dtype must be complex64/float32 (or 128/64), got {low_dtype}"
            )
        self.low_dtype = low_dtype
        self.raise_on_failure = bool(raise_on_failure)

    def __repr__(self) -> str:
        return f"MixedPrecision(inner={self.inner!r}, tol={self.tol:g}, low={self.low_dtype})"

    def solve(
        self,
        op: Callable[[torch.Tensor], torch.Tensor],
        b: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SolveStats]:
        check_rhs("MixedPrecision", b, x0)
        timer = Timer(b.device)
        low = self.low_dtype
        if b.is_complex() and not low.is_complex:
            low = torch.complex64 if low == torch.float32 else torch.complex128
        op_low = operator_in_dtype(op, low)
        bnorm2 = batch_norm2(b)
        target2 = (self.tol**2) * bnorm2
        x = torch.zeros_like(b) if x0 is None else x0.clone()
        r = b - op(x) if x0 is not None else b.clone()
        napp = 1 if x0 is not None else 0
        rr = batch_norm2(r)
        iters = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
        inner_total = 0
        outer = 0
        while bool((rr > target2).any()) and outer < self.max_outer:
            active = rr > target2
            rnorm = torch.where(active, rr.sqrt(), torch.ones_like(rr))
            rhs = torch.where(bview(active, r), r / bview(rnorm, r).to(r.dtype), 0)
            d, st = self.inner.solve(op_low, rhs.to(low))
            inner_total += st.iterations
            napp += st.operator_applications
            iters += torch.where(active, st.iterations_per_system, 0)
            x = x + bview(rnorm, x).to(x.dtype) * d.to(b.dtype)
            r = b - op(x)
            napp += 1
            rr = batch_norm2(r)
            outer += 1
        stats = final_stats(
            f"MixedPrecision({getattr(self.inner, 'name', type(self.inner).__name__)})",
            self.tol, iters, rr, bnorm2, timer.seconds(), napp, outer, iterations=inner_total)
        stats.extra["outer_iterations"] = float(outer)
        if not stats.converged and self.raise_on_failure:
            raise_unconverged(stats, self.max_outer, "max_outer")
        return x, stats
