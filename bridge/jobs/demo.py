"""``qcd-bridge demo``: the main job end to end on a small default.

1. Train a small gauge-equivariant flow for 2D U(1) (8x8, beta = 2) by reverse-KL
   self-training for a fixed time budget (:mod:`bridge.jobs.train`; arXiv:2003.06413,
   arXiv:2101.08176), or load one with ``--model``.
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

import json
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

__all__ = ["ARCHS", "DemoSettings", "run_demo"]

_MARK = "demo.json"
_MODEL = {"n_layers": 8, "k": 8, "hidden": [8, 8]}
# --arch: the model and training settings (train.json) and the learning rate of the flow
ARCHS = {
    "coupling": ({"model": _MODEL}, 3e-3),
    "plaquette": ({"model": {"arch": "plaquette"},
                   "train": {"adam_eps": 1e-8, "estimator": "path"}}, 0.03),
}


@dataclass
class DemoSettings:
    """The options of ``qcd-bridge demo`` (defaults as on the command line)."""

    model: str | None = None
    arch: str = "coupling"
    out: str = "qcd-bridge-demo"
    nrow: list[int] | None = None
    beta: float | None = None
    train_seconds: float = 90.0
    train_steps: int = 100000
    chains: int = 4
    steps: int = 600
    therm: int = 50
    schedule: str = "hmc:1,flow:4"
    md_steps: int = 10
    bootstrap: int = 500
    seed: int = 1
    device: str = "cpu"
    no_progress: bool = False


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


def _train(args: DemoSettings, out: Path) -> Path:
    """``qcd-bridge train`` for ``train_seconds`` into ``OUT/model``."""
    from .train import run_train, train_settings

    mdir = out / "model"
    if mdir.exists():
        shutil.rmtree(mdir)
    cfg = out / "train.json"
    settings, lr = ARCHS[args.arch]
    cfg.write_text(json.dumps(settings) + "\n")
    s = train_settings(
        cfg, group="u1", nrow=list(args.nrow), beta=float(args.beta), steps=args.train_steps,
        time_budget=float(args.train_seconds), batch=64, lr=lr, seed=args.seed, out=str(mdir),
        eval_samples=1024, eval_batch=256, log_every=0 if args.no_progress else 100,
        checkpoint_every=200)
    rc = run_train(s)
    if rc:
        from ..errors import ConfigError

        raise ConfigError(f"training into {mdir} failed with exit status {rc}")
    return mdir


def _chain(args: DemoSettings, out: Path, name: str, model: str | None,
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
    from ..analysis.format import value_error

    return value_error(value, error, plain=".5f")


def _lattice_and_coupling(args: DemoSettings) -> tuple[list[int], float]:
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


def run_demo(args: DemoSettings) -> int:
    """The demo of the module docstring; returns the exit status."""
    from ..analysis.report import write_report
    from ..errors import ConfigError
    from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility
    from .validate import EXIT_DISAGREE, validate

    if int(args.steps) <= int(args.therm) + 1:
        raise ConfigError(f"--steps {args.steps}: expected more cycles than --therm "
                          f"{args.therm} + 1")
    t0 = time.perf_counter()
    nrow_, beta_ = _lattice_and_coupling(args)
    args = replace(args, nrow=nrow_, beta=beta_)
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
