"""``qcd-bridge chain``: hybrid Markov chains (flow Metropolis + HMC) with records, checkpoints
and a progress bar; the job is :mod:`bridge.jobs.chain`."""

from __future__ import annotations

import argparse

from .common import GROUP_CHOICES, given

__all__ = ["add_chain_parser"]

# the settings the options set (bridge.jobs.chain.ChainSettings fields)
_KEYS = ["model", "group", "nrow", "beta", "schedule", "mixture", "tau", "md_steps",
         "integrator", "flow_batch", "chains", "steps", "therm", "start", "seed", "out",
         "checkpoint_every", "save_every", "polyakov", "device", "precision", "kappa", "c_sw",
         "pf_draws", "prior_steps"]


def add_chain_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge chain``."""
    p = sub.add_parser(
        "chain",
        help="run hybrid Markov chains (flow Metropolis + HMC) with records, checkpoints and "
             "a progress bar",
        description=(
            "Run batched hybrid Markov chains: flow-proposal Metropolis steps (independence "
            "Metropolis with a trained flow) interleaved with HMC trajectories, exact for "
            "exp(-S)/Z. (`sample` draws independent flow samples for reweighting; `run` is "
            "the Chroma drop-in workflow; hence `chain`.) Writes OUT/chain.h5 (per-step "
            "records, observables per cycle, fields every --save-every cycles; readable by "
            "`qcd-bridge validate`), OUT/checkpoint.pt and OUT/summary.json. Under torchrun "
            "each rank runs its own chains into OUT/chain.rank<r>.h5. See docs/sampler.md."),
    )
    p.add_argument("config", nargs="?", help="JSON file with the settings (options override)")
    p.add_argument("--model", help="`qcd-bridge train` run directory or checkpoint (needed for "
                   "flow steps; group, lattice and beta default to the model's), or 'analytic': "
                   "the exact plaquette-variable proposal of 2D U(1) (bridge.flows.analytic); a "
                   "stochastic normalizing flow (train --arch snf) runs NE-MCMC (schedule "
                   "nemcmc:1, docs/nonequilibrium.md)")
    p.add_argument("--group", choices=GROUP_CHOICES, help="gauge group (default u1)")
    p.add_argument("--nrow", nargs="+", type=int, metavar="L",
                   help="lattice extents, 2 or 4 of them (default 8 8)")
    p.add_argument("--beta", type=float, help="Wilson gauge coupling (default 2.0)")
    p.add_argument("--schedule", help="kernels of one cycle in order, KERNEL:COUNT,... "
                   "(default hmc:1,flow:4 with --model, nemcmc:1 with an SNF model, hmc:1 "
                   "without)")
    p.add_argument("--mixture", help="one random kernel per cycle with these probabilities, "
                   "e.g. hmc:0.3,flow:0.7")
    p.add_argument("--tau", type=float, help="HMC trajectory length (default 1.0)")
    p.add_argument("--md-steps", type=int, help="HMC integration steps per trajectory "
                   "(default 10)")
    p.add_argument("--integrator", help="Chroma integrator name (default LCM_STS_LEAPFROG)")
    p.add_argument("--flow-batch", type=int, help="flow proposals per chain drawn at a time "
                   "(default 16)")
    p.add_argument("--chains", type=int, help="independent chains (per rank; default 4)")
    p.add_argument("--steps", type=int, help="total cycles, counting those before --resume "
                   "(default 100)")
    p.add_argument("--therm", type=int, help="first cycles left out of the summary and of "
                   "`qcd-bridge validate` (default 0)")
    p.add_argument("--start", help="hot, cold or a gauge file (default hot; with an SNF model "
                   "the prior chain's start, a configuration at beta0, e.g. Chroma's)")
    p.add_argument("--seed", type=int, help="seed of all random streams (default 0)")
    p.add_argument("--out", help="output directory (default chain-run)")
    p.add_argument("--checkpoint-every", type=int, help="cycles between checkpoints "
                   "(default 50; 0: only at the end)")
    p.add_argument("--save-every", type=int, help="cycles between saved fields (default 0: "
                   "none); 4D SU(3) also as ILDG files")
    p.add_argument("--polyakov", action="store_true", help="also record the Polyakov loop")
    p.add_argument("--device", help="torch device (default cpu)")
    p.add_argument("--precision", type=int, choices=[32, 64], help="bits per real number "
                   "(default 64)")
    p.add_argument("--kappa", type=float, help="Nf = 2 Wilson fermions: pseudofermion HMC and, "
                   "with a joint model, pseudo-marginal flow steps (4D SU(3); default: the "
                   "model's, or none)")
    p.add_argument("--c-sw", type=float, help="clover coefficient of the fermions (default 0)")
    p.add_argument("--pf-draws", type=int, metavar="N", help="pseudofermion draws per proposal "
                   "in the flow step's determinant estimate (default 16)")
    p.add_argument("--prior-steps", type=int, metavar="K", help="NE-MCMC: updates of the prior "
                   "chain at beta0 between proposals (default 1)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--progress", action="store_true", dest="force_progress",
                   help="show progress also when stderr is not a terminal (a line every ~10%%)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_chain)


def _run_chain(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from ..errors import ConfigError
    from ..jobs.chain import chain_settings, resolve_model, run_chains
    from ..jobs.chain_stats import summary_lines

    options = given(args, _KEYS)
    s, explicit = chain_settings(args.config, **options)
    if args.resume:
        cfg = Path(s.out) / "config.json"
        if not cfg.exists():
            raise ConfigError(f"--resume: no settings {cfg} of a run to resume")
        saved = json.loads(cfg.read_text())
        s, explicit = chain_settings(args.config, saved=saved, **options)
        explicit |= {"group", "nrow", "beta"}
    model = resolve_model(s, explicit)
    progress = False if args.no_progress else (True if args.force_progress else None)
    summary = run_chains(s, model=model, resume=args.resume, progress=progress)
    import torch.distributed as dist

    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if rank == 0:
        for line in summary_lines(summary):
            print(line)
        print(f"wrote {', '.join(summary['files'])} and {Path(s.out) / 'summary.json'}")
    return 0
