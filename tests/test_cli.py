"""The command line: help (without heavy imports), the `field` command, error reporting."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bridge.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("demo", "field", "chain", "train", "validate"):
        assert cmd in out


def test_field_cold_start_is_exact(capsys):
    assert main(["field", "--nrow", "4", "4", "2", "6", "--start", "cold", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    cfg = out["configs"][0]
    assert out["nrow"] == [4, 4, 2, 6]
    assert cfg["action"] == 0.0 and cfg["w_plaq"] == 1.0 and cfg["link"] == 1.0
    assert cfg["poly_loop"] == [[1.0, 0.0]] * 4


def test_field_hot_start_is_reproducible_and_disordered(capsys):
    args = ["field", "--nrow", "4", "4", "4", "4", "--seed", "7", "--json"]
    main(args)
    a = json.loads(capsys.readouterr().out)
    main(args)
    b = json.loads(capsys.readouterr().out)
    assert a == b
    # Haar links: plaquette ~ 0 within a few standard deviations (1/sqrt(6 V Nc^2) ~ 0.02)
    assert abs(a["configs"][0]["w_plaq"]) < 0.1


def test_field_human_output(capsys):
    assert main(["field", "--nrow", "4", "4", "--group", "U1", "--batch", "2"]) == 0
    out = capsys.readouterr().out
    assert "config 1:" in out and "s_plaq = n/a (2D)" in out


def test_bad_input_is_reported(capsys):
    assert main(["field", "--nrow", "4", "0", "4", "4"]) == 1
    err = capsys.readouterr().err
    assert "qcd-bridge field: error: nrow: every extent must be positive, got (4, 0, 4, 4)" in err
    assert main(["field", "--group", "SO3"]) == 1
    assert "group: expected 'U1', 'SU2', 'SU3'" in capsys.readouterr().err


def test_building_the_parser_and_every_help_imports_nothing_heavy():
    """`qcd-bridge --help` and `qcd-bridge CMD --help` import only the command modules: no
    torch, numpy, h5py, lxml, matplotlib or pyerrors (benchmarks/bench_startup.py times it)."""
    code = """
import contextlib, io, sys
from bridge.cli import build_parser
parser = build_parser()
commands = list(parser._subparsers._group_actions[0].choices)
for argv in [["--help"]] + [[c, "--help"] for c in commands]:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        parser.parse_args(argv)
heavy = {"torch", "numpy", "h5py", "lxml", "matplotlib", "pyerrors"} & set(sys.modules)
print(len(commands), sorted(heavy))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    n, heavy = out.stdout.split(" ", 1)
    assert int(n) == 15 and heavy.strip() == "[]", out.stdout


def test_constants_spelled_out_for_the_parser_match_the_packages():
    from bridge.cli.common import GROUP_CHOICES
    from bridge.cli.io import FORMATS
    from bridge.flows.checkpoints import GROUPS
    from bridge.io.inspect import FORMATS as IO_FORMATS

    assert sorted(GROUP_CHOICES) == sorted(GROUPS) and FORMATS == IO_FORMATS
