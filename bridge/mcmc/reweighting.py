"""Importance weights of independent proposals: effective sample size, the acceptance of an
independence-Metropolis chain over a batch, and self-normalised reweighted means."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["ess", "imh_acceptance", "reweighted_mean"]


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
