"""``qcd-bridge measure``: observables of the registry over an ensemble into an HDF5 store
(:func:`bridge.jobs.measure.measure_ensemble`).  The job module is imported by the handlers."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_measure_parser"]


def add_measure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``qcd-bridge measure`` (observables over an ensemble into an HDF5 store)."""
    from ..jobs.measure_params import OBSERVABLE_NAMES, PARAM_FLAGS

    known = ", ".join(sorted(OBSERVABLE_NAMES))
    p = subparsers.add_parser(
        "measure",
        help="measure observables over an ensemble into an HDF5 store (resumable)",
        description=(
            "Measure observables of the registry (" + known + ") on every configuration of an "
            "ensemble -- gauge files (ILDG/SciDAC, NERSC, MILC; globs allowed) named "
            "Chroma-style <prefix>_cfg_<N>.lime, N being the trajectory number, or one "
            "qcd-bridge HDF5 ensemble store -- and append each series with its trajectory "
            "numbers to an HDF5 store (the input store by default). Re-running skips the "
            "configurations already measured. A series is named after the observable and the "
            "parameters it takes, e.g. topological_charge[flow_time=4]."
        ),
        epilog=("examples:\n"
                "  qcd-bridge measure -O plaquette -O polyakov -o meas.h5 'cfgs/run_cfg_*.lime'\n"
                "  qcd-bridge measure -O topological_charge --flow-time 4 ensemble.h5\n"
                "  qcd-bridge measure -O pion --kappa 0.1 -o pion.h5 cfgs/*.lime"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="CONFIG",
                   help="gauge files or globs (quote globs), or one HDF5 ensemble store")
    p.add_argument("-O", "--observable", action="append", required=True, metavar="NAME",
                   help=f"observable to measure (repeatable): {known}")
    p.add_argument("-o", "--store", default=None,
                   help="output HDF5 store (created if absent; default: the input store)")
    for key, spec in PARAM_FLAGS.items():
        if spec.kind == "switch":
            p.add_argument(spec.flag, dest=key, action="store_const", const=True, default=None,
                           help=spec.help)
        elif spec.kind in ("int4", "float4"):
            p.add_argument(spec.flag, dest=key, nargs=4,
                           type=int if spec.kind == "int4" else float, default=None,
                           metavar=("X", "Y", "Z", "T"), help=spec.help)
        else:
            p.add_argument(spec.flag, dest=key, type=spec.kind, default=None, help=spec.help)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_measure)
    return p


def _run_measure(args: argparse.Namespace) -> int:
    from ..jobs.measure import measure_ensemble
    from ..jobs.measure_params import PARAM_FLAGS

    params: dict[str, Any] = {}
    for key, spec in PARAM_FLAGS.items():
        v = getattr(args, key, None)
        if v is None:
            continue
        if spec.kind in ("int4", "float4"):
            v = tuple(v)
        params[key] = v
    stats = measure_ensemble(args.inputs, args.observable, params, store=args.store,
                             device=args.device, progress=not args.quiet)
    for name, s in stats.items():
        print(f"{name}: measured {s['measured']}, skipped {s['skipped']} (already in the store)")
    return 0
