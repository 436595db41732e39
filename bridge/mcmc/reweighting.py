"""Importance weights of independent proposals: effective sample size, the acceptance of an
independence-Metropolis chain over a batch, self-normalised reweighted means, and independent flow
samples with their log-weights (``<O>_p = E_q[w O] / E_q[w]``; arXiv:2003.06413, sec. V)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch

from ..errors import ConfigError, PhysicsError
from ..lattice import Lattice
from ..rng import generator, rng_key
from .base import stream_tag
from .flow_mh import Action, Estimator, check_flow

__all__ = ["ess", "imh_acceptance", "reweighted_mean", "ReweightResult", "reweight_samples"]


def ess(logw: torch.Tensor | np.ndarray) -> float:
    """Normalised effective sample size ``(sum w)^2 / (N sum w^2)`` (Kish) of log-weights
    ``logw``: 1 for equal weights, ``1/N`` when one weight carries everything."""
    lw = torch.as_tensor(logw).detach().double().flatten()
    lw = lw - lw.max()
    w = lw.exp()
    return float(w.sum() ** 2 / (lw.numel() * (w * w).sum()))


def imh_acceptance(logw: torch.Tensor, gen: torch.Generator | None = None) -> float:
    """Acceptance rate of an independence-Metropolis chain run over the batch in order
    (proposal ``q``, target ``p``, ``w = p/q``; accept with ``min(1, w'/w)``)."""
    lw = logw.detach().double().cpu()
    logu = torch.log(torch.rand(lw.numel(), generator=gen, dtype=torch.float64)).tolist()
    lw = lw.tolist()
    cur, acc = lw[0], 0
    for x, lu in zip(lw[1:], logu[1:], strict=True):
        if lu < x - cur:
            cur, acc = x, acc + 1
    return acc / max(len(lw) - 1, 1)


def reweighted_mean(obs: torch.Tensor, logw: torch.Tensor) -> tuple[float, float]:
    """Self-normalised importance-sampling estimate ``sum w O / sum w`` and its delta-method
    error ``sqrt(sum w^2 (O - mean)^2) / sum w`` (exact in the limit of many samples)."""
    lw = logw.detach().double()
    w = (lw - lw.max()).exp()
    o = obs.detach().double()
    mean = float((w * o).sum() / w.sum())
    err = float(torch.sqrt((w * w * (o - mean) ** 2).sum()) / w.sum())
    return mean, err


class ReweightResult(NamedTuple):
    """Independent flow samples with their log-weights ``log w = -S - log q + log W_hat``."""

    U: torch.Tensor | None  # [n, ...] (None when not kept)
    action: torch.Tensor
    log_q: torch.Tensor
    log_w: torch.Tensor
    observable: torch.Tensor | None  # observable(U) per sample, when given
    ess: float  # normalised ESS (:func:`ess`)


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
    :func:`reweighted_mean`).  Chunk ``c`` of ``batch_size`` samples is drawn from
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
