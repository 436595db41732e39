"""Independence Metropolis with proposals from a normalizing flow, on :class:`ChainState`.

Proposals ``U' ~ q`` independent of the current state, accepted with ``min(1, w(U') / w(U))``,
``w = p / q`` up to a constant: ``p(U) q(U') min(1, w(U')/w(U)) = min(p(U) q(U'), p(U') q(U))``
is symmetric, so ``p`` is invariant (Tierney, Ann. Stat. 22 (1994) 1701; arXiv:2003.06413,
sec. V; arXiv:2101.08176, sec. 3.4).  Needs ``q > 0`` where ``p > 0`` (true on the Haar prior);
a proposal with non-finite ``log w`` is rejected, the Metropolis step of a zero-density proposal.

Pseudo-marginal chains (Andrieu & Roberts, Ann. Stat. 37 (2009) 697; arXiv:2208.03832): with an
unbiased non-negative estimate ``W_hat`` of a factor of the target attached to the state until the
next acceptance, the chain on ``(U, W_hat)`` has ``U`` marginal ``p``.  Where another kernel moved
``U`` (the estimate is unknown), the estimate is redrawn from its conditional under the extended
target, ``estimator.conditional(U, generator)`` (:class:`bridge.flows.joint.MultiDrawEstimator`:
one exact heat-bath draw among the N), not from the proposal's distribution, which would bias the
chain; an estimator without ``conditional`` must be exact (deterministic) for the composition to
stay exact.  Random streams, the
proposal buffer in the state and the derivations: docs/sampler.md.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError, PhysicsError
from ..lattice import Lattice
from ..rng import generator, rng_key
from .base import ChainState, Kernel, StepInfo, chain_state, check_action, stream_tag

__all__ = ["FlowBuffer", "flow_metropolis_kernel", "check_flow", "Action", "Estimator"]

Action = Callable[[torch.Tensor], torch.Tensor]
Estimator = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


class FlowBuffer(NamedTuple):
    """Proposals of the current block: ``U[i, c]`` is proposal ``i`` for chain ``c``."""

    block: int  # number of the next block to draw
    index: int  # next unused proposal of the current block
    U: torch.Tensor | None  # [batch_size, batch, ...]
    action: torch.Tensor | None  # [batch_size, batch]
    log_q: torch.Tensor | None  # [batch_size, batch]


def _group_name(nc: int) -> str:
    return "U(1)" if nc == 1 else f"SU({nc})"


def check_flow(flow: Any, u: torch.Tensor) -> None:
    """Refuse a flow built for another group, dimension or lattice than the chain's field, with a
    message naming both."""
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    fg = getattr(flow, "group", None)
    fnc = getattr(fg, "nc", None)
    if fnc is not None and int(fnc) != nc:
        raise ConfigError(f"flow: the model is for {fg} links, the chain's field has "
                          f"{_group_name(nc)} links ({nc}x{nc}) on {lat}")
    fnd = getattr(flow, "nd", None)
    if fnd is not None and int(fnd) != lat.nd:
        raise ConfigError(f"flow: the model is {fnd}-dimensional ({fg}), the chain's lattice "
                          f"{lat} is {lat.nd}-dimensional")
    for i, layer in enumerate(getattr(flow, "layers", ())):
        mask = getattr(layer, "mask", None)
        if mask is not None and hasattr(mask, "check_lattice"):
            try:
                mask.check_lattice(lat)
            except ValueError as exc:
                raise ConfigError(f"flow: layer {i} of the model ({fg}, Nd = {fnd}) cannot act "
                                  f"on the chain's lattice {lat}: {exc}") from exc


def flow_metropolis_kernel(
    flow: Any,
    action: Action,
    *,
    batch_size: int = 16,
    log_weight_estimator: Estimator | None = None,
    name: str = "flow",
) -> Kernel:
    """Independence Metropolis with proposals from ``flow`` (module docstring).

    ``flow``: a :class:`~bridge.flows.models.GaugeFlow` (or anything with ``sample(n, lattice,
    generator=, dtype=, device=) -> (U, log q)`` and ``log_prob(U)``).  ``action``: ``U ->
    S(U) [batch]``, the target's action (the same as the other kernels').  ``batch_size``:
    proposals per chain generated in one call of the flow (one block) and consumed one per step;
    the block lives in the state.  ``log_weight_estimator(U, generator) -> log W_hat [batch]``: the
    pseudo-marginal hook.  ``name``: the kernel's label in :class:`StepInfo`, its stream constant
    and its slot in ``ChainState.aux`` (distinct per kernel of a chain).

    ``init(U_or_state, seed=0, step=0)`` accepts a field or another kernel's :class:`ChainState`
    (and then fills in ``log q`` through the exact inverse); ``step(state) -> (state, StepInfo)``.
    """
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ConfigError(f"batch_size: expected a positive number of proposals, got {batch_size}")
    tag = stream_tag(name)

    def fill(state: ChainState) -> tuple[ChainState, int]:
        """Recompute log q (exact inverse), the estimate and log w where they are unknown."""
        miss = torch.isnan(state.log_q) | torch.isnan(state.log_est) | torch.isnan(state.log_w)
        n = int(miss.sum())
        if n == 0:
            return state, 0
        idx = miss.nonzero().squeeze(1)
        u = state.U[idx]
        with torch.no_grad():
            lq = state.log_q.clone()
            lq[idx] = flow.log_prob(u).detach().to(lq.dtype)
            est = state.log_est.clone()
            if log_weight_estimator is None:
                est[idx] = 0.0
            else:
                gen = generator(rng_key(state.seed, state.step, tag, 2), u.device)
                refresh = getattr(log_weight_estimator, "conditional", log_weight_estimator)
                est[idx] = refresh(u, gen).detach().to(est.dtype)
            lw = -state.action - lq + est
        return state._replace(log_q=lq, log_w=lw, log_est=est), n

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            state = u
            check_flow(flow, state.U)
            with torch.no_grad():
                check_action(name, state, action(state.U).detach())
        else:
            check_flow(flow, u)
            with torch.no_grad():
                state = chain_state(u, action(u), seed, step)
        state, _ = fill(state)
        bad = torch.isnan(state.log_w) | (state.log_w == math.inf)
        if bool(bad.any()):
            raise PhysicsError(f"{name}: log w of the initial state is {state.log_w.tolist()}; "
                               f"expected finite values or -inf")
        aux = dict(state.aux)
        aux.setdefault(name, FlowBuffer(0, batch_size, None, None, None))
        return state._replace(aux=aux)

    def draw_block(state: ChainState, buf: FlowBuffer) -> FlowBuffer:
        u0 = state.U
        nb = int(u0.shape[0])
        gen = generator(rng_key(state.seed, buf.block, tag, 0), u0.device)
        with torch.no_grad():
            u, lq = flow.sample(batch_size * nb, Lattice.of(u0), generator=gen, dtype=u0.dtype,
                                device=u0.device)
            u = u.detach().to(u0.dtype)
            s = action(u).detach().to(state.action.dtype)
        shape = (batch_size, nb)
        return FlowBuffer(buf.block + 1, 0, u.reshape(*shape, *u0.shape[1:]), s.reshape(shape),
                          lq.detach().to(state.log_q.dtype).reshape(shape))

    def step(state: ChainState) -> tuple[ChainState, StepInfo]:
        t0 = time.perf_counter()
        buf = state.aux.get(name)
        if buf is None:
            raise ConfigError(f"{name}: the state has no proposal buffer of this kernel; pass it "
                              f"through this kernel's init first")
        if buf.U is not None and buf.U.shape[:2] != (batch_size, state.U.shape[0]):
            raise ConfigError(f"{name}: the state's proposal buffer holds {tuple(buf.U.shape[:2])}"
                              f" (proposals, chains), this kernel expects "
                              f"({batch_size}, {state.U.shape[0]})")
        state, refreshed = fill(state)
        if buf.index >= batch_size:
            buf = draw_block(state, buf)
        i = buf.index
        u_new, s_new, lq_new = buf.U[i], buf.action[i], buf.log_q[i]
        if log_weight_estimator is None:
            est_new = torch.zeros_like(s_new)
        else:
            gen = generator(rng_key(state.seed, state.step, tag, 1), u_new.device)
            with torch.no_grad():
                est_new = log_weight_estimator(u_new, gen).detach().to(s_new.dtype)
        lw_new = -s_new - lq_new + est_new
        finite = torch.isfinite(lw_new)
        nonfinite = int((~finite).sum())
        if nonfinite:
            warnings.warn(f"{name}: step {state.step}: {nonfinite} proposal(s) with non-finite "
                          f"log-weight rejected", RuntimeWarning, stacklevel=2)
        with torch.no_grad():
            delta = lw_new - state.log_w
            gen = generator(rng_key(state.seed, state.step, tag, 3), u_new.device)
            logu = torch.log(torch.rand(delta.shape, generator=gen, dtype=delta.dtype,
                                        device=delta.device))
            accepted = finite & (logu < delta)
            acc_prob = torch.where(finite, torch.exp(delta.clamp(max=0.0)), 0.0)
            acc_prob = torch.nan_to_num(acc_prob, nan=0.0)
        sel = accepted.reshape(-1, *([1] * (state.U.dim() - 1)))
        aux = dict(state.aux)
        aux[name] = buf._replace(index=i + 1)
        new = ChainState(
            torch.where(sel, u_new, state.U),
            torch.where(accepted, s_new, state.action),
            torch.where(accepted, lq_new, state.log_q),
            torch.where(accepted, lw_new, state.log_w),
            torch.where(accepted, est_new, state.log_est),
            state.seed, state.step + 1, aux)
        info = StepInfo(state.step, name, accepted, delta, acc_prob, nonfinite, refreshed,
                        time.perf_counter() - t0)
        return new, info

    return Kernel(init, step)
