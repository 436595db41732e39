"""NE-MCMC in ``qcd-bridge run``: a Chroma (or built-in) HMC ensemble at ``beta0`` is the prior
of a stochastic normalizing flow's protocol ``beta0 -> beta`` (:mod:`bridge.flows.snf`,
:func:`bridge.mcmc.nonequilibrium.nemcmc`; docs/dropin.md).

Each cycle the engine's segment (``trajectories`` HMC trajectories of the user's XML at
``beta0``) moves the prior replica; its configuration ``x0'`` starts a protocol run with the
model's layers, ending at ``U'`` with work ``W'``, accepted with ``min(1, exp(-(W' - W)))``
against the work ``W`` of the current path.  This is the two-replica swap kernel of
:func:`~bridge.mcmc.nonequilibrium.nemcmc` with the engine as the prior kernel: on acceptance the
current path becomes ``(x0', U', W')`` and the next segment starts from the old current path's
start ``x0`` (the swap), on rejection from ``x0'``.  So the ensemble at ``beta`` is exact for any
model, with the engine's HMC as the only update at ``beta0``.

Records: per cycle the segment's trajectories (``kernel`` 0, at ``beta0``) and one NE-MCMC
update (``kernel`` 2: ``accepted``, ``delta = -(W' - W)``, ``acc_prob``, ``w_plaq`` of the
current configuration at ``beta``); the store holds only the configurations at ``beta`` (the
current one after every cycle).  The state file keeps the current path (``x0``, ``U`` files and
``W``); the protocol's random numbers come from ``rng_key(seed, cycle)``, so a resumed run is
the uninterrupted one.
"""

from __future__ import annotations

import math
import time
from typing import Any

from ..errors import ConfigError
from ..rng import rng_key

__all__ = ["check_snf_workflow", "ne_block"]

_TAG = 0x4E45  # the NE-MCMC streams of a cycle


def check_snf_workflow(model: Any, wf: Any, facts: Any) -> str:
    """Refuse a workflow the SNF ``model`` cannot serve (ConfigError naming the workflow, the
    model and the values); the description of the step for the log."""
    from ..chroma.monomials import gauge_beta

    where = f"workflow {wf.source}: model {wf.model} (stochastic normalizing flow)"
    c = model.config
    if int(model.group.nc) != 3 or int(model.nd) != 4:
        raise ConfigError(f"{where}: the model is for {model.nd}D {model.group.name}, Chroma's "
                          f"hmc input is 4D SU(3)")
    kinds = [facts.monomials[m].kind for m in facts.hamiltonian]
    if any(k != "GAUGE_MONOMIAL" for k in kinds):
        raise ConfigError(f"{where}: the protocol is pure gauge, the hmc input "
                          f"{facts.source} has the monomials {kinds}")
    beta = gauge_beta(facts)
    if abs(beta - model.beta0) > 1e-12 * max(1.0, abs(beta)):
        raise ConfigError(f"{where}: the engine's ensemble is the prior, so the XML's beta "
                          f"({beta:g}) must be the model's beta0 ({model.beta0:g}); the "
                          f"protocol then ends at beta = {model.beta:g}")
    if c.get("defect") is not None:
        raise ConfigError(f"{where}: the model's prior has an open defect {c['defect']}, "
                          f"which Chroma's hmc does not simulate; use qcd-bridge chain")
    if any(n % 2 for n in facts.nrow):
        raise ConfigError(f"{where}: the stout masks and the heatbath need even extents, the "
                          f"XML has nrow {' '.join(map(str, facts.nrow))}")
    if wf.flow_steps != 1:
        raise ConfigError(f"{where}: flow_steps is {wf.flow_steps}; an SNF makes one NE-MCMC "
                          f"step per segment (the segment is the prior's update), set "
                          f"flow_steps: 1")
    return (f"NE-MCMC: protocol beta {model.beta0:g} -> {model.beta:g} in "
            f"{c['n_blocks']} blocks ({c['update']}, {c.get('layer', 'staple')} layers)")


def _propose(run: Any, u0: Any, seed: int) -> tuple[Any, float]:
    import torch

    from ..mcmc.nonequilibrium import run_protocol

    with torch.no_grad():
        u, w, _ = run_protocol(u0, run.model.protocol(), seed=rng_key(seed, _TAG), index=0)
    return u, float(w[0])


def ne_block(run: Any, st: dict[str, Any], store: Any) -> dict[str, Any]:
    """One NE-MCMC step from the segment's configuration (module docstring); returns the new
    state (``current_cfg``: the start of the next segment, ``ne``: the current path)."""
    import torch

    from ..gauge import mesplq
    from ..io.ildg import read_ildg, write_ildg
    from ..rng import generator
    from .dropin import _rel, _store_config, _store_updates

    c, t0 = st["cycle"], time.perf_counter()
    x0_file = st["current_cfg"]
    u0, _ = read_ildg(run.wf.run_dir / x0_file, nrow=run.facts.nrow)
    seed = rng_key(run.wf.seed, c)
    u_new, w_new = _propose(run, u0.contiguous().to(run.wf.device), seed)
    ne = st.get("ne")
    if ne is None:  # the first path starts the chain (nemcmc's init)
        accept, delta, prob = True, math.nan, 1.0
    else:
        delta = -(w_new - float(ne["work"]))
        prob = math.exp(min(delta, 0.0))
        r = torch.rand((), generator=generator(rng_key(seed, _TAG, 2)), dtype=torch.float64)
        accept = bool(float(r) < prob)
    if accept:
        out = run.seg_dir / f"{run.stem}_cfg_{st['hmc_update']}_ne.lime"
        rxml = (f"<?xml version=\"1.0\"?>\n<qcd_bridge_nemcmc><cycle>{c}</cycle><beta0>"
                f"{run.model.beta0!r}</beta0><beta>{run.model.beta!r}</beta><work>{w_new!r}"
                f"</work><x0>{x0_file}</x0></qcd_bridge_nemcmc>")
        write_ildg(out, u_new.cpu(), precision=64, record_xml=rxml, overwrite=True)
        prior_next = ne["x0"] if ne is not None else x0_file  # the swap
        ne = {"x0": x0_file, "u": _rel(out, run.wf.run_dir), "work": w_new}
        u = u_new.cpu()
    else:
        prior_next = x0_file
        u, _ = read_ildg(run.wf.run_dir / ne["u"], nrow=run.facts.nrow)
    plaq = float(mesplq(u).w_plaq[0])
    update = st["update"] + 1
    _store_updates(store, [{"update": update, "kernel": 2, "w_plaq": plaq,
                            "accepted": float(accept), "delta": delta, "acc_prob": prob,
                            "warmup": 0.0}])
    _store_config(run, store, u, update, accept,
                  {"kernel": "nemcmc", "cycle": c, "file": ne["u"], "x0": ne["x0"],
                   "work": float(ne["work"]), "beta": run.model.beta, "w_plaq": plaq},
                  [run.wf.seed, c])
    st.update(phase="start", cycle=c + 1, update=update, current_cfg=prior_next, ne=ne)
    run._line += (f" | nemcmc {'accepted' if accept else 'rejected'} (p {prob:.2f}) "
                  f"{time.perf_counter() - t0:.1f} s")
    run._plaq = plaq
    return st
