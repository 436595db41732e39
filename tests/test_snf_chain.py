"""NE-MCMC in ``qcd-bridge chain`` (bridge.jobs.chain_ne): a stochastic normalizing flow as
--model, exactness through the command line on 2D U(1), resume, the prior from a Chroma file
(checked against beta0), and the refusals."""

from __future__ import annotations

import json
import re

import pytest
import torch

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.exact import u1_2d_plaquette
from bridge.flows.checkpoints import load_model
from bridge.io.chains import read_chain
from bridge.jobs.chain_ne import check_prior_file
from tests.conftest import DATA

CHROMA_PG = DATA / "chroma" / "pure_gauge_b5.5_4x4" / "pg_b5.5_4x4_cfg_1500.lime"
CHROMA_NF2 = DATA / "chroma" / "nf2_b1.0_k0.1_4x4" / "nf2_b1.0_k0.1_4x4_cfg_1500.lime"


def _train(out, *args) -> None:
    assert main(["train", "--arch", "snf", "--steps", "1", "--batch", "2", "--therm", "1",
                 "--eval-samples", "2", "--eval-batch", "2", "--out", str(out), *args]) == 0


@pytest.fixture(scope="module")
def u1_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("snf") / "u1"
    _train(out, "--group", "u1", "--nrow", "4", "4", "--beta0", "1.0", "--beta", "2.0",
           "--blocks", "2")
    return out


@pytest.fixture(scope="module")
def su3_model(tmp_path_factory):
    """A 4^4 SU(3) model whose prior is Chroma's pure-gauge ensemble at beta 5.5."""
    out = tmp_path_factory.mktemp("snf") / "su3"
    _train(out, "--group", "su3", "--nrow", "4", "4", "4", "4", "--beta0", "5.5", "--beta", "5.6",
           "--blocks", "1")
    return out


def test_nemcmc_chain_is_exact_on_2d_u1(tmp_path, u1_model, capsys):
    out = tmp_path / "c"
    assert main(["chain", "--model", str(u1_model), "--chains", "8", "--steps", "300",
                 "--therm", "30", "--start", "cold", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "acceptance: nemcmc" in text
    s = json.loads((out / "summary.json").read_text())
    assert s["kernels"] == ["nemcmc"] and 0.05 < s["acceptance"]["nemcmc"] <= 1
    p = s["plaquette"]
    exact = u1_2d_plaquette(2.0, 4)
    assert abs(p["mean"] - exact) < 4 * p["error"], (p, exact)
    assert p["error"] < 0.025  # the check has teeth (exact 0.6992; errors seen 0.009-0.013)


def test_nemcmc_chain_resumes_bit_for_bit(tmp_path, u1_model):
    common = ["chain", "--model", str(u1_model), "--chains", "2", "--no-progress",
              "--checkpoint-every", "0", "--prior-steps", "2"]
    assert main(common + ["--steps", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(["chain", "--out", str(tmp_path / "a"), "--steps", "7", "--resume",
                 "--no-progress"]) == 0
    assert main(common + ["--steps", "7", "--out", str(tmp_path / "b")]) == 0
    a, b = read_chain(tmp_path / "a" / "chain.h5"), read_chain(tmp_path / "b" / "chain.h5")
    for k in a["observables"]:
        assert torch.equal(torch.as_tensor(a["observables"][k]),
                           torch.as_tensor(b["observables"][k])), k
    ca = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)["state"]
    cb = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=False)["state"]
    assert torch.equal(ca.U, cb.U) and torch.equal(ca.log_est, cb.log_est)


def test_chroma_configuration_is_the_prior(tmp_path, su3_model, capsys):
    model, _ = load_model(su3_model)
    assert check_prior_file(str(CHROMA_PG), model) is None  # beta 5.5, Wilson, periodic
    out = tmp_path / "c"
    assert main(["chain", "--model", str(su3_model), "--start", str(CHROMA_PG), "--chains",
                 "2", "--steps", "2", "--out", str(out), "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["cycles"] == 2 and "nemcmc" in s["acceptance"]
    assert "notice" not in capsys.readouterr().err


def test_prior_file_mismatches_are_refused(tmp_path, su3_model):
    model, _ = load_model(su3_model)
    assert model.beta0 == 5.5
    model.config["beta0"] = 6.0  # the same model with another prior coupling
    with pytest.raises(ConfigError, match=r"pg_b5.5_4x4_cfg_1500.lime \(scidac-record-xml\): "
                                          r"GaugeAction/beta is 5.5, the model's prior is at "
                                          r"beta0 = 6"):
        check_prior_file(str(CHROMA_PG), model)
    model.config["beta0"] = 5.5
    with pytest.raises(ConfigError, match=r"nf2_b1.0_k0.1_4x4_cfg_1500.lime \(scidac-record-"
                                          r"xml\): the ensemble has the fermion monomials"):
        check_prior_file(str(CHROMA_NF2), model)


def test_prior_file_without_parameters_gets_a_notice(tmp_path, su3_model, capsys):
    from bridge.io import read_gauge, write_gauge

    u, _ = read_gauge(CHROMA_PG)
    bare = tmp_path / "bare.lime"
    write_gauge(bare, u, "ildg")
    model, _ = load_model(su3_model)
    note = check_prior_file(str(bare), model)
    assert note is not None and "its coupling was not checked against the model's beta0 = " \
        "5.5" in note
    assert main(["chain", "--model", str(su3_model), "--start", str(bare), "--chains", "1",
                 "--steps", "1", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    assert "coupling was not checked" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--schedule", "hmc:1,flow:1,nemcmc:1"], r"--schedule 'hmc:1,flow:1,nemcmc:1': --model .* "
                                              r"is a stochastic normalizing flow, not a flow "
                                              r"proposal"),
    (["--mixture", "hmc:1"], r"--mixture 'hmc:1': --model .* the schedule needs its kernel "
                             r"nemcmc"),
])
def test_refusals(tmp_path, u1_model, capsys, extra, message):
    assert main(["chain", "--model", str(u1_model), "--steps", "1", "--out",
                 str(tmp_path / "c"), "--no-progress", *extra]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_odd_lattice_and_kernel_without_snf_are_refused(tmp_path, u1_model, capsys):
    assert main(["chain", "--model", str(u1_model), "--nrow", "5", "4", "--steps", "1",
                 "--out", str(tmp_path / "c"), "--no-progress"]) == 1
    assert "stochastic normalizing flow; its heatbath and stout masks need even extents" in \
        capsys.readouterr().err
    assert main(["chain", "--schedule", "nemcmc:1", "--steps", "1", "--out",
                 str(tmp_path / "d"), "--no-progress"]) == 1
    assert "needs --model" in capsys.readouterr().err


def test_defect_model_chain_samples_the_torus(tmp_path, capsys):
    # the defect protocol open -> periodic at fixed beta from the command line: 2D SU(2) 4x4,
    # the whole time boundary as the defect; the chain's plaquette is the exact torus value
    from bridge.exact import su2_2d_plaquette

    _train(tmp_path / "m", "--group", "su2", "--nrow", "4", "4", "--beta0", "2", "--beta",
           "2", "--blocks", "4", "--defect", "4")
    model, _ = load_model(tmp_path / "m")
    assert model.config["defect"] == [4] and model.config["c0"] == 0.0
    pr = model.prior_protocol()
    assert pr.defect == (4,) and pr.coefficients() == (0.0, 0.0)
    assert main(["chain", "--model", str(tmp_path / "m"), "--chains", "16", "--steps", "80",
                 "--therm", "10", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    p = s["plaquette"]
    assert abs(p["mean"] - su2_2d_plaquette(2.0, 4)) < 4 * p["error"], p
    assert p["error"] < 0.01 and s["acceptance"]["nemcmc"] > 0.1


@pytest.mark.parametrize("extra, message", [
    (["--group", "su2", "--nrow", "4", "4", "--defect", "5"],
     r"--defect 5: defect: extent 5 in direction 0 is outside 1 \.\. L_0 = 4"),
    (["--group", "u1", "--nrow", "4", "4", "--defect", "2"],
     r"--defect 2: the defect protocol runs the heatbath"),
    (["--group", "su2", "--nrow", "4", "4", "--c0", "-1", "--defect", "2"],
     r"--c0 -1.0: expected a defect coefficient >= 0"),
])
def test_defect_training_refusals(tmp_path, capsys, extra, message):
    assert main(["train", "--arch", "snf", "--beta0", "2", "--beta", "2", "--steps", "1",
                 "--out", str(tmp_path / "m"), *extra]) == 1
    assert re.search(message, capsys.readouterr().err)


def test_hmc_and_nemcmc_schedule_is_exact_on_2d_u1(tmp_path, u1_model):
    out = tmp_path / "c"
    assert main(["chain", "--model", str(u1_model), "--schedule", "hmc:1,nemcmc:1", "--chains",
                 "8", "--steps", "200", "--therm", "20", "--start", "cold", "--out", str(out),
                 "--no-progress"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert set(s["acceptance"]) == {"hmc", "nemcmc"}
    p = s["plaquette"]
    exact = u1_2d_plaquette(2.0, 4)
    assert abs(p["mean"] - exact) < 4 * p["error"], (p, exact)
    assert p["error"] < 0.025


def test_sample_writes_jarzynski_weighted_runs(tmp_path, u1_model, capsys):
    # qcd-bridge sample with an SNF: protocol end points with log w = -W (log q undefined);
    # the reweighted plaquette is the exact 2D U(1) value at beta
    import h5py

    from bridge.gauge import mesplq
    from bridge.mcmc.reweighting import reweighted_mean

    out = tmp_path / "s.h5"
    assert main(["sample", str(u1_model), "--n", "4096", "--batch", "512", "--out",
                 str(out)]) == 0
    with h5py.File(out, "r") as f:
        links = torch.as_tensor(f["links"][()])
        log_w = torch.as_tensor(f["log_w"][()])
        log_q = f["log_q"][()]
        assert "protocol beta0 -> beta" in str(dict(f.attrs))
    assert log_w.shape == (4096,) and bool(torch.isnan(torch.as_tensor(log_q)).all())
    u = torch.view_as_complex(links.contiguous())
    plaq = mesplq(u).w_plaq
    mean, err = reweighted_mean(plaq, log_w)
    assert abs(mean - u1_2d_plaquette(2.0, 4)) < 4 * err, (mean, err)
    assert err < 0.03  # heavy-tailed weights of a barely trained model: 0.011-0.017 seen
    with pytest.raises(ConfigError, match=r"--beta 3: the stochastic normalizing flow .* ends "
                                          r"at beta = 2"):
        from bridge.jobs.train import SampleSettings, sample_flow

        sample_flow(SampleSettings(model=str(u1_model), n=4, out=str(tmp_path / "t.h5"),
                                   beta=3.0))
