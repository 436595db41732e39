"""HMC seconds per trajectory for the runs of ../shared/reference/chroma/README.md, next to
Chroma's own timings on the same kind of machine (Release build, scalar, one core).

    (a) pure gauge 8^4, beta 5.5, tau 1, 20 leapfrog steps            Chroma 0.262 s/traj
    (b) Nf=2 Wilson eo-prec 4^4, beta 1.0, kappa 0.1, tau 0.5, 5 steps Chroma 0.026 s/traj
    (c) Nf=2 Wilson eo-prec 8^4, beta 5.5, kappa 0.15, tau 1, 20 steps Chroma 3.35-3.48 s/traj
    (d) pure gauge 4^4, beta 5.5, tau 1, 10 leapfrog steps            Chroma 0.0083 s/traj

Each run thermalises briefly from a random start (so that CG counts are representative), then
times --ntraj trajectories: wall-clock seconds and the process CPU seconds (``time.process_time``,
the fair number on a shared machine where other jobs steal the core), with the load average
before and after each run.  Prints a table and writes JSON.

The native C++ kernels (the hopping term, bridge/fermions/_native.py; the gauge force, plaquette
traces and SU(3) link update, bridge/_native_gauge.py) are built before any timing (their build
times are printed); ``--native off`` sets ``QCD_BRIDGE_NATIVE=0`` (torch path), ``--native
compare`` runs every selected run ``--reps`` times alternating native and torch path
(interleaved, so both saw the same machine state).

    python benchmarks/bench_hmc.py [--runs a b d] [--ntraj 5] [--threads 1] [--device cpu]
                                   [--native auto|off|compare] [--reps 3] [--side-reps 3]

Side by side: where ``QCD_BRIDGE_CHROMA_HMC`` names Chroma's ``hmc`` executable, runs b and d
also run Chroma's ``hmc`` and ``qcd-bridge hmc`` alternately (``--side-reps`` times each) on the
reference input (benchmarks/_chroma_side.py), from the reference configuration 1500, and print
each program's median ``seconds_for_trajectory`` and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from _chroma_side import ENV_HMC, side_by_side
from _results import write_results

from bridge import _native_gauge
from bridge.fermions import _native
from bridge.fermions.pseudofermion import TwoFlavorEOPrecWilsonMonomial
from bridge.gauge import random_gauge
from bridge.lattice import Lattice
from bridge.mcmc.hmc import hmc_kernel
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial

RUNS = {
    "a": dict(label="pure gauge 8^4 b5.5 tau1 20 LF", L=8, beta=5.5, kappa=None, tau=1.0,
              n=20, chroma=0.262),
    "b": dict(label="Nf2 eo 4^4 b1.0 k0.1 tau0.5 5 LF", L=4, beta=1.0, kappa=0.1, tau=0.5, n=5,
              chroma=0.026),
    "c": dict(label="Nf2 eo 8^4 b5.5 k0.15 tau1 20 LF", L=8, beta=5.5, kappa=0.15, tau=1.0,
              n=20, chroma=3.4),
    "d": dict(label="pure gauge 4^4 b5.5 tau1 10 LF", L=4, beta=5.5, kappa=None, tau=1.0, n=10,
              chroma=0.0083),
}


def run_one(spec: dict, ntraj: int, ntherm: int, device: torch.device,
            pre_therm: int = 0) -> dict:
    lat = Lattice((spec["L"],) * 4)
    mons = [GaugeMonomial(spec["beta"])]
    if spec["kappa"] is not None:
        mons.insert(0, TwoFlavorEOPrecWilsonMonomial(spec["kappa"], predictor="last_solution"))
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), spec["n"], mons)]),
                   spec["tau"], warmup=ntherm)
    gen = torch.Generator(device=device).manual_seed(1)
    u0 = random_gauge(lat, "SU3", 1, generator=gen, device=device)
    if pre_therm:
        # cheap thermalisation: pure-gauge trajectories at the same beta bring a hot start near
        # the equilibrium plaquette, so the fermion solves cost what they cost in equilibrium
        kg = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), spec["n"],
                                          [GaugeMonomial(spec["beta"])])]), spec["tau"],
                        warmup=pre_therm)
        sg = kg.init(u0, seed=3)
        for _ in range(pre_therm):
            sg, _ = kg.step(sg)
        u0 = sg.U
    st = k.init(u0, seed=2)
    for _ in range(ntherm):
        st, _ = k.step(st)
    secs, cpus, iters, acc = [], [], [], []
    load0 = os.getloadavg()[0]
    for _ in range(ntraj):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        st, info = k.step(st)
        if device.type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
        iters.append(info.solver_iterations)
        acc.append(float(info.accepted.double().mean()))
    s = sorted(secs)[len(secs) // 2]
    c = sorted(cpus)[len(cpus) // 2]
    return {**{k_: v for k_, v in spec.items()}, "device": str(device),
            "seconds_per_traj_median": s, "seconds_per_traj_mean": sum(secs) / len(secs),
            "cpu_seconds_per_traj_median": c, "cpu_seconds_per_traj_mean": sum(cpus) / len(cpus),
            "cg_iterations_per_traj": sum(iters) / len(iters), "acceptance": sum(acc) / len(acc),
            "ratio_to_chroma": s / spec["chroma"], "cpu_ratio_to_chroma": c / spec["chroma"],
            "load_average_before": load0, "load_average_after": os.getloadavg()[0],
            "w_plaq_last": float(info.w_plaq[0]),
            "force_evaluations_last": {str(k_): int(v) for k_, v in info.force_evaluations.items()},
            "ntraj": ntraj, "ntherm": ntherm, "pure_gauge_pre_therm": pre_therm,
            "native": device.type == "cpu" and _native.available() and _native_gauge.available()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=["d", "a", "b"], choices=sorted(RUNS))
    ap.add_argument("--ntraj", type=int, default=5)
    ap.add_argument("--ntherm", type=int, default=3)
    ap.add_argument("--pre-therm", type=int, default=0,
                    help="pure-gauge trajectories at the same beta before --ntherm (cheap "
                         "thermalisation of the hot start; use for run c)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (Chroma's timings are one core)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default="benchmarks/results/hmc.json")
    ap.add_argument("--native", default="auto", choices=["auto", "off", "compare"],
                    help="native C++ hopping kernel: as available (auto), torch path (off), or "
                         "both interleaved (compare)")
    ap.add_argument("--reps", type=int, default=3, help="repetitions for --native compare")
    ap.add_argument("--side-reps", type=int, default=3,
                    help=f"alternating runs of each program when {ENV_HMC} is set")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if args.native == "off":
        os.environ[_native.ENV] = "0"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {dev}")
    for name, mod in (("hopping", _native), ("gauge", _native_gauge)):
        if dev.type == "cpu" and mod.available():
            print(f"native {name} kernel: built/loaded in {mod.build_seconds():.1f} s")
        else:
            print(f"native {name} kernel: not used")
    print(f"{'run':<36} {'native':>6} {'s/traj':>9} {'cpu s':>9} {'Chroma':>8} {'ratio':>7} "
          f"{'cpu rat':>7} {'CG it':>7} {'acc':>5} {'load':>9}")
    if args.native == "compare":
        plan = [(r, flag) for r in args.runs for _ in range(args.reps) for flag in ("1", "0")]
    else:
        plan = [(r, None) for r in args.runs]
    rows = []
    for r, flag in plan:
        if flag is not None:
            os.environ[_native.ENV] = flag
        row = run_one(RUNS[r], args.ntraj, args.ntherm, dev, args.pre_therm)
        rows.append(row)
        print(f"{row['label']:<36} {str(row['native']):>6} {row['seconds_per_traj_median']:9.4f} "
              f"{row['cpu_seconds_per_traj_median']:9.4f} {row['chroma']:8.3f} "
              f"{row['ratio_to_chroma']:7.2f} {row['cpu_ratio_to_chroma']:7.2f} "
              f"{row['cg_iterations_per_traj']:7.0f} {row['acceptance']:5.2f} "
              f"{row['load_average_before']:4.1f}-{row['load_average_after']:.1f}")
    side = []
    if os.environ.get(ENV_HMC):
        for r, kind in (("b", "nf2"), ("d", "pure_gauge")):
            if r in args.runs:
                res = side_by_side("hmc", kind, args.side_reps, args.ntraj)
                side.append(res)
                print(f"side by side, {RUNS[r]['label']}: Chroma {res['chroma_seconds']:.4f} "
                      f"s/traj, ours {res['ours_seconds']:.4f} s/traj, ratio "
                      f"{res['ratio']:.2f} ({args.side_reps} alternating runs each)")
    else:
        print(f"(set {ENV_HMC} to Chroma's hmc executable to run it side by side)")
    write_results(args.out, rows, device=str(dev), native_build_seconds=_native.build_seconds(),
                  native_gauge_build_seconds=_native_gauge.build_seconds(), side_by_side=side)


if __name__ == "__main__":
    main()
