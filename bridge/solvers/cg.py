"""Batched conjugate gradient for Hermitian positive-definite operators (e.g. ``D^dagger D``).

Hestenes & Stiefel, J. Res. NBS 49 (1952) 409; see Saad, *Iterative Methods for Sparse Linear
Systems* (2nd ed.), Alg. 6.18.  Every batch entry is an independent system with its own
``alpha_k = |r_k|^2 / <p_k, A p_k>`` and ``beta_k = |r_{k+1}|^2 / |r_k|^2``; a system that has
reached its target is frozen (``alpha = beta = 0``) while the others continue.

When the recursively updated residual reaches the target, the true residual ``b - A x`` is
recomputed; if it still misses the target (rounding drift, a warm start far away, ...) the
iteration restarts from the true residual ("reliable update"), at most ``max_restarts`` times.
The reported residuals are always true residuals.

An operator may carry its own fused implementation of exactly this algorithm (``op.fused_cg(b,
x0, tol, max_iter, max_restarts)`` returning a :class:`~bridge.solvers.base.FusedCG`, or None
where it does not apply): the Wilson ``K^dag K`` runs the whole loop in its native kernel, with
no Python between iterations.  The solver then only checks the result and reports it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import ConvergenceError
from .base import (
    FusedCG,
    SolveStats,
    Timer,
    batch_dot,
    batch_norm2,
    bview,
    check_restarts,
    check_rhs,
    check_solver_params,
    final_stats,
    initial_residual,
    raise_unconverged,
)

__all__ = ["CG"]


class CG:
    """Conjugate gradient: ``solve(op, b, x0=None) -> (x, SolveStats)``.

    Parameters
    ----------
    tol:
        Target relative residual ``|b - A x| / |b|`` per system (Chroma's ``RsdCG``).
    max_iter:
        Iteration limit (Chroma's ``MaxCG``), counted over restarts.
    raise_on_failure:
        Raise :class:`~bridge.errors.ConvergenceError` when a system misses the target
        (default); otherwise return the best iterate with ``stats.converged = False``.
    max_restarts:
        Reliable-update restarts allowed after the recursive residual converged.
    """

    name = "CG"

    def __init__(
        self,
        tol: float = 1e-10,
        max_iter: int = 10000,
        *,
        raise_on_failure: bool = True,
        max_restarts: int = 5,
    ) -> None:
        self.tol, self.max_iter = check_solver_params("CG", tol, max_iter)
        self.raise_on_failure = bool(raise_on_failure)
        self.max_restarts = check_restarts("CG", max_restarts)

    def __repr__(self) -> str:
        return f"CG(tol={self.tol:g}, max_iter={self.max_iter})"

    def _breakdown(self, bad: torch.Tensor, pap: torch.Tensor, rr: torch.Tensor,
                   bnorm2: torch.Tensor, total: int) -> None:
        k = int(bad.nonzero()[0])
        raise ConvergenceError(
            f"CG broke down at iteration {total}: <p, A p> = {float(pap[k]):.3g} "
            f"<= 0 for batch entry {k} (target relative residual {self.tol:.3g}, "
            f"residual reached {float((rr[k] / bnorm2[k]).sqrt()):.3g}); the "
            "operator is not Hermitian positive definite (or is singular)"
        )

    def solve(
        self,
        op: Callable[[torch.Tensor], torch.Tensor],
        b: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SolveStats]:
        check_rhs("CG", b, x0)
        timer = Timer(b.device)
        fused = getattr(op, "fused_cg", None)
        if callable(fused):
            res = fused(b, x0, self.tol, self.max_iter, self.max_restarts)
            if res is not None:
                return _finish_fused(self, res, timer)
        nb = b.shape[0]
        bnorm2 = batch_norm2(b)
        target2 = (self.tol**2) * bnorm2
        iters = torch.zeros(nb, dtype=torch.long, device=b.device)
        x, r, napp = initial_residual(op, b, x0)
        total = 0
        restarts = 0
        while True:
            rr = batch_norm2(r)
            active = rr > target2
            p = r.clone()
            while bool(active.any()) and total < self.max_iter:
                ap = op(p)
                napp += 1
                pap = batch_dot(p, ap).real
                if bool(active.all()):
                    # every system still iterating (the usual case): no freezing masks, in-place
                    # updates (fewer, larger ops; the arithmetic is the same)
                    if not bool((pap > 0).all()):
                        self._breakdown(active & ~(pap > 0), pap, rr, bnorm2, total)
                    alpha = bview(rr / pap, x).to(x.dtype)
                    x.addcmul_(p, alpha)
                    r.addcmul_(ap, alpha, value=-1)
                    rr_new = batch_dot(r, r).real
                    iters += 1
                    total += 1
                    beta = bview(rr_new / rr, p).to(p.dtype)
                    rr = rr_new
                    active = rr > target2
                    p = p.mul_(beta).add_(r)
                    continue
                bad = active & ~(pap > 0)
                if bool(bad.any()):
                    self._breakdown(bad, pap, rr, bnorm2, total)
                alpha = torch.where(active, rr / torch.where(active, pap, 1.0), 0.0)
                x = x + bview(alpha, x).to(x.dtype) * p
                r = r - bview(alpha, r).to(r.dtype) * ap
                rr_new = batch_norm2(r)
                iters += active.long()
                total += 1
                beta = torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0)
                rr = torch.where(active, rr_new, rr)
                active = active & (rr > target2)
                p = r + bview(beta, p).to(p.dtype) * p
            r = b - op(x)
            napp += 1
            rr = batch_norm2(r)
            if bool((rr <= target2).all()) or total >= self.max_iter:
                break
            if restarts >= self.max_restarts:
                break
            restarts += 1
        stats = final_stats("CG", self.tol, iters, rr, bnorm2, timer.seconds(), napp, restarts)
        if not stats.converged and self.raise_on_failure:
            raise_unconverged(stats, self.max_iter)
        return x, stats


def _finish_fused(cg: CG, res: FusedCG, timer: Timer) -> tuple[torch.Tensor, SolveStats]:
    """Stats and errors of a fused solve (``op.fused_cg``), as :meth:`CG.solve` reports its
    own."""
    bnorm2, rr = res.bnorm2, res.rr
    if res.breakdown is not None:
        k, pap = res.breakdown
        bad = torch.zeros_like(rr, dtype=torch.bool)
        bad[k] = True
        cg._breakdown(bad, torch.full_like(rr, pap), rr, bnorm2, res.total)
    stats = final_stats("CG", cg.tol, res.iterations_per_system, rr, bnorm2, timer.seconds(),
                        res.operator_applications, res.restarts)
    if not stats.converged and cg.raise_on_failure:
        raise_unconverged(stats, cg.max_iter)
    return res.x, stats
