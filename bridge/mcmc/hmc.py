"""Hybrid Monte Carlo as an ``(init, step)`` Markov kernel (as in blackjax).

``kernel = hmc_kernel(integrator, tau)``; ``state = kernel.init(U, seed)``;
``state, info = kernel.step(state)``.  The batch axis holds independent chains, each with its own
Metropolis decision.  All randomness of trajectory ``n`` comes from the counter-based stream
``rng_key(seed, n)`` (:mod:`bridge.rng`), so the state ``(U, seed, trajectory)`` is the complete,
checkpointable random state: a restarted chain continues bit for bit.

Exactness: momentum refresh is a Gibbs step of ``exp(-Tr P^dag P)``; the integrator is reversible
and area preserving; the Metropolis test with ``min(1, exp(-dH))`` then leaves
``exp(-S(U))`` invariant (Duane, Kennedy, Pendleton & Roweth, Phys. Lett. B195 (1987) 216).
Warm-up trajectories (Chroma's ``NWarmUpUpdates``) are always accepted and are not exact.

:func:`hmc` is the same kernel on :class:`~bridge.mcmc.base.ChainState`, so it composes with the
flow kernel (:mod:`bridge.mcmc.compose`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import NamedTuple

import torch

from ..errors import PhysicsError
from ..gauge import mesplq
from ..groups import dagger, mm, random_algebra, trace
from ..lattice import Lattice
from ..rng import generator, rng_key
from .base import ChainState, Kernel, StepInfo, chain_state, check_action, nan_like, stream_tag
from .integrators import Integrator
from .monomials import Monomial

__all__ = ["HMCState", "HMCInfo", "hmc_kernel", "hmc", "kinetic_energy", "total_action"]


class HMCState(NamedTuple):
    U: torch.Tensor  # [batch, mu, ..., Nc, Nc]
    action: torch.Tensor  # [batch]: sum of the deterministic monomials' actions at U
    seed: int
    trajectory: int  # number of the next trajectory (Chroma's update_no - 1)


class HMCInfo(NamedTuple):
    trajectory: int
    warmup: bool
    delta_h: torch.Tensor  # [batch]
    acc_prob: torch.Tensor  # [batch] min(1, exp(-dH))
    accepted: torch.Tensor  # [batch] bool
    kinetic_old: torch.Tensor
    kinetic_new: torch.Tensor
    potential_old: torch.Tensor
    potential_new: torch.Tensor
    w_plaq: torch.Tensor  # [batch] after the Metropolis step
    force_evaluations: dict[str, int]
    solver_iterations: int
    seconds: float
    reverse_delta_h: torch.Tensor | None  # [batch], when the reversibility check ran
    reverse_delta_u: torch.Tensor | None  # [batch] max |U_back - U_start|


def kinetic_energy(p: torch.Tensor) -> torch.Tensor:
    """Chroma's ``mesKE``: ``sum_{x,mu} Tr(P^dagger P)`` per configuration, computed as the sum
    of ``|P_ab|^2`` over all entries (the same number; no colour product)."""
    pr = torch.view_as_real(p.resolve_conj()) if p.is_conj() else torch.view_as_real(p)
    return pr.reshape(p.shape[0], -1).square().sum(1)


def _kinetic_energy_reference(p: torch.Tensor) -> torch.Tensor:
    """The literal ``sum_{x,mu} Re Tr(P^dagger P)`` (kept for the tests)."""
    return trace(mm(dagger(p), p)).real.flatten(1).sum(1)


def total_action(monomials: Sequence[Monomial], u: torch.Tensor) -> torch.Tensor:
    s = monomials[0].action(u)
    for m in monomials[1:]:
        s = s + m.action(u)
    return s


def _solver_iterations(monomials: Sequence[Monomial]) -> int:
    return int(sum(getattr(m, "iterations", 0) for m in monomials))


def _reset_solver_counters(monomials: Sequence[Monomial]) -> None:
    for m in monomials:
        if hasattr(m, "iterations"):
            m.iterations = 0


def hmc_kernel(
    integrator: Integrator,
    tau: float,
    *,
    warmup: int = 0,
    reverse_check_every: int = 0,
) -> Kernel:
    """HMC with the given integrator and trajectory length ``tau`` (Chroma's ``tau0``).

    ``warmup``: the first ``warmup`` trajectories (trajectory numbers ``0 .. warmup-1``) are always
    accepted.  ``reverse_check_every``: every N-th trajectory also integrates back from the end
    point with negated momenta and reports ``reverse_delta_h`` and ``reverse_delta_u`` (Chroma's
    ``ReverseCheckP``); 0 disables it.
    """
    tau = float(tau)
    if not tau > 0:
        raise ValueError(f"tau0: expected a positive trajectory length, got {tau}")
    monomials = integrator.monomials
    if not monomials:
        raise ValueError("integrator: no monomials on any level; nothing to simulate")
    det = [m for m in monomials if not m.stochastic]
    sto = [m for m in monomials if m.stochastic]

    def part(mons: Sequence[Monomial], u: torch.Tensor) -> torch.Tensor:
        if mons:
            return total_action(mons, u)
        return torch.zeros(u.shape[0], dtype=u.real.dtype, device=u.device)

    def init(u: torch.Tensor, seed: int, trajectory: int = 0) -> HMCState:
        Lattice.of(u).check_gauge(u)
        return HMCState(u, part(det, u), int(seed), int(trajectory))

    def step(state: HMCState) -> tuple[HMCState, HMCInfo]:
        t0 = time.perf_counter()
        u0 = state.U
        nc = int(u0.shape[-1])
        group = "U1" if nc == 1 else nc
        gen = generator(rng_key(state.seed, state.trajectory), u0.device)
        _reset_solver_counters(monomials)
        for m in monomials:
            m.refresh(u0, gen)
        p0 = random_algebra(group, tuple(u0.shape[:-2]), generator=gen, dtype=u0.dtype,
                            device=u0.device)
        ke0, pe0 = kinetic_energy(p0), state.action + part(sto, u0)
        u1, p1, counts = integrator(u0, p0, tau)
        s1 = part(det, u1)
        ke1, pe1 = kinetic_energy(p1), s1 + part(sto, u1)
        dh = (ke1 - ke0) + (pe1 - pe0)
        if not bool(torch.isfinite(dh).all()):
            raise PhysicsError(
                f"trajectory {state.trajectory}: deltaH = {dh.tolist()} is not finite; the "
                f"chain keeps its last state (reduce the step size tau0/n_steps = "
                f"{tau}/{integrator.levels[0].n_steps})"
            )
        acc_prob = torch.exp(-dh).clamp(max=1.0)
        is_warm = state.trajectory < warmup
        if is_warm:
            accepted = torch.ones_like(dh, dtype=torch.bool)
        else:
            r = torch.rand(dh.shape, generator=gen, dtype=dh.dtype, device=dh.device)
            accepted = r < acc_prob
        rev_dh = rev_du = None
        if reverse_check_every and (state.trajectory + 1) % reverse_check_every == 0:
            ub, pb, _ = integrator(u1, -p1, tau)
            rev_dh = (kinetic_energy(pb) + total_action(monomials, ub)) - (ke0 + pe0)
            rev_du = (ub - u0).abs().flatten(1).amax(1)
        if bool(accepted.all()):
            u_new, s_new = u1, s1
        elif not bool(accepted.any()):
            u_new, s_new = u0, state.action
        else:
            sel = accepted.reshape(-1, *([1] * (u0.dim() - 1)))
            u_new = torch.where(sel, u1, u0)
            s_new = torch.where(accepted, s1, state.action)
        info = HMCInfo(
            trajectory=state.trajectory,
            warmup=is_warm,
            delta_h=dh,
            acc_prob=acc_prob,
            accepted=accepted,
            kinetic_old=ke0,
            kinetic_new=ke1,
            potential_old=pe0,
            potential_new=pe1,
            w_plaq=mesplq(u_new).w_plaq,
            force_evaluations=counts,
            solver_iterations=_solver_iterations(monomials),
            seconds=time.perf_counter() - t0,
            reverse_delta_h=rev_dh,
            reverse_delta_u=rev_du,
        )
        return HMCState(u_new, s_new, state.seed, state.trajectory + 1), info

    return Kernel(init, step)


def hmc(integrator: Integrator, tau: float, *, name: str = "hmc", **kwargs: object) -> Kernel:
    """:func:`hmc_kernel` as a kernel on :class:`~bridge.mcmc.base.ChainState`, to compose with
    the flow kernel.

    Trajectory ``n`` (the state's step) draws from ``rng_key(rng_key(seed, tag(name)), n)``.  On
    the chains whose trajectory was accepted, ``log q``, ``log w`` and the estimate become unknown
    (NaN): the flow kernel recomputes them; on rejected chains they are kept bit for bit.
    ``kwargs`` go to :func:`hmc_kernel` (``warmup`` counts elementary steps)."""
    inner = hmc_kernel(integrator, tau, **kwargs)
    tag = stream_tag(name)

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            hs = inner.init(u.U, u.seed, u.step)
            check_action(name, u, hs.action)
            return u
        hs = inner.init(u, seed, step)
        return chain_state(u, hs.action, seed, step)

    def step(state: ChainState) -> tuple[ChainState, StepInfo]:
        t0 = time.perf_counter()
        hs, hinfo = inner.step(HMCState(state.U, state.action, rng_key(state.seed, tag),
                                        state.step))
        acc = hinfo.accepted
        new = state._replace(
            U=hs.U, action=hs.action,
            log_q=torch.where(acc, nan_like(state.log_q), state.log_q),
            log_w=torch.where(acc, nan_like(state.log_w), state.log_w),
            log_est=torch.where(acc, nan_like(state.log_est), state.log_est),
            step=state.step + 1)
        info = StepInfo(state.step, name, acc, hinfo.delta_h, hinfo.acc_prob, 0, 0,
                        time.perf_counter() - t0, hinfo)
        return new, info

    return Kernel(init, step)
