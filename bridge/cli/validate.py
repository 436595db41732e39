"""``qcd-bridge validate A B``: compare ensemble A with ensemble B observable by observable and
write the report (:mod:`bridge.jobs.validate`, :mod:`bridge.analysis.report`; docs/validation.md).

Exit status: 0 all observables agree, 3 (:data:`bridge.jobs.validate.EXIT_DISAGREE`) some
observable disagrees; 1 for errors (unreadable files, unknown observables, mismatched lattices).
numpy, torch, h5py and matplotlib are imported only when the command runs.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_validate_parser", "run_validate"]


def _stderr(msg: str) -> None:
    print(f"validate: {msg}", file=sys.stderr, flush=True)


def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``qcd-bridge validate A B [...]``."""
    p = subparsers.add_parser(
        "validate",
        help="compare two ensembles observable by observable (histograms, residuals, means)",
        description=(
            "Compare ensemble A with ensemble B (e.g. flow or hybrid against HMC) as in "
            "arXiv:2208.03832, Figs. 2-3: density histograms with ratio panels and bootstrap "
            "errors, bin residuals against chi^2(1), means with Gamma-method errors (pyerrors) and "
            "a p-value per observable. Writes report.md, summary.json and PNG figures to --out. "
            "Exit status 0: all observables agree; 3: some observable disagrees at significance "
            "alpha (Bonferroni-corrected over observables); 1: error. See docs/validation.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("a", metavar="A", help="ensemble A: HDF5 ensemble store(s), .npz or CSV series "
                   "files, qcd-bridge chain files; several files (one replica each) separated by "
                   "commas")
    p.add_argument("b", metavar="B", help="ensemble B, as A")
    p.add_argument("--observables", nargs="+", default=None, metavar="NAME",
                   help="observables to compare (series names, name[i] for components, or "
                   "registry observables measured on stored configurations); default: every "
                   "series both ensembles carry")
    p.add_argument("--bins", type=int, default=30, help="histogram bins before merging")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="significance level for the whole comparison (divided by the number "
                   "of observables)")
    p.add_argument("--out", default="validation_report", help="report directory")
    p.add_argument("--seed", type=int, default=1, help="seed of the bootstrap generator")
    p.add_argument("--min-count", type=int, default=20,
                   help="merge bins until A and B each have this many (effective) samples in "
                   "every bin")
    p.add_argument("--S", type=float, default=2.0, dest="S",
                   help="Wolff's windowing parameter of the Gamma method")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=run_validate)
    return p


def run_validate(args: argparse.Namespace) -> int:
    """Handler of ``qcd-bridge validate``: 0 agree, ``EXIT_DISAGREE`` disagree."""
    from ..analysis.format import value_error
    from ..analysis.report import write_report
    from ..jobs.validate import EXIT_DISAGREE, validate

    progress = None if args.quiet else _stderr
    res = validate(args.a, args.b, observables=args.observables, bins=args.bins,
                   n_boot=args.bootstrap, alpha=args.alpha, seed=args.seed,
                   min_count=args.min_count, S=args.S, progress=progress)
    write_report(res, args.out, overwrite=args.overwrite, progress=progress)
    for c in res.observables:
        print(f"{c.name}: A {value_error(c.a.value, c.a.error)}  "
              f"B {value_error(c.b.value, c.b.error)}  "
              f"p = {c.p_value:.3g}  {'ok' if c.passed else 'DISAGREES'}")
    print(f"{'PASS' if res.passed else 'FAIL'}: {len(res.observables) - len(res.failed)}/"
          f"{len(res.observables)} observables agree (alpha = {res.alpha:g}, threshold "
          f"{res.threshold:.3g}); report in '{args.out}'")
    return 0 if res.passed else EXIT_DISAGREE
