"""Seconds per heatbath sweep (one Cabibbo-Marinari heatbath sweep + one overrelaxation sweep)
per configuration, SU(3) Wilson gauge theory at beta 5.5, on 4^4 and 8^4 with batch 1 and 16
(bridge.mcmc.heatbath).  For comparison: the public snf_su3 code needs about 15 ms per sweep per
configuration at 4^4 on the development CPU.  Prints a table and writes JSON.

    OMP_NUM_THREADS=1 python benchmarks/bench_heatbath.py [--sizes 4 8] [--batches 1 16]
                                                          [--sweeps 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from _results import write_results

from bridge.gauge import mesplq, random_gauge
from bridge.lattice import Lattice
from bridge.mcmc.heatbath import heatbath_sweep, overrelaxation_sweep

BETA = 5.5


def run_one(size: int, batch: int, sweeps: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    u = random_gauge(Lattice((size,) * 4), "SU3", batch, generator=g)
    u = overrelaxation_sweep(heatbath_sweep(u, BETA, g))  # warm-up (index tables, allocator)
    t_hb = t_or = 0.0
    c0 = time.process_time()
    for _ in range(sweeps):
        t0 = time.perf_counter()
        u = heatbath_sweep(u, BETA, g)
        t1 = time.perf_counter()
        u = overrelaxation_sweep(u)
        t_hb, t_or = t_hb + t1 - t0, t_or + time.perf_counter() - t1
    cpu = time.process_time() - c0
    n = sweeps * batch
    return dict(L=size, batch=batch, sweeps=sweeps, hb_s=t_hb / n, or_s=t_or / n,
                sweep_s=(t_hb + t_or) / n, sweep_cpu_s=cpu / n,
                w_plaq=float(mesplq(u).w_plaq.mean()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4, 8])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--sweeps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "heatbath.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    print(f"{'lattice':>8} {'batch':>5} {'HB ms':>8} {'OR ms':>8} {'HB+OR ms':>9} {'cpu ms':>8}"
          "   (per sweep per configuration)")
    for size in args.sizes:
        for batch in args.batches:
            r = run_one(size, batch, args.sweeps)
            rows.append(r)
            print(f"{size:>6}^4 {batch:>5} {1e3 * r['hb_s']:8.2f} {1e3 * r['or_s']:8.2f} "
                  f"{1e3 * r['sweep_s']:9.2f} {1e3 * r['sweep_cpu_s']:8.2f}")
    write_results(args.out, rows, beta=BETA, group="SU3", load_average_before=load0,
                  reference="snf_su3: ~15 ms per sweep per configuration at 4^4 (same CPU)")


if __name__ == "__main__":
    main()
