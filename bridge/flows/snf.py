"""Stochastic normalizing flows (SNF) for lattice gauge theory: a non-equilibrium protocol
(:mod:`bridge.mcmc.nonequilibrium`) from ``beta0`` to ``beta`` whose blocks each carry a
learnable, gauge-equivariant, invertible layer, trained by the mean work (Caselle, Cellini,
Nada & Panero, arXiv:2201.08862; Bulgarelli, Cellini & Nada, arXiv:2412.00200).

Layers.  ``layer="stout"`` (default): every block applies a :class:`StoutCycle`, the ``2 Nd``
masked stout-smearing steps (direction ``mu``, parity of the transverse coordinates) of
:func:`~.residual.staple_mask_cycle`, each with one learnable coefficient (the parametric
stout layers of arXiv:2412.00200), so every link moves once per block.  ``layer="staple"``: one
:class:`~.residual.ResidualStapleLayer` per block (one mask, ``2(Nd - 1)`` coefficients).
``layer="defect"`` (a protocol with a defect): a :class:`~.defect_layers.DefectCycle` per block,
the same ``2 Nd`` steps restricted to the links within ``radius`` of the defect, with one
coefficient for the staples of defect plaquettes and one for the others (the defect coupling
layers of arXiv:2510.25704); the rest of the lattice is left to the MC updates.

Defect.  ``defect`` (extents) and ``c0``: the protocol also switches the plaquettes of a
time-boundary defect from ``c0`` (default 0, open) to periodic (:mod:`bridge.gauge.defect`), the
prior being equilibrium at ``beta0`` with the open defect; with ``beta0 = beta`` it is the
defect protocol of arXiv:2510.25704 for topological unfreezing.

Initialisation.  ``init="luscher"`` (default) starts every coefficient at the leading-order
trivialising map of the block's coupling step (Luescher, arXiv:0907.5491):
``c = -(beta_k - beta_{k-1}) / (4 dim G)``: each of the four links of a plaquette tilts the density
by ``exp(-(dim G / N) Re Tr[U B])`` to first order in ``c`` (:mod:`.residual`), which is the
Boltzmann factor ``exp((beta_k - beta_{k-1}) / N Re Tr P)`` of the step (``dim G = 1`` for U(1)).
It is exact at strong coupling only; measured at 4^4 SU(3), beta 6.0 -> 6.2, 4 blocks, it lowers
the mean work from 122.2 to about 121.5 (docs/nonequilibrium.md), and training refines it.
``init="identity"``: every layer the identity (the untrained model is the layer-free protocol).
``init_scale`` multiplies Luescher's coefficients: at weak coupling the leading-order map
overshoots (measured at 4^4, beta 6.0 -> 6.2: the mean work is lowest near 0.5-0.75, not 1),
and ``qcd-bridge train --init-scale auto`` picks the factor by a scan of the mean work.

Loss.  With ``x_0 ~ p0 = exp(-S_{beta0}) / Z0``, ``E_F[W] = KL(P_F || P_R) + log(Z / Z0)``
(module docstring of :mod:`bridge.mcmc.nonequilibrium`), so the mean work is the SNF loss up to
the constant ``log Z/Z0``; it is bounded below by ``-log(Z / Z0)`` (Jensen), with equality only
for a protocol whose work does not fluctuate.  :class:`SNFLoss` returns ``(mean W, -W)`` for
:class:`~.training.Trainer`: the surrogate's gradient is the block-local gradient of
:func:`~bridge.mcmc.nonequilibrium.run_protocol` (the MC updates held fixed) and ``log w = -W``
are the Jarzynski log-weights, so the trainer's live ``loss`` is the mean work and its ``ess``
the Jarzynski ESS.

Prior samples.  ``x_0`` must be equilibrium samples of ``p0``: :class:`PriorPool` holds
``size`` independent Markov chains at ``beta0`` (the protocol's own update, heatbath +
overrelaxation or HMC, at ``beta = beta0``), thermalised by ``therm`` updates from the unit
field, and advanced by ``sweeps`` updates before every draw.  Draw ``n`` is the pool after
``n + 1`` advances; advance ``n`` uses the stream ``rng_key(seed, _POOL_STREAM, n)`` only, so
the pool after ``n`` draws is a function of ``(seed, n)``: a resumed run rebuilds it
(:meth:`PriorPool.state_dict` snapshots shorten the replay) and continues bit for bit.  Between
draws the chains are correlated (``sweeps`` updates apart), which the loss tolerates; the
evaluation (:func:`bridge.jobs.train_snf.evaluate_snf`) reads the chains the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..gauge import unit_gauge
from ..groups import get_group
from ..lattice import Lattice
from ..mcmc.nonequilibrium import UPDATES, Protocol, run_protocol
from ..rng import rng_key
from .defect_layers import DefectCycle
from .models import GaugeFlow
from .residual import ResidualStapleLayer, staple_mask_cycle

__all__ = ["StoutCycle", "SNFModel", "PriorPool", "SNFLoss"]

LAYERS = ("stout", "staple", "defect")
INITS = ("luscher", "identity")

_POOL_STREAM = 0x5F0
_RUN_STREAM = 0x5F1

# the Protocol fields an SNFModel records (besides beta0, beta, n_blocks, update)
_UPDATE_KEYS = ("n_hb", "n_or", "tau", "md_steps", "integrator", "n_traj")


class StoutCycle(GaugeFlow):
    """The ``2 Nd`` masked stout steps of :func:`~.residual.staple_mask_cycle`, applied in
    order (tied :class:`~.residual.ResidualStapleLayer` each, coefficient ``c``): a
    :class:`~.models.GaugeFlow` (``forward(U) -> (U', logdet)``, the exact ``reverse``) whose
    layers move every link once."""

    def __init__(self, group: Any, nd: int, *, c: float = 0.0, kappa: float = 0.9,
                 dtype: torch.dtype = torch.float64) -> None:
        steps = [ResidualStapleLayer(group, nd, m, kappa=kappa, tied=True, dtype=dtype)
                 for m in staple_mask_cycle(nd)]
        for lay in steps:
            lay.set_coefficients(c)
        super().__init__(group, nd, steps)

    def coefficients(self) -> torch.Tensor:
        """The ``2 Nd`` stout coefficients ``c`` (one per mask)."""
        return torch.stack([lay.coefficients()[0] for lay in self.layers])


def luscher_coefficient(group: Any, d_beta: float, kappa: float = 0.9, nd: int = 4) -> float:
    """Leading-order trivialising-map coefficient ``-d_beta / (4 dim G)`` of a coupling step
    ``d_beta`` (module docstring), clipped to half the layer's bound ``kappa / (2(Nd - 1))``."""
    g = get_group(group)
    c = -float(d_beta) / (4.0 * g.dim)
    bound = 0.5 * kappa / (2 * (nd - 1))
    return max(-bound, min(bound, c))


class SNFModel(nn.Module):
    """A stochastic normalizing flow: one layer per block of the protocol ``beta0 -> beta`` in
    ``n_blocks`` blocks (module docstring: ``layer`` "stout" or "staple", ``init`` "luscher" or
    "identity"; with "identity" the untrained model is the layer-free protocol).

    ``update`` and ``n_hb``, ``n_or`` (heatbath, SU(2)/SU(3)) or ``tau``, ``md_steps``,
    ``integrator``, ``n_traj`` (HMC) are the Monte Carlo updates of every block
    (:class:`~bridge.mcmc.nonequilibrium.Protocol`); ``kappa`` the layers' Lipschitz bound;
    ``radius`` the reach of ``layer="defect"`` around the defect.
    ``.config`` (``"arch": "snf"``) rebuilds the model
    (:func:`~.checkpoints.flow_from_config`)."""

    def __init__(self, group: str = "SU3", nd: int = 4, *, beta0: float, beta: float,
                 n_blocks: int, update: str = "heatbath", n_hb: int = 1, n_or: int = 1,
                 tau: float = 1.0, md_steps: int = 10, integrator: str = "LCM_STS_LEAPFROG",
                 n_traj: int = 1, kappa: float = 0.9, layer: str = "stout",
                 init: str = "luscher", init_scale: float = 1.0,
                 defect: Sequence[int] | None = None, c0: float = 0.0, radius: int = 1,
                 dtype: torch.dtype | str = torch.float64) -> None:
        super().__init__()
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype.split(".")[-1])
        self.group = get_group(group)
        self.nd = int(nd)
        if update == "heatbath" and self.group.nc not in (2, 3):
            raise ConfigError(f"update: 'heatbath' needs SU(2) or SU(3), got the group "
                              f"{self.group.name}; use update 'hmc'")
        if update not in UPDATES:
            raise ConfigError(f"update: expected one of {UPDATES}, got {update!r}")
        # validates every protocol setting (ConfigError naming the value)
        settings = dict(beta0=beta0, beta=beta, n_blocks=n_blocks, update=update, n_hb=n_hb,
                        n_or=n_or, tau=tau, md_steps=md_steps, integrator=integrator,
                        n_traj=n_traj, c0=c0,
                        defect=None if defect is None else tuple(int(d) for d in defect))
        pr = Protocol(**settings)
        if layer not in LAYERS:
            raise ConfigError(f"layer: expected one of {LAYERS}, got {layer!r}")
        if init not in INITS:
            raise ConfigError(f"init: expected one of {INITS}, got {init!r}")
        scale = float(init_scale)
        if not (math.isfinite(scale) and scale >= 0):
            raise ConfigError(f"init_scale: expected a finite factor >= 0 of the Luescher "
                              f"coefficients, got {init_scale!r}")
        if layer == "defect" and pr.defect is None:
            raise ConfigError("layer: 'defect' layers act around a defect; the protocol has "
                              "none (set defect)")
        if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
            raise ConfigError(f"radius: expected an integer >= 0 (links around the defect "
                              f"that the defect layers move), got {radius!r}")
        if radius != 1 and layer != "defect":
            raise ConfigError(f"radius {radius}: the reach of layer 'defect'; the layer is "
                              f"{layer!r}")
        self._pr = pr
        if layer == "stout":
            blocks: list[nn.Module] = [StoutCycle(self.group, self.nd, kappa=kappa,
                                                  dtype=dtype) for _ in range(pr.n_blocks)]
        elif layer == "defect":
            blocks = [DefectCycle(self.group, self.nd, pr.defect, radius=int(radius),
                                  kappa=kappa, dtype=dtype) for _ in range(pr.n_blocks)]
        else:
            masks = staple_mask_cycle(self.nd)
            blocks = [ResidualStapleLayer(self.group, self.nd, masks[k % len(masks)],
                                          kappa=kappa, dtype=dtype) for k in range(pr.n_blocks)]
        self.blocks = nn.ModuleList(blocks)
        self.config: dict[str, Any] = {
            "arch": "snf", "group": self.group.name, "nd": self.nd, "beta0": pr.beta0,
            "beta": pr.beta, "n_blocks": pr.n_blocks, "update": pr.update,
            **{k: getattr(pr, k) for k in _UPDATE_KEYS}, "kappa": float(kappa),
            "layer": layer, "init": init, "init_scale": scale, "dtype": str(dtype)}
        if pr.defect is not None:
            self.config.update(defect=list(pr.defect), c0=pr.c0)
        if layer == "defect":
            self.config["radius"] = int(radius)
        self._settings = {**settings, **{k: getattr(pr, k) for k in settings}}
        if init == "luscher":
            self._set_luscher(scale)

    def set_init_scale(self, scale: float) -> None:
        """Set every layer to ``scale`` times Luescher's coefficient (``init="luscher"``; the
        starting point of a training run, e.g. the best of :func:`scan_init_scale`)."""
        if self.config["init"] != "luscher":
            raise ConfigError(f"init_scale: scales the Luescher initialisation, not init "
                              f"{self.config['init']!r}")
        self._set_luscher(scale)
        self.config["init_scale"] = float(scale)

    def _set_luscher(self, scale: float) -> None:
        """Every layer at ``scale`` times Luescher's coefficients of its block: the coupling
        step ``d_beta``; defect layers: ``c_D`` of the defect plaquettes' step ``d(beta c)``
        (:mod:`.defect_layers`) and ``c_N`` of ``d_beta``."""
        pr, kappa, n = self._pr, self.config["kappa"], len(self.blocks)
        d_beta = (pr.beta - pr.beta0) / n
        c = luscher_coefficient(self.group, d_beta * float(scale), kappa, self.nd)
        for b in self.blocks:
            if isinstance(b, DefectCycle):
                d_def = (pr.beta * pr.c1 - pr.beta0 * pr.c0) / n
                c_d = luscher_coefficient(self.group, d_def * float(scale), kappa, self.nd)
                for lay in b.layers:
                    lay.set_coefficients(c_d, c)
                continue
            for lay in (b.layers if isinstance(b, StoutCycle) else [b]):
                lay.set_coefficients(c)

    def protocol(self, layers: bool = True) -> Protocol:
        """The :class:`~bridge.mcmc.nonequilibrium.Protocol` with this model's layers
        (``layers=False``: the same protocol without layers)."""
        return Protocol(**self._settings, layers=tuple(self.blocks) if layers else None)

    def prior_protocol(self) -> Protocol:
        """One equilibrium update at ``beta0`` (the protocol's update, no layers, zero work;
        with a defect at its start coefficient ``c0``): what :class:`PriorPool` runs."""
        return Protocol(**{**self._settings, "beta": self.beta0, "n_blocks": 1,
                           "c1": self._settings["c0"]})

    @property
    def beta0(self) -> float:
        return float(self.config["beta0"])

    @property
    def beta(self) -> float:
        return float(self.config["beta"])

    def forward(self, u0: torch.Tensor, *, seed: int, index: int = 0):
        """:func:`~bridge.mcmc.nonequilibrium.run_protocol` of :meth:`protocol` from ``u0``."""
        return run_protocol(u0, self.protocol(), seed=seed, index=index)


class PriorPool:
    """``size`` independent chains at ``model.beta0`` on the lattice ``nrow`` (module docstring):
    :meth:`draw` ``(n)`` returns the pool after ``n + 1`` advances of ``sweeps`` updates each
    (``[size, Nd, *nrow, N, N]``, no autograd), thermalised by ``therm`` updates first.  Asking
    for an earlier draw than the last one replays from the start (or from a snapshot loaded with
    :meth:`load_state_dict`)."""

    def __init__(self, model: SNFModel, nrow: Sequence[int], size: int, *, seed: int = 0,
                 therm: int = 50, sweeps: int = 1, device: torch.device | str | None = None
                 ) -> None:
        self.lattice = Lattice(tuple(int(n) for n in nrow))
        if self.lattice.nd != model.nd:
            raise ConfigError(f"nrow: the model is {model.nd}-dimensional, got {list(nrow)}")
        for name, v, lo in (("size", size, 1), ("therm", therm, 0), ("sweeps", sweeps, 1)):
            if isinstance(v, bool) or int(v) != v or int(v) < lo:
                raise ConfigError(f"{name}: expected an integer >= {lo}, got {v!r}")
        self.model, self.size, self.seed = model, int(size), int(seed)
        self.therm, self.sweeps = int(therm), int(sweeps)
        self.device = torch.device("cpu") if device is None else torch.device(device)
        self._u: torch.Tensor | None = None
        self._done = 0  # advances applied to self._u
        self._snapshot: tuple[int, torch.Tensor] | None = None
        self.replayed = 0  # advances recomputed by replays (a diagnostic)

    def _update(self, u: torch.Tensor, index: int) -> torch.Tensor:
        out, _, _ = run_protocol(u, self.model.prior_protocol(),
                                 seed=rng_key(self.seed, _POOL_STREAM), index=index)
        return out

    def _start(self) -> None:
        with torch.no_grad():
            u = unit_gauge(self.lattice, self.model.group, self.size).to(self.device)
            for j in range(self.therm):
                u = self._update(u, 2**40 + j)  # thermalisation indices apart from the draws
        self._u, self._done = u, 0

    def _advance(self) -> None:
        with torch.no_grad():
            for j in range(self.sweeps):
                self._u = self._update(self._u, self._done * self.sweeps + j)
        self._done += 1

    def draw(self, n: int) -> torch.Tensor:
        """The prior configurations of draw ``n`` (step ``n`` of training)."""
        n = int(n)
        if n < 0:
            raise ConfigError(f"draw: expected an index >= 0, got {n}")
        if self._u is None or self._done > n + 1:
            if self._snapshot is not None and self._snapshot[0] <= n + 1:
                self._done, self._u = self._snapshot[0], self._snapshot[1].to(self.device)
            else:
                self._start()
            self.replayed += max(n - self._done, 0)  # the advance of draw n is no replay
        while self._done < n + 1:
            self._advance()
        return self._u

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: the settings, the number of advances and the configurations."""
        return {"seed": self.seed, "therm": self.therm, "sweeps": self.sweeps,
                "size": self.size, "nrow": list(self.lattice.nrow),
                "model": dict(self.model.config), "done": self._done,
                "u": None if self._u is None else self._u.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Use a snapshot of the same pool settings as the start of later replays;
        :class:`ConfigError` if its settings differ."""
        mine = self.state_dict()
        for key in ("seed", "therm", "sweeps", "size", "nrow", "model"):
            if state.get(key) != mine[key]:
                raise ConfigError(f"prior pool snapshot: {key} is {state.get(key)!r}, this "
                                  f"pool has {mine[key]!r}")
        if state.get("u") is not None:
            self._snapshot = (int(state["done"]), state["u"])
            self._u = None


class SNFLoss:
    """The SNF training loss for :class:`~.training.Trainer` (module docstring): call ``n``
    (``self.calls``; set it to the trainer's step count after a resume) runs the protocol of
    ``model`` from ``prior_source.draw(n)`` (a :class:`PriorPool`; ``batch`` its first
    configurations) and returns ``(mean W, -W detached)``; under autograd the gradient of
    ``mean W`` is accumulated into the parameters block by block during the call (one block's
    graph in memory) and the returned ``mean W`` is a leaf.  The protocol's random numbers come
    from the trainer's generator of the step (one 62-bit seed drawn from it).  ``nrow`` is
    checked against the pool's lattice.  ``last_x0``, ``last_seed``, ``last_index`` and
    ``last_work`` keep the last call's ``run_protocol`` inputs and works."""

    def __init__(self, model: SNFModel, prior_source: PriorPool, batch: int,
                 nrow: Sequence[int]) -> None:
        if list(nrow) != list(prior_source.lattice.nrow):
            raise ConfigError(f"nrow: the prior pool is on {list(prior_source.lattice.nrow)}, "
                              f"got {list(nrow)}")
        if not 1 <= int(batch) <= prior_source.size:
            raise ConfigError(f"batch: expected 1 <= batch <= the pool size "
                              f"{prior_source.size}, got {batch}")
        self.model, self.pool, self.batch, self.nrow = model, prior_source, int(batch), nrow
        self.calls = 0
        self.last_x0: torch.Tensor | None = None
        self.last_seed: int | None = None
        self.last_index = -1
        self.last_work: torch.Tensor | None = None

    def __call__(self, gen: torch.Generator, device: torch.device
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        x0 = self.pool.draw(self.calls)[: self.batch].to(device)
        seed = rng_key(int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device)),
                       _RUN_STREAM)
        # the gradient of mean(W), block by block (run_protocol's block_backward: the memory of
        # one block's graph); the trainer's backward of the returned leaf adds nothing
        _, work, _ = run_protocol(x0, self.model.protocol(), seed=seed, index=self.calls,
                                  block_backward=1.0 / len(x0) if torch.is_grad_enabled()
                                  else None)
        self.last_x0, self.last_seed, self.last_index = x0, seed, self.calls
        self.calls += 1
        self.last_work = work.detach()
        return work.mean().detach().requires_grad_(), -work.detach()
