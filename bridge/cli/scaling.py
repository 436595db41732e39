"""``qcd-bridge scaling``: the volume scaling study of a flow family (:mod:`bridge.jobs.scaling`,
in the manner of arXiv:2211.07541)."""

from __future__ import annotations

import argparse

__all__ = ["add_scaling_parser"]


def add_scaling_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge scaling``."""
    p = sub.add_parser(
        "scaling",
        help="scaling study of a flow family (2D U(1) or 4D SU(3)) against the volume and the "
             "lattice spacing: ESS of a transferred model, training cost to a target ESS, "
             "tau_int and cost of hybrid vs HMC chains, fitted exponents, JSON and plots",
        description=(
            "For each beta: train a fixed model on --train-L; for each L: the transferred "
            "model's ESS and acceptance, training seconds to --target-ess from scratch and "
            "from the transferred start, hybrid (flow + HMC) and HMC chains with tau_int of Q "
            "and of the plaquette (Gamma method) and the cost per independent sample (in 4D "
            "SU(3) Q is the clover charge after a short Wilson flow, times are CPU seconds); "
            "fits cost ~ V^z and, for 2D U(1) at several betas, cost ~ xi_t^z with "
            "xi_t = (chi_t a^2)^(-1/2) the exact inverse spacing. Writes OUT/scaling.json and "
            "OUT/scaling_{ess,training,cost}.png (scaling_spacing.png for several 2D betas, "
            "scaling_chains.png for 4D SU(3) with chains)."),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--family", choices=["plaquette", "coupling", "residual"],
                   default="plaquette",
                   help="flow family: 2D U(1) with the constrained plaquette flow (path "
                        "gradient) or 8 gauge-equivariant coupling layers; 4D SU(3) with one "
                        "cycle of residual staple layers")
    p.add_argument("--L", nargs="+", type=int, default=[8, 16, 32],
                   help="lattice sizes L^nd")
    p.add_argument("--betas", nargs="+", type=float, default=None,
                   help="couplings (None: 6, unless --physical-volume)")
    p.add_argument("--physical-volume", type=float, default=None, metavar="V_CHI",
                   help="2D U(1): instead of --betas, one beta per L with V chi_t = V_CHI "
                        "(exact infinite-volume chi_t): a line of constant physics")
    p.add_argument("--train-L", type=int, default=8, help="lattice of the fixed models")
    p.add_argument("--train-steps", type=int, default=600, help="steps of each fixed model")
    p.add_argument("--batch", type=int, default=64, help="samples per training step")
    p.add_argument("--lr", type=float, default=None, help="initial learning rate, cosine "
                   "decay to 3e-4 (default: the family's, 0.2 plaquette, 3e-3 coupling)")
    p.add_argument("--target-ess", type=float, default=0.5, help="ESS to train to")
    p.add_argument("--target-L", nargs="*", type=int, default=None,
                   help="the L (of --L) where training to the target is measured (not given: "
                        "all; given without values: none)")
    p.add_argument("--chain-L", nargs="*", type=int, default=None,
                   help="the L (of --L) where the hybrid and HMC chains run (not given: all; "
                        "given without values: none)")
    p.add_argument("--window", type=int, default=10, help="steps of the batch-ESS mean")
    p.add_argument("--target-max-steps", type=int, default=300,
                   help="at most this many steps to the target")
    p.add_argument("--target-max-seconds", type=float, default=60.0,
                   help="at most this many seconds to the target")
    p.add_argument("--eval-samples", type=int, default=256, help="fresh samples per ESS")
    p.add_argument("--chains", type=int, default=4, help="hybrid chains")
    p.add_argument("--cycles", type=int, default=300, help="cycles per hybrid chain")
    p.add_argument("--flow-per-cycle", type=int, default=1, help="flow steps per hybrid cycle "
                   "(after one HMC trajectory)")
    p.add_argument("--flow-batch", type=int, default=16, help="proposals drawn at a time")
    p.add_argument("--hmc-chains", type=int, default=4, help="HMC chains")
    p.add_argument("--hmc-trajectories", type=int, default=2000,
                   help="trajectories per HMC chain")
    p.add_argument("--therm", type=int, default=20, help="steps left out of the analysis")
    p.add_argument("--q-flow-time", type=float, default=0.5,
                   help="4D SU(3): Wilson flow time of the clover charge Q in the chains")
    p.add_argument("--q-flow-eps", type=float, default=0.1, help="its RK3 step")
    p.add_argument("--seed", type=int, default=0, help="seed of models and chains")
    p.add_argument("--out", default="scaling", help="output directory")
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import dataclasses

    from ..jobs.scaling import ScalingSettings, run_scaling

    keys = [f.name for f in dataclasses.fields(ScalingSettings)]
    run_scaling(ScalingSettings(**{k: getattr(args, k) for k in keys}))
    return 0
