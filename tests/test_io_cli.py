"""``inspect`` and ``convert`` sub-commands, through their argparse registration functions and,
where the command line wires them, through ``bridge.cli.main``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
import torch

from bridge.cli.io import add_convert_parser, add_inspect_parser
from bridge.gauge import mesplq, random_gauge
from bridge.io import read_gauge, write_gauge
from bridge.lattice import Lattice

REQUIRED = {"format", "nrow", "precision", "checksum", "w_plaq", "s_plaq", "t_plaq", "link",
            "poly_loop"}


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="qcd-bridge")
    sub = parser.add_subparsers()
    add_inspect_parser(sub)
    add_convert_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def _cli_main():
    from bridge.cli import main

    return main


@pytest.fixture(scope="module")
def public(data_dir: Path) -> Path:
    return data_dir / "public"


def test_inspect_json_matches_chroma(data_dir, capsys):
    folder = data_dir / "chroma" / "pure_gauge_b5.5_4x4"
    entry = json.loads((folder / "measured_by_chroma.json").read_text())[0]
    assert _run(["inspect", str(folder / entry["file"]), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert REQUIRED <= set(out)
    assert out["format"] == "ildg" and out["nrow"] == [4, 4, 4, 4] and out["precision"] == 64
    assert out["checksum"] == "ok"
    for key in ("w_plaq", "s_plaq", "t_plaq", "link"):
        assert out[key] == pytest.approx(entry[key], abs=1e-12)
    for mu in range(4):
        assert out["poly_loop"][mu] == pytest.approx(entry["poly_loop"][mu], abs=1e-12)
    assert out["planes"]["23"] == pytest.approx(entry["plane_23_plaq"], abs=1e-12)
    assert [r["type"] for r in out["records"]][-2:] == ["ildg-binary-data", "scidac-checksum"]


def test_inspect_text_and_nrow(public, capsys):
    assert _run(["inspect", str(public / "pyquda_weak_field.lime")]) == 0
    text = capsys.readouterr().out
    assert "lattice       4 4 4 8" in text and "checksum      ok" in text
    assert "w_plaq        0.994804132266700" in text and "ildg-binary-data" in text
    # a file without dimensions needs --nrow
    raw = str(public / "qcdmeas_conf_00000008.ildg")
    assert _run(["inspect", raw, "--json"]) == 2
    err = capsys.readouterr().err
    assert "qcdmeas_conf_00000008.ildg" in err and "--nrow" in err
    assert _run(["inspect", raw, "--json", "--nrow", "4", "4", "4", "4"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["checksum"] == "absent" and out["w_plaq"] == pytest.approx(0.614790430840494,
                                                                          abs=1e-12)
    assert _run(["inspect", str(public / "chroma_t_nersc.cfg"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["format"] == "nersc" and out["precision"] == 32 and out["checksum"] == "ok"


def test_inspect_reports_mismatch_with_exit_status_1(public, tmp_path, capsys):
    data = bytearray((public / "pyquda_weak_field.lime").read_bytes())
    data[1608 + 144 + 7] ^= 1
    bad = tmp_path / "bad.lime"
    bad.write_bytes(bytes(data))
    assert _run(["inspect", str(bad), "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["checksum"] == "mismatch" and out["checksum_stored"] != out["checksum_computed"]


@pytest.mark.parametrize("to, precision", [("ildg", 64), ("ildg", 32), ("nersc", 64),
                                           ("nersc", 32), ("hdf5", 64), ("milc", 32)])
def test_convert_every_format(public, tmp_path, capsys, to, precision):
    src = public / "pyquda_weak_field.lime"
    dst = tmp_path / f"out.{to}"
    assert _run(["convert", str(src), str(dst), "--to", to, "--precision", str(precision)]) == 0
    assert f"wrote {dst}: {to}, {precision}-bit" in capsys.readouterr().out
    u, _ = read_gauge(src)
    v, info = read_gauge(dst)
    assert info.format == to and info.precision == precision and info.checksum == "ok"
    tol = 1e-15 if precision == 64 else 1e-7
    assert (u - v).abs().max() < tol
    assert _run(["inspect", str(dst), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["w_plaq"] == pytest.approx(float(mesplq(u).w_plaq[0]), abs=1e-12 if
                                          precision == 64 else 1e-6)
    if to == "ildg":  # the user XML of an ILDG source is carried over
        assert v is not None and "weak_field" in info.metadata["scidac-record-xml"]


def test_convert_refuses_existing_output(tmp_path, capsys):
    u = random_gauge(Lattice((2, 2, 2, 4)), "SU3", generator=torch.Generator().manual_seed(3))
    src = tmp_path / "in.lime"
    write_gauge(src, u)
    dst = tmp_path / "out.cfg"
    dst.write_text("keep me")
    assert _run(["convert", str(src), str(dst), "--to", "nersc"]) == 2
    assert "output path exists" in capsys.readouterr().err and dst.read_text() == "keep me"
    assert _run(["convert", str(src), str(dst), "--to", "nersc", "--overwrite",
                 "--storage", "3x2"]) == 0
    v, info = read_gauge(dst)
    assert info.variant == "3x2" and (v - u).abs().max() < 1e-14


def test_help_texts():
    parser = argparse.ArgumentParser(prog="qcd-bridge")
    sub = parser.add_subparsers()
    p1 = add_inspect_parser(sub)
    p2 = add_convert_parser(sub)
    assert "Polyakov" in p1.format_help() and "--nrow" in p1.format_help()
    assert "--precision" in p2.format_help() and "--overwrite" in p2.format_help()


def test_through_bridge_cli_main(public, tmp_path, capsys):
    main = _cli_main()
    assert main(["inspect", str(public / "lyncs_unity.lime"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["w_plaq"] == 1.0 and out["link"] == 1.0 and out["poly_loop"][3] == [1.0, 0.0]
    dst = tmp_path / "unity.h5"
    assert main(["convert", str(public / "lyncs_unity.lime"), str(dst), "--to", "hdf5"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(dst), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["format"] == "hdf5"
