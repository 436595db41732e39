"""Non-equilibrium MCMC in ``qcd-bridge chain``: with a stochastic normalizing flow
(``qcd-bridge train --arch snf``) as ``--model`` the chain's kernel is
:func:`bridge.mcmc.nonequilibrium.nemcmc`: a prior chain at ``beta0`` (the model's own update,
heatbath + overrelaxation or HMC, ``prior_steps`` updates between proposals) feeds the protocol
``beta0 -> beta`` with the model's layers, whose end point is accepted with
``min(1, exp(-(W' - W)))``.  The schedule is ``nemcmc:1`` by default; HMC at ``beta`` may be
added (``hmc:2,nemcmc:1``): after an HMC move the current path is redrawn backwards from the new
configuration, which keeps the chain exact.

The prior chain starts from ``--start``: ``cold``/``hot`` (it thermalises during the first
cycles, like any chain), or a gauge file holding an equilibrium configuration at ``beta0``, e.g.
one of a Chroma ``hmc`` ensemble.  Chroma (and ``qcd-bridge hmc``) echo the ``hmc`` input into
the file's ``scidac-record-xml`` record; it is read with :func:`bridge.chroma.hmc_input.
parse_hmc_input` and its gauge monomial must be the Wilson action at the model's ``beta0`` with
periodic boundaries and no fermion monomials.  A file without that record is accepted with a
notice that its coupling could not be checked.
"""

from __future__ import annotations

import math
import sys
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
    from .chain import ChainSettings

__all__ = ["is_snf", "reconcile_snf", "check_prior_file", "nemcmc_kernel"]

NAME = "nemcmc"


def is_snf(model: Any) -> bool:
    """Whether ``model`` is a stochastic normalizing flow (:class:`bridge.flows.snf.SNFModel`)."""
    return isinstance(getattr(model, "config", None), dict) and model.config.get("arch") == "snf"


def reconcile_snf(s: ChainSettings, explicit: set[str]) -> None:
    """Settings of a chain with an SNF model: the schedule defaults to ``nemcmc:1`` and may add
    HMC at ``beta`` (``hmc:1,nemcmc:1``: after an HMC move the current path is redrawn backwards,
    :func:`~bridge.mcmc.nonequilibrium.nemcmc`), but no flow kernel; no fermions."""
    if s.mixture is None and ("schedule" not in explicit or s.schedule is None):
        s.schedule = f"{NAME}:1"
    plan = [n for n, v in s.kernel_plan()[0] if v > 0]
    what = f"--mixture {s.mixture!r}" if s.mixture is not None else f"--schedule {s.schedule!r}"
    if "flow" in plan:
        raise ConfigError(f"{what}: --model {s.model} is a stochastic normalizing flow, not a "
                          f"flow proposal; use its NE-MCMC kernel ({NAME}), alone or with hmc")
    if NAME not in plan:
        raise ConfigError(f"{what}: --model {s.model} is a stochastic normalizing flow; the "
                          f"schedule needs its kernel {NAME}")
    if s.kappa is not None:
        raise ConfigError(f"--kappa {s.kappa:g}: --model {s.model} is a pure-gauge stochastic "
                          f"normalizing flow")


def _gauge_monomials(text: str, source: str) -> list[Any]:
    from lxml import etree

    from ..chroma.hmc_input import parse_hmc_input

    tree = etree.ElementTree(etree.fromstring(text.encode()))
    return list(parse_hmc_input(tree, source, strict=False).monomials.values())


def check_prior_file(path: str, model: Any) -> str | None:
    """Check the ensemble parameters recorded in the gauge file ``path`` against the prior of
    the SNF ``model`` (module docstring); :class:`~bridge.errors.ConfigError` naming the file,
    record, value and expectation on a mismatch, the text of a notice when nothing could be
    checked, else None."""
    from ..io import read_gauge

    _, info = read_gauge(path, verify=True)
    record = "scidac-record-xml"
    text = info.metadata.get(record)
    if not text or "<Params" not in str(text):
        return (f"notice: {path} has no Chroma hmc parameters ({record}); its coupling was not "
                f"checked against the model's beta0 = {model.beta0:g}")
    source = f"{path} ({record})"
    try:
        monomials = _gauge_monomials(str(text), source)
    except Exception as exc:  # noqa: BLE001 - any unreadable record only loses the check
        return f"notice: {source}: could not read the hmc parameters ({exc}); beta0 not checked"
    fermions = [m.kind for m in monomials if "FERM" in m.kind.upper()]
    if fermions:
        raise ConfigError(f"{source}: the ensemble has the fermion monomials {fermions}; the "
                          f"stochastic normalizing flow's prior is pure gauge (Wilson action "
                          f"at beta0 = {model.beta0:g})")
    gauge = [m for m in monomials if "beta" in m.params]
    if len(gauge) != 1:
        return f"notice: {source}: {len(gauge)} gauge monomials with a beta; beta0 not checked"
    p = gauge[0].params
    if p.get("gauge_action") != "WILSON_GAUGEACT":
        raise ConfigError(f"{source}: GaugeAction/Name is {p.get('gauge_action')!r}, the "
                          f"protocol expects WILSON_GAUGEACT")
    if not math.isclose(float(p["beta"]), model.beta0, rel_tol=0, abs_tol=1e-12):
        raise ConfigError(f"{source}: GaugeAction/beta is {float(p['beta']):g}, the model's "
                          f"prior is at beta0 = {model.beta0:g}; use a configuration of an "
                          f"ensemble at beta0 or train a model with --beta0 "
                          f"{float(p['beta']):g}")
    bc = p.get("gauge_bc", "PERIODIC_GAUGEBC")
    if bc != "PERIODIC_GAUGEBC":
        raise ConfigError(f"{source}: GaugeBC/Name is {bc!r}, the protocol expects "
                          f"PERIODIC_GAUGEBC")
    return None


def check_prior_start(s: ChainSettings, model: Any) -> None:
    """``--start FILE`` with an SNF model: :func:`check_prior_file`, printing its notice."""
    import os

    if str(s.start) in ("hot", "cold") or not os.path.exists(str(s.start)):
        return
    note = check_prior_file(str(s.start), model)
    if note:
        print(note, file=sys.stderr)


def nemcmc_kernel(s: ChainSettings, model: Any) -> Any:
    """The NE-MCMC kernel of the SNF ``model`` (module docstring), named ``nemcmc``."""
    from ..mcmc.nonequilibrium import nemcmc

    if not is_snf(model):
        raise ConfigError(f"--schedule {s.plan_text()!r}: the {NAME} kernel needs --model of a "
                          f"stochastic normalizing flow (qcd-bridge train --arch snf)")
    c = model.config
    if c["update"] == "heatbath":
        from ..mcmc.heatbath import heatbath

        defect = tuple(c["defect"]) if c.get("defect") is not None else None
        prior = heatbath(model.beta0, n_hb=int(c["n_hb"]), n_or=int(c["n_or"]), name="prior",
                         defect=defect, c=float(c.get("c0", 0.0)))
    else:
        from ..mcmc.hmc import hmc
        from ..mcmc.integrators import Integrator, Level, scheme
        from ..mcmc.monomials import GaugeMonomial

        integ = Integrator([Level(scheme(c["integrator"]), int(c["md_steps"]),
                                  [GaugeMonomial(model.beta0)])])
        prior = hmc(integ, float(c["tau"]), name="prior")
    return nemcmc(model.protocol(), prior, prior_steps=int(s.prior_steps), name=NAME)
