"""``qcd-bridge demo``: the product's point end to end in a few minutes on one CPU core.

1. Train the constrained plaquette flow of 2D U(1) (``--arch plaquette``, path-gradient
   estimator) on a small lattice (``--train-nrow``, default 8x8) at ``beta = 6`` by reverse-KL
   self-training for ``--train-steps`` steps (:mod:`bridge.jobs.train`; arXiv:2003.06413,
   arXiv:2101.08176), or load one with ``--model``.
2. Transfer it to a larger lattice (``--nrow``, default 32x32; the flow is local, its ``log q``
   stays exact there: :mod:`bridge.jobs.transfer`) at a coupling where HMC's topological charge
   is frozen, and run hybrid chains (one HMC trajectory and one flow-proposal Metropolis step
   per cycle) and HMC chains side by side with :mod:`bridge.jobs.chain`.
3. ``tau_int(Q)`` of both samplers (Gamma method; a lower bound where HMC's charge barely moves,
   :func:`bridge.jobs.scaling.analyse_charge`) and the cost per independent ``Q``; the exact
   finite-volume plaquette and ``<Q^2>/V`` (:mod:`bridge.exact`) against both.
4. Validate the hybrid ensemble against the HMC ensemble with :mod:`bridge.jobs.validate`
   (histograms, residuals, Gamma-method means as in arXiv:2208.03832, Figs. 2-3) on the
   plaquette, and on ``Q`` only where HMC's own ``tau_int(Q)`` is resolved (a frozen chain is
   no reference for ``Q``; the exact value is), and write the report and a plot of ``Q``
   against the cycle for both samplers.

Output directory (``--out``, default ``qcd-bridge-demo``): ``model/`` (the `train` run),
``hybrid/`` and ``hmc/`` (the `chain` runs), ``report/`` (the validation report),
``topological_charge.png`` and ``demo.json`` (the table).  A directory holding an earlier
demo's ``demo.json`` is reused (its parts are replaced); any other non-empty one is refused.

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
    # Adam's steps are ~lr whatever the gradient, so a large rate converges and the cosine
    # decay removes the jitter that would otherwise add up over a larger lattice's plaquettes
    "plaquette": ({"model": {"arch": "plaquette"},
                   "train": {"adam_eps": 1e-8, "estimator": "path", "schedule": "cosine",
                             "lr_min": 3e-4}}, 0.2),
}


@dataclass
class DemoSettings:
    """The options of ``qcd-bridge demo`` (defaults as on the command line)."""

    model: str | None = None
    arch: str = "plaquette"
    out: str = "qcd-bridge-demo"
    nrow: list[int] | None = None
    train_nrow: list[int] | None = None
    beta: float | None = None
    train_seconds: float = 300.0
    train_steps: int = 600
    chains: int = 4
    steps: int = 500
    hmc_steps: int | None = None
    therm: int = 50
    schedule: str = "hmc:1,flow:1"
    md_steps: int = 4
    flow_batch: int = 16
    bootstrap: int = 500
    seed: int = 1
    device: str = "cpu"
    no_progress: bool = False


INTEGRATOR = "LCM_STS_MIN_NORM_2"  # Omelyan 2MN: tau 1 in --md-steps steps


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
    """``qcd-bridge train`` on ``train_nrow`` for ``train_steps`` (at most ``train_seconds``)
    into ``OUT/model``."""
    from .train import run_train, train_settings

    mdir = out / "model"
    if mdir.exists():
        shutil.rmtree(mdir)
    cfg = out / "train.json"
    settings, lr = ARCHS[args.arch]
    cfg.write_text(json.dumps(settings) + "\n")
    s = train_settings(
        cfg, group="u1", nrow=list(args.train_nrow), beta=float(args.beta),
        steps=args.train_steps, time_budget=float(args.train_seconds), batch=64, lr=lr,
        seed=args.seed, out=str(mdir), eval_samples=1024, eval_batch=256,
        log_every=0 if args.no_progress else 100, checkpoint_every=200)
    rc = run_train(s)
    if rc:
        from ..errors import ConfigError

        raise ConfigError(f"training into {mdir} failed with exit status {rc}")
    return mdir


def _hmc_therm(args: DemoSettings) -> int:
    """HMC's thermalisation: the same fraction of its run as the hybrid's (from the unit field
    the plaquette relaxes over tens of trajectories at beta 6, 32x32; a flow step equilibrates
    at once)."""
    return max(int(args.therm), int(args.therm) * int(args.hmc_steps) // int(args.steps))


def _chain(args: DemoSettings, out: Path, name: str, model: str | None,
           schedule: str, seed: int, steps: int, therm: int) -> dict[str, Any]:
    from .chain import chain_settings, resolve_model, run_chains

    s, explicit = chain_settings(
        model=model, group="u1", nrow=list(args.nrow), beta=float(args.beta),
        schedule=schedule, md_steps=int(args.md_steps), integrator=INTEGRATOR,
        flow_batch=int(args.flow_batch), chains=int(args.chains), steps=int(steps),
        therm=int(therm), start="cold", seed=seed, out=str(out / name),
        checkpoint_every=max(int(steps) // 4, 1), device=args.device)
    flow = resolve_model(s, explicit)
    print(f"[demo] {name}: {args.chains} chains x {steps} cycles of {schedule}", flush=True)
    return run_chains(s, model=flow, progress=False if args.no_progress else None)


def _fmt(value: float | None, error: float | None) -> str:
    """``value(error)`` as in the validation report, ``n/a`` without a value."""
    from ..analysis.format import value_error

    return value_error(value, error, plain=".5f")


def _lattice_and_coupling(args: DemoSettings) -> DemoSettings:
    """``--nrow``/``--train-nrow``/``--beta``; with ``--model`` the lattice and coupling default
    to its training run's (a model that is not a 2D U(1) flow is refused); else 32x32, 8x8 and
    beta 6."""
    from ..errors import ConfigError

    nrow, beta, train_nrow = args.nrow, args.beta, args.train_nrow or [8, 8]
    if args.model:
        from ..flows.checkpoints import load_model

        model, meta = load_model(args.model)
        if int(model.group.nc) != 1 or int(model.nd) != 2:
            raise ConfigError(f"--model {args.model}: the demo runs 2D U(1); the model is for "
                              f"{model.group.name} in {model.nd}D (use `qcd-bridge chain`)")
        train = meta.get("train", {})
        if train.get("nrow"):
            train_nrow = [int(n) for n in train["nrow"]]
            nrow = train_nrow if nrow is None else nrow
        if beta is None and train.get("beta") is not None:
            beta = float(train["beta"])
    return replace(args, nrow=[32, 32] if nrow is None else [int(n) for n in nrow],
                   train_nrow=[int(n) for n in train_nrow],
                   beta=6.0 if beta is None else float(beta),
                   hmc_steps=int(args.hmc_steps or 4 * int(args.steps)))


def _charges(out: Path, name: str, volume: int, chi_exact: float) -> dict[str, Any]:
    """``Q`` per cycle and chain after thermalisation (from the chain file) and its analysis."""
    from ..io.chains import read_chain_observables
    from .scaling import analyse_charge

    obs, _ = read_chain_observables(out / name / "chain.h5")
    q = obs["topological_charge"]
    return {"series": q, **analyse_charge(q, volume, chi_exact)}


def _plot_charges(path: Path, qs: dict[str, Any], schedule: str) -> None:
    """Q against the cycle, first chain of each sampler."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3))
    for name, q in qs.items():
        label = f"hybrid ({schedule} per cycle)" if name == "hybrid" else "HMC (per trajectory)"
        ax.plot(q["series"][:, 0], lw=0.8, drawstyle="steps-mid", label=label)
    ax.set_xlabel("cycle after thermalisation")
    ax.set_ylabel("topological charge Q")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _tau_text(q: dict[str, Any]) -> str:
    tau = q["tau_used"]
    if q["tau_used_kind"] == "gamma":
        return f"{tau:.3g}({q['tau_int_error']:.2g})"
    return f"> {tau:.3g}"


def _rows(args: DemoSettings, runs: dict[str, Any], qs: dict[str, Any],
          exact_p: float, exact_chi: float) -> list[dict[str, Any]]:
    rows = []
    for name, r in runs.items():
        p, q = r["plaquette"], qs[name]
        err = p.get("error") or p.get("naive_error")
        chi_err = q.get("chi_t_error")
        per = r["wall_seconds"] / max(int(r["cycles"]), 1) / max(int(r["chains"]), 1)
        rows.append({
            "sampler": name, "chains": r["chains"], "cycles": r["cycles"],
            "acceptance": r["acceptance"], "plaquette": p["mean"], "plaquette_error": err,
            "plaquette_sigma": ((p["mean"] - exact_p) / err) if err else None,
            "chi_t": q["chi_t"], "chi_t_error": chi_err,
            "chi_t_sigma": ((q["chi_t"] - exact_chi) / chi_err) if chi_err else None,
            "tau_int_Q": q["tau_used"], "tau_int_Q_kind": q["tau_used_kind"],
            "tau_int_Q_error": q["tau_int_error"], "q_changes": q["q_changes"],
            "seconds": r["wall_seconds"], "seconds_per_cycle_per_chain": per,
            "cost_per_independent_Q": per * 2 * q["tau_used"],
            "cost_is_lower_bound": q["tau_used_kind"] != "gamma"})
    return rows


def _print_table(args: DemoSettings, rows: list[dict[str, Any]], exact_p: float,
                 exact_chi: float) -> None:
    print()
    print(f"{'sampler':8s} {'chains x cycles':>16s}  {'acceptance':20s} {'<plaquette>':>13s} "
          f"{'dev/err':>7s}  {'<Q^2>/V':>12s} {'dev/err':>7s} {'Q moves':>7s} "
          f"{'tau_int(Q)':>11s} {'s/indep Q':>10s} {'time':>7s}")
    for row in rows:
        acc = ", ".join(f"{k} {v:.2f}" for k, v in row["acceptance"].items() if v is not None)
        dev = "n/a" if row["plaquette_sigma"] is None else f"{row['plaquette_sigma']:+.1f}"
        cdev = "n/a" if row["chi_t_sigma"] is None else f"{row['chi_t_sigma']:+.1f}"
        tau = (f"> {row['tau_int_Q']:.3g}" if row["cost_is_lower_bound"]
               else f"{row['tau_int_Q']:.3g}")
        cost = ("> " if row["cost_is_lower_bound"] else "") + f"{row['cost_per_independent_Q']:.3g}"
        print(f"{row['sampler']:8s} {row['chains']:>7d} x {row['cycles']:<6d}  {acc:20s} "
              f"{_fmt(row['plaquette'], row['plaquette_error']):>13s} {dev:>7s}  "
              f"{_fmt(row['chi_t'], row['chi_t_error']):>12s} {cdev:>7s} "
              f"{row['q_changes']:>7d} {tau:>11s} {cost:>10s} {row['seconds']:6.1f}s")
    print(f"{'exact':8s} {'':>16s}  {'':20s} {exact_p:>13.6f} {'':>7s}  {exact_chi:>12.6f}")
    print(f"(errors: Gamma method, chains as replicas, after {args.therm} (hybrid) and "
          f"{_hmc_therm(args)} (HMC) thermalisation cycles; dev/err = (mean - exact)/error;"
          f"\n Q moves: changes of Q in all chains; "
          f"tau_int(Q) in cycles (a hybrid cycle is {args.schedule}, an HMC cycle one "
          f"trajectory),\n '>' a lower bound where Q barely moves; s/indep Q = wall seconds "
          f"per cycle and chain of the chain run\n (its measurements and files included) x 2 "
          f"tau_int(Q); benchmarks/bench_scaling.py times the kernels alone)")


def run_demo(args: DemoSettings) -> int:
    """The demo of the module docstring; returns the exit status."""
    from ..analysis.report import write_report
    from ..errors import ConfigError
    from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility
    from .validate import EXIT_DISAGREE, validate

    if int(args.steps) <= int(args.therm) + 1:
        raise ConfigError(f"--steps {args.steps}: expected more cycles than --therm "
                          f"{args.therm} + 1")
    if args.hmc_steps is not None and int(args.hmc_steps) <= int(args.therm) + 1:
        raise ConfigError(f"--hmc-steps {args.hmc_steps}: expected more trajectories than "
                          f"--therm {args.therm} + 1")
    t0 = time.perf_counter()
    args = _lattice_and_coupling(args)
    out = Path(args.out)
    _prepare(out)
    nrow = (int(args.nrow[0]), int(args.nrow[1]))
    lat, tlat = "x".join(map(str, args.nrow)), "x".join(map(str, args.train_nrow))
    print(f"[demo] 2D U(1) at beta = {args.beta:g}: a flow trained on {tlat}, used on {lat}; "
          f"output in {out}/", flush=True)
    t_train = time.perf_counter()
    if args.model:
        model = str(args.model)
        print(f"[demo] using the flow in {model}", flush=True)
    else:
        print(f"[demo] training a small {args.arch} flow on {tlat} for {args.train_steps} steps "
              f"(at most {args.train_seconds:g} s)", flush=True)
        model = str(_train(args, out))
    t_train = time.perf_counter() - t_train
    runs = {}
    for name, sched, seed, mod, steps, therm in (
            ("hybrid", args.schedule, args.seed, model, args.steps, args.therm),
            ("hmc", "hmc:1", args.seed + 1000, None, args.hmc_steps, _hmc_therm(args))):
        t1 = time.perf_counter()
        runs[name] = _chain(args, out, name, mod, sched, seed, int(steps), therm)
        runs[name]["wall_seconds"] = time.perf_counter() - t1
    exact_p = u1_2d_plaquette(float(args.beta), nrow)
    exact_chi = u1_2d_topological_susceptibility(float(args.beta), nrow)
    qs = {name: _charges(out, name, nrow[0] * nrow[1], exact_chi) for name in runs}
    _plot_charges(out / "topological_charge.png", qs, args.schedule)
    observables = ["plaquette"] + (["topological_charge"] if qs["hmc"]["resolved"] else [])
    why = ("" if len(observables) == 2 else
           f"; not Q: HMC's tau_int(Q) is not resolved ({qs['hmc']['q_changes']} changes of Q "
           f"in {args.chains} x {qs['hmc']['n_per_chain']} trajectories), so it is no "
           f"reference for Q - the exact value is")
    print(f"[demo] validating the hybrid ensemble against the HMC ensemble on "
          f"{', '.join(observables)}{why}", flush=True)
    res = validate(str(out / "hybrid" / "chain.h5"), str(out / "hmc" / "chain.h5"),
                   observables=observables, n_boot=int(args.bootstrap), seed=int(args.seed))
    write_report(res, out / "report", overwrite=True)
    rows = _rows(args, runs, qs, exact_p, exact_chi)
    _print_table(args, rows, exact_p, exact_chi)
    print()
    for what, key, exact in (("plaquette", "plaquette", exact_p), ("<Q^2>/V", "chi_t", exact_chi)):
        parts = []
        for row in rows:
            sig = row[f"{key}_sigma"]
            parts.append(f"{row['sampler']} {_fmt(row[key], row[f'{key}_error'])} "
                         f"({'n/a' if sig is None else f'{sig:+.1f}'} sigma)")
        print(f"{what} vs exact (character expansion, {nrow[0]}x{nrow[1]}, beta = "
              f"{args.beta:g}): exact {exact:.6f}; " + "; ".join(parts))
    hyb, hmc = rows
    ratio = hmc["cost_per_independent_Q"] / hyb["cost_per_independent_Q"]
    sign = ">= " if hmc["cost_is_lower_bound"] and not hyb["cost_is_lower_bound"] else (
        "~ " if hyb["cost_is_lower_bound"] else "")
    tun = qs["hmc"]
    est = "" if tun["tau_used_kind"] == "gamma" else (
        f" (tunnelling estimate 2 V chi_t / rate of Q changes: "
        f"{'> ' if tun['tau_tunnel_is_bound'] else '~'}{tun['tau_tunnel']:.3g})")
    print(f"tau_int(Q): hybrid {_tau_text(qs['hybrid'])} cycles, HMC {_tau_text(qs['hmc'])} "
          f"trajectories{est}; cost per independent Q: HMC / hybrid {sign}{ratio:.3g} "
          f"(flow acceptance {hyb['acceptance'].get('flow') or 0:.2f} on {lat})")
    for c in res.observables:
        print(f"validate {c.name}: hybrid {_fmt(c.a.value, c.a.error)}  hmc "
              f"{_fmt(c.b.value, c.b.error)}  p = {c.p_value:.3g}  "
              f"{'ok' if c.passed else 'DISAGREES'}")
    verdict = "PASS" if res.passed else "FAIL"
    total = time.perf_counter() - t0
    (out / _MARK).write_text(json.dumps({
        "nrow": list(nrow), "train_nrow": list(args.train_nrow), "beta": float(args.beta),
        "model": model, "rows": rows, "validated": observables,
        "hmc_over_hybrid_cost_per_independent_Q": ratio,
        "hmc_tau_tunnel": tun["tau_tunnel"],
        "exact": {"plaquette": exact_p, "chi_t": exact_chi}, "validation": verdict,
        "report": str(out / "report" / "report.md"),
        "q_plot": str(out / "topological_charge.png"), "train_seconds": t_train,
        "total_seconds": total}, indent=2) + "\n")
    print(f"validation {verdict}: the report is {out / 'report' / 'report.md'} (figures and "
          f"summary.json beside it), Q against the cycle in {out / 'topological_charge.png'}; "
          f"total {total:.0f} s")
    return 0 if res.passed else EXIT_DISAGREE
