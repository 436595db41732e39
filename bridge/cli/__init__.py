"""The ``qcd-bridge`` command line: the only module that reads argv.

Each command group lives in one module of this package with an ``add_*_parser(subparsers)``
function that registers its sub-commands and sets ``func`` to a handler returning the exit
status.  Building the parser imports only these modules, which import nothing heavy (no torch,
numpy, h5py, lxml): the handlers import their jobs when they run, so ``qcd-bridge --help`` and
``qcd-bridge CMD --help`` start fast (benchmarks/bench_startup.py).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence

from .common import SERVED

__all__ = ["main", "run_command", "build_parser", "COMMANDS"]

# (module of this package, registering function), in the order of `qcd-bridge --help`
COMMANDS: list[tuple[str, str]] = [
    ("field", "add_field_parser"),
    ("run", "add_hmc_parser"),
    ("io", "add_inspect_parser"),
    ("io", "add_convert_parser"),
    ("chroma", "add_chroma_parser"),
    ("measure", "add_measure_parser"),
    ("validate", "add_validate_parser"),
    ("flows", "add_train_parser"),
    ("flows", "add_sample_parser"),
    ("run", "add_run_parser"),
    ("chain", "add_chain_parser"),
    ("chroma", "add_chroma_xml_parser"),
    ("demo", "add_demo_parser"),
    ("scaling", "add_scaling_parser"),
    ("serve", "add_serve_parser"),
]


def _registrars() -> list[Callable[[argparse._SubParsersAction], object]]:
    return [getattr(importlib.import_module(f"{__name__}.{module}"), func)
            for module, func in COMMANDS]


class _Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose help formatters share one terminal width per process:
    ``add_argument`` builds a formatter for every argument, and each asked the terminal for its
    size (~0.3 ms, ~80 ms for the whole parser).  Sub-parsers inherit the class."""

    _width: int | None = None

    def _get_formatter(self) -> argparse.HelpFormatter:
        if _Parser._width is None:
            import shutil

            _Parser._width = shutil.get_terminal_size().columns - 2  # as HelpFormatter does
        return self.formatter_class(prog=self.prog, width=_Parser._width)


def build_parser() -> argparse.ArgumentParser:
    """The ``qcd-bridge`` parser with every sub-command."""
    from .. import __version__

    parser = _Parser(
        prog="qcd-bridge",
        description=(
            "Flow-based proposals for lattice gauge theory, exact by accept/reject or "
            "reweighting, exchanging gauge fields with Chroma/QUDA (ILDG/SciDAC LIME)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"qcd-bridge {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for reg in _registrars():
        reg(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qcd-bridge`` console script; returns the exit status.

    Called without ``argv`` (the console script, ``python -m bridge.cli``), the commands that
    import torch (:data:`~bridge.cli.serve_client.SERVED`) run in a ``qcd-bridge serve``
    server when ``QCD_BRIDGE_SERVER`` asks for one (docs/server.md), and otherwise end the
    process without the interpreter's teardown once their files are closed
    (:func:`~bridge.cli.common.fast_exit`).  Called with ``argv`` (a script, the tests), it
    runs the command here and returns."""
    console = argv is None
    argv = sys.argv[1:] if argv is None else list(argv)
    if console and argv and argv[0] in SERVED and os.environ.get("QCD_BRIDGE_SERVER"):
        from .serve_client import forward, server_socket

        path = server_socket()  # None for QCD_BRIDGE_SERVER=0
        status = forward(argv, path) if path is not None else None
        if status is not None:  # the server parsed and ran it
            return status
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if console and args.command in SERVED:
        from .common import fast_exit, open_for_writing

        before = open_for_writing()
        return fast_exit(run_command(args), before)
    return run_command(args)


def run_command(args: argparse.Namespace) -> int:
    """Run the parsed command in this process: its exit status, with the project's errors
    reported in one line on stderr."""
    from ..errors import BridgeError

    try:
        return int(args.func(args) or 0)
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        sys.stderr.close()
        return 0
    except (BridgeError, ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"qcd-bridge {args.command}: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
