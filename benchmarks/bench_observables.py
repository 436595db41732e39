"""Observables throughput: Wilson flow to t = 4 (Luescher RK3, eps = 0.01 as Chroma's nstep 400,
measuring E, t^2 E, plaquette and the clover charge at t = 1, 2, 4) and the pion correlator (12
point-source solves, even-odd CG to 1e-12, kappa 0.1) on SU(3) hot starts.  Prints a table and
writes JSON.  Wall-clock and process CPU seconds are both recorded (on a shared machine the
CPU time is the reproducible number).

    python benchmarks/bench_observables.py [--flow-sizes 8 16] [--pion-sizes 8] [--batch 1]
        [--flow-steps 400] [--threads N] [--device cpu] [--out benchmarks/results/observables.json]

``--flow-steps`` below 400 times that many steps and extrapolates the seconds to t = 4 linearly
(marked ``"extrapolated": true`` in the JSON); the default runs the full 400 steps.

Chroma's measurement input (``--measure-reps N``, default 3; 0 skips it): ``qcd-bridge chroma``
on ``tests/data/chroma/nf2_b1.0_k0.1_4x4/chroma_measure.ini.xml`` and its configuration (flow
to t = 4, 12 propagator solves, spectroscopy), as a whole process (wall and CPU seconds, median
of N fresh processes) and in process (the program's work without the start-up), each with the
ratio to Chroma's Release 1.01 s per process.  Where ``QCD_BRIDGE_CHROMA`` names Chroma's
``chroma`` executable, both programs also run alternately on the same input
(benchmarks/_chroma_side.py).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _chroma_side import (
    CHROMA_RELEASE,
    ENV_CHROMA,
    _run,
    measure_input,
    ours_cmd,
    ratio,
    side_by_side,
)
from _results import write_results

from bridge.gauge import random_gauge
from bridge.lattice import Lattice
from bridge.observables import pion_correlator, wilson_flow
from bridge.solvers import CG

FLOW_TIME = 4.0
EPS = 0.01


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_flow(L: int, batch: int, steps: int, device: torch.device) -> dict:
    lat = Lattice((L, L, L, L))
    gen = torch.Generator(device=device).manual_seed(1)
    u = random_gauge(lat, "SU3", batch, generator=gen, device=device)
    wilson_flow(u, EPS, eps=EPS)  # warm-up (one step + measurement)
    full = steps * EPS >= FLOW_TIME - 1e-12
    times = [1.0, 2.0, 4.0] if full else [steps * EPS]
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    res = wilson_flow(u, times, eps=EPS)
    _sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    scale = FLOW_TIME / times[-1] / batch
    per_cfg = elapsed * scale
    return {
        "kind": "wilson_flow", "L": L, "batch": batch, "device": str(device),
        "steps_timed": res.n_steps, "extrapolated": not full,
        "seconds_per_step_per_config": elapsed / res.n_steps / batch,
        "seconds_per_config_t4": per_cfg,
        "cpu_seconds_per_config_t4": cpu * scale,
        "t2E_last": float(res.t2E[0, -1]),
    }


def bench_pion(L: int, batch: int, device: torch.device, kappa: float) -> dict:
    lat = Lattice((L, L, L, L))
    gen = torch.Generator(device=device).manual_seed(2)
    u = random_gauge(lat, "SU3", batch, generator=gen, device=device)
    pion_correlator(u[:1], kappa, solver=CG(tol=1e-6))  # warm-up
    _sync(device)
    t0, c0 = time.perf_counter(), time.process_time()
    c, st = pion_correlator(u, kappa, solver=CG(tol=1e-12), return_stats=True)
    _sync(device)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {
        "kind": "pion", "L": L, "batch": batch, "device": str(device), "kappa": kappa,
        "solves_per_config": 12, "cg_iterations": st.iterations,
        "seconds_per_config": elapsed / batch,
        "cpu_seconds_per_config": cpu / batch,
        "C_pi_0": float(c[0, 0]),
    }


def bench_measure(reps: int) -> dict:
    """Chroma's measurement input: whole processes and the in-process run (module docstring)."""
    from bridge.chroma.chroma_program import run_chroma_measurements

    chroma = CHROMA_RELEASE["chroma measurement 4^4 (process)"]
    with tempfile.TemporaryDirectory(prefix="qcdb_measure_") as tmp:
        work = Path(tmp)
        inp = measure_input(work)
        _run(ours_cmd("chroma", inp, work / "warm.out.xml"), work)  # file cache, native builds
        runs = [_run(ours_cmd("chroma", inp, work / "out.xml"), work) for _ in range(reps)]
        cwd = os.getcwd()
        os.chdir(work)
        try:
            run_chroma_measurements(str(inp), str(work / "inproc.out.xml"), progress=False)
            t0, c0 = time.perf_counter(), time.process_time()
            res = run_chroma_measurements(str(inp), str(work / "inproc.out.xml"), progress=False)
            inproc, inproc_cpu = time.perf_counter() - t0, time.process_time() - c0
        finally:
            os.chdir(cwd)
    wall = statistics.median(w for w, _ in runs)
    cpu = statistics.median(c for _, c in runs)
    return {
        "kind": "chroma_measurement_input", "L": 4, "reps": reps,
        "process_wall_seconds": wall, "process_cpu_seconds": cpu,
        "in_process_seconds": inproc, "in_process_cpu_seconds": inproc_cpu,
        "per_measurement_seconds": {m["name"]: m["seconds"] for m in res.measurements},
        "chroma_release_process_seconds": chroma,
        "ratio_process_wall": wall / chroma, "ratio_process_cpu": cpu / chroma,
        "ratio_in_process": inproc / chroma,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flow-sizes", type=int, nargs="*", default=[8, 16])
    ap.add_argument("--pion-sizes", type=int, nargs="*", default=[8])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--flow-steps", type=int, default=400,
                    help="RK3 steps to time (400 = the full flow to t = 4)")
    ap.add_argument("--kappa", type=float, default=0.1)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--measure-reps", type=int, default=3,
                    help="processes running Chroma's measurement input (0: skip)")
    ap.add_argument("--out", default="benchmarks/results/observables.json")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if not 1 <= args.flow_steps <= 400:
        ap.error(f"--flow-steps: expected 1..400, got {args.flow_steps}")
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, device {device}")
    rows = []
    for L in args.flow_sizes:
        row = bench_flow(L, args.batch, args.flow_steps, device)
        rows.append(row)
        note = " (extrapolated)" if row["extrapolated"] else ""
        print(f"wilson flow {L:>3}^4 x{args.batch}: "
              f"{row['seconds_per_step_per_config']:.4f} s/step, "
              f"{row['seconds_per_config_t4']:.2f} s/config to t=4{note} "
              f"(CPU time {row['cpu_seconds_per_config_t4']:.2f} s)")
    for L in args.pion_sizes:
        row = bench_pion(L, args.batch, device, args.kappa)
        rows.append(row)
        print(f"pion        {L:>3}^4 x{args.batch}: {row['seconds_per_config']:.2f} s/config "
              f"(CPU time {row['cpu_seconds_per_config']:.2f} s; 12 solves, "
              f"{row['cg_iterations']} CG iterations, kappa {args.kappa})")
    if args.measure_reps > 0:
        row = bench_measure(args.measure_reps)
        rows.append(row)
        c = row["chroma_release_process_seconds"]
        print(f"Chroma's measurement input 4^4, whole process: {row['process_wall_seconds']:.2f} s "
              f"wall ({ratio(row['process_wall_seconds'], c)} Chroma Release {c} s), "
              f"{row['process_cpu_seconds']:.2f} s CPU ({ratio(row['process_cpu_seconds'], c)}); "
              f"in process {row['in_process_seconds']:.2f} s "
              f"({ratio(row['in_process_seconds'], c)})")
        side = side_by_side("chroma", None, args.measure_reps)
        if side is not None:
            rows.append(side)
            print(f"side by side: Chroma {side['chroma_seconds']:.2f} s, ours "
                  f"{side['ours_seconds']:.2f} s per process, ratio {side['ratio']:.2f}")
        else:
            print(f"(set {ENV_CHROMA} to Chroma's chroma executable to run it side by side)")
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
