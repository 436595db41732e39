"""``qcd-bridge train`` / ``qcd-bridge sample`` (bridge.jobs.train): summary.json, resume
bit for bit, samples with log-weights equal to -S - log q recomputed from the saved model, HDF5
(plain and EnsembleStore) and ILDG outputs, clear errors for bad input."""

from __future__ import annotations

import json
import math

import h5py
import pytest
import torch

from bridge.cli import main
from bridge.flows.checkpoints import load_model
from bridge.gauge import wilson_action

TINY = ["--group", "u1", "--nrow", "4", "4", "--batch", "8", "--lr", "1e-2",
        "--eval-samples", "64", "--eval-batch", "16", "--log-every", "1"]


def _train(tmp_path, name, *extra):
    out = tmp_path / name
    rc = main(["train", *TINY, "--out", str(out), *extra])
    return rc, out


def _state(out):
    return torch.load(out / "checkpoint.pt", weights_only=False)


def test_train_writes_summary_and_resume_is_bit_for_bit(tmp_path, capsys):
    rc, out = _train(tmp_path, "a", "--steps", "3")
    assert rc == 0
    text = capsys.readouterr().out
    assert "step      3/3" in text and "ESS" in text and "s/step" in text
    s = json.loads((out / "summary.json").read_text())
    for key in ("ess", "acceptance", "steps", "seconds"):
        assert key in s
    assert s["steps"] == 3 and s["eval_samples"] == 64
    assert 0 < s["ess"] <= 1 and 0 <= s["acceptance"] <= 1 and s["seconds"] > 0
    assert (out / "config.json").exists()
    rc = main(["train", *TINY, "--out", str(out), "--steps", "5", "--resume"])
    assert rc == 0
    s2 = json.loads((out / "summary.json").read_text())
    assert s2["steps"] == 5 and s2["steps_this_run"] == 2
    rc, ref = _train(tmp_path, "b", "--steps", "5")
    assert rc == 0
    a, b = _state(out), _state(ref)
    assert a["step"] == b["step"] == 5
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k


def test_config_file_and_time_budget(tmp_path):
    cfg = tmp_path / "run.json"
    cfg.write_text(json.dumps({"group": "u1", "nrow": [4, 4], "beta": 1.5, "steps": 1000,
                               "batch": 4, "model": {"n_layers": 2, "k": 3, "hidden": [2]},
                               "train": {"schedule": "cosine", "lr_min": 1e-4}}))
    out = tmp_path / "c"
    rc = main(["train", str(cfg), "--out", str(out), "--time-budget", "0.5",
               "--eval-samples", "32", "--log-every", "0"])
    assert rc == 0
    s = json.loads((out / "summary.json").read_text())
    assert 0 < s["steps"] < 1000 and s["stopped_by_time_budget"] and s["beta"] == 1.5
    assert _state(out)["meta"]["model"]["n_layers"] == 2


def test_train_bad_input(tmp_path, capsys):
    rc, out = _train(tmp_path, "a", "--steps", "1")
    assert rc == 0
    capsys.readouterr()
    assert main(["train", *TINY, "--out", str(out), "--steps", "2"]) == 1
    assert "exists; pass --resume" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(out), "--steps", "2", "--resume",
                 "--group", "su2"]) == 1
    assert "group is 'U(1)', but this run has 'SU(2)'" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(out), "--steps", "2", "--resume",
                 "--nrow", "8", "8"]) == 1
    assert "lattice (4, 4) differs from this run's (8, 8)" in capsys.readouterr().err
    assert main(["train", *TINY, "--out", str(tmp_path / "x"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"grup": "u1"}))
    assert main(["train", str(bad), "--out", str(tmp_path / "y")]) == 1
    assert "unknown keys ['grup']" in capsys.readouterr().err
    assert main(["train", *TINY, "--nrow", "4", "4", "4", "--out", str(tmp_path / "z")]) == 1
    assert "nrow: expected 2 or 4 extents" in capsys.readouterr().err
    bad.write_text(json.dumps({"model": None}))
    assert main(["train", str(bad), "--arch", "residual", "--out", str(tmp_path / "w")]) == 1
    assert "'model' must be a JSON object of settings, got null" in capsys.readouterr().err
    bad.write_text(json.dumps({"model": {"arch": "coupling", "kappa": 0.5}}))
    assert main(["train", str(bad), "--out", str(tmp_path / "v")]) == 1
    assert ("kappa: not an option of the 'coupling' architecture (got kappa = 0.5)"
            in capsys.readouterr().err)


def test_sample_hdf5_weights_match_model(tmp_path, capsys):
    rc, out = _train(tmp_path, "a", "--steps", "2", "--beta", "1.7")
    assert rc == 0
    f = tmp_path / "s.h5"
    assert main(["sample", str(out), "--n", "7", "--batch", "3", "--out", str(f)]) == 0
    model, meta = load_model(out)
    with h5py.File(f) as h5:
        assert h5.attrs["format"] == "qcd-bridge-flow-samples" and h5.attrs["n_configs"] == 7
        u = torch.view_as_complex(torch.from_numpy(h5["links"][:]))
        logw = torch.from_numpy(h5["log_w"][:])
    assert u.shape[0] == 7 and torch.isfinite(logw).all()
    with torch.no_grad():
        want = -wilson_action(u, 1.7) - model.log_prob(u)
    assert torch.allclose(logw, want, rtol=0, atol=1e-9), float((logw - want).abs().max())
    assert len(set(logw.tolist())) == 7
    # another lattice the masks tile (translation equivariance) and ones they cannot
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "t.h5"),
                 "--nrow", "8", "8"]) == 0
    capsys.readouterr()
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "u.h5"),
                 "--nrow", "6", "6"]) == 1
    assert "cannot tile" in capsys.readouterr().err
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "v.h5"),
                 "--nrow", "4", "4", "4", "4"]) == 1
    assert "the model is 2-dimensional" in capsys.readouterr().err
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "cfg")]) == 1
    assert "ILDG files hold 4D SU(3) fields only, this model is 2D U(1)" in \
        capsys.readouterr().err
    assert main(["sample", str(out), "--n", "2", "--out", str(f)]) == 1
    assert "exists" in capsys.readouterr().err
    (tmp_path / "junk.pt").write_bytes(b"junk")
    assert main(["sample", str(tmp_path / "junk.pt"), "--n", "1", "--out",
                 str(tmp_path / "w.h5")]) == 1
    assert "cannot read it as a checkpoint" in capsys.readouterr().err


def test_su3_4d_sample_to_ensemble_store_and_ildg(tmp_path):
    from bridge.io.hdf5 import EnsembleStore
    from bridge.io.ildg import read_ildg

    cfg = tmp_path / "su3.json"
    cfg.write_text(json.dumps({"group": "su3", "nrow": [2, 2, 2, 2], "beta": 1.0, "steps": 1,
                               "batch": 2, "eval_samples": 4, "log_every": 0,
                               "model": {"n_layers": 2, "k": 2, "hidden": [2], "period": 2}}))
    out = tmp_path / "r"
    assert main(["train", str(cfg), "--out", str(out)]) == 0
    model, _ = load_model(out)
    assert main(["sample", str(out), "--n", "3", "--batch", "2",
                 "--out", str(tmp_path / "e.h5")]) == 0
    with EnsembleStore(tmp_path / "e.h5", "r") as st:
        assert len(st) == 3
        u, meta = st.read(1)
        p = meta["params"]
        with torch.no_grad():
            want = float(-wilson_action(u, 1.0) - model.log_prob(u))
        assert p["log_w"] == pytest.approx(want, abs=1e-9)
        # in double precision: torch.tensor(float) would round to float32 (rel. error ~1e-7)
        assert meta["weight"] == pytest.approx(math.exp(p["log_w"] - p["log_w_offset"]),
                                               rel=1e-12)
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "cfg")]) == 0
    w = json.loads((tmp_path / "cfg.weights.json").read_text())
    assert len(w["configs"]) == 2
    u = read_ildg(tmp_path / "cfg.00001.lime")
    u = u[0] if isinstance(u, tuple) else u
    with torch.no_grad():
        want = float(-wilson_action(u, 1.0) - model.log_prob(u))
    assert w["configs"][1]["log_w"] == pytest.approx(want, abs=1e-9)


def test_train_device_option(tmp_path, capsys):
    rc, out = _train(tmp_path, "cpu", "--steps", "2", "--device", "cpu")
    assert rc == 0
    assert json.loads((out / "config.json").read_text())["device"] == "cpu"
    capsys.readouterr()
    assert main(["train", *TINY, "--steps", "1", "--device", "tpu7",
                 "--out", str(tmp_path / "d")]) == 1
    assert "device: expected a torch device such as 'cpu' or 'cuda', got 'tpu7'" in (
        capsys.readouterr().err)
    if not torch.cuda.is_available():
        assert main(["train", *TINY, "--steps", "1", "--device", "cuda",
                     "--out", str(tmp_path / "e")]) == 1
        assert "'cuda' requested, but this machine (or this torch build) has no CUDA" in (
            capsys.readouterr().err)
