"""Batched BiCGStab for general (non-Hermitian) operators, e.g. the Wilson operator ``D``.

van der Vorst, SIAM J. Sci. Stat. Comput. 13 (1992) 631; Saad, *Iterative Methods for Sparse
Linear Systems* (2nd ed.), Alg. 7.7.  Each batch entry has its own ``rho``, ``alpha`` and
``omega``; converged systems are frozen.  On a breakdown (``rho = 0``, ``<r0, v> = 0`` or
``omega = 0`` for an active system) or after the recursive residual has converged, the true
residual is recomputed and the iteration restarts from it with a new shadow vector
(at most ``max_restarts`` times).  Reported residuals are true residuals.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import (
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

__all__ = ["BiCGStab"]


class BiCGStab:
    """BiCGStab: ``solve(op, b, x0=None) -> (x, SolveStats)``; parameters as :class:`CG`."""

    name = "BiCGStab"

    def __init__(
        self,
        tol: float = 1e-10,
        max_iter: int = 10000,
        *,
        raise_on_failure: bool = True,
        max_restarts: int = 10,
    ) -> None:
        self.tol, self.max_iter = check_solver_params("BiCGStab", tol, max_iter)
        self.raise_on_failure = bool(raise_on_failure)
        self.max_restarts = check_restarts("BiCGStab", max_restarts)

    def __repr__(self) -> str:
        return f"BiCGStab(tol={self.tol:g}, max_iter={self.max_iter})"

    def solve(
        self,
        op: Callable[[torch.Tensor], torch.Tensor],
        b: torch.Tensor,
        x0: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, SolveStats]:
        check_rhs("BiCGStab", b, x0)
        timer = Timer(b.device)
        nb = b.shape[0]
        bnorm2 = batch_norm2(b)
        target2 = (self.tol**2) * bnorm2
        iters = torch.zeros(nb, dtype=torch.long, device=b.device)
        x, r, napp = initial_residual(op, b, x0)
        total = 0
        restarts = 0
        cdt = b.dtype
        while True:
            rr = batch_norm2(r)
            active = rr > target2
            r0 = r.clone()
            rho = torch.ones(nb, dtype=cdt, device=b.device)
            alpha = torch.ones_like(rho)
            omega = torch.ones_like(rho)
            v = torch.zeros_like(b)
            p = torch.zeros_like(b)
            while bool(active.any()) and total < self.max_iter:
                rho_new = batch_dot(r0, r)
                if bool((active & (rho_new.abs() == 0)).any()):
                    break
                beta = (rho_new / torch.where(active, rho, 1)) * (
                    alpha / torch.where(active, omega, 1)
                )
                beta = torch.where(active, beta, 0)
                p = r + bview(beta, p) * (p - bview(omega, v) * v)
                v = op(p)
                napp += 1
                r0v = batch_dot(r0, v)
                if bool((active & (r0v.abs() == 0)).any()):
                    break
                alpha = torch.where(active, rho_new / torch.where(active, r0v, 1), 0)
                s = r - bview(alpha, v) * v
                ss = batch_norm2(s)
                t = op(s)
                napp += 1
                tt = batch_norm2(t)
                done_s = ss <= target2
                omega = torch.where(
                    active & ~done_s & (tt > 0),
                    batch_dot(t, s) / torch.where(tt > 0, tt, 1).to(cdt),
                    0,
                )
                x = x + bview(alpha, p) * p + bview(omega, s) * s
                r = s - bview(omega, t) * t
                rr = batch_norm2(r)
                iters += active.long()
                total += 1
                rho = torch.where(active, rho_new, rho)
                if bool((active & ~done_s & (omega.abs() == 0)).any()):
                    active = active & (rr > target2)
                    break
                active = active & (rr > target2)
            r = b - op(x)
            napp += 1
            rr = batch_norm2(r)
            if bool((rr <= target2).all()) or total >= self.max_iter:
                break
            if restarts >= self.max_restarts:
                break
            restarts += 1
        stats = final_stats("BiCGStab", self.tol, iters, rr, bnorm2, timer.seconds(), napp,
                            restarts)
        if not stats.converged and self.raise_on_failure:
            raise_unconverged(stats, self.max_iter)
        return x, stats
