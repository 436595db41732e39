"""Stochastic normalizing flows on SU(3), beta 6.0 -> 6.2 (bridge.flows.snf), against the same
protocol without layers.

For each number of blocks (default 4 and 16; heatbath, 1 HB + 1 OR sweep per block) the SNF
has one stout cycle per block (the 8 masked stout steps, one coefficient each) started at
Luescher's leading-order map (``init``); ``--train-seconds`` > 0 then trains it by the mean work
on 4^4.  Every model is evaluated from the same ``--eval`` prior configurations as the
layer-free protocol (a pool of ``--chunk`` heatbath chains at beta0, ``--therm``
thermalisation sweeps, read every ``--read-every`` sweeps): Jarzynski ESS (bootstrap error),
mean work, ``log Z/Z0``, seconds per protocol run, and the ratios ESS / ESS(no layers) and
effective samples per second / the same without layers.  ``--transfer 8 8 8 8`` evaluates the
same models (trained on 4^4) on a larger lattice without retraining, and with
``--fine-tune-steps N`` again after N training steps there.  ``--init-scale auto`` starts every
model at the factor of Luescher's coefficients with the lowest mean work on 4^4
(:func:`bridge.jobs.train_snf.scan_init_scale`).

    OMP_NUM_THREADS=1 python benchmarks/bench_snf.py [--blocks 4 16] [--train-seconds 0]
        [--eval 1600] [--transfer 8 8 8 8 --transfer-eval 128 --fine-tune-steps 0]
        [--init-scale 1|auto] [--out benchmarks/results/snf.json]
    OMP_NUM_THREADS=1 python benchmarks/bench_snf.py --volume-scaling 4 6 8 --blocks 4 \
        --out benchmarks/results/snf_volume.json   # cost per protocol run against V
"""

from __future__ import annotations

import argparse
import time

import torch
from _results import write_results

from bridge.flows.snf import PriorPool, SNFLoss, SNFModel
from bridge.flows.training import TrainConfig, Trainer
from bridge.jobs.train_snf import evaluate_snf, scan_init_scale

NROW = [4, 4, 4, 4]
BETA0, BETA = 6.0, 6.2


def _train(model: SNFModel, seconds: float, args: argparse.Namespace, nrow: list[int] = NROW,
           batch: int | None = None, steps: int = 10**6) -> dict:
    """Train ``model`` by the mean work on ``nrow`` for ``seconds`` of wall time or ``steps``
    steps (``batch`` protocol runs each, default ``--batch``)."""
    if seconds <= 0 or steps <= 0:
        return {"train_steps": 0, "train_seconds": 0.0}
    batch = batch or args.batch
    pool = PriorPool(model, nrow, batch, seed=1, therm=args.therm, sweeps=args.read_every)
    loss = SNFLoss(model, pool, batch, nrow)
    cfg = TrainConfig(nrow=nrow, beta=BETA, batch=batch, lr=args.lr, seed=2,
                      total_steps=steps)
    trainer = Trainer(model, cfg, loss=loss)
    t0 = time.perf_counter()
    hist = trainer.train(steps, time_budget=seconds)
    return {"train_steps": len(hist), "train_seconds": time.perf_counter() - t0,
            "live_mean_work_first": hist[0]["loss"] if hist else None,
            "live_mean_work_last": hist[-1]["loss"] if hist else None}


def _row(n_blocks: int, nrow: list[int], ev: dict, extra: dict) -> dict:
    r = {"n_blocks": n_blocks, "nrow": nrow, **extra, **ev}
    r["ess_ratio"] = ev["ess"] / ev["ess_no_layers"] if ev["ess_no_layers"] > 0 else None
    eff = ev["ess"] / ev["seconds_per_run"]
    eff0 = ev["ess_no_layers"] / ev["seconds_per_run_no_layers"]
    r["eff_per_second"], r["eff_per_second_no_layers"] = eff, eff0
    r["eff_per_second_ratio"] = eff / eff0 if eff0 > 0 else None
    return r


def _print(r: dict) -> None:
    def ratio(x):
        return f"{x:6.2f}" if x is not None else "   -  "

    steps = r.get("fine_tune_steps", r["train_steps"])
    print(f"{'x'.join(map(str, r['nrow'])):>8} {r['n_blocks']:6d} {steps:5d} "
          f"{r['ess']:6.3f}({r['ess_err'] or 0:.3f}) {r['ess_no_layers']:6.3f}"
          f"({r['ess_err_no_layers'] or 0:.3f}) {ratio(r['ess_ratio'])} "
          f"{r['mean_work']:9.3f} {r['mean_work_no_layers']:9.3f} "
          f"{r['seconds_per_run']:7.4f} {r['seconds_per_run_no_layers']:7.4f} "
          f"{ratio(r['eff_per_second_ratio'])}", flush=True)


def volume_scaling(sizes: list[int], n_blocks: int, batch: int, reps: int) -> list[dict]:
    """CPU seconds per protocol run (one configuration through ``n_blocks`` blocks), with and
    without the stout layers, on L^4 for L in ``sizes``; the configurations are heatbath
    chains after 5 sweeps (the cost does not depend on equilibrium)."""
    from bridge.gauge import random_gauge
    from bridge.lattice import Lattice
    from bridge.mcmc.heatbath import heatbath_sweep
    from bridge.mcmc.nonequilibrium import run_protocol
    from bridge.rng import generator

    model = SNFModel("SU3", 4, beta0=BETA0, beta=BETA, n_blocks=n_blocks, update="heatbath",
                     n_hb=1, n_or=1)
    rows = []
    for size in sizes:
        u = random_gauge(Lattice((size,) * 4), "SU3", batch, generator=generator(size))
        for _ in range(5):
            u = heatbath_sweep(u, BETA0, generator(size + 1))
        row = {"L": size, "volume": size**4, "n_blocks": n_blocks, "batch": batch}
        for key, layers in (("seconds_per_run", True), ("seconds_per_run_no_layers", False)):
            times = []
            with torch.no_grad():
                for r in range(reps):  # CPU time: robust to other jobs on the machine
                    t0 = time.process_time()
                    run_protocol(u, model.protocol(layers=layers), seed=r)
                    times.append((time.process_time() - t0) / batch)
            row[key] = sorted(times)[len(times) // 2]
        rows.append(row)
        print(f"L={size}: {row['seconds_per_run']:.4f} s/run with layers, "
              f"{row['seconds_per_run_no_layers']:.4f} without", flush=True)
    import numpy as np

    v = np.log([r["volume"] for r in rows])
    for key in ("seconds_per_run", "seconds_per_run_no_layers"):
        slope = float(np.polyfit(v, np.log([r[key] for r in rows]), 1)[0])
        print(f"cost ~ V^{slope:.3f} ({key})")
        for r in rows:
            r[f"exponent_{key}"] = slope
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--blocks", type=int, nargs="+", default=[4, 16])
    p.add_argument("--train-seconds", type=float, nargs="+", default=[0.0])
    p.add_argument("--eval", type=int, default=1600, help="protocol runs per evaluation")
    p.add_argument("--chunk", type=int, default=128, help="prior chains of the evaluation")
    p.add_argument("--batch", type=int, default=32, help="protocol runs per training step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--therm", type=int, default=30)
    p.add_argument("--read-every", type=int, default=2)
    p.add_argument("--transfer", type=int, nargs="*", default=[],
                   help="also evaluate the 4^4 models on this lattice (e.g. 8 8 8 8)")
    p.add_argument("--transfer-eval", type=int, default=128)
    p.add_argument("--transfer-chunk", type=int, default=32,
                   help="prior chains on the transfer lattice (and the fine-tuning batch)")
    p.add_argument("--fine-tune-steps", type=int, default=0,
                   help="then train the transferred model this many steps on the transfer "
                        "lattice and evaluate it again")
    p.add_argument("--init-scale", default="1", help="factor of Luescher's coefficients, or "
                   "'auto' (the lowest mean work of a scan on 4^4, --scan-runs runs each)")
    p.add_argument("--scan-runs", type=int, default=256)
    p.add_argument("--volume-scaling", type=int, nargs="*", default=[], metavar="L",
                   help="only time protocol runs on L^4 for these L and fit cost ~ V^a")
    p.add_argument("--out", default="benchmarks/results/snf.json")
    args = p.parse_args()
    if args.volume_scaling:
        rows = volume_scaling(args.volume_scaling, args.blocks[0], 4, 3)
        write_results(args.out, rows, beta0=BETA0, beta=BETA, update="heatbath", n_hb=1,
                      n_or=1, kind="volume_scaling")
        return
    budgets = args.train_seconds * len(args.blocks) if len(args.train_seconds) == 1 else \
        args.train_seconds
    rows = []
    print(f"{'lattice':>8} {'blocks':>6} {'steps':>5} {'ESS':>13} {'ESS no layers':>13} "
          f"{'ratio':>6} {'<W>':>9} {'<W>0':>9} {'s/run':>7} {'s/run0':>7} {'eff/s ratio':>6}")
    for n, budget in zip(args.blocks, budgets, strict=True):
        torch.manual_seed(0)
        model = SNFModel("SU3", 4, beta0=BETA0, beta=BETA, n_blocks=n, update="heatbath",
                         n_hb=1, n_or=1)
        extra = {}
        if args.init_scale == "auto":
            scan = scan_init_scale(model, NROW, args.scan_runs, args.chunk, seed=5,
                                   therm=args.therm, sweeps=args.read_every)
            extra["init_scan"] = scan
            print("init scale scan: " + ", ".join(f"{r['scale']:g} -> {r['mean_work']:.4f}"
                                                  for r in scan), flush=True)
        else:
            model.set_init_scale(float(args.init_scale))
        extra["init_scale"] = model.config["init_scale"]
        extra.update(_train(model, budget, args))
        extra["coefficients"] = [[round(float(c), 5) for c in b.coefficients().detach()]
                                 for b in model.blocks]
        ev = evaluate_snf(model, NROW, args.eval, args.chunk, seed=3, therm=args.therm,
                          sweeps=args.read_every)
        rows.append(_row(n, NROW, ev, extra))
        _print(rows[-1])
        if args.transfer:
            big = list(args.transfer)
            ev = evaluate_snf(model, big, args.transfer_eval, args.transfer_chunk, seed=4,
                              therm=args.therm, sweeps=args.read_every)
            rows.append(_row(n, big, ev, {**extra, "transferred_from": NROW}))
            _print(rows[-1])
            if args.fine_tune_steps:
                ft = _train(model, 10**9, args, big, args.transfer_chunk, args.fine_tune_steps)
                ev = evaluate_snf(model, big, args.transfer_eval, args.transfer_chunk, seed=4,
                                  therm=args.therm, sweeps=args.read_every)
                rows.append(_row(n, big, ev, {**extra, "transferred_from": NROW,
                                              "fine_tune_steps": ft["train_steps"],
                                              "fine_tune_seconds": ft["train_seconds"],
                                              "fine_tune_batch": args.transfer_chunk}))
                _print(rows[-1])
    write_results(args.out, rows, beta0=BETA0, beta=BETA, update="heatbath", n_hb=1, n_or=1,
                  eval=args.eval, chunk=args.chunk, therm=args.therm,
                  init_scale=args.init_scale, fine_tune_steps=args.fine_tune_steps,
                  read_every=args.read_every, batch=args.batch, lr=args.lr,
                  transfer=args.transfer, transfer_eval=args.transfer_eval)


if __name__ == "__main__":
    main()
