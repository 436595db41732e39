"""The Markov chains of ``qcd-bridge scaling --family residual`` (4D SU(3),
:mod:`bridge.jobs.scaling`): hybrid chains (one HMC trajectory and ``flow_per_cycle``
independence-Metropolis steps with the transferred residual staple flow per cycle) and plain HMC
chains (Omelyan 2MN, tau 1, MD steps tuned to acceptance >= 0.8), both from one thermalised HMC
state, with ``tau_int`` of the plaquette and of the topological charge.

At the strong couplings where the residual flow works (beta 0.5-1) nothing is frozen: the
charge is the clover charge after a short Wilson flow (``q_flow_time``,
:func:`bridge.observables.flowed_topological_charge`), far from an integer and dominated by
lattice-scale noise, so its ``tau_int`` measures how fast the short-distance fluctuations
decorrelate, not topology.  The start is a Haar-random field (near the strong-coupling
equilibrium; from the unit field HMC's first trajectories are all rejected).  Seconds are CPU
seconds of this process (``time.process_time``: robust to other processes on a shared machine),
the kernels' steps only (measurements excluded); the cost per independent sample is
``(seconds per step per chain) x 2 tau_int`` as in :mod:`bridge.jobs.scaling_chains`."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from .scaling_chains import _gamma_tau, _timed_chain, make_hmc, tune_hmc

if TYPE_CHECKING:
    from .scaling import ScalingSettings

__all__ = ["chains_su3_at", "su3_chain_row", "chain_ratios", "chain_lines", "RESOLVE_FACTOR"]

RESOLVE_FACTOR = 50.0  # a chain shorter than this many tau_int gives a lower bound


def _measurer(flow_time: float, eps: float) -> Any:
    """Per chain: the clover charge after Wilson flow to ``flow_time`` (not rounded) and the
    mean plaquette ``Re Tr P / 3``."""
    def measure(u: Any) -> Any:
        import torch

        from ..gauge import plaquette_traces
        from ..observables import flowed_topological_charge

        with torch.no_grad():
            q = flowed_topological_charge(u, flow_time=float(flow_time), eps=float(eps))
            p = plaquette_traces(u).real.flatten(1).mean(1)
        return torch.stack([q.to(p.dtype), p], 1).detach().cpu()

    return measure


def _resolved(g: dict[str, Any], n: int) -> bool:
    tau = g["tau_int"]
    return tau is not None and math.isfinite(tau) and n >= RESOLVE_FACTOR * tau


def su3_chain_row(obs: Any, acc: dict[str, float], sec: float, therm: int) -> dict[str, Any]:
    """The analysis of one chain family: ``obs`` [steps, chains, 2] (Q, plaquette), acceptance
    per kernel, CPU seconds of the kernels.  ``tau_int`` of Q and of the plaquette (Gamma
    method, chains as replicas); a ``tau_int`` that the chains do not resolve (shorter than
    :data:`RESOLVE_FACTOR` tau_int) or cannot estimate makes the cost a lower bound."""
    import numpy as np

    n, chains = obs.shape[:2]
    x = obs[int(therm):]
    kept = int(x.shape[0])
    q, plaq = _gamma_tau(x[..., 0]), _gamma_tau(x[..., 1])
    q["q2_mean"] = float(np.mean(x[..., 0] ** 2))
    q["resolved"], plaq["resolved"] = _resolved(q, kept), _resolved(plaq, kept)
    per = sec / n / chains

    def cost(g: dict[str, Any]) -> float | None:
        return per * 2 * g["tau_int"] if g["tau_int"] else None

    return {"steps": int(n), "chains": int(chains), "kept": kept, "seconds": sec,
            "clock": "process_time", "seconds_per_step_per_chain": per, "acceptance": acc,
            "q": q, "plaquette": plaq, "tau_int_q": q["tau_int"],
            "tau_int_q_kind": "gamma" if q["resolved"] else "gamma_lower",
            "tau_int_plaquette": plaq["tau_int"],
            "cost_per_independent_q": cost(q), "cost_per_independent_plaquette": cost(plaq),
            "is_lower_bound": not q["resolved"],
            "plaquette_is_lower_bound": not plaq["resolved"]}


def chains_su3_at(model: Any, s: ScalingSettings, L: int, beta: float, seed: int
                  ) -> dict[str, dict[str, Any]]:
    """Hybrid and HMC chains on ``L^4`` from one Haar-random start, thermalised and tuned by
    :func:`tune_hmc` (module docstring)."""
    import torch

    from ..gauge import random_gauge
    from ..lattice import Lattice
    from ..mcmc.compose import compose
    from ..mcmc.flow_mh import flow_metropolis_kernel
    from ..mcmc.monomials import GaugeMonomial
    from ..rng import generator, rng_key

    width = max(int(s.chains), int(s.hmc_chains))
    u0 = random_gauge(Lattice([L] * 4), "SU3", width, generator=generator(rng_key(seed, 41)),
                      dtype=torch.float64)
    tune = tune_hmc(u0, beta, seed=seed)
    md = int(tune["n_steps"])
    fk = flow_metropolis_kernel(model, GaugeMonomial(beta).action, batch_size=int(s.flow_batch))
    hybrid = compose([(make_hmc(beta, md), 1), (fk, int(s.flow_per_cycle))])
    measure = _measurer(s.q_flow_time, s.q_flow_eps)
    out: dict[str, dict[str, Any]] = {}
    for name, kernel, n, c in (("hybrid", hybrid, s.cycles, s.chains),
                               ("hmc", make_hmc(beta, md), s.hmc_trajectories, s.hmc_chains)):
        obs, acc, sec = _timed_chain(kernel, tune["U"][:int(c)], int(n),
                                     rng_key(seed, 31, len(out)), measure=measure,
                                     clock=time.process_time)
        out[name] = {**su3_chain_row(obs, acc, sec, int(s.therm)), "md_steps": md,
                     "tune_acceptance": tune["acceptance"],
                     "q_flow_time": float(s.q_flow_time), "q_flow_eps": float(s.q_flow_eps)}
    return out


def chain_ratios(p: dict[str, Any]) -> None:
    """HMC's cost over the hybrid's per independent Q and plaquette (> 1: the hybrid is
    cheaper), and how far apart the two chains' mean plaquettes are (in combined errors: both
    sample the same distribution)."""
    h, m = p["hybrid"], p["hmc"]
    for what in ("q", "plaquette"):
        a, b = h[f"cost_per_independent_{what}"], m[f"cost_per_independent_{what}"]
        p[f"hmc_over_hybrid_cost_{what}"] = b / a if a and b else None
    p["ratio_is_lower_bound"] = bool(m["is_lower_bound"]) and not h["is_lower_bound"]
    hp, mp = h["plaquette"], m["plaquette"]
    err = math.hypot(hp["error"] or 0.0, mp["error"] or 0.0)
    p["plaquette_difference_sigma"] = (abs(hp["mean"] - mp["mean"]) / err if err > 0 else None)


def chain_lines(points: list[dict[str, Any]]) -> list[str]:
    """One printed line per point with chains: acceptance, tau_int, CPU ms per step, costs per
    independent plaquette and Q (ms) and the ratios HMC / hybrid."""
    def f(x: Any, spec: str = ".3g") -> str:
        return "-" if x is None else format(x, spec)

    lines = [f"{'L':>3} {'beta':>5} | hybrid: {'flow acc':>8} {'tauP':>5} {'tauQ':>5} "
             f"{'ms/cyc':>7} {'ms/P':>6} {'ms/Q':>6} | HMC: {'acc':>4} {'tauP':>5} {'tauQ':>5} "
             f"{'ms/trj':>7} {'ms/P':>6} {'ms/Q':>6} | HMC/hybrid P, Q"]
    for p in points:
        if "hybrid" not in p:
            continue
        h, m = p["hybrid"], p["hmc"]
        ms = [1e3 * (x or 0) for x in (h["seconds_per_step_per_chain"],
                                       h["cost_per_independent_plaquette"],
                                       h["cost_per_independent_q"],
                                       m["seconds_per_step_per_chain"],
                                       m["cost_per_independent_plaquette"],
                                       m["cost_per_independent_q"])]
        lines.append(
            f"{p['L']:3d} {p['beta']:5.3g} | {f(h['acceptance'].get('flow'), '8.3f')} "
            f"{f(h['tau_int_plaquette'], '5.2f')} {f(h['tau_int_q'], '5.2f')} "
            f"{ms[0]:7.2f} {ms[1]:6.2f} {ms[2]:6.2f} | {f(m['acceptance'].get('hmc'), '4.2f')} "
            f"{f(m['tau_int_plaquette'], '5.2f')} {f(m['tau_int_q'], '5.2f')} {ms[3]:7.2f} "
            f"{ms[4]:6.2f} {ms[5]:6.2f} | {f(p['hmc_over_hybrid_cost_plaquette'])}, "
            f"{f(p['hmc_over_hybrid_cost_q'])}")
    return lines
