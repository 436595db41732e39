"""The built-in engine for Chroma's hmc input: parsing, outputs with Chroma's element paths,
restart bit-identity, strict rejection of unsupported input, agreement with Chroma's ensemble."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from lxml import etree

from bridge.chroma.hmc_input import parse_hmc_input, read_hmc_input
from bridge.chroma.hmc_program import run_hmc
from bridge.cli import main
from bridge.errors import ConfigError
from bridge.io.ildg import read_ildg

PURE = "chroma/pure_gauge_b5.5_4x4/hmc.ini.xml"


def _edit(text: str, **repl: str) -> str:
    for tag, val in repl.items():
        text, n = re.subn(f"<{tag}>[^<]*</{tag}>", f"<{tag}>{val}</{tag}>", text)
        assert n == 1, tag
    return text


def _input(data_dir, tmp_path, name="in.xml", **repl) -> Path:
    text = (data_dir / PURE).read_text()
    p = tmp_path / name
    p.write_text(_edit(text, **repl))
    return p


def test_parse_reference_inputs(data_dir):
    inp = read_hmc_input(data_dir / PURE)
    assert inp.nrow == (4, 4, 4, 4) and inp.cfg.cfg_type == "UNIT"
    assert inp.seed == (12345, 0, 0, 0)
    assert (inp.n_warmup, inp.n_production, inp.n_this_run) == (20, 5020, 5020)
    assert inp.monomials["gauge"].params == {"beta": 5.5, "gauge_action": "WILSON_GAUGEACT",
                                             "gauge_bc": "PERIODIC_GAUGEBC", "aniso": False}
    assert inp.monomials["gauge"].path == "/Params/HMCTrj/Monomials/elem[0]"
    assert inp.integrator.name == "LCM_STS_LEAPFROG" and inp.integrator.n_steps == 10
    assert inp.tau0 == 1.0 and inp.reverse_check and inp.reverse_frequency == 50
    assert inp.measurements == [{"name": "POLYAKOV_LOOP", "frequency": 1}]


def test_run_writes_chroma_outputs(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inp = _input(data_dir, tmp_path, NProductionUpdates="6", NUpdatesThisRun="6",
                 SaveInterval="4", NWarmUpUpdates="2", ReverseCheckFrequency="3")
    assert main(["hmc", "-i", str(inp), "-o", "out.xml", "--quiet"]) == 0
    for f in ("pg_b5.5_4x4_cfg_4.lime", "pg_b5.5_4x4_cfg_6.lime", "pg_b5.5_4x4_restart_4.xml",
              "pg_b5.5_4x4_restart_6.xml"):
        assert (tmp_path / f).exists(), f
    out = etree.parse("out.xml")
    ups = out.findall("doHMC/MCUpdates/elem/Update")
    assert [int(u.findtext("update_no")) for u in ups] == [1, 2, 3, 4, 5, 6]
    assert [u.findtext("WarmUpP") for u in ups] == ["true"] * 2 + ["false"] * 4
    for u in ups:
        t = u.find("HMCTrajectory")
        dh = float(t.findtext("deltaH"))
        parts = float(t.findtext("deltaKE")) + float(t.findtext("deltaPE"))
        assert math.isclose(dh, parts, rel_tol=1e-9, abs_tol=1e-9)
        assert math.isclose(float(t.findtext("AccProb")), min(1.0, math.exp(-dh)), rel_tol=1e-12)
        assert t.findtext("AcceptP") in ("true", "false")
        assert float(u.findtext("seconds_for_trajectory")) > 0
        assert u.find("InlineObservables/elem/Plaquette/w_plaq") is not None
        assert len(u.findall("InlineObservables/elem/PolyakovLoop/poly_loop/elem")) == 4
    # Chroma's offsets: a unit start has PE_old = -beta V Nd(Nd-1)/2
    assert float(ups[0].findtext("HMCTrajectory/H_old/PE_old")) == -5.5 * 256 * 6
    # the reversibility check ran on update 3 and 6
    assert ups[2].find("HMCTrajectory/ReversibilityMetrics/DeltaDeltaH") is not None
    assert abs(float(ups[5].findtext("HMCTrajectory/ReversibilityMetrics/DeltaDeltaH"))) < 1e-8
    # the saved configuration is the state after update 6, with the plaquette reported
    u6, info = read_ildg(tmp_path / "pg_b5.5_4x4_cfg_6.lime")
    assert info.checksum == "ok"
    from bridge.gauge import mesplq

    assert math.isclose(float(mesplq(u6).w_plaq[0]),
                        float(ups[-1].findtext("InlineObservables/elem/Plaquette/w_plaq")),
                        rel_tol=1e-13)
    # the restart file is a valid input for the engine, pointing at the saved configuration
    r = read_hmc_input(tmp_path / "pg_b5.5_4x4_restart_6.xml")
    assert r.start_update == 6 and r.cfg.cfg_type == "SZINQIO"
    assert r.cfg.cfg_file == "pg_b5.5_4x4_cfg_6.lime" and r.cfg.reunit is False


def test_restart_is_bit_identical(data_dir, tmp_path, monkeypatch):
    """6 updates in one run == 3 updates, then a run from the restart file: same bits."""
    one = tmp_path / "one"
    two = tmp_path / "two"
    one.mkdir()
    two.mkdir()
    kw = dict(NProductionUpdates="6", NUpdatesThisRun="6", SaveInterval="3",
              NWarmUpUpdates="1", ReverseCheckP="false")
    monkeypatch.chdir(one)
    res1 = run_hmc(read_hmc_input(_input(data_dir, one, **kw)), "out.xml", progress=False)
    monkeypatch.chdir(two)
    kw["NUpdatesThisRun"] = "3"
    run_hmc(read_hmc_input(_input(data_dir, two, **kw)), "out.xml", progress=False)
    res2 = run_hmc(read_hmc_input(two / "pg_b5.5_4x4_restart_3.xml"), "out2.xml",
                   progress=False)
    assert [r["deltaH"] for r in res2.updates] == [r["deltaH"] for r in res1.updates[3:]]
    a, _ = read_ildg(one / "pg_b5.5_4x4_cfg_6.lime")
    b, _ = read_ildg(two / "pg_b5.5_4x4_cfg_6.lime")
    assert torch.equal(a, b)
    assert (one / "pg_b5.5_4x4_cfg_6.lime").read_bytes()[-200:] == \
        (two / "pg_b5.5_4x4_cfg_6.lime").read_bytes()[-200:]


def _parse(text: str):
    return parse_hmc_input(etree.ElementTree(etree.fromstring(text.encode())), "test.xml")


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("<MonitorForces>true</MonitorForces>",
         "<MonitorForces>true</MonitorForces><Frobnicate>1</Frobnicate>",
         "test.xml: unsupported element /Params/MCControl/Frobnicate"),
        ("<Name>WILSON_GAUGEACT</Name>", "<Name>LUSCHER_WEISZ_GAUGEACT</Name>",
         "GaugeAction/Name: the built-in engine supports WILSON_GAUGEACT, got "
         "'LUSCHER_WEISZ_GAUGEACT'"),
        ("<Name>LCM_STS_LEAPFROG</Name>", "<Name>LCM_4MN5FP</Name>",
         "Integrator/Name: the built-in engine supports"),
        ("<cfg_type>UNIT</cfg_type>", "<cfg_type>NERSC</cfg_type>",
         "Cfg/cfg_type: the built-in engine supports"),
        ("<Name>POLYAKOV_LOOP</Name>", "<Name>WILSON_FLOW</Name>",
         "InlineMeasurements/elem[0]/Name: the built-in hmc supports the inline measurements"),
        ("<SaveVolfmt>SINGLEFILE</SaveVolfmt>", "<SaveVolfmt>MULTIFILE</SaveVolfmt>",
         "SaveVolfmt: the built-in engine writes SINGLEFILE"),
        ("<n_steps>10</n_steps>", "<n_steps>ten</n_steps>",
         "Integrator/n_steps: expected an integer, got 'ten'"),
        ("<elem>gauge</elem>\n      </monomial_ids>\n    </Hamiltonian>",
         "<elem>gauge2</elem>\n      </monomial_ids>\n    </Hamiltonian>",
         "Hamiltonian/monomial_ids: unknown monomial id 'gauge2'"),
        ("<tau0>1.0</tau0>", "", "missing required element /Params/HMCTrj/MDIntegrator/tau0"),
        ("<elem>12345</elem>", "<elem>seed</elem>",
         "test.xml: /Params/MCControl/RNG/Seed: expected integer elems, got ['seed', '0', '0', "
         "'0']"),
        ("<elem>12345</elem>\n        <elem>0</elem>", "<elem>12345</elem>",
         "/Params/MCControl/RNG/Seed: expected 4 elems, got 3"),
    ],
)
def test_unsupported_or_malformed_input(data_dir, old, new, message):
    text = (data_dir / PURE).read_text()
    assert old in text
    with pytest.raises(ConfigError) as exc:
        _parse(text.replace(old, new, 1))
    assert message in str(exc.value)


def test_root_and_syntax_errors(tmp_path):
    p = tmp_path / "bad.xml"
    p.write_text("<chroma><Param/></chroma>")
    with pytest.raises(ConfigError, match="bad.xml: expected root element <Params>"):
        read_hmc_input(p)
    p.write_text("<Params><MCControl>")
    with pytest.raises(ConfigError, match="bad.xml: not well-formed XML"):
        read_hmc_input(p)
    assert main(["hmc", "-i", str(p), "-o", str(tmp_path / "o.xml")]) == 1


def test_zero_acceptance_warns(data_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    inp = _input(data_dir, tmp_path, NProductionUpdates="12", NUpdatesThisRun="12",
                 NWarmUpUpdates="0", n_steps="1", tau0="3.0", SaveInterval="100",
                 cfg_type="DISORDERED")
    with pytest.warns(RuntimeWarning, match="step size tau0/n_steps = 3.0/1 is too large"):
        run_hmc(read_hmc_input(inp), "out.xml", progress=False)


def _chroma_start(data_dir, per_config: int) -> torch.Tensor:
    """Chroma's equilibrated configurations (updates 500..4500), each repeated."""
    files = sorted((data_dir / "chroma/pure_gauge_b5.5_4x4").glob("*.lime"))
    u = torch.cat([read_ildg(f)[0] for f in files])
    return u.repeat_interleave(per_config, dim=0)


def _batched_pure_gauge(u0: torch.Tensor, ntraj: int, ntherm: int, seed: int):
    from bridge.mcmc.hmc import hmc_kernel
    from bridge.mcmc.integrators import Integrator, Level, scheme
    from bridge.mcmc.monomials import GaugeMonomial

    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 10, [GaugeMonomial(5.5)])]),
                   1.0)
    st = k.init(u0, seed=seed)
    plaq, acc = [], []
    for i in range(ntraj):
        st, info = k.step(st)
        if i >= ntherm:
            plaq.append(info.w_plaq)
            acc.append(info.accepted.double())
    return torch.stack(plaq), torch.stack(acc)


def test_pure_gauge_matches_chroma_smoke(data_dir):
    """Fast smoke version of the Chroma comparison: from Chroma's equilibrated configurations
    our chains stay at Chroma's plaquette and acceptance (loose bounds: short chains)."""
    plaq, acc = _batched_pure_gauge(_chroma_start(data_dir, 1), 20, 4, seed=5)
    assert abs(float(plaq.mean()) - 0.4987) < 0.01
    assert 0.55 < float(acc.mean()) < 0.85


@pytest.mark.slow
def test_pure_gauge_matches_chroma(data_dir):
    """4^4 SU(3), beta 5.5, leapfrog tau 1, 10 steps: Chroma gives w_plaq 0.49866(69) and
    acceptance 0.706(4) (tests/data/PROVENANCE.md).  30 chains started from Chroma's
    equilibrated configurations (a cold start needs ~200 trajectories to relax); errors from
    the spread of the chain means; agreement within 3 combined sigma."""
    plaq, acc = _batched_pure_gauge(_chroma_start(data_dir, 6), 240, 40, seed=7)
    pm, am = plaq.mean(0), acc.mean(0)
    p_err = float(pm.std()) / math.sqrt(pm.numel())
    a_err = float(am.std()) / math.sqrt(am.numel())
    assert abs(float(pm.mean()) - 0.49866) < 3 * math.hypot(p_err, 0.00069)
    assert abs(float(am.mean()) - 0.706) < 3 * math.hypot(a_err, 0.004)


NF2 = "chroma/nf2_b1.0_k0.1_4x4/hmc.ini.xml"


def test_parse_and_run_nf2_input(data_dir, tmp_path, monkeypatch):
    """Chroma's Nf=2 input (even-odd Wilson, CG) runs unchanged; CG counts as Chroma's."""
    inp = read_hmc_input(data_dir / NF2)
    m = inp.monomials["wilson_two_flav"]
    assert m.kind == "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"
    assert m.params["kappa"] == 0.1 and m.params["boundary"] == (1, 1, 1, -1)
    assert m.params["predictor"] == "LAST_SOLUTION_4D_PREDICTOR"
    monkeypatch.chdir(tmp_path)
    text = _edit((data_dir / NF2).read_text(), NProductionUpdates="3",
                 NUpdatesThisRun="3", SaveInterval="3")
    (tmp_path / "nf2.xml").write_text(text)
    res = run_hmc(read_hmc_input(tmp_path / "nf2.xml"), "out.xml", progress=False)
    # Chroma: 122 CG iterations per trajectory at this point (README of the reference data)
    for r in res.updates:
        assert 90 < r["cg_iterations"] < 160
        assert abs(r["deltaH"]) < 1.0
    assert (tmp_path / "nf2_b1.0_k0.1_4x4_cfg_3.lime").exists()


@pytest.mark.slow
def test_nf2_matches_chroma():
    """4^4, beta 1.0, kappa 0.1, eo-prec Wilson, leapfrog tau 0.5, 5 steps: Chroma gives
    w_plaq 0.06059(11) and acceptance 0.948(2).  16 chains from a disordered start."""
    from bridge.fermions.pseudofermion import TwoFlavorEOPrecWilsonMonomial
    from bridge.gauge import random_gauge
    from bridge.lattice import Lattice
    from bridge.mcmc.hmc import hmc_kernel
    from bridge.mcmc.integrators import Integrator, Level, scheme
    from bridge.mcmc.monomials import GaugeMonomial

    mons = [TwoFlavorEOPrecWilsonMonomial(0.1, predictor="last_solution"), GaugeMonomial(1.0)]
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 5, mons)]), 0.5)
    g = torch.Generator().manual_seed(3)
    st = k.init(random_gauge(Lattice((4, 4, 4, 4)), "SU3", 16, generator=g), seed=21)
    plaq, acc = [], []
    for i in range(170):
        st, info = k.step(st)
        if i >= 20:
            plaq.append(info.w_plaq)
            acc.append(info.accepted.double())
    pm, am = torch.stack(plaq).mean(0), torch.stack(acc).mean(0)
    p_err = float(pm.std()) / math.sqrt(pm.numel())
    a_err = float(am.std()) / math.sqrt(am.numel())
    assert abs(float(pm.mean()) - 0.06059) < 3 * math.hypot(p_err, 0.00011)
    assert abs(float(am.mean()) - 0.948) < 3 * math.hypot(a_err, 0.002)


# -- the lenient reading (drop-in loop) and the exact actions of the Hamiltonian ----------------
NF2 = "chroma/nf2_b1.0_k0.1_4x4/hmc.ini.xml"


def _nf2(data_dir, tmp_path, edit=None, nrow=None, name="nf2.xml") -> Path:
    tree = etree.parse(str(data_dir / NF2))
    root = tree.getroot()
    if nrow is not None:
        root.find("HMCTrj/nrow").text = nrow
        for el in root.iter("beta"):
            el.text = "1.0"
    if edit is not None:
        edit(root)
    path = tmp_path / name
    tree.write(str(path))
    return path


def test_lenient_reading_keeps_what_chroma_judges(data_dir, tmp_path):
    """strict=False reads the facts and leaves other elements and names to Chroma."""
    from bridge.chroma.monomials import gauge_beta

    def edit(root):
        etree.SubElement(root.find("MCControl"), "QudaParams").text = "x"
        root.find("HMCTrj/MDIntegrator/Integrator/Name").text = "LCM_4MN5FP"
        root.find(".//InvertParam/invType").text = "QUDA_WILSON_INVERTER"

    path = _nf2(data_dir, tmp_path, edit)
    with pytest.raises(ConfigError, match="unsupported element /Params/MCControl/QudaParams"):
        read_hmc_input(path)
    inp = read_hmc_input(path, strict=False)
    assert not inp.strict and inp.integrator is None and inp.tau0 == 0.5
    assert inp.nrow == (4, 4, 4, 4) and inp.cfg.cfg_type == "DISORDERED"
    ferm = inp.monomials[inp.hamiltonian[0]]
    assert ferm.params["fermact"] == "WILSON" and ferm.params["kappa"] == 0.1
    assert ferm.params["boundary"] == (1, 1, 1, -1) and ferm.params["fermbc"] == "SIMPLE_FERMBC"
    assert gauge_beta(inp) == 1.0
    with pytest.raises(ConfigError, match="the built-in hmc runs a strictly read input"):
        run_hmc(inp, tmp_path / "out.xml", progress=False)


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.find("MCControl/SaveVolfmt").__setattr__("text", "MULTIFILE"),
     r"nf2.xml: /Params/MCControl/SaveVolfmt: .* expected SINGLEFILE, got 'MULTIFILE'"),
    (lambda r: r.find("HMCTrj/nrow").__setattr__("text", "4 4 4"),
     r"/Params/HMCTrj/nrow: expected 4 positive extents"),
    (lambda r: r.find(".//FermionAction/Kappa").__setattr__("text", "0.1x"),
     r"nf2.xml: /Params/HMCTrj/Monomials/elem\[0\]/FermionAction/Kappa: expected a number, "
     r"got '0.1x'"),
    (lambda r: r.find(".//FermionAction/Kappa").__setattr__("text", "-0.1"),
     r"elem\[0\]/FermionAction/Kappa: expected a positive hopping parameter, got -0.1"),
    (lambda r: r.find(".//FermionAction/Kappa").__setattr__("tag", "Kapa"),
     r"elem\[0\]/FermionAction: expected exactly one of Kappa or Mass"),
    (lambda r: r.find(".//GaugeAction/beta").__setattr__("text", "one"),
     r"elem\[1\]/GaugeAction/beta: expected a number, got 'one'"),
])
@pytest.mark.parametrize("strict", [True, False])
def test_malformed_values_fail_in_both_modes(data_dir, tmp_path, edit, message, strict):
    with pytest.raises(ConfigError, match=message):
        read_hmc_input(_nf2(data_dir, tmp_path, edit), strict=strict)


def test_mass_instead_of_kappa(data_dir, tmp_path):
    def mass(value):
        def edit(root):
            k = root.find(".//FermionAction/Kappa")
            k.tag, k.text = "Mass", value
        return edit

    inp = read_hmc_input(_nf2(data_dir, tmp_path, mass("1.0")), strict=False)
    assert inp.monomials[inp.hamiltonian[0]].params["kappa"] == pytest.approx(0.1)
    with pytest.raises(ConfigError, match=r"elem\[0\]/FermionAction/Mass: expected Mass > -4 "
                                          r"\(kappa = 1/\(2 \(Mass \+ 4\)\)\), got -4.0"):
        read_hmc_input(_nf2(data_dir, tmp_path, mass("-4.0")), strict=False)


def test_hamiltonian_action_is_gauge_plus_exact_determinant(data_dir, tmp_path):
    from bridge.chroma.monomials import hamiltonian_action
    from bridge.fermions import exact_logdet
    from bridge.gauge import random_gauge, wilson_action
    from bridge.lattice import Lattice
    from bridge.rng import generator

    inp = read_hmc_input(data_dir / NF2, strict=False)
    with pytest.raises(ConfigError, match=r"flow steps with fermions use the exact determinant "
                                          r".* fermion_max_sites = 100 lattice sites; the "
                                          r"lattice 4 4 4 4 has 256"):
        hamiltonian_action(inp, max_sites=100)
    small = read_hmc_input(_nf2(data_dir, tmp_path, nrow="2 2 2 2"))  # strict works too
    action, desc = hamiltonian_action(small)
    assert "Nf=2 WILSON kappa = 0.1" in desc and "exact determinant" in desc
    u = random_gauge(Lattice((2, 2, 2, 2)), "SU3", 2, generator=generator(1))
    want = wilson_action(u, 1.0) - exact_logdet(u, 0.1, boundary=(1, 1, 1, -1))
    torch.testing.assert_close(action(u), want)


def _clover(mono, name="TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL", act="CLOVER",
            coeffs=(("clovCoeff", "1.1"),)):
    mono.find("Name").text = name
    fa = mono.find("FermionAction")
    fa.find("FermAct").text = act
    for tag, text in coeffs:
        fa.find("Kappa").addnext(etree.Element(tag))
        fa.find(tag).text = text


def _fermion(edit):
    return lambda root: edit(root.find("HMCTrj/Monomials/elem"))


@pytest.mark.parametrize("edit, message", [
    (_fermion(lambda m: _clover(m, "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL")),
     r"elem\[0\]: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct CLOVER: Chroma's "
     r"monomial leaves out det\(A_ee\)"),
    (_fermion(lambda m: _clover(m, coeffs=(("clovCoeffR", "1.1"), ("clovCoeffT", "0.9")))),
     r"elem\[0\]/FermionAction: flow steps support isotropic clover .* got clover "
     r"coefficients \[1.1, 0.9\]"),
    (_fermion(lambda m: _clover(m, coeffs=())), r"got clover coefficients \[\]"),
    (_fermion(lambda m: etree.SubElement(etree.SubElement(m.find("FermionAction"), "FermState"),
                                         "Name").__setattr__("text", "STOUT_FERM_STATE")),
     r"elem\[0\]/FermionAction/FermState: flow steps support unsmeared fermions \(no "
     r"FermState\), got 'STOUT_FERM_STATE'"),
    (_fermion(lambda m: m.find("FermionAction").remove(m.find("FermionAction/FermionBC"))),
     r"FermionBC/FermBC: flow steps support SIMPLE_FERMBC, got 'no FermionBC'"),
    (lambda r: r.find(".//GaugeAction/Name").__setattr__("text", "RECT_GAUGEACT"),
     r"nf2.xml: /Params/HMCTrj/Monomials/elem\[1\]: flow steps support the isotropic "
     r"WILSON_GAUGEACT, got 'RECT_GAUGEACT'; run plain HMC"),
])
def test_exact_actions_refuse_what_would_differ_from_chroma(data_dir, tmp_path, edit, message):
    from bridge.chroma.monomials import hamiltonian_action

    inp = read_hmc_input(_nf2(data_dir, tmp_path, edit, nrow="2 2 2 2"), strict=False)
    with pytest.raises(ConfigError, match=message):
        hamiltonian_action(inp)


def test_exact_unpreconditioned_clover(data_dir, tmp_path):
    from bridge.chroma.monomials import hamiltonian_action
    from bridge.fermions import exact_logdet
    from bridge.gauge import random_gauge, wilson_action
    from bridge.lattice import Lattice
    from bridge.rng import generator

    edit = _fermion(lambda m: _clover(m, "TWO_FLAVOR_UNPREC_FERM_MONOMIAL",
                                      "UNPRECONDITIONED_CLOVER",
                                      (("clovCoeffR", "1.1"), ("clovCoeffT", "1.1"))))
    inp = read_hmc_input(_nf2(data_dir, tmp_path, edit, nrow="2 2 2 2"), strict=False)
    action, desc = hamiltonian_action(inp)
    assert "Nf=2 UNPRECONDITIONED_CLOVER kappa = 0.1, c_sw = 1.1" in desc
    u = random_gauge(Lattice((2, 2, 2, 2)), "SU3", 2, generator=generator(1))
    want = wilson_action(u, 1.0) - exact_logdet(u, 0.1, c_sw=1.1, boundary=(1, 1, 1, -1))
    torch.testing.assert_close(action(u), want)
