"""``qcd-bridge train`` and ``qcd-bridge sample``: self-training of a gauge-equivariant flow and
drawing configurations with their log-weights; the jobs are :mod:`bridge.jobs.train`.

``train [CONFIG.json] [options]``: settings come from the JSON file (keys as the long options,
with ``_`` for ``-``, plus ``"model": {...}`` and ``"train": {...}``), overridden by the options
given.  ``--steps`` counts the steps done before a ``--resume``.  The run writes
``OUT/checkpoint.pt``, ``OUT/config.json`` and ``OUT/summary.json`` (ESS and acceptance on
fresh samples after training).  Under ``torchrun`` the run is data parallel.
``--init-from MODEL`` fine-tunes a gauge flow trained on another lattice or coupling.

``sample MODEL --n N --out FILE``: ``FILE.h5`` (HDF5) or an ILDG prefix (4D SU(3) only).
"""

from __future__ import annotations

import argparse

from .common import GROUP_CHOICES, given

__all__ = ["add_train_parser", "add_sample_parser"]

_TRAIN_KEYS = ["group", "nrow", "beta", "time_budget", "steps", "batch", "lr", "seed", "out",
               "eval_samples", "eval_batch", "checkpoint_every", "log_every", "device",
               "kappa", "c_sw", "pf_draws", "stage", "pf_steps", "pf_lr", "mu0", "init",
               "exact_det_samples", "pool_refresh", "beta0", "blocks", "update", "therm",
               "pool_sweeps", "n_hb", "n_or", "init_from", "defect", "c0", "init_scale"]


def add_train_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge train``."""
    p = sub.add_parser(
        "train", help="self-train a gauge-equivariant flow (reverse KL) and write summary.json",
        description=__doc__.split("\n\n")[1] if __doc__ else None)
    p.add_argument("config", nargs="?", help="JSON file with the settings (options override)")
    p.add_argument("--group", choices=GROUP_CHOICES, help="gauge group (default u1)")
    p.add_argument("--nrow", nargs="+", type=int, metavar="L",
                   help="lattice extents, 2 or 4 of them (default 8 8)")
    p.add_argument("--beta", type=float, help="Wilson gauge coupling (default 2.0)")
    p.add_argument("--arch", choices=["coupling", "residual", "plaquette", "snf"],
                   help="flow architecture: spectral coupling layers (default; with --kappa "
                        "residual), residual staple layers, the constrained plaquette flow "
                        "of 2D U(1) (docs/flows.md), or a stochastic normalizing flow "
                        "beta0 -> beta (docs/nonequilibrium.md)")
    p.add_argument("--layers", type=int, metavar="N",
                   help="number of layers (default: two mask cycles for coupling, one for "
                        "residual)")
    p.add_argument("--estimator", choices=["reparam", "path", "reinforce"],
                   help="gradient estimator of the reverse KL (default reparam; path: "
                        "path-derivative, plaquette flow only)")
    p.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop training after this many seconds")
    p.add_argument("--steps", type=int, help="total optimisation steps (default 1000)")
    p.add_argument("--batch", type=int, help="samples per step and rank (default 64)")
    p.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, help="seed of the model and the sample streams")
    p.add_argument("--out", help="output directory (default flow-run)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--init-from", metavar="MODEL",
                   help="fine-tune: start from the parameters of this gauge flow or "
                        "stochastic normalizing flow (checkpoint or run directory), trained on "
                        "another lattice or coupling; the architecture (an SNF's protocol, "
                        "group and layers too) is the model's, summary.json records the history")
    p.add_argument("--device", help="torch device of the model and the samples (default cpu; "
                   "'cuda' under torchrun: one GPU per rank, cuda:LOCAL_RANK, nccl)")
    p.add_argument("--eval-samples", type=int, help="fresh samples for the final ESS (>= 4096 "
                   "by default)")
    p.add_argument("--eval-batch", type=int, help="samples per chunk of the final evaluation")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, help="steps between progress lines (0: none)")
    nf2 = p.add_argument_group(
        "Nf = 2 Wilson fermions (joint model q(U) q(phi|U); 4D SU(3); docs/nf2.md)")
    nf2.add_argument("--kappa", type=float, help="hopping parameter: train a joint model with a "
                     "pseudofermion flow (default: pure gauge)")
    nf2.add_argument("--c-sw", type=float, help="clover coefficient (default 0: Wilson)")
    nf2.add_argument("--stage", choices=["both", "marginal", "conditional", "joint"],
                     help="what to train (default both: marginal, then conditional)")
    nf2.add_argument("--pf-steps", type=int, metavar="N",
                     help="steps of the conditional stage (default --steps)")
    nf2.add_argument("--pf-lr", type=float, help="learning rate of the conditional stage "
                     "(default --lr)")
    nf2.add_argument("--pf-draws", type=int, metavar="N",
                     help="pseudofermion draws per gauge field in the evaluation (default 16)")
    nf2.add_argument("--mu0", type=float, help="regulator K^dag K + mu0 during training "
                     "(default 1e-5; never in the weights)")
    nf2.add_argument("--init", metavar="MODEL", help="start from the weights of this checkpoint "
                     "or run directory (a joint model, or a gauge flow for the marginal)")
    nf2.add_argument("--exact-det-samples", type=int, metavar="N", help="fields of the "
                     "evaluation that also get the exact determinant, V <= 256 (default 512)")
    nf2.add_argument("--pool-refresh", type=int, metavar="N", help="conditional stage: new "
                     "gauge fields from the frozen marginal every N steps (default 4)")
    snf = p.add_argument_group(
        "stochastic normalizing flow (--arch snf: a non-equilibrium protocol beta0 -> beta with "
        "a stout layer per block; docs/nonequilibrium.md)")
    snf.add_argument("--beta0", type=float, help="coupling of the prior samples (required)")
    snf.add_argument("--blocks", type=int, metavar="N", help="protocol blocks (default 4)")
    snf.add_argument("--update", choices=["heatbath", "hmc"], help="MC update of every block "
                     "(default heatbath for su2/su3, hmc for u1)")
    snf.add_argument("--n-hb", type=int, metavar="N", help="heatbath sweeps per block "
                     "(default 1)")
    snf.add_argument("--n-or", type=int, metavar="N", help="overrelaxation sweeps per block "
                     "(default 1)")
    snf.add_argument("--therm", type=int, metavar="K", help="thermalisation updates of the "
                     "prior chains at beta0 (default 50)")
    snf.add_argument("--pool-sweeps", type=int, metavar="K", help="updates of the prior chains "
                     "between training steps and evaluation chunks (default 1)")
    snf.add_argument("--defect", type=int, nargs="+", metavar="D", help="also switch a "
                     "time-boundary defect of these extents (one per direction other than "
                     "time) from open to periodic (topological unfreezing, arXiv:2510.25704; "
                     "heatbath only; --beta0 = --beta for the pure defect protocol)")
    snf.add_argument("--c0", type=float, help="defect coefficient of the prior (default 0: "
                     "open)")
    snf.add_argument("--init-scale", type=_scale, metavar="S|auto", help="start the stout "
                     "layers at S x Luescher's leading-order coefficients (default 1); 'auto': "
                     "the factor of the lowest mean work among 0.25 ... 1.5 (4 x batch protocol "
                     "runs each, before training)")
    p.set_defaults(func=_run_train)


def _scale(text: str) -> float | str:
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'auto', got {text!r}") from None


def add_sample_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``qcd-bridge sample``."""
    p = sub.add_parser(
        "sample", help="draw configurations and log-weights from a trained flow (HDF5/ILDG)",
        description="Draw N configurations U ~ q from a trained flow with log w = -S - log q "
                    "into FILE.h5 (HDF5) or ILDG files FILE.00000.lime ... (4D SU(3) only).")
    p.add_argument("model", help="checkpoint file or run directory of `qcd-bridge train`")
    p.add_argument("--n", type=int, required=True, help="number of configurations")
    p.add_argument("--out", required=True, help="FILE.h5, or a prefix for ILDG files")
    p.add_argument("--nrow", nargs="+", type=int, metavar="L",
                   help="lattice to sample on (default the training lattice)")
    p.add_argument("--beta", type=float, help="coupling of the weights (default training's)")
    p.add_argument("--batch", type=int, default=64, help="samples drawn at a time")
    p.add_argument("--seed", type=int, default=1, help="seed of the sample stream")
    p.add_argument("--precision", type=int, choices=[32, 64], default=64,
                   help="bits per real number in the files")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.add_argument("--pf-draws", type=int, metavar="N", help="joint Nf = 2 models: pseudofermion "
                   "draws per field in the weight (default: the training's evaluation value)")
    p.set_defaults(func=_run_sample)


def _run_train(args: argparse.Namespace) -> int:
    from ..jobs.train import run_train, train_settings

    s = train_settings(args.config, arch=args.arch, layers=args.layers,
                       estimator=args.estimator, **given(args, _TRAIN_KEYS))
    return run_train(s, resume=args.resume)


def _run_sample(args: argparse.Namespace) -> int:
    from ..jobs.train import SampleSettings, sample_flow

    return sample_flow(SampleSettings(
        model=args.model, n=args.n, out=args.out, nrow=args.nrow, beta=args.beta,
        batch=args.batch, seed=args.seed, precision=args.precision, overwrite=args.overwrite,
        pf_draws=args.pf_draws))
