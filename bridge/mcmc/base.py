"""Markov kernels as ``(init, step)`` pairs, and the chain state they share (as blackjax's
``base.py``).

A kernel is ``init(U_or_state, seed=0, step=0) -> state`` and ``step(state) -> (state, info)``.
Every kernel of :mod:`bridge.mcmc` except the bare :func:`bridge.mcmc.hmc.hmc_kernel` acts on
:class:`ChainState`, which carries what is costly to recompute: ``U``, ``S(U)``, the flow density
``log q(U)``, the importance log-weight ``log w = -S - log q + log W`` and the pseudo-marginal
estimate ``log W(U)``.  A kernel that moves ``U`` without knowing ``q`` marks the flow quantities
unknown (NaN) and the flow kernel recomputes them, so kernels never know each other
(docs/sampler.md).
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError
from ..lattice import Lattice

__all__ = ["Kernel", "ChainState", "StepInfo", "chain_state", "flat_infos", "stream_tag"]


class Kernel(NamedTuple):
    """A Markov kernel: ``init(U_or_state, seed, step) -> state``, ``step(state) -> (state,
    info)``."""

    init: Callable
    step: Callable


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


def stream_tag(name: str) -> int:
    """The kernel-specific stream constant: CRC-32 of the kernel's name (stable across runs)."""
    return zlib.crc32(name.encode())


def nan_like(like: torch.Tensor) -> torch.Tensor:
    """NaN of ``like``'s shape, dtype and device: the marker of an unknown flow quantity."""
    return torch.full_like(like, math.nan)


def chain_state(u: torch.Tensor, action: torch.Tensor, seed: int = 0, step: int = 0) -> ChainState:
    """A fresh state at ``U`` with its action; flow quantities unknown, estimate 0 (none)."""
    Lattice.of(u).check_gauge(u)
    a = action.detach()
    if a.shape != (u.shape[0],):
        raise ValueError(f"action: expected shape [{u.shape[0]}], got {tuple(a.shape)}")
    return ChainState(u, a, nan_like(a), nan_like(a), torch.zeros_like(a), int(seed), int(step),
                      {})


def check_action(name: str, state: ChainState, action: torch.Tensor) -> None:
    """Refuse a kernel whose action at the state's ``U`` differs from the cached one: the kernels
    of one chain must target the same distribution."""
    diff = (action - state.action).abs()
    tol = 1e-9 * (1.0 + state.action.abs())
    if not bool((diff <= tol).all()):
        raise ConfigError(
            f"{name}: the chain's cached action {state.action.tolist()} differs from this "
            f"kernel's action {action.tolist()} at the same U: the kernels target different "
            f"distributions")


def flat_infos(info: StepInfo | Sequence[Any]) -> tuple[StepInfo, ...]:
    """The elementary :class:`StepInfo` records of a (possibly composite) step's info."""
    if isinstance(info, StepInfo):
        return (info,)
    out: list[StepInfo] = []
    for i in info:
        out.extend(flat_infos(i))
    return tuple(out)
