"""Stochastic normalizing flows on 4^4 SU(3), beta 6.0 -> 6.2 (bridge.flows.snf).

For each number of blocks (default 4 and 16; heatbath, 1 HB + 1 OR sweep per block): train one
residual staple layer per block by the mean work for a fixed time budget, then run the protocol
with and without the layers from the same ``--eval`` prior configurations (a pool of ``--chunk``
heatbath chains at beta0, ``--therm`` thermalisation sweeps, read every ``--read-every``
sweeps) and report the Jarzynski ESS, the mean work, ``log Z/Z0`` and the seconds per protocol
run (one configuration through all blocks).

    OMP_NUM_THREADS=1 python benchmarks/bench_snf.py [--blocks 4 16] [--train-seconds 80 140]
        [--eval 512] [--out benchmarks/results/snf.json]
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import write_results

from bridge.flows.snf import PriorPool, SNFLoss, SNFModel
from bridge.flows.training import TrainConfig, Trainer
from bridge.jobs.train_snf import evaluate_snf

NROW = (4, 4, 4, 4)
BETA0, BETA = 6.0, 6.2


def run(n_blocks: int, train_seconds: float, args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    model = SNFModel("SU3", 4, beta0=BETA0, beta=BETA, n_blocks=n_blocks, update="heatbath",
                     n_hb=1, n_or=1)
    t0 = time.perf_counter()
    pool = PriorPool(model, NROW, args.batch, seed=1, therm=args.therm, sweeps=1)
    pool.draw(0)
    therm_seconds = time.perf_counter() - t0
    loss = SNFLoss(model, pool, args.batch, NROW)
    cfg = TrainConfig(nrow=NROW, beta=BETA, batch=args.batch, lr=args.lr, seed=2,
                      total_steps=10**6)
    trainer = Trainer(model, cfg, loss=loss)
    t0 = time.perf_counter()
    hist = trainer.train(10**6, time_budget=train_seconds)
    train_seconds_used = time.perf_counter() - t0
    ev = evaluate_snf(model, list(NROW), args.eval, args.chunk, seed=3, therm=args.therm,
                      sweeps=args.read_every)
    coeffs = [[round(float(c), 4) for c in b.coefficients().detach()] for b in model.blocks]
    return {"n_blocks": n_blocks, "train_steps": len(hist), "train_batch": args.batch,
            "train_seconds": train_seconds_used, "pool_therm_seconds": therm_seconds,
            "live_mean_work_first": hist[0]["loss"] if hist else None,
            "live_mean_work_last": hist[-1]["loss"] if hist else None,
            "coefficients": coeffs, **ev}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--train-seconds", type=float, nargs="+", default=[80.0, 140.0])
    p.add_argument("--eval", type=int, default=512, help="protocol runs per evaluation")
    p.add_argument("--chunk", type=int, default=128, help="prior chains of the evaluation")
    p.add_argument("--batch", type=int, default=16, help="protocol runs per training step")
    p.add_argument("--lr", type=float, default=0.03)
    p.add_argument("--therm", type=int, default=30)
    p.add_argument("--read-every", type=int, default=2)
    p.add_argument("--out", default="benchmarks/results/snf.json")
    args = p.parse_args()
    budgets = args.train_seconds * len(args.blocks) if len(args.train_seconds) == 1 else \
        args.train_seconds
    rows = []
    print(f"{'blocks':>6} {'steps':>5} {'ESS':>7} {'ESS0':>7} {'<W>':>9} {'<W>0':>9} "
          f"{'logZ/Z0':>16} {'s/run':>7} {'s/run0':>7}")
    for n, budget in zip(args.blocks, budgets, strict=True):
        r = run(n, budget, args)
        rows.append(r)
        lz = (f"{r['log_z_ratio']:.3f}({r['log_z_ratio_err'] or float('inf'):.3f})"
              if r["log_z_ratio"] is not None else "-inf")
        print(f"{n:6d} {r['train_steps']:5d} {r['ess']:7.4f} {r['ess_no_layers']:7.4f} "
              f"{r['mean_work']:9.4f} {r['mean_work_no_layers']:9.4f} {lz:>16} "
              f"{r['seconds_per_run']:7.4f} {r['seconds_per_run_no_layers']:7.4f}", flush=True)
    write_results(args.out, rows, nrow=list(NROW), beta0=BETA0, beta=BETA, update="heatbath",
                  n_hb=1, n_or=1, eval=args.eval, chunk=args.chunk, therm=args.therm,
                  read_every=args.read_every, batch=args.batch, lr=args.lr)


if __name__ == "__main__":
    main()
