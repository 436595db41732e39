"""``qcd-bridge chroma``: the fallback for Chroma's ``chroma`` program.

The exact reference input ``chroma_measure.ini.xml`` (its ``cfg_file`` pointed at the reference
configuration) is run once and our output XML is compared with Chroma's own output
``chroma_measure_cfg_1500.out.xml`` path by path and value by value; the strict parser's errors
(unsupported elements, unknown named objects) are checked with their messages; QTOP_NAIVE is
checked against Chroma and against the exactly known value on a constant abelian field.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from lxml import etree

from bridge.chroma.chroma_program import run_chroma_measurements
from bridge.chroma.measure_input import (
    SUPPORTED_MEASUREMENTS,
    parse_chroma_input,
    read_chroma_input,
)
from bridge.cli import main
from bridge.errors import ConfigError
from bridge.gauge import mesplq, random_gauge, random_gauge_transformation, unit_gauge
from bridge.groups import expm_algebra, random_algebra
from bridge.io.ildg import read_ildg, scidac_checksum, write_ildg
from bridge.io.lime import LimeReader
from bridge.lattice import Lattice
from bridge.observables import (
    baryon_correlators,
    chroma_wilson_flow,
    clover_charge,
    meson_correlators,
    pion_correlator,
    point_propagator,
)
from bridge.observables.qtop_naive import qtop_naive, qtop_naive_weights
from bridge.testing import assert_gauge_invariant

C128 = torch.complex128
CHROMA = "chroma/nf2_b1.0_k0.1_4x4"
# leaves of Chroma's output we do not reproduce by design: Chroma's/QDP++'s version strings and
# the run date, the edited cfg_file, Chroma's random object ids, CG iteration counts/residuals
_NOT_COMPARED = ("/code_version[0]/chroma[0]", "/code_version[0]/qdp[0]", "/run_date[0]",
                 "/Cfg[0]/cfg_file[0]", "_file_info[0]/", "/n_count[0]", "/resid[0]",
                 "/ncg_had[0]")


# ------------------------------------------------------------------------------------------------
# the reference run (once per module)
# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chroma_run(data_dir, tmp_path_factory):
    """Run the exact reference input (cfg_file -> the reference lime) in a fresh directory."""
    folder = data_dir / CHROMA
    work = tmp_path_factory.mktemp("chroma_run")
    text = (folder / "chroma_measure.ini.xml").read_text()
    cfg = folder / "nf2_b1.0_k0.1_4x4_cfg_1500.lime"
    text = text.replace("<cfg_file>nf2_b1.0_k0.1_4x4_cfg_1500.lime</cfg_file>",
                        f"<cfg_file>{cfg}</cfg_file>")
    (work / "in.xml").write_text(text)
    cwd = os.getcwd()
    os.chdir(work)
    try:
        res = run_chroma_measurements(work / "in.xml", work / "out.xml")
    finally:
        os.chdir(cwd)
    ref = etree.parse(str(folder / "chroma_measure_cfg_1500.out.xml")).getroot()
    ours = etree.parse(str(work / "out.xml")).getroot()
    entries = json.loads((folder / "measured_by_chroma.json").read_text())
    entry = next(e for e in entries if e["file"].endswith("_1500.lime"))
    return {"dir": work, "result": res, "ref": ref, "ours": ours, "entry": entry}


def _children(e: etree._Element) -> list[tuple[str, etree._Element]]:
    count: dict[str, int] = {}
    out = []
    for k in e:
        if not isinstance(k.tag, str):
            continue
        i = count.get(k.tag, 0)
        count[k.tag] = i + 1
        out.append((f"{k.tag}[{i}]", k))
    return out


def _numbers(text: str) -> list[float] | None:
    try:
        return [float(x) for x in text.split()]
    except ValueError:
        return None


def _compare(ref: etree._Element, ours: etree._Element, path: str, report: dict) -> None:
    """Every element of ``ref`` must exist in ``ours`` at the same path (tag + sibling index);
    leaves: numbers to 1e-10 relative (1e-15 absolute near zero), text exactly; attributes
    (``OLattice`` site/coord) exactly."""
    kids = _children(ref)
    if dict(ref.attrib) != dict(ours.attrib):
        report["bad"].append((path, dict(ref.attrib), dict(ours.attrib)))
    if not kids:
        if any(s in path + "/" for s in _NOT_COMPARED):
            return
        rt, ot = (ref.text or "").strip(), (ours.text or "").strip()
        a, b = _numbers(rt), _numbers(ot)
        report["leaves"] += 1
        if a is not None and b is not None and a and len(a) == len(b):
            for x, y in zip(a, b, strict=True):
                d = abs(x - y)
                rel = d / abs(x) if x else d
                report["worst"] = max(report["worst"], rel if abs(x) > 1e-12 else 0.0)
                if d > 1e-15 and rel > 1e-10:
                    report["bad"].append((path, x, y))
        elif rt != ot:
            report["bad"].append((path, rt[:80], ot[:80]))
        return
    mine = dict(_children(ours))
    for name, k in kids:
        if name not in mine:
            report["missing"].append(f"{path}/{name}")
            continue
        _compare(k, mine[name], f"{path}/{name}", report)


def test_reference_input_reproduces_chroma_output_path_by_path(chroma_run):
    """All 2365 compared leaves of Chroma's output (plaquettes, Polyakov loops, QActDen site by
    site, sources, propagator correlators, record XML echoes, 16 meson and 17 baryon
    correlators, the 401-step WilsonFlow arrays, both QTop values, ...) exist at the same path in
    ours and agree; only Chroma's/QDP++'s version strings are absent by design."""
    report = {"missing": [], "bad": [], "leaves": 0, "worst": 0.0}
    _compare(chroma_run["ref"], chroma_run["ours"], "/chroma", report)
    missing = [p for p in report["missing"]
               if not re.search(r"/code_version\[0\]/(chroma|qdp)\[0\]$", p)]
    assert missing == []
    assert len(report["missing"]) == 10  # code_version/{chroma,qdp} in 5 ProgramInfo blocks
    assert report["bad"] == []
    assert report["leaves"] > 2300
    assert report["worst"] < 1e-10


def test_values_of_measured_by_chroma_json(chroma_run):
    """The numbers of measured_by_chroma.json for cfg 1500, read from our output XML."""
    ours, entry = chroma_run["ours"], chroma_run["entry"]
    obs = ours.find("InlineObservables")
    plaqs = [float(e.findtext("Plaquette/w_plaq")) for e in obs if e.find("Plaquette") is not None]
    assert plaqs[0] == pytest.approx(entry["w_plaq"], rel=1e-13)
    assert plaqs[1] == pytest.approx(entry["w_plaq_flow_t4"], rel=1e-13)
    t_loop = obs.find("elem/PolyakovLoop/poly_loop")[3]
    assert float(t_loop.findtext("re")) == pytest.approx(entry["poly_t"][0], abs=1e-15)
    assert float(t_loop.findtext("im")) == pytest.approx(entry["poly_t"][1], abs=1e-15)
    pion = [e for e in obs.iterfind(".//Point_Point_Wilson_Mesons/elem")
            if e.findtext("gamma_value") == "15"][0]
    c = [float(x.findtext("re")) for x in pion.iterfind("momenta/elem/mesprop/elem")]
    assert np.allclose(c, entry["C_pi"], rtol=1e-10, atol=0)
    res = obs.find(".//wilson_flow_results")
    steps = np.array(res.findtext("wflow_step").split(), dtype=float)
    e = (np.array(res.findtext("wflow_gact4i").split(), dtype=float)
         + np.array(res.findtext("wflow_gactij").split(), dtype=float))
    for t, ref in entry["t2E"].items():
        k = int(round(float(t) * 100))
        assert steps[k] == pytest.approx(float(t), abs=1e-12)
        assert steps[k] ** 2 * e[k] == pytest.approx(ref, rel=1e-11)
    qact = [q for q in obs.iter("QActDen")][1]
    q_sum = sum(float(x.text) for x in qact.find("naiveTopCharge/OLattice"))
    assert q_sum == pytest.approx(entry["Q_clover_t4"], abs=1e-13)
    qtops = [(float(q.findtext("k5")), float(q.findtext("qtop"))) for q in obs.iter("QTop")]
    assert qtops[0][0] == 0.0
    assert qtops[0][1] == pytest.approx(entry["qtop_naive_k5_0_t4"], rel=1e-10)
    assert qtops[1][0] == 0.05
    assert qtops[1][1] == pytest.approx(0.0384713987628596, rel=1e-10)  # Chroma's output XML


def test_every_gamma_value_and_every_baryon_verified(chroma_run):
    """Mesons: all 16 gamma_value; baryons: all 17 baryon_num, re and im, against Chroma."""
    def series(root, group, key):
        out = {}
        for e in root.iterfind(f".//{group}/elem"):
            vals = [complex(float(x.findtext("re")), float(x.findtext("im")))
                    for x in e.iterfind("momenta/elem/*/elem")]
            out[int(e.findtext(key))] = np.array(vals)
        return out

    for group, key, n in (("Point_Point_Wilson_Mesons", "gamma_value", 16),
                          ("Point_Point_Wilson_Baryons", "baryon_num", 17)):
        ref = series(chroma_run["ref"], group, key)
        ours = series(chroma_run["ours"], group, key)
        assert sorted(ref) == sorted(ours) == list(range(n))
        for k in ref:
            assert np.allclose(ours[k], ref[k], rtol=1e-12, atol=1e-15), (group, k)


def test_written_files(chroma_run):
    """QIO_WRITE_NAMED_OBJECT: the flowed field as an ILDG/SciDAC file (readable, checksum ok,
    its plaquette = WilsonFlowGaugeObservables); the propagator as a SciDAC file whose records,
    private record XML, checksum and data layout are as documented in write_qio_propagator."""
    work, ours = chroma_run["dir"], chroma_run["ours"]
    assert chroma_run["result"].files == ["prop_pt_k0.1_cfg_1500.lime", "wflow_t4_cfg_1500.lime"]
    u, info = read_ildg(work / "wflow_t4_cfg_1500.lime")
    assert info.checksum == "ok" and info.precision == 64
    w_ref = float(ours.find(".//WilsonFlowGaugeObservables/w_plaq").text)
    assert float(mesplq(u).w_plaq[0]) == pytest.approx(w_ref, rel=1e-14)
    assert "<Params>" in info.metadata["scidac-record-xml"]  # the configuration's record XML

    path = work / "prop_pt_k0.1_cfg_1500.lime"
    with LimeReader(path) as r:
        types = [rec.type for rec in r.records]
        assert types == ["scidac-private-file-xml", "scidac-file-xml",
                         "scidac-private-record-xml", "scidac-record-xml",
                         "scidac-binary-data", "scidac-checksum"]
        priv = r.read_xml(r.first("scidac-private-record-xml"))
        assert [priv.findtext(t) for t in ("datatype", "precision", "colors", "spins",
                                            "typesize", "datacount")] == [
            "Lattice", "D", "3", "4", "2304", "1"]
        rec = r.read_xml(r.first("scidac-record-xml"))
        assert rec.tag == "Propagator" and rec.findtext("ForwardProp/FermionAction/Kappa") == "0.1"
        raw = r.read_bytes(r.first("scidac-binary-data"))
        ck = r.read_xml(r.first("scidac-checksum"))
    assert len(raw) == 256 * 2304
    suma, sumb = scidac_checksum(raw, 2304)
    assert (ck.findtext("suma"), ck.findtext("sumb")) == (f"{suma:x}", f"{sumb:x}")
    data = np.frombuffer(raw, dtype=">f8").reshape(4, 4, 4, 4, 4, 4, 3, 3, 2)  # t z y x s s' c c'
    corr = (data**2).sum(axis=(1, 2, 3, 4, 5, 6, 7, 8))
    ref = np.array(ours.find(".//Prop_correlator/prop_corr").text.split(), dtype=float)
    assert np.allclose(corr, ref, rtol=1e-13)
    # the data are the propagator in Chroma's normalisation, layout [t, z, y, x, s, s', c, c']
    s, _ = point_propagator(read_ildg(_cfg1500(chroma_run))[0], 0.1, normalisation="chroma")
    mine = torch.view_as_real(s[0].permute(0, 1, 2, 3, 4, 6, 5, 7)).numpy()
    assert np.allclose(data, mine, rtol=0, atol=1e-12)


def _cfg1500(chroma_run) -> Path:
    return Path(chroma_run["ours"].find("Input/chroma/Cfg/cfg_file").text)


# ------------------------------------------------------------------------------------------------
# small synthetic inputs
# ------------------------------------------------------------------------------------------------
def _input(measurements: str, cfg: str, nrow: str = "4 4 4 4", rng: str = "") -> str:
    return (f'<?xml version="1.0"?>\n<chroma><Param><InlineMeasurements>{measurements}'
            f"</InlineMeasurements><nrow>{nrow}</nrow></Param>{rng}<Cfg>{cfg}</Cfg></chroma>")


_UNIT = "<cfg_type>UNIT</cfg_type><cfg_file>DUMMY</cfg_file>"
_GAUGE = "<NamedObject><gauge_id>default_gauge_field</gauge_id></NamedObject>"
_PLAQ = f"<elem><Name>PLAQUETTE</Name><Param><version>2</version></Param>{_GAUGE}</elem>"


def _source(sid: str = "src", t_srce: str = "0 0 0 0", kind: str = "POINT_SOURCE") -> str:
    return (f"<elem><Name>MAKE_SOURCE</Name><Param><version>6</version><Source><version>2"
            f"</version><SourceType>{kind}</SourceType><j_decay>3</j_decay><t_srce>{t_srce}"
            f"</t_srce></Source></Param><NamedObject><gauge_id>default_gauge_field</gauge_id>"
            f"<source_id>{sid}</source_id></NamedObject></elem>")


def _prop(sid: str = "src", pid: str = "prop", kappa: str = "0.1", act: str = "WILSON",
          extra: str = "") -> str:
    return (f"<elem><Name>PROPAGATOR</Name><Param><version>10</version>"
            f"<quarkSpinType>FULL</quarkSpinType><obsvP>false</obsvP><FermionAction>"
            f"<FermAct>{act}</FermAct><Kappa>{kappa}</Kappa>{extra}<FermionBC><FermBC>"
            f"SIMPLE_FERMBC</FermBC><boundary>1 1 1 -1</boundary></FermionBC></FermionAction>"
            f"<InvertParam><invType>CG_INVERTER</invType><RsdCG>1e-12</RsdCG><MaxCG>1000</MaxCG>"
            f"</InvertParam></Param><NamedObject><gauge_id>default_gauge_field</gauge_id>"
            f"<source_id>{sid}</source_id><prop_id>{pid}</prop_id></NamedObject></elem>")


def _sink(pid: str = "prop", sid: str = "sink") -> str:
    return (f"<elem><Name>SINK_SMEAR</Name><Param><version>5</version><Sink><version>2"
            f"</version><SinkType>POINT_SINK</SinkType><j_decay>3</j_decay></Sink></Param>"
            f"<NamedObject><gauge_id>default_gauge_field</gauge_id><prop_id>{pid}</prop_id>"
            f"<smeared_prop_id>{sid}</smeared_prop_id></NamedObject></elem>")


def _hadspec(first: str = "sink", second: str = "sink", meson: str = "true",
             baryon: str = "false", mom2: str = "0", current: str = "false",
             time_rev: str = "false") -> str:
    return (f"<elem><Name>HADRON_SPECTRUM</Name><Param><version>1</version><MesonP>{meson}"
            f"</MesonP><CurrentP>{current}</CurrentP><BaryonP>{baryon}</BaryonP><time_rev>"
            f"{time_rev}</time_rev><mom2_max>{mom2}</mom2_max><avg_equiv_mom>true</avg_equiv_mom>"
            f"</Param><NamedObject><gauge_id>default_gauge_field</gauge_id><sink_pairs><elem>"
            f"<first_id>{first}</first_id><second_id>{second}</second_id></elem></sink_pairs>"
            f"</NamedObject></elem>")


def _flow(nstep: int, wtime: float, out: str = "flowed") -> str:
    return (f"<elem><Name>WILSON_FLOW</Name><Param><version>2</version><nstep>{nstep}</nstep>"
            f"<wtime>{wtime}</wtime><t_dir>3</t_dir><smear_dirs>1 1 1 1</smear_dirs></Param>"
            f"<NamedObject><gauge_in>default_gauge_field</gauge_in><gauge_out>{out}</gauge_out>"
            f"</NamedObject></elem>")


def _qtop(gid: str, k5: str) -> str:
    return (f"<elem><Name>QTOP_NAIVE</Name><Param><version>1</version><k5>{k5}</k5></Param>"
            f"<NamedObject><gauge_id>{gid}</gauge_id></NamedObject></elem>")


def _parse(text: str):
    return parse_chroma_input(etree.ElementTree(etree.fromstring(text.encode())), "in.xml")


def _smooth(nrow, seed: int, eps: float) -> torch.Tensor:
    lat = Lattice(nrow)
    gen = torch.Generator().manual_seed(seed)
    x = random_algebra(3, (1, 4, *lat.shape), generator=gen)
    return expm_algebra(eps * x)


def test_small_input_flow_qtop_and_hadrons_agree_with_direct_calls(tmp_path, monkeypatch,
                                                                   capsys):
    """A synthetic 2^3 x 4 input: the flow loop (with its progress line) equals
    chroma_wilson_flow bit for bit, QTOP_NAIVE equals qtop_naive, the pion mesprop equals
    pion_correlator, a source off the origin counts time from t0, and nucleon/pion are real
    and positive at t = 0."""
    monkeypatch.chdir(tmp_path)
    nrow = (2, 2, 2, 4)
    u = _smooth(nrow, 3, 0.5)
    write_ildg(tmp_path / "c.lime", u)
    meas = (_PLAQ + _flow(6, 0.3) + _qtop("flowed", "0.02") + _source(t_srce="1 0 1 2")
            + _prop() + _sink() + _hadspec(baryon="true"))
    (tmp_path / "in.xml").write_text(_input(meas, "<cfg_type>SZINQIO</cfg_type><cfg_file>"
                                            "c.lime</cfg_file><reunit>false</reunit>",
                                            "2 2 2 4"))
    res = run_chroma_measurements("in.xml", "out.xml", progress=True)
    flow = chroma_wilson_flow(u, 6, 0.3)
    by = {m["name"]: m for m in res.measurements}
    assert by["WILSON_FLOW"]["wflow_gact4i"] == flow.wflow_gact4i[0].tolist()
    assert by["WILSON_FLOW"]["wflow_gactij"] == flow.wflow_gactij[0].tolist()
    assert by["QTOP_NAIVE"]["qtop"] == float(qtop_naive(flow.U, 0.02)[0])
    c = pion_correlator(u, 0.1, source=(1, 0, 1, 2), normalisation="chroma")
    assert np.allclose(by["HADRON_SPECTRUM"]["pion"], c[0].numpy(), rtol=1e-12)
    assert by["HADRON_SPECTRUM"]["nucleon"][0] > 0
    err = capsys.readouterr().err  # progress lines for the long parts
    assert "chroma [2/7] WILSON_FLOW" in err and "WILSON_FLOW step 6/6" in err
    assert "PROPAGATOR: 12 CG solves (WILSON, kappa 0.1, RsdCG 1e-12)" in err
    out = etree.parse("out.xml").getroot()
    assert out.findtext(".//hadspec//t0") == "2"
    assert out.find(".//Point_Point_Wilson_Baryons")[16].findtext("baryon_num") == "16"


def test_unit_configuration(tmp_path, monkeypatch):
    """UNIT start: plaquette and Polyakov loops 1, QTOP_NAIVE 0, the free pion."""
    monkeypatch.chdir(tmp_path)
    poly = f"<elem><Name>POLYAKOV_LOOP</Name><Param><version>2</version></Param>{_GAUGE}</elem>"
    meas = _PLAQ + poly + _qtop("default_gauge_field", "0") + _source() + _prop() + _sink() \
        + _hadspec()
    (tmp_path / "in.xml").write_text(_input(meas, _UNIT, "2 2 2 4"))
    res = run_chroma_measurements("in.xml", "out.xml")
    by = {m["name"]: m for m in res.measurements}
    assert by["PLAQUETTE"]["w_plaq"] == 1.0
    assert by["POLYAKOV_LOOP"]["poly_loop"] == [1 + 0j] * 4
    assert by["QTOP_NAIVE"]["qtop"] == 0.0
    free = pion_correlator(unit_gauge(Lattice((2, 2, 2, 4)), "SU3", 1), 0.1,
                           normalisation="chroma")
    assert np.allclose(by["HADRON_SPECTRUM"]["pion"], free[0].numpy(), rtol=1e-12)
    root = etree.parse("out.xml").getroot()
    assert root.findtext("RNG/Seed/elem") == "11"  # no RNG in the input


def test_cli_chroma_help_and_errors(tmp_path, capsys, monkeypatch):
    with pytest.raises(SystemExit):
        main(["chroma", "--help"])
    text = capsys.readouterr().out
    for name in SUPPORTED_MEASUREMENTS:
        assert name in text
    monkeypatch.chdir(tmp_path)
    bad = _input("<elem><Name>LINK_SMEAR</Name></elem>", _UNIT)
    (tmp_path / "bad.xml").write_text(bad)
    assert main(["chroma", "-i", "bad.xml", "-o", "out.xml", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert ("qcd-bridge chroma: error: bad.xml: /chroma/Param/InlineMeasurements/elem[0]/Name: "
            "unsupported inline measurement 'LINK_SMEAR'") in err
    assert not (tmp_path / "out.xml").exists()
    (tmp_path / "ok.xml").write_text(_input(_PLAQ, _UNIT, "2 2 2 2"))
    assert main(["chroma", "-i", "ok.xml", "-o", "out.xml", "--quiet"]) == 0
    assert "PLAQUETTE" in capsys.readouterr().out
    assert etree.parse("out.xml").getroot().findtext(
        "InlineObservables/elem/Plaquette/w_plaq") == "1"


# ------------------------------------------------------------------------------------------------
# strict parsing: unsupported elements and named objects
# ------------------------------------------------------------------------------------------------
_E0 = "/chroma/Param/InlineMeasurements/elem"


@pytest.mark.parametrize("meas, cfg, message", [
    ("<elem><Name>LINK_SMEAR</Name></elem>", _UNIT,
     f"in.xml: {_E0}[0]/Name: unsupported inline measurement 'LINK_SMEAR'"),
    (f"<elem><Name>PLAQUETTE</Name><Param><version>2</version><GaugeState/></Param>{_GAUGE}"
     "</elem>", _UNIT, f"unsupported element {_E0}[0]/Param/GaugeState"),
    (_PLAQ.replace("<Frequency>", "") + f"<elem><Name>PLAQUETTE</Name>{_GAUGE}<Extra/></elem>",
     _UNIT, f"unsupported element {_E0}[1]/Extra"),
    (_source(kind="SHELL_SOURCE"), _UNIT,
     f"{_E0}[0]/Param/Source/SourceType: the built-in chroma supports the source type "
     "POINT_SOURCE; got 'SHELL_SOURCE'"),
    (_source(t_srce="0 0 0 9"), _UNIT, "t_srce: 0 0 0 9 lies outside the lattice 4 4 4 4"),
    (_source() + _prop(act="OVERLAP"), _UNIT, "FermAct: the built-in chroma supports the fermion "
     "actions WILSON, CLOVER, UNPRECONDITIONED_WILSON, UNPRECONDITIONED_CLOVER; got 'OVERLAP'"),
    (_source() + _prop(extra="<AnisoParam><anisoP>true</anisoP></AnisoParam>"), _UNIT,
     "anisoP: anisotropic actions are not supported"),
    (_source() + _prop() + _sink() + _hadspec(mom2="1"), _UNIT,
     "mom2_max: the built-in chroma projects to zero momentum only"),
    (_source() + _prop() + _sink() + _hadspec(current="true"), _UNIT,
     "CurrentP: meson currents (curcor2) are not implemented"),
    (_PLAQ.replace("</elem>", "<xml_file>x.xml</xml_file></elem>"), _UNIT,
     "xml_file: writing a measurement to a separate XML file is not supported"),
    (_flow(10, 1.0).replace("1 1 1 1", "1 1 1 0"), _UNIT,
     "smear_dirs: the built-in chroma flows in all directions only"),
    (_PLAQ, "<cfg_type>DISORDERED</cfg_type><cfg_file>x</cfg_file>",
     "/chroma/Cfg/cfg_type: the built-in chroma supports the configuration types SZINQIO, "
     "SCIDAC, UNIT; got 'DISORDERED'"),
    (_PLAQ, "<cfg_type>SZINQIO</cfg_type>", "missing required element /chroma/Cfg/cfg_file"),
])
def test_unsupported_elements_name_their_path(meas, cfg, message):
    with pytest.raises(ConfigError) as exc:
        _parse(_input(meas, cfg))
    assert message in str(exc.value)


@pytest.mark.parametrize("meas, message", [
    (_source() + _prop(sid="nosuch"),
     f"in.xml: {_E0}[1]/NamedObject/source_id: PROPAGATOR refers to the named object 'nosuch', "
     "which does not exist at this point of the input (defined so far: 'default_gauge_field' "
     "(gauge), 'src' (source))"),
    (_hadspec() + _source() + _prop() + _sink(),
     f"{_E0}[0]/NamedObject/sink_pairs[0]/first_id: HADRON_SPECTRUM refers to the named object "
     "'sink', which does not exist at this point"),
    (_source() + _prop() + _hadspec(first="prop", second="prop"),
     "HADRON_SPECTRUM needs a sink-smeared propagator (LatticePropagator from SINK_SMEAR), but "
     "'prop' is a quark propagator (LatticePropagator from PROPAGATOR) (created by "
     f"{_E0}[1] (PROPAGATOR))"),
    (_qtop("wflow_t4", "0"), "QTOP_NAIVE refers to the named object 'wflow_t4'"),
    (_source() + _qtop("src", "0"), "QTOP_NAIVE needs a gauge field"),
    (_flow(2, 0.1) + "<elem><Name>ERASE_NAMED_OBJECT</Name><NamedObject><object_id>flowed"
     "</object_id></NamedObject></elem>" + _qtop("flowed", "0"),
     f"{_E0}[2]/NamedObject/gauge_id: QTOP_NAIVE refers to the named object 'flowed', which "
     "does not exist"),
    ("<elem><Name>QIO_WRITE_NAMED_OBJECT</Name><NamedObject><object_id>default_gauge_field"
     "</object_id><object_type>LatticePropagator</object_type></NamedObject><File><file_name>"
     "x.lime</file_name><file_volfmt>SINGLEFILE</file_volfmt></File></elem>",
     "QIO_WRITE_NAMED_OBJECT needs a quark source"),
])
def test_named_objects_are_tracked(meas, message):
    with pytest.raises(ConfigError) as exc:
        _parse(_input(meas, _UNIT))
    assert message in str(exc.value)


def test_reference_input_parses_and_bad_files(data_dir, tmp_path):
    inp = read_chroma_input(data_dir / CHROMA / "chroma_measure.ini.xml")
    assert [m.name for m in inp.measurements][:3] == ["PLAQUETTE", "POLYAKOV_LOOP", "QACTDEN"]
    assert inp.measurements[8].creates == {"gauge_out": "wflow_t4"}
    assert inp.measurements[11].params == {"version": 1, "k5": 0.0}
    assert inp.seed == (11, 11, 11, 0) and inp.nrow == (4, 4, 4, 4)
    with pytest.raises(FileNotFoundError, match="cannot read chroma input"):
        read_chroma_input(tmp_path / "absent.xml")
    (tmp_path / "broken.xml").write_text("<chroma><Param>")
    with pytest.raises(ConfigError, match="not well-formed XML"):
        read_chroma_input(tmp_path / "broken.xml")
    (tmp_path / "hmc.xml").write_text("<Params/>")
    with pytest.raises(ConfigError, match="expected root element <chroma>"):
        read_chroma_input(tmp_path / "hmc.xml")
    with pytest.raises(ConfigError, match="nrow: expected 4 positive extents"):
        _parse(_input(_PLAQ, _UNIT, "4 4 4"))
    with pytest.raises(ConfigError, match="appears 2 times"):
        _parse(_input(_PLAQ.replace("<Name>", "<Frequency>1</Frequency><Frequency>2</Frequency>"
                                     "<Name>"), _UNIT))


def test_missing_configuration_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "in.xml").write_text(_input(_PLAQ, "<cfg_type>SZINQIO</cfg_type><cfg_file>"
                                            "none.lime</cfg_file>"))
    with pytest.raises(FileNotFoundError, match="/chroma/Cfg/cfg_file: 'none.lime' does not "
                       "exist"):
        run_chroma_measurements("in.xml", "out.xml")


# ------------------------------------------------------------------------------------------------
# QTOP_NAIVE and the hadron contractions
# ------------------------------------------------------------------------------------------------
def _flux_su3(nrow, n01: int, n23: int) -> torch.Tensor:
    """Constant abelian SU(3) field diag(e^{i phi}, e^{-i phi}, 1): every 01 plaquette has angle
    2 pi n01 / (Lx Ly), every 23 plaquette 2 pi n23 / (Lz Lt), the others 0."""
    def winding(l0, l1, n):
        a = np.arange(l0)[:, None] * np.ones((1, l1))
        b = np.ones((l0, 1)) * np.arange(l1)[None, :]
        phi1 = 2 * math.pi * n * a / (l0 * l1)
        phi0 = np.zeros((l0, l1))
        phi0[l0 - 1, :] = -2 * math.pi * n * b[l0 - 1, :] / l1
        return phi0, phi1

    lx, ly, lz, lt = nrow
    p0, p1 = winding(lx, ly, n01)
    p2, p3 = winding(lz, lt, n23)
    phi = torch.zeros(4, lt, lz, ly, lx, dtype=torch.float64)
    phi[0] = torch.tensor(p0.T)[None, None]
    phi[1] = torch.tensor(p1.T)[None, None]
    phi[2] = torch.tensor(p2.T)[:, :, None, None]
    phi[3] = torch.tensor(p3.T)[:, :, None, None]
    u = torch.zeros(1, 4, lt, lz, ly, lx, 3, 3, dtype=C128)
    u[..., 0, 0] = torch.polar(torch.ones_like(phi), phi)
    u[..., 1, 1] = torch.polar(torch.ones_like(phi), -phi)
    u[..., 2, 2] = 1
    return u


@pytest.mark.parametrize("k5", [0.0, 0.05, 1 / 20 - 0.013, -0.1])
def test_qtop_naive_constant_flux_is_exact(k5):
    """On the constant abelian field every a x b loop has angle a b theta, so Chroma's sum gives
    ``C = 8 i f(theta) diag(1, -1, 0)`` with ``f(theta) = sum_ab k_ab sin(a b theta)`` and
    ``qtop = V f(theta_01) f(theta_23) / (8 pi^2)`` exactly; ``f -> 2 theta`` for smooth fields
    (the weights sum to 2), i.e. ``qtop -> 2 n01 n23``."""
    nrow = (4, 4, 6, 8)
    v = math.prod(nrow)
    w = qtop_naive_weights(k5)
    assert sum(k * a * b for (a, b), k in w.items()) == pytest.approx(2.0, abs=1e-14)
    for n01, n23 in ((1, 1), (1, -2)):
        u = _flux_su3(nrow, n01, n23)
        th01, th23 = 2 * math.pi * n01 / 16, 2 * math.pi * n23 / 48

        def f(th, w=w):
            return sum(k * math.sin(a * b * th) for (a, b), k in w.items())

        exact = v * f(th01) * f(th23) / (8 * math.pi**2)
        assert float(qtop_naive(u, k5)[0]) == pytest.approx(exact, rel=1e-12, abs=1e-13)
    # larger lattice, smaller angles: close to the integer 2 n01 n23 (O(theta^2) off)
    u = _flux_su3((8, 8, 8, 8), 1, 1)
    assert float(qtop_naive(u, k5)[0]) == pytest.approx(2.0, abs=0.02)


def _reflect(u: torch.Tensor, mu: int) -> torch.Tensor:
    """Reflection ``x_mu -> -x_mu`` (as tests/test_observables.py)."""
    lat = Lattice.of(u)
    ax = 1 + lat.axis(mu)
    out = []
    for nu in range(lat.nd):
        f = u[:, nu]
        if nu == mu:
            out.append(torch.flip(f, [ax]).conj().transpose(-1, -2))
        else:
            out.append(torch.roll(torch.flip(f, [ax]), 1, ax))
    return torch.stack(out, dim=1)


def test_qtop_naive_is_not_the_plaquette_clover_charge_and_is_gauge_invariant(cpu_generator):
    """k5 = 0 keeps the 2x2, 1x2 and 1x3 loops (qnaive.cc), so it differs from the clover
    charge on a rough field; gauge invariant; parity odd; unit field 0; input validation."""
    nrow = (4, 4, 4, 4)
    u = _smooth(nrow, 11, 0.6)
    q = qtop_naive(u, 0.0)
    assert abs(float(q[0]) - float(clover_charge(u)[0])) > 1e-4
    assert_gauge_invariant(lambda x: qtop_naive(x, 0.05), u,
                           random_gauge_transformation(Lattice(nrow), "SU3", 1,
                                                       generator=cpu_generator), rtol=1e-10,
                           atol=1e-13)
    ref = qtop_naive(u, 0.05)
    for mu in range(4):
        assert float(qtop_naive(_reflect(u, mu), 0.05)[0]) == pytest.approx(-float(ref[0]),
                                                                            rel=1e-10)
    assert float(qtop_naive(unit_gauge(Lattice(nrow), "SU3", 1), 0.05)[0]) == 0.0
    with pytest.raises(ValueError, match="k5: expected a finite number"):
        qtop_naive(u, float("nan"))
    with pytest.raises(ValueError, match="QTOP_NAIVE needs Nd = 4"):
        qtop_naive(random_gauge(Lattice((4, 4)), "SU3", 1), 0.0)


def test_meson_and_baryon_contractions_basic_properties(cpu_generator):
    """Pion = Tr S^dag S; a source at t0 counts time from t0 (translation); baryons with the
    antiperiodic sign: moving the source by Lt/2 in time flips the sign of the wrapped half."""
    nrow = (2, 2, 2, 4)
    u = random_gauge(Lattice(nrow), "SU3", 1, generator=cpu_generator)
    s0, _ = point_propagator(u, 0.12, normalisation="chroma")
    mes = meson_correlators(s0, s0, 0)
    pion = (s0.abs() ** 2).sum((2, 3, 4, 5, 6, 7, 8))
    assert torch.allclose(mes[:, 15].real, pion, rtol=1e-13)
    assert float(mes[:, 15].imag.abs().max()) < 1e-14
    # translate the configuration by 1 in time and put the source at t0 = 1: same correlators
    ut = torch.roll(u, 1, dims=2)
    s1, _ = point_propagator(ut, 0.12, source=(0, 0, 0, 1), normalisation="chroma")
    assert torch.allclose(meson_correlators(s1, s1, 1), mes, atol=1e-12)
    # baryons are cubic in S: with antiperiodic time the translated propagator changes sign
    # where the sink wraps past the lattice end (t_eff = Lt - 1 here), and Chroma's sign flip
    # (bc_spec < 0 and t_eff + t0 >= Lt) restores translation invariance
    b0 = baryon_correlators(s0, s0, 0, -1)
    b1 = baryon_correlators(s1, s1, 1, -1)
    assert torch.allclose(b1, b0, atol=1e-12)
    assert float(b0[0, 0, 3].abs()) > 1e-6  # the wrapped entry is not vacuous
    raw = baryon_correlators(s1, s1, 1, 1)  # no flip: the boundary sign shows
    assert torch.allclose(raw[..., 3], -b0[..., 3], atol=1e-12)


@pytest.mark.slow
def test_qtop_naive_all_reference_configurations(data_dir):
    """``qtop_naive_k5_0_t4`` of measured_by_chroma.json on all five configurations (five
    400-step flows)."""
    folder = data_dir / CHROMA
    entries = json.loads((folder / "measured_by_chroma.json").read_text())
    u = torch.cat([read_ildg(folder / e["file"])[0] for e in entries])
    flowed = chroma_wilson_flow(u, 400, 4.0).U
    q = qtop_naive(flowed, 0.0)
    ref = torch.tensor([e["qtop_naive_k5_0_t4"] for e in entries], dtype=torch.float64)
    assert torch.allclose(q, ref, rtol=1e-10, atol=1e-14), (q, ref)


def test_the_builtin_measurement_names_agree():
    """The light name list the command line shows is what the reader accepts and the program
    runs."""
    from bridge.chroma.chroma_program import INLINE_MEASUREMENTS
    from bridge.chroma.names import BUILTIN_MEASUREMENTS

    assert SUPPORTED_MEASUREMENTS == BUILTIN_MEASUREMENTS
    assert sorted(INLINE_MEASUREMENTS) == sorted(BUILTIN_MEASUREMENTS)
