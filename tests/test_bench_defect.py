"""Smoke test of benchmarks/bench_defect.py on tiny settings (a few seconds): the work scan with
and without defect layers and a chain run write their JSON rows; structure and sanity only,
never timings."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_defect.py"
TINY = ["--nrow", "4", "4", "4", "4", "--beta", "6.0", "--defect", "2", "2", "2", "--blocks",
        "2", "--chains", "2", "--hb-therm", "2", "--therm", "1", "--snf-scale", "0.75"]


def _run(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "r.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(BENCH), *TINY, *args, "--out", str(out)], check=True,
                   env=env, cwd=BENCH.parent, capture_output=True, timeout=300)
    return json.loads(out.read_text())


def test_work_scan_pairs_layers_and_no_layers(tmp_path):
    res = _run(tmp_path, "--work-scan", "--scan-batches", "2")
    rows = res["rows"]
    assert [(r["blocks"], r["layers"]) for r in rows] == [(2, False), (2, True)]
    for r in rows:
        assert r["runs"] == 4 and r["work_std"] > 0 and 0 < r["ess"] <= 1
        assert 0 <= r["imh_acceptance"] <= 1
    assert "work_gain" in rows[1]


def test_chain_run_with_defect_layers(tmp_path):
    res = _run(tmp_path, "--only", "snf-2", "--seconds", "1")
    rows = res["rows"]
    (r,) = rows
    assert r["algorithm"] == "snf-2" and r["steps"] >= 4 and 0 <= r["acceptance"] <= 1
