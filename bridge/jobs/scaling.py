"""``qcd-bridge scaling``: how model quality, training cost and sampling cost of a flow family grow
with the volume, in the manner of Abbott et al., arXiv:2211.07541 (secs. III-V: ESS of a fixed
model against V, training to a target ESS from scratch and from a transferred start, cost per
effective sample, autocorrelations of the hybrid chain against HMC).

Families: 2D U(1) (``plaquette``, ``coupling``; ``V = L^2``) and 4D SU(3) (``residual``: one
cycle of residual staple layers, :mod:`bridge.flows.residual`; ``V = L^4``; its chains in
:mod:`bridge.jobs.scaling_chains_su3`).  The couplings are ``betas`` (every ``L`` at every
beta) or, for 2D U(1), one beta per ``L`` on a line of constant physics
``V chi_t = physical_volume`` (:mod:`bridge.jobs.scaling_spacing`, the exact scale).

For each coupling ``beta`` of the grid a *fixed model* of the family is trained on
``train_L^nd`` for ``train_steps`` steps (reverse KL, :mod:`bridge.flows.training`; Adam
with a cosine decay of the learning rate over the steps: Adam's steps are about ``lr`` whatever
the gradient, and the jitter of the parameters that a constant rate leaves adds up over the
plaquettes of a larger lattice).  Then
for each ``L`` of the grid:

* **transferred model**: ESS and independence-Metropolis acceptance of the fixed model on
  ``L^nd`` (:func:`bridge.jobs.transfer.check_transfer`; ``eval_samples`` fresh samples), the
  seconds per sample and the *cost per effective sample* ``t_sample / ESS``;
* **training to the target ESS** (at every ``L``, or those of ``target_L``): steps and seconds
  until the mean batch ESS of the last
  ``window`` steps reaches ``target_ess`` and ``eval_samples`` fresh samples confirm it (a
  batch of 64 overestimates the ESS; the checks' time is not counted; at most one check per
  ``window`` steps), from scratch and from the transferred fixed model (0
  steps where its ESS already reaches the target; else fine-tuned from ``FINE_TUNE x lr``), at
  most ``target_max_steps`` steps (the length of the cosine schedule) or
  ``target_max_seconds``; not reached is a lower bound; the ESS on fresh samples at the end is
  recorded beside it;
* **chains** (at every ``L``, or those of ``chain_L``; 4D SU(3): the flowed clover charge,
  CPU seconds, :mod:`bridge.jobs.scaling_chains_su3`): ``chains`` hybrid chains
  (``hmc:1,flow:flow_per_cycle`` per cycle, the fixed model's proposals) and ``hmc_chains`` HMC
  chains (Omelyan 2MN, tau 1, the MD steps tuned to acceptance >= 0.8), both started from the same
  thermalised HMC state; ``tau_int`` of the geometric charge ``Q`` and of the plaquette from the
  Gamma method (:func:`bridge.analysis.stats.gamma`, pyerrors, chains as replicas) in cycles (HMC:
  trajectories), with the lower bounds of :func:`analyse_charge` where ``Q`` barely moves; the
  cost per independent sample ``(seconds per step per chain) x 2 tau_int`` (the kernels'
  time, measurements excluded).

Fits: ``cost = a V^z`` by least squares in log-log (:func:`fit_power_law`) for every cost (and for
``-log ESS``, which a local model makes linear in ``V``), per beta; for 2D U(1) at two or more
couplings also ``cost = c xi_t^z`` against the exact inverse spacing at fixed ``L`` and at fixed
physical volume (:func:`bridge.jobs.scaling_spacing.spacing_fits`).  Output:
``OUT/scaling.json`` and the figures of :mod:`bridge.jobs.scaling_plots`
(``OUT/scaling_*.png``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .scaling_chains import (  # the chains live there; these names stay importable here
    NSTEP_LADDER,
    analyse_charge,
    chains_at,
    long_hmc,
    make_hmc,
    tune_hmc,
)

__all__ = ["ScalingSettings", "run_scaling", "fit_power_law", "analyse_charge", "make_hmc",
           "tune_hmc", "long_hmc", "NSTEP_LADDER", "chains_at", "refit", "few_effective"]

# the families: make_flow arguments, TrainConfig fields, learning rate (with a cosine schedule
# over the steps of each training; fine-tuning a transferred model starts at FINE_TUNE x lr)
FAMILIES: dict[str, tuple[dict[str, Any], dict[str, Any], float]] = {
    "plaquette": ({"arch": "plaquette"}, {"estimator": "path", "adam_eps": 1e-8,
                                          "schedule": "cosine", "lr_min": 3e-4}, 0.2),
    "coupling": ({"n_layers": 8, "k": 8, "hidden": [8, 8]},
                 {"schedule": "cosine", "lr_min": 3e-4}, 3e-3),
    "residual": ({"arch": "residual"}, {"schedule": "cosine", "lr_min": 1e-3}, 0.02),
}
# the group and dimension of each family (the residual staple flow: 4D SU(3))
FAMILY_GROUP = {"plaquette": ("U1", 2), "coupling": ("U1", 2), "residual": ("SU3", 4)}
# a converged model ends its schedule near lr_min: restarting at a tenth of lr (0.02) undid it
# (measured: 32x32 ESS 0.972 -> 0.53 in 39 steps, 16x16 0.989 -> 0.94 in 163 steps); the
# residual flow's few constant coefficients restart at its lr_min (0.05 x 0.02)
FINE_TUNE = 0.005
FINE_TUNE_FAMILY = {"residual": 0.05}


@dataclass
class ScalingSettings:
    """The options of ``qcd-bridge scaling`` (module docstring; defaults as on the command
    line)."""

    family: str = "plaquette"
    L: list[int] = field(default_factory=lambda: [8, 16, 32])
    betas: list[float] | None = None  # [6.0] unless physical_volume sets one beta per L
    physical_volume: float | None = None
    target_L: list[int] | None = None  # where training to the target is measured (None: all L)
    chain_L: list[int] | None = None  # where the hybrid and HMC chains run (None: all L)
    train_L: int = 8
    train_steps: int = 600
    batch: int = 64
    lr: float | None = None
    target_ess: float = 0.5
    window: int = 10
    target_max_steps: int = 300
    target_max_seconds: float = 60.0
    eval_samples: int = 256
    chains: int = 4
    cycles: int = 300
    flow_per_cycle: int = 1
    flow_batch: int = 16
    hmc_chains: int = 4
    hmc_trajectories: int = 2000
    therm: int = 20
    q_flow_time: float = 0.5  # 4D SU(3): Wilson flow time of the charge in the chains
    q_flow_eps: float = 0.1
    seed: int = 0
    out: str = "scaling"


def check_settings(s: ScalingSettings) -> None:
    """Refuse settings that cannot run, naming the option and the value."""
    if s.family not in FAMILIES:
        raise ConfigError(f"--family {s.family!r}: expected one of {sorted(FAMILIES)}")
    if not s.L or any(int(n) < 2 for n in s.L) or int(s.train_L) < 2:
        raise ConfigError(f"--L {s.L} / --train-L {s.train_L}: expected extents >= 2")
    if s.physical_volume is not None:
        if s.betas is not None:
            raise ConfigError(f"--betas {s.betas} and --physical-volume {s.physical_volume}: "
                              f"give one of them (the physical volume sets beta for each L)")
        if FAMILY_GROUP[s.family] != ("U1", 2):
            raise ConfigError(f"--physical-volume with --family {s.family}: the exact scale "
                              f"(chi_t a^2) exists for 2D U(1) only")
    elif s.betas is not None and (not s.betas or any(not (b > 0 and math.isfinite(b))
                                                     for b in s.betas)):
        raise ConfigError(f"--betas {s.betas}: expected positive couplings")
    for name, sub in (("target-L", s.target_L), ("chain-L", s.chain_L)):
        if sub is not None and not set(sub) <= set(s.L):
            raise ConfigError(f"--{name} {sub}: expected some of --L {s.L} (or none)")
    if not (s.q_flow_time >= 0 and s.q_flow_eps > 0 and math.isfinite(s.q_flow_time)):
        raise ConfigError(f"--q-flow-time {s.q_flow_time} / --q-flow-eps {s.q_flow_eps}: "
                          f"expected a flow time >= 0 and a positive step")
    if not 0 < s.target_ess <= 1:
        raise ConfigError(f"--target-ess {s.target_ess}: expected a number in (0, 1]")
    for name in ("train_steps", "batch", "window", "target_max_steps", "eval_samples", "chains",
                 "flow_per_cycle", "flow_batch", "hmc_chains"):
        if int(getattr(s, name)) < (2 if name == "batch" else 1):
            raise ConfigError(f"--{name.replace('_', '-')} {getattr(s, name)}: expected a "
                              f"positive integer{' >= 2' if name == 'batch' else ''}")
    for name, n in (("cycles", s.cycles), ("hmc_trajectories", s.hmc_trajectories)):
        if int(n) <= int(s.therm) + 4:
            raise ConfigError(f"--{name.replace('_', '-')} {n}: expected more than --therm "
                              f"{s.therm} + 4")


# -- fits -------------------------------------------------------------------------------------
def fit_power_law(x: Any, y: Any) -> dict[str, Any] | None:
    """``y = a x^z`` by least squares of ``log y`` on ``log x``: ``{"z", "z_error", "a",
    "points"}`` (the error from the residuals, None with two points); None with fewer than two
    positive points."""
    import numpy as np

    pts = [(float(a), float(b)) for a, b in zip(x, y, strict=True)
           if a is not None and b is not None and a > 0 and b > 0 and math.isfinite(b)]
    if len({p[0] for p in pts}) < 2:
        return None
    lx, ly = np.log([p[0] for p in pts]), np.log([p[1] for p in pts])
    design = np.stack([lx, np.ones_like(lx)], 1)
    coef, *_ = np.linalg.lstsq(design, ly, rcond=None)
    err = None
    if len(pts) > 2:
        resid = ly - design @ coef
        cov = np.linalg.inv(design.T @ design) * float(resid @ resid) / (len(pts) - 2)
        err = float(math.sqrt(cov[0, 0]))
    return {"z": float(coef[0]), "z_error": err, "a": float(math.exp(coef[1])),
            "points": len(pts)}


FIT_KEYS = {  # name: (value, the flag saying it is a lower bound or None)
    "cost_per_effective_sample": ("transfer.cost_per_effective_sample",
                                  "transfer.is_lower_bound"),
    "minus_log_ess": ("transfer.minus_log_ess", "transfer.is_lower_bound"),
    "train_seconds_scratch": ("train_scratch.seconds", "train_scratch.is_lower_bound"),
    "train_seconds_transfer": ("train_transfer.seconds", "train_transfer.is_lower_bound"),
    "hybrid_cost_per_independent_q": ("hybrid.cost_per_independent_q", "hybrid.is_lower_bound"),
    "hmc_cost_per_independent_q": ("hmc.cost_per_independent_q", "hmc.is_lower_bound"),
    "hybrid_cost_per_independent_plaquette": ("hybrid.cost_per_independent_plaquette",
                                              "hybrid.plaquette_is_lower_bound"),
    "hmc_cost_per_independent_plaquette": ("hmc.cost_per_independent_plaquette",
                                           "hmc.plaquette_is_lower_bound"),
}


def _get(point: dict[str, Any], path: str) -> Any:
    part, key = path.split(".")
    return point.get(part, {}).get(key)


def fit_all(pts: list[dict[str, Any]], xs: list[float]) -> dict[str, Any]:
    """Every cost of :data:`FIT_KEYS` of the points ``pts`` fitted as ``a x^z`` against ``xs``;
    a fit over values that include lower bounds (unreached targets, unresolved tau_int, too few
    effective samples) says so and is repeated over the measured values alone
    (``NAME_resolved``, where two or more remain)."""
    per: dict[str, Any] = {}
    for name, (path, flag) in FIT_KEYS.items():
        f = fit_power_law(xs, [_get(p, path) for p in pts])
        if f is not None:
            f["includes_lower_bounds"] = bool(flag) and any(
                _get(p, flag) for p in pts if (_get(p, path) or 0) > 0)
        per[name] = f
        if f is not None and f["includes_lower_bounds"]:
            ok = [(x, p) for x, p in zip(xs, pts, strict=True) if not _get(p, flag)]
            per[f"{name}_resolved"] = fit_power_law([x for x, _ in ok],
                                                    [_get(p, path) for _, p in ok])
    return per


def fits(points: list[dict[str, Any]]) -> dict[str, Any]:
    """Per beta, :func:`fit_all` against ``V``."""
    out: dict[str, Any] = {}
    for beta in sorted({p["beta"] for p in points}):
        pts = sorted((p for p in points if p["beta"] == beta), key=lambda p: p["volume"])
        out[f"{beta:g}"] = fit_all(pts, [p["volume"] for p in pts])
    return out


# -- flows ------------------------------------------------------------------------------------
def _evaluate(model: Any, nrow: list[int], beta: float, n: int, seed: int,
              chunk: int = 64) -> dict[str, Any]:
    """ESS, IMH acceptance and seconds per sample of ``n`` fresh samples."""
    import torch

    from ..gauge import wilson_action
    from ..mcmc.reweighting import ess, imh_acceptance
    from ..rng import generator, rng_key

    lws = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i, start in enumerate(range(0, n, chunk)):
            u, lq = model.sample(min(chunk, n - start), nrow,
                                 generator=generator(rng_key(seed, 21, i)))
            lws.append(-wilson_action(u, beta) - lq)
    sec = (time.perf_counter() - t0) / n
    lw = torch.cat(lws)
    e = ess(lw)
    return {"ess": e, "acceptance": imh_acceptance(lw, generator(rng_key(seed, 22))),
            "seconds_per_sample": sec, "cost_per_effective_sample": sec / e if e > 0 else None,
            "minus_log_ess": -math.log(e) if e > 0 else None, "eval_samples": n,
            "is_lower_bound": few_effective(e, n)}


# fewer effective samples than this among the fresh ones: the ESS estimate rests on the largest
# weights seen, and the largest weights of the tail are unseen, so the true ESS is most likely
# smaller (its floor is 1/n): cost per effective sample and -log ESS count as lower bounds
FEW_EFFECTIVE = 3.0


def few_effective(ess_value: float, n: int) -> bool:
    """Whether ``ess_value`` of ``n`` samples is too few effective samples to be an estimate
    (:data:`FEW_EFFECTIVE`)."""
    return bool(ess_value * n < FEW_EFFECTIVE)


def _trainer(model: Any, s: ScalingSettings, nrow: list[int], beta: float, seed: int,
             steps: int, fine_tune: bool = False) -> Any:
    from ..flows.training import TrainConfig, Trainer

    _, train_kw, lr = FAMILIES[s.family]
    lr = float(s.lr or lr) * (FINE_TUNE_FAMILY.get(s.family, FINE_TUNE) if fine_tune else 1.0)
    kw = {**train_kw, "lr_min": min(train_kw.get("lr_min", 0.0), lr)}
    return Trainer(model, TrainConfig(nrow=nrow, beta=beta, batch=int(s.batch), lr=lr,
                                      seed=seed, total_steps=int(steps), **kw))


def _new_model(s: ScalingSettings, seed: int) -> Any:
    import torch

    from ..flows import make_flow

    torch.manual_seed(seed)
    return make_flow(*FAMILY_GROUP[s.family], **FAMILIES[s.family][0])


def nrow_of(s: ScalingSettings, L: int) -> list[int]:
    """The lattice ``L^nd`` of the family."""
    return [int(L)] * FAMILY_GROUP[s.family][1]


def train_fixed(s: ScalingSettings, beta: float) -> tuple[Any, dict[str, Any]]:
    """The fixed model of ``beta``: ``train_steps`` steps on ``train_L^nd``."""
    model = _new_model(s, s.seed)
    nrow = nrow_of(s, s.train_L)
    tr = _trainer(model, s, nrow, beta, s.seed, int(s.train_steps))
    t0 = time.perf_counter()
    tr.train(int(s.train_steps))
    return model, {"nrow": nrow, "steps": tr.step_count, "seconds": time.perf_counter() - t0,
                   "batch_ess_last10": sum(h["ess"] for h in tr.history[-10:])
                   / max(len(tr.history[-10:]), 1)}


def train_to_target(model: Any, s: ScalingSettings, L: int, beta: float, seed: int,
                    start: dict[str, Any] | None = None) -> dict[str, Any]:
    """Steps and seconds of training ``model`` on ``L^nd`` until the mean batch ESS of the last
    ``window`` steps reaches the target and a fresh evaluation confirms it (module docstring);
    ``start``: the model's evaluation
    before training (a transferred start that already reaches the target takes 0 steps)."""
    if start is not None and start["ess"] >= s.target_ess:
        return {"steps": 0, "seconds": 0.0, "reached": True, "is_lower_bound": False,
                "ess_fresh": start["ess"], "note": "the transferred model reaches the target"}
    nrow = nrow_of(s, L)
    tr = _trainer(model, s, nrow, beta, seed, int(s.target_max_steps),
                  fine_tune=start is not None)
    t0, hist, reached, checks, check_s = time.perf_counter(), [], False, [], 0.0
    fresh: dict[str, Any] = {}
    while tr.step_count < int(s.target_max_steps):
        if time.perf_counter() - t0 - check_s > float(s.target_max_seconds):
            break
        hist.append(tr.step()["ess"])
        since = tr.step_count - (checks[-1]["step"] if checks else 0)
        if (len(hist) >= int(s.window) and since >= int(s.window)
                and sum(hist[-s.window:]) / s.window >= s.target_ess):
            t1 = time.perf_counter()  # a small batch overestimates the ESS: confirm it
            fresh = _evaluate(model, nrow, beta, int(s.eval_samples), seed + len(checks) + 1)
            check_s += time.perf_counter() - t1
            checks.append({"step": tr.step_count, "ess": fresh["ess"]})
            if fresh["ess"] >= s.target_ess:
                reached = True
                break
    seconds = time.perf_counter() - t0 - check_s
    if not reached:
        fresh = _evaluate(model, nrow, beta, int(s.eval_samples), seed + len(checks) + 1)
    return {"steps": tr.step_count, "seconds": seconds, "reached": reached,
            "is_lower_bound": not reached, "ess_fresh": fresh["ess"],
            "acceptance_fresh": fresh["acceptance"], "checks": checks,
            "check_seconds": check_s,
            "batch_ess_window": sum(hist[-s.window:]) / max(len(hist[-s.window:]), 1),
            "batch_ess_history": hist}


# -- the study --------------------------------------------------------------------------------
def _line(p: dict[str, Any]) -> str:
    def f(x: Any, spec: str) -> str:
        return "-" if x is None else format(x, spec)

    def bound(part: dict[str, Any] | None, key: str, spec: str) -> str:
        if part is None:
            return "-"
        return (">" if part.get("is_lower_bound") else "") + f(part.get(key), spec)

    t, h, m = p["transfer"], p.get("hybrid") or {}, p.get("hmc") or {}
    return (f"{p['L']:4d} {p['beta']:6.4g} {t['ess']:6.3f} {t['acceptance']:6.3f} "
            f"{f(t['cost_per_effective_sample'], '9.3g')} "
            f"{bound(p.get('train_scratch'), 'seconds', '.3g'):>8} "
            f"{bound(p.get('train_transfer'), 'seconds', '.3g'):>8} "
            f"{bound(h, 'tau_int_q', '.3g'):>9} {bound(m, 'tau_int_q', '.3g'):>9} "
            f"{f(h.get('tau_int_plaquette'), '.3g'):>7} {f(m.get('tau_int_plaquette'), '.3g'):>7} "
            f"{bound(h, 'cost_per_independent_q', '.3g'):>9} "
            f"{bound(m, 'cost_per_independent_q', '.3g'):>9}")


HEADER = (f"{'L':>4} {'beta':>6} {'ESS':>6} {'acc':>6} {'s/eff':>9} {'tr.scr':>8} "
          f"{'tr.xfer':>8} {'tauQ hyb':>9} {'tauQ hmc':>9} {'tauP h':>7} {'tauP m':>7} "
          f"{'s/Q hyb':>9} {'s/Q hmc':>9}")


def schedule(s: ScalingSettings) -> list[tuple[float, list[int]]]:
    """``(beta, [L, ...])`` groups of the study: every L at every beta of ``--betas``, or on
    a line of constant physics (``--physical-volume``) one beta per L
    (:func:`bridge.jobs.scaling_spacing.beta_at_physical_volume`)."""
    from .scaling_spacing import beta_at_physical_volume

    if s.physical_volume is not None:
        return [(beta_at_physical_volume(L, float(s.physical_volume)), [L]) for L in s.L]
    return [(float(b), list(s.L)) for b in (s.betas or [6.0])]


def _point(s: ScalingSettings, fixed: Any, L: int, beta: float, seed: int) -> dict[str, Any]:
    """One (L, beta) point of the study (module docstring)."""
    import copy

    nrow = nrow_of(s, L)
    tr = _evaluate(fixed, nrow, beta, int(s.eval_samples), seed)
    p: dict[str, Any] = {"L": L, "volume": L ** len(nrow), "beta": beta, "transfer": tr}
    if s.target_L is None or L in s.target_L:
        p["train_scratch"] = train_to_target(_new_model(s, seed), s, L, beta, seed + 2)
        p["train_transfer"] = train_to_target(copy.deepcopy(fixed), s, L, beta, seed + 3,
                                              start=tr)
    if s.chain_L is not None and L not in s.chain_L:
        return p
    if FAMILY_GROUP[s.family] != ("U1", 2):  # 4D SU(3): no exact values
        from .scaling_chains_su3 import chain_ratios, chains_su3_at

        p.update(chains_su3_at(fixed, s, L, beta, seed + 4))
        chain_ratios(p)
        return p
    from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility

    p.update(chains_at(fixed, s, L, beta, seed + 4))
    p["exact"] = {"plaquette": u1_2d_plaquette(beta, (L, L)),
                  "chi_t": u1_2d_topological_susceptibility(beta, (L, L))}
    h, m = p["hybrid"], p["hmc"]
    p["hmc_over_hybrid_cost_q"] = m["cost_per_independent_q"] / h["cost_per_independent_q"]
    p["ratio_is_lower_bound"] = bool(m["is_lower_bound"]) and not h["is_lower_bound"]
    return p


def refit(result: dict[str, Any], out: Path | str) -> dict[str, Any]:
    """Recompute the flags of :func:`few_effective`, the fits and the figures of a study (a
    ``scaling.json`` written by an earlier version keeps its measurements)."""
    from .scaling_plots import plot_scaling
    from .scaling_spacing import spacing_fits

    for p in result["points"]:
        t = p["transfer"]
        t["is_lower_bound"] = few_effective(t["ess"], int(t["eval_samples"]))
    result["fits"] = fits(result["points"])
    if int(result.get("nd", 2)) == 2 and len({p["beta"] for p in result["points"]}) >= 2:
        result["spacing_fits"] = spacing_fits(result["points"])
    Path(out).mkdir(parents=True, exist_ok=True)
    result["figures"] = [str(f) for f in plot_scaling(result, Path(out))]
    return result


def run_scaling(s: ScalingSettings) -> dict[str, Any]:
    """The study of the module docstring; writes ``OUT/scaling.json`` and the figures and
    returns the result."""
    from .scaling_plots import plot_scaling
    from .scaling_spacing import spacing_fits, spacing_lines
    from .transfer import check_transfer

    check_settings(s)
    s.L = sorted(int(n) for n in s.L)
    probe = _new_model(s, s.seed)
    for L in [s.train_L, *s.L]:  # refuse an impossible lattice before any work
        check_transfer(probe, nrow_of(s, L), f"--L {L}")
    plan = schedule(s)
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    points, fixed_info = [], {}
    group, nd = FAMILY_GROUP[s.family]
    if nd != 2:
        print(f"note: --family {s.family} ({nd}D {group}): Q in the chains is the clover charge "
              f"after Wilson flow to t = {s.q_flow_time:g}, not an integer at strong coupling; "
              f"chain seconds are CPU seconds", flush=True)
    print(HEADER, flush=True)
    for bi, (beta, Ls) in enumerate(plan):
        fixed, fixed_info[f"{beta:g}"] = train_fixed(s, beta)
        for li, L in enumerate(Ls):
            seed = int(s.seed) + 100 * (bi * len(s.L) + li) + 1
            points.append(_point(s, fixed, L, beta, seed))
            print(_line(points[-1]), flush=True)
    result = {"format": "qcd-bridge-scaling", "settings": asdict(s),
              "group": {"U1": "U(1)", "SU3": "SU(3)"}[group], "nd": nd,
              "fixed_models": fixed_info, "points": points, "fits": fits(points),
              "seconds": time.perf_counter() - t_start}
    if nd == 2 and len({p["beta"] for p in points}) >= 2:
        result["spacing_fits"] = spacing_fits(points)
    result["figures"] = [str(f) for f in plot_scaling(result, out)]
    path = out / "scaling.json"
    path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    for beta, per in result["fits"].items():
        for name, f in per.items():
            if f is not None:
                err = "" if f["z_error"] is None else f" +- {f['z_error']:.2f}"
                lb = " (includes lower bounds)" if f.get("includes_lower_bounds") else ""
                print(f"beta {beta}: {name} ~ V^{f['z']:.2f}{err}{lb}")
    for line in spacing_lines(result["spacing_fits"]) if "spacing_fits" in result else []:
        print(line)
    if nd != 2 and any("hybrid" in p for p in points):
        from .scaling_chains_su3 import chain_lines

        print("\n".join(chain_lines(points)))
    print(f"wrote {path} and {', '.join(result['figures'])} in "
          f"{result['seconds']:.0f} s", flush=True)
    return result
