"""``qcd-bridge scaling --family residual``: the 4D SU(3) residual staple flow on a tiny grid
writes its JSON and figures (ESS of the transferred model, cost per effective sample, training to
the target from scratch and from the transferred start, the V exponent; no chains)."""

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
                 "--eval-samples", "16", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "note: --family residual (4D SU3): the flow's ESS, cost and training only" in text
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
        assert "hybrid" not in p and "hmc" not in p
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
