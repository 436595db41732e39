"""Self-training of joint Nf = 2 models in stages (arXiv:2208.03832, sec. 3.1): the marginal
``q(U)`` first, by reverse KL to ``p(U) ~ exp(-S_g) det(K^dag K + mu0)`` with the stochastic
gradient of the determinant (arXiv:2106.05934, app. C; :func:`~.joint.logdet_surrogate`), then the
conditional ``q(phi | U)`` with the marginal frozen, by reverse KL of the joint density, then
optionally both.  ``mu0`` (the paper: 1e-5) regulates ``K^dag K`` during training only.

Each stage is a ``loss(generator, device) -> (surrogate, log w)`` for
:class:`~.training.Trainer`; ``log w`` are the live per-sample log-weights the trainer reports:
``-S_g - log q(U)`` (marginal stage: the determinant is left out, so the live ESS is that of the
gauge part only) and the one-draw joint weight ``-S_g - log q(U) + log W_1`` (conditional and
joint stages).  Fresh gauge fields are drawn every ``refresh`` steps of the conditional stage
(a pool of exact samples of the frozen marginal; ``refresh = 1``: every step), pool ``k`` from
the stream ``rng_key(seed, k, 0x9001)``, so that a resumed run continues bit for bit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..errors import ConfigError
from ..fermions.pseudofermion import gaussian_noise
from ..gauge import wilson_action
from ..rng import generator, rng_key
from ..solvers import CG
from .joint import JointFlow, _norm2, logdet_surrogate, normal_operator
from .models import make_flow
from .pseudofermion import PseudofermionFlow

__all__ = ["STAGES", "make_joint_flow", "MarginalLoss", "ConditionalLoss", "stage_parameters"]

STAGES = ("marginal", "conditional", "joint")
_POOL_STREAM = 0x9001


def make_joint_flow(kappa: float, *, c_sw: float = 0.0, boundary: Sequence[complex] = (1, 1, 1, -1),
                    marginal: dict[str, Any] | None = None,
                    conditional: dict[str, Any] | None = None,
                    dtype: torch.dtype = torch.float64) -> JointFlow:
    """A 4D SU(3) joint model: ``make_flow("SU3", 4, **marginal)`` (default the residual staple
    flow) and a :class:`~.pseudofermion.PseudofermionFlow` with ``**conditional``."""
    m = {"arch": "residual", **(marginal or {})}
    return JointFlow(make_flow("SU3", 4, dtype=dtype, **m),
                     PseudofermionFlow(kappa, c_sw=c_sw, boundary=boundary, dtype=dtype,
                                       **(conditional or {})))


def stage_parameters(model: JointFlow, stage: str) -> list[torch.nn.Parameter]:
    """The parameters a stage optimises (the others are frozen: ``requires_grad = False``)."""
    if stage not in STAGES:
        raise ConfigError(f"stage: expected one of {STAGES}, got {stage!r}")
    train_m = stage in ("marginal", "joint")
    train_c = stage in ("conditional", "joint")
    for p in model.marginal.parameters():
        p.requires_grad_(train_m)
    for p in model.conditional.parameters():
        p.requires_grad_(train_c)
    return [p for p in model.parameters() if p.requires_grad]


class MarginalLoss:
    """Reverse KL of the marginal: surrogate ``log q(U) + S_g(U) - logdet_surrogate(U)``
    (module docstring); ``draws`` noise vectors per field for the trace estimate."""

    def __init__(self, model: JointFlow, beta: float, batch: int, nrow: Sequence[int], *,
                 mu0: float = 1e-5, draws: int = 1) -> None:
        self.model, self.beta, self.batch, self.nrow = model, float(beta), int(batch), nrow
        self.mu0, self.draws = float(mu0), int(draws)
        self.solver = CG(tol=1e-8, max_iter=5000)

    def __call__(self, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        u, logq = self.model.marginal.sample(self.batch, self.nrow, generator=gen, device=device)
        f = logq + wilson_action(u, self.beta)
        det = logdet_surrogate(u, self.model.conditional, gen, draws=self.draws, mu0=self.mu0,
                               solver=self.solver)
        return (f - det).mean(), -f.detach()


class ConditionalLoss:
    """Reverse KL of the joint density at fixed marginal: per draw
    ``-log W = phi^dag (K^dag K + mu0)^{-1} phi - chi^dag chi - log|det|``; the gradient of the
    bilinear is ``2 Re <X, dphi>`` with ``X = (K^dag K + mu0)^{-1} phi`` held fixed.
    ``stage="joint"`` also differentiates the marginal (its determinant gradient from
    :func:`~.joint.logdet_surrogate`)."""

    def __init__(self, model: JointFlow, beta: float, batch: int, nrow: Sequence[int], *,
                 mu0: float = 1e-5, refresh: int = 1, stage: str = "conditional",
                 seed: int = 0) -> None:
        self.model, self.beta, self.batch, self.nrow = model, float(beta), int(batch), nrow
        self.mu0, self.refresh, self.stage = float(mu0), max(int(refresh), 1), stage
        self.seed = int(seed)
        self.solver = CG(tol=1e-8, max_iter=5000)
        self._pool: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._pool_index = -1
        self.calls = 0  # steps taken (set it to the trainer's step count after a resume)

    def _gauge(self, gen: torch.Generator, device: torch.device
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.stage == "joint":
            u, logq = self.model.marginal.sample(self.batch, self.nrow, generator=gen,
                                                 device=device)
            return u, logq, wilson_action(u, self.beta)
        k = self.calls // self.refresh  # pool k from its own stream: a resumed run is the same
        if self._pool is None or self._pool_index != k:
            with torch.no_grad():
                pgen = generator(rng_key(self.seed, k, _POOL_STREAM), device)
                u, logq = self.model.marginal.sample(self.batch, self.nrow, generator=pgen,
                                                     device=device)
                self._pool = (u, logq, wilson_action(u, self.beta))
                self._pool_index = k
        return self._pool

    def __call__(self, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        u, logq, s_g = self._gauge(gen, device)
        self.calls += 1
        flow = self.model.conditional
        ud = u.detach()
        setup = flow.setup(ud)
        op = setup[0]
        b = u.shape[0]
        chi = gaussian_noise((b, 1, *op.eo_shape()[1:]), generator=gen, dtype=u.dtype,
                             device=u.device)
        phi, logdet = flow(chi, ud, setup)
        with torch.no_grad():
            x, _ = self.solver.solve(normal_operator(op, b, 1, self.mu0),
                                     phi.detach().reshape(b, *phi.shape[2:]))
            x = x.view_as(phi)
            s_pf = (phi.detach().conj() * x).real.flatten(2).sum(2)[:, 0]
        nlogw_pf = s_pf - _norm2(chi)[:, 0] - logdet.detach()
        sur = 2.0 * (x.conj() * phi).real.flatten(1).sum(1) - logdet
        if self.stage == "joint":
            sur = sur + logq + s_g - logdet_surrogate(u, flow, gen, mu0=self.mu0,
                                                      solver=self.solver)
        logw = -(logq + s_g).detach() - nlogw_pf
        self.last_log_w_pf = -nlogw_pf.detach()
        return sur.mean(), logw
