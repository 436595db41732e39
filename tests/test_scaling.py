"""``qcd-bridge scaling`` (bridge.jobs.scaling): the study on a tiny grid writes its JSON and
figures; the power-law fit, the charge analysis and the refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bridge.cli import main
from bridge.jobs.scaling import analyse_charge, fit_power_law


def test_tiny_grid_writes_json_and_plots(tmp_path, capsys):
    out = tmp_path / "sc"
    assert main(["scaling", "--L", "4", "8", "--betas", "1.5", "--train-L", "4",
                 "--train-steps", "20", "--batch", "16", "--target-max-steps", "15",
                 "--eval-samples", "64", "--cycles", "60", "--hmc-trajectories", "60",
                 "--therm", "5", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "scaling.json").read_text())
    assert res["format"] == "qcd-bridge-scaling" and res["settings"]["L"] == [4, 8]
    assert [(p["L"], p["volume"], p["beta"]) for p in res["points"]] == [(4, 16, 1.5),
                                                                          (8, 64, 1.5)]
    for p in res["points"]:
        t = p["transfer"]
        assert 0 < t["ess"] <= 1 and 0 <= t["acceptance"] <= 1
        assert t["cost_per_effective_sample"] == pytest.approx(t["seconds_per_sample"]
                                                               / t["ess"])
        for part in ("train_scratch", "train_transfer"):
            tr = p[part]
            assert tr["is_lower_bound"] == (not tr["reached"])
            # reached means confirmed on fresh samples (a small batch overestimates the ESS)
            assert not tr["reached"] or tr["ess_fresh"] >= 0.5
            assert tr["steps"] <= 15
        for name, steps, chains in (("hybrid", 60, 4), ("hmc", 60, 4)):
            c = p[name]
            assert (c["steps"], c["chains"]) == (steps, chains)
            assert c["q"]["n_per_chain"] == steps - 5
            assert c["cost_per_independent_q"] == pytest.approx(
                c["seconds_per_step_per_chain"] * 2 * c["tau_int_q"])
            # exactness of both chains: the plaquette within 5 Gamma-method errors of exact
            pl = c["plaquette"]
            assert abs(pl["mean"] - p["exact"]["plaquette"]) < 5 * pl["error"], (name, pl)
        assert set(p["hybrid"]["acceptance"]) == {"hmc", "flow"}
    fit = res["fits"]["1.5"]["cost_per_effective_sample"]
    c = [p["transfer"]["cost_per_effective_sample"] for p in res["points"]]
    assert fit["z"] == pytest.approx(math.log(c[1] / c[0]) / math.log(4))
    for name in ("scaling_ess.png", "scaling_training.png", "scaling_cost.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and 5_000 < len(data) < 200_000
        assert str(out / name) in res["figures"]
    assert f"wrote {out / 'scaling.json'}" in text
    assert "beta 1.5: cost_per_effective_sample ~ V^" in text


def test_power_law_fit_recovers_the_exponent():
    v = np.array([64.0, 256.0, 1024.0])
    f = fit_power_law(v, 0.3 * v**1.25)
    assert f["z"] == pytest.approx(1.25) and f["a"] == pytest.approx(0.3)
    assert f["z_error"] == pytest.approx(0.0, abs=1e-9) and f["points"] == 3
    two = fit_power_law([4, 16], [2.0, 8.0])
    assert two["z"] == pytest.approx(1.0) and two["z_error"] is None
    assert fit_power_law([4, 16], [2.0, None]) is None  # one usable point: no fit
    noisy = fit_power_law(v, 0.3 * v**1.25 * np.array([1.1, 0.9, 1.1]))
    assert noisy["z_error"] > 0


def test_charge_analysis_bounds_a_frozen_chain():
    frozen = np.zeros((200, 4))
    a = analyse_charge(frozen, 256, 0.005)
    # no change of Q in 199 x 4 steps: tau_tunnel > 2 V chi steps / 3
    assert a["tau_used_kind"] == "tunnel_lower" and a["tau_tunnel_is_bound"]
    assert a["tau_used"] == pytest.approx(2 * 256 * 0.005 * 199 * 4 / 3)
    rng = np.random.default_rng(0)
    white = rng.integers(-2, 3, size=(2000, 4)).astype(float)
    b = analyse_charge(white, 256, None)
    assert b["tau_used_kind"] == "gamma" and b["resolved"]
    assert abs(b["tau_int"] - 0.5) < 5 * b["tau_int_error"]
    assert b["chi_t"] == pytest.approx(2.0 / 256, rel=0.1)  # <Q^2> = 2 for uniform {-2..2}


@pytest.mark.parametrize("args,message", [
    (["--family", "coupling", "--L", "6", "8"], "--L 6: flow: layer 0 of the model"),
    (["--target-ess", "1.5"], "--target-ess 1.5: expected a number in (0, 1]"),
    (["--cycles", "10", "--therm", "8"], "--cycles 10: expected more than --therm 8 + 4"),
    (["--betas", "-1"], "--betas [-1.0]: expected positive couplings"),
    (["--batch", "1"], "--batch 1: expected a positive integer >= 2"),
    (["--L", "8", "--chain-L", "16"], "--chain-L [16]: expected some of --L [8] (or none)"),
    (["--q-flow-time", "-1"], "--q-flow-time -1.0 / --q-flow-eps 0.1: expected a flow time >= 0"),
])
def test_refusals_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["scaling", *args, "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()
