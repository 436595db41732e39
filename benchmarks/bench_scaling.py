"""Volume scaling of the flow families (``qcd-bridge scaling``, bridge.jobs.scaling, in the manner
of arXiv:2211.07541; 2D U(1), and 4D SU(3) with ``--family residual``) and the transfer target
8x8 -> 32x32 at beta 6.

Runs :func:`bridge.jobs.scaling.run_scaling` with the options given (the command's own, defaults
below: L 8 12 16 24 32, beta 6, plaquette family, fixed model 600 steps on 8x8, 5000 HMC
trajectories per chain), writes ``benchmarks/results/scaling.json`` (through
``benchmarks/_results.py``: one row per (L, beta) with the transferred model's ESS and acceptance,
training to the target, hybrid and HMC tau_int and costs; the fits in the metadata) and the
figures into ``--out`` (default ``benchmarks/results/scaling/``), and prints the target:
at (``--target-point-L``, ``--target-beta``) the acceptance of the transferred model (goal
>= 0.5) and HMC's cost per independent Q over the hybrid's (goal >= 100; ">=" where HMC's
tau_int(Q) is only a lower bound in the same run).

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py
    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --betas 4 6 --L 8 16 32
    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py \\
        --reuse benchmarks/results/scaling/scaling.json    # refit; the target and long HMC

4D SU(3) with chains (the residual flow trained on 4^4 at strong coupling, hybrid and HMC
chains on 4^4 and 6^4; ``--target-L`` without values: no training to a target; CPU seconds;
about 15 min of one core):

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --family residual --L 4 6 \\
        --betas 0.5 1.0 --train-L 4 --train-steps 150 --batch 16 --eval-samples 128 \\
        --target-L --chains 4 --cycles 200 --hmc-chains 4 --hmc-trajectories 300 \\
        --target-hmc-trajectories 0 --json benchmarks/results/scaling_su3_chains.json \\
        --out benchmarks/results/scaling_su3_chains

``--target-hmc-trajectories`` (default 20000) adds a longer HMC run at the target point alone,
for a tighter bound on HMC's tau_int(Q) there.

``--combine A.json B.json ...`` runs nothing: it merges 2D U(1) studies (results files of this
script or ``scaling.json`` of the command) and fits their costs against the exact inverse
spacing ``xi_t = (chi_t a^2)^(-1/2)`` at fixed L and at fixed physical volume
(:mod:`bridge.jobs.scaling_spacing`), writing ``--json`` and ``OUT/scaling_spacing.png``:

    OMP_NUM_THREADS=1 python benchmarks/bench_scaling.py --physical-volume 1 --L 8 12 16 24 \\
        --target-hmc-trajectories 0 --json benchmarks/results/scaling_lcp.json \\
        --out benchmarks/results/scaling_lcp          # a line of constant physics, V chi_t = 1
    python benchmarks/bench_scaling.py --combine benchmarks/results/scaling{,_beta2,_beta4,\\
        _beta7,_lcp}.json --json benchmarks/results/scaling_spacing.json \\
        --out benchmarks/results/scaling_spacing
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # this checkout's bridge
from _results import write_results  # noqa: E402

from bridge.cli.scaling import add_scaling_parser  # noqa: E402
from bridge.jobs.scaling import (  # noqa: E402
    FIT_KEYS,
    ScalingSettings,
    long_hmc,
    refit,
    run_scaling,
)
from bridge.jobs.scaling_spacing import spacing_lines, spacing_study  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULTS = {"L": [8, 12, 16, 24, 32], "train_steps": 600,
            "hmc_trajectories": 5000, "out": str(RESULTS / "scaling")}


def target(result: dict, L: int, beta: float) -> dict | None:
    """The transfer target at ``(L, beta)``: acceptance and the HMC / hybrid cost ratio."""
    for p in result["points"]:
        if p["L"] == L and p["beta"] == beta:
            h, m = p["hybrid"], p["hmc"]
            return {"L": L, "beta": beta, "train_L": result["settings"]["train_L"],
                    "imh_acceptance": p["transfer"]["acceptance"], "ess": p["transfer"]["ess"],
                    "chain_flow_acceptance": h["acceptance"].get("flow"),
                    "hybrid_tau_int_q": h["tau_int_q"], "hmc_tau_int_q": m["tau_int_q"],
                    "hmc_tau_int_q_kind": m["tau_int_q_kind"],
                    "hybrid_cost_per_independent_q": h["cost_per_independent_q"],
                    "hmc_cost_per_independent_q": m["cost_per_independent_q"],
                    "ratio": p["hmc_over_hybrid_cost_q"],
                    "ratio_is_lower_bound": p["ratio_is_lower_bound"],
                    "acceptance_goal_met": p["transfer"]["acceptance"] >= 0.5,
                    "ratio_goal_met": p["hmc_over_hybrid_cost_q"] >= 100}
    return None


def combine(files: list[str], json_out: str, rest: list[str]) -> int:
    """The ``--combine`` mode (module docstring): fits against xi_t, JSON and figure."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=str(RESULTS / "scaling_spacing"))
    out = ap.parse_args(rest).out
    res = spacing_study({f: json.loads(Path(f).read_text()) for f in files}, out)
    rows = [{"L": p["L"], "beta": p["beta"], **q} for p, q in
            zip(res["points"], res["spacing_fits"]["points"], strict=True)]
    for r, p in zip(rows, res["points"], strict=True):
        for name, (path, flag) in FIT_KEYS.items():
            part, key = path.split(".")
            r[name] = p.get(part, {}).get(key)
            if flag:
                r[name + "_is_lower_bound"] = bool(p.get(part, {}).get(flag.split(".")[1]))
    print(f"{'L':>4} {'beta':>7} {'xi_t':>7} {'V chi_t':>8} {'s/eff flow':>11} "
          f"{'s/Q hybrid':>11} {'s/Q HMC':>10}")
    for r in rows:
        def f(key: str, r: dict = r) -> str:
            v = r.get(key)
            lb = ">" if r.get(key + "_is_lower_bound") else ""
            return "-" if v is None else f"{lb}{v:.3g}"
        print(f"{r['L']:4d} {r['beta']:7.4g} {r['xi_t']:7.3g} {r['volume_chi']:8.3g} "
              f"{f('cost_per_effective_sample'):>11} {f('hybrid_cost_per_independent_q'):>11} "
              f"{f('hmc_cost_per_independent_q'):>10}")
    for line in spacing_lines(res["spacing_fits"]):
        print(line)
    write_results(json_out, rows, sources=res["sources"], spacing_fits=res["spacing_fits"],
                  figure=res["figure"])
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd")
    add_scaling_parser(sub)
    # allow_abbrev=False: the study's own options (--target-L, --target-ess) pass through
    ap2 = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    ap2.add_argument("--target-point-L", type=int, default=32,
                     help="L of the transfer target point (the study's --target-L is where "
                          "training to the target ESS is measured)")
    ap2.add_argument("--target-beta", type=float, default=6.0)
    ap2.add_argument("--target-hmc-trajectories", type=int, default=20000,
                     help="a longer HMC run at the target point alone (0: none)")
    ap2.add_argument("--json", default=str(RESULTS / "scaling.json"))
    ap2.add_argument("--reuse", metavar="SCALING_JSON", help="take the study from this "
                     "scaling.json (of qcd-bridge scaling) instead of running it")
    ap2.add_argument("--combine", nargs="+", metavar="JSON", help="fit the costs of these 2D "
                     "U(1) studies against xi_t (1/a) instead of running a study")
    own, rest = ap2.parse_known_args(argv)
    if own.combine:
        return combine(own.combine, own.json, rest)
    scaling = sub.choices["scaling"]
    scaling.set_defaults(**DEFAULTS)
    args = scaling.parse_args(rest)
    keys = ScalingSettings.__dataclass_fields__
    if own.reuse:  # the measurements of the file; flags, fits and figures recomputed
        result = refit(json.loads(Path(own.reuse).read_text()), args.out)
    else:
        result = run_scaling(ScalingSettings(**{k: getattr(args, k) for k in keys}))
    rows = [{k: v for k, v in p.items()} for p in result["points"]]
    tgt = target(result, own.target_point_L, own.target_beta)
    if tgt and own.target_hmc_trajectories > 0:
        s = ScalingSettings(**result["settings"])
        long = long_hmc(s, own.target_point_L, own.target_beta, own.target_hmc_trajectories,
                        int(s.seed) + 7)
        cost = long["cost_per_independent_q"]
        tgt["long_hmc"] = {k: v for k, v in long.items() if k != "q"} | {"q": long["q"]}
        tgt["ratio_long_hmc"] = cost / tgt["hybrid_cost_per_independent_q"]
        tgt["ratio_long_hmc_is_lower_bound"] = bool(long["is_lower_bound"])
        print(f"long HMC at L {own.target_point_L}: {long['chains']} x {long['steps']} "
              f"trajectories, "
              f"{long['q']['q_changes']} changes of Q, tau_int(Q) "
              f"{'>' if long['is_lower_bound'] else ''}{long['tau_int_q']:.3g} "
              f"(tunnelling estimate {long['q']['tau_tunnel']:.3g}), cost per independent Q "
              f"{cost:.3g} s")
    write_results(own.json, rows, settings=result["settings"], fits=result["fits"],
                  fixed_models=result["fixed_models"], figures=result["figures"], target=tgt,
                  seconds=result["seconds"])
    if tgt:
        sign = ">= " if tgt["ratio_is_lower_bound"] else ""
        print(f"target {tgt['train_L']}x{tgt['train_L']} -> {tgt['L']}x{tgt['L']}, beta "
              f"{tgt['beta']:g}: IMH acceptance {tgt['imh_acceptance']:.3f} (chain flow "
              f"acceptance {tgt['chain_flow_acceptance']:.3f}; goal >= 0.5), cost per "
              f"independent Q: hybrid {tgt['hybrid_cost_per_independent_q']:.3g} s, HMC "
              f"{tgt['hmc_cost_per_independent_q']:.3g} s ({tgt['hmc_tau_int_q_kind']}), "
              f"ratio {sign}{tgt['ratio']:.3g} (goal >= 100)")
        if "ratio_long_hmc" in tgt:
            sign = ">= " if tgt["ratio_long_hmc_is_lower_bound"] else ""
            print(f"with the long HMC run: ratio {sign}{tgt['ratio_long_hmc']:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
