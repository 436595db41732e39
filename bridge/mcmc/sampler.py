"""The hybrid sampler: flow-proposal Metropolis kernels, HMC, and their compositions.

Every kernel is an ``(init, step)`` pair (:class:`bridge.mcmc.hmc.Kernel`) acting on one shared state
type, :class:`ChainState`, which carries what is costly: the field ``U``, its action ``S(U)``, the
flow density ``log q(U)``, the importance log-weight ``log w(U) = -S(U) - log q(U) + log W(U)``
and the pseudo-marginal log-estimate ``log W(U)`` attached to ``U``.  A kernel that moves ``U``
and does not know ``q`` (HMC) marks ``log q``, ``log w`` and ``log W`` as unknown (NaN) on the
chains it moved; the flow kernel recomputes them through the flow's exact inverse before its next
decision.  So kernels never know each other, and adding one touches none of the others
(docs/design.md, "Kernels compose; the state carries what is costly").

Exactness (each kernel leaves ``p(U) = exp(-S(U)) / Z`` invariant, so every composition and every
mixture with fixed probabilities does as well):

* :func:`flow_metropolis_kernel`: independence Metropolis (Metropolis-Hastings with a proposal
  ``q`` independent of the current state; Tierney, Ann. Stat. 22 (1994) 1701).  Acceptance
  ``min(1, w(U') / w(U))`` with ``w = p / q`` up to a constant satisfies detailed balance:
  ``p(U) q(U') min(1, w(U')/w(U)) = min(p(U) q(U'), p(U') q(U))`` is symmetric
  (arXiv:2003.06413, sec. V; arXiv:2101.08176, sec. 3.4).  Needs ``q > 0`` wherever ``p > 0``,
  true for a flow built on the Haar prior.  Decisions are made in log space; a proposal whose
  ``log w`` is not finite is rejected (and counted), which is the Metropolis step of a proposal
  with zero density, so exactness is kept.
* :func:`hmc`: :func:`bridge.mcmc.hmc.hmc_kernel` on :class:`ChainState` (Duane et al. 1987).
* :func:`compose`: ``K = K_a^k K_b^m``: if ``p K_a = p`` and ``p K_b = p`` then ``p K = p``.
* :func:`mixture`: ``K = sum_i p_i K_i`` with probabilities independent of the state:
  ``p K = sum_i p_i p K_i = p``; reversible when every ``K_i`` is.

Pseudo-marginal chains (Andrieu & Roberts, Ann. Stat. 37 (2009) 697; arXiv:2208.03832 for
Nf = 2 flows): with ``log_weight_estimator(U, generator) -> log W_hat(U)``, ``W_hat`` a
non-negative unbiased estimate of a factor ``W(U)`` of the target, ``p(U) ~ exp(-S(U)) W(U)``, the
flow kernel accepts with ``min(1, w_hat(U') / w_hat(U))`` where ``w_hat(U)`` uses the estimate
drawn when ``U`` was accepted; the estimate stays attached to the state until the next acceptance
(it is never redrawn for the current state).  The chain on ``(U, W_hat)`` then targets
``exp(-S) W_hat g(W_hat | U)``, whose ``U`` marginal is ``p``.  A kernel that moves ``U`` without
knowing ``W`` (plain HMC) drops the estimate; the flow kernel then draws a fresh one for the
current ``U``, which is *not* exact (Monte Carlo within Metropolis) unless that kernel targets
the extended distribution itself (HMC with the same auxiliary fields: the Nf = 2 issue).
``StepInfo.refreshed`` counts those fresh draws so a run can tell.

Random streams (:mod:`bridge.rng`): the state's ``step`` counts elementary kernel steps; step
``n`` of a kernel named ``name`` draws from ``rng_key(seed, n, tag(name), ...)`` (HMC from
``rng_key(rng_key(seed, tag), n)``), and the flow proposals of block ``b`` from
``rng_key(seed, b, tag(name), 0)``.  The proposal buffer of the current block (``batch_size``
proposals per chain, generated in one call of the flow and consumed one per step) is part of the
state (``ChainState.aux[name]``), so the state tuple is a complete checkpoint: a resumed chain is
bit-identical.
"""

from __future__ import annotations

import math
import time
import warnings
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError, PhysicsError
from .reweighting import ess
from ..lattice import Lattice
from ..rng import generator, rng_key
from .hmc import HMCState, Kernel, hmc_kernel

__all__ = [
    "ChainState", "StepInfo", "FlowBuffer", "ReweightResult", "Kernel", "chain_state",
    "flow_metropolis_kernel", "hmc", "compose", "mixture", "run_chain", "reweight_samples",
    "check_flow", "flat_infos", "stream_tag",
]

Action = Callable[[torch.Tensor], torch.Tensor]
Estimator = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def stream_tag(name: str) -> int:
    """The kernel-specific stream constant: CRC-32 of the kernel's name (stable across runs)."""
    return zlib.crc32(name.encode())


class ChainState(NamedTuple):
    """State of a batch of independent chains (batch axis first).

    ``log_q``, ``log_w`` and ``log_est`` are NaN on the chains where they are unknown (after a
    kernel that does not know the flow moved ``U``); ``aux`` holds per-kernel private caches keyed
    by kernel name (the flow kernel's proposal buffer).  The tuple is a complete checkpoint."""

    U: torch.Tensor  # [batch, mu, lattice..., Nc, Nc]
    action: torch.Tensor  # [batch] S(U)
    log_q: torch.Tensor  # [batch] log q(U), NaN where unknown
    log_w: torch.Tensor  # [batch] -S - log q + log_est, NaN where unknown
    log_est: torch.Tensor  # [batch] pseudo-marginal log W_hat(U) (0 without estimator)
    seed: int
    step: int  # number of the next elementary step
    aux: Mapping[str, Any]


class StepInfo(NamedTuple):
    """Record of one elementary kernel step (composite kernels return a tuple of these)."""

    step: int
    kernel: str
    accepted: torch.Tensor  # [batch] bool
    delta: torch.Tensor  # [batch]: deltaH (HMC) or log w(U') - log w(U) (flow)
    acc_prob: torch.Tensor  # [batch]
    nonfinite: int  # proposals rejected because their log-weight was not finite
    refreshed: int  # chains whose log q / estimate had to be recomputed before the step
    seconds: float
    detail: Any = None  # the wrapped kernel's own info (HMCInfo)


class FlowBuffer(NamedTuple):
    """Proposals of the current block: ``U[i, c]`` is proposal ``i`` for chain ``c``."""

    block: int  # number of the next block to draw
    index: int  # next unused proposal of the current block
    U: torch.Tensor | None  # [batch_size, batch, ...]
    action: torch.Tensor | None  # [batch_size, batch]
    log_q: torch.Tensor | None  # [batch_size, batch]


def _nan(like: torch.Tensor) -> torch.Tensor:
    return torch.full_like(like, math.nan)


def chain_state(u: torch.Tensor, action: torch.Tensor, seed: int = 0, step: int = 0) -> ChainState:
    """A fresh state at ``U`` with its action; flow quantities unknown, estimate 0 (none)."""
    Lattice.of(u).check_gauge(u)
    a = action.detach()
    if a.shape != (u.shape[0],):
        raise ValueError(f"action: expected shape [{u.shape[0]}], got {tuple(a.shape)}")
    return ChainState(u, a, _nan(a), _nan(a), torch.zeros_like(a), int(seed), int(step), {})


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


def _check_action(name: str, state: ChainState, action: torch.Tensor) -> None:
    diff = (action - state.action).abs()
    tol = 1e-9 * (1.0 + state.action.abs())
    if not bool((diff <= tol).all()):
        raise ConfigError(
            f"{name}: the chain's cached action {state.action.tolist()} differs from this "
            f"kernel's action {action.tolist()} at the same U: the kernels target different "
            f"distributions")


def flow_metropolis_kernel(
    flow: Any,
    action: Action,
    *,
    batch_size: int = 16,
    log_weight_estimator: Estimator | None = None,
    name: str = "flow",
) -> Kernel:
    """Independence Metropolis with proposals from ``flow`` (module docstring for exactness).

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
                est[idx] = log_weight_estimator(u, gen).detach().to(est.dtype)
            lw = -state.action - lq + est
        return state._replace(log_q=lq, log_w=lw, log_est=est), n

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            state = u
            check_flow(flow, state.U)
            with torch.no_grad():
                _check_action(name, state, action(state.U).detach())
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


def hmc(integrator: Any, tau: float, *, name: str = "hmc", **kwargs: Any) -> Kernel:
    """:func:`bridge.mcmc.hmc.hmc_kernel` as a kernel on :class:`ChainState`.

    Trajectory ``n`` (the state's step) draws from ``rng_key(rng_key(seed, tag(name)), n)``.  On
    the chains whose trajectory was accepted, ``log q``, ``log w`` and the estimate become unknown
    (NaN): the flow kernel recomputes them; on rejected chains they are kept bit for bit.
    ``kwargs`` go to :func:`~bridge.mcmc.hmc.hmc_kernel` (``warmup`` counts elementary steps)."""
    inner = hmc_kernel(integrator, tau, **kwargs)
    tag = stream_tag(name)

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            hs = inner.init(u.U, u.seed, u.step)
            _check_action(name, u, hs.action)
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
            log_q=torch.where(acc, _nan(state.log_q), state.log_q),
            log_w=torch.where(acc, _nan(state.log_w), state.log_w),
            log_est=torch.where(acc, _nan(state.log_est), state.log_est),
            step=state.step + 1)
        info = StepInfo(state.step, name, acc, hinfo.delta_h, hinfo.acc_prob, 0, 0,
                        time.perf_counter() - t0, hinfo)
        return new, info

    return Kernel(init, step)


def flat_infos(info: StepInfo | Sequence[Any]) -> tuple[StepInfo, ...]:
    """The elementary :class:`StepInfo` records of a (possibly composite) step's info."""
    if isinstance(info, StepInfo):
        return (info,)
    out: list[StepInfo] = []
    for i in info:
        out.extend(flat_infos(i))
    return tuple(out)


def _init_all(kernels: Sequence[Kernel], u: torch.Tensor | ChainState, seed: int,
              step: int) -> ChainState:
    state = kernels[0].init(u, seed, step)
    for k in kernels[1:]:
        state = k.init(state)
    return state


def compose(schedule: Sequence[tuple[Kernel, int]]) -> Kernel:
    """``k`` steps of the first kernel, then ``m`` of the second, ...; one ``step`` runs the whole
    cycle and returns the tuple of elementary :class:`StepInfo` records.  Each kernel leaves ``p``
    invariant, so the cycle does (module docstring)."""
    sched = [(k, int(n)) for k, n in schedule]
    if not sched or any(n < 0 for _, n in sched) or sum(n for _, n in sched) == 0:
        raise ConfigError(f"schedule: expected (kernel, count >= 0) pairs with a positive total, "
                          f"got counts {[n for _, n in sched]}")

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        return _init_all([k for k, _ in sched], u, seed, step)

    def step(state: ChainState) -> tuple[ChainState, tuple[StepInfo, ...]]:
        infos: list[StepInfo] = []
        for k, n in sched:
            for _ in range(n):
                state, info = k.step(state)
                infos.extend(flat_infos(info))
        return state, tuple(infos)

    return Kernel(init, step)


def mixture(choices: Sequence[tuple[Kernel, float]], *, name: str = "mixture") -> Kernel:
    """Run one kernel chosen at random with fixed probabilities (normalised here), the same choice
    for every chain of the batch, from the stream ``rng_key(seed, step, tag(name))``.  The choice
    is independent of the state, so the mixture leaves ``p`` invariant (module docstring); nested
    mixtures need distinct names."""
    ks = [k for k, _ in choices]
    ps = [float(p) for _, p in choices]
    if not ks or any(not (p >= 0 and math.isfinite(p)) for p in ps) or sum(ps) <= 0:
        raise ConfigError(f"mixture: expected (kernel, probability >= 0) pairs with a positive "
                          f"sum, got {ps}")
    cum = torch.tensor(ps, dtype=torch.float64).cumsum(0)
    cum = cum / cum[-1]
    tag = stream_tag(name)

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        return _init_all(ks, u, seed, step)

    def step(state: ChainState) -> tuple[ChainState, tuple[StepInfo, ...]]:
        r = torch.rand(1, generator=generator(rng_key(state.seed, state.step, tag)),
                       dtype=torch.float64)
        i = min(int(torch.searchsorted(cum, r, right=True)), len(ks) - 1)
        state, info = ks[i].step(state)
        return state, flat_infos(info)

    return Kernel(init, step)


def run_chain(
    kernel: Kernel,
    state: ChainState,
    n_steps: int,
    measure: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[ChainState, list[StepInfo], torch.Tensor | None]:
    """``n_steps`` steps of ``kernel``; the elementary records and ``measure(U)`` after each step
    (shape ``[n_steps, batch, ...]``, or None)."""
    infos: list[StepInfo] = []
    obs = []
    for _ in range(int(n_steps)):
        state, info = kernel.step(state)
        infos.extend(flat_infos(info))
        if measure is not None:
            with torch.no_grad():
                obs.append(measure(state.U).detach())
    return state, infos, (torch.stack(obs) if measure is not None else None)


class ReweightResult(NamedTuple):
    """Independent flow samples with their log-weights ``log w = -S - log q + log W_hat``."""

    U: torch.Tensor | None  # [n, ...] (None when not kept)
    action: torch.Tensor
    log_q: torch.Tensor
    log_w: torch.Tensor
    observable: torch.Tensor | None  # observable(U) per sample, when given
    ess: float  # normalised ESS (bridge.flows.training.ess)


def reweight_samples(
    flow: Any,
    action: Action,
    n: int,
    lattice: Lattice | Sequence[int],
    *,
    seed: int = 0,
    batch_size: int = 256,
    observable: Callable[[torch.Tensor], torch.Tensor] | None = None,
    log_weight_estimator: Estimator | None = None,
    keep_fields: bool = True,
    dtype: torch.dtype = torch.complex128,
    device: torch.device | str | None = None,
    name: str = "reweight",
) -> ReweightResult:
    """``n`` independent samples ``U ~ q`` with ``log w`` for self-normalised importance sampling:
    ``<O>_p = E_q[w O] / E_q[w]`` (unbiased as ``n -> oo``; estimate with
    :func:`bridge.flows.training.reweighted_mean`).  Chunk ``c`` of ``batch_size`` samples is drawn from
    ``rng_key(seed, c, tag(name))``."""
    n = int(n)
    if n < 1 or int(batch_size) < 1:
        raise ConfigError(f"n, batch_size: expected positive counts, got {n}, {batch_size}")
    lat = lattice if isinstance(lattice, Lattice) else Lattice(lattice)
    tag = stream_tag(name)
    us, ss, lqs, lws, obs = [], [], [], [], []
    done, c = 0, 0
    while done < n:
        m = min(int(batch_size), n - done)
        gen = generator(rng_key(seed, c, tag), device)
        with torch.no_grad():
            u, lq = flow.sample(m, lat, generator=gen, dtype=dtype, device=device)
            if c == 0:
                check_flow(flow, u)
            s = action(u).detach()
            est = (torch.zeros_like(s) if log_weight_estimator is None
                   else log_weight_estimator(u, gen).detach())
            lq = lq.detach()
            ss.append(s)
            lqs.append(lq)
            lws.append(-s - lq + est)
            if observable is not None:
                obs.append(observable(u).detach())
            if keep_fields:
                us.append(u.detach())
        done, c = done + m, c + 1
    lw = torch.cat(lws)
    finite = torch.isfinite(lw)
    if not bool(finite.all()):
        warnings.warn(f"{name}: {int((~finite).sum())} sample(s) with non-finite log-weight get "
                      f"weight 0", RuntimeWarning, stacklevel=2)
        lw = torch.where(finite, lw, -math.inf)
    if not bool(finite.any()):
        raise PhysicsError(f"{name}: no sample has a finite log-weight")
    return ReweightResult(torch.cat(us) if keep_fields else None, torch.cat(ss), torch.cat(lqs),
                          lw, torch.cat(obs) if observable is not None else None,
                          ess(lw))
