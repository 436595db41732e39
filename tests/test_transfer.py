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


# -- fine-tuning: qcd-bridge train --init-from ------------------------------------------------
def _train(args, out):
    return main(["train", *args, "--out", str(out), "--eval-samples", "16", "--eval-batch", "16",
                 "--log-every", "0"])


def test_fine_tuning_starts_from_the_source_parameters(model_dir, tmp_path, capsys):
    """Step 0 of a fine-tuning run on 16x16 at another beta has exactly the reverse-KL loss of
    the transferred source model on the same batch (rng_key(seed, 0)); the summary records the
    source and, after a second fine-tuning, the whole history."""
    from bridge.flows.checkpoints import load_model
    from bridge.gauge import wilson_action
    from bridge.rng import rng_key

    out = tmp_path / "ft"
    assert _train(["--init-from", str(model_dir), "--nrow", "16", "16", "--beta", "1.5",
                   "--steps", "2", "--batch", "8", "--seed", "3"], out) == 0
    assert (f"fine-tuning {model_dir} (trained on 8x8 at beta 1 for 3 steps) on 16x16 at beta "
            f"1.5") in capsys.readouterr().out
    source, _ = load_model(model_dir)
    with torch.no_grad():
        u, logq = source.sample(8, [16, 16], generator=generator(rng_key(3, 0)))
        loss0 = float((logq + wilson_action(u, 1.5)).mean())
    state = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state["history"][0]["loss"] == pytest.approx(loss0, rel=1e-12, abs=1e-9)
    # the second step moved away from the source (the optimiser acted)
    tuned, meta = load_model(out)
    assert any(not torch.equal(a, b) for a, b in zip(tuned.state_dict().values(),
                                                     source.state_dict().values(), strict=True))
    assert meta["model"] == load_model(model_dir)[1]["model"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["nrow"] == [16, 16] and summary["beta"] == 1.5 and summary["steps"] == 2
    assert summary["init_from"] == {"model": str(model_dir), "group": "U(1)", "nrow": [8, 8],
                                    "beta": BETA, "steps": 3, "arch": "coupling",
                                    "estimator": "reparam", "adam_eps": 0.01,
                                    "init_from": None}
    out2 = tmp_path / "ft2"
    assert _train(["--init-from", str(out), "--beta", "2.0", "--nrow", "8", "8", "--steps", "1",
                   "--batch", "4"], out2) == 0
    hist = json.loads((out2 / "summary.json").read_text())["history"]
    assert [(h["model"], h["nrow"], h["beta"], h["steps"]) for h in hist] == [
        (str(out), [16, 16], 1.5, 2), (str(model_dir), [8, 8], BETA, 3)]
    # resuming the fine-tuning continues it (the source is not loaded over the checkpoint)
    assert _train(["--init-from", str(model_dir), "--nrow", "16", "16", "--beta", "1.5",
                   "--steps", "3", "--batch", "8", "--seed", "3", "--resume"], out) == 0
    state3 = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert state3["step"] == 3 and state3["history"][:2] == state["history"]


def test_fine_tuning_keeps_the_source_estimator(tmp_path):
    """A plaquette flow trained with the path-gradient estimator is fine-tuned with it (and its
    Adam epsilon) unless told otherwise."""
    src, out = tmp_path / "plaq", tmp_path / "ft"
    assert _train(["--arch", "plaquette", "--estimator", "path", "--lr", "0.03", "--steps", "2",
                   "--batch", "4"], src) == 0
    assert _train(["--init-from", str(src), "--nrow", "12", "12", "--beta", "3", "--steps", "1",
                   "--batch", "4"], out) == 0
    meta = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)["meta"]
    assert (meta["train"]["estimator"], meta["train"]["adam_eps"]) == ("path", 1e-2)
    assert meta["model"]["arch"] == "plaquette" and meta["train"]["nrow"] == [12, 12]
    out2 = tmp_path / "ft2"
    assert _train(["--init-from", str(src), "--estimator", "reparam", "--steps", "1",
                   "--batch", "4"], out2) == 0
    meta2 = torch.load(out2 / "checkpoint.pt", map_location="cpu", weights_only=False)["meta"]
    assert meta2["train"]["estimator"] == "reparam"


@pytest.mark.parametrize("args,message", [
    (["--nrow", "9", "9"], "--init-from {m}: flow: layer 0 of the model (U(1), Nd = 2) cannot "
                           "act on the chain's lattice Lattice(9x9): lattice: extent L_1 = 9 of "
                           "Lattice(9x9) is not a multiple of the mask period 4"),
    (["--nrow", "8", "8", "8", "8"], "--init-from {m}: the model is 2-dimensional (U(1)), the "
                                     "lattice 8x8x8x8 is 4-dimensional"),
    (["--group", "su2"], "--init-from {m}: the model is for U(1), this run for SU(2) "
                         "(--group su2); give the model's group"),
    (["--layers", "2"], "--init-from {m}: the architecture comes from the model, whose n_layers "
                        "is 4, not 2; drop that setting"),
    (["--group", "su3", "--nrow", "2", "2", "2", "2", "--kappa", "0.1"],
     "--init-from {m}: fine-tuning takes gauge-only flows; with --kappa (a joint Nf = 2 model) "
     "start from a checkpoint with --init instead"),
    (["--arch", "snf", "--beta0", "0.5"], "--init-from {m}: the model is a gauge flow (coupling), "
                                          "not a stochastic normalizing flow; drop --arch snf"),
])
def test_fine_tuning_refusals(model_dir, tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert _train(["--init-from", str(model_dir), "--steps", "1", *args], out) == 1
    err = capsys.readouterr().err
    assert message.format(m=model_dir) in err, err
    assert not out.exists()  # refused before any work


def test_fine_tuning_refuses_a_joint_model(tmp_path, capsys):
    from bridge.flows.joint_training import make_joint_flow

    src = tmp_path / "joint"
    Trainer(make_joint_flow(0.1), TrainConfig(nrow=[2, 2, 2, 2], beta=1.0, batch=2)).save(
        src / "checkpoint.pt")
    assert _train(["--init-from", str(src), "--group", "su3", "--nrow", "2", "2", "2", "2"],
                  tmp_path / "never") == 1
    assert (f"--init-from {src}: the model is a joint Nf = 2 model; fine-tuning takes gauge-only "
            f"flows (coupling, residual, plaquette) and stochastic normalizing flows"
            ) in capsys.readouterr().err
    assert not (tmp_path / "never").exists()
