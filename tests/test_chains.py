"""``qcd-bridge chain`` (bridge.jobs.chain): records equal to the kernels' own infos, bookkeeping of
cycles/steps/observables/fields, checkpoint/resume bit for bit (also after a run died with
records past its last checkpoint), rank-seeded chains over 2 gloo processes, refusal of a model
for another group/lattice/coupling, exactness of the hybrid chain on 2D U(1) against the
character expansion, the progress bar, and ``qcd-bridge validate`` reading chain files."""

from __future__ import annotations

import io
import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.exact import u1_2d_plaquette, u1_2d_topological_susceptibility
from bridge.flows import make_flow
from bridge.flows.training import TrainConfig, Trainer
from bridge.gauge import mesplq, random_gauge, wilson_action
from bridge.io.chains import read_chain
from bridge.jobs.chain import (
    ChainSettings,
    build_kernel,
    chain_settings,
    parse_schedule,
    resolve_model,
    run_chains,
)
from bridge.lattice import Lattice
from bridge.mcmc.base import flat_infos
from bridge.rng import generator, rng_key

NROW, BETA = [4, 4], 1.0
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained (near-Haar) 2D U(1) flow saved as a `qcd-bridge train` checkpoint."""
    out = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    model = make_flow("U1", 2, n_layers=4, k=4, hidden=(4,))
    Trainer(model, TrainConfig(nrow=NROW, beta=BETA, batch=4)).save(out / "checkpoint.pt")
    return out


def _settings(tmp_path, model_dir=None, name="run", **kw):
    kw.setdefault("chains", 3)
    kw.setdefault("steps", 6)
    base = {"nrow": NROW, "beta": BETA, "out": str(tmp_path / name), "seed": 5}
    if model_dir is not None:
        base["model"] = str(model_dir)
    s, explicit = chain_settings(**{**base, **kw})
    return s, resolve_model(s, explicit)


def _no_seconds(rec):
    return {k: v for k, v in rec.items() if k != "seconds"}


def _same(a, b):
    """Equal chain files up to timings."""
    assert set(a["observables"]) == set(b["observables"])
    for k in a["observables"]:
        assert np.array_equal(a["observables"][k], b["observables"][k]), k
    ra, rb = _no_seconds(a["records"]), _no_seconds(b["records"])
    assert set(ra) == set(rb)
    for k in ra:
        assert np.array_equal(np.asarray(ra[k]), np.asarray(rb[k])), k
    for k in a["fields"]:
        assert np.array_equal(a["fields"][k], b["fields"][k]), k


# ---------------------------------------------------------------- records and bookkeeping
def test_records_equal_the_kernels_infos(tmp_path, model_dir):
    s, model = _settings(tmp_path, model_dir, schedule="hmc:1,flow:2", md_steps=4,
                         flow_batch=3, save_every=2)
    summary = run_chains(s, model=model, progress=False, rank=0, world=1)
    data = read_chain(tmp_path / "run" / "chain.h5")
    # the same chain run directly on the kernels
    kernel, names = build_kernel(s, model)
    assert names == ["hmc", "flow"]
    seed = rng_key(5, 0)
    u0 = random_gauge(Lattice(NROW), "U1", 3, generator=generator(rng_key(seed, 0x5747)),
                      dtype=torch.complex128)
    state = kernel.init(u0, seed=seed)
    infos, plaq, act = [], [], []
    for _ in range(6):
        state, info = kernel.step(state)
        infos.extend(flat_infos(info))
        plaq.append(mesplq(state.U).w_plaq)
        act.append(state.action)
    rec = data["records"]
    assert rec["kernel"] == [i.kernel for i in infos] == ["hmc", "flow", "flow"] * 6
    assert rec["step"].tolist() == [i.step for i in infos] == list(range(18))
    assert rec["cycle"].tolist() == [c for c in range(1, 7) for _ in range(3)]
    assert np.array_equal(rec["accepted"], torch.stack([i.accepted for i in infos]).numpy())
    assert np.array_equal(rec["delta"], torch.stack([i.delta for i in infos]).numpy())
    assert np.array_equal(rec["acc_prob"], torch.stack([i.acc_prob for i in infos]).numpy())
    assert rec["refreshed"].tolist() == [i.refreshed for i in infos]
    assert rec["nonfinite"].tolist() == [0] * 18
    obs = data["observables"]
    assert obs["cycle"].tolist() == list(range(1, 7))
    assert np.array_equal(obs["plaquette"], torch.stack(plaq).numpy())
    assert np.array_equal(obs["action"], torch.stack(act).numpy())
    assert obs["topological_charge"].shape == (6, 3)
    # fields every 2 cycles, the last one equal to the final state
    assert data["fields"]["cycle"].tolist() == [2, 4, 6]
    last = torch.view_as_complex(torch.from_numpy(data["fields"]["links"][-1]).contiguous())
    assert torch.equal(last, state.U)
    assert torch.allclose(wilson_action(last, BETA), torch.from_numpy(obs["action"][-1]))
    # summary: acceptance per kernel = mean of the records
    for k in ("hmc", "flow"):
        sel = np.array(rec["kernel"]) == k
        assert summary["acceptance"][k] == pytest.approx(rec["accepted"][sel].mean())
    assert summary["topological_charge"]["definition"] == "geometric"
    attrs = data["attrs"]
    assert attrs["format"] == "qcd-bridge-chain" and attrs["n_chains"] == 3
    assert attrs["schedule"] == "hmc:1,flow:2" and not attrs["mixture"]
    assert attrs["n_cycles"] == 6 and attrs["n_records"] == 18 and attrs["n_fields"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["cycles"] == 6


def test_mixture_records_one_kernel_per_cycle(tmp_path, model_dir):
    s, model = _settings(tmp_path, model_dir, mixture="hmc:0.5,flow:0.5", md_steps=3, steps=8)
    run_chains(s, model=model, progress=False, rank=0, world=1)
    data = read_chain(tmp_path / "run" / "chain.h5")
    rec = data["records"]
    assert rec["cycle"].tolist() == list(range(1, 9))
    assert set(rec["kernel"]) == {"hmc", "flow"}
    assert data["attrs"]["schedule"] == "hmc:0.5,flow:0.5" and data["attrs"]["mixture"]


def test_parse_schedule_and_bad_settings():
    assert parse_schedule("hmc:1, flow:4") == [("hmc", 1), ("flow", 4)]
    assert parse_schedule("hmc:0.3,flow:0.7", counts=False) == [("hmc", 0.3), ("flow", 0.7)]
    with pytest.raises(ConfigError, match=r"--schedule 'hmc:1,wolff:2': expected .*KERNEL "
                                          r"one of hmc, flow.*got 'wolff:2'"):
        parse_schedule("hmc:1,wolff:2")
    with pytest.raises(ConfigError, match=r"non-negative integer, got 'flow:1.5'"):
        parse_schedule("flow:1.5")
    with pytest.raises(ConfigError, match="positive sum"):
        parse_schedule("hmc:0")
    with pytest.raises(ConfigError, match="give one of them"):
        chain_settings(schedule="hmc:1", mixture="hmc:1")
    with pytest.raises(ConfigError, match=r"integrator: expected one of Chroma's names"):
        chain_settings(integrator="LEAPFROG")
    with pytest.raises(ConfigError, match=r"chains: expected an integer >= 1, got 0"):
        chain_settings(chains=0)
    with pytest.raises(ConfigError, match=r"nrow: expected 2 or 4 positive extents, got \[4\]"):
        chain_settings(nrow=[4])
    # a kernel with count 0 never runs: no model needed, not among the record labels
    s, explicit = chain_settings(schedule="hmc:1,flow:0")
    assert isinstance(s, ChainSettings) and explicit == {"schedule"}
    assert s.to_dict()["schedule"] == "hmc:1,flow:0" and s.plan_text() == "hmc:1,flow:0"
    with pytest.raises(ConfigError, match=r"settings: unknown key 'step'"):
        chain_settings(step=3)
    assert resolve_model(s, explicit) is None and build_kernel(s, None)[1] == ["hmc"]
    s, explicit = chain_settings(schedule="hmc:1,flow:2")
    with pytest.raises(ConfigError, match=r"the flow kernel needs --model .* only hmc is "
                                          r"allowed \(got 'hmc:1,flow:2'\)"):
        resolve_model(s, explicit)


def test_model_mismatch_is_refused_naming_both(tmp_path, model_dir, capsys):
    base = ["chain", "--model", str(model_dir), "--out", str(tmp_path / "x"), "--no-progress"]
    cases = [
        (["--group", "su2"], "--model {m}: flow: the model is for U(1) links, the chain's field "
                             "has SU(2) links (2x2)"),
        (["--nrow", "4", "4", "4", "4"], "--model {m}: flow: the model is 2-dimensional (U(1)), "
                                         "the chain's lattice Lattice(4x4x4x4) is 4-dimensional"),
        # another lattice is accepted when the masks tile it (tests/test_transfer.py)
        (["--nrow", "6", "6"], "--nrow 6 6: --model {m}: flow: layer 0 of the model (U(1), "
                               "Nd = 2) cannot act on the chain's lattice"),
        (["--beta", "2.5"], "--beta 2.5: the model {m} was trained for beta = 1"),
    ]
    for extra, msg in cases:
        assert main(base + extra) == 1
        err = capsys.readouterr().err
        assert "qcd-bridge chain: error: " + msg.format(m=model_dir) in err, err
    assert not (tmp_path / "x" / "chain.h5").exists()
    # the model's values are taken when none are given
    s, explicit = chain_settings(model=str(model_dir))
    resolve_model(s, explicit)
    assert (s.group, s.nrow, s.beta) == ("u1", NROW, BETA)


def test_existing_output_and_resume_errors(tmp_path, capsys):
    args = ["chain", "--nrow", "4", "4", "--chains", "1", "--steps", "2", "--out",
            str(tmp_path / "r"), "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "acceptance: hmc" in out and "exact 0.6992" in out
    assert read_chain(tmp_path / "r" / "chain.h5")["attrs"]["schedule"] == "hmc:1"  # default
    assert main(args) == 1
    assert "exists; pass --resume to continue it" in capsys.readouterr().err
    assert main(args + ["--resume", "--tau", "0.5"]) == 1
    assert ("--resume: tau is 0.5, but the run in " in capsys.readouterr().err)
    assert main(["chain", "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "--resume: no settings" in capsys.readouterr().err
    assert main(["chain", "--start", str(tmp_path / "nofile.lime"), "--out",
                 str(tmp_path / "s")]) == 1
    assert "--start" in capsys.readouterr().err


# ---------------------------------------------------------------- checkpoint / resume
def test_resume_after_a_crash_is_bit_identical(tmp_path, model_dir):
    kw = {"schedule": "hmc:1,flow:3", "md_steps": 3, "flow_batch": 5, "steps": 12,
          "checkpoint_every": 4, "save_every": 3}
    s, model = _settings(tmp_path, model_dir, name="ref", **kw)
    run_chains(s, model=model, progress=False, rank=0, world=1)
    ref = read_chain(tmp_path / "ref" / "chain.h5")

    s, model = _settings(tmp_path, model_dir, name="crash", **kw)

    def die(cycle, state):
        if cycle == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_chains(s, model=model, progress=False, rank=0, world=1, callback=die)
    ck = torch.load(tmp_path / "crash" / "checkpoint.pt", weights_only=False)
    assert ck["cycle"] == 4 and ck["n_records"] == 16
    with h5py.File(tmp_path / "crash" / "chain.h5", "r") as f:  # records past the checkpoint
        assert f["records/step"].shape[0] == 28 and f["observables/cycle"].shape[0] == 7
    run_chains(s, model=model, resume=True, progress=False, rank=0, world=1)
    _same(read_chain(tmp_path / "crash" / "chain.h5"), ref)
    a = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["state"]
    b = torch.load(tmp_path / "crash" / "checkpoint.pt", weights_only=False)["state"]
    assert torch.equal(a.U, b.U) and a.step == b.step == 48
    assert torch.equal(a.log_w, b.log_w)


@pytest.mark.parametrize("plan", [["--schedule", "flow:2,hmc:1"],
                                  ["--mixture", "hmc:0.4,flow:0.6"]])
def test_cli_resume_extends_the_chain_identically(tmp_path, model_dir, plan):
    common = ["chain", "--model", str(model_dir), "--chains", "2", "--md-steps", "3", *plan,
              "--no-progress", "--checkpoint-every", "0"]
    assert main(common + ["--steps", "5", "--out", str(tmp_path / "a")]) == 0
    assert main(["chain", "--out", str(tmp_path / "a"), "--steps", "9", "--resume",
                 "--no-progress"]) == 0
    assert main(common + ["--steps", "9", "--out", str(tmp_path / "b")]) == 0
    _same(read_chain(tmp_path / "a" / "chain.h5"), read_chain(tmp_path / "b" / "chain.h5"))
    s = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert s["cycles"] == 9 and set(s["acceptance"]) == {"hmc", "flow"}
    # the settings of the resumed run are kept: resuming again without --steps does nothing
    assert json.loads((tmp_path / "a" / "config.json").read_text())["steps"] == 9
    assert main(["chain", "--out", str(tmp_path / "a"), "--resume", "--no-progress"]) == 0
    _same(read_chain(tmp_path / "a" / "chain.h5"), read_chain(tmp_path / "b" / "chain.h5"))


def test_resume_with_another_flow_is_refused(tmp_path, model_dir):
    """The state caches log q and proposals of the flow it ran with: after the model's
    parameters change (e.g. further training), --resume is refused instead of mixing flows."""
    import shutil

    mdir = tmp_path / "model"
    shutil.copytree(model_dir, mdir)
    s, model = _settings(tmp_path, mdir, schedule="hmc:1,flow:2", md_steps=3, steps=2)
    run_chains(s, model=model, progress=False, rank=0, world=1)
    s, model = _settings(tmp_path, mdir, schedule="hmc:1,flow:2", md_steps=3, steps=4)
    run_chains(s, model=model, resume=True, progress=False, rank=0, world=1)  # same flow: fine
    ck = torch.load(mdir / "checkpoint.pt", weights_only=False)
    name = next(k for k, v in ck["model"].items() if v.is_floating_point())
    ck["model"][name] = ck["model"][name] + 1e-3
    torch.save(ck, mdir / "checkpoint.pt")
    s, model = _settings(tmp_path, mdir, schedule="hmc:1,flow:2", md_steps=3, steps=6)
    with pytest.raises(ConfigError, match=r"--resume: the flow in .*model is not the one "
                                          r"checkpoint .*checkpoint.pt was run with"):
        run_chains(s, model=model, resume=True, progress=False, rank=0, world=1)
    assert read_chain(tmp_path / "run" / "chain.h5")["attrs"]["n_cycles"] == 4


# ---------------------------------------------------------------- ranks
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_ranks_run_rank_seeded_chains(tmp_path, model_dir):
    out = tmp_path / "dist"
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE="2", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "bridge.cli", "chain", "--model", str(model_dir), "--chains",
           "2", "--steps", "4", "--md-steps", "3", "--schedule", "hmc:1,flow:1", "--seed", "5",
           "--out", str(out), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=dict(env, RANK=str(r), LOCAL_RANK=str(r)), cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in range(2)]
    outs = []
    for p in procs:
        try:
            text, _ = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail("distributed chain workers timed out")
        assert p.returncode == 0, text.decode()[-3000:]
        outs.append(text.decode())
    assert "4 chains x 4 cycles" in outs[0] and outs[1] == ""
    files = [read_chain(out / f"chain.rank{r}.h5") for r in range(2)]
    assert [f["attrs"]["chain_offset"] for f in files] == [0, 2]
    assert not np.array_equal(files[0]["observables"]["plaquette"],
                              files[1]["observables"]["plaquette"])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["chains"] == 4
    plaq = np.concatenate([f["observables"]["plaquette"] for f in files], axis=1)
    assert summary["plaquette"]["mean"] == pytest.approx(plaq.mean())
    # rank r's chains are the single-process chains with the seed stream rng_key(seed, r)
    for r in range(2):
        s, model = _settings(tmp_path, model_dir, name=f"single{r}", chains=2, steps=4,
                             md_steps=3, schedule="hmc:1,flow:1")
        run_chains(s, model=model, progress=False, rank=r, world=1)
        _same(files[r], read_chain(tmp_path / f"single{r}" / "chain.h5"))


# ---------------------------------------------------------------- exactness
def _chain_mean(x: np.ndarray) -> tuple[float, float]:
    m = x.mean(0)
    return float(m.mean()), float(m.std(ddof=1) / math.sqrt(m.size))


def test_hybrid_chain_reproduces_the_exact_plaquette(tmp_path, model_dir):
    s, model = _settings(tmp_path, model_dir, chains=24, steps=100, therm=10,
                         schedule="hmc:1,flow:2", md_steps=4, flow_batch=16, seed=11)
    summary = run_chains(s, model=model, progress=False, rank=0, world=1)
    obs = read_chain(tmp_path / "run" / "chain.h5")["observables"]
    mean, err = _chain_mean(obs["plaquette"][10:])
    exact = u1_2d_plaquette(BETA, (4, 4))
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    assert summary["exact"]["plaquette"] == pytest.approx(exact)
    assert summary["plaquette"]["mean"] == pytest.approx(mean)
    assert 0 < summary["acceptance"]["flow"] < 1
    q = summary["topological_charge"]  # <Q^2>/V with a Gamma-method error (chains as replicas)
    assert q["chi_t"] == pytest.approx(np.mean(np.round(obs["topological_charge"][10:]) ** 2) / 16)
    assert q["chi_t_error"] > 0 and q["chi_t_naive_error"] > 0


@pytest.mark.slow
def test_hybrid_chain_topological_susceptibility(tmp_path):
    """chi_t = <Q^2>/V at L = 8, beta = 2 with a flow trained for a few seconds."""
    mdir = tmp_path / "m"
    assert main(["train", "--nrow", "8", "8", "--beta", "2", "--steps", "100000",
                 "--time-budget", "30", "--eval-samples", "256", "--log-every", "0",
                 "--out", str(mdir)]) == 0
    s, explicit = chain_settings(model=str(mdir), chains=16, steps=600, therm=50,
                                 schedule="hmc:1,flow:4", md_steps=8, out=str(tmp_path / "c"))
    model = resolve_model(s, explicit)
    run_chains(s, model=model, progress=False, rank=0, world=1)
    q = read_chain(tmp_path / "c" / "chain.h5")["observables"]["topological_charge"][50:]
    mean, err = _chain_mean(np.round(q) ** 2 / 64)
    exact = u1_2d_topological_susceptibility(2.0, 8)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)


# ---------------------------------------------------------------- outputs
def test_four_dimensional_su3_fields_also_go_to_ildg(tmp_path):
    from bridge.io import read_gauge

    s, model = _settings(tmp_path, None, group="su3", nrow=[2, 2, 2, 4], beta=5.5, chains=2,
                         steps=2, md_steps=2, save_every=2, polyakov=True)
    summary = run_chains(s, model=model, progress=False, rank=0, world=1)
    data = read_chain(tmp_path / "run" / "chain.h5")
    assert set(data["observables"]) == {"cycle", "action", "plaquette", "topological_charge",
                                        "polyakov_loop"}
    assert summary["topological_charge"]["definition"] == "clover, no smoothing"
    assert "exact" not in summary
    links = torch.view_as_complex(torch.from_numpy(data["fields"]["links"][-1]).contiguous())
    for c in range(2):
        u, _ = read_gauge(tmp_path / "run" / "cfg" / f"chain{c}_cfg_2.lime")
        assert torch.equal(u[0], links[c])
    # a gauge file as the start of every chain; one of another lattice is refused
    start = str(tmp_path / "run" / "cfg" / "chain1_cfg_2.lime")
    s, _ = _settings(tmp_path, None, name="from_file", group="su3", nrow=[2, 2, 2, 4],
                     beta=5.5, chains=2, steps=1, md_steps=2, start=start)
    run_chains(s, progress=False, rank=0, world=1)
    s, _ = _settings(tmp_path, None, name="bad", group="su3", nrow=[2, 2, 4, 4], start=start)
    with pytest.raises(ConfigError, match=r"--start .*chain1_cfg_2.lime: the file holds a 3x3 "
                                          r"field on Lattice\(2x2x2x4\), the chain needs SU3"):
        run_chains(s, progress=False, rank=0, world=1)


def test_progress_bar_line_and_tty_detection():
    from bridge.progress import Progress

    buf = io.StringIO()
    bar = Progress(3, label="cycle", stream=buf)
    assert not bar.enabled  # not a terminal
    bar = Progress(3, label="cycle", stream=buf, enabled=True, every=0.0, redraw=True)
    for i in range(1, 4):
        bar.update(i, "acc hmc 0.90 flow 0.25  <Q> +0.50  plaq 0.71234", seconds_per=0.5)
    bar.close()
    text = buf.getvalue()
    assert text.count("\r") == 3 and text.endswith("\n")
    last = text.strip().split("\r")[-1]
    assert last.startswith("cycle 3/3  acc hmc 0.90 flow 0.25  <Q> +0.50  plaq 0.71234")
    assert "0.5 s/cycle  ETA 0:00" in last
    assert Progress(10, label="cycle").line(4, "acc hmc 1.00", 61.0).endswith("ETA 6:06")
    # into a log (not redrawn): a line about every tenth of the run and the last one
    log = io.StringIO()
    bar = Progress(100, label="cycle", stream=log, enabled=True)
    for i in range(1, 101):
        bar.update(i, "x")
    bar.close()
    lines = log.getvalue().splitlines()
    assert len(lines) == 10 and lines[-1].startswith("cycle 100/100  x")
    assert "\r" not in log.getvalue()


def test_summary_lines_name_the_errors_and_the_charge_definition():
    from bridge.jobs.chain_stats import summary_lines

    q = {"mean": 0.1, "chi_t": 0.0194, "chi_t_error": 0.0012, "chi_t_naive_error": 0.0005,
         "tau_int": 2.0, "tau_int_error": 0.5, "definition": "geometric"}
    summary = {"acceptance": {"hmc": 0.9, "flow": None}, "chains": 2, "cycles": 30,
               "measured_cycles": 25, "therm": 5, "plaquette": {"mean": None},
               "topological_charge": q, "exact": {"plaquette": 0.7, "chi_t": 0.019364}}
    lines = summary_lines(summary)
    assert lines[0] == ("2 chains x 30 cycles (25 measured after 5 thermalisation); "
                        "acceptance: hmc 0.900, flow n/a")
    assert lines[-1] == ("topological charge <Q> +0.100, <Q^2>/V 0.0194 +- 0.0012 (Gamma "
                         "method; exact 0.019364), tau_int(Q) 2.00 +- 0.50 cycles")
    q.update(chi_t_error=None, tau_int=None, definition="clover, no smoothing")
    del summary["exact"]
    assert summary_lines(summary)[-1] == (
        "topological charge (clover, no smoothing) <Q> +0.100, <Q^2>/V 0.01940 +- 0.00050 "
        "(naive), tau_int(Q) n/a (too few cycles or frozen)")


def test_cli_forced_progress_and_validate_reads_chain_files(tmp_path, capsys):
    from bridge.jobs.validate import available_observables, ensemble_metadata, load_series

    a = tmp_path / "a"
    assert main(["chain", "--nrow", "4", "4", "--chains", "3", "--steps", "25", "--therm", "5",
                 "--out", str(a), "--progress", "--md-steps", "4"]) == 0
    err = capsys.readouterr().err
    assert "cycle 25/25  acc hmc" in err and "ETA" in err  # log lines: stderr is no terminal
    path = str(a / "chain.h5")
    assert available_observables(path) == ["action", "plaquette", "topological_charge"]
    meta = ensemble_metadata(path)
    assert meta["nrow"] == [4, 4] and meta["group"] == "U1" and meta["format"] == "chain"
    ser = load_series([path], "plaquette")
    assert ser.replicas == ("chain.c0", "chain.c1", "chain.c2") and ser.weights is None
    assert [t.tolist() for t in ser.trajs] == [list(range(6, 26))] * 3
    obs = read_chain(path)["observables"]["plaquette"]
    assert np.array_equal(ser.values[1], obs[5:, 1])
    with pytest.raises(ValueError, match=r"observable 'pion': unknown in chain file"):
        load_series([path], "pion")
    b = tmp_path / "b"
    assert main(["chain", "--nrow", "4", "4", "--chains", "3", "--steps", "25", "--therm", "5",
                 "--out", str(b), "--no-progress", "--seed", "3", "--md-steps", "4"]) == 0
    rc = main(["validate", path, str(b / "chain.h5"), "--bootstrap", "20", "--out",
               str(tmp_path / "rep"), "--quiet", "--observables", "plaquette"])
    assert rc in (0, 3)
    assert (tmp_path / "rep" / "report.md").exists()


def test_analytic_proposal_chain_is_exact_and_unfrozen(tmp_path, capsys):
    """--model analytic: the exact 2D U(1) plaquette-variable proposal (nothing trained) at the
    chain's beta; at beta = 5 on 8x8 HMC alone barely changes Q in 150 trajectories, the hybrid
    changes it almost every cycle, and the plaquette stays exact."""
    out = tmp_path / "an"
    assert main(["chain", "--model", "analytic", "--group", "u1", "--nrow", "8", "8", "--beta",
                 "5", "--schedule", "hmc:1,flow:2", "--md-steps", "4", "--chains", "8",
                 "--steps", "150", "--therm", "10", "--seed", "3", "--out", str(out),
                 "--no-progress"]) == 0
    obs = read_chain(out / "chain.h5")["observables"]
    mean, err = _chain_mean(obs["plaquette"][10:])
    exact = u1_2d_plaquette(5.0, (8, 8))
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    q = np.round(obs["topological_charge"][10:])  # [cycles, chains]
    # Q changes in 0.219(11) of the cycles over 12 seeds (HMC alone: almost never)
    assert (np.diff(q, axis=0) != 0).mean() > 0.15
    summary = json.loads((out / "summary.json").read_text())
    assert 0.05 < summary["acceptance"]["flow"] < 1
    # other groups and dimensions are refused, naming the proposal and the chain
    assert main(["chain", "--model", "analytic", "--group", "su2", "--nrow", "4", "4",
                 "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    err_text = capsys.readouterr().err
    assert ("--model analytic: the analytic plaquette proposal exists only for 2D U(1) (--group "
            "u1, two extents), the chain is --group su2 on 4 x 4") in err_text, err_text
