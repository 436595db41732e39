"""``qcd-bridge run``: the drop-in loop end to end with the built-in engine on 4^4 SU(3) (an
untrained small flow saved as ``qcd-bridge train`` saves it), interruption and resume giving the
uninterrupted result, the fake Chroma engine (seed hand-over, files it did not write, non-zero
exit), mismatch and workflow errors, and the plaquette against plain HMC."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from lxml import etree
from test_engines import set_fake_mode, write_fake_chroma

from bridge.chroma.engines import ENV_HMC, EngineFailed
from bridge.chroma.hmc_input import read_hmc_input
from bridge.chroma.monomials import hamiltonian_action
from bridge.cli import main
from bridge.errors import ChecksumError, ConfigError, FormatError
from bridge.io.hdf5 import EnsembleStore
from bridge.jobs.dropin import load_workflow, run_workflow

REPO = Path(__file__).resolve().parents[1]
REFERENCE = Path(__file__).resolve().parent / "data"
PURE = REFERENCE / "chroma" / "pure_gauge_b5.5_4x4" / "hmc.ini.xml"
NF2 = REFERENCE / "chroma" / "nf2_b1.0_k0.1_4x4" / "hmc.ini.xml"
SERIES = ("w_plaq", "kernel", "accepted", "delta", "acc_prob", "warmup")


def xml_facts(path):
    """The drop-in loop's reading of an hmc input: lenient (Chroma judges the rest)."""
    return read_hmc_input(path, strict=False)


def flow_action(facts, max_sites=256):
    return hamiltonian_action(facts, max_sites=max_sites)


def write_xml(tmp: Path, *, beta: float = 0.1, nrow: str = "4 4 4 4", start: str = "DISORDERED",
              n_steps: int = 6, tau0: float = 0.5, src: Path = PURE, name: str = "hmc.ini.xml",
              prefix: str = "pg") -> Path:
    """The reference pure-gauge input, made small (few MD steps, no warm-up)."""
    tree = etree.parse(str(src))
    root = tree.getroot()
    mc = root.find("MCControl")
    mc.find("Cfg/cfg_type").text = start
    mc.find("NWarmUpUpdates").text = "0"
    mc.find("SavePrefix").text = prefix
    root.find("HMCTrj/nrow").text = nrow
    root.find("HMCTrj/MDIntegrator/tau0").text = str(tau0)
    root.find("HMCTrj/MDIntegrator/Integrator/n_steps").text = str(n_steps)
    for el in root.iter("beta"):
        el.text = str(beta)
    path = tmp / name
    tree.write(str(path))
    return path


def write_model(tmp: Path, *, beta: float = 0.1, nrow=(4, 4, 4, 4), group: str = "SU3",
                name: str = "flow") -> Path:
    """An untrained small flow saved as `qcd-bridge train` saves it (OUT/checkpoint.pt)."""
    from bridge.flows import make_flow
    from bridge.flows.training import TrainConfig, Trainer

    torch.manual_seed(3)
    model = make_flow(group, len(nrow), n_layers=2, hidden=(4,), k=2)
    Trainer(model, TrainConfig(nrow=list(nrow), beta=beta)).save(tmp / name / "checkpoint.pt")
    return tmp / name


def write_workflow(tmp: Path, name: str = "wf.json", **entries) -> Path:
    data = {"hmc_input": "hmc.ini.xml", "model": "flow", "trajectories": 2, "flow_steps": 3,
            "cycles": 3, "engine": "builtin", "run_dir": "run", "seed": 11}
    data.update(entries)
    data = {k: v for k, v in data.items() if v is not None}
    path = tmp / name
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def setup(tmp_path):
    write_xml(tmp_path)
    write_model(tmp_path)
    return tmp_path


def store_series(path: Path) -> dict[str, np.ndarray]:
    with EnsembleStore(path, "r") as st:
        out = {name: st.measurement(name) for name in SERIES}
        out["configs"] = [st.read(i)[0] for i in range(len(st))]
        out["params"] = [st.metadata(i)["params"] for i in range(len(st))]
    return out


def test_end_to_end_builtin(setup):
    lines: list[str] = []
    s = run_workflow(write_workflow(setup), log=lines.append)
    assert s.finished and s.cycles_done == 3 and s.updates == 3 * (2 + 3)
    assert s.engine == "builtin" and "kind = builtin" in s.reason
    run = setup / "run"
    data = store_series(run / "ensemble.h5")
    vals, trajs = data["kernel"]
    assert list(trajs) == list(range(1, 16))
    assert list(vals) == [0, 0, 1, 1, 1] * 3
    plaq, _ = data["w_plaq"]
    assert np.isfinite(plaq).all() and abs(plaq.mean()) < 0.05
    delta, _ = data["delta"]
    assert np.isfinite(delta).all()
    assert [p["kernel"] for p in data["params"]] == ["hmc", "flow"] * 3
    # the stored configuration is the file the next segment starts from
    seg1 = etree.parse(str(run / "segments" / "cycle_00001.ini.xml")).getroot()
    assert seg1.findtext("MCControl/Cfg/cfg_type") == "SZINQIO"
    assert seg1.findtext("MCControl/Cfg/cfg_file") == str(run / data["params"][1]["file"])
    assert seg1.findtext("MCControl/StartUpdateNum") == "2"
    assert seg1.findtext("MCControl/NUpdatesThisRun") == "2"
    # provenance: in the store and next to it
    with h5py.File(run / "ensemble.h5", "r") as h5:
        prov = json.loads(h5["provenance/run_000"][()])
    assert prov["engine"]["engine"] == "builtin" and prov["engine"]["reason"] == s.reason
    assert "<Params>" in prov["hmc_input_xml"] and prov["seeds"]["workflow_seed"] == 11
    assert prov["model"]["meta"]["train"]["beta"] == 0.1
    assert prov["cycles_now"] == 3
    assert json.loads((run / "provenance.json").read_text())[0]["engine"]["engine"] == "builtin"
    assert lines[0].startswith("qcd-bridge run: engine: builtin")
    assert sum(line.startswith("cycle ") for line in lines) == 3
    assert "flow 3 steps acc" in lines[-1]
    # rerunning a finished run does nothing
    s2 = run_workflow(write_workflow(setup), log=None)
    assert s2.finished and s2.updates == s.updates


def test_interrupted_and_resumed_equals_uninterrupted(setup):
    ref = store_series(run_workflow(write_workflow(setup, run_dir="ref"), log=None).store)

    class Stop(Exception):
        pass

    saved: dict[str, str] = {}

    def hook(phase, cycle):
        if (phase, cycle) == ("hmc", 0):  # a state older than the store, restored below
            saved["state"] = (setup / "run" / "state.json").read_text()
        if (phase, cycle) == ("hmc", 1):
            raise Stop

    wf = write_workflow(setup)
    with pytest.raises(Stop):
        run_workflow(wf, log=None, hook=hook)
    # crash between the store append and the state file: the state is behind the store
    (setup / "run" / "state.json").write_text(saved["state"])
    s = run_workflow(wf, log=None, max_cycles=1)
    assert not s.finished and s.cycles_done == 1
    s = run_workflow(wf, log=None)
    assert s.finished
    got = store_series(s.store)
    for name in SERIES:
        np.testing.assert_array_equal(got[name][1], ref[name][1])
        np.testing.assert_array_equal(got[name][0], ref[name][0])
    assert len(got["configs"]) == len(ref["configs"]) == 6
    for a, b in zip(got["configs"], ref["configs"], strict=True):
        assert torch.equal(a, b)
    with h5py.File(s.store, "r") as h5:
        assert sorted(h5["provenance"]) == ["run_000", "run_001", "run_002"]


def test_resume_refuses_changed_settings(setup):
    run_workflow(write_workflow(setup, cycles=1), log=None)
    with pytest.raises(ConfigError, match=r"state.json: this run directory was started with "
                                          r"trajectories = 2, the workflow .* now gives 3"):
        run_workflow(write_workflow(setup, cycles=2, trajectories=3), log=None)
    s = run_workflow(write_workflow(setup, cycles=2), log=None)  # more cycles is fine
    assert s.cycles_done == 2


def test_plain_hmc_without_model(tmp_path):
    write_xml(tmp_path)
    s = run_workflow(write_workflow(tmp_path, model=None, flow_steps=0, cycles=2), log=None)
    assert s.updates == 4
    data = store_series(s.store)
    assert list(data["kernel"][0]) == [0, 0, 0, 0]
    assert [p["hmc_update_no"] for p in data["params"]] == [2, 4]


# -- the Chroma engine through a fake hmc --------------------------------------------------------
@pytest.fixture
def fake(tmp_path, monkeypatch):
    from bridge.gauge import mesplq, random_gauge
    from bridge.io.ildg import write_ildg
    from bridge.lattice import Lattice
    from bridge.rng import generator

    u = random_gauge(Lattice((4, 4, 4, 4)), "SU3", 1, generator=generator(5))
    write_ildg(tmp_path / "template.lime", u)
    hmc = write_fake_chroma(tmp_path, template=tmp_path / "template.lime",
                            w_plaq=float(mesplq(u).w_plaq[0]))
    monkeypatch.setenv(ENV_HMC, str(hmc))
    write_xml(tmp_path)
    write_model(tmp_path)
    return tmp_path


def test_fake_chroma_cycles(fake):
    s = run_workflow(write_workflow(fake, engine="auto", cycles=2), log=None)
    assert s.finished and s.engine == "chroma" and ENV_HMC in s.reason
    run = fake / "run"
    seg1 = etree.parse(str(run / "segments" / "cycle_00001.ini.xml")).getroot()
    # Chroma's RNG state is handed over through its restart XML
    assert seg1.findtext("MCControl/RNG/Seed/elem") == str(12345 + 1000 * 2)
    calls = [json.loads(line) for line in (fake / "calls.log").read_text().splitlines()]
    assert calls[0] == ["-i", str(run / "segments" / "cycle_00000.ini.xml"),
                        "-o", str(run / "segments" / "cycle_00000.out.xml"),
                        "-l", str(run / "segments" / "cycle_00000.log.xml")]
    data = store_series(s.store)
    assert list(data["delta"][0][:2]) == [0.125, 0.125]
    prov = json.loads((run / "provenance.json").read_text())[0]
    assert prov["engine"]["engine"] == "chroma"
    assert prov["engine"]["hmc"]["path"] == str((fake / "bin" / "hmc").resolve())
    assert prov["engine_versions"]["chroma"] == "3.44.1-fake"


def test_config_the_engine_did_not_write(fake):
    wf = write_workflow(fake, engine="chroma", cycles=3, flow_steps=0, model=None)
    run_workflow(wf, log=None, max_cycles=1)
    before = store_series(fake / "run" / "ensemble.h5")
    set_fake_mode(fake, "wrongplaq")
    with pytest.raises(ChecksumError, match=r"pg_cfg_4.lime has w_plaq .*, but the engine's "
                                            r"output XML .*cycle_00001.out.xml reports .* for "
                                            r"update 4 .*: the file is not the configuration"):
        run_workflow(wf, log=None)
    set_fake_mode(fake, "nowrite")
    with pytest.raises(EngineFailed, match=r"finished without writing the expected "
                                           r"configuration .*pg_cfg_4.lime"):
        run_workflow(wf, log=None)
    # the ensemble written so far is intact, the state still at cycle 1
    after = store_series(fake / "run" / "ensemble.h5")
    for name in SERIES:
        np.testing.assert_array_equal(after[name][0], before[name][0])
    assert torch.equal(after["configs"][0], before["configs"][0])
    assert json.loads((fake / "run" / "state.json").read_text())["cycle"] == 1
    set_fake_mode(fake, "ok")
    assert run_workflow(wf, log=None).finished


def test_engine_wrote_another_lattice(fake):
    from bridge.gauge import unit_gauge
    from bridge.io.ildg import write_ildg
    from bridge.lattice import Lattice

    write_ildg(fake / "big.lime", unit_gauge(Lattice((4, 4, 4, 8)), "SU3", 1))
    set_fake_mode(fake, "ok", template=fake / "big.lime", w_plaq=1.0)
    with pytest.raises(FormatError, match=r"pg_cfg_2.lime holds a 4 4 4 8 lattice, the input's "
                                          r"nrow is 4 4 4 4"):
        run_workflow(write_workflow(fake, engine="chroma", flow_steps=0, model=None), log=None)


def test_fake_chroma_failure_keeps_xml_and_stderr(fake):
    set_fake_mode(fake, "fail")
    seg = fake / "run" / "segments"
    with pytest.raises(EngineFailed, match=r"exited with status 3; the input XML is kept at "
                                           r".*cycle_00000.ini.xml, stderr at "
                                           r".*cycle_00000.stderr"):
        run_workflow(write_workflow(fake, engine="chroma"), log=None)
    assert (seg / "cycle_00000.ini.xml").exists()
    assert "QDP:FAIL" in (seg / "cycle_00000.stderr").read_text()
    with EnsembleStore(fake / "run" / "ensemble.h5", "r") as st:
        assert len(st) == 0


def test_cli_run(setup, capsys):
    wf = write_workflow(setup, cycles=2)
    assert main(["run", str(wf), "--max-cycles", "1"]) == 0
    out = capsys.readouterr()
    assert "stopped (rerun the command to continue): 1/2 cycles" in out.out
    assert "cycle 1/2:" in out.err
    assert main(["run", str(wf), "--quiet"]) == 0
    assert "finished: 2/2 cycles, 10 updates" in capsys.readouterr().out
    bad = write_workflow(setup, name="bad.json", trajectories=0)
    assert main(["run", str(bad)]) == 1
    assert "trajectories = 0: expected an integer >= 1" in capsys.readouterr().err


# -- validation before anything runs ------------------------------------------------------------
@pytest.mark.parametrize("model, message", [
    # another lattice: accepted when the masks tile it, see tests/test_transfer.py
    (dict(beta=5.5), r"the flow was trained at beta = 5.5, the XML's gauge action has beta = 0.1"),
    (dict(group="U1"), r"the flow is for 4D U\(1\), Chroma's hmc input is 4D SU\(3\)"),
])
def test_model_xml_mismatch(tmp_path, model, message):
    write_xml(tmp_path)
    write_model(tmp_path, name="other", **model)
    with pytest.raises(ConfigError, match=r"model .*other vs hmc_input .*hmc.ini.xml: " + message):
        run_workflow(write_workflow(tmp_path, model="other"), log=None)
    assert not (tmp_path / "run").exists()


def test_workflow_messages(tmp_path):
    write_xml(tmp_path)
    with pytest.raises(ConfigError, match=r"missing required keys \['cycles'\]"):
        load_workflow(write_workflow(tmp_path, cycles=None))
    with pytest.raises(ConfigError, match=r"unknown keys \['steps'\]"):
        load_workflow(write_workflow(tmp_path, steps=3))
    with pytest.raises(ConfigError, match=r"flow_steps = 3 needs a flow: give model"):
        load_workflow(write_workflow(tmp_path, model=None))
    with pytest.raises(FileNotFoundError, match=r"model = 'flow': no such file or directory"):
        load_workflow(write_workflow(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"hmc_input = 'nope.xml': no such file"):
        load_workflow(write_workflow(tmp_path, hmc_input="nope.xml"))
    with pytest.raises(ConfigError, match=r"hmc_seed = \[1, 2\]: expected a list of 4 integers"):
        load_workflow(write_workflow(tmp_path, model=None, flow_steps=0, hmc_seed=[1, 2]))
    with pytest.raises(ConfigError, match=r"engine: kind 'gpu' is not one of"):
        load_workflow(write_workflow(tmp_path, model=None, flow_steps=0, engine="gpu"))
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(ConfigError, match=r"bad.json: not valid JSON"):
        load_workflow(bad)
    toml = tmp_path / "wf.toml"
    toml.write_text('hmc_input = "hmc.ini.xml"\ntrajectories = 4\ncycles = 2\n'
                    'engine = { kind = "builtin" }\n')
    try:
        wf = load_workflow(toml)
    except ConfigError as exc:  # Python 3.10 has no tomllib
        assert "TOML needs Python >= 3.11" in str(exc)
    else:
        assert wf.trajectories == 4 and wf.engine == {"kind": "builtin"}
        assert wf.run_dir == tmp_path / "run" and wf.flow_steps == 0


def test_xml_facts_messages(tmp_path):
    path = write_xml(tmp_path)
    tree = etree.parse(str(path))
    tree.getroot().find("MCControl/SaveVolfmt").text = "MULTIFILE"
    tree.write(str(path))
    with pytest.raises(ConfigError, match=r"hmc.ini.xml: /Params/MCControl/SaveVolfmt: .* "
                                          r"expected SINGLEFILE, got 'MULTIFILE'"):
        xml_facts(path)
    tree.getroot().find("MCControl/SaveVolfmt").text = "SINGLEFILE"
    tree.getroot().find("HMCTrj/nrow").text = "4 4 4"
    tree.write(str(path))
    with pytest.raises(ConfigError, match=r"/Params/HMCTrj/nrow: expected 4 positive extents"):
        xml_facts(path)
    path.write_text("<chroma/>")
    with pytest.raises(ConfigError, match=r"expected root element <Params> of Chroma's hmc"):
        xml_facts(path)
    nf2 = tmp_path / "nf2.xml"
    for xpath, text, message in [
        ("Kappa", "0.1x", r"nf2.xml: /Params/HMCTrj/Monomials/elem\[0\]/FermionAction/Kappa: "
                          r"expected a number, got '0.1x'"),
        ("Mass", "-4.0", r"elem\[0\]/FermionAction/Mass: expected Mass > -4 \(kappa = "
                         r"1/\(2 \(Mass \+ 4\)\)\), got -4.0"),
        ("Kappa", "-0.1", r"elem\[0\]/FermionAction/Kappa: expected a positive hopping "
                          r"parameter, got -0.1"),
        ("Name", "FOO", r"elem\[0\]/FermionAction: expected exactly one of Kappa or Mass"),
    ]:
        tree = etree.parse(str(NF2))
        fa = tree.getroot().find("HMCTrj/Monomials/elem/FermionAction")
        fa.find("Kappa").tag = xpath
        fa.find(xpath).text = text
        tree.write(str(nf2))
        with pytest.raises(ConfigError, match=message):
            xml_facts(nf2)
    tree = etree.parse(str(NF2))
    tree.getroot().find(".//GaugeAction/beta").text = "one"
    tree.write(str(nf2))
    with pytest.raises(ConfigError, match=r"elem\[1\]/GaugeAction/beta: expected a number, got "
                                          r"'one'"):
        xml_facts(nf2)


def test_builtin_engine_validates_the_xml_first(tmp_path):
    path = write_xml(tmp_path)
    tree = etree.parse(str(path))
    etree.SubElement(tree.getroot().find("MCControl"), "QudaParams").text = "x"
    tree.write(str(path))
    with pytest.raises(ConfigError, match=r"unsupported element /Params/MCControl/QudaParams"):
        run_workflow(write_workflow(tmp_path, model=None, flow_steps=0), log=None)
    assert not (tmp_path / "run").exists()


def test_flow_action_fermions_and_refusals(tmp_path):
    from bridge.fermions import exact_logdet
    from bridge.gauge import random_gauge, wilson_action
    from bridge.lattice import Lattice
    from bridge.rng import generator

    facts = xml_facts(NF2)
    with pytest.raises(ConfigError, match=r"flow steps with fermions use the exact determinant "
                                          r".* fermion_max_sites = 100 lattice sites; the "
                                          r"lattice 4 4 4 4 has 256"):
        flow_action(facts, max_sites=100)
    small = write_xml(tmp_path, src=NF2, nrow="2 2 2 2", beta=1.0, name="nf2.xml")
    action, desc = flow_action(xml_facts(small))
    assert "exact determinant" in desc and "kappa = 0.1" in desc
    u = random_gauge(Lattice((2, 2, 2, 2)), "SU3", 2, generator=generator(1))
    want = wilson_action(u, 1.0) - exact_logdet(u, 0.1, boundary=(1, 1, 1, -1))
    torch.testing.assert_close(action(u), want)
    tree = etree.parse(str(small))
    tree.getroot().find(".//GaugeAction/Name").text = "RECT_GAUGEACT"
    tree.write(str(small))
    with pytest.raises(ConfigError, match=r"nf2.xml: /Params/HMCTrj/Monomials/elem\[1\]: flow "
                                          r"steps support the isotropic WILSON_GAUGEACT, got "
                                          r"'RECT_GAUGEACT'; run plain HMC"):
        flow_action(xml_facts(small))


def _edit_fermion(src: Path, dst: Path, edit) -> Path:
    tree = etree.parse(str(src))
    edit(tree.getroot().find("HMCTrj/Monomials/elem"))
    tree.write(str(dst))
    return dst


def test_flow_action_matches_the_engines_fermion_action(tmp_path):
    """The flow steps' action is the one Chroma samples: unpreconditioned actions and clover
    coefficients are read as Chroma reads them; what would silently differ is refused."""
    from bridge.fermions import exact_logdet
    from bridge.gauge import random_gauge, wilson_action
    from bridge.lattice import Lattice
    from bridge.rng import generator

    small = write_xml(tmp_path, src=NF2, nrow="2 2 2 2", beta=1.0, name="nf2.xml")
    u = random_gauge(Lattice((2, 2, 2, 2)), "SU3", 2, generator=generator(1))

    def clover(mono, name="TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL", act="CLOVER",
               coeffs=(("clovCoeff", "1.1"),)):
        mono.find("Name").text = name
        fa = mono.find("FermionAction")
        fa.find("FermAct").text = act
        for tag, text in coeffs:
            fa.find("Kappa").addnext(etree.Element(tag))
            fa.find(tag).text = text

    # UNPRECONDITIONED_CLOVER with clovCoeffR = clovCoeffT: det of the clover operator
    unprec = _edit_fermion(small, tmp_path / "unprec.xml", lambda m: clover(
        m, "TWO_FLAVOR_UNPREC_FERM_MONOMIAL", "UNPRECONDITIONED_CLOVER",
        (("clovCoeffR", "1.1"), ("clovCoeffT", "1.1"))))
    action, desc = flow_action(xml_facts(unprec))
    assert "Nf=2 UNPRECONDITIONED_CLOVER kappa = 0.1, c_sw = 1.1" in desc
    want = wilson_action(u, 1.0) - exact_logdet(u, 0.1, c_sw=1.1, boundary=(1, 1, 1, -1))
    torch.testing.assert_close(action(u), want)
    refusals = [
        (lambda m: clover(m, "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"),
         r"elem\[0\]: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct CLOVER: Chroma's "
         r"monomial leaves out det\(A_ee\)"),
        (lambda m: clover(m, coeffs=(("clovCoeffR", "1.1"), ("clovCoeffT", "0.9"))),
         r"elem\[0\]/FermionAction: flow steps support isotropic clover .* got clover "
         r"coefficients \[1.1, 0.9\]"),
        (lambda m: clover(m, coeffs=()), r"got clover coefficients \[\]"),
        (lambda m: etree.SubElement(etree.SubElement(m.find("FermionAction"), "FermState"),
                                    "Name").__setattr__("text", "STOUT_FERM_STATE"),
         r"elem\[0\]/FermionAction/FermState: flow steps support unsmeared fermions \(no "
         r"FermState\), got 'STOUT_FERM_STATE'"),
        (lambda m: m.find("FermionAction").remove(m.find("FermionAction/FermionBC")),
         r"FermionBC/FermBC: flow steps support SIMPLE_FERMBC, got 'no FermionBC'"),
    ]
    for i, (edit, message) in enumerate(refusals):
        path = _edit_fermion(small, tmp_path / f"bad{i}.xml", edit)
        with pytest.raises(ConfigError, match=message):
            flow_action(xml_facts(path))


def test_dropin_guide_shows_the_segment_rewrite(tmp_path):
    """docs/dropin.md: the hmc input its command generates, and the lines the loop changes in
    the input of cycle 2, are what the code writes."""
    import difflib
    import re
    import shlex

    from bridge.jobs.dropin import segment_xml

    doc = (REPO / "docs" / "dropin.md").read_text()
    command = re.search(r"```\n(qcd-bridge chroma-xml hmc [^`]*?)\n```", doc).group(1)
    argv = shlex.split(command.replace("\\\n", " "))[1:]
    argv[argv.index("-o") + 1] = str(tmp_path / "hmc.ini.xml")
    assert main(argv) == 0
    shown = re.search(r"```\n(5,6c5,7\n[^`]*)```", doc).group(1).splitlines()
    facts = xml_facts(tmp_path / "hmc.ini.xml")
    new = segment_xml(facts, start_cfg=".../run-b0.1/segments/pg_cfg_5_flow.lime",
                      start_update=5, n=5, save_prefix=".../run-b0.1/segments/pg",
                      seed=facts.seed).decode().splitlines()
    old = (tmp_path / "hmc.ini.xml").read_text().splitlines()
    ops = difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes()
    assert [f"< {x}" for t, i1, i2, _, _ in ops if t != "equal" for x in old[i1:i2]] == [
        x for x in shown if x.startswith("<")]
    assert [f"> {x}" for t, _, _, j1, j2 in ops if t != "equal" for x in new[j1:j2]] == [
        x for x in shown if x.startswith(">")]


# -- the plaquette of the hybrid chain against plain HMC -----------------------------------------
def _mean_err(x: np.ndarray, blocks: int = 10) -> tuple[float, float]:
    b = x[: len(x) // blocks * blocks].reshape(blocks, -1).mean(axis=1)
    return float(x.mean()), float(b.std(ddof=1) / math.sqrt(blocks))


def _compare_with_hmc(tmp: Path, cycles: int, beta: float) -> None:
    write_xml(tmp, beta=beta)
    write_model(tmp, beta=beta)
    hyb = run_workflow(write_workflow(tmp, cycles=cycles, trajectories=2, flow_steps=4,
                                      run_dir="hybrid"), log=None)
    hmc = run_workflow(write_workflow(tmp, model=None, flow_steps=0, cycles=cycles // 2,
                                      trajectories=12, run_dir="hmc", name="hmc.json"), log=None)
    with EnsembleStore(hyb.store, "r") as st:
        p_h, _ = st.measurement("w_plaq")
        kind, _ = st.measurement("kernel")
        acc, _ = st.measurement("accepted")
    with EnsembleStore(hmc.store, "r") as st:
        p_0, _ = st.measurement("w_plaq")
    assert acc[kind == 1].mean() > 0.05  # the flow steps do move the chain
    m_h, e_h = _mean_err(p_h[len(p_h) // 10:])
    m_0, e_0 = _mean_err(p_0[len(p_0) // 10:])
    assert abs(m_h - m_0) < 4.0 * math.hypot(e_h, e_0), (m_h, e_h, m_0, e_0)
    # strong coupling: <w_plaq> = beta/18 + beta^2/216 + O(beta^3) for SU(3)
    sc = beta / 18 + beta**2 / 216
    assert abs(m_h - sc) < 4.0 * e_h + 0.2 * beta**3, (m_h, e_h, sc)


def test_plaquette_agrees_with_plain_hmc_fast(tmp_path):
    _compare_with_hmc(tmp_path, cycles=16, beta=0.1)


@pytest.mark.slow
def test_plaquette_agrees_with_plain_hmc(tmp_path):
    _compare_with_hmc(tmp_path, cycles=300, beta=0.2)


def test_run_dir_survives_a_moved_flow_file(setup):
    """A resume whose current configuration vanished fails with a message naming the file."""
    wf = write_workflow(setup)
    run_workflow(wf, log=None, max_cycles=1)
    state = json.loads((setup / "run" / "state.json").read_text())
    shutil.move(setup / "run" / state["current_cfg"], setup / "moved.lime")
    with pytest.raises((FileNotFoundError, ConfigError, FormatError), match="_flow.lime"):
        run_workflow(wf, log=None)


def test_nf2_input_with_exact_determinant(tmp_path):
    """Nf = 2 Wilson (the reference input on 2^3 x 4): the built-in engine runs the pseudofermion
    HMC, the flow steps use S_g - log det(D^dag D)."""
    from bridge.flows import make_flow
    from bridge.flows.training import TrainConfig, Trainer

    write_xml(tmp_path, src=NF2, nrow="2 2 2 4", beta=1.0, n_steps=5, tau0=0.5)
    torch.manual_seed(3)
    model = make_flow("SU3", 4, n_layers=2, hidden=(4,), k=2, period=2)
    Trainer(model, TrainConfig(nrow=[2, 2, 2, 4], beta=1.0)).save(tmp_path / "flow" /
                                                                  "checkpoint.pt")
    s = run_workflow(write_workflow(tmp_path, cycles=2, trajectories=2, flow_steps=2), log=None)
    assert s.finished and s.updates == 8
    data = store_series(s.store)
    assert list(data["kernel"][0]) == [0, 0, 1, 1] * 2
    assert np.isfinite(data["delta"][0]).all()
    prov = json.loads((tmp_path / "run" / "provenance.json").read_text())[0]
    assert "Nf=2 WILSON kappa = 0.1" in prov["flow_action"]
    assert "exact determinant" in prov["flow_action"]
