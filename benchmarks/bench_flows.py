"""Flow benchmarks: ESS against training wall time, and the cost per sample.

(a) ``u1``: 2D U(1), 8x8, beta = 2: train the stripe-mask model of arXiv:2101.08176 (16 coupling
    layers, circular splines, small periodic conv nets, batch 64, Adam lr ~1e-3, cosine
    schedule over the number of steps the budget allows) for ``--budget`` seconds of training
    (default 600); every ``--eval-every`` seconds measure the ESS on ``--eval-n`` fresh samples
    (evaluation time is not counted as training time); the final ESS uses 4096 samples.
    ``--arch plaquette``: the constrained plaquette flow (:class:`bridge.flows.PlaquetteFlow`,
    batch 64, lr 0.03, Adam eps 1e-8, the path-gradient estimator), key ``u1_8x8_plaquette``.
(b) ``cost``: SU(3) in 4D at 4^4, 6^4, 8^4 (period-2 masks, one mask cycle; with ``--arch
    residual`` one cycle of residual staple layers, key ``su3_cost_residual``): seconds and peak
    memory per sample of ``sample`` + ``log_prob`` (forward + exact inverse), no gradient;
    memory is the peak RSS growth of a fresh subprocess per size (Linux: the peak ``VmHWM`` is
    reset through ``/proc/self/clear_refs`` after a warm-up; torch's CPU allocations are
    invisible to ``tracemalloc``); log-log slopes against the volume.
(c) ``su3``: 4D SU(3), 4^4, beta = 1: ESS against training wall time (as (a)); ``--arch
    residual`` uses one cycle of residual staple layers (batch 16, lr 0.02, Adam eps 1e-8 unless
    given) and stores the result under ``su3_4x4_residual``.

    OMP_NUM_THREADS=1 python benchmarks/bench_flows.py [u1] [cost] [su3] [--budget 600]
        [--arch coupling|residual] [--out benchmarks/results/flows.json]

Results are merged into the JSON file (one key per part), so parts can be run separately.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from bridge.flows import make_flow
from bridge.flows.training import TrainConfig, Trainer
from bridge.gauge import wilson_action
from bridge.mcmc.reweighting import ess, imh_acceptance
from bridge.rng import generator, rng_key


def _measure(model, nrow, beta: float, n: int, seed: int, chunk: int = 256) -> dict:
    logws = []
    with torch.no_grad():
        for i, s in enumerate(range(0, n, chunk)):
            u, logq = model.sample(min(chunk, n - s), nrow,
                                   generator=generator(rng_key(seed, i)))
            logws.append(-wilson_action(u, beta) - logq)
    logw = torch.cat(logws)
    return {"ess": ess(logw), "acceptance": imh_acceptance(logw, generator(seed)),
            "loss": float(-logw.mean()), "n": n}


def ess_vs_time(group: str, nd: int, nrow, beta: float, budget: float, *, model_kw: dict,
                batch: int, lr: float, eval_every: float, eval_n: int, final_n: int = 4096,
                seed: int = 1, adam_eps: float = 1e-2, target: float = 0.7,
                estimator: str = "reparam") -> dict:
    """Train for ``budget`` seconds (training time only); ESS curve and final numbers.  The
    cosine schedule spans the steps a probe (3 steps after one warm-up step) predicts."""
    torch.manual_seed(seed)
    model = make_flow(group, nd, **model_kw)
    probe = Trainer(make_flow(group, nd, **model_kw),
                    TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=lr, adam_eps=adam_eps,
                                estimator=estimator))
    probe.train(1)
    t0 = time.perf_counter()
    probe.train(3)
    per_step = (time.perf_counter() - t0) / 3
    total = max(int(budget / per_step), 10)
    cfg = TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=lr, schedule="cosine",
                      total_steps=total, lr_min=lr / 10, seed=seed, adam_eps=adam_eps,
                      estimator=estimator)
    tr = Trainer(model, cfg)
    curve = [{"train_seconds": 0.0, "step": 0, **_measure(model, nrow, beta, eval_n, 10_000)}]
    print(f"  t={0:7.1f}s step {0:5d} ESS {curve[-1]['ess']:.4f}", flush=True)
    trained, next_eval = 0.0, eval_every
    while trained < budget and tr.step_count < total:
        info = tr.step()
        trained += info["seconds"]
        if trained >= next_eval or trained >= budget or tr.step_count >= total:
            m = _measure(model, nrow, beta, eval_n, 10_000 + tr.step_count)
            curve.append({"train_seconds": trained, "step": tr.step_count, **m})
            print(f"  t={trained:7.1f}s step {tr.step_count:5d} ESS {m['ess']:.4f} "
                  f"acc {m['acceptance']:.3f} loss {m['loss']:.3f}", flush=True)
            next_eval += eval_every
    final = _measure(model, nrow, beta, final_n, 99_999)
    reached = [c for c in curve if c["ess"] >= target]
    return {"group": group, "nrow": list(nrow), "beta": beta, "budget_s": budget,
            "model": model.config, "batch": batch, "lr": lr, "adam_eps": adam_eps,
            "schedule": "cosine", "estimator": estimator,
            "planned_steps": total, "steps": tr.step_count, "train_seconds": trained,
            "seconds_per_step": trained / max(tr.step_count, 1), "curve": curve,
            "final_n": final_n, "final_ess": final["ess"], "final_acceptance": final["acceptance"],
            "target_ess": target,
            "first_time_ess_ge_target": reached[0]["train_seconds"] if reached else None}


_COST_CHILD = """
import json, sys, time, torch
from bridge.flows import make_flow
L, n, reps, arch = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
if arch == "residual":
    model = make_flow("SU3", 4, arch="residual")
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-0.3)  # c_k = -0.044: trained size, so the inverse iterates as in use
else:
    model = make_flow("SU3", 4, period=2, n_layers=8, k=4, hidden=(4,))
gen = torch.Generator().manual_seed(1)
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])  # kB
with torch.no_grad():
    model.sample(1, (2, 2, 2, 2))  # warm-up on a tiny lattice
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM) to the current RSS
    rss0 = status("VmRSS:")
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        u, logq = model.sample(n, (L,) * 4, generator=gen)
        lp = model.log_prob(u)
        best = min(best, time.perf_counter() - t0)
    rss1 = status("VmHWM:")
print(json.dumps({"L": L, "n": n, "seconds_per_sample": best / n,
                  "peak_rss_delta_mb_per_sample": (rss1 - rss0) / 1024 / n,
                  "max_abs_logq_minus_logprob": float((logq - lp).abs().max())}))
"""


def cost_per_sample(sizes=(4, 6, 8), n: int = 8, reps: int = 2, arch: str = "coupling") -> dict:
    """Seconds and peak-RSS growth per sample of sample + log_prob (SU(3), 4D)."""
    rows = []
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for L in sizes:
        out = subprocess.run([sys.executable, "-c", _COST_CHILD, str(L), str(n), str(reps), arch],
                             capture_output=True, text=True, env=env, check=True)
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row["volume"] = L ** 4
        rows.append(row)
        print(f"  {L}^4: {row['seconds_per_sample'] * 1e3:9.1f} ms/sample "
              f"{row['peak_rss_delta_mb_per_sample']:8.2f} MB/sample", flush=True)

    def slope(key: str) -> float:
        xs = [math.log(r["volume"]) for r in rows]
        ys = [math.log(max(r[key], 1e-12)) for r in rows]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sum(
            (x - mx) ** 2 for x in xs)

    name = ("SU3 4D residual, one cycle (8 layers), c_k = -0.044" if arch == "residual" else
            "SU3 4D, period 2, 8 layers, k 4, hidden (4,)")
    return {"model": name, "arch": arch, "batch": n,
            "rows": rows, "slope_time": slope("seconds_per_sample"),
            "slope_memory": slope("peak_rss_delta_mb_per_sample")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("parts", nargs="*", default=["u1", "cost"],
                    choices=["u1", "cost", "su3"], help="what to run (default u1 cost)")
    ap.add_argument("--budget", type=float, default=600.0, help="training seconds for u1/su3")
    ap.add_argument("--eval-every", type=float, default=30.0, help="seconds between ESS points")
    ap.add_argument("--eval-n", type=int, default=1024, help="samples per ESS point")
    ap.add_argument("--n-layers", type=int, default=16, help="coupling layers (u1)")
    ap.add_argument("--lr", type=float, default=None,
                    help="Adam learning rate (default 1e-3; 0.02 for --arch residual, 0.03 for "
                         "--arch plaquette)")
    ap.add_argument("--batch", type=int, default=64, help="batch (u1)")
    ap.add_argument("--final-n", type=int, default=4096, help="samples of the final ESS")
    ap.add_argument("--arch", choices=["coupling", "residual", "plaquette"], default="coupling",
                    help="flow architecture (plaquette: u1 only; residual: su3 and cost only)")
    ap.add_argument("--adam-eps", type=float, default=None,
                    help="Adam eps (default 1e-2; 1e-8 for --arch residual and plaquette)")
    ap.add_argument("--out", default="benchmarks/results/flows.json")
    args = ap.parse_args(argv)
    bad = ({"cost", "su3"} if args.arch == "plaquette" else
           {"u1"} if args.arch == "residual" else set()) & set(args.parts)
    if bad:
        ap.error(f"--arch {args.arch} does not apply to the part(s) {sorted(bad)}")
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.exists() else {}
    env = {"machine": platform.node(), "cpu": platform.processor() or platform.machine(),
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "loadavg_start": os.getloadavg(), "date": time.strftime("%Y-%m-%d")}
    if "u1" in args.parts and args.arch == "plaquette":
        print("(a) 2D U(1) 8x8 beta 2 (plaquette flow): ESS against training time", flush=True)
        res["u1_8x8_plaquette"] = ess_vs_time(
            "U1", 2, (8, 8), 2.0, args.budget, batch=args.batch, lr=args.lr or 0.03,
            eval_every=args.eval_every, eval_n=args.eval_n, final_n=args.final_n,
            model_kw={"arch": "plaquette"}, adam_eps=args.adam_eps or 1e-8, estimator="path")
        res["u1_8x8_plaquette"]["env"] = {**env, "loadavg_end": os.getloadavg()}
    elif "u1" in args.parts:
        print("(a) 2D U(1) 8x8 beta 2: ESS against training time", flush=True)
        res["u1_8x8"] = ess_vs_time(
            "U1", 2, (8, 8), 2.0, args.budget, batch=args.batch, lr=args.lr or 1e-3,
            eval_every=args.eval_every, eval_n=args.eval_n, final_n=args.final_n,
            model_kw={"n_layers": args.n_layers, "k": 8, "hidden": (8, 8)},
            adam_eps=args.adam_eps or 1e-2)
        res["u1_8x8"]["env"] = {**env, "loadavg_end": os.getloadavg()}
    if "cost" in args.parts:
        print("(b) SU(3) 4D cost per sample (sample + log_prob)", flush=True)
        key = "su3_cost" if args.arch == "coupling" else "su3_cost_residual"
        res[key] = cost_per_sample(arch=args.arch)
        res[key]["env"] = {**env, "loadavg_end": os.getloadavg()}
        print(f"  log-log slope: time {res[key]['slope_time']:.3f}, memory "
              f"{res[key]['slope_memory']:.3f}")
    if "su3" in args.parts:
        print(f"(c) 4D SU(3) 4^4 beta 1 ({args.arch}): ESS against training time", flush=True)
        if args.arch == "residual":
            key, kw, batch, lr = "su3_4x4_residual", {"arch": "residual"}, 16, 0.02
            eps = 1e-8
        else:
            key, batch, lr, eps = "su3_4x4", 16, 1e-3, 1e-2
            kw = {"n_layers": 16, "k": 4, "hidden": (8,), "period": 2}
        lr = args.lr or lr
        res[key] = ess_vs_time(
            "SU3", 4, (4, 4, 4, 4), 1.0, args.budget, batch=batch, lr=lr,
            eval_every=args.eval_every, eval_n=min(args.eval_n, 256), final_n=args.final_n,
            model_kw=kw, adam_eps=args.adam_eps or eps, target=0.3)
        res[key]["env"] = {**env, "loadavg_end": os.getloadavg()}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    for key in [k for k in ("u1_8x8", "u1_8x8_plaquette", "su3_4x4", "su3_4x4_residual")
                if k in res]:
        r = res[key]
        print(f"\n{key} ({r['model'].get('arch', 'coupling')})")
        print(f"{'train s':>8} {'step':>6} {'ESS':>7} {'acc':>6}")
        for c in r["curve"]:
            print(f"{c['train_seconds']:8.1f} {c['step']:6d} {c['ess']:7.4f} "
                  f"{c['acceptance']:6.3f}")
        print(f"final ({r['final_n']} samples): ESS {r['final_ess']:.4f}, acceptance "
              f"{r['final_acceptance']:.3f} after {r['steps']} steps, "
              f"{r['train_seconds']:.0f} s")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
