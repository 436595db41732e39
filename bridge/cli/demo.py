"""``qcd-bridge demo``: the main job end to end (:mod:`bridge.jobs.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["add_demo_parser"]


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
    p.add_argument("--arch", choices=["coupling", "plaquette"], default="coupling",
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
    p.set_defaults(func=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    import dataclasses

    from ..jobs.demo import DemoSettings, run_demo

    keys = [f.name for f in dataclasses.fields(DemoSettings)]
    return run_demo(DemoSettings(**{k: getattr(args, k) for k in keys}))
