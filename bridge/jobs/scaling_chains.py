"""The Markov chains of ``qcd-bridge scaling`` (:mod:`bridge.jobs.scaling`, 2D U(1)): HMC
(Omelyan 2MN, tau 1) tuned on a ladder of MD steps, hybrid (HMC + flow) and HMC chains from one
thermalised start, and the analysis of the topological charge (Gamma-method ``tau_int`` with
lower bounds where ``Q`` barely moves, a tunnelling estimate beside it).  Shared by
``benchmarks/bench_unfreezing.py`` and the demo."""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .scaling import ScalingSettings

__all__ = ["make_hmc", "tune_hmc", "analyse_charge", "chains_at", "long_hmc", "NSTEP_LADDER"]

NSTEP_LADDER = (2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 24, 32, 40, 48, 64)


# -- HMC and the analysis of Q ----------------------------------------------------------------
def make_hmc(beta: float, n_steps: int, name: str = "hmc") -> Any:
    """HMC for the Wilson action: Omelyan 2MN (``LCM_STS_MIN_NORM_2``), tau 1."""
    from ..mcmc.hmc import hmc
    from ..mcmc.integrators import Integrator, Level, scheme
    from ..mcmc.monomials import GaugeMonomial

    integ = Integrator([Level(scheme("LCM_STS_MIN_NORM_2"), int(n_steps), [GaugeMonomial(beta)])])
    return hmc(integ, 1.0, name=name)


def tune_hmc(u: Any, beta: float, *, target: float = 0.8, trajs: int = 20, seed: int = 0,
             ladder: tuple[int, ...] = NSTEP_LADDER) -> dict[str, Any]:
    """Smallest number of MD steps of the ladder (tau = 1) whose acceptance over ``trajs``
    trajectories of all chains is >= ``target``; the runs thermalise ``u`` (returned as
    ``"U"``)."""
    from ..mcmc.compose import run_chain
    from ..rng import rng_key

    t0 = time.perf_counter()
    tried = []
    n, acc = ladder[0], 0.0
    for i, n in enumerate(ladder):
        k = make_hmc(beta, n)
        state, infos, _ = run_chain(k, k.init(u, seed=rng_key(seed, 7, i)), trajs)
        acc = sum(float(x.accepted.double().mean()) for x in infos) / max(len(infos), 1)
        tried.append({"n_steps": n, "acceptance": acc})
        u = state.U
        if acc >= target:
            break
    return {"n_steps": n, "acceptance": acc, "tried": tried, "U": u,
            "seconds": time.perf_counter() - t0}


def analyse_charge(q: Any, volume: int, chi_ref: float | None, *, resolve_factor: float = 50.0,
                   min_tunnel: int = 2) -> dict[str, Any]:
    """``tau_int`` (Gamma method, chains as replicas), ``chi_t = <Q^2>/V`` and a tunnelling
    cross-check of the charges ``q`` [steps, chains].

    ``tau_int`` is *resolved* when every chain is ``resolve_factor`` tau_int long and changed
    ``Q`` at least ``min_tunnel`` times; otherwise it is a lower bound (a short chain
    underestimates it).  Independent of the window, ``tau_tunnel = 2 V chi_t / r`` with ``r``
    the observed rate of changes of ``Q`` per step (an Ornstein-Uhlenbeck model with unit
    jumps); without any change, ``r < 3 / (steps x chains)`` (95 %) bounds it from below.
    ``tau_used`` is the Gamma value (``tau_used_kind`` ``gamma``, or ``gamma_lower`` when
    unresolved) or, with no Gamma value, the tunnelling bound (``tunnel_lower``)."""
    import numpy as np

    from ..analysis.stats import gamma

    q = np.asarray(q, dtype=float)
    n, chains = q.shape
    per_chain = (np.diff(q, axis=0) != 0).sum(0)
    changes = int(per_chain.sum())
    out: dict[str, Any] = {"n_per_chain": int(n), "chains": int(chains), "q_changes": changes,
                           "q_changes_min_chain": int(per_chain.min()),
                           "q_mean": float(q.mean()), "q2_mean": float((q * q).mean())}
    reps = [q[:, c] for c in range(chains)]
    tau = tau_err = None
    if float(np.var(q)) > 0:
        try:
            g = gamma(reps)
            tau, tau_err = g.tau_int, g.tau_int_error
        except Exception as exc:  # noqa: BLE001 - degenerate series: report, do not fail
            out["gamma_error"] = str(exc)
    if tau is not None and not math.isfinite(tau):
        tau = None
    resolved = (tau is not None and n >= resolve_factor * tau
                and int(per_chain.min()) >= min_tunnel)
    out.update({"tau_int": tau, "tau_int_error": tau_err, "resolved": bool(resolved)})
    try:
        g2 = gamma([r * r / volume for r in reps])
        out["chi_t"], out["chi_t_error"], out["chi_t_tau_int"] = g2.value, g2.error, g2.tau_int
    except Exception as exc:  # noqa: BLE001
        out["chi_t"], out["chi_t_error"] = float((q * q).mean() / volume), None
        out["chi_t_gamma_error"] = str(exc)
    chi = chi_ref if chi_ref is not None else out["chi_t"]
    steps = max((n - 1) * chains, 1)
    bound = changes == 0
    out["tau_tunnel"] = 2 * volume * chi * steps / (3.0 if bound else changes)
    out["tau_tunnel_is_bound"] = bound
    if tau is not None:
        out["tau_used"], out["tau_used_kind"] = tau, ("gamma" if resolved else "gamma_lower")
    else:
        out["tau_used"], out["tau_used_kind"] = out["tau_tunnel"], "tunnel_lower"
    return out


def _gamma_tau(x: Any) -> dict[str, Any]:
    """Mean, error and tau_int of ``x`` [steps, chains] (Gamma method); Nones if degenerate."""
    import numpy as np

    from ..analysis.stats import gamma

    try:
        g = gamma([np.asarray(x[:, c], dtype=float) for c in range(x.shape[1])])
        return {"mean": g.value, "error": g.error, "tau_int": g.tau_int,
                "tau_int_error": g.tau_int_error}
    except Exception:  # noqa: BLE001 - a constant or too short series has no tau_int
        return {"mean": float(np.mean(x)), "error": None, "tau_int": None,
                "tau_int_error": None}


# -- chains -----------------------------------------------------------------------------------
def _measure(u: Any) -> Any:
    """Per chain: the geometric charge (rounded) and the mean plaquette ``<cos theta>``."""
    import torch

    from ..gauge import plaquette_traces
    from ..observables.field_strength import geometric_charge_u1

    q = torch.round(geometric_charge_u1(u))
    p = plaquette_traces(u).real.flatten(1).mean(1)
    return torch.stack([q, p], 1).detach().cpu()


def _timed_chain(kernel: Any, u: Any, n: int, seed: int, *, measure: Any = None,
                 clock: Any = time.perf_counter) -> tuple[Any, dict[str, float], float]:
    """``n`` steps of ``kernel`` from ``u``: observables [n, chains, 2] (numpy; ``measure(U)``,
    default the 2D U(1) charge and plaquette), acceptance per kernel and the seconds of
    ``clock`` spent in the kernel's steps (measurements excluded)."""
    import torch

    from ..mcmc.compose import run_chain

    measure = measure or _measure
    state = kernel.init(u, seed=seed)
    obs, acc, sec = [], {}, 0.0
    for _ in range(int(n)):
        t = clock()
        state, infos, _ = run_chain(kernel, state, 1)
        sec += clock() - t
        for info in infos:
            acc.setdefault(info.kernel, []).append(float(info.accepted.double().mean()))
        obs.append(measure(state.U))
    return (torch.stack(obs).numpy(), {k: sum(v) / len(v) for k, v in acc.items()}, sec)


def _chain_row(obs: Any, acc: dict[str, float], sec: float, s: ScalingSettings, L: int,
               beta: float) -> dict[str, Any]:
    from ..exact import u1_2d_topological_susceptibility

    n, chains = obs.shape[:2]
    x = obs[int(s.therm):]
    q = analyse_charge(x[..., 0], L * L, u1_2d_topological_susceptibility(beta, (L, L)))
    plaq = _gamma_tau(x[..., 1])
    per = sec / n / chains
    return {"steps": int(n), "chains": int(chains), "seconds": sec,
            "seconds_per_step_per_chain": per, "acceptance": acc, "q": q, "plaquette": plaq,
            "tau_int_q": q["tau_used"], "tau_int_q_kind": q["tau_used_kind"],
            "tau_int_plaquette": plaq["tau_int"],
            "cost_per_independent_q": per * 2 * q["tau_used"],
            "cost_per_independent_plaquette": (per * 2 * plaq["tau_int"]
                                               if plaq["tau_int"] else None),
            "is_lower_bound": q["tau_used_kind"] != "gamma"}


def chains_at(model: Any, s: ScalingSettings, L: int, beta: float, seed: int
              ) -> dict[str, dict[str, Any]]:
    """Hybrid and HMC chains on ``L x L`` from one thermalised, tuned HMC start."""
    import torch

    from ..gauge import unit_gauge
    from ..lattice import Lattice
    from ..mcmc.compose import compose
    from ..mcmc.flow_mh import flow_metropolis_kernel
    from ..mcmc.monomials import GaugeMonomial
    from ..rng import rng_key

    width = max(int(s.chains), int(s.hmc_chains))
    u0 = unit_gauge(Lattice([L, L]), "U1", width, dtype=torch.float64)
    tune = tune_hmc(u0, beta, seed=seed)
    md = int(tune["n_steps"])
    fk = flow_metropolis_kernel(model, GaugeMonomial(beta).action, batch_size=int(s.flow_batch))
    hybrid = compose([(make_hmc(beta, md), 1), (fk, int(s.flow_per_cycle))])
    out = {}
    for name, kernel, n, c in (("hybrid", hybrid, s.cycles, s.chains),
                               ("hmc", make_hmc(beta, md), s.hmc_trajectories, s.hmc_chains)):
        obs, acc, sec = _timed_chain(kernel, tune["U"][:int(c)], int(n), rng_key(seed, 31,
                                                                                len(out)))
        out[name] = {**_chain_row(obs, acc, sec, s, L, beta), "md_steps": md,
                     "tune_acceptance": tune["acceptance"]}
    return out


def long_hmc(s: ScalingSettings, L: int, beta: float, trajectories: int, seed: int
             ) -> dict[str, Any]:
    """HMC alone on ``L x L`` (``hmc_chains`` chains, tuned as in :func:`chains_at`) for
    ``trajectories``: a longer run bounds ``tau_int(Q)`` more tightly where it is frozen."""
    import torch

    from ..gauge import unit_gauge
    from ..lattice import Lattice
    from ..rng import rng_key

    u0 = unit_gauge(Lattice([L, L]), "U1", int(s.hmc_chains), dtype=torch.float64)
    tune = tune_hmc(u0, beta, seed=seed)
    obs, acc, sec = _timed_chain(make_hmc(beta, int(tune["n_steps"])), tune["U"],
                                 int(trajectories), rng_key(seed, 32))
    return {**_chain_row(obs, acc, sec, s, L, beta), "md_steps": int(tune["n_steps"]),
            "tune_acceptance": tune["acceptance"]}
