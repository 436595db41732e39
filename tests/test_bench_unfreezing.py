"""Smoke test of benchmarks/bench_unfreezing.py: its core functions on tiny settings (a few
seconds); structure and sanity only, never timings."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_unfreezing.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_unfreezing", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_unfreezing"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_analyse_q_correlated_and_frozen(bench):
    rng = np.random.default_rng(0)
    # integer-valued, positively correlated series (rounded AR(1)), 4 chains
    x = np.zeros((400, 4))
    for t in range(1, 400):
        x[t] = 0.9 * x[t - 1] + rng.normal(size=4)
    a = bench.analyse_q(np.round(x), volume=64, chi_ref=None)
    assert a["tau_int"] >= 0.5 and a["tau_used"] >= 0.5 and a["tau_used_kind"] != "tunnel_lower"
    assert math.isfinite(a["chi_t"])
    frozen = bench.analyse_q(np.zeros((50, 2)), volume=64, chi_ref=0.01)
    assert frozen["tau_int"] is None and not frozen["resolved"]
    assert frozen["tau_used_kind"] == "tunnel_lower" and frozen["tau_tunnel_is_bound"]
    assert frozen["tau_used"] == pytest.approx(2 * 64 * 0.01 * 49 * 2 / 3)


def test_chi_t_infinite_volume(bench):
    from bridge.exact import u1_2d_topological_susceptibility

    for beta in (1.0, 4.0):
        assert bench.chi_t_infinite(beta) == pytest.approx(
            u1_2d_topological_susceptibility(beta, 64), rel=1e-3)


def test_u1_point_tiny(bench, tmp_path):
    import torch

    args = bench.parser().parse_args(
        ["--seconds", "0", "--max-steps", "40", "--chains", "2", "--tune-trajs", "5",
         "--flow-batch", "4", "--flow-per-cycle", "2"])
    torch.manual_seed(0)
    model, info = bench.train_flow("U1", 2, (4, 4), 1.0, 1.0,
                                   arch={"n_layers": 4, "k": 4, "hidden": (4,)}, batch=8,
                                   models=str(tmp_path / "models"), tag="u1_L4_b1")
    assert info["steps"] >= 1 and info["train_seconds"] > 0
    assert (tmp_path / "models" / "u1_L4_b1" / "checkpoint.pt").exists()
    model2, info2 = bench.train_flow("U1", 2, (4, 4), 1.0, 1.0, arch={}, models=str(
        tmp_path / "models"), tag="u1_L4_b1")  # loaded, not retrained
    assert info2["loaded"] and info2["steps"] == info["steps"]
    rows = bench.u1_point(4, 1.0, model2, info2, args)
    assert [r["sampler"] for r in rows] == ["hmc", "hybrid"]
    for r in rows:
        assert r["steps"] == 20 and r["n_per_chain"] == 20 and r["chains"] == 2
        assert r["tau_used"] >= 0.5
        assert r["tau_int"] is None or r["tau_int"] >= 0.5
        assert math.isfinite(r["chi_t"]) and math.isfinite(r["chi_t_exact_fv"])
        assert math.isfinite(r["cost_per_indep"]) and r["cost_per_indep"] > 0
        assert 0.0 <= r["acc_hmc"] <= 1.0
    assert 0.0 <= rows[1]["acc_flow"] <= 1.0 and rows[0]["acc_flow"] is None
    out = bench.write_results(tmp_path / "u.json", rows, command="test")
    data = json.loads(out.read_text())
    assert set(data) == {"meta", "rows"} and data["meta"]["command"] == "test"
    for key in ("L", "beta", "sampler", "tau_int", "tau_used", "tau_used_kind", "resolved",
                "chi_t", "chi_t_exact_fv", "chi_t_exact_inf", "acc_hmc", "acc_flow",
                "cost_per_indep", "cost_per_indep_amortised", "train_seconds",
                "seconds_per_step_per_chain", "md_steps"):
        assert key in data["rows"][0] and key in data["rows"][1]
    png = bench.plot(rows, tmp_path / "u.png")
    assert png.exists() and png.stat().st_size > 0


def test_u1_analytic_proposal_tiny(bench, tmp_path):
    args = bench.parser().parse_args(
        ["--proposal", "analytic", "--L", "4", "--betas", "3", "--seconds", "0",
         "--max-steps", "30", "--chains", "2", "--tune-trajs", "5", "--flow-batch", "4",
         "--flow-per-cycle", "2", "--eval-n", "64"])
    rows = bench.run_u1(args)
    assert [r["sampler"] for r in rows] == ["hmc", "hybrid"]
    y = rows[1]
    assert y["proposal"] == "analytic" and y["train_seconds"] == 0.0
    assert y["flow_model"]["kind"] == "u1_plaquette"
    assert 0.0 < y["acc_flow"] <= 1.0 and y["steps"] == 20  # min_steps (seconds = 0)
    assert math.isfinite(y["chi_t"]) and y["cost_per_indep"] > 0


def test_u1_plaquette_flow_tiny(bench, tmp_path):
    args = bench.parser().parse_args(
        ["--u1-arch", "plaquette", "--L", "4", "--betas", "3", "--seconds", "0",
         "--max-steps", "30", "--chains", "2", "--tune-trajs", "5", "--flow-batch", "4",
         "--flow-per-cycle", "2", "--eval-n", "64", "--train-seconds", "2",
         "--models", str(tmp_path / "m")])
    rows = bench.run_u1(args)
    assert [r["sampler"] for r in rows] == ["hmc", "hybrid"]
    y = rows[1]
    assert y["flow_model"]["arch"] == "plaquette" and y["train_seconds"] > 0
    assert (tmp_path / "m" / "u1_plaquette_L4_b3" / "checkpoint.pt").exists()
    assert 0.0 <= y["acc_flow"] <= 1.0 and math.isfinite(y["chi_t"])
