"""Compositions of kernels on :class:`ChainState`: fixed cycles, random mixtures, and a driver.

If every kernel leaves ``p`` invariant, so does the cycle ``K = K_a^k K_b^m`` (``p K_a = p`` and
``p K_b = p`` give ``p K = p``) and the mixture ``K = sum_i p_i K_i`` with probabilities
independent of the state (``p K = sum_i p_i p K_i = p``; reversible when every ``K_i`` is).
See docs/sampler.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from ..errors import ConfigError
from ..rng import generator, rng_key
from .base import ChainState, Kernel, StepInfo, flat_infos, stream_tag

__all__ = ["compose", "mixture", "run_chain"]


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
