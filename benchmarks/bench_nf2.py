"""The Nf = 2 demonstration of arXiv:2208.03832 (sec. 3) on a CPU: 4^4, beta 1, kappa 0.1.

(a) ``train``: a joint model (residual staple marginal, pseudofermion flow with the first-order
    initialisation, docs/nf2.md), marginal stage for ``--marginal-budget`` seconds, then the
    conditional stage for ``--conditional-budget`` seconds (training time only; evaluations are
    not counted).  Every ``--eval-every`` seconds: the multi-draw ESS (``--pf-draws``) on
    ``--eval-n`` fresh fields and the exact-determinant ESS of the first ``--exact-n`` of them.
    At the end: ESS against ``N_pf`` (1, 4, 16, 64) on ``--sweep-n`` fields, and the final
    multi-draw and exact ESS on ``--final-n`` fields (``--exact-n`` of them exact).  The
    model is written as a ``qcd-bridge train`` run directory (``--model-dir``), which ``sample``,
    ``chain`` and ``run`` read.
(b) ``demo``: with that model, ``qcd-bridge sample`` (``--n`` fields, weights with
    ``--pf-draws``), ``qcd-bridge measure`` (plaquette, temporal Polyakov loop, pion correlator
    at kappa 0.1, Q after Wilson flow to t/a^2 = 4 on the first ``--n-flow`` fields), Chroma's
    HMC reference from ``--chroma`` (``trajectories.csv``: the first 500 trajectories dropped,
    thinned by 10 as in the paper), ``qcd-bridge validate`` (plaquette, Polyakov loop; report
    under ``--report``), the reweighted plaquette against Chroma's mean, and the cost per
    effective sample against Chroma HMC's cost per independent configuration (Chroma Release,
    26.0 ms per trajectory, ../shared/reference/chroma/README.md; tau_int from the same file).

(c) ``hmc``: the built-in pseudofermion HMC at Chroma's parameters (its plaquette agrees with
    Chroma's) as the reference for the pion correlator and Q, which Chroma's reference holds for
    five configurations only; ``qcd-bridge validate`` of the flow ensemble against it.

    OMP_NUM_THREADS=1 python benchmarks/bench_nf2.py train demo hmc [--out FILE.json]

Results are merged into the JSON file (one key per part).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from bridge.flows.joint_training import (
    ConditionalLoss,
    MarginalLoss,
    make_joint_flow,
    stage_parameters,
)
from bridge.flows.training import TrainConfig, Trainer
from bridge.jobs.train_nf2 import evaluate_joint

NROW, BETA, KAPPA = [4, 4, 4, 4], 1.0, 0.1
CHROMA_MS_PER_TRAJ = 26.0  # Release build, Nf=2 4^4, tau 0.5, 5 steps (reference README)


def _eval(model, n: int, n_exact: int, pf_draws: int, seed: int) -> dict:
    t0 = time.perf_counter()
    ev = evaluate_joint(model, NROW, BETA, n, 64, pf_draws, seed, n_exact)
    ev["eval_seconds"] = time.perf_counter() - t0
    return ev


def train(args: argparse.Namespace) -> dict:
    torch.manual_seed(args.seed)
    model = make_joint_flow(KAPPA, conditional={"n_layers": args.pf_layers})
    curve, trained = [], 0.0
    stages = (("marginal", args.marginal_budget, 0.02), ("conditional",
                                                         args.conditional_budget, 1e-3))
    trainer = None
    for k, (stage, budget, lr) in enumerate(stages):
        if stage == "marginal":
            loss = MarginalLoss(model, BETA, args.batch, NROW)
        else:
            loss = ConditionalLoss(model, BETA, args.batch, NROW, refresh=4)
        cfg = TrainConfig(nrow=NROW, beta=BETA, batch=args.batch, lr=lr, adam_eps=1e-8,
                          clip_value=0.1, total_steps=10**6, seed=args.seed + 1000 * k,
                          extra={"kappa": KAPPA, "pf_draws": args.pf_draws, "stage": stage})
        trainer = Trainer(model, cfg, loss=loss, parameters=stage_parameters(model, stage))
        spent, next_eval = 0.0, 0.0
        while spent < budget:
            if spent >= next_eval:
                stage_parameters(model, "joint")
                ev = _eval(model, args.eval_n, args.exact_n, args.pf_draws, 10_000 + len(curve))
                stage_parameters(model, stage)
                curve.append({"stage": stage, "train_seconds": trained + spent,
                              "step": trainer.step_count, **ev})
                print(f"  [{stage}] t={trained + spent:7.1f}s step {trainer.step_count:5d} "
                      f"ESS {ev['ess']:.4f} (N_pf {args.pf_draws}), exact-det ESS "
                      f"{ev['ess_exact_det']:.4f}", flush=True)
                next_eval += args.eval_every
            spent += trainer.step()["seconds"]
        trained += spent
        Path(args.model_dir).mkdir(parents=True, exist_ok=True)
        trainer.save(Path(args.model_dir) / f"stage-{stage}.pt")
    trainer.save(Path(args.model_dir) / "checkpoint.pt")
    stage_parameters(model, "joint")
    final = _eval(model, args.final_n, args.exact_n, args.pf_draws, 99_999)
    by_npf = {}
    for n_pf in (1, 4, 16, 64):
        by_npf[n_pf] = _eval(model, args.sweep_n, 0, n_pf, 77_777)["ess"]
        print(f"  N_pf {n_pf:3d}: ESS {by_npf[n_pf]:.4f}", flush=True)
    print(f"  final: ESS {final['ess']:.4f} (N_pf {args.pf_draws}, {args.final_n} fields), "
          f"exact-det ESS {final['ess_exact_det']:.4f} ({final['exact_det_samples']})")
    return {"nrow": NROW, "beta": BETA, "kappa": KAPPA, "batch": args.batch,
            "train_seconds": trained, "marginal_budget_s": args.marginal_budget,
            "conditional_budget_s": args.conditional_budget, "curve": curve, "final": final,
            "ess_by_pf_draws": by_npf, "ess_by_pf_draws_fields": args.sweep_n,
            "model": model.config, "model_dir": str(args.model_dir)}


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    shown = cmd if len(cmd) < 24 else [*cmd[:8], f"... ({len(cmd) - 12} more)", *cmd[-4:]]
    print("  $", " ".join(shown), flush=True)
    subprocess.run(cmd, check=False)
    return time.perf_counter() - t0


def _chroma_reference(path: Path, out: Path) -> dict:
    """Chroma's trajectories (the first 500 dropped, thinned by 10) as an .npz ensemble, and the
    plaquette's mean, error and tau_int from all kept trajectories (pyerrors)."""
    import pyerrors as pe

    rows = list(csv.DictReader(path.open()))
    rows = [r for r in rows if r["warmup"] == "False"][500:]
    plaq = np.array([float(r["w_plaq"]) for r in rows])
    obs = pe.Obs([plaq], ["chroma"])
    obs.gamma_method()
    thin = rows[::10]
    np.savez(out, traj=np.array([int(r["update_no"]) for r in thin]),
             plaquette=np.array([float(r["w_plaq"]) for r in thin]),
             polyakov=np.array([[float(r["poly_t_re"]), float(r["poly_t_im"])] for r in thin]),
             nrow=np.array(NROW), group=np.array("SU3"))
    return {"trajectories": len(rows), "thinned": len(thin), "plaquette": float(obs.value),
            "plaquette_error": float(obs.dvalue), "tau_int": float(obs.e_tauint["chroma"])}


def demo(args: argparse.Namespace) -> dict:
    from bridge.analysis.stats import Series  # noqa: F401 - the installed package is the one used
    from bridge.io.hdf5 import EnsembleStore
    from bridge.mcmc.reweighting import ess, reweighted_mean

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "flow.h5"
    qb = [sys.executable, "-m", "bridge.cli"]
    t_sample = _run(qb + ["sample", args.model_dir, "--n", str(args.n), "--out", str(store),
                          "--pf-draws", str(args.pf_draws), "--batch", "64", "--overwrite"])
    t_meas = _run(qb + ["measure", str(store), "-O", "plaquette", "-O", "polyakov", "--quiet"])
    t_pion = _run(qb + ["measure", str(store), "-O", "pion", "--kappa", str(KAPPA), "--quiet"])
    with EnsembleStore(store, "r") as st:
        logw = torch.tensor([st.metadata(i)["params"]["log_w"] for i in range(len(st))])
        plaq = torch.tensor(st.measurement("plaquette")[0], dtype=torch.float64)
    flow_mean, flow_err = reweighted_mean(plaq, logw)
    out: dict = {"n": args.n, "pf_draws": args.pf_draws, "ess": ess(logw),
                 "sample_seconds": t_sample, "measure_seconds": t_meas + t_pion,
                 "plaquette": flow_mean, "plaquette_error": flow_err}
    chroma = Path(args.chroma) / "trajectories.csv"
    if chroma.exists():
        ref = _chroma_reference(chroma, work / "chroma_hmc.npz")
        out["chroma"] = ref
        out["plaquette_sigma"] = (flow_mean - ref["plaquette"]) / math.hypot(
            flow_err, ref["plaquette_error"])
        out["validate_exit"] = subprocess.run(
            qb + ["validate", str(store), str(work / "chroma_hmc.npz"), "--observables",
                  "plaquette", "polyakov[0]", "polyakov[1]", "--out", args.report,
                  "--overwrite", "--quiet"], check=False).returncode
        # cost per effective sample (sampling + weights) vs HMC per independent configuration
        flow_cost = t_sample / (args.n * out["ess"])
        hmc_cost = 2 * ref["tau_int"] * CHROMA_MS_PER_TRAJ / 1000
        out.update(flow_seconds_per_effective_sample=flow_cost,
                   chroma_seconds_per_independent_config=hmc_cost,
                   cost_ratio=flow_cost / hmc_cost)
        print(f"  plaquette: flow {flow_mean:.5f}({flow_err:.5f}) vs Chroma "
              f"{ref['plaquette']:.5f}({ref['plaquette_error']:.5f}): "
              f"{out['plaquette_sigma']:+.2f} sigma; validate exit {out['validate_exit']}")
        print(f"  cost per effective sample {flow_cost:.3f} s vs Chroma "
              f"{hmc_cost:.3f} s per independent configuration: ratio {out['cost_ratio']:.1f}")
    if args.n_flow:
        sub = work / "flow_q.h5"
        t_q = _run(qb + ["sample", args.model_dir, "--n", str(args.n_flow), "--out", str(sub),
                         "--pf-draws", str(args.pf_draws), "--batch", "64", "--overwrite"])
        t_q += _run(qb + ["measure", str(sub), "-O", "topological_charge", "--flow-time", "4",
                          "--quiet"])
        with EnsembleStore(sub, "r") as st:
            lw = torch.tensor([st.metadata(i)["params"]["log_w"] for i in range(len(st))])
            q = torch.tensor(st.measurement("topological_charge[flow_time=4]")[0],
                             dtype=torch.float64)
        out["q2_flow_t4"] = reweighted_mean(q**2, lw)
        out["q_seconds"] = t_q
        print(f"  <Q^2> after Wilson flow to t = 4: {out['q2_flow_t4'][0]:.4f}"
              f"({out['q2_flow_t4'][1]:.4f}) on {args.n_flow} weighted fields")
    return out


def hmc(args: argparse.Namespace) -> dict:
    """The built-in pseudofermion HMC at Chroma's parameters (even-odd Wilson, tau 0.5, 5
    LCM_STS_LEAPFROG steps; its plaquette agrees with Chroma's), for the observables Chroma's
    reference does not hold per configuration: pion correlator and Q after Wilson flow; then
    ``qcd-bridge validate`` of the flow ensemble against it on those."""
    work = Path(args.work)
    qb = [sys.executable, "-m", "bridge.cli"]
    chain = work / "hmc"
    t0 = time.perf_counter()
    chains = 4
    if not (chain / "summary.json").exists():
        _run(qb + ["chain", "--group", "su3", "--nrow", *map(str, NROW), "--beta", str(BETA),
                   "--kappa", str(KAPPA), "--tau", "0.5", "--md-steps", "5", "--chains",
                   str(chains), "--steps", str(args.hmc_steps), "--therm", "50",
                   "--save-every", "4", "--out", str(chain), "--no-progress"])
    t_hmc = time.perf_counter() - t0
    stores, n_files, t_meas = [], 0, 0.0
    for c in range(chains):  # one store (replica) per chain: trajectory numbers are per chain
        files = sorted(chain.glob(f"cfg/chain{c}_cfg_*.lime"),
                       key=lambda f: int(f.stem.rsplit("_", 1)[1]))
        files = [f for f in files if int(f.stem.rsplit("_", 1)[1]) > 50]
        store = work / f"hmc.c{c}.h5"
        if store.exists():
            store.unlink()
        t_meas += _run(qb + ["measure", *map(str, files), "-o", str(store), "-O", "pion",
                             "--kappa", str(KAPPA), "--quiet"])
        t_meas += _run(qb + ["measure", *map(str, files[:args.n_flow // chains]), "-o",
                             str(store), "-O", "topological_charge", "--flow-time", "4",
                             "--quiet"])
        stores.append(str(store))
        n_files += len(files)
    rc = subprocess.run(qb + ["validate", str(work / "flow.h5"), ",".join(stores),
                              "--observables",
                              *[f"pion[kappa={KAPPA}][{t}]" for t in range(NROW[3])],
                              "--out", args.report + "-pion", "--overwrite", "--quiet"],
                        check=False).returncode
    rq = subprocess.run(qb + ["validate", str(work / "flow_q.h5"), ",".join(stores),
                              "--observables", "topological_charge[flow_time=4]", "--out",
                              args.report + "-q", "--overwrite", "--quiet"],
                        check=False).returncode
    return {"hmc_seconds": t_hmc, "configs": n_files, "measure_seconds": t_meas,
            "validate_pion_exit": rc, "validate_q_exit": rq}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("parts", nargs="+", choices=["train", "demo", "hmc"])
    p.add_argument("--marginal-budget", type=float, default=1200.0)
    p.add_argument("--conditional-budget", type=float, default=600.0)
    p.add_argument("--eval-every", type=float, default=300.0)
    p.add_argument("--eval-n", type=int, default=1024)
    p.add_argument("--exact-n", type=int, default=256)
    p.add_argument("--final-n", type=int, default=4096)
    p.add_argument("--sweep-n", type=int, default=256, help="fields of the N_pf sweep")
    p.add_argument("--pf-layers", type=int, default=14, help="pseudofermion flow layers")
    p.add_argument("--pf-draws", type=int, default=16)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--model-dir", default="nf2-model")
    p.add_argument("--n", type=int, default=2048)
    p.add_argument("--n-flow", type=int, default=128)
    p.add_argument("--hmc-steps", type=int, default=450, help="HMC cycles (4 chains) of the "
                   "pion/Q reference (every 4th saved after 50)")
    p.add_argument("--work", default="nf2-demo")
    p.add_argument("--report", default="nf2-demo/report")
    p.add_argument("--chroma", default="../shared/reference/chroma/nf2_b1.0_k0.1_4x4")
    p.add_argument("--out", default="benchmarks/results/nf2.json")
    args = p.parse_args()
    path = Path(args.out)
    data = json.loads(path.read_text()) if path.exists() else {}
    data.setdefault("meta", {}).update(threads=torch.get_num_threads(),
                                        date=time.strftime("%Y-%m-%d"))
    for part in args.parts:
        print(f"== {part}", flush=True)
        data[part] = {"train": train, "demo": demo, "hmc": hmc}[part](args)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=1, default=float))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
