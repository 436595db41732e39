"""``qcd-bridge demo``: the main job end to end (:mod:`bridge.jobs.demo`)."""

from __future__ import annotations

import argparse

__all__ = ["add_demo_parser"]


def add_demo_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge demo``."""
    p = sub.add_parser(
        "demo",
        help="the main job end to end: train a 2D U(1) flow on 8x8, use it on 32x32 at beta 6 "
             "where HMC's topological charge is frozen, run hybrid and HMC chains side by "
             "side, validate, compare tau_int(Q) and the exact values",
        description=(
            "Train (or load with --model) the constrained plaquette flow of 2D U(1) on a small "
            "lattice, transfer it to a larger one at a coupling where HMC's topological charge "
            "is frozen, run hybrid (HMC + flow) and pure-HMC chains with `qcd-bridge chain`, "
            "print tau_int(Q) of both, the cost per independent Q and the exact plaquette "
            "and <Q^2>/V (character expansion), validate the hybrid ensemble against the HMC "
            "one with `qcd-bridge validate` and print where the report and plots are. A few "
            "minutes on one CPU core with the defaults; shrink with --train-steps, --steps "
            "and --nrow. (The former random-field demo is `qcd-bridge field`.)"),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", help="use this `qcd-bridge train` run instead of training one "
                   "(lattice and coupling then default to its training run's)")
    p.add_argument("--arch", choices=["plaquette", "coupling"], default="plaquette",
                   help="flow to train: the constrained plaquette flow of 2D U(1) (path "
                        "gradient; docs/flows.md), or 8 gauge-equivariant coupling layers")
    p.add_argument("--out", default="qcd-bridge-demo", help="output directory")
    p.add_argument("--nrow", nargs=2, type=int, default=None, metavar="L",
                   help="lattice of the chains (None: 32 32, or the training lattice of --model)")
    p.add_argument("--train-nrow", nargs=2, type=int, default=None, metavar="L",
                   help="lattice of the training (None: 8 8)")
    p.add_argument("--beta", type=float, default=None,
                   help="Wilson gauge coupling (None: 6.0, or the coupling of --model)")
    p.add_argument("--train-steps", type=int, default=600, help="optimisation steps (plaquette "
                   "flow: lr 0.2, cosine decay to 3e-4 over these steps)")
    p.add_argument("--train-seconds", type=float, default=300.0,
                   help="training time budget in seconds (the steps normally end first, so "
                        "that the model does not depend on the machine's speed)")
    p.add_argument("--chains", type=int, default=4, help="independent chains per sampler")
    p.add_argument("--steps", type=int, default=500, help="cycles per hybrid chain")
    p.add_argument("--hmc-steps", type=int, default=None,
                   help="trajectories per HMC chain (None: 4 x --steps)")
    p.add_argument("--therm", type=int, default=50, help="thermalisation cycles left out")
    p.add_argument("--schedule", default="hmc:1,flow:1", help="kernels of one hybrid cycle")
    p.add_argument("--md-steps", type=int, default=4,
                   help="Omelyan (2MN) steps per HMC trajectory of length 1")
    p.add_argument("--flow-batch", type=int, default=16, help="flow proposals drawn at a time")
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
