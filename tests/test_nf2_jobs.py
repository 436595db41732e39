"""Nf = 2 joint models in the jobs: ``train --kappa`` (staged training, summary.json, resume by
stage, refused settings), ``sample`` (log w = -S_g - log q + the multi-draw estimate, recomputed
from the saved model), ``chain`` (kappa and c_sw from the model, pseudofermion HMC + the
pseudo-marginal flow kernel, refused kappas) and ``run`` (the joint model's estimator instead of
the dense determinant, kappa of the XML checked).  One tiny joint model on 2^4 is trained once."""

from __future__ import annotations

import json
import math
import shutil

import h5py
import numpy as np
import pytest
import torch
from lxml import etree
from test_run import NF2, store_series, write_workflow, write_xml

from bridge.chroma.hmc_input import read_hmc_input
from bridge.chroma.monomials import gauge_action_for_joint_model
from bridge.cli import main
from bridge.errors import ConfigError
from bridge.flows.checkpoints import load_model
from bridge.flows.joint import JointFlow
from bridge.gauge import random_gauge, wilson_action
from bridge.jobs.chain import chain_settings, resolve_model
from bridge.jobs.train import SampleSettings, run_train, sample_flow, train_settings
from bridge.lattice import Lattice
from bridge.rng import generator, rng_key

NROW = ["2", "2", "2", "2"]
SU3_2222 = {"group": "su3", "nrow": [2, 2, 2, 2]}
KAPPA = 0.1
# a small model: the default residual marginal and context trunk are slow on two busy cores
MODEL = {"model": {"n_layers": 2, "hidden": [2]},
         "conditional": {"n_layers": 2, "context_hidden": [2], "context_channels": 2}}
TINY = ["--group", "su3", "--nrow", *NROW, "--beta", "1", "--kappa", str(KAPPA), "--batch", "4",
        "--eval-samples", "16", "--eval-batch", "8", "--pf-draws", "2", "--log-every", "1"]


def _config(tmp):
    path = tmp / "nf2.json"
    if not path.exists():
        path.write_text(json.dumps(MODEL))
    return path


def _train(tmp, name, *extra):
    out = tmp / name
    return main(["train", str(_config(tmp)), *TINY, "--out", str(out), *extra]), out


@pytest.fixture(scope="module")
def joint(tmp_path_factory):
    """A joint model trained 3 + 3 steps (marginal, then conditional), and its stdout."""
    import io
    from contextlib import redirect_stdout

    tmp = tmp_path_factory.mktemp("nf2")
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc, out = _train(tmp, "model", "--steps", "3")
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def gauge_only(tmp_path_factory):
    """An untrained 4D SU(3) gauge flow on 2^4 saved as `qcd-bridge train` saves it."""
    from bridge.flows import make_flow
    from bridge.flows.training import TrainConfig, Trainer

    tmp = tmp_path_factory.mktemp("gauge")
    torch.manual_seed(3)
    model = make_flow("SU3", 4, n_layers=2, hidden=(2,), k=2, period=2)
    Trainer(model, TrainConfig(nrow=[2, 2, 2, 2], beta=1.0)).save(tmp / "flow" / "checkpoint.pt")
    return tmp / "flow"


# -- train --kappa ----------------------------------------------------------------------------
def test_train_kappa_writes_stages_and_summary(joint):
    out, text = joint
    for name in ("checkpoint.pt", "stage-marginal.pt", "stage-conditional.pt", "config.json",
                 "summary.json"):
        assert (out / name).exists(), name
    s = json.loads((out / "summary.json").read_text())
    for key in ("ess", "acceptance", "eval_samples", "pf_draws", "failed", "ess_exact_det",
                "exact_det_samples", "ess_same_samples", "steps", "seconds", "kappa"):
        assert key in s, key
    assert s["steps"] == {"marginal": 3, "conditional": 3}
    assert s["kappa"] == KAPPA and s["c_sw"] == 0.0 and s["nrow"] == [2, 2, 2, 2]
    assert s["eval_samples"] == 16 and s["pf_draws"] == 2 and s["failed"] == 0
    assert math.isfinite(s["ess"]) and 0 < s["ess"] <= 1 and 0 <= s["acceptance"] <= 1
    # V = 16 <= 256: every evaluation field also gets the exact determinant
    assert s["exact_det_samples"] == 16
    assert 0 < s["ess_exact_det"] <= 1 and s["ess_same_samples"] == pytest.approx(s["ess"])
    assert s["seconds"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kappa"] == KAPPA and cfg["stage"] == "both"
    assert cfg["conditional"] == MODEL["conditional"]
    assert "[marginal] step      3/3" in text and "[conditional] step      3/3" in text
    model, meta = load_model(out)
    assert isinstance(model, JointFlow) and model.kappa == KAPPA
    assert model.conditional.config["n_layers"] == 2 and meta["train"]["nrow"] == [2, 2, 2, 2]
    stages = {st: torch.load(out / f"stage-{st}.pt", weights_only=False)
              for st in ("marginal", "conditional")}
    assert stages["marginal"]["step"] == stages["conditional"]["step"] == 3
    # the conditional stage froze the marginal: both stage files hold the same marginal weights
    a, b = stages["marginal"]["model"], stages["conditional"]["model"]
    marg = [k for k in a if k.startswith("marginal.")]
    cond = [k for k in a if k.startswith("conditional.")]
    assert marg and cond
    assert all(torch.equal(a[k], b[k]) for k in marg)
    assert any(not torch.equal(a[k], b[k]) for k in cond)


def test_train_kappa_resume_continues_each_stage(joint, tmp_path):
    src, _ = joint
    out = tmp_path / "model"
    shutil.copytree(src, out)
    shutil.copy(src.parent / "nf2.json", tmp_path / "nf2.json")
    before = torch.load(out / "stage-marginal.pt", weights_only=False)["model"]
    files = {f.name: f.read_bytes() for f in out.iterdir()}
    # without --resume an existing run is refused, before anything is overwritten
    s = train_settings(str(tmp_path / "nf2.json"), **_opts(out, steps=5))
    with pytest.raises(ConfigError, match=r"stage-marginal\.pt exists; pass --resume"):
        run_train(s)
    assert {f.name: f.read_bytes() for f in out.iterdir()} == files
    rc, _ = _train(tmp_path, "model", "--steps", "5", "--resume")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {"marginal": 5, "conditional": 5}
    after = {st: torch.load(out / f"stage-{st}.pt", weights_only=False)
             for st in ("marginal", "conditional")}
    assert after["marginal"]["step"] == after["conditional"]["step"] == 5
    assert len(after["marginal"]["history"]) == 5  # 3 before the resume, 2 after
    assert any(not torch.equal(before[k], after["marginal"]["model"][k])
               for k in before if k.startswith("marginal."))
    # --pf-steps counts the conditional stage separately
    rc, _ = _train(tmp_path, "model", "--steps", "5", "--pf-steps", "6", "--resume")
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == {"marginal": 5, "conditional": 6}


def test_train_kappa_resume_is_bit_for_bit(tmp_path):
    """2 + 4 conditional steps in one run equal 2 steps, then a resume to 4 (the gauge-field
    pool of the conditional stage has its own stream)."""
    rc, straight = _train(tmp_path, "a", "--steps", "2", "--pf-steps", "4", "--pool-refresh",
                          "3")
    assert rc == 0
    rc, split = _train(tmp_path, "b", "--steps", "2", "--pf-steps", "2", "--pool-refresh", "3")
    assert rc == 0
    rc, split = _train(tmp_path, "b", "--steps", "2", "--pf-steps", "4", "--pool-refresh", "3",
                       "--resume")
    assert rc == 0
    a = torch.load(straight / "stage-conditional.pt", weights_only=False)
    b = torch.load(split / "stage-conditional.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]


def _opts(out, **kw):
    base = dict(group="su3", nrow=[2, 2, 2, 2], beta=1.0, kappa=KAPPA, batch=4,
                eval_samples=16, eval_batch=8, pf_draws=2, log_every=0, out=str(out))
    base.update(kw)
    return {k: v for k, v in base.items() if v is not None}


@pytest.mark.parametrize("opts, message", [
    (dict(group="u1", nrow=[4, 4]), r"--kappa 0\.1: Nf = 2 Wilson fermions need a 4D SU\(3\)"),
    (dict(nrow=[4, 4]), r"need a 4D SU\(3\) lattice .* --group su3 --nrow 4 4"),
    (dict(group="su2"), r"need a 4D SU\(3\) lattice .* got --group su2"),
    (dict(nrow=[2, 2, 2, 3]), r"--nrow 2 2 2 3: the even-odd pseudofermion field needs even "
                              r"extents"),
    (dict(kappa=None, stage="conditional"), r"stage: pseudofermion training settings need "
                                            r"--kappa"),
    (dict(kappa=None, pf_steps=4), r"pf_steps: pseudofermion training settings need --kappa"),
    (dict(kappa=None, init="somewhere"), r"init: .*need --kappa"),
    (dict(pf_draws=0), r"pf_draws: expected at least 1 pseudofermion draw, got 0"),
    (dict(mu0=-1.0), r"mu0: expected a regulator >= 0, got -1\.0"),
    (dict(stage="all"), r"stage: expected one of .*'joint'.*, got 'all'"),
])
def test_train_kappa_refused_settings(tmp_path, opts, message):
    with pytest.raises(ConfigError, match=message):
        train_settings(None, **_opts(tmp_path / "x", **opts))
    assert not (tmp_path / "x").exists()


def test_train_kappa_refusals_on_the_command_line(tmp_path, capsys):
    assert main(["train", "--group", "u1", "--nrow", "4", "4", "--kappa", "0.1", "--out",
                 str(tmp_path / "a")]) == 1
    assert "4D SU(3)" in capsys.readouterr().err
    assert main(["train", "--group", "su3", "--nrow", *NROW, "--stage", "conditional",
                 "--out", str(tmp_path / "b")]) == 1
    assert "need --kappa" in capsys.readouterr().err
    assert main(["train", "--group", "su3", "--nrow", "2", "2", "2", "3", "--kappa", "0.1",
                 "--out", str(tmp_path / "c")]) == 1
    assert "even extents" in capsys.readouterr().err
    # a pure-gauge run with the same options stays valid (the check only fires with fermions)
    s = train_settings(None, group="u1", nrow=[4, 4])
    assert s["kappa"] is None and s["stage"] == "both"


# -- sample -----------------------------------------------------------------------------------
def test_sample_joint_weights_include_the_estimate(joint, tmp_path, capsys):
    from bridge.io.hdf5 import EnsembleStore

    out, _ = joint
    f = tmp_path / "s.h5"
    assert main(["sample", str(out), "--n", "4", "--batch", "4", "--seed", "5", "--out", str(f),
                 "--pf-draws", "3"]) == 0
    assert "(3 pseudofermion draws each)" in capsys.readouterr().err
    with EnsembleStore(f, "r") as st:
        assert len(st) == 4
        recs = [st.read(i) for i in range(4)]
    u = torch.cat([r[0] for r in recs])
    p = [r[1]["params"] for r in recs]
    logw = torch.tensor([x["log_w"] for x in p], dtype=torch.float64)
    logq = torch.tensor([x["log_q"] for x in p], dtype=torch.float64)
    act = torch.tensor([x["action"] for x in p], dtype=torch.float64)
    assert torch.isfinite(logw).all()
    model, _ = load_model(out)
    with torch.no_grad():
        assert torch.allclose(act, wilson_action(u, 1.0), rtol=0, atol=1e-9)
        assert torch.allclose(logq, model.log_prob(u), rtol=0, atol=1e-8)
        # the same stream as the job: the fields, then the pseudofermions of the estimate
        gen = generator(rng_key(5, 0))
        u2, _ = model.sample(4, [2, 2, 2, 2], generator=gen)
        est = model.estimator(3)(u2, gen)
    assert torch.allclose(u, u2, rtol=0, atol=1e-12)
    extra = logw + act + logq
    assert (extra.abs() > 1.0).all(), extra  # not the pure-gauge weight -S - log q
    assert torch.allclose(extra, est, rtol=0, atol=1e-8), (extra, est)
    # a field's estimate is a noisy log det(K^dag K) (~300 here), within O(1) of the exact one
    from bridge.fermions import exact_logdet

    exact = exact_logdet(u, KAPPA, boundary=(1, 1, 1, -1), normalisation="chroma", kind="schur")
    assert (extra - exact).abs().max() < 15, (extra, exact)


def test_sample_defaults_to_the_trainings_pf_draws(joint, tmp_path, capsys):
    out, _ = joint
    assert main(["sample", str(out), "--n", "2", "--batch", "2", "--out",
                 str(tmp_path / "d.h5")]) == 0
    assert "(2 pseudofermion draws each)" in capsys.readouterr().err  # TINY: --pf-draws 2
    assert main(["sample", str(out), "--n", "2", "--out", str(tmp_path / "e.h5"),
                 "--pf-draws", "0"]) == 1
    assert "--pf-draws 0: expected at least 1" in capsys.readouterr().err
    assert not (tmp_path / "e.h5").exists()


def test_train_kappa_resume_needs_a_stage_checkpoint(tmp_path):
    from bridge.jobs.train import run_train, train_settings

    s = train_settings(None, **_opts(tmp_path / "empty"))
    with pytest.raises(ConfigError, match="--resume: no stage checkpoint"):
        run_train(s, resume=True)


def test_sample_pf_draws_needs_a_joint_model(gauge_only, tmp_path):
    with pytest.raises(ConfigError, match=r"--pf-draws 4: the model .* has no pseudofermion "
                                          r"flow"):
        sample_flow(SampleSettings(model=str(gauge_only), n=2, out=str(tmp_path / "g.h5"),
                                   pf_draws=4))
    assert not (tmp_path / "g.h5").exists()


# -- chain ------------------------------------------------------------------------------------
def test_chain_with_joint_model(joint, tmp_path, capsys):
    model_dir, _ = joint
    out = tmp_path / "chain"
    assert main(["chain", "--model", str(model_dir), "--schedule", "hmc:1,flow:2", "--tau", "0.5",
                 "--md-steps", "3", "--steps", "3", "--chains", "2", "--out", str(out),
                 "--no-progress", "--pf-draws", "2"]) == 0
    capsys.readouterr()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["kappa"] == KAPPA and cfg["c_sw"] == 0.0 and cfg["pf_draws"] == 2
    assert cfg["nrow"] == [2, 2, 2, 2] and cfg["group"] == "su3" and cfg["beta"] == 1.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["cycles"] == 3 and summary["chains"] == 2
    assert set(summary["kernels"]) == {"hmc", "flow"}
    for k in ("hmc", "flow"):
        assert 0 <= summary["acceptance"][k] <= 1, summary["acceptance"]
    assert math.isfinite(summary["plaquette"]["mean"])
    with h5py.File(out / "chain.h5", "r") as h5:
        kernels = json.loads(h5.attrs["kernels"])
        kind = [kernels[k] for k in h5["records/kernel"][:]]
        refreshed = list(h5["records/refreshed"][:])
        assert np.isfinite(h5["records/delta"][:]).all()
    assert kind == ["hmc", "flow", "flow"] * 3
    # pseudo-marginal: after HMC moved U, the first flow step redraws both chains' estimates
    # (exact conditional refresh); the second keeps them
    assert refreshed == [0, 2, 0] * 3


def test_chain_kappa_puts_the_fermions_into_hmc(tmp_path, capsys):
    """Plain HMC on 2^4 with and without --kappa from the same seed: the pseudofermion monomial
    changes the trajectories."""
    plaq = {}
    for name, extra in (("pure", []), ("nf2", ["--kappa", str(KAPPA)])):
        out = tmp_path / name
        assert main(["chain", "--group", "su3", "--nrow", *NROW, "--beta", "1", "--schedule",
                     "hmc:1", "--tau", "0.3", "--md-steps", "3", "--steps", "2", "--chains", "1",
                     "--out", str(out), "--no-progress", *extra]) == 0
        cfg = json.loads((out / "config.json").read_text())
        assert cfg["kappa"] == (KAPPA if extra else None)
        with h5py.File(out / "chain.h5", "r") as h5:
            plaq[name] = h5["observables/plaquette"][:]
    capsys.readouterr()
    assert np.isfinite(plaq["nf2"]).all()
    assert not np.allclose(plaq["pure"], plaq["nf2"], rtol=0, atol=1e-10)


def test_chain_settings_take_the_models_fermions(joint):
    model_dir, _ = joint
    s, explicit = chain_settings(None, model=str(model_dir), schedule="hmc:1,flow:1")
    assert s.kappa is None
    model = resolve_model(s, explicit)
    assert s.kappa == KAPPA and s.c_sw == 0.0 and s.nrow == [2, 2, 2, 2] and s.group == "su3"
    assert model.kappa == KAPPA
    s, explicit = chain_settings(None, model=str(model_dir), kappa=KAPPA, **SU3_2222)
    resolve_model(s, explicit)  # the model's own kappa, given explicitly, is fine
    assert s.kappa == KAPPA


def test_chain_kappa_with_model_lattice_from_the_model(joint):
    """--kappa with a joint model: the lattice comes from the model before it is checked."""
    model_dir, _ = joint
    s, explicit = chain_settings(None, model=str(model_dir), kappa=KAPPA)
    resolve_model(s, explicit)
    assert s.kappa == KAPPA and s.nrow == [2, 2, 2, 2]
    s, explicit = chain_settings(None, model=str(model_dir), kappa=KAPPA + 0.02)
    with pytest.raises(ConfigError, match=r"kappa 0\.12.*trained for kappa = 0\.1"):
        resolve_model(s, explicit)


def test_chain_pf_draws_needs_a_joint_model():
    s, explicit = chain_settings(None, group="su3", nrow=[2, 2, 2, 2], kappa=KAPPA, pf_draws=4)
    with pytest.raises(ConfigError, match="pf-draws 4.*no pseudofermion flow"):
        resolve_model(s, explicit)


def test_chain_refuses_kappas(joint, gauge_only, tmp_path, capsys):
    model_dir, _ = joint
    # (--group/--nrow given explicitly: see test_chain_kappa_with_model_lattice_from_the_model)
    s, explicit = chain_settings(None, model=str(model_dir), kappa=0.12, **SU3_2222)
    with pytest.raises(ConfigError, match=r"--kappa 0\.12: the model .* was trained for kappa "
                                          r"= 0\.1;"):
        resolve_model(s, explicit)
    s, explicit = chain_settings(None, model=str(model_dir), c_sw=1.5)
    with pytest.raises(ConfigError, match=r"--c-sw 1\.5: the model .* trained for c_sw = 0"):
        resolve_model(s, explicit)
    s, explicit = chain_settings(None, model=str(gauge_only), kappa=KAPPA, **SU3_2222)
    with pytest.raises(ConfigError, match=r"--kappa 0\.1: the model .* without a pseudofermion "
                                          r"flow"):
        resolve_model(s, explicit)
    for opts in (dict(group="u1", nrow=[4, 4]), dict(group="su3", nrow=[4, 4]),
                 dict(group="su3", nrow=[2, 2, 2, 3])):
        with pytest.raises(ConfigError, match=r"--kappa 0\.1: Nf = 2 Wilson fermions need a 4D "
                                              r"SU\(3\) lattice"):
            resolve_model(*chain_settings(None, kappa=KAPPA, **opts))
    with pytest.raises(ConfigError, match=r"--kappa: expected a positive hopping parameter"):
        chain_settings(None, kappa=-0.1, group="su3", nrow=[2, 2, 2, 2])
    # the command line: exit status 1, the message on stderr, nothing run
    out = tmp_path / "c"
    assert main(["chain", "--model", str(model_dir), "--group", "su3", "--nrow", *NROW,
                 "--kappa", "0.13", "--steps", "1",
                 "--out", str(out), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "0.13" in err and "kappa = 0.1" in err
    assert not (out / "summary.json").exists()


# -- run (drop-in) ----------------------------------------------------------------------------
def _nf2_xml(tmp, name="hmc.ini.xml", kappa=None):
    path = write_xml(tmp, src=NF2, nrow="2 2 2 2", beta=1.0, n_steps=3, tau0=0.3, name=name)
    if kappa is not None:
        tree = etree.parse(str(path))
        for el in tree.getroot().iter("Kappa"):
            el.text = str(kappa)
        tree.write(str(path))
    return path


def test_run_with_joint_model_uses_the_estimator(joint, tmp_path):
    model_dir, _ = joint
    _nf2_xml(tmp_path)
    # fermion_max_sites = 1 would refuse the dense determinant: a joint model does not need it
    wf = write_workflow(tmp_path, model=str(model_dir), cycles=1, trajectories=1, flow_steps=2,
                        flow_batch=2, pf_draws=2, fermion_max_sites=1)
    from bridge.jobs.dropin import run_workflow

    s = run_workflow(wf, log=None)
    assert s.finished and s.cycles_done == 1 and s.updates == 3
    data = store_series(s.store)
    assert list(data["kernel"][0]) == [0, 1, 1]
    assert np.isfinite(data["delta"][0]).all() and np.isfinite(data["w_plaq"][0]).all()
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())[0]
    assert "pseudo-marginal estimate of the joint model" in prov["flow_action"]
    assert "kappa = 0.1" in prov["flow_action"]
    assert "exact determinant" not in prov["flow_action"]
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["fingerprint"]["pf_draws"] == 2


def test_run_refuses_a_joint_model_for_another_kappa(joint, tmp_path):
    model_dir, _ = joint
    _nf2_xml(tmp_path, kappa=0.12)
    wf = write_workflow(tmp_path, model=str(model_dir), cycles=1, trajectories=1, flow_steps=2)
    from bridge.jobs.dropin import run_workflow

    with pytest.raises(ConfigError, match=r"kappa = 0\.12, but the model's pseudofermion flow "
                                          r"was trained for kappa = 0\.1"):
        run_workflow(wf, log=None)
    assert not (tmp_path / "run" / "ensemble.h5").exists()


def test_gauge_action_for_joint_model(tmp_path):
    inp = read_hmc_input(_nf2_xml(tmp_path), strict=False)
    action, desc = gauge_action_for_joint_model(inp, 0.1, 0.0, (1, 1, 1, -1))
    u = random_gauge(Lattice([2, 2, 2, 2]), "SU3", 3, generator=torch.Generator().manual_seed(2),
                     dtype=torch.complex128)
    # the gauge part only: the determinant comes from the model's estimate
    assert torch.allclose(action(u), wilson_action(u, 1.0), rtol=1e-12, atol=1e-9)
    assert "Nf=2 kappa = 0.1, c_sw = 0.0" in desc and "pseudo-marginal" in desc
    with pytest.raises(ConfigError, match=r"kappa = 0\.1, but the model's pseudofermion flow was "
                                          r"trained for kappa = 0\.11"):
        gauge_action_for_joint_model(inp, 0.11, 0.0, (1, 1, 1, -1))
    with pytest.raises(ConfigError, match=r"c_sw = 0, but the model's pseudofermion flow was "
                                          r"trained for c_sw = 1\.2"):
        gauge_action_for_joint_model(inp, 0.1, 1.2, (1, 1, 1, -1))
    with pytest.raises(ConfigError, match=r"fermion boundary phases"):
        gauge_action_for_joint_model(inp, 0.1, 0.0, (1, 1, 1, 1))
    pure = read_hmc_input(write_xml(tmp_path, nrow="2 2 2 2", beta=1.0, name="pure.xml"),
                          strict=False)
    with pytest.raises(ConfigError, match=r"the Hamiltonian has 0"):
        gauge_action_for_joint_model(pure, 0.1, 0.0, (1, 1, 1, -1))


def test_train_kappa_data_parallel_two_ranks(tmp_path):
    """`qcd-bridge train --kappa` under two gloo ranks (as torchrun starts them): both stages
    run with the data-parallel trainer (world size 2 in the checkpoints and the summary), and
    rank 0 alone evaluates and reports."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "ddp"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2",
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bridge.cli", "train", str(_config(tmp_path)), *TINY,
           "--steps", "2", "--pf-steps", "2", "--out", str(out)]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in range(2)]
    logs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == {"marginal": 2, "conditional": 2}
    ck = torch.load(out / "stage-conditional.pt", weights_only=False)
    assert ck["world_size"] == 2 and ck["step"] == 2
    assert "trained" in logs[0] and "trained" not in logs[1]  # rank 0 reports
