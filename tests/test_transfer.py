"""Models that travel: a local flow trained on one lattice used on another (bridge.jobs.transfer,
docs/sampler.md "Transfer to other lattices")."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_run import run_workflow, write_model, write_workflow, write_xml

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.exact import u1_2d_plaquette
from bridge.flows import make_flow
from bridge.flows.training import TrainConfig, Trainer
from bridge.jobs.chain import chain_settings, resolve_model, run_chains
from bridge.jobs.dropin import _check_model
from bridge.jobs.transfer import check_transfer
from bridge.lattice import Lattice
from bridge.rng import generator

BETA = 1.0


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small 2D U(1) coupling flow for 8x8 with a few training steps, saved as a run dir."""
    out = tmp_path_factory.mktemp("model8")
    torch.manual_seed(0)
    model = make_flow("U1", 2, n_layers=4, k=4, hidden=(4,))
    tr = Trainer(model, TrainConfig(nrow=[8, 8], beta=BETA, batch=8, seed=1))
    for _ in range(3):
        tr.step()
    tr.save(out / "checkpoint.pt")
    return out


def test_density_is_exact_on_the_new_lattice(model_dir):
    from bridge.flows.checkpoints import load_model

    model, meta = load_model(model_dir)
    assert meta["train"]["nrow"] == [8, 8]
    with torch.no_grad():
        u, log_q = model.sample(4, Lattice([16, 16]), generator=generator(3))
        assert tuple(u.shape[2:4]) == (16, 16)
        torch.testing.assert_close(model.log_prob(u), log_q, rtol=1e-9, atol=1e-9)


def test_hybrid_chain_on_16x16_reproduces_the_exact_plaquette(model_dir, tmp_path, capsys):
    s, explicit = chain_settings(model=str(model_dir), nrow=[16, 16], schedule="hmc:1,flow:2",
                                 chains=16, steps=30, therm=10, seed=2, out=str(tmp_path / "c"))
    model = resolve_model(s, explicit)
    assert "was trained on 8x8; using it on 16x16" in capsys.readouterr().err
    assert s.model_nrow == [8, 8] and s.beta == BETA
    per_chain = []

    def keep(cycle, state):
        if cycle > s.therm:
            per_chain.append(_plaq(state.U))

    summary = run_chains(s, model=model, progress=False, callback=keep)
    assert summary["model_nrow"] == [8, 8]
    assert json.loads((tmp_path / "c" / "config.json").read_text())["model_nrow"] == [8, 8]
    means = torch.stack(per_chain).mean(0).numpy()
    mean, err = means.mean(), means.std(ddof=1) / np.sqrt(len(means))
    exact = u1_2d_plaquette(BETA, (16, 16))
    assert abs(mean - exact) < 4 * err, (mean, err, exact)


def _plaq(u):
    from bridge.gauge import plaquette_field

    return plaquette_field(u, 0, 1)[..., 0, 0].real.flatten(1).mean(1)


def test_cli_chain_on_another_lattice(model_dir, tmp_path, capsys):
    out = tmp_path / "cli"
    assert main(["chain", "--model", str(model_dir), "--nrow", "16", "16", "--schedule",
                 "hmc:1,flow:2", "--chains", "2", "--steps", "2", "--out", str(out),
                 "--no-progress"]) == 0
    assert "was trained on 8x8; using it on 16x16" in capsys.readouterr().err
    assert json.loads((out / "summary.json").read_text())["model_nrow"] == [8, 8]


def test_refusals(model_dir, tmp_path, capsys):
    from bridge.flows.checkpoints import load_model

    base = ["chain", "--model", str(model_dir), "--out", str(tmp_path / "x"), "--no-progress"]
    assert main(base + ["--nrow", "10", "10"]) == 1  # period-4 masks cannot tile 10
    err = capsys.readouterr().err
    assert "layer 0 of the model (U(1), Nd = 2) cannot act on" in err
    assert "L_1 = 10" in err and "mask period 4" in err
    assert main(base + ["--nrow", "8", "8", "8", "8"]) == 1
    assert "the model is 2-dimensional" in capsys.readouterr().err
    model, _ = load_model(model_dir)
    with pytest.raises(ConfigError, match=r"here: the model is 2-dimensional"):
        check_transfer(model, [8, 8, 8, 8], "here")
    model.transferable, model.transfer_reason = False, "a global density"
    with pytest.raises(ConfigError, match=r"cannot act on another lattice .*a global density"):
        check_transfer(model, [16, 16], "here")
    # sample: the same check instead of a deep error
    assert main(["sample", str(model_dir), "--nrow", "6", "6", "--n", "2",
                 "--out", str(tmp_path / "s.h5")]) == 1
    assert "cannot act on" in capsys.readouterr().err


def test_run_accepts_a_transferred_su3_model(tmp_path):
    write_xml(tmp_path, nrow="4 4 4 8")
    path = write_model(tmp_path, nrow=(4, 4, 4, 4))
    from bridge.chroma.hmc_input import read_hmc_input
    from bridge.flows.checkpoints import load_model
    from bridge.jobs.dropin import load_workflow

    model, meta = load_model(path)
    wf = load_workflow(write_workflow(tmp_path))
    facts = read_hmc_input(wf.hmc_input, strict=False)
    _check_model(model, meta, wf, facts)  # accepted
    write_xml(tmp_path, nrow="6 6 6 6")
    with pytest.raises(ConfigError, match=r"layer \d+ of the model \(SU\(3\), Nd = 4\) cannot "
                                          r"act on .*6x6x6x6"):
        run_workflow(write_workflow(tmp_path), log=None)


def test_joint_nf2_model_transfers_to_even_lattices_only():
    """A joint Nf=2 model (residual marginal + pseudofermion flow) built for 2^4 acts on
    4x2x2x4: its marginal log q is exact there and its determinant estimate is finite; odd
    extents are refused before any work."""
    from bridge.flows.joint_training import make_joint_flow

    model = make_joint_flow(0.1)
    check_transfer(model, [4, 2, 2, 4], "test")
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        u, logq = model.sample(2, [4, 2, 2, 4], generator=gen)
        assert torch.allclose(model.log_prob(u), logq, atol=1e-9)
        est = model.estimator(2)(u, gen)
    assert bool(torch.isfinite(est).all())
    with pytest.raises(ConfigError, match="test: "):
        check_transfer(model, [2, 2, 2, 3], "test")
