"""Joint models ``q(U, phi) = q(U) q(phi | U)`` of QCD with Nf = 2 Wilson(-clover) fermions and
the multi-draw estimator of the fermion determinant (arXiv:2208.03832, sec. 3; arXiv:2207.08945,
sec. IV).

Target.  ``p(U, phi) ~ exp(-S_g(U) - phi^dag (K^dag K)^{-1} phi) |det A_ee|^2`` (the even-odd
HMC's: ``K`` the Schur operator, ``A_ee`` the even-site clover blocks, 1 for Wilson), whose ``U``
marginal is ``p(U) ~ exp(-S_g(U)) det(D^dag D)`` up to a ``U``-independent constant.

Weights.  With ``phi_i = f(chi_i | U)``, ``chi_i ~ exp(-chi^dag chi) / pi^n``,

    log W_i = -phi_i^dag (K^dag K)^{-1} phi_i + chi_i^dag chi_i + log |det df/dchi|
              [+ 2 log |det A_ee|]

has ``E[W_i] = det(K^dag K) [|det A_ee|^2]`` exactly (a Gaussian integral), so the average of
``N`` of them, ``W_hat(U)``, is an unbiased, positive estimate of the determinant and
``w(U) = exp(-S_g(U)) W_hat(U) / q(U)`` of the marginal weight (arXiv:2208.03832, sec. 3: "draw
multiple pseudofermion samples for fixed gauge fields and average the weights").

Exact refresh.  A pseudo-marginal chain targets the extended density
``pi(U, phi_1..N) = p(U) (1/N) sum_i p(phi_i | U) prod_{j != i} q(phi_j | U)``, whose ``U``
marginal is ``p`` and which equals ``q(U) prod_j q(phi_j|U) w(U; phi) / Z``: an independence
proposal from the model is accepted with ``min(1, w'/w)``, the current state keeping its
estimate.  A kernel that moves ``U`` leaving ``p(U)`` invariant (HMC, Chroma's ``hmc``) composes
exactly when the estimate is then redrawn from ``pi(phi | U)``: one draw from ``p(phi | U)`` (the
HMC heat bath ``phi = K^dag eta``, whose weight needs no solve: ``phi^dag (K^dag K)^{-1} phi =
eta^dag eta``) and ``N - 1`` from the model (:meth:`MultiDrawEstimator.conditional`).  Redrawing
all ``N`` from the model instead would bias the chain.  Derivation: docs/nf2.md.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fermions.evenodd import schur5, schur_normal5
from ..fermions.forces import schur_force_bilinear
from ..fermions.pseudofermion import gaussian_noise
from ..fermions.wilson import WilsonDirac
from ..lattice import Lattice
from ..solvers import CG
from .models import GaugeFlow
from .pseudofermion import PseudofermionFlow

__all__ = ["JointFlow", "MultiDrawEstimator", "pf_log_weights", "logdet_surrogate",
           "normal_operator"]


class JointFlow(nn.Module):
    """``q(U) q(phi | U)``: a gauge flow (``marginal``) and a :class:`PseudofermionFlow`
    (``conditional``).  As a gauge flow it is the marginal (``sample``, ``log_prob``, ``group``,
    ``nd``, ``layers``), so the flow kernels take it unchanged; :meth:`estimator` gives the
    pseudo-marginal weight."""

    def __init__(self, marginal: GaugeFlow, conditional: PseudofermionFlow) -> None:
        super().__init__()
        if marginal.nd != 4 or marginal.group.nc != conditional.nc:
            raise ConfigError(f"joint model: the pseudofermion flow needs a 4D SU"
                              f"({conditional.nc}) marginal, got {marginal.nd}D "
                              f"{marginal.group.name}")
        self.marginal, self.conditional = marginal, conditional
        self.group, self.nd = marginal.group, marginal.nd
        self.config = {"arch": "joint", "marginal": dict(marginal.config),
                       "conditional": dict(conditional.config)}

    @property
    def layers(self) -> nn.ModuleList:
        return self.marginal.layers

    @property
    def kappa(self) -> float:
        return self.conditional.kappa

    @property
    def differentiable_log_prob(self) -> bool:
        return self.marginal.differentiable_log_prob

    def forward(self, u0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.marginal.forward(u0)

    def reverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.marginal.reverse(u)

    def sample(self, n: int, lattice: Lattice | Sequence[int], **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` gauge fields from the marginal and their ``log q(U)``."""
        return self.marginal.sample(n, lattice, **kwargs)

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        return self.marginal.log_prob(u)

    def estimator(self, n_draws: int, **kwargs: Any) -> MultiDrawEstimator:
        """The multi-draw estimator of ``log det`` with ``n_draws`` pseudofermions per field."""
        return MultiDrawEstimator(self.conditional, n_draws, **kwargs)


def normal_operator(op: WilsonDirac, batch: int, draws: int, mu0: float = 0.0):
    """``K^dag K + mu0`` on fields ``[B * N, t, z, y, x/2, 4, Nc]`` (one CG system per draw)."""
    def apply(x: torch.Tensor) -> torch.Tensor:
        y = schur_normal5(op, x.reshape(batch, draws, *x.shape[1:]).contiguous()).reshape(x.shape)
        return y.add_(x, alpha=mu0) if mu0 else y
    return apply


def pf_log_weights(flow: PseudofermionFlow, u: torch.Tensor, n_draws: int,
                   gen: torch.Generator | None, *, exact_draws: int = 0,
                   solver: Any = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """``log W_i`` ``[B, N]`` (module docstring) for ``n_draws`` draws per field, the first
    ``exact_draws`` from the heat bath ``phi = K^dag eta`` instead of the model; also a
    ``[B, N]`` mask of the draws whose solve converged and the CG iteration count."""
    b = u.shape[0]
    nq = n_draws - exact_draws
    with torch.no_grad():
        setup = flow.setup(u)
        op = setup.op
        shape = (b, n_draws, *op.eo_shape()[1:])
        logw = torch.empty(b, n_draws, dtype=torch.float64, device=u.device)
        ok = torch.ones(b, n_draws, dtype=torch.bool, device=u.device)
        iters = 0
        const = 2.0 * op.clover_logdet(0) if op.has_clover else 0.0
        if exact_draws:
            eta = gaussian_noise((b, exact_draws, *shape[2:]), generator=gen, dtype=u.dtype,
                                 device=u.device)
            phi = schur5(op, eta, dagger=True)
            chi, ld_rev = flow.reverse(phi, u, setup)
            logw[:, :exact_draws] = (_norm2(chi) - _norm2(eta) - ld_rev[:, None]) + const
        if nq:
            chi = gaussian_noise((b, nq, *shape[2:]), generator=gen, dtype=u.dtype,
                                 device=u.device)
            phi, ld = flow(chi, u, setup)
            solver = solver or CG(tol=1e-10, max_iter=2000, raise_on_failure=False)
            x, stats = solver.solve(normal_operator(op, b, nq),
                                    phi.reshape(b * nq, *shape[2:]))
            iters += int(stats.iterations)
            x = x.view(b, nq, *shape[2:])
            s_pf = (phi.conj() * x).real.flatten(2).sum(2)
            logw[:, exact_draws:] = (-s_pf + _norm2(chi) + ld[:, None]) + const
            tol = float(getattr(solver, "tol", 1e-10))
            ok[:, exact_draws:] = (stats.residuals.view(b, nq) <= max(10 * tol, 1e-6))
        ok &= torch.isfinite(logw)
    return logw, ok, iters


def _norm2(x: torch.Tensor) -> torch.Tensor:
    """``x^dag x`` per configuration and draw ``[B, N]`` (float64)."""
    return (x.real.square() + x.imag.square()).flatten(2).sum(2).to(torch.float64)


class MultiDrawEstimator:
    """``log W_hat(U) = log mean_i W_i`` over ``n_draws`` pseudofermion draws (module
    docstring); ``estimator(U, generator)`` draws all from the model (proposals, reweighting),
    :meth:`conditional` redraws the estimate of a current state exactly (one heat-bath draw).

    A field whose solves do not converge (or whose weight is not finite) gets ``log W = -inf``
    (weight 0), and is counted in :attr:`failed`; never NaN.  ``max_systems`` bounds the
    fields ``x`` draws solved at once (memory)."""

    def __init__(self, flow: PseudofermionFlow, n_draws: int, *, solver: Any = None,
                 max_systems: int = 512) -> None:
        self.flow, self.n_draws = flow, int(n_draws)
        if self.n_draws < 1:
            raise ConfigError(f"pf_draws: expected at least one pseudofermion draw per gauge "
                              f"field, got {n_draws}")
        self.solver = solver
        self.max_systems = max(int(max_systems), self.n_draws)
        self.evaluated = self.failed = self.iterations = 0

    def log_weights(self, u: torch.Tensor, gen: torch.Generator | None,
                    exact_draws: int = 0) -> torch.Tensor:
        """``log W_i`` ``[B, N]`` (``-inf`` for every draw of a failed field)."""
        chunk = max(self.max_systems // self.n_draws, 1)
        out = []
        for start in range(0, u.shape[0], chunk):
            lw, ok, it = pf_log_weights(self.flow, u[start:start + chunk], self.n_draws, gen,
                                        exact_draws=exact_draws, solver=self.solver)
            bad = ~ok.all(1)
            self.failed += int(bad.sum())
            self.iterations += it
            out.append(torch.where(bad[:, None], -math.inf, lw))
        self.evaluated += int(u.shape[0])
        return torch.cat(out)

    def __call__(self, u: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        return _logmeanexp(self.log_weights(u, gen))

    def conditional(self, u: torch.Tensor, gen: torch.Generator | None) -> torch.Tensor:
        """The estimate of a state the chain already holds: one draw from the exact
        conditional ``p(phi | U)``, ``N - 1`` from the model (module docstring)."""
        return _logmeanexp(self.log_weights(u, gen, exact_draws=1))

    def stats(self) -> dict[str, int]:
        return {"evaluated": self.evaluated, "failed": self.failed,
                "cg_iterations": self.iterations, "pf_draws": self.n_draws}


def _logmeanexp(lw: torch.Tensor) -> torch.Tensor:
    m = lw.amax(1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    return (lw - m).exp().mean(1).log() + m[:, 0]


def logdet_surrogate(u: torch.Tensor, flow: PseudofermionFlow, gen: torch.Generator | None, *,
                     draws: int = 1, mu0: float = 0.0, solver: Any = None) -> torch.Tensor:
    """A scalar per configuration whose gradient with respect to the parameters behind ``u`` is
    an unbiased estimate of the gradient of ``log det(K^dag K + mu0)`` [``+ 2 log|det A_ee|``]
    (arXiv:2106.05934, app. C): ``Re[X^dag (K^dag K) eta]`` with ``X = (K^dag K + mu0)^{-1} eta``
    held fixed, ``E[eta eta^dag] = 1``.  Its ``U``-derivative comes from the HMC's force kernels
    (``G = G_K(X, K eta) + G_K(eta, K X)``) and enters as ``sum Re Tr[U M]``,
    ``M = (U^dag G)`` detached: for ``U -> exp(e Z) U`` both change by ``Re Tr[Z G]``."""
    with torch.no_grad():
        ud = u.detach()
        op = flow.operator(ud)
        b = ud.shape[0]
        eta = gaussian_noise((b, draws, *op.eo_shape()[1:]), generator=gen, dtype=ud.dtype,
                             device=ud.device)  # E[eta eta^dag] = 1
        solver = solver or CG(tol=1e-8, max_iter=2000)
        x, _ = solver.solve(normal_operator(op, b, draws, mu0),
                            eta.reshape(b * draws, *eta.shape[2:]))
        x = x.view_as(eta)
        g = (schur_force_bilinear(op, x, schur5(op, eta))
             + schur_force_bilinear(op, eta, schur5(op, x))) / draws
        if op.has_clover:
            g = g + 2.0 * op.clover_logdet_force(0)
        m = (ud.conj().transpose(-1, -2) @ g).transpose(-1, -2)
    return (u * m).real.flatten(1).sum(1)
