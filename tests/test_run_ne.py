"""``qcd-bridge run`` with a stochastic normalizing flow (bridge.jobs.dropin_ne): the engine's
HMC ensemble at beta0 is the prior of NE-MCMC steps to beta, with the two-replica swap; records,
resume, refusals, and (slow) the plaquette at beta against plain HMC."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from lxml import etree
from test_run import _mean_err, store_series, write_workflow, write_xml

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.io.hdf5 import EnsembleStore
from bridge.jobs.dropin import run_workflow


def _snf(tmp: Path, *extra: str, beta0: str = "0.5", beta: str = "1.0", name: str = "snf"):
    assert main(["train", "--arch", "snf", "--group", "su3", "--nrow", "4", "4", "4", "4",
                 "--beta0", beta0, "--beta", beta, "--blocks", "2", "--steps", "1", "--batch",
                 "2", "--therm", "1", "--eval-samples", "2", "--eval-batch", "2", "--out",
                 str(tmp / name), *extra]) == 0
    return tmp / name


@pytest.fixture
def ne_setup(tmp_path):
    write_xml(tmp_path, beta=0.5)
    _snf(tmp_path)
    return tmp_path


def test_ne_cycles_records_and_the_swap(ne_setup):
    lines: list[str] = []
    s = run_workflow(write_workflow(ne_setup, model="snf", flow_steps=1, cycles=4),
                     log=lines.append)
    assert s.finished and s.updates == 4 * 3
    assert "NE-MCMC: protocol beta 0.5 -> 1 in 2 blocks" in lines[1]
    run = ne_setup / "run"
    d = store_series(run / "ensemble.h5")
    kind, _ = d["kernel"]
    assert list(kind) == [0, 0, 2] * 4
    assert [p["kernel"] for p in d["params"]] == ["nemcmc"] * 4  # only configurations at beta
    assert all(p["beta"] == 1.0 for p in d["params"])
    acc, _ = d["accepted"]
    prob, _ = d["acc_prob"]
    assert acc[2] == 1 and prob[2] == 1  # the first path starts the chain
    # the swap: after an acceptance the next segment starts from the old path's x0, after a
    # rejection from the segment's own configuration
    for c in range(1, 3):
        before, now = d["params"][c - 1], d["params"][c]
        seg = etree.parse(str(run / "segments" / f"cycle_{c + 1:05d}.ini.xml")).getroot()
        start = Path(seg.findtext("MCControl/Cfg/cfg_file")).relative_to(run)
        accepted = bool(acc[3 * c + 2])
        assert str(start) == (before["x0"] if accepted else f"segments/pg_cfg_{2 * c + 2}.lime")
        if not accepted:
            assert now["file"] == before["file"] and now["work"] == before["work"]
    state = json.loads((run / "state.json").read_text())
    assert state["ne"]["u"] == d["params"][-1]["file"]
    assert any("nemcmc" in line for line in lines)


def test_ne_resume_equals_uninterrupted(ne_setup):
    ref = store_series(run_workflow(write_workflow(ne_setup, model="snf", flow_steps=1,
                                                   cycles=4, run_dir="ref"), log=None).store)
    wf = write_workflow(ne_setup, model="snf", flow_steps=1, cycles=4, run_dir="part")
    run_workflow(wf, max_cycles=2, log=None)
    got = store_series(run_workflow(wf, log=None).store)
    for name in ("w_plaq", "kernel", "accepted", "acc_prob"):
        assert np.array_equal(np.nan_to_num(ref[name][0]), np.nan_to_num(got[name][0])), name
    for a, b in zip(ref["configs"], got["configs"], strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("xml_beta, flow_steps, message", [
    (0.6, 1, r"the XML's beta \(0.6\) must be the model's beta0 \(0.5\)"),
    (0.5, 3, r"flow_steps is 3; an SNF makes one NE-MCMC step per segment"),
])
def test_ne_refusals(tmp_path, xml_beta, flow_steps, message):
    write_xml(tmp_path, beta=xml_beta)
    _snf(tmp_path)
    with pytest.raises(ConfigError, match=message):
        run_workflow(write_workflow(tmp_path, model="snf", flow_steps=flow_steps), log=None)


def test_ne_refuses_a_defect_model(tmp_path):
    write_xml(tmp_path, beta=0.5)
    _snf(tmp_path, "--defect", "2", "2", "2", beta="0.5")
    with pytest.raises(ConfigError, match=r"the model's prior has an open defect \[2, 2, 2\], "
                                          r"which Chroma's hmc does not simulate"):
        run_workflow(write_workflow(tmp_path, model="snf", flow_steps=1), log=None)


@pytest.mark.slow
def test_ne_plaquette_agrees_with_plain_hmc_at_beta(tmp_path):
    write_xml(tmp_path, beta=0.5)
    _snf(tmp_path)
    ne = run_workflow(write_workflow(tmp_path, model="snf", flow_steps=1, cycles=150,
                                     trajectories=2, run_dir="ne"), log=None)
    write_xml(tmp_path, beta=1.0, name="hmc1.ini.xml")
    hmc = run_workflow(write_workflow(tmp_path, hmc_input="hmc1.ini.xml", model=None,
                                      flow_steps=0, cycles=30, trajectories=20, run_dir="hmc",
                                      name="hmc.json"), log=None)
    with EnsembleStore(ne.store, "r") as st:
        p, _ = st.measurement("w_plaq")
        kind, _ = st.measurement("kernel")
        acc, _ = st.measurement("accepted")
    with EnsembleStore(hmc.store, "r") as st:
        p0, _ = st.measurement("w_plaq")
    ne_p = p[kind == 2]
    assert acc[kind == 2].mean() > 0.1
    m, e = _mean_err(ne_p[len(ne_p) // 10:])
    m0, e0 = _mean_err(p0[len(p0) // 10:])
    assert abs(m - m0) < 4 * math.hypot(e, e0), (m, e, m0, e0)
