"""Non-equilibrium Monte Carlo and stochastic normalizing flows: protocols with exact work.

A :class:`Protocol` moves an equilibrium configuration of ``p0 ~ exp(-S_{beta0})`` towards the
target ``p ~ exp(-S_beta)`` (Wilson action) through ``n`` blocks.  The couplings are interpolated
linearly, ``beta_k = beta0 + (beta - beta0) k / n`` (``k = 0 .. n``), and block ``k = 1 .. n`` is

1. optionally a flow layer ``U -> U' = f_k(U)`` with log-Jacobian ``log J_k(U)`` (with respect to
   Haar measure), adding the work ``S_{beta_k}(U') - S_{beta_{k-1}}(U) - log J_k(U)``; without a
   layer the work is ``S_{beta_k}(U) - S_{beta_{k-1}}(U)``;
2. Monte Carlo updates ``P_k`` at ``beta_k`` (heatbath + overrelaxation for SU(2)/SU(3), HMC for
   any group), which leave ``exp(-S_{beta_k})`` invariant and add no work.

Exactness (Jarzynski, Phys. Rev. Lett. 78 (1997) 2690; Crooks, Phys. Rev. E 61 (2000) 2361; for
lattice field theory Caselle, Cellini, Nada & Panero, arXiv:2201.08862; with flow layers, i.e.
stochastic normalizing flows, Wu, Koehler & Noe, arXiv:2002.06707, and Bulgarelli, Cellini & Nada,
arXiv:2412.00200).  Write ``x_0 ~ p0`` and ``x_k`` the configuration after block ``k``, ``y_k =
f_k(x_{k-1})`` the configuration after the layer.  The forward path density of ``(x_0, ...,
x_n)`` is ``P_F = p0(x_0) prod_k P_k(y_k, x_k)``.  The reverse process starts from ``x_n ~ p``,
draws ``y_k`` from the reverse kernel ``P~_k(x_k, .)`` (``pi_k(y) P_k(y, x) = pi_k(x) P~_k(x, y)``,
``pi_k = exp(-S_{beta_k}) / Z_k``) and sets ``x_{k-1} = f_k^{-1}(y_k)``, so its density is
``P_R = p(x_n) prod_k P~_k(x_k, y_k) J_k(x_{k-1})`` (change of variables ``y_k -> x_{k-1}``).
With ``p0 = pi_0``, ``p = pi_n`` the ratio telescopes (the ``Z_k``, ``k < n``, cancel):

    P_R[path] / P_F[path] = (Z0 / Z) exp(-W),
    W = sum_k [S_{beta_k}(y_k) - S_{beta_{k-1}}(x_{k-1}) - log J_k(x_{k-1})],

so for any ``O``: ``E_F[O(x_n) e^{-W}] = (Z / Z0) E_p[O]``, in particular ``<e^{-W}>_F = Z / Z0``
(Jarzynski's equality) and ``<O>_p = <O e^{-W}>_F / <e^{-W}>_F``, exactly for any number of blocks
and any layers: the protocol only changes the variance.  Only invariance of ``pi_k`` under ``P_k``
is needed (no detailed balance), and ``x_0`` must be an exact sample of ``p0`` (independent
equilibrium configurations: a thermalised chain at ``beta0``, read every few trajectories, is exact
up to its thermalisation and autocorrelation).  The work is accumulated in float64 from the
unnormalised Wilson action ``beta sum_p (1 - Re Tr P / N)``; ``-W`` is the log-weight.

:func:`nemcmc` uses the same identity for an exact independence-Metropolis chain on the extended
space of paths (its docstring).  The layers are duck-typed (anything with ``forward(U) -> (U',
logdet)``, e.g. :class:`bridge.flows.residual.ResidualStapleLayer`): this module does not import
:mod:`bridge.flows`.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from ..errors import ConfigError, PhysicsError
from ..gauge.defect import check_defect, defect_weights, plaquette_terms, weighted_action
from ..groups import reunitarize
from ..lattice import Lattice
from ..rng import generator, rng_key
from .base import ChainState, Kernel, StepInfo, chain_state, nan_like, stream_tag
from .heatbath import check_field, heatbath_sweep, overrelaxation_sweep
from .hmc import HMCState, hmc_kernel
from .integrators import SCHEMES, Integrator, Level, scheme
from .monomials import GaugeMonomial

__all__ = ["Protocol", "ProtocolInfo", "run_protocol", "reverse_protocol", "JarzynskiResult",
           "jarzynski", "NEState", "nemcmc"]

UPDATES = ("heatbath", "hmc")


def _finite(name: str, value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}") from None
    if not math.isfinite(v):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    return v


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    if int(value) < minimum:
        raise ConfigError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class Protocol:
    """A non-equilibrium protocol from ``beta0`` to ``beta`` in ``n_blocks`` blocks (module
    docstring), validated on construction (:class:`~bridge.errors.ConfigError` naming the value).

    ``update``: the Monte Carlo update of every block, ``"heatbath"`` (``n_hb`` heatbath and
    ``n_or`` overrelaxation sweeps, SU(2)/SU(3), even extents, ``beta0, beta >= 0``) or ``"hmc"``
    (``n_traj`` trajectories of length ``tau`` with ``md_steps`` steps of the scheme
    ``integrator``, a name of :data:`bridge.mcmc.integrators.SCHEMES`; any group).  Zero updates
    (``n_traj = 0`` or ``n_hb = n_or = 0``) give a pure flow/annealing without MC.  ``layers``:
    ``None`` or one entry per block, each ``None`` (no layer) or an object with ``forward(U) ->
    (U', logdet)``.  Couplings: ``beta_k = beta0 + (beta - beta0) k / n_blocks`` (linear)."""

    beta0: float
    beta: float
    n_blocks: int
    update: str = "hmc"
    n_hb: int = 1
    n_or: int = 0
    tau: float = 1.0
    md_steps: int = 10
    integrator: str = "LCM_STS_LEAPFROG"
    n_traj: int = 1
    layers: tuple | None = None
    defect: tuple[int, ...] | None = None
    c0: float = 0.0
    c1: float = 1.0

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "beta0", _finite("beta0", self.beta0))
        set_(self, "beta", _finite("beta", self.beta))
        set_(self, "n_blocks", _count("n_blocks", self.n_blocks, 1))
        if self.update not in UPDATES:
            raise ConfigError(f"update: expected one of {UPDATES}, got {self.update!r}")
        set_(self, "n_hb", _count("n_hb", self.n_hb, 0))
        set_(self, "n_or", _count("n_or", self.n_or, 0))
        set_(self, "n_traj", _count("n_traj", self.n_traj, 0))
        set_(self, "md_steps", _count("md_steps", self.md_steps, 1))
        tau = _finite("tau", self.tau)
        if not tau > 0:
            raise ConfigError(f"tau: expected a positive trajectory length, got {self.tau!r}")
        set_(self, "tau", tau)
        if self.integrator not in SCHEMES:
            raise ConfigError(f"integrator: expected one of {sorted(SCHEMES)}, got "
                              f"{self.integrator!r}")
        if self.update == "heatbath" and min(self.beta0, self.beta) < 0:
            raise ConfigError(f"beta0, beta: the heatbath needs couplings >= 0, got "
                              f"{self.beta0}, {self.beta}")
        if self.layers is not None:
            layers = tuple(self.layers)
            if len(layers) != self.n_blocks:
                raise ConfigError(f"layers: expected None or {self.n_blocks} entries (one per "
                                  f"block), got {len(layers)}")
            for i, lay in enumerate(layers):
                if lay is not None and not callable(getattr(lay, "forward", None)):
                    raise ConfigError(f"layers[{i}]: expected None or an object with "
                                      f"forward(U) -> (U', logdet), got {type(lay).__name__}")
            set_(self, "layers", layers)
        for key in ("c0", "c1"):
            v = _finite(key, getattr(self, key))
            if v < 0:
                raise ConfigError(f"{key}: expected a defect coefficient >= 0, got {v}")
            set_(self, key, v)
        if self.defect is not None:
            ext = tuple(self.defect)
            if not ext or any(isinstance(d, bool) or not isinstance(d, int) or d < 1
                              for d in ext):
                raise ConfigError(f"defect: expected positive integer extents, got "
                                  f"{list(ext)}")
            set_(self, "defect", ext)
            if self.update == "hmc" and self.n_traj > 0:
                raise ConfigError("defect: the defect protocol's MC updates are the heatbath "
                                  "(update 'heatbath'); the HMC has no plaquette coefficients")

    def coefficients(self) -> tuple[float, ...]:
        """The defect coefficients ``(c_0, ..., c_n)`` (empty without a defect)."""
        if self.defect is None:
            return ()
        n = self.n_blocks
        return tuple(self.c0 + (self.c1 - self.c0) * k / n for k in range(n)) + (self.c1,)

    def weights(self, lattice: Lattice, k: int, device=None) -> torch.Tensor | None:
        """Plaquette coefficients of block ``k``'s action on ``lattice`` (None: all 1)."""
        if self.defect is None:
            return None
        check_defect(lattice, self.defect)
        return defect_weights(lattice, self.defect, self.coefficients()[k], device=device)

    @property
    def betas(self) -> tuple[float, ...]:
        """``(beta_0, ..., beta_n)``, ``beta_k = beta0 + (beta - beta0) k / n`` (exact ends)."""
        n = self.n_blocks
        return tuple(self.beta0 + (self.beta - self.beta0) * k / n for k in range(n)) + (
            self.beta,)

    def layer(self, k: int) -> Any:
        """The layer of block ``k = 1 .. n`` (or ``None``)."""
        return None if self.layers is None else self.layers[k - 1]

    def parameters(self) -> list[torch.Tensor]:
        """The parameters of all layers that have ``parameters()`` (for an optimiser)."""
        out: list[torch.Tensor] = []
        for lay in self.layers or ():
            if lay is not None and callable(getattr(lay, "parameters", None)):
                out.extend(lay.parameters())
        return out


class ProtocolInfo(NamedTuple):
    """Per-block record of :func:`run_protocol` (detached)."""

    betas: tuple[float, ...]
    work: torch.Tensor  # [n_blocks, batch] work of each block
    logdet: torch.Tensor  # [n_blocks, batch] log-Jacobian of each block's layer (0 without)
    acceptance: torch.Tensor  # [n_blocks] mean HMC acceptance (1 for the heatbath / no update)
    seconds: float


def _mc_update(u: torch.Tensor, protocol: Protocol, beta_k: float, key: int,
               weights: torch.Tensor | None = None, reverse: bool = False
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's MC update at ``beta_k`` (plaquette coefficients ``weights``) from the stream
    ``key``: the new ``U`` (no autograd) and the mean acceptance.  ``reverse``: its reverse
    kernel (the heatbath's sweeps in the opposite order; HMC is its own)."""
    one = torch.ones((), dtype=torch.float64)
    if protocol.update == "heatbath":
        if protocol.n_hb + protocol.n_or == 0:
            return u, one
        check_field(u)
        gen = generator(key, u.device)
        if reverse:
            for _ in range(protocol.n_or):
                u = overrelaxation_sweep(u, weights=weights, reverse=True)
        for _ in range(protocol.n_hb):
            u = heatbath_sweep(u, beta_k, gen, weights=weights, reverse=reverse)
        if not reverse:
            for _ in range(protocol.n_or):
                u = overrelaxation_sweep(u, weights=weights)
        return reunitarize(u), one
    if protocol.n_traj == 0:
        return u, one
    integ = Integrator([Level(scheme(protocol.integrator), protocol.md_steps,
                              [GaugeMonomial(beta_k)])])
    kern = hmc_kernel(integ, protocol.tau)
    st = kern.init(u, key, 0)
    acc = torch.zeros((), dtype=torch.float64)
    for _ in range(protocol.n_traj):
        st, info = kern.step(HMCState(st.U, st.action, st.seed, st.trajectory))
        acc = acc + info.accepted.double().mean()
    return st.U, acc / protocol.n_traj


def run_protocol(u0: torch.Tensor, protocol: Protocol, *, seed: int, index: int = 0,
                 block_backward: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor, ProtocolInfo]:
    """Run ``protocol`` from the configurations ``u0`` (batch axis: independent runs, each
    ``u0[i]`` an equilibrium sample of ``exp(-S_{beta0})``); returns ``(U_n, W, info)`` with the
    work ``W[batch]`` in float64 (module docstring: ``<O>_p = <O e^{-W}> / <e^{-W}>``,
    ``<e^{-W}> = Z / Z0``; :func:`jarzynski`).

    Block ``k = 1 .. n``: ``W += beta_k s(f_k(U)) - beta_{k-1} s(U) - log J_k(U)`` with ``s`` the
    action at ``beta = 1`` (no layer: ``W += (beta_k - beta_{k-1}) s(U)``), then the MC update at
    ``beta_k`` drawing every random number from ``rng_key(seed, index, k, stream_tag("nonequilib
    rium/" + update))``: a run is reproducible bit for bit from ``(seed, index)``.

    Gradient.  Under autograd, ``W`` is differentiable with respect to the layers' parameters:
    the configuration leaving each block (after its MC update) is detached, so ``dW/dtheta`` is
    the sum over blocks of the derivative of the block's own work at fixed input ``x_{k-1}``
    (the MC updates -- accept/reject, heatbath draws -- are treated as constants, as in the
    stochastic-normalizing-flow training of arXiv:2201.08862 and arXiv:2412.00200; it is not the
    full path-wise derivative through the later MC updates).  ``mean(W)`` is the SNF loss (the
    Kullback-Leibler divergence of forward and reverse path measures, up to ``log Z / Z0``).
    ``block_backward=a``: each block's work is backpropagated at once, ``(a dW_k).sum()``, so
    one block's graph is alive at a time (memory of one block, not of ``n``; the gradient is
    the same, accumulated in the parameters' ``.grad``) and the returned ``W`` is detached."""
    if not isinstance(protocol, Protocol):
        raise ConfigError(f"protocol: expected a Protocol, got {type(protocol).__name__}")
    t0 = time.perf_counter()
    betas = protocol.betas
    tag = stream_tag("nonequilibrium/" + protocol.update)
    u = u0.detach()
    lat = Lattice.of(u)
    weights = [protocol.weights(lat, k, u.device) for k in range(protocol.n_blocks + 1)]
    batch = u.shape[0]
    work = torch.zeros(batch, dtype=torch.float64, device=u.device)
    blocks, logdets, accs = [], [], []
    terms = plaquette_terms(u)  # of the configuration entering block k
    for k in range(1, protocol.n_blocks + 1):
        lay = protocol.layer(k)
        a_prev = weighted_action(terms, betas[k - 1], weights[k - 1])
        if lay is None:
            dw = weighted_action(terms, betas[k], weights[k]) - a_prev
            ld = torch.zeros_like(dw)
        else:
            fwd = lay if callable(lay) else lay.forward
            u_new, ld = fwd(u)
            ld = ld.to(torch.float64)
            if ld.shape != (batch,):
                raise ConfigError(f"layers[{k - 1}]: logdet has shape {tuple(ld.shape)}, "
                                  f"expected [{batch}]")
            dw = weighted_action(plaquette_terms(u_new), betas[k], weights[k]) - a_prev - ld
            u = u_new
        if not bool(torch.isfinite(dw.detach()).all()):
            raise PhysicsError(f"block {k} (beta {betas[k - 1]} -> {betas[k]}): non-finite "
                               f"work {dw.detach().tolist()}")
        if block_backward is not None and dw.requires_grad:
            (float(block_backward) * dw).sum().backward()
            dw = dw.detach()
        work = work + dw
        blocks.append(dw.detach())
        logdets.append(ld.detach())
        with torch.no_grad():
            u, acc = _mc_update(u.detach(), protocol, betas[k], rng_key(seed, index, k, tag),
                                weights[k])
        accs.append(acc)
        terms = plaquette_terms(u)
    info = ProtocolInfo(betas, torch.stack(blocks), torch.stack(logdets), torch.stack(accs),
                        time.perf_counter() - t0)
    return u, work, info


def reverse_protocol(u_n: torch.Tensor, protocol: Protocol, *, seed: int, index: int = 0
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the rest of a path backwards from its end point ``u_n`` with the reverse process
    ``P_R(. | x_n)`` (module docstring: ``y_k ~ P~_k(x_k, .)``, ``x_{k-1} = f_k^{-1}(y_k)``,
    ``k = n .. 1``); returns ``(x_0, W)``, the path's start and its (forward) work in float64,
    no autograd.  Used by :func:`nemcmc` after another kernel moved the end point.  Streams
    ``rng_key(seed, index, k, stream_tag("nonequilibrium-reverse/" + update))``."""
    if not isinstance(protocol, Protocol):
        raise ConfigError(f"protocol: expected a Protocol, got {type(protocol).__name__}")
    betas = protocol.betas
    tag = stream_tag("nonequilibrium-reverse/" + protocol.update)
    with torch.no_grad():
        x = u_n.detach()
        lat = Lattice.of(x)
        weights = [protocol.weights(lat, k, x.device) for k in range(protocol.n_blocks + 1)]
        work = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        for k in range(protocol.n_blocks, 0, -1):
            y, _ = _mc_update(x, protocol, betas[k], rng_key(seed, index, k, tag), weights[k],
                              reverse=True)
            lay = protocol.layer(k)
            if lay is None:
                x, ld_inv = y, torch.zeros_like(work)
            else:
                x, ld_inv = lay.reverse(y)  # log J of f_k^-1 at y = -log J_k(x_{k-1})
            work += (weighted_action(plaquette_terms(y), betas[k], weights[k])
                     - weighted_action(plaquette_terms(x), betas[k - 1], weights[k - 1])
                     + ld_inv.to(torch.float64))
    return x, work


class JarzynskiResult(NamedTuple):
    """Log-weights ``-W``, their normalised ESS and ``log <e^{-W}>``, the estimate of
    ``log Z / Z0``."""

    log_w: torch.Tensor  # [batch] float64
    ess: float
    log_ratio: float

    @property
    def log_ratio_err(self) -> float:
        """Delta-method error of :attr:`log_ratio`: ``sqrt((1/ess - 1) / (N - 1))``
        (``inf`` when no weight is positive or ``N = 1``)."""
        n = self.log_w.numel()
        if self.ess <= 0 or n < 2:
            return math.inf
        return math.sqrt(max(1.0 / self.ess - 1.0, 0.0) / (n - 1))


def jarzynski(work: torch.Tensor) -> JarzynskiResult:
    """Jarzynski reweighting of the works ``W[batch]`` in log space: ``log w = -W``, the Kish
    ESS of ``w`` and ``log Z/Z0 ~ logsumexp(-W) - log N``.  ``W = +inf`` (weight 0) is allowed;
    NaN or ``-inf`` raise :class:`~bridge.errors.PhysicsError`; with all weights 0 the ESS is 0
    and the estimate ``-inf``."""
    w = torch.as_tensor(work).detach().to(torch.float64).flatten()
    if w.numel() == 0:
        raise ConfigError("work: expected at least one protocol run, got an empty tensor")
    if bool(torch.isnan(w).any()) or bool((w == -math.inf).any()):
        raise PhysicsError(f"work: NaN or -inf among {w.tolist()}")
    log_w = -w
    if not bool(torch.isfinite(log_w).any()):
        return JarzynskiResult(log_w, 0.0, -math.inf)
    top = log_w.max()
    r = (log_w - top).exp()
    ess = float(r.sum() ** 2 / (w.numel() * (r * r).sum()))
    log_ratio = float(top + torch.log(r.sum()) - math.log(w.numel()))
    return JarzynskiResult(log_w, ess, log_ratio)


# -- NE-MCMC ----------------------------------------------------------------------------------
class NEState(NamedTuple):
    """``state.aux[name]`` of :func:`nemcmc`: the prior chain, and the start ``x0`` (with its
    prior-chain action), work and end point of the current path."""

    prior: ChainState
    x0: torch.Tensor
    x0_action: torch.Tensor
    work: torch.Tensor  # [batch] float64
    u_end: torch.Tensor


def _where(sel: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.where(sel.reshape(-1, *([1] * (a.dim() - 1))), a, b)


def nemcmc(protocol: Protocol, prior_kernel: Kernel, *, prior_steps: int = 1,
           name: str = "nemcmc") -> Kernel:
    """Non-equilibrium MCMC (Caselle, Cellini, Nada & Panero, arXiv:2201.08862; Bulgarelli,
    Cellini & Nada, arXiv:2510.25704): independence Metropolis whose proposal is the end point of
    a :func:`run_protocol` run, accepted with ``min(1, exp(-(W' - W)))``, ``W`` the work of the
    current configuration's path (kept on rejection, as a pseudo-marginal estimate).

    ``init(U0, seed)``: ``U0`` are configurations at ``beta0`` (the start of the prior chain and
    of a first path; the chain starts out of equilibrium like any chain).  ``prior_kernel``: a
    kernel on :class:`~bridge.mcmc.base.ChainState` leaving ``exp(-S_{beta0})`` invariant (e.g.
    :func:`~bridge.mcmc.hmc.hmc` or :func:`~bridge.mcmc.heatbath.heatbath` at ``beta0``); each
    step advances it ``prior_steps`` steps, and the protocol run from its state is the proposal
    (stream: ``seed = rng_key(state.seed, stream_tag(name))``, ``index = state.step``).

    Exactness: a two-replica (swap) construction.  The state is a pair of paths ``(a, b)``: ``a``
    the current path (its end point is ``U``), ``b`` the prior replica's, with target
    ``Pi(a, b) = pi~(a) q(b)``, ``q = p0(x0) P_F(rest | x0)`` the forward path measure and
    ``pi~ = p(x_n) P_R(rest | x_n)`` the reverse one, so ``pi~ / q = (Z0/Z) e^{-W}`` (module
    docstring).  (i) Move ``b``'s start by ``prior_steps`` steps of the ``p0``-invariant kernel
    and redraw the rest of ``b`` from ``P_F`` (the protocol run): leaves ``q`` invariant.
    (ii) Propose the swap ``(a, b) -> (b, a)`` (an involution): Metropolis ratio
    ``pi~(b) q(a) / (pi~(a) q(b)) = exp(-(W_b - W_a))``.  So ``Pi`` is invariant and the
    marginal of ``U`` is exactly ``p``.  On acceptance the prior replica continues from the old
    current path's start ``x0`` (the swap): that is what makes it exact with a correlated prior
    chain.  A prior chain that simply continued from its own state (no swap) would feed
    correlated proposals to an independence sampler, which is not exact in general (only in the
    limit ``prior_steps -> infinity``, i.e. independent exact prior samples).  Only ``x0``, the
    work and the end point of a path are stored; the rest never enters.

    Other kernels.  A kernel leaving ``p`` invariant (HMC at ``beta``, flow Metropolis) may move
    ``U`` between NE-MCMC steps.  The current path then no longer ends at ``U``: for every chain
    whose ``U`` differs from the stored end point, the step first redraws the rest of the path
    from ``P_R(. | U)`` (:func:`reverse_protocol`; stream ``rng_key(seed, tag, 3, step)``).  That
    is a Gibbs move on the extended target (the marginal of the end point under ``pi~`` is
    ``p``), so ``(p-invariant kernel, redraw)`` leaves ``Pi`` invariant and the composition
    stays exact; a chain whose ``U`` was not moved (e.g. an HMC rejection) keeps its path, which
    is also exact.  ``state.log_est`` holds ``-W``; ``log q`` and ``log w`` are unknown (NaN)."""
    if not isinstance(protocol, Protocol):
        raise ConfigError(f"protocol: expected a Protocol, got {type(protocol).__name__}")
    prior_steps = _count("prior_steps", prior_steps, 1)
    tag = stream_tag(name)

    def _redraw_path(state: ChainState, ne: NEState) -> NEState:
        moved = (state.U != ne.u_end).flatten(1).any(1)
        x0, w = reverse_protocol(state.U, protocol, seed=rng_key(state.seed, tag, 3),
                                 index=state.step)
        a0 = prior_kernel.init(x0, seed=0).action.to(ne.x0_action.dtype)  # the prior's action
        return NEState(ne.prior, _where(moved, x0, ne.x0), torch.where(moved, a0, ne.x0_action),
                       torch.where(moved, w, ne.work), state.U)

    def action(u: torch.Tensor) -> torch.Tensor:  # the target: block n's action
        return weighted_action(plaquette_terms(u), protocol.beta,
                       protocol.weights(Lattice.of(u), protocol.n_blocks, u.device))

    def propose(seed: int, index: int, u0: torch.Tensor):
        with torch.no_grad():
            return run_protocol(u0, protocol, seed=rng_key(seed, tag), index=index)

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            if name in u.aux:
                return u
            # another kernel's state (a composition): the prior chain starts at its U and the
            # current path is drawn backwards from it (any start is a valid chain start)
            prior = prior_kernel.init(u.U, seed=rng_key(u.seed, tag, 1), step=0)
            x0, w = reverse_protocol(u.U, protocol, seed=rng_key(u.seed, tag, 3),
                                     index=2**62 + int(u.step))
            a0 = prior_kernel.init(x0, seed=0).action.to(prior.action.dtype)
            aux = {**u.aux, name: NEState(prior, x0, a0, w, u.U)}
            return u._replace(log_est=-w, aux=aux)
        prior = prior_kernel.init(u, seed=rng_key(seed, tag, 1), step=0)
        u_end, w, _ = propose(seed, 2**62 + int(step), prior.U)  # index apart from the steps
        st = chain_state(u_end, action(u_end), seed, step)
        aux = {**st.aux, name: NEState(prior, prior.U, prior.action, w, u_end)}
        return st._replace(log_est=-w, aux=aux)

    def step(state: ChainState) -> tuple[ChainState, StepInfo]:
        t0 = time.perf_counter()
        ne = state.aux.get(name)
        if ne is None:
            raise ConfigError(f"{name}: the state has no non-equilibrium path (init first)")
        if not (state.U is ne.u_end or torch.equal(state.U, ne.u_end)):
            ne = _redraw_path(state, ne)
        prior = ne.prior
        for _ in range(prior_steps):
            prior, _ = prior_kernel.step(prior)
        u_new, w_new, pinfo = propose(state.seed, state.step, prior.U)
        delta = -(w_new - ne.work)
        acc_prob = torch.exp(delta.clamp(max=0.0))
        gen = generator(rng_key(state.seed, tag, 2, state.step), state.U.device)
        r = torch.rand(delta.shape, generator=gen, dtype=delta.dtype, device=delta.device)
        accepted = r < acc_prob
        # the swap: the accepted proposal's start leaves the prior replica, the old one enters
        y, y_action = prior.U, prior.action
        prior = prior._replace(U=_where(accepted, ne.x0, y),
                               action=torch.where(accepted, ne.x0_action, y_action),
                               log_q=torch.where(accepted, nan_like(prior.log_q), prior.log_q),
                               log_w=torch.where(accepted, nan_like(prior.log_w), prior.log_w),
                               log_est=torch.where(accepted, nan_like(prior.log_est),
                                                   prior.log_est))
        u = _where(accepted, u_new, state.U)
        work = torch.where(accepted, w_new, ne.work)
        new_ne = NEState(prior, _where(accepted, y, ne.x0),
                         torch.where(accepted, y_action, ne.x0_action), work, u)
        new = state._replace(U=u, action=torch.where(accepted, action(u_new), state.action),
                             log_q=nan_like(state.log_q), log_w=nan_like(state.log_w),
                             log_est=-work, step=state.step + 1,
                             aux={**state.aux, name: new_ne})
        info = StepInfo(state.step, name, accepted, delta, acc_prob, 0, 0,
                        time.perf_counter() - t0, pinfo)
        return new, info

    return Kernel(init, step)

