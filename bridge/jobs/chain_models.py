"""The model of a ``qcd-bridge chain`` run: loading it, reconciling the chain's group, lattice,
coupling and fermions with it (errors name the model and both values), moving it to another
lattice (:mod:`.transfer`), its fingerprint, and a stochastic normalizing flow's NE-MCMC kernel
(:mod:`.chain_ne`)."""

from __future__ import annotations

import json
import math
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..flows.checkpoints import GROUPS
from .chain_ne import is_snf

if TYPE_CHECKING:
    from .chain import ChainSettings

__all__ = ["ANALYTIC", "resolve_model", "model_fingerprint"]

ANALYTIC = "analytic"
"""``model = "analytic"``: the exact 2D U(1) plaquette-variable proposal (no training)."""


def _check_fermion_lattice(s: ChainSettings) -> None:
    if s.kappa is not None and (s.group != "su3" or len(s.nrow) != 4
                                or any(n % 2 for n in s.nrow)):
        raise ConfigError(f"--kappa {s.kappa}: Nf = 2 Wilson fermions need a 4D SU(3) lattice "
                          f"with even extents (--group su3 --nrow L L L T), got --group "
                          f"{s.group} --nrow {' '.join(map(str, s.nrow))}")


def _reconcile_kappa(s: ChainSettings, explicit: set[str], model: Any) -> None:
    """A joint model fixes the chain's fermions: kappa (and c_sw) default to the model's; a
    gauge-only model cannot weigh fermions (errors name the model and the values)."""
    mk = getattr(model, "kappa", None)
    if mk is None and "pf_draws" in explicit:
        raise ConfigError(f"--pf-draws {s.pf_draws}: pseudofermion draws weigh the proposals of "
                          f"a joint model (qcd-bridge train --kappa); "
                          f"{'the model ' + str(s.model) + ' has' if s.model else 'the chain has'}"
                          f" no pseudofermion flow")
    if mk is None:
        if s.kappa is not None and model is not None:
            raise ConfigError(
                f"--kappa {s.kappa:g}: the model {s.model} is a gauge flow without a "
                f"pseudofermion flow, so its flow steps cannot weigh the fermion determinant; "
                f"train a joint model (qcd-bridge train --kappa {s.kappa:g} ...) or run HMC "
                f"only (--schedule hmc:1)")
        _check_fermion_lattice(s)
        return
    c = model.conditional
    for key, mine in (("kappa", float(mk)), ("c_sw", float(c.c_sw))):
        if key not in explicit:
            setattr(s, key, mine)
        elif not math.isclose(float(getattr(s, key)), mine, rel_tol=0, abs_tol=1e-12):
            raise ConfigError(f"--{key.replace('_', '-')} {getattr(s, key):g}: the model "
                              f"{s.model} was trained for {key} = {mine:g}; drop the option "
                              f"or train a model for this value")
    _check_fermion_lattice(s)


# -- the model --------------------------------------------------------------------------------
def model_fingerprint(model: Any) -> str:
    """SHA-256 of the model's parameters and buffers (names, dtypes, shapes, values): a chain
    resumes only with the flow it started with, since its state caches ``log q`` of that flow
    (and proposals drawn from it)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    if not hasattr(model, "state_dict"):  # an analytic proposal: its configuration is all of it
        h.update(json.dumps(getattr(model, "config", repr(model)), sort_keys=True).encode())
        return h.hexdigest()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _group_key(model: Any) -> str:
    nc = int(model.group.nc)
    return "u1" if nc == 1 else f"su{nc}"


def resolve_model(s: ChainSettings, explicit: set[str]) -> Any:
    """Load ``s.model`` (or return None) and reconcile the group, lattice and coupling with
    it: values not given explicitly are taken from the model; a mismatch is a
    :class:`~bridge.errors.ConfigError` naming both."""
    plan, _ = s.kernel_plan()
    uses_flow = any(n in ("flow", "nemcmc") and v > 0 for n, v in plan)
    if not s.model:
        if uses_flow:
            raise ConfigError(
                f"the flow kernel needs --model (a `qcd-bridge train` run directory or "
                f"checkpoint); without one only hmc is allowed (got "
                f"{s.mixture or s.schedule!r})")
        _reconcile_kappa(s, explicit, None)
        return None
    if s.model == ANALYTIC:
        proposal = _analytic_proposal(s, explicit)
        _reconcile_kappa(s, explicit, proposal)
        return proposal
    from ..flows.checkpoints import load_model

    model, meta = load_model(s.model)
    train = meta.get("train", {})
    mine = {"group": _group_key(model), "nrow": [int(n) for n in train.get("nrow", [])],
            "beta": float(train.get("beta", math.nan))}
    for key in ("group", "nrow", "beta"):
        if key not in explicit:
            setattr(s, key, mine[key])
    if s.group != mine["group"] or len(s.nrow) != model.nd:
        from ..lattice import Lattice
        from ..mcmc.flow_mh import check_flow

        u = _probe_field(s)
        try:
            check_flow(model, u)
        except Exception as exc:  # noqa: BLE001 - re-raised with the model's path
            raise ConfigError(f"--model {s.model}: {exc}") from exc
        raise ConfigError(f"--model {s.model}: the model is for {model.group.name} in "
                          f"{model.nd}D, the chain for {GROUPS[s.group]} on "
                          f"{Lattice(s.nrow)}")
    if is_snf(model):
        _reconcile_snf(model, s, explicit, mine["nrow"])
    elif s.nrow != mine["nrow"]:  # a local model travels (bridge.jobs.transfer)
        _transfer(model, s, mine["nrow"])
    if not math.isclose(s.beta, mine["beta"], rel_tol=0, abs_tol=1e-12):
        raise ConfigError(
            f"--beta {s.beta:g}: the model {s.model} was trained for beta = "
            f"{mine['beta']:g}; the flow kernel would stay exact but propose from the wrong "
            f"action; drop --beta or train a model for this coupling")
    _reconcile_kappa(s, explicit, model)
    return model


def _reconcile_snf(model: Any, s: ChainSettings, explicit: set[str], trained: list[int]
                   ) -> None:
    """A stochastic normalizing flow: its NE-MCMC kernel alone (:mod:`.chain_ne`), on any
    lattice with even extents (the heatbath and the stout masks tile it), the prior file
    checked."""
    from .chain_ne import check_prior_start, reconcile_snf
    from .transfer import transfer_notice

    reconcile_snf(s, explicit)
    if any(n % 2 for n in s.nrow):
        raise ConfigError(f"--nrow {' '.join(map(str, s.nrow))}: --model {s.model} is a "
                          f"stochastic normalizing flow; its heatbath and stout masks need even "
                          f"extents")
    if s.nrow != trained:
        print(transfer_notice(s.model, trained, s.nrow), file=sys.stderr)
        s.model_nrow = list(trained)
    check_prior_start(s, model)


def _analytic_proposal(s: ChainSettings, explicit: set[str]) -> Any:
    """``--model analytic``: the exact plaquette-variable proposal of 2D U(1)
    (:class:`bridge.flows.analytic.U1PlaquetteProposal`, nothing trained) at the chain's beta."""
    if s.group != "u1" or len(s.nrow) != 2:
        raise ConfigError(f"--model {ANALYTIC}: the analytic plaquette proposal exists only "
                          f"for 2D U(1) (--group u1, two extents), the chain is --group "
                          f"{s.group} on {' x '.join(map(str, s.nrow))}")
    from ..flows.analytic import U1PlaquetteProposal

    return U1PlaquetteProposal(float(s.beta))


def _transfer(model: Any, s: ChainSettings, trained: list[int]) -> None:
    from .transfer import check_transfer, transfer_notice

    check_transfer(model, s.nrow, f"--nrow {' '.join(map(str, s.nrow))}: --model {s.model}")
    print(transfer_notice(s.model, trained, s.nrow), file=sys.stderr)
    s.model_nrow = list(trained)


def _probe_field(s: ChainSettings) -> Any:
    import torch

    from ..gauge import unit_gauge
    from ..lattice import Lattice

    return unit_gauge(Lattice(s.nrow), GROUPS[s.group], 1, dtype=torch.complex128)
