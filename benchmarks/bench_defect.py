"""Topological charge with a defect: NE-MCMC out of an open time-boundary defect
(bridge.mcmc.nonequilibrium, Protocol(defect=...), arXiv:2510.25704) against HMC and
heatbath chains at the same 4D SU(3) point, same run.

Every algorithm runs ``--chains`` chains (one batch) for ``--seconds`` of CPU time (process
time, one thread: the numbers do not depend on other jobs on the machine) after
``--therm`` steps, and the topological charge after Wilson flow to ``--flow-time`` (clover
definition, RK3 with step 0.02) is measured every ``--measure-every`` steps (NE-MCMC: every
step).  Reported per algorithm: seconds per step per chain, acceptance, the number of changes
of round(Q), ``<Q^2>``, ``tau_int(Q)`` in steps (Gamma method via pyerrors, the chains as
replicas; ``>=`` marks a chain too short for a reliable value: fewer than 50 tau_int or no
change of round(Q) in some chain), the cost per independent Q ``2 tau_int x seconds per step``
and its ratio to HMC's, and the CPU seconds per change of round(Q) (all chains; a lower bound,
the whole run, when no chain changed its charge -- at a frozen point the tunnelling rate is the
measurable quantity).

``--snf-scale S`` (or ``--snf-model DIR``) adds ``snf-N``: the same NE-MCMC with defect
layers (bridge.flows.defect_layers) at S x Luescher's start.  ``--work-scan`` runs the protocol
alone instead of chains: for every ``--blocks`` n the work, its spread, the Jarzynski ESS and the
acceptance of an independence chain over the runs, with and without defect layers on the same
prior configurations and random numbers (the scaling with n_step).

    OMP_NUM_THREADS=1 python benchmarks/bench_defect.py [--nrow 6 6 6 6] [--beta 5.9]
        [--defect 2 2 2] [--blocks 8 24] [--snf-scale 0.75] [--work-scan] [--seconds 300]
        [--out benchmarks/results/defect.json]
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import torch
from _results import write_results

from bridge.analysis.stats import gamma
from bridge.flows.checkpoints import load_model
from bridge.flows.snf import SNFModel
from bridge.gauge import random_gauge
from bridge.lattice import Lattice
from bridge.mcmc.heatbath import heatbath
from bridge.mcmc.hmc import hmc
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.mcmc.nonequilibrium import Protocol, nemcmc, run_protocol
from bridge.mcmc.reweighting import ess, imh_acceptance
from bridge.observables import flowed_topological_charge
from bridge.rng import generator


def _kernels(args: argparse.Namespace) -> dict:
    integ = Integrator([Level(scheme(args.integrator), args.md_steps,
                              [GaugeMonomial(args.beta)])])
    out = {"hmc": (hmc(integ, 1.0, name="hmc"), args.measure_every),
           "heatbath": (heatbath(args.beta, n_hb=1, n_or=args.n_or), args.measure_every)}
    for n in args.blocks:
        pr = Protocol(beta0=args.beta, beta=args.beta, n_blocks=n, update="heatbath", n_hb=1,
                      n_or=args.n_or, defect=tuple(args.defect))
        prior = heatbath(args.beta, n_hb=1, n_or=args.n_or, defect=tuple(args.defect), c=0.0,
                         name="prior")
        out[f"nemcmc-{n}"] = (nemcmc(pr, prior, prior_steps=args.prior_steps), 1)
        if args.snf_scale is not None or args.snf_model:
            out[f"snf-{n}"] = (nemcmc(_model(args, n).protocol(), prior,
                                      prior_steps=args.prior_steps), 1)
    return out


def _model(args: argparse.Namespace, n: int) -> SNFModel:
    """The defect-layer SNF of ``n`` blocks: ``--snf-model`` (a trained one, whose protocol
    must match) or the layers at ``--snf-scale`` x Luescher's start."""
    if args.snf_model:
        model, _ = load_model(args.snf_model)
        want = {"n_blocks": n, "beta0": args.beta, "beta": args.beta, "n_or": args.n_or,
                "update": "heatbath", "defect": list(args.defect), "layer": "defect"}
        bad = {k: model.config.get(k) for k, v in want.items() if model.config.get(k) != v}
        if bad:
            raise SystemExit(f"--snf-model {args.snf_model}: {bad} differ from {want}")
        return model
    return SNFModel("SU3", 4, beta0=args.beta, beta=args.beta, n_blocks=n, n_hb=1,
                    n_or=args.n_or, defect=tuple(args.defect), layer="defect",
                    radius=args.radius,
                    init_scale=1.0 if args.snf_scale is None else args.snf_scale)


def _start(args: argparse.Namespace) -> torch.Tensor:
    """``--chains`` configurations at ``beta`` after ``--hb-therm`` heatbath + overrelaxation
    steps from a random field: every algorithm starts from them (thermalised, so that the
    measured chains are equilibrium chains)."""
    lat = Lattice(tuple(args.nrow))
    kern = heatbath(args.beta, n_hb=1, n_or=args.n_or, name="start")
    st = kern.init(random_gauge(lat, "SU3", args.chains, generator=generator(99)), seed=99)
    for _ in range(args.hb_therm):
        st, _ = kern.step(st)
    return st.U


def _run(name: str, kern, every: int, args: argparse.Namespace, seed: int,
         start: torch.Tensor) -> dict:
    st = kern.init(start.clone(), seed=seed)
    for _ in range(args.therm):
        st, _ = kern.step(st)
    qs, acc, steps, t_mc = [], [], 0, 0.0
    t_end = time.process_time() + args.seconds  # CPU time: robust to other jobs' load
    while time.process_time() < t_end or len(qs) < 4:
        t0 = time.process_time()
        st, info = kern.step(st)
        t_mc += time.process_time() - t0
        steps += 1
        acc.append(float(info.accepted.double().mean()))
        if steps % every == 0:
            qs.append(flowed_topological_charge(st.U, flow_time=args.flow_time, eps=0.02))
    q = torch.stack(qs).T.numpy()  # [chains, measurements]
    per_chain = (np.diff(np.rint(q), axis=1) != 0).sum(1)  # changes of round(Q) per chain
    changes = int(per_chain.sum())
    sec = t_mc / steps / args.chains
    row = {"algorithm": name, "steps": steps, "measurements": q.shape[1],
           "seconds_per_step_per_chain": sec, "acceptance": float(np.mean(acc)),
           "q_changes": changes, "q2": float(np.mean(q**2)), "measure_every": every}
    try:
        g = gamma([r for r in q], what=f"{name} Q")
        tau = g.tau_int * every
        reliable = bool(per_chain.min() > 0 and q.shape[1] * every >= 50 * tau)
        row.update(tau_int=tau, tau_int_error=g.tau_int_error * every, reliable=reliable)
    except Exception as exc:  # noqa: BLE001 - a frozen chain has no Gamma-method estimate
        tau = q.shape[1] * every / 2
        row.update(tau_int=tau, tau_int_error=None, reliable=False, gamma_error=str(exc))
    row["cost_per_independent_q"] = 2 * max(row["tau_int"], 0.5) * sec
    # tunnelling: CPU seconds per change of round(Q), all chains together (a lower bound, the
    # whole run's time, when no chain changed its charge: at a frozen point the Gamma method
    # has nothing to work with)
    total = steps * sec * args.chains
    row["seconds_per_q_change"] = total / changes if changes else None
    row["seconds_per_q_change_bound"] = total
    return row


def _work_scan(args: argparse.Namespace, start: torch.Tensor) -> list[dict]:
    """The protocol alone, for every ``--blocks`` n: work, Jarzynski ESS and the acceptance of
    an independence chain over the runs (``imh_acceptance``), with and without defect layers
    on the same open-defect prior configurations and MC random numbers (CPU s per run)."""
    prior = heatbath(args.beta, n_hb=1, n_or=args.n_or, defect=tuple(args.defect), c=0.0)
    st = prior.init(start.clone(), seed=7)
    x0s = []
    for k in range(args.scan_batches + args.therm):  # decorrelated draws of the prior chain
        for _ in range(args.prior_steps):
            st, _ = prior.step(st)
        if k >= args.therm:
            x0s.append(st.U.clone())
    rows = []
    for n in args.blocks:
        model = _model(args, n)
        works = {}
        for layers in (False, True):
            ws, t0 = [], time.process_time()
            with torch.no_grad():
                for k, x0 in enumerate(x0s):
                    ws.append(run_protocol(x0, model.protocol(layers), seed=11, index=k)[1])
            w = torch.cat(ws)
            works[layers] = w
            rows.append({"blocks": n, "layers": layers, "runs": len(w),
                         "mean_work": float(w.mean()), "work_std": float(w.std()),
                         "ess": ess(-w), "ess_error": _boot_ess(w),
                         "imh_acceptance": imh_acceptance(-w, generator(3)),
                         "seconds_per_run": (time.process_time() - t0) / len(w)})
        d = works[False] - works[True]
        rows[-1].update(work_gain=float(d.mean()), work_gain_error=float(d.std())
                        / math.sqrt(len(d)))
        for r in rows[-2:]:
            print(f"{n:6d} {'defect' if r['layers'] else 'none':>7} {r['mean_work']:10.3f} "
                  f"{r['work_std']:7.3f} {r['ess']:6.3f}({r['ess_error']:.3f}) "
                  f"{r['imh_acceptance']:5.2f} {r['seconds_per_run']:8.3f}", flush=True)
    return rows


def _boot_ess(w: torch.Tensor, n: int = 200) -> float:
    g = generator(17)
    idx = torch.randint(0, len(w), (n, len(w)), generator=g)
    return float(torch.tensor([ess(-w[i]) for i in idx]).std())


def _per_change(r: dict) -> str:
    if r["seconds_per_q_change"] is not None:
        return format(r["seconds_per_q_change"], ".3g")
    return ">" + format(r["seconds_per_q_change_bound"], ".3g")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--nrow", type=int, nargs=4, default=[6, 6, 6, 6])
    p.add_argument("--beta", type=float, default=5.9)
    p.add_argument("--defect", type=int, nargs=3, default=[2, 2, 2])
    p.add_argument("--blocks", type=int, nargs="+", default=[8, 24])
    p.add_argument("--n-or", type=int, default=1)
    p.add_argument("--snf-scale", type=float, help="also run NE-MCMC with defect layers "
                   "(snf-N) started at this factor of Luescher's coefficients")
    p.add_argument("--radius", type=int, default=1, help="reach of the defect layers")
    p.add_argument("--snf-model", help="a trained defect-layer SNF (train --arch snf with "
                   "layer 'defect') instead of --snf-scale; its blocks must be --blocks")
    p.add_argument("--md-steps", type=int, default=10)
    p.add_argument("--integrator", default="LCM_STS_LEAPFROG", help="HMC integrator (Chroma's "
                   "name), tau = 1")
    p.add_argument("--prior-steps", type=int, default=1, help="updates of the open-defect "
                   "prior chain between NE-MCMC proposals")
    p.add_argument("--chains", type=int, default=4)
    p.add_argument("--therm", type=int, default=20, help="steps of each algorithm before "
                   "the measured chain")
    p.add_argument("--hb-therm", type=int, default=200, help="heatbath steps of the common "
                   "start configurations")
    p.add_argument("--seconds", type=float, default=300.0,
                   help="CPU seconds per algorithm (updates and measurements)")
    p.add_argument("--flow-time", type=float, default=1.0)
    p.add_argument("--measure-every", type=int, default=2, help="HMC / heatbath steps")
    p.add_argument("--only", nargs="*", help="run only these algorithms")
    p.add_argument("--out", default="benchmarks/results/defect.json")
    p.add_argument("--work-scan", action="store_true", help="instead of chains: the "
                   "protocol's work, ESS and independence-chain acceptance for every --blocks, "
                   "with and without defect layers (--snf-scale, default 1)")
    p.add_argument("--scan-batches", type=int, default=8, help="work scan: batches of "
                   "--chains prior configurations, --prior-steps apart")
    args = p.parse_args()
    rows = []
    start = _start(args)
    if args.work_scan:
        print(f"{'blocks':>6} {'layers':>7} {'<W>':>10} {'sd(W)':>7} {'ESS':>13} {'acc':>5} "
              f"{'s/run':>8}")
        rows = _work_scan(args, start)
        write_results(args.out, rows, nrow=args.nrow, beta=args.beta, defect=args.defect,
                      chains=args.chains, scan_batches=args.scan_batches,
                      prior_steps=args.prior_steps, snf_scale=args.snf_scale,
                      snf_model=args.snf_model,
                      radius=None if args.snf_model else args.radius, n_or=args.n_or,
                      hb_therm=args.hb_therm,
                      therm=args.therm, clock="process time (CPU seconds, one thread)")
        return
    print(f"{'algorithm':>12} {'steps':>6} {'s/step':>8} {'acc':>5} {'dQ':>4} {'<Q^2>':>6} "
          f"{'tau_int(Q)':>12} {'s/indep Q':>10} {'vs HMC':>7} {'s/dQ':>9}")
    for i, (name, (kern, every)) in enumerate(_kernels(args).items()):
        if args.only and name not in args.only:
            continue
        r = _run(name, kern, every, args, seed=100 + i, start=start)
        rows.append(r)
        hmc_cost = next((x["cost_per_independent_q"] for x in rows if x["algorithm"] == "hmc"),
                        math.nan)
        r["ratio_to_hmc"] = r["cost_per_independent_q"] / hmc_cost
        mark = "" if r["reliable"] else ">="
        print(f"{name:>12} {r['steps']:6d} {r['seconds_per_step_per_chain']:8.4f} "
              f"{r['acceptance']:5.2f} {r['q_changes']:4d} {r['q2']:6.3f} "
              f"{mark + format(r['tau_int'], '.3g'):>12} {r['cost_per_independent_q']:10.3g} "
              f"{r['ratio_to_hmc']:7.3g} {_per_change(r):>9}", flush=True)
    write_results(args.out, rows, nrow=args.nrow, beta=args.beta, defect=args.defect,
                  chains=args.chains, seconds=args.seconds, flow_time=args.flow_time,
                  md_steps=args.md_steps, integrator=args.integrator,
                  prior_steps=args.prior_steps, snf_scale=args.snf_scale,
                  snf_model=args.snf_model,
                  radius=None if args.snf_model else args.radius, n_or=args.n_or,
                  hb_therm=args.hb_therm,
                  therm=args.therm, measure_every=args.measure_every,
                  clock="process time (CPU seconds, one thread)")


if __name__ == "__main__":
    main()
