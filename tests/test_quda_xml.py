"""Chroma+QUDA inputs: the InvertParam blocks of Chroma's QUDA solvers rendered by
``qcd-bridge chroma-xml``, their structural check, their reading back (round trips), the
consistency rules between a QUDA block and its fermion action, the parameter errors, and the
built-in engine solving a QUDA block with its own CG after a one-line notice."""

from __future__ import annotations

import copy
import json

import pytest
from lxml import etree

from bridge.chroma.hmc_input import parse_hmc_input
from bridge.chroma.measure_input import parse_chroma_input
from bridge.chroma.params import hmc_params_from_dict, measure_params_from_dict
from bridge.chroma.quda import QudaOptions, read_quda_invert
from bridge.chroma.schema import structure_problems, write_checked
from bridge.chroma.templates import render_hmc, render_measure
from bridge.chroma.xml_in import XmlNode
from bridge.cli import main
from bridge.errors import ConfigError

HMC = {"nrow": [4, 4, 4, 8], "beta": 5.5, "kappa": 0.12, "rsd_cg": 1e-9, "max_cg": 777}
MEASURE = {"nrow": [4, 4, 4, 8], "cfg": "c.lime", "pion": True, "kappa": 0.125,
           "rsd_cg": 1e-11, "max_cg": 555}
CASES = {  # inverter -> extra parameters (clover inverters with the clover action)
    "quda-wilson": {},
    "quda-clover": {"fermion": "clover", "csw": 1.17, "quda_sloppy_precision": "HALF",
                    "quda_solver": "BICGSTAB", "quda_delta": 0.01},
    "quda-multigrid-wilson": {"mg_blocking": [2, 2, 2, 2], "mg_null_vectors": 8},
    "quda-multigrid-clover": {"fermion": "clover", "csw": 1.0,
                              "mg_blocking": [[2, 2, 2, 2], [2, 2, 1, 2]],
                              "mg_post_smooth": [4, 3], "mg_cycle": "MG_RECURSIVE",
                              "mg_subspace_id": "mg_a"},
}
HMC_CASES = [k for k in CASES if k != "quda-multigrid-wilson"]
NAMES = {"quda-wilson": "QUDA_WILSON_INVERTER", "quda-clover": "QUDA_CLOVER_INVERTER",
         "quda-multigrid-wilson": "QUDA_MULTIGRID_WILSON_INVERTER",
         "quda-multigrid-clover": "QUDA_MULTIGRID_CLOVER_INVERTER"}
MONOMIAL = "HMCTrj/Monomials/elem"
PROP = "Param/InlineMeasurements/elem[3]/Param"  # after PLAQUETTE and MAKE_SOURCE


def _hmc(inverter: str, **extra):
    d = {**HMC, "inverter": inverter, **CASES[inverter], **extra}
    p = hmc_params_from_dict(d)
    return p, render_hmc(p)


def _measure(inverter: str, **extra):
    d = {**MEASURE, "inverter": inverter, **CASES[inverter], **extra}
    p = measure_params_from_dict(d)
    return p, render_measure(p)


def _read_back(inv: etree._Element, nrow) -> dict:
    return read_quda_invert(XmlNode(inv, "/InvertParam", "test"), nrow)


@pytest.mark.parametrize("inverter", HMC_CASES)
def test_hmc_quda_block_renders_checks_and_round_trips(inverter, tmp_path):
    p, root = _hmc(inverter)
    assert structure_problems(root) == []
    write_checked(tmp_path / "hmc.xml", root)
    tree = etree.parse(str(tmp_path / "hmc.xml"))
    inv = tree.getroot().find(f"{MONOMIAL}/InvertParam")
    assert inv.findtext("invType") == NAMES[inverter]
    back = _read_back(inv, p.nrow)
    f = p.fermion
    assert back["options"] == f.quda  # every setting survives render -> file -> reader
    assert (back["rsd"], back["max_iter"], back["kappa"]) == (1e-9, 777, 0.12)
    assert back["csw"] == f.csw and back["anti_periodic_t"] is True


@pytest.mark.parametrize("inverter", list(CASES))
def test_measure_quda_block_renders_checks_and_round_trips(inverter, tmp_path):
    p, root = _measure(inverter)
    write_checked(tmp_path / "m.xml", root)
    tree = etree.parse(str(tmp_path / "m.xml"))
    inv = tree.getroot().find(f"{PROP}/InvertParam")
    back = _read_back(inv, p.nrow)
    assert back["options"] == p.pion.quda
    assert back["inv_type"] == NAMES[inverter]
    assert (back["rsd"], back["max_iter"], back["kappa"], back["csw"]) == \
        (1e-11, 555, 0.125, p.pion.csw)


def test_rendered_defaults_are_chromas():
    """Without options the block holds the defaults of Chroma's readers (and its test inputs
    for the required SolverType/Delta); multigrid: Chroma's MULTIGRIDSolverParams defaults."""
    _, root = _measure("quda-multigrid-clover", mg_blocking=None, mg_post_smooth=None,
                       mg_cycle=None, mg_subspace_id=None)
    inv = root.find(f"{PROP}/InvertParam")
    got = {c.tag: c.text for c in inv if len(c) == 0}
    assert got == {"invType": "QUDA_MULTIGRID_CLOVER_INVERTER", "AntiPeriodicT": "true",
                   "RsdTarget": "1e-11", "Delta": "0.1", "MaxIter": "555", "SolverType": "GCR",
                   "Verbose": "false", "AsymmetricLinop": "false", "CudaPrecision": "DEFAULT",
                   "CudaSloppyPrecision": "DEFAULT", "CudaReconstruct": "RECONS_12",
                   "CudaSloppyReconstruct": "RECONS_12", "AxialGaugeFix": "false",
                   "SilentFail": "false", "RsdToleranceFactor": "10.0",
                   "AutotuneDslash": "false", "SubspaceID": "qcd_bridge_mg_subspace"}
    mg = inv.find("MULTIGRIDParams")
    assert [e.text for e in mg.findall("Blocking/elem")] == ["4 4 4 4"]
    assert (mg.findtext("NullVectors"), mg.findtext("Pre-SmootherApplications"),
            mg.findtext("Post-SmootherApplications"), mg.findtext("CycleType")) == \
        ("16", "2", "2", "MG_VCYCLE")
    assert [c.tag for c in inv.find("CloverParams")] == ["Kappa", "clovCoeff"]
    _, root = _hmc("quda-wilson", boundary=[1, 1, 1, 1])
    inv = root.find(f"{MONOMIAL}/InvertParam")
    assert [c.tag for c in inv.find("WilsonParams")] == ["Kappa"]
    assert inv.findtext("AntiPeriodicT") == "false" and inv.findtext("SolverType") == "CG"
    assert inv.find("MULTIGRIDParams") is None and inv.find("SubspaceID") is None


@pytest.mark.parametrize("change, message", [
    ({"inverter": "quda-multigrid-wilson"}, "inverter: expected an inverter Chroma registers "
     "for the hmc monomials' MdagM solves"),
    ({"inverter": "quda-clover"}, "inverter: expected a QUDA wilson inverter for the wilson "
     "action (quda-wilson or quda-multigrid-wilson), got 'quda-clover'"),
    ({"inverter": "quda-wilson", "fermion": "clover", "csw": 1.0},
     "expected a QUDA clover inverter for the clover action"),
    ({"inverter": "quda-wilson", "precond": "none"}, "inverter: expected an even-odd "
     "preconditioned action (precond eo)"),
    ({"inverter": "quda-wilson", "boundary": [1, 1, -1, -1]}, "boundary: expected periodic "
     "spatial boundaries"),
    ({"inverter": "bicg"}, "inverter: expected cg or quda-wilson or quda-clover"),
    ({"quda_solver": "CG"}, "quda_solver: expected no quda_solver setting with inverter cg"),
    ({"inverter": "quda-wilson", "mg_blocking": [2, 2, 2, 2]},
     "mg_blocking: expected no mg_blocking setting with inverter quda-wilson"),
    ({"inverter": "quda-multigrid-wilson", "mg_subspace_id": "s"}, "mg_subspace_id: expected "
     "no mg_subspace_id setting with inverter quda-multigrid-wilson"),
    ({"inverter": "quda-wilson", "quda_solver": "CGNE"},
     "quda_solver: expected one of Chroma's names CG, BICGSTAB, GCR, CA_GCR, MR, got 'CGNE'"),
    ({"inverter": "quda-wilson", "quda_delta": 0.0}, "quda_delta: expected a reliable-update "
     "delta in (0, 1], got 0.0"),
    ({"inverter": "quda-multigrid-clover", "fermion": "clover", "csw": 1.0,
      "mg_blocking": [4, 4, 4, 4, 2, 2, 2, 2]},
     "mg_blocking: expected blocks that divide the lattice: level 2 block 2 2 2 2 does not "
     "divide 1 1 1 2"),
    ({"inverter": "quda-multigrid-clover", "fermion": "clover", "csw": 1.0,
      "mg_blocking": [4, 4, 4]}, "mg_blocking: expected 4 integers (x y z t) per level"),
    ({"inverter": "quda-multigrid-clover", "fermion": "clover", "csw": 1.0,
      "mg_null_vectors": [8, 8]}, "mg_null_vectors: expected one integer >= 1, or one per "
     "coarse level (1), got (8, 8)"),
    ({"inverter": "quda-multigrid-clover", "fermion": "clover", "csw": 1.0,
      "mg_subspace_id": "a b"}, "mg_subspace_id: expected a name without spaces or <>&"),
])
def test_hmc_inverter_errors_name_key_value_and_expectation(change, message):
    with pytest.raises(ConfigError) as exc:
        hmc_params_from_dict({**HMC, **change}, "my.json")
    assert str(exc.value).startswith("my.json: ")
    assert message in str(exc.value)


def test_measure_inverter_needs_a_pion_and_takes_multigrid_wilson():
    with pytest.raises(ConfigError, match="measure config: inverter: expected no inverter "
                       "settings without --pion, got 'quda-wilson'"):
        measure_params_from_dict({"nrow": [4, 4, 4, 4], "cfg": "c", "inverter": "quda-wilson"})
    with pytest.raises(ConfigError, match="hmc config: inverter: expected no fermion "
                       "parameters without kappa"):
        hmc_params_from_dict({"nrow": [4, 4, 4, 4], "beta": 5.5, "inverter": "quda-wilson"})
    p, _ = _measure("quda-multigrid-wilson")  # a propagator solver: allowed in chroma
    assert p.pion.inverter == "quda-multigrid-wilson"


def _edit(root, path, text=None, remove=False):
    root = copy.deepcopy(root)
    el = root.find(path)
    if remove:
        el.getparent().remove(el)
    else:
        el.text = text
    return root


@pytest.mark.parametrize("path, text, remove, message", [
    ("InvertParam/CloverParams/Kappa", "0.13", False, "/InvertParam: kappa 0.13 of QUDA's "
     "action differs from kappa 0.12 of /Params/HMCTrj/Monomials/elem[0]/FermionAction"),
    ("InvertParam/CloverParams/clovCoeff", "1.2", False, "clovCoeff 1.2 of QUDA's action "
     "differs from clovCoeff 1.17"),
    ("InvertParam/AntiPeriodicT", "false", False, "/InvertParam/AntiPeriodicT: false "
     "disagrees with the time boundary -1"),
    ("FermionAction/FermionBC/boundary", "1 -1 1 -1", False, "QUDA's solvers take periodic "
     "spatial boundaries, got 1 -1 1 -1"),
    ("FermionAction/FermAct", "WILSON", False, "QUDA_CLOVER_INVERTER solves the even-odd "
     "preconditioned clover system; /Params/HMCTrj/Monomials/elem[0]/FermionAction/FermAct "
     "must be CLOVER, got 'WILSON'"),
    ("InvertParam/Delta", None, True, "missing required element "
     "/Params/HMCTrj/Monomials/elem[0]/InvertParam/Delta"),
    ("InvertParam/SolverType", "CGNR", False, "'CGNR' is not one of Chroma's names"),
    ("InvertParam/CudaSloppyPrecision", "FLOAT", False, "'FLOAT' is not one of Chroma's"),
])
def test_structure_reports_inconsistent_quda_blocks(path, text, remove, message):
    _, root = _hmc("quda-clover")
    mono = root.find(MONOMIAL)
    bad = _edit(mono, path, text, remove)
    root.find("HMCTrj/Monomials").replace(mono, bad)
    problems = structure_problems(root)
    assert any(message in prob for prob in problems), problems


def test_structure_checks_multigrid_levels_and_propagator_consistency():
    _, root = _measure("quda-multigrid-clover")
    inv = root.find(f"{PROP}/InvertParam")
    inv.find("MULTIGRIDParams/NullVectors").text = "16"
    inv.find("SubspaceID").getparent().remove(inv.find("SubspaceID"))
    etree.SubElement(inv, "RsdCG").text = "1e-10"  # a CG element, not read by QUDA's solver
    prop_path = "/chroma/Param/InlineMeasurements/elem[2]/Param"
    assert sorted(structure_problems(root)) == sorted([
        f"missing required element {prop_path}/InvertParam/SubspaceID",
        f"{prop_path}/InvertParam/RsdCG: element not read by Chroma here (expected one of "
        "invType, MaxIter, RsdTarget, AntiPeriodicT, Delta, SolverType, Verbose, "
        "AsymmetricLinop, CudaPrecision, CudaSloppyPrecision, CudaReconstruct, "
        "CudaSloppyReconstruct, AxialGaugeFix, SilentFail, RsdToleranceFactor, AutotuneDslash, "
        "Pipeline, CloverParams, BackupSolverParam, DumpOnFail, MULTIGRIDParams, SubspaceID, "
        "ThresholdCount, SolutionCheckP)",
        f"{prop_path}/InvertParam/MULTIGRIDParams/NullVectors: expected 2 values (one per "
        "Blocking level), got 1"])
    _, root = _measure("quda-wilson")
    root.find(f"{PROP}/InvertParam/WilsonParams/Kappa").text = "0.2"
    assert structure_problems(root) == [
        f"{prop_path}/InvertParam: kappa 0.2 of QUDA's action differs from kappa 0.125 of "
        f"{prop_path}/FermionAction (QUDA builds its operator from InvertParam)"]


@pytest.mark.parametrize("inverter", HMC_CASES)
def test_builtin_hmc_solves_quda_blocks_with_its_cg_after_a_notice(inverter, capsys):
    p, root = _hmc(inverter)
    inp = parse_hmc_input(etree.ElementTree(root), "q.xml")
    params = inp.monomials[p.fermion.monomial_id].params
    assert (params["rsd_cg"], params["max_cg"], params["kappa"]) == (1e-9, 777, 0.12)
    err = capsys.readouterr().err
    assert err.count("\n") == 1  # one line
    assert err == (f"notice: q.xml: /Params/HMCTrj/Monomials/elem[0]/InvertParam/invType "
                   f"{NAMES[inverter]}: the built-in engine solves with its own CG (RsdCG = "
                   f"RsdTarget = 1e-09, MaxCG = MaxIter = 777); the QUDA settings apply when "
                   f"Chroma+QUDA runs this input\n")
    # the same run as with Chroma's CG_INVERTER
    cg = parse_hmc_input(etree.ElementTree(render_hmc(hmc_params_from_dict(
        {**HMC, **{k: v for k, v in CASES[inverter].items() if k in ("fermion", "csw")}}))))
    assert cg.monomials[p.fermion.monomial_id].params == params
    lenient = parse_hmc_input(etree.ElementTree(root), "q.xml", strict=False)
    assert lenient.monomials[p.fermion.monomial_id].params["kappa"] == 0.12
    assert capsys.readouterr().err == ""  # handed to Chroma: no notice


def test_builtin_chroma_maps_the_quda_propagator_to_its_cg(capsys):
    _, root = _measure("quda-multigrid-wilson")
    inp = parse_chroma_input(etree.ElementTree(root), "m.xml")
    cg_root = render_measure(measure_params_from_dict(MEASURE))
    cg = parse_chroma_input(etree.ElementTree(cg_root), "m.xml")
    assert [m.params for m in inp.measurements] == [m.params for m in cg.measurements]
    assert "QUDA_MULTIGRID_WILSON_INVERTER: the built-in engine solves with its own CG" in \
        capsys.readouterr().err


def test_builtin_refuses_a_quda_block_that_disagrees_with_its_action():
    _, root = _hmc("quda-wilson")
    root.find(f"{MONOMIAL}/InvertParam/WilsonParams/Kappa").text = "0.11"
    with pytest.raises(ConfigError, match="q.xml: the QUDA inverter disagrees with the fermion "
                       "action it solves:\n  /Params/HMCTrj/Monomials/elem\\[0\\]/InvertParam: "
                       "kappa 0.11 of QUDA's action differs from kappa 0.12"):
        parse_hmc_input(etree.ElementTree(root), "q.xml")
    _, root = _hmc("quda-wilson")
    etree.SubElement(root.find(f"{MONOMIAL}/InvertParam"), "CudaPrecisio").text = "HALF"
    with pytest.raises(ConfigError, match="unsupported element "
                       "/Params/HMCTrj/Monomials/elem\\[0\\]/InvertParam/CudaPrecisio"):
        parse_hmc_input(etree.ElementTree(root), "q.xml")


def test_reader_takes_mass_and_chromas_optional_elements():
    """Chroma's own style of block (``Mass`` instead of ``Kappa``, ``GCRInnerParams``-free
    optional ``Pipeline``), read with kappa = 1/(2 (Mass + 4))."""
    inv = etree.fromstring(
        "<InvertParam><invType>QUDA_CLOVER_INVERTER</invType><CloverParams><Mass>0.239</Mass>"
        "<clovCoeff>1.2</clovCoeff><AnisoParam><anisoP>false</anisoP></AnisoParam>"
        "</CloverParams><RsdTarget>1e-7</RsdTarget><Delta>0.1</Delta><MaxIter>100</MaxIter>"
        "<AntiPeriodicT>true</AntiPeriodicT><SolverType>CG</SolverType><Pipeline>4</Pipeline>"
        "</InvertParam>")
    back = _read_back(inv, (4, 4, 4, 4))
    assert back["kappa"] == pytest.approx(1 / (2 * 4.239), rel=1e-15)
    assert back["options"] == QudaOptions(solver_type="CG")
    inv.find("CloverParams").append(etree.fromstring("<Kappa>0.1</Kappa>"))
    with pytest.raises(ConfigError, match="/InvertParam/CloverParams: expected exactly one of "
                       "Kappa or Mass"):
        _read_back(inv, (4, 4, 4, 4))


def test_cli_renders_quda_inputs_from_options_and_json(tmp_path, capsys):
    out = tmp_path / "h.xml"
    assert main(["chroma-xml", "hmc", "--nrow", "4", "4", "4", "8", "--beta", "5.5", "--kappa",
                 "0.12", "--fermion", "clover", "--csw", "1.1", "--inverter",
                 "quda-multigrid-clover", "--mg-blocking", "2", "2", "2", "2", "--mg-null-vectors",
                 "12", "--quda-sloppy-precision", "SINGLE", "-o", str(out)]) == 0
    inv = etree.parse(str(out)).getroot().find(f"{MONOMIAL}/InvertParam")
    assert inv.findtext("CudaSloppyPrecision") == "SINGLE"
    assert inv.findtext("MULTIGRIDParams/NullVectors") == "12"
    assert main(["chroma-xml", "check", str(out)]) == 0
    cfg = tmp_path / "m.json"
    cfg.write_text(json.dumps({**MEASURE, "inverter": "quda-wilson", "quda_solver": "BICGSTAB"}))
    out2 = tmp_path / "m.xml"
    assert main(["chroma-xml", "measure", "--config", str(cfg), "--quda-delta", "0.05", "-o",
                 str(out2)]) == 0
    inv = etree.parse(str(out2)).getroot().find(f"{PROP}/InvertParam")
    assert (inv.findtext("SolverType"), inv.findtext("Delta")) == ("BICGSTAB", "0.05")
    capsys.readouterr()
    assert main(["chroma-xml", "hmc", "--nrow", "4", "4", "4", "8", "--beta", "5.5", "--kappa",
                 "0.12", "--inverter", "quda-multigrid-wilson", "-o",
                 str(tmp_path / "x.xml")]) == 1
    assert "inverter: expected an inverter Chroma registers" in capsys.readouterr().err
    assert not (tmp_path / "x.xml").exists()


def test_builtin_runs_quda_inputs_end_to_end_as_with_cg(tmp_path, monkeypatch, capsys):
    """The same numbers as the CG input: the built-in ``chroma`` pion and one built-in ``hmc``
    trajectory, each from a QUDA input and from the CG input."""
    from bridge.chroma.output import read_output

    monkeypatch.chdir(tmp_path)
    base = {"nrow": [2, 2, 2, 4], "cfg": "unit", "plaquette": False, "pion": True,
            "kappa": 0.11, "fermion": "clover", "csw": 1.2}
    pions = {}
    for name, extra in (("cg", {}), ("quda", {"inverter": "quda-multigrid-clover",
                                              "mg_blocking": [2, 2, 2, 2]})):
        write_checked(f"{name}.ini.xml", render_measure(measure_params_from_dict(
            {**base, **extra})))
        assert main(["chroma", "-i", f"{name}.ini.xml", "-o", f"{name}.out.xml",
                     "--quiet"]) == 0
        pions[name] = read_output(f"{name}.out.xml")["measurements"][3]["values"]["pion"]
    assert pions["quda"] == pions["cg"] and len(pions["cg"]) == 4
    assert "QUDA_MULTIGRID_CLOVER_INVERTER: the built-in engine solves with its own CG" in \
        capsys.readouterr().err
    hmc = {"nrow": [2, 2, 2, 2], "beta": 5.5, "kappa": 0.1, "tau": 0.25, "md_steps": 2,
           "n_updates": 1, "save_interval": 1}
    dh = {}
    for name, extra in (("cg", {}), ("quda", {"inverter": "quda-wilson"})):
        write_checked(f"h{name}.ini.xml", render_hmc(hmc_params_from_dict(
            {**hmc, **extra, "prefix": name})))
        assert main(["hmc", "-i", f"h{name}.ini.xml", "-o", f"h{name}.out.xml",
                     "--quiet"]) == 0
        dh[name] = [u["deltaH"] for u in read_output(f"h{name}.out.xml")["updates"]]
    assert dh["quda"] == dh["cg"] and len(dh["cg"]) == 1
