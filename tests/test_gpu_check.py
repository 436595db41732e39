"""benchmarks/gpu_check.py: on a machine without a GPU it says so and exits 0 (run as a user
would, in a subprocess); its ``--smoke`` mode runs every section on the CPU on tiny sizes and
writes the JSON the GPU run writes (slow: about 15 s)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=600)


def test_without_a_gpu_it_says_so_and_exits_0(tmp_path):
    out = tmp_path / "gpu.json"
    res = _run("--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("gpu_check: no CUDA GPU found")
    assert not out.exists()
    res = _run("--device", "cpu", "--out", str(out), cwd=tmp_path)  # only as a smoke run
    assert res.returncode == 2 and "--device cpu is only for --smoke" in res.stdout


@pytest.mark.slow
def test_smoke_run_measures_every_section_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    res = _run("--device", "cpu", "--smoke", "--out", str(out), cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    data = json.loads(out.read_text())
    assert data["meta"]["failed_sections"] == [] and data["meta"]["smoke"] is True
    assert data["meta"]["roofline"]["bytes_per_site"] == {"float64": 2880, "float32": 1440}
    sections = {r["section"] for r in data["rows"]}
    assert sections == {"bandwidth", "dslash", "cg", "flows", "hybrid"}
    assert not [r for r in data["rows"] if "error" in r]
    for r in data["rows"]:
        if r["section"] == "dslash":  # GB/s is GFLOP/s times the bytes per flop of the model
            assert r["dslash_gb_per_s"] == pytest.approx(
                r["dslash_gflops"] * r["bytes_per_site"] / 1320, rel=1e-12)
    for name in ("dslash", "cg", "flows", "hybrid"):  # both precisions in every section
        assert {r["precision"] for r in data["rows"] if r["section"] == name} == \
            {"float64", "float32"}
