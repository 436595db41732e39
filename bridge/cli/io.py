"""``qcd-bridge inspect FILE`` and ``qcd-bridge convert IN OUT --to FMT``: the command line of
:mod:`bridge.io.inspect` (format detection, summary, conversion)."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_inspect_parser", "add_convert_parser"]

# bridge.io.inspect.FORMATS, spelled out so that building the parser imports no torch (a test
# keeps them equal)
FORMATS = ("ildg", "nersc", "milc", "hdf5")


def _run_inspect(args: argparse.Namespace) -> int:
    from ..io.inspect import run_inspect

    return run_inspect(args)


def _run_convert(args: argparse.Namespace) -> int:
    from ..io.inspect import run_convert

    return run_convert(args)


def _nrow_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nrow",
        type=int,
        nargs=4,
        metavar=("LX", "LY", "LZ", "LT"),
        help="lattice extents x y z t (Chroma's nrow); needed for LIME files that hold only a "
        "binary record, otherwise checked against the file",
    )


def add_inspect_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``inspect`` on an ``argparse`` subparsers object; sets ``func``."""
    p = subparsers.add_parser(
        "inspect",
        help="show format, lattice, records, checksum, plaquettes and Polyakov loops of a "
        "gauge file",
        description="Detect the format of a gauge-field file (ILDG/SciDAC LIME, NERSC, MILC, "
        "qcd-bridge HDF5), verify its checksum and print the lattice, precision, LIME records, "
        "checksum status (ok/absent/mismatch), Chroma's MesPlq values (w_plaq, s_plaq, t_plaq, "
        "the six planes, link) and the Polyakov loops in the four directions (Chroma's "
        "normalisation). Exit status: 0 ok, 1 checksum or header mismatch, 2 unreadable file.",
    )
    p.add_argument("file", help="gauge-field file")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (keys include format, nrow, precision, checksum, "
                   "w_plaq, s_plaq, t_plaq, link, poly_loop)")
    p.add_argument("--format", choices=FORMATS, default=None,
                   help="skip detection and read as this format")
    _nrow_arg(p)
    p.set_defaults(func=_run_inspect)
    return p


def add_convert_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``convert`` on an ``argparse`` subparsers object; sets ``func``."""
    p = subparsers.add_parser(
        "convert",
        help="convert a gauge-field file between ILDG, NERSC, MILC and HDF5",
        description="Read a gauge field (any supported format, checksums verified) and write it "
        "as ILDG/SciDAC LIME (the records Chroma/QIO write), NERSC (IEEE32BIG/IEEE64BIG), MILC "
        "(single precision) or a qcd-bridge HDF5 ensemble store. The output is written to a "
        "temporary file and renamed, and an existing output is refused unless --overwrite.",
    )
    p.add_argument("input", help="input gauge-field file")
    p.add_argument("output", help="output file")
    p.add_argument("--to", required=True, choices=FORMATS, help="output format")
    p.add_argument("--precision", type=int, choices=(32, 64), default=None,
                   help="output precision in bits (default: the input's)")
    p.add_argument("--storage", choices=("3x3", "3x2"), default="3x3",
                   help="NERSC output: full matrices or two rows (default 3x3)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--no-verify", action="store_true",
                   help="do not check the input's stored checksum")
    p.add_argument("--reunitarize", action="store_true",
                   help="re-unitarise the links after reading (e.g. single-precision input)")
    _nrow_arg(p)
    p.set_defaults(func=_run_convert)
    return p
