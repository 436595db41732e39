"""Monomials: the terms of the HMC Hamiltonian (Chroma's ``Monomials``).

A monomial has ``action(U) -> [batch]``, ``force(U) -> like U`` (project force convention, see
:mod:`bridge.gauge`) and ``refresh(U, generator)`` (heat-bath of auxiliary fields; a no-op for gauge
monomials).  ``stochastic`` says whether the action depends on auxiliary fields drawn by
``refresh`` (pseudofermions); deterministic actions are cached in sampler states.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..gauge import wilson_action, wilson_force

__all__ = ["Monomial", "GaugeMonomial"]


@runtime_checkable
class Monomial(Protocol):
    name: str
    stochastic: bool

    def action(self, u: torch.Tensor) -> torch.Tensor: ...

    def force(self, u: torch.Tensor) -> torch.Tensor: ...

    def refresh(self, u: torch.Tensor, generator: torch.Generator) -> None: ...


class GaugeMonomial:
    """Chroma's ``GAUGE_MONOMIAL`` with ``WILSON_GAUGEACT``: ``S = beta sum (1 - Re Tr P / Nc)``."""

    stochastic = False

    def __init__(self, beta: float, name: str = "gauge") -> None:
        beta = float(beta)
        if not beta == beta or beta in (float("inf"), float("-inf")):
            raise ValueError(f"beta: expected a finite number, got {beta}")
        self.beta = beta
        self.name = name

    def action(self, u: torch.Tensor) -> torch.Tensor:
        return wilson_action(u, self.beta)

    def force(self, u: torch.Tensor) -> torch.Tensor:
        return wilson_force(u, self.beta)

    def refresh(self, u: torch.Tensor, generator: torch.Generator) -> None:
        return None

    def __repr__(self) -> str:
        return f"GaugeMonomial(beta={self.beta})"
