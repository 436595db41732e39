"""Chroma input templates: rendering, validation messages, the structural check (on rendered
documents, on Chroma's real example inputs and on broken ones), ``qcd-bridge chroma-xml`` and
the built-in fallback running every template end to end."""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from bridge.chroma.hmc_input import parse_hmc_input
from bridge.chroma.hmc_program import run_hmc
from bridge.chroma.measure_input import parse_chroma_input
from bridge.chroma.output import read_output, series
from bridge.chroma.params import hmc_params_from_dict, measure_params_from_dict
from bridge.chroma.schema import check_structure, structure_problems, write_checked
from bridge.chroma.templates import TEMPLATE_FILES, load_template, render_hmc, render_measure
from bridge.cli import main
from bridge.errors import ConfigError

REFERENCE_INPUTS = ["chroma/pure_gauge_b5.5_4x4/hmc.ini.xml",
                    "chroma/nf2_b1.0_k0.1_4x4/hmc.ini.xml",
                    "chroma/nf2_b1.0_k0.1_4x4/chroma_measure.ini.xml"]

TINY = {"nrow": [2, 2, 2, 2], "beta": 5.5, "tau": 0.5, "md_steps": 4, "n_updates": 2,
        "save_interval": 2}
HMC_CASES = {
    "pure_gauge_unit_leapfrog": {"start": "unit"},
    "pure_gauge_weak_min_norm_2": {"start": "weak", "integrator": "LCM_STS_MIN_NORM_2"},
    "pure_gauge_hot_lambda": {"start": "hot", "integrator": "LCM_STS_MIN_NORM_2",
                              "lambda": 0.2},
    "wilson_eo_nested_gauge": {"kappa": 0.1, "integrator": "LCM_STS_MIN_NORM_2",
                               "gauge_steps": 2},
    "wilson_unprec": {"kappa": 0.1, "precond": "none"},
    "clover_eo": {"kappa": 0.1, "fermion": "clover", "csw": 1.2},
    "clover_unprec_nested": {"kappa": 0.1, "fermion": "clover", "csw": 1.2, "precond": "none",
                             "gauge_steps": 2},
}
EXPECTED = {  # (monomial Name, FermAct) Chroma needs for each fermion case
    "wilson_eo_nested_gauge": ("TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL", "WILSON"),
    "wilson_unprec": ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL", "UNPRECONDITIONED_WILSON"),
    "clover_eo": ("TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL", "CLOVER"),
    "clover_unprec_nested": ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL", "UNPRECONDITIONED_CLOVER"),
}


def _hmc(case: str, **extra) -> etree._Element:
    return render_hmc(hmc_params_from_dict({**TINY, **HMC_CASES[case], "prefix": case,
                                            **extra}))


def test_every_template_file_ships_and_parses():
    for name in TEMPLATE_FILES:
        root = load_template(name)
        assert isinstance(root.tag, str)
    with pytest.raises(ConfigError, match=r"template 'nope.xml': expected one of hmc.xml"):
        load_template("nope.xml")


@pytest.mark.parametrize("case", sorted(HMC_CASES))
def test_hmc_templates_render_to_checked_chroma_input(case):
    root = _hmc(case)
    assert structure_problems(root) == []
    inp = parse_hmc_input(etree.ElementTree(root), case)  # the fallback's strict parser
    assert inp.nrow == (2, 2, 2, 2) and inp.n_updates == 2
    it = root.find("HMCTrj/MDIntegrator/Integrator")
    assert it.findtext("Name") == HMC_CASES[case].get("integrator", "LCM_STS_LEAPFROG")
    if case in EXPECTED:
        name, act = EXPECTED[case]
        assert root.findtext("HMCTrj/Monomials/elem/Name") == name
        assert root.findtext("HMCTrj/Monomials/elem/FermionAction/FermAct") == act
        assert (root.find("HMCTrj/Monomials/elem/FermionAction/clovCoeff") is not None) == (
            "clover" in case)
    if "nested" in case:
        sub = it.find("SubIntegrator")
        assert sub.findtext("n_steps") == "2"
        assert [e.text for e in sub.findall("monomial_ids/elem")] == ["gauge"]
        assert [e.text for e in it.findall("monomial_ids/elem")] == ["wilson_two_flav"]
    start = {"unit": "UNIT", "weak": "WEAK_FIELD", "hot": "DISORDERED"}[
        HMC_CASES[case].get("start", "unit")]
    assert root.findtext("MCControl/Cfg/cfg_type") == start


def test_hmc_szinqio_start_and_continuation():
    root = _hmc("pure_gauge_unit_leapfrog", start="szin:run_cfg_10.lime", start_update=10)
    assert root.findtext("MCControl/Cfg/cfg_type") == "SZINQIO"
    assert root.findtext("MCControl/Cfg/cfg_file") == "run_cfg_10.lime"
    assert root.findtext("MCControl/StartUpdateNum") == "10"
    assert root.findtext("MCControl/NProductionUpdates") == "12"
    assert root.findtext("MCControl/NUpdatesThisRun") == "2"


def test_measure_template_renders_every_measurement():
    p = measure_params_from_dict({"nrow": [4, 4, 4, 8], "cfg": "run_cfg_10.lime",
                                  "plaquette": True, "polyakov": True, "pion": True,
                                  "kappa": 0.12, "fermion": "clover", "csw": 1.0,
                                  "save_prop": "prop.lime", "wilson_flow": 1.0,
                                  "flow_steps": 20, "qtop": [0, 0.05],
                                  "save_flowed": "flowed.lime"})
    root = render_measure(p)
    assert structure_problems(root) == []
    names = [e.findtext("Name") for e in root.findall("Param/InlineMeasurements/elem")]
    assert names == ["PLAQUETTE", "POLYAKOV_LOOP", "MAKE_SOURCE", "PROPAGATOR", "SINK_SMEAR",
                     "HADRON_SPECTRUM", "QIO_WRITE_NAMED_OBJECT", "WILSON_FLOW", "PLAQUETTE",
                     "QTOP_NAIVE", "QTOP_NAIVE", "QIO_WRITE_NAMED_OBJECT"]
    inp = parse_chroma_input(etree.ElementTree(root), "rendered")  # named objects consistent
    assert inp.nrow == (4, 4, 4, 8)
    flow = inp.measurements[7]
    assert flow.params["nstep"] == 20 and flow.params["wtime"] == 1.0
    assert [m.reads["gauge_id"] for m in inp.measurements[8:11]] == ["wflow"] * 3
    assert inp.measurements[3].params["c_sw"] == 1.0
    assert root.findtext("Cfg/cfg_type") == "SZINQIO"


@pytest.mark.parametrize("rel", REFERENCE_INPUTS)
def test_structure_accepts_chromas_real_inputs(data_dir, rel):
    tree = etree.parse(str(data_dir / rel))
    assert structure_problems(tree, strict=True) == []


BROKEN = [
    # (xpath of an element, edit, message fragment)
    ("MCControl/Cfg/cfg_type", "ILDG", "/Params/MCControl/Cfg/cfg_type: 'ILDG' is not one of "
     "Chroma's names UNIT"),
    ("MCControl/SaveInterval", None, "missing required element /Params/MCControl/SaveInterval"),
    ("MCControl/NUpdatesThisRun", "ten", "/Params/MCControl/NUpdatesThisRun: expected an "
     "integer, got 'ten'"),
    ("HMCTrj/Monomials/elem/Name", "GAUGE_MONOMIAL_X", "/Params/HMCTrj/Monomials/elem[0]/Name: "
     "'GAUGE_MONOMIAL_X' is not one of Chroma's names"),
    ("HMCTrj/MDIntegrator/Integrator/Name", "LEAPFROG", "Integrator/Name: 'LEAPFROG' is not "
     "one of Chroma's names"),
    ("HMCTrj/nrow", "4 4 4", "/Params/HMCTrj/nrow: expected 4 integers, got 3"),
    ("HMCTrj/Hamiltonian/monomial_ids/elem", "gauge2", "/Params/HMCTrj/Hamiltonian/"
     "monomial_ids: unknown monomial id 'gauge2' (defined: gauge)"),
    ("MCControl/ReverseCheckP", "yes", "/Params/MCControl/ReverseCheckP: expected true or "
     "false, got 'yes'"),
]


@pytest.mark.parametrize("xpath,text,message", BROKEN)
def test_structure_reports_broken_hmc_input(xpath, text, message):
    root = _hmc("pure_gauge_unit_leapfrog")
    el = root.find(xpath)
    if text is None:
        el.getparent().remove(el)
    else:
        el.text = text
    problems = structure_problems(root)
    assert any(message in p for p in problems), problems
    with pytest.raises(ConfigError, match="my.xml: not a valid Chroma input"):
        check_structure(root, "my.xml")


def test_structure_fermion_rules_from_chromas_source():
    root = _hmc("wilson_unprec")
    act = root.find("HMCTrj/Monomials/elem/FermionAction/FermAct")
    act.text = "WILSON"  # Chroma's WILSON is even-odd preconditioned
    assert any("TWO_FLAVOR_UNPREC_FERM_MONOMIAL needs an unpreconditioned action "
               "(UNPRECONDITIONED_WILSON or UNPRECONDITIONED_CLOVER), got 'WILSON'" in p
               for p in structure_problems(root))
    root = _hmc("clover_eo")
    root.find("HMCTrj/Monomials/elem/Name").text = "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"
    assert structure_problems(root) == [
        "/Params/HMCTrj/Monomials/elem[0]: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct "
        "CLOVER leaves out det(A_ee) of the clover term (Chroma runs it, but samples another "
        "distribution than Nf=2 clover); use TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL, or add an "
        "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL with the same action to the Hamiltonian"]
    root = _hmc("clover_eo")
    fa = root.find("HMCTrj/Monomials/elem/FermionAction")
    fa.remove(fa.find("clovCoeff"))
    etree.SubElement(fa, "Mass").text = "0.1"
    problems = structure_problems(root)
    assert any("expected exactly one of Kappa or Mass" in p for p in problems)
    assert any("the CLOVER action needs clovCoeff" in p for p in problems)


def test_structure_accepts_constdet_clover_with_the_even_even_logdet():
    """Chroma's constdet monomial takes CLOVER (it casts to EvenOddPrecWilsonTypeFermAct);
    with N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL for det(A_ee) it is exact Nf=2 clover, the
    layout of Chroma's tests/hmc/hmc.eoprec_clover.mgproto.ini.xml."""
    root = _hmc("clover_eo")
    mono = root.find("HMCTrj/Monomials/elem")
    mono.find("Name").text = "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"
    ee = etree.Element("elem")
    etree.SubElement(ee, "Name").text = "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL"
    ee.append(copy.deepcopy(mono.find("FermionAction")))
    etree.SubElement(ee, "num_flavors").text = "2"
    etree.SubElement(etree.SubElement(ee, "NamedObject"), "monomial_id").text = "logdet_ee"
    mono.addprevious(ee)
    for ids in ("HMCTrj/Hamiltonian/monomial_ids", "HMCTrj/MDIntegrator/Integrator/monomial_ids"):
        etree.SubElement(root.find(ids), "elem").text = "logdet_ee"
    assert structure_problems(root) == []
    root.find("HMCTrj/Monomials/elem/num_flavors").text = "two"
    assert structure_problems(root) == [
        "/Params/HMCTrj/Monomials/elem[0]/num_flavors: expected an integer, got 'two'"]


def test_structure_strict_and_lenient_unknown_elements():
    root = _hmc("pure_gauge_unit_leapfrog")
    etree.SubElement(root.find("MCControl"), "SaveIntervall").text = "3"  # a typo
    strict = structure_problems(root)
    assert strict == ["/Params/MCControl/SaveIntervall: element not read by Chroma here "
                      "(expected one of " + strict[0].split("(expected one of ")[1]]
    assert structure_problems(root, strict=False) == []
    assert structure_problems(etree.fromstring("<hmc/>")) == [
        "/hmc: expected root <Params> (hmc input) or <chroma> (chroma input)"]


def test_structure_reports_broken_chroma_input(data_dir):
    tree = etree.parse(str(data_dir / REFERENCE_INPUTS[2]))
    root = copy.deepcopy(tree.getroot())
    flow = root.findall("Param/InlineMeasurements/elem")[8]  # WILSON_FLOW
    assert flow.findtext("Name") == "WILSON_FLOW"
    flow.find("Param").remove(flow.find("Param/nstep"))
    root.find("Cfg").remove(root.find("Cfg/cfg_file"))
    problems = structure_problems(root)
    assert "missing required element /chroma/Param/InlineMeasurements/elem[8]/Param/nstep" in \
        problems
    assert "missing required element /chroma/Cfg/cfg_file" in problems


def test_write_checked_writes_nothing_for_a_broken_document(tmp_path):
    root = _hmc("pure_gauge_unit_leapfrog")
    root.find("HMCTrj").remove(root.find("HMCTrj/nrow"))
    out = tmp_path / "bad.xml"
    with pytest.raises(ConfigError, match=r"bad.xml: not a valid Chroma input:\n  missing "
                       r"required element /Params/HMCTrj/nrow"):
        write_checked(out, root)
    assert not out.exists() and list(tmp_path.iterdir()) == []


BAD_PARAMS = [
    ({"beta": 0}, "beta: expected a positive gauge coupling, got 0"),
    ({"nrow": [4, 4, 4]}, "nrow: expected 4 lattice extents >= 2 (x y z t), got (4, 4, 4)"),
    ({"integrator": "LCM_OMELYAN"}, "integrator: expected LCM_STS_LEAPFROG or "
     "LCM_STS_MIN_NORM_2, got 'LCM_OMELYAN'"),
    ({"md_steps": 0}, "md_steps: expected an integer >= 1, got 0"),
    ({"gauge_steps": 2}, "gauge_steps: expected no gauge sub-integrator for pure gauge"),
    ({"lambda": 0.2}, "lambda: expected no lambda for LCM_STS_LEAPFROG, got 0.2"),
    ({"start": "ildg:x.lime"}, "start: expected unit, weak, hot or szin:FILE, got 'ildg:x.lime'"),
    ({"start": "szin:"}, "start: expected unit, weak, hot or szin:FILE, got 'szin:'"),
    ({"seed": [1, 2]}, "seed: expected one or four non-negative integers (QDP++ Seed), got "
     "[1, 2]"),
    ({"prefix": "a b"}, "prefix: expected a non-empty file prefix without spaces"),
    ({"kappa": 0.1, "fermion": "clover"}, "csw: expected a clover coefficient for --fermion "
     "clover, got None"),
    ({"kappa": 0.1, "csw": 1.0}, "csw: expected no csw for the Wilson action (use clover), got "
     "1.0"),
    ({"kappa": -0.1}, "kappa: expected a positive hopping parameter, got -0.1"),
    ({"kappa": 0.1, "precond": "oe"}, "precond: expected eo or none, got 'oe'"),
    ({"kappa": 0.1, "boundary": [1, 1, 1, 0]}, "boundary: expected 4 phases 1 or -1"),
    ({"csw": 1.0}, "csw: expected no fermion parameters without kappa, got 1.0"),
    ({"betta": 5.5}, "unknown key(s) betta; expected some of beta"),
]


@pytest.mark.parametrize("change,message", BAD_PARAMS)
def test_hmc_parameter_errors_name_key_value_and_expectation(change, message):
    d = {**TINY, **change}
    with pytest.raises(ConfigError) as exc:
        hmc_params_from_dict(d, "run.json")
    assert str(exc.value).startswith("run.json: ")
    assert message in str(exc.value)


@pytest.mark.parametrize("change,message", [
    ({"pion": True}, "kappa: expected a hopping parameter for the pion, got None"),
    ({"pion": True, "kappa": 0.1, "t_srce": [0, 0, 0, 4]}, "t_srce: expected 4 coordinates "
     "inside (4, 4, 4, 4), got (0, 0, 0, 4)"),
    ({"pion": True, "kappa": 0.1, "fermion": "clover"}, "csw: expected a clover coefficient "
     "for --fermion clover, got None"),
    ({"pion": True, "kappa": 0.1, "csw": 1.0}, "csw: expected no csw for the Wilson action"),
    ({"pion": True, "kappa": 0.1, "rsd_cg": 2.0}, "rsd_cg: expected a CG residual in (0, 1), "
     "got 2.0"),
    ({"pion": True, "kappa": 0.1, "boundary": [1, 1, 1, 2]}, "boundary: expected 4 phases 1 "
     "or -1"),
    ({"wilson_flow": -1.0}, "wilson_flow: expected a positive flow time, got -1.0"),
    ({"plaquette": False}, "measurements: expected at least one measurement, got 'none'"),
    ({"cfg": ""}, "cfg: expected a configuration file (SZINQIO) or 'unit', got ''"),
])
def test_measure_parameter_errors(change, message):
    with pytest.raises(ConfigError, match="^m.json: ") as exc:
        measure_params_from_dict({"nrow": [4, 4, 4, 4], "cfg": "c.lime", **change}, "m.json")
    assert message in str(exc.value)


def test_cli_hmc_from_options_and_from_json(tmp_path, capsys):
    out = tmp_path / "hmc.ini.xml"
    argv = ["chroma-xml", "hmc", "--nrow", "4", "4", "4", "4", "--beta", "5.5", "--kappa", "0.1",
            "--fermion", "clover", "--csw", "1.1", "--precond", "none", "--integrator",
            "LCM_STS_MIN_NORM_2", "--tau", "1", "--md-steps", "10", "--gauge-steps", "4",
            "--n-updates", "100", "--save-interval", "10", "--prefix", "cfg", "--start",
            "szin:cfg_0.lime", "--seed", "5", "-o", str(out)]
    assert main(argv) == 0
    root = etree.parse(str(out)).getroot()
    assert root.findtext("HMCTrj/Monomials/elem/FermionAction/FermAct") == \
        "UNPRECONDITIONED_CLOVER"
    assert [e.text for e in root.findall("MCControl/RNG/Seed/elem")] == ["5", "0", "0", "0"]
    assert main(argv) == 1  # refuses to overwrite
    assert "output path exists" in capsys.readouterr().err
    cfg = tmp_path / "hmc.json"
    cfg.write_text(json.dumps({"nrow": [4, 4, 4, 8], "beta": 6.0, "n_updates": 20,
                               "start": "weak"}))
    out2 = tmp_path / "from_json.xml"
    assert main(["chroma-xml", "hmc", "--config", str(cfg), "--beta", "5.8", "-o",
                 str(out2)]) == 0
    root = etree.parse(str(out2)).getroot()
    assert root.findtext("HMCTrj/Monomials/elem/GaugeAction/beta") == "5.8"  # option wins
    assert root.findtext("HMCTrj/nrow") == "4 4 4 8"
    assert root.findtext("MCControl/Cfg/cfg_type") == "WEAK_FIELD"
    cfg.write_text('{"nrow": [4, 4, 4, 8], "beta": 6.0, "kapa": 0.1}')
    assert main(["chroma-xml", "hmc", "--config", str(cfg), "-o", str(tmp_path / "x.xml")]) == 1
    err = capsys.readouterr().err
    assert f"qcd-bridge chroma-xml: error: {cfg}: unknown key(s) kapa" in err
    assert not (tmp_path / "x.xml").exists()


def test_cli_measure_and_check(tmp_path, capsys, data_dir):
    out = tmp_path / "m.ini.xml"
    assert main(["chroma-xml", "measure", "--nrow", "4", "4", "4", "4", "--cfg", "c_cfg_5.lime",
                 "--plaquette", "--pion", "--kappa", "0.1", "--wilson-flow", "2",
                 "--flow-steps", "200", "--qtop", "0", "-o", str(out)]) == 0
    names = [e.findtext("Name") for e in etree.parse(str(out)).findall(
        "Param/InlineMeasurements/elem")]
    assert names == ["PLAQUETTE", "MAKE_SOURCE", "PROPAGATOR", "SINK_SMEAR", "HADRON_SPECTRUM",
                     "WILSON_FLOW", "PLAQUETTE", "QTOP_NAIVE"]
    refs = [str(data_dir / r) for r in REFERENCE_INPUTS]
    assert main(["chroma-xml", "check", str(out), *refs]) == 0
    assert capsys.readouterr().out.count(": ok (") == 4
    bad = tmp_path / "bad.xml"
    bad.write_text(out.read_text().replace("<cfg_type>SZINQIO", "<cfg_type>ILDG"))
    assert main(["chroma-xml", "check", str(bad)]) == 1
    assert "/chroma/Cfg/cfg_type: 'ILDG' is not one of Chroma's names" in capsys.readouterr().out
    # a file that does not parse is reported and the others are still checked
    torn = tmp_path / "torn.xml"
    torn.write_text(out.read_text()[:200])
    assert main(["chroma-xml", "check", str(torn), str(out)]) == 1
    text = capsys.readouterr().out
    assert f"{torn}: not well-formed XML: " in text and f"{out}: ok (chroma input)" in text
    assert main(["chroma-xml", "check", str(tmp_path / "nope.xml")]) == 1
    assert "nope.xml: cannot read the input" in capsys.readouterr().err


def _canonical(el: etree._Element) -> tuple:
    """Tag, value (numbers compared as numbers, so 1.0e-10 == 1e-10) and children."""
    text = (el.text or "").strip()
    try:
        value: Any = tuple(float(v) for v in text.split())
    except ValueError:
        value = text
    return (el.tag, value, tuple(_canonical(c) for c in el if isinstance(c.tag, str)))


def test_rendered_inputs_equal_chromas_example_inputs(data_dir):
    """The templates with the reference runs' parameters give the inputs Chroma ran
    (tests/data/chroma), element for element; only MonitorForces (a diagnostic
    print) differs for the pure-gauge run."""
    runs = [("chroma/pure_gauge_b5.5_4x4/hmc.ini.xml",
             {"nrow": [4, 4, 4, 4], "beta": 5.5, "tau": 1.0, "md_steps": 10, "n_warmup": 20,
              "n_updates": 5020, "save_interval": 500, "prefix": "pg_b5.5_4x4", "start": "unit",
              "seed": [12345, 0, 0, 0], "reverse_check_every": 50}),
            ("chroma/nf2_b1.0_k0.1_4x4/hmc.ini.xml",
             {"nrow": [4, 4, 4, 4], "beta": 1.0, "kappa": 0.1, "rsd_cg": 1e-10, "tau": 0.5,
              "md_steps": 5, "n_updates": 15100, "save_interval": 10,
              "prefix": "nf2_b1.0_k0.1_4x4", "start": "hot", "reverse_check_every": 100})]
    for rel, params in runs:
        ref = etree.parse(str(data_dir / rel)).getroot()
        got = render_hmc(hmc_params_from_dict(params))
        if "pure_gauge" in rel:
            assert ref.findtext("MCControl/MonitorForces") == "true"
            ref.find("MCControl/MonitorForces").text = "false"
        assert _canonical(got) == _canonical(ref), rel


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        main(["chroma-xml", "hmc", "--help"])
    text = capsys.readouterr().out
    assert "qcd-bridge chroma-xml hmc --nrow 4 4 4 4 --beta 5.5" in text
    assert "--gauge-steps" in text and "szin:FILE" in text


# -- the built-in fallback runs every template ----------------------------------------------------
@pytest.mark.parametrize("case", sorted(HMC_CASES))
def test_fallback_runs_every_hmc_template(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_checked("hmc.ini.xml", _hmc(case))
    assert main(["hmc", "-i", "hmc.ini.xml", "-o", "hmc.out.xml", "--quiet"]) == 0
    out = read_output("hmc.out.xml")
    assert [u["update_no"] for u in out["updates"]] == [1, 2]
    for u in out["updates"]:
        assert u["AcceptP"] in (True, False) and 0 <= u["AccProb"] <= 1
        assert u["deltaH"] == pytest.approx(u["deltaKE"] + u["deltaPE"], abs=1e-9)
        assert 0 < u["plaquette"]["w_plaq"] <= 1 and len(u["poly_loop"]) == 4
    pe_unit = -5.5 * 16 * 6  # Chroma's PE offset: -beta V Nd(Nd-1)/2 is the unit field's PE
    pe0 = out["updates"][0]["PE_old"]
    if "weak" in case:  # WEAK_FIELD: small fluctuations about the unit field
        assert pe_unit < pe0 < 0.9 * pe_unit
    elif "unit" in case:
        assert pe0 == pe_unit
    elif "hot" in case:  # DISORDERED: Haar-random links, <Re tr P / 3> ~ 0
        assert abs(pe0) < 0.3 * abs(pe_unit)
    assert Path(f"{case}_cfg_2.lime").exists() and Path(f"{case}_restart_2.xml").exists()
    # the restart file Chroma's convention writes is again a valid input
    assert structure_problems(etree.parse(f"{case}_restart_2.xml")) == []


def test_fallback_continues_from_szinqio_and_measures(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_checked("a.ini.xml", _hmc("pure_gauge_weak_min_norm_2", prefix="run"))
    run_hmc(parse_hmc_input(etree.parse("a.ini.xml"), "a.ini.xml"), "a.out.xml",
            progress=False)
    write_checked("b.ini.xml", _hmc("pure_gauge_weak_min_norm_2", prefix="run",
                                    start="szin:run_cfg_2.lime", start_update=2))
    run_hmc(parse_hmc_input(etree.parse("b.ini.xml"), "b.ini.xml"), "b.out.xml",
            progress=False)
    assert [u["update_no"] for u in read_output("b.out.xml")["updates"]] == [3, 4]
    p = measure_params_from_dict({"nrow": [2, 2, 2, 2], "cfg": "run_cfg_4.lime",
                                  "polyakov": True, "pion": True, "kappa": 0.1,
                                  "save_prop": "prop.lime", "wilson_flow": 0.2,
                                  "flow_steps": 4, "qtop": [0, 0.05],
                                  "save_flowed": "flowed.lime"})
    write_checked("m.ini.xml", render_measure(p))
    assert main(["chroma", "-i", "m.ini.xml", "-o", "m.out.xml", "--quiet"]) == 0
    out = read_output("m.out.xml")
    assert out["trajectory"] == 4
    labels = [m["label"] for m in out["measurements"]]
    assert labels == ["Plaquette", "PolyakovLoop", "make_source", "propagator", "sink_smear",
                      "hadspec", "qio_write_named_obj", "WilsonFlow", "Plaquette@wflow",
                      "QTop[k5=0]@wflow", "QTop[k5=0.05]@wflow", "qio_write_named_obj#2"]
    s = series(out)
    assert s["chroma.hadspec.pion"][1].shape == (1, 2)
    assert s["chroma.WilsonFlow.wflow_gact4i"][1].shape == (1, 5)
    assert s["chroma.Plaquette.w_plaq"][1][0] == pytest.approx(out["observables"]["w_plaq"])
    assert Path("prop.lime").exists() and Path("flowed.lime").exists()


def test_fallback_runs_the_clover_pion_template(tmp_path, monkeypatch):
    """The measurement template with a clover propagator (and its QIO write) runs in the
    built-in ``chroma`` and its output parses back."""
    monkeypatch.chdir(tmp_path)
    p = measure_params_from_dict({"nrow": [2, 2, 2, 4], "cfg": "unit", "plaquette": False,
                                  "pion": True, "kappa": 0.11, "fermion": "clover",
                                  "csw": 1.2, "save_prop": "prop.lime"})
    write_checked("m.ini.xml", render_measure(p))
    assert main(["chroma", "-i", "m.ini.xml", "-o", "m.out.xml", "--quiet"]) == 0
    out = read_output("m.out.xml")
    assert [m["label"] for m in out["measurements"]] == [
        "make_source", "propagator", "sink_smear", "hadspec", "qio_write_named_obj"]
    pion = out["measurements"][3]["values"]["pion"]
    assert len(pion) == 4 and all(c > 0 for c in pion)
    assert Path("prop.lime").exists()


def test_fallback_parser_requires_chromas_fermion_action_kinds():
    root = _hmc("wilson_unprec")
    root.find("HMCTrj/Monomials/elem/FermionAction/FermAct").text = "WILSON"
    with pytest.raises(ConfigError, match=r"^in.xml: /Params/HMCTrj/Monomials/elem\[0\]/"
                       r"FermionAction/FermAct: TWO_FLAVOR_UNPREC_FERM_MONOMIAL needs an "
                       r"unpreconditioned fermion action \(UNPRECONDITIONED_WILSON or "
                       r"UNPRECONDITIONED_CLOVER\), got 'WILSON'$"):
        parse_hmc_input(etree.ElementTree(root), "in.xml")
    root = _hmc("clover_eo")
    root.find("HMCTrj/Monomials/elem/FermionAction/FermAct").text = "UNPRECONDITIONED_CLOVER"
    with pytest.raises(ConfigError, match=r"TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL needs an "
                       r"even-odd preconditioned fermion action \(WILSON or CLOVER\), got "
                       r"'UNPRECONDITIONED_CLOVER'"):
        parse_hmc_input(etree.ElementTree(root), "in.xml")
    inp = parse_hmc_input(etree.ElementTree(_hmc("clover_unprec_nested")), "in.xml")
    params = inp.monomials["wilson_two_flav"].params
    assert params["fermact"] == "CLOVER" and params["c_sw"] == 1.2
    assert params["fermact_name"] == "UNPRECONDITIONED_CLOVER"


def test_both_fallback_parsers_read_kappa_or_mass_alike():
    """Kappa xor Mass (Mass = 1/(2 kappa) - 4) and the clover coefficients are read by one
    function for the hmc and the chroma input; its errors name the element path."""
    root = _hmc("clover_eo")
    fa = root.find("HMCTrj/Monomials/elem/FermionAction")
    fa.find("Kappa").tag = "Mass"
    fa.find("Mass").text = "1.0"
    fa.find("clovCoeff").addnext(etree.Element("clovCoeffT"))
    fa.find("clovCoeffT").text = "1.2"
    params = parse_hmc_input(etree.ElementTree(root), "in.xml").monomials[
        "wilson_two_flav"].params
    assert params["kappa"] == 0.1 and params["c_sw"] == 1.2
    fa.find("clovCoeffT").text = "0.9"
    with pytest.raises(ConfigError, match=r"^in.xml: /Params/HMCTrj/Monomials/elem\[0\]/"
                       r"FermionAction/clovCoeffT: anisotropic clover coefficients are not "
                       r"supported \(must equal clovCoeff\)$"):
        parse_hmc_input(etree.ElementTree(root), "in.xml")
    fa.find("clovCoeffT").text = "1.2"
    fa.find("Mass").text = "-4.5"
    with pytest.raises(ConfigError, match=r"FermionAction/Mass: expected Mass > -4 \(kappa = "
                       r"1/\(2 \(Mass \+ 4\)\)\), got -4.5"):
        parse_hmc_input(etree.ElementTree(root), "in.xml")
    m = render_measure(measure_params_from_dict({"nrow": [2, 2, 2, 2], "cfg": "unit",
                                                 "pion": True, "kappa": 0.1}))
    fa = m.find("Param/InlineMeasurements/elem[3]/Param/FermionAction")
    fa.find("Kappa").tag = "Mass"
    fa.find("Mass").text = "1.0"
    assert parse_chroma_input(etree.ElementTree(m), "m.xml").measurements[2].params[
        "kappa"] == 0.1
    fa.find("Mass").text = "-4.5"
    with pytest.raises(ConfigError, match=r"^m.xml: .*/FermionAction/Mass: expected Mass > -4"):
        parse_chroma_input(etree.ElementTree(m), "m.xml")


def test_cli_measure_from_json_and_inline_plaquette_in_hmc(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("m.json").write_text(json.dumps({"nrow": [2, 2, 2, 2], "cfg": "unit", "polyakov": True,
                                          "qtop": 0.05}))
    assert main(["chroma-xml", "measure", "--config", "m.json", "-o", "m.ini.xml"]) == 0
    root = etree.parse("m.ini.xml").getroot()
    assert [e.findtext("Name") for e in root.findall("Param/InlineMeasurements/elem")] == [
        "PLAQUETTE", "POLYAKOV_LOOP", "QTOP_NAIVE"]
    assert root.findtext("Cfg/cfg_type") == "UNIT"
    assert main(["chroma", "-i", "m.ini.xml", "-o", "m.out.xml", "--quiet"]) == 0
    out = read_output("m.out.xml")
    assert out["measurements"][0]["values"]["w_plaq"] == 1.0
    assert out["measurements"][2]["values"] == {"k5": 0.05, "qtop": 0.0}
    # a PLAQUETTE inline measurement in an hmc input: a second Plaquette group, as in Chroma
    root = _hmc("pure_gauge_unit_leapfrog")
    meas = root.find("MCControl/InlineMeasurements")
    meas.append(load_template("meas_plaquette.xml"))
    write_checked("h.ini.xml", root)
    assert main(["hmc", "-i", "h.ini.xml", "-o", "h.out.xml", "--quiet"]) == 0
    groups = [e[0].tag for e in etree.parse("h.out.xml").findall(
        "doHMC/MCUpdates/elem/Update/InlineObservables/elem")]
    assert groups == ["Plaquette", "PolyakovLoop", "Plaquette"] * 2


DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.mark.parametrize("doc", ["chroma.md", "dropin.md"])
def test_docs_show_what_the_command_writes(doc, tmp_path):
    """Every "writes (unchanged output):" XML block of the user guides is what the command
    before it writes today."""
    text = (DOCS / doc).read_text()
    pairs = re.findall(r"```\n(qcd-bridge chroma-xml [^`]*?)\n```\s*\nwrites \(unchanged "
                       r"output\):\s*\n```xml\n([^`]*)```", text)
    assert len(pairs) == {"chroma.md": 2, "dropin.md": 1}[doc], f"docs/{doc}"
    for i, (command, shown) in enumerate(pairs):
        argv = shlex.split(command.replace("\\\n", " "))[1:]
        k = argv.index("-o")
        argv[k + 1] = str(tmp_path / f"{i}.xml")
        assert main(argv) == 0
        assert (tmp_path / f"{i}.xml").read_text() == shown, f"docs/{doc}: {command}"


def test_structure_lenient_accepts_unlisted_object_names():
    # a solver name the description does not list (e.g. Chroma's MG_PROTO solvers): strict reports
    # it, lenient accepts it but still reports a missing required element
    root = _hmc("wilson_unprec")
    inv = root.find("HMCTrj/Monomials/elem/InvertParam/invType")
    inv.text = "MG_PROTO_CLOVER_INVERTER"
    assert any("invType" in p and "MG_PROTO_CLOVER_INVERTER" in p
               for p in structure_problems(root))
    assert structure_problems(root, strict=False) == []
    root.find("MCControl").remove(root.find("MCControl/SaveInterval"))
    assert structure_problems(root, strict=False) == [
        "missing required element /Params/MCControl/SaveInterval"]
