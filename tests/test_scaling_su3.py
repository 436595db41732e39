"""``qcd-bridge scaling --family residual``: the 4D SU(3) residual staple flow on a tiny grid
writes its JSON and figures (ESS of the transferred model, cost per effective sample, training to
the target from scratch and from the transferred start, the V exponent), and with chains the
hybrid and HMC chains' tau_int, costs, ratios and their figure; the chains' analysis on series
of known autocorrelation."""

from __future__ import annotations

import json
import math

import pytest

from bridge.cli import main


def test_tiny_su3_grid_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "su3"
    assert main(["scaling", "--family", "residual", "--L", "2", "4", "--betas", "0.5",
                 "--train-L", "2", "--train-steps", "12", "--batch", "8", "--target-L", "4",
                 "--target-ess", "0.999", "--target-max-steps", "3", "--window", "2",
                 "--eval-samples", "16", "--chain-L", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert ("note: --family residual (4D SU3): Q in the chains is the clover charge after "
            "Wilson flow to t = 0.5") in text
    res = json.loads((out / "scaling.json").read_text())
    assert (res["group"], res["nd"]) == ("SU(3)", 4)
    assert res["fixed_models"]["0.5"]["nrow"] == [2, 2, 2, 2]
    assert res["fixed_models"]["0.5"]["steps"] == 12
    assert [(p["L"], p["volume"], p["beta"]) for p in res["points"]] == [(2, 16, 0.5),
                                                                         (4, 256, 0.5)]
    small, big = res["points"]
    for p in res["points"]:
        t = p["transfer"]
        assert 0 < t["ess"] <= 1 and 0 <= t["acceptance"] <= 1 and t["eval_samples"] == 16
        assert t["cost_per_effective_sample"] == pytest.approx(t["seconds_per_sample"]
                                                               / t["ess"])
        assert "hybrid" not in p and "hmc" not in p  # --chain-L without values: none
    assert "train_scratch" not in small  # --target-L 4 only
    for part in ("train_scratch", "train_transfer"):
        tr = big[part]
        # an ESS of 0.999 on 4^4 is out of reach in 3 steps: a lower bound, not a success
        assert tr["steps"] == 3 and not tr["reached"] and tr["is_lower_bound"]
        assert 0 < tr["ess_fresh"] < 0.999
    fit = res["fits"]["0.5"]["cost_per_effective_sample"]
    c = [p["transfer"]["cost_per_effective_sample"] for p in res["points"]]
    assert fit["z"] == pytest.approx(math.log(c[1] / c[0]) / math.log(16))
    for name in ("scaling_ess.png", "scaling_training.png", "scaling_cost.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) < 200_000
    assert "spacing_fits" not in res  # the exact scale is that of 2D U(1)


def test_su3_odd_extent_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["scaling", "--family", "residual", "--L", "3", "--train-L", "2",
                 "--out", str(out)]) == 1
    assert ("--L 3: flow: layer 0 of the model (SU(3), Nd = 4) cannot act on the chain's "
            "lattice Lattice(3x3x3x3)") in capsys.readouterr().err
    assert not out.exists()


def test_few_effective_samples_make_bounds_and_refit(tmp_path):
    from bridge.jobs.scaling import few_effective, refit

    assert few_effective(0.011, 128) and not few_effective(0.056, 128)  # 1.4 vs 7 samples
    pts = []
    for L, e in ((4, 0.58), (6, 0.056), (8, 0.011)):
        sec = 1e-3 * L**4
        pts.append({"L": L, "volume": L**4, "beta": 1.0,
                    "transfer": {"ess": e, "acceptance": e, "eval_samples": 128,
                                 "seconds_per_sample": sec,
                                 "cost_per_effective_sample": sec / e,
                                 "minus_log_ess": -math.log(e)}})
    res = refit({"points": pts, "nd": 4, "settings": {"family": "residual", "train_L": 4,
                                                      "target_ess": 0.3}}, tmp_path)
    assert [p["transfer"]["is_lower_bound"] for p in res["points"]] == [False, False, True]
    per = res["fits"]["1"]
    assert per["minus_log_ess"]["includes_lower_bounds"] and per["minus_log_ess"]["points"] == 3
    two = per["minus_log_ess_resolved"]
    assert two["points"] == 2 and two["z"] == pytest.approx(
        math.log(math.log(0.056) / math.log(0.58)) / math.log(6**4 / 4**4))
    assert len(res["figures"]) == 3 and "spacing_fits" not in res


def test_tiny_su3_grid_with_chains(tmp_path, capsys):
    out = tmp_path / "su3c"
    assert main(["scaling", "--family", "residual", "--L", "2", "4", "--betas", "0.5",
                 "--train-L", "2", "--train-steps", "6", "--batch", "8", "--target-L",
                 "--eval-samples", "8", "--chains", "2", "--hmc-chains", "2", "--cycles", "40",
                 "--hmc-trajectories", "40", "--therm", "5", "--flow-batch", "4",
                 "--q-flow-time", "0.2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| hybrid: flow acc" in text and "HMC/hybrid P, Q" in text
    res = json.loads((out / "scaling.json").read_text())
    for p in res["points"]:
        assert "train_scratch" not in p  # --target-L without values: none
        h, m = p["hybrid"], p["hmc"]
        assert (h["steps"], h["chains"], h["kept"], m["steps"], m["chains"]) == (40, 2, 35, 40, 2)
        assert set(h["acceptance"]) == {"hmc", "flow"} and set(m["acceptance"]) == {"hmc"}
        assert 0 < h["acceptance"]["flow"] <= 1 and m["acceptance"]["hmc"] >= 0.5
        assert h["q_flow_time"] == 0.2 and h["clock"] == "process_time"
        for row in (h, m):
            per = row["seconds"] / (40 * 2)
            assert row["seconds_per_step_per_chain"] == pytest.approx(per)
            for what in ("q", "plaquette"):
                tau = row[what]["tau_int"]
                assert tau >= 0.5 - 1e-9  # the Gamma method's floor, a white series
                assert row[f"cost_per_independent_{what}"] == pytest.approx(per * 2 * tau)
            # 35 kept steps resolve tau_int only below 0.7
            assert row["is_lower_bound"] == (row["q"]["tau_int"] * 50 > 35)
            # strong coupling: <Re Tr P / 3> = beta/18 + O(beta^2) = 0.028 at beta 0.5
            assert 0.015 < row["plaquette"]["mean"] < 0.05
        # both chains sample exp(-S): their plaquettes agree within the errors
        assert p["plaquette_difference_sigma"] < 4
        assert p["hmc_over_hybrid_cost_q"] == pytest.approx(
            m["cost_per_independent_q"] / h["cost_per_independent_q"])
    per = res["fits"]["0.5"]
    for name in ("hybrid_cost_per_independent_q", "hmc_cost_per_independent_plaquette"):
        assert per[name]["points"] == 2
    png = out / "scaling_chains.png"
    assert str(png) in res["figures"]
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 200_000


def test_chain_row_on_series_of_known_tau_int():
    """AR(1) with coefficient rho has tau_int = (1 + rho) / (2 (1 - rho)): 2 for rho = 0.6;
    a white series 0.5; too short a chain makes the cost a lower bound."""
    import numpy as np

    from bridge.jobs.scaling_chains_su3 import su3_chain_row

    rng = np.random.default_rng(1)
    n, chains, rho = 4000, 4, 0.6
    ar = np.zeros((n, chains))
    for i in range(1, n):
        ar[i] = rho * ar[i - 1] + rng.normal(size=chains)
    obs = np.stack([ar, rng.normal(size=(n, chains))], -1)
    row = su3_chain_row(obs, {"hmc": 0.9}, 8.0, therm=0)
    assert row["q"]["tau_int"] == pytest.approx(2.0, abs=4 * row["q"]["tau_int_error"])
    assert row["plaquette"]["tau_int"] == pytest.approx(0.5, abs=0.1)
    per = 8.0 / (n * chains)
    assert row["cost_per_independent_q"] == pytest.approx(per * 2 * row["q"]["tau_int"])
    assert not row["is_lower_bound"] and not row["plaquette_is_lower_bound"]
    short = su3_chain_row(obs[:60], {"hmc": 0.9}, 1.0, therm=0)
    assert short["is_lower_bound"] and short["tau_int_q_kind"] == "gamma_lower"
