"""Parsing Chroma's hmc and chroma output XML (real reference outputs and small hand-written
fixtures built from the element paths of docs/formats.md section 4) into the HDF5 store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bridge.chroma.output import read_output, series, store_output
from bridge.cli import main
from bridge.errors import ConfigError, FormatError
from bridge.io.hdf5 import EnsembleStore

HMC_OUT = "chroma/pure_gauge_b5.5_4x4/hmc.out.trimmed.xml"
CHROMA_OUT = "chroma/nf2_b1.0_k0.1_4x4/chroma_measure_cfg_1500.out.xml"
MEASURED = "chroma/nf2_b1.0_k0.1_4x4/measured_by_chroma.json"


def _update(n: int, dh: float, acc: str, plaq: float, warm: str = "false") -> str:
    """One ``doHMC/MCUpdates/elem`` with the paths of formats.md 4.1."""
    return f"""<elem><Update>
      <update_no>{n}</update_no><WarmUpP>{warm}</WarmUpP>
      <HMCTrajectory><WarmUpP>{warm}</WarmUpP>
        <H_old><KE_old>10</KE_old><PE_old>-100</PE_old></H_old>
        <H_new><KE_new>11</KE_new><PE_new>{-101 + dh}</PE_new></H_new>
        <deltaKE>1</deltaKE><deltaPE>{dh - 1}</deltaPE><deltaH>{dh}</deltaH>
        <AccProb>{min(1.0, float(np.exp(-dh)))}</AccProb><AcceptP>{acc}</AcceptP>
      </HMCTrajectory>
      <seconds_for_trajectory>0.5</seconds_for_trajectory>
      <InlineObservables><elem><Plaquette><update_no>{n}</update_no><w_plaq>{plaq}</w_plaq>
        <s_plaq>{plaq}</s_plaq><t_plaq>{plaq}</t_plaq><link>0.1</link></Plaquette></elem>
      </InlineObservables>
      <seconds_for_measurements>0.01</seconds_for_measurements>
    </Update></elem>"""


def _hmc_xml(*updates: str) -> str:
    return (f"<?xml version='1.0'?><hmc><ProgramInfo><Setgeom><latt_size>4 4 4 8</latt_size>"
            f"</Setgeom></ProgramInfo><doHMC><MCUpdates>{''.join(updates)}</MCUpdates></doHMC>"
            f"</hmc>")


CHROMA_FIXTURE = """<?xml version='1.0'?>
<chroma>
  <Input><chroma><Param><InlineMeasurements>
    <elem><Name>PLAQUETTE</Name><NamedObject><gauge_id>default_gauge_field</gauge_id>
      </NamedObject></elem>
    <elem><Name>POLYAKOV_LOOP</Name><NamedObject><gauge_id>default_gauge_field</gauge_id>
      </NamedObject></elem>
    <elem><Name>HADRON_SPECTRUM</Name><NamedObject><gauge_id>default_gauge_field</gauge_id>
      </NamedObject></elem>
    <elem><Name>WILSON_FLOW</Name><NamedObject><gauge_in>default_gauge_field</gauge_in>
      <gauge_out>wf</gauge_out></NamedObject></elem>
    <elem><Name>QTOP_NAIVE</Name><NamedObject><gauge_id>wf</gauge_id></NamedObject></elem>
  </InlineMeasurements><nrow>2 2 2 3</nrow></Param>
  <Cfg><cfg_type>SZINQIO</cfg_type><cfg_file>ens_cfg_40.lime</cfg_file></Cfg></chroma></Input>
  <ProgramInfo><Setgeom><latt_size>2 2 2 3</latt_size></Setgeom></ProgramInfo>
  <Observables><w_plaq>0.5</w_plaq><s_plaq>0.4</s_plaq><t_plaq>0.6</t_plaq><link>0.2</link>
    <pollp><elem><re>0.1</re><im>0</im></elem><elem><re>0.2</re><im>0</im></elem>
      <elem><re>0.3</re><im>0</im></elem><elem><re>0.4</re><im>-0.1</im></elem></pollp>
  </Observables>
  <InlineObservables>
    <elem><Plaquette><update_no>0</update_no><w_plaq>0.5</w_plaq><s_plaq>0.4</s_plaq>
      <t_plaq>0.6</t_plaq><link>0.2</link></Plaquette></elem>
    <elem><PolyakovLoop><update_no>0</update_no><poly_loop>
      <elem><re>0.1</re><im>0</im></elem><elem><re>0.2</re><im>0</im></elem>
      <elem><re>0.3</re><im>0</im></elem><elem><re>0.4</re><im>-0.1</im></elem>
    </poly_loop></PolyakovLoop></elem>
    <elem><hadspec><Wilson_hadron_measurements><elem>
      <Mass_1>1</Mass_1><Mass_2>1</Mass_2><t0>0</t0>
      <Point_Point_Wilson_Mesons>
        <elem><gamma_value>0</gamma_value><momenta><elem><sink_mom_num>0</sink_mom_num>
          <sink_mom>0 0 0</sink_mom><mesprop><elem><re>3</re><im>0</im></elem>
          <elem><re>2</re><im>0.5</im></elem><elem><re>1</re><im>0</im></elem></mesprop>
        </elem></momenta></elem>
        <elem><gamma_value>15</gamma_value><momenta><elem><sink_mom_num>0</sink_mom_num>
          <sink_mom>0 0 0</sink_mom><mesprop><elem><re>0.9</re><im>0</im></elem>
          <elem><re>0.1</re><im>0</im></elem><elem><re>0.05</re><im>0</im></elem></mesprop>
        </elem></momenta></elem>
      </Point_Point_Wilson_Mesons>
    </elem></Wilson_hadron_measurements></hadspec></elem>
    <elem><WilsonFlow><wilson_flow_results><wflow_step>0 0.1 0.2</wflow_step>
      <wflow_gact4i>1 0.5 0.25</wflow_gact4i><wflow_gactij>2 1 0.5</wflow_gactij>
    </wilson_flow_results></WilsonFlow></elem>
    <elem><QTop><update_no>0</update_no><k5>0.05</k5><qtop>-0.98</qtop></QTop></elem>
  </InlineObservables>
</chroma>"""


# -- real Chroma outputs ------------------------------------------------------------------------
def test_real_hmc_output(data_dir):
    out = read_output(data_dir / HMC_OUT)
    assert out["program"] == "hmc" and out["nrow"] == [4, 4, 4, 4]
    assert out["code_version"]["chroma"] == "3.44.1"
    ups = out["updates"]
    assert [u["update_no"] for u in ups] == [1, 2, 3, 5019, 5020]
    assert [u["warmup"] for u in ups] == [True, True, True, False, False]
    first = ups[0]
    assert first["deltaH"] == 26.9127421218759 and first["AccProb"] == 2.05090055959858e-12
    assert first["AcceptP"] is True and first["PE_old"] == -8448.0
    assert first["seconds_for_trajectory"] == 0.019609
    assert first["plaquette"]["w_plaq"] == 0.805469643555811
    assert first["plaquette"]["plane_23_plaq"] == 0.806522801545788
    assert first["poly_loop"][3] == [0.490060271142758, 0.0180610640364118]
    for u in ups:
        assert u["AccProb"] == pytest.approx(min(1.0, np.exp(-u["deltaH"])), rel=1e-12)


def test_real_chroma_output_matches_chromas_printed_values(data_dir):
    out = read_output(data_dir / CHROMA_OUT)
    ref = json.loads((data_dir / MEASURED).read_text())[0]
    assert ref["file"].endswith("_cfg_1500.lime") and out["trajectory"] == 1500
    assert out["observables"]["w_plaq"] == ref["w_plaq"]
    by = {m["label"]: m["values"] for m in out["measurements"]}
    assert by["hadspec"]["pion"] == ref["C_pi"]
    assert len(by["hadspec"]["mesons"]["Point_Point"]) == 16
    assert by["Plaquette@wflow_t4"]["w_plaq"] == ref["w_plaq_flow_t4"]
    assert by["QTop[k5=0]@wflow_t4"]["qtop"] == ref["qtop_naive_k5_0_t4"]
    wf = by["WilsonFlow"]
    assert len(wf["wflow_step"]) == 401 and wf["wflow_step"][100] == pytest.approx(1.0)
    t2e = wf["wflow_step"][100] ** 2 * (wf["wflow_gact4i"][100] + wf["wflow_gactij"][100])
    assert t2e == pytest.approx(ref["t2E"]["1"], rel=1e-12)
    assert by["PolyakovLoop"]["poly_loop"][3] == pytest.approx(ref["poly_t"], abs=1e-15)


def test_real_outputs_into_store(data_dir, tmp_path):
    store = tmp_path / "ens.h5"
    names = store_output(read_output(data_dir / HMC_OUT), store)
    assert "hmc.deltaH" in names and "hmc.poly_loop" in names
    store_output(read_output(data_dir / CHROMA_OUT), store)
    with EnsembleStore(store, "r") as s:
        dh, traj = s.measurement("hmc.deltaH")
        assert traj.tolist() == [1, 2, 3, 5019, 5020] and dh[0] == 26.9127421218759
        acc, _ = s.measurement("hmc.AcceptP")
        assert set(acc.tolist()) <= {0.0, 1.0}
        pion, traj = s.measurement("chroma.hadspec.pion")
        assert traj.tolist() == [1500] and pion.shape == (1, 4)
        mesons, _ = s.measurement("chroma.hadspec.Point_Point_mesons")
        assert mesons.shape == (1, 16, 4, 2)
        assert s.nrow == (4, 4, 4, 4)


# -- hand-written fixtures ------------------------------------------------------------------------
def test_hmc_fixture_and_resumed_parsing(tmp_path):
    f = tmp_path / "hmc.out.xml"
    f.write_text(_hmc_xml(_update(1, 0.3, "true", 0.55, "true"), _update(2, 1.5, "false", 0.56)))
    out = read_output(f)
    assert [(u["update_no"], u["warmup"], u["AcceptP"]) for u in out["updates"]] == [
        (1, True, True), (2, False, False)]
    assert out["updates"][1]["deltaH"] == 1.5 and out["updates"][1]["poly_loop"] is None
    s = series(out)
    assert "hmc.poly_loop" not in s and s["hmc.w_plaq"][0] == [1, 2]
    store = tmp_path / "ens.h5"
    store_output(out, store)
    assert store_output(out, store) == []  # nothing new
    f.write_text(_hmc_xml(_update(1, 0.3, "true", 0.55, "true"), _update(2, 1.5, "false", 0.56),
                          _update(3, -0.2, "true", 0.57)))
    assert "hmc.deltaH" in store_output(read_output(f), store)  # the run went on
    with EnsembleStore(store, "r") as st:
        vals, traj = st.measurement("hmc.w_plaq")
        assert traj.tolist() == [1, 2, 3] and vals.tolist() == [0.55, 0.56, 0.57]
        assert st.nrow == (4, 4, 4, 8)


def test_chroma_fixture(tmp_path):
    f = tmp_path / "m.out.xml"
    f.write_text(CHROMA_FIXTURE)
    out = read_output(f)
    assert out["trajectory"] == 40  # from ..._cfg_40.lime
    assert [m["label"] for m in out["measurements"]] == [
        "Plaquette", "PolyakovLoop", "hadspec", "WilsonFlow", "QTop[k5=0.05]@wf"]
    assert out["observables"]["pollp"][3] == [0.4, -0.1]
    had = out["measurements"][2]["values"]
    assert had["pion"] == [0.9, 0.1, 0.05]
    assert had["mesons"]["Point_Point"][0][1] == [2.0, 0.5]
    s = series(out)
    assert s["chroma.QTop[k5=0.05]@wf.qtop"][1].tolist() == [-0.98]
    assert s["chroma.WilsonFlow.wflow_gactij"][1].tolist() == [[2.0, 1.0, 0.5]]
    assert s["chroma.hadspec.Point_Point_mesons"][1].shape == (1, 2, 3, 2)
    store = tmp_path / "ens.h5"
    store_output(out, store, traj=41)
    with EnsembleStore(store, "r") as st:
        assert st.measurement("chroma.hadspec.pion")[1].tolist() == [41]


@pytest.mark.parametrize("edit,exc,message", [
    (("<deltaH>1.5</deltaH>", ""), FormatError,
     "/hmc/doHMC/MCUpdates/elem[1]/Update/HMCTrajectory/deltaH: missing required element"),
    (("<AcceptP>false</AcceptP>", "<AcceptP>no</AcceptP>"), FormatError,
     "/hmc/doHMC/MCUpdates/elem[1]/Update/HMCTrajectory/AcceptP: expected true or false, got "
     "'no'"),
    (("<deltaH>1.5</deltaH>", "<deltaH>nan?</deltaH>"), FormatError,
     "HMCTrajectory/deltaH: expected a number, got 'nan?'"),
    (("<update_no>2</update_no>", ""), FormatError,
     "/hmc/doHMC/MCUpdates/elem[1]/Update/update_no: missing required element"),
    (("</hmc>", ""), FormatError, "not well-formed XML (an interrupted run writes an "
     "incomplete file)"),
    (("<hmc>", "<hmcx>"), FormatError, "not well-formed XML"),
])
def test_bad_hmc_outputs(tmp_path, edit, exc, message):
    f = tmp_path / "bad.xml"
    f.write_text(_hmc_xml(_update(1, 0.3, "true", 0.5), _update(2, 1.5, "false", 0.5))
                 .replace(*edit))
    with pytest.raises(exc) as err:
        read_output(f)
    assert str(err.value).startswith(f"{f}: ") and message in str(err.value)


def test_bad_outputs_other(tmp_path):
    f = tmp_path / "other.xml"
    f.write_text("<Params/>")
    with pytest.raises(FormatError, match=r"other.xml: /Params: expected root <hmc> \(hmc "
                       r"output\) or <chroma> \(chroma output\)"):
        read_output(f)
    with pytest.raises(FileNotFoundError, match="missing.xml: cannot read Chroma output"):
        read_output(tmp_path / "missing.xml")
    f.write_text(CHROMA_FIXTURE.replace("ens_cfg_40.lime", "ens.lime"))
    out = read_output(f)
    assert out["trajectory"] is None
    with pytest.raises(ConfigError, match="the trajectory of the measured configuration is not "
                       "in the output .* give it"):
        store_output(out, tmp_path / "ens.h5")
    f.write_text(CHROMA_FIXTURE.replace("<qtop>-0.98</qtop>", "<qtop>x</qtop>"))
    with pytest.raises(FormatError, match=r"/chroma/InlineObservables/elem\[4\]/QTop/qtop: "
                       r"expected a number, got 'x'"):
        read_output(f)


def test_cli_parse(tmp_path, capsys):
    f = tmp_path / "hmc.out.xml"
    f.write_text(_hmc_xml(_update(1, 0.3, "true", 0.55, "true"), _update(2, 1.5, "false", 0.56)))
    m = tmp_path / "m.out.xml"
    m.write_text(CHROMA_FIXTURE)  # a 2 2 2 3 lattice
    store = tmp_path / "ens.h5"
    assert main(["chroma-xml", "parse", str(f), str(m), "--into", str(store)]) == 1
    cap = capsys.readouterr()
    assert "hmc, 2 updates (1..2), acceptance 0.000 over 1 non-warm-up" in cap.out
    assert "chroma, trajectory 40" in cap.out
    assert "attribute '/nrow': lattice 4 4 4 8 (x y z t) disagrees with the requested nrow " \
           "2 2 2 3" in cap.err  # the store keeps one lattice
    m.write_text(CHROMA_FIXTURE.replace("2 2 2 3", "4 4 4 8"))
    assert main(["chroma-xml", "parse", str(m), "--into", str(store)]) == 0
    capsys.readouterr()
    with EnsembleStore(store, "r") as st:
        assert st.measurement("hmc.deltaH")[1].tolist() == [1, 2]
        assert st.measurement("chroma.QTop[k5=0.05]@wf.qtop")[1].tolist() == [40]
    assert main(["chroma-xml", "parse", str(f), "--json", "-"]) == 0
    cap = capsys.readouterr()
    assert json.loads(cap.out)["updates"][1]["deltaH"] == 1.5
    assert main(["chroma-xml", "parse", str(tmp_path / "nope.xml")]) == 1
    assert "nope.xml: cannot read Chroma output" in capsys.readouterr().err
