"""``qcd-bridge demo``: the main job end to end on a small default (issue 7, item 6).

1. Train a small gauge-equivariant flow for 2D U(1) (8x8, beta = 2) by reverse-KL self-training
   for a fixed time budget (:mod:`bridge.flows.training`; arXiv:2003.06413, arXiv:2101.08176), or load one
   with ``--model``.
2. Run hybrid chains (one HMC trajectory then four flow-proposal Metropolis steps per cycle) and
   pure-HMC chains with :mod:`bridge.jobs.chain` (a few independent chains each).
3. Validate the hybrid ensemble against the HMC ensemble with :mod:`bridge.jobs.validate`
   (histograms, residuals, Gamma-method means as in arXiv:2208.03832, Figs. 2-3) and write the
   report.
4. Compare both plaquettes with the exact finite-volume value of the character expansion
   (:func:`bridge.exact.u1_2d_plaquette`) and print a table and where the report is.

Output directory (``--out``, default ``qcd-bridge-demo``): ``model/`` (the `train` run),
``hybrid/`` and ``hmc/`` (the `chain` runs), ``report/`` (the validation report) and
``demo.json`` (the table).  A directory holding an earlier demo's ``demo.json`` is reused
(its parts are replaced); any other existing non-empty directory is refused.

Exit status: 0 when the validation passes, 3 (:data:`bridge.jobs.validate.EXIT_DISAGREE`) when an
observable disagrees, 1 for errors.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path
from typing import Any

__all__ = ["add_demo_parser", "run_demo"]

_MARK = "demo.json"
_MODEL = {"n_layers": 8, "k": 8, "hidden": [8, 8]}
# --arch: the model and the training settings of the flow the demo trains
_ARCHS = {
    "coupling": ({"model": _MODEL}, ["--lr", "3e-3"]),
    "plaquette": ({"model": {"arch": "plaquette"},
                   "train": {"adam_eps": 1e-8, "estimator": "path"}}, ["--lr", "0.03"]),
}


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge demo``."""
    p = sub.add_parser(
        "demo",
        help="the main job end to end: train a small 2D U(1) flow, run hybrid and HMC chains, "
             "validate one against the other, compare with the exact plaquette",
        description=(
            "Train (or load with --model) a small 2D U(1) flow, run hybrid (flow + HMC) and "
            "pure-HMC chains with `qcd-bridge chain`, validate the hybrid ensemble against the "
            "HMC one with `qcd-bridge validate`, compare the plaquette with its exact value "
            "(character expansion) and print where the report is. A few minutes on one CPU "
            "core with the defaults; shrink with --train-seconds and --steps. (The former "
            "random-field demo is `qcd-bridge field`.)"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="use this `qcd-bridge train` run instead of training one")
    p.add_argument("--arch", choices=sorted(_ARCHS), default="coupling",
                   help="flow to train: 8 gauge-equivariant coupling layers, or the constrained "
                        "plaquette flow of 2D U(1) (exact family: acceptance ~1 in seconds)")
    p.add_argument("--out", default="qcd-bridge-demo", help="output directory")
    p.add_argument("--nrow", nargs=2, type=int, default=None, metavar="L",
                   help="lattice extents (2D; default 8 8, or the training lattice of --model)")
    p.add_argument("--beta", type=float, default=None,
                   help="Wilson gauge coupling (default 2.0, or the coupling of --model)")
    p.add_argument("--train-seconds", type=float, default=90.0,
                   help="training time budget in seconds")
    p.add_argument("--train-steps", type=int, default=100000,
                   help="at most this many optimisation steps; when they end before "
                        "--train-seconds, the model does not depend on the machine's speed")
    p.add_argument("--chains", type=int, default=4, help="independent chains per sampler")
    p.add_argument("--steps", type=int, default=600, help="cycles per chain")
    p.add_argument("--therm", type=int, default=50, help="thermalisation cycles left out")
    p.add_argument("--schedule", default="hmc:1,flow:4", help="kernels of one hybrid cycle")
    p.add_argument("--md-steps", type=int, default=10, help="HMC steps per trajectory (tau 1)")
    p.add_argument("--bootstrap", type=int, default=500, help="bootstrap resamples of the "
                   "validation")
    p.add_argument("--seed", type=int, default=1, help="seed of training and chains")
    p.add_argument("--device", default="cpu", help="torch device of the chains (training "
                   "runs on the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)


def _prepare(out: Path) -> None:
    from ..errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not (out / _MARK).exists():
        raise ConfigError(f"--out {out}: a non-empty directory that holds no earlier demo "
                          f"({_MARK}); choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    for part in ("hybrid", "hmc", "report"):
        if (out / part).exists():
            shutil.rmtree(out / part)
    (out / _MARK).write_text("{}\n")


def _train(args: argparse.Namespace, out: Path) -> Path:
    """``qcd-bridge train`` for ``--train-seconds`` into ``OUT/model``."""
    from ..cli.flows import add_train_parser

    mdir = out / "model"
    if mdir.exists():
        shutil.rmtree(mdir)
    cfg = out / "train.json"
    settings, opts = _ARCHS[args.arch]
    cfg.write_text(json.dumps(settings) + "\n")
    parser = argparse.ArgumentParser(prog="qcd-bridge")
    add_train_parser(parser.add_subparsers())
    targs = parser.parse_args([
        "train", str(cfg), "--group", "u1", "--nrow", *map(str, args.nrow), "--beta",
        str(args.beta), "--steps", str(args.train_steps), "--time-budget", str(args.train_seconds),
        "--batch", "64", *opts, "--seed", str(args.seed), "--out", str(mdir),
        "--eval-samples", "1024", "--eval-batch", "256", "--log-every",
        "0" if args.no_progress else "100", "--checkpoint-every", "200"])
    rc = targs.func(targs)
    if rc:
        from ..errors import ConfigError

        raise ConfigError(f"training into {mdir} failed with exit status {rc}")
    return mdir


def _chain(args: argparse.Namespace, out: Path, name: str, model: str | None,
           schedule: str, seed: int) -> dict[str, Any]:
    from .chain import chain_settings, resolve_model, run_chains

    s, explicit = chain_settings(
        model=model, group="u1", nrow=list(args.nrow), beta=float(args.beta),
        schedule=schedule, md_steps=int(args.md_steps), chains=int(args.chains),
        steps=int(args.steps), therm=int(args.therm), seed=seed, out=str(out / name),
        checkpoint_every=max(int(args.steps) // 4, 1), device=args.device)
    flow = resolve_model(s, explicit)
    print(f"[demo] {name}: {args.chains} chains x {args.steps} cycles of {schedule}",
          flush=True)
    return run_chains(s, model=flow, progress=False if args.no_progress else None)


def _fmt(value: float | None, error: float | None) -> str:
    """``value(error)`` as in the validation report, ``n/a`` without a value."""
    from ..analysis.format import value_error as _pm

    if value is None:
        return "n/a"
    if error is None or not math.isfinite(error) or error <= 0:
        return f"{value:.5f}"
    return _pm(value, error)


def _lattice_and_coupling(args: argparse.Namespace) -> tuple[list[int], float]:
    """``--nrow``/``--beta``, else those of ``--model``'s training run, else 8 8 and 2.0; a
    model that is not a 2D U(1) flow is refused."""
    from ..errors import ConfigError

    nrow, beta = args.nrow, args.beta
    if args.model:
        from ..flows.checkpoints import load_model

        model, meta = load_model(args.model)
        if int(model.group.nc) != 1 or int(model.nd) != 2:
            raise ConfigError(f"--model {args.model}: the demo runs 2D U(1); the model is for "
                              f"{model.group.name} in {model.nd}D (use `qcd-bridge chain`)")
        train = meta.get("train", {})
        if nrow is None and train.get("nrow"):
            nrow = [int(n) for n in train["nrow"]]
        if beta is None and train.get("beta") is not None:
            beta = float(train["beta"])
    return ([8, 8] if nrow is None else [int(n) for n in nrow],
            2.0 if beta is None else float(beta))


def run_demo(args: argparse.Namespace) -> int:
    """Handler of ``qcd-bridge demo`` (module docstring); returns the exit status."""
    from ..analysis.report import write_report
    from ..errors import ConfigError
    from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility
    from .validate import EXIT_DISAGREE, validate

    if int(args.steps) <= int(args.therm) + 1:
        raise ConfigError(f"--steps {args.steps}: expected more cycles than --therm "
                          f"{args.therm} + 1")
    t0 = time.perf_counter()
    args.nrow, args.beta = _lattice_and_coupling(args)
    out = Path(args.out)
    _prepare(out)
    print(f"[demo] 2D U(1) on {args.nrow[0]}x{args.nrow[1]}, beta = {args.beta:g}; output in "
          f"{out}/", flush=True)
    t_train = time.perf_counter()
    if args.model:
        model = str(args.model)
        print(f"[demo] using the flow in {model}", flush=True)
    else:
        print(f"[demo] training a small {args.arch} flow for {args.train_seconds:g} s",
              flush=True)
        model = str(_train(args, out))
    t_train = time.perf_counter() - t_train
    runs = {}
    for name, sched, seed, mod in (("hybrid", args.schedule, args.seed, model),
                                   ("hmc", "hmc:1", args.seed + 1000, None)):
        t1 = time.perf_counter()
        runs[name] = _chain(args, out, name, mod, sched, seed)
        runs[name]["wall_seconds"] = time.perf_counter() - t1
    print("[demo] validating the hybrid ensemble against the HMC ensemble", flush=True)
    res = validate(str(out / "hybrid" / "chain.h5"), str(out / "hmc" / "chain.h5"),
                   observables=["plaquette", "topological_charge"], n_boot=int(args.bootstrap),
                   seed=int(args.seed))
    write_report(res, out / "report", overwrite=True)
    nrow = (int(args.nrow[0]), int(args.nrow[1]))
    exact_p = u1_2d_plaquette(float(args.beta), nrow)
    exact_chi = u1_2d_topological_susceptibility(float(args.beta), nrow)
    rows = []
    for name, r in runs.items():
        p, q = r["plaquette"], r.get("topological_charge", {})
        err = p.get("error") or p.get("naive_error")
        chi_err = q.get("chi_t_error") or q.get("chi_t_naive_error")
        rows.append({
            "sampler": name, "chains": r["chains"], "cycles": r["cycles"],
            "acceptance": r["acceptance"], "plaquette": p["mean"], "plaquette_error": err,
            "plaquette_sigma": ((p["mean"] - exact_p) / err) if err else None,
            "chi_t": q.get("chi_t"), "chi_t_error": chi_err,
            "chi_t_sigma": ((q["chi_t"] - exact_chi) / chi_err) if chi_err else None,
            "tau_int_Q": q.get("tau_int"), "seconds": r["wall_seconds"]})
    print()
    print(f"{'sampler':8s} {'chains x cycles':>16s}  {'acceptance':24s} {'<plaquette>':>13s} "
          f"{'dev/err':>7s}  {'<Q^2>/V':>12s} {'tau_int(Q)':>10s} {'time':>7s}")
    for row in rows:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in row["acceptance"].items() if v is not None)
        dev = "n/a" if row["plaquette_sigma"] is None else f"{row['plaquette_sigma']:+.1f}"
        tau = "n/a" if row["tau_int_Q"] is None else f"{row['tau_int_Q']:.2f}"
        print(f"{row['sampler']:8s} {row['chains']:>7d} x {row['cycles']:<6d}  {acc:24s} "
              f"{_fmt(row['plaquette'], row['plaquette_error']):>13s} {dev:>7s}  "
              f"{_fmt(row['chi_t'], row['chi_t_error']):>12s} {tau:>10s} "
              f"{row['seconds']:6.1f}s")
    print(f"{'exact':8s} {'':>16s}  {'':24s} {exact_p:>13.6f} {'':>7s}  {exact_chi:>12.6f}")
    print(f"(errors: Gamma method, chains as replicas, after {args.therm} thermalisation "
          f"cycles; dev/err = (mean - exact)/error;\n tau_int(Q) in cycles: a hybrid cycle is "
          f"{args.schedule}, an HMC cycle one trajectory)")
    print()
    for what, key, exact in (("plaquette", "plaquette", exact_p), ("<Q^2>/V", "chi_t", exact_chi)):
        parts = []
        for row in rows:
            sig = row[f"{key}_sigma"]
            parts.append(f"{row['sampler']} {_fmt(row[key], row[f'{key}_error'])} "
                         f"({'n/a' if sig is None else f'{sig:+.1f}'} sigma)")
        print(f"{what} vs exact (character expansion, {nrow[0]}x{nrow[1]}, beta = "
              f"{args.beta:g}): exact {exact:.6f}; " + "; ".join(parts))
    for c in res.observables:
        print(f"validate {c.name}: hybrid {_fmt(c.a.value, c.a.error)}  hmc "
              f"{_fmt(c.b.value, c.b.error)}  p = {c.p_value:.3g}  "
              f"{'ok' if c.passed else 'DISAGREES'}")
    verdict = "PASS" if res.passed else "FAIL"
    total = time.perf_counter() - t0
    (out / _MARK).write_text(json.dumps({
        "nrow": list(nrow), "beta": float(args.beta), "model": model, "rows": rows,
        "exact": {"plaquette": exact_p, "chi_t": exact_chi}, "validation": verdict,
        "report": str(out / "report" / "report.md"), "train_seconds": t_train,
        "total_seconds": total}, indent=2) + "\n")
    print(f"validation {verdict}: the report is {out / 'report' / 'report.md'} "
          f"(figures and summary.json beside it); total {total:.0f} s")
    return 0 if res.passed else EXIT_DISAGREE
