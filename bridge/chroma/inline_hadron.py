"""The built-in ``chroma`` program's hadron measurements: ``MAKE_SOURCE`` (point source),
``PROPAGATOR`` (Wilson/clover, CG), ``SINK_SMEAR`` (point sink) and ``HADRON_SPECTRUM``
(zero-momentum mesons and baryons, :mod:`bridge.observables.hadrons`), each writing its group of
Chroma's output XML and the record/file XML of the named object it creates (``qprop_io.cc``)."""

from __future__ import annotations

import copy
import time
from typing import Any

from lxml import etree

from ..errors import ConfigError
from ..fermions.gamma import NS
from ..observables import (
    baryon_correlators,
    meson_correlators,
    point_propagator,
    point_source_propagator,
    timeslice_norm2,
)
from ..solvers import CG
from .measure_input import Measurement
from .named_objects import InlineContext, PropObject, object_id
from .xml_out import (
    bool_text,
    complex_elems,
    copy_el,
    fmt,
    fmts,
    mesplq_group,
    program_info,
    rng_group,
    sub,
)

__all__ = ["HADRON_MEASUREMENTS"]

NC = 3


def inline_make_source(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    gauge = ctx.gauge(m.reads["gauge_id"])
    p = m.params
    env = ctx.env
    g = sub(out, "make_source")
    sub(g, "update_no", "0")
    program_info(g, env)
    rng_group(g, env)
    par = etree.Element("Param")
    sub(par, "version", str(p["version"]))
    src_el = m.element.find("Param/Source")
    par.append(copy_el(src_el))
    sub(par, "j_decay", str(p["j_decay"]))
    sub(par, "t_source", str(p["t_srce"][p["j_decay"]]))
    ctx.named_input(g, m, par)
    gauge.config_info(g)
    mesplq_group(g, "Observables", gauge.u)
    src = point_source_propagator(env.nrow, p["t_srce"], device=env.device)
    sub(sub(g, "Source_correlator"), "source_corr", fmts(timeslice_norm2(src)[0]))
    # record and file XML of the new object (qprop_io.cc: MakeSourceProp_t, "make_source")
    rec = etree.Element("MakeSource")
    sub(rec, "version", "1")
    ps = sub(rec, "PropSource")
    for c in par:
        ps.append(copy.deepcopy(c))
    gauge.config_info(rec)
    fxml = etree.Element("make_source")
    sub(fxml, "id", str(object_id(m.creates["source_id"])))
    ctx.objects[m.creates["source_id"]] = PropObject(
        kind="source", data=None, record=rec, file_xml=fxml, t_srce=tuple(p["t_srce"]),
        j_decay=p["j_decay"], source_type=p["source_type"])
    return {"source_corr": timeslice_norm2(src)[0].tolist()}


def inline_propagator(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    gauge = ctx.gauge(m.reads["gauge_id"])
    src = ctx.prop(m.reads["source_id"])
    p = m.params
    env = ctx.env
    solver = CG(tol=p["rsd_cg"], max_iter=p["max_cg"])
    ctx.progress.say(f"  PROPAGATOR: {NS * NC} CG solves ({p['fermact']}, kappa "
                     f"{p['kappa']:g}, RsdCG {p['rsd_cg']:g}) ...")
    t0 = time.perf_counter()
    s, stats = point_propagator(
        gauge.u, p["kappa"], source=src.t_srce, c_sw=p["c_sw"],
        boundary=tuple(complex(b) for b in p["boundary"]), normalisation="chroma",
        solver=solver)
    its = [int(i) for i in stats.iterations_per_system.tolist()]
    res = [float(r) for r in stats.residuals.tolist()]
    ctx.progress.say(f"  PROPAGATOR: done, {sum(its)} CG iterations, "
                     f"{time.perf_counter() - t0:.2f} s")
    g = sub(out, "propagator")
    sub(g, "update_no", "0")
    program_info(g, env)
    par = etree.Element("Param")
    sub(par, "version", "9")  # qprop_io.cc writes ChromaProp_t as version 9
    sub(par, "quarkSpinType", "FULL")
    sub(par, "obsvP", bool_text(p["obsvP"]))
    par.append(copy_el(m.element.find("Param/FermionAction")))
    par.append(copy_el(m.element.find("Param/InvertParam")))
    ctx.named_input(g, m, par)
    gauge.config_info(g)
    sub(sub(g, "Output_version"), "out_version", "1")
    mesplq_group(g, "Observables", gauge.u)
    sub(g, "Source_file_info").append(copy.deepcopy(src.file_xml))
    sub(g, "Source_record_info").append(copy.deepcopy(src.record))
    src_data = src.tensor(env.nrow, env.device)
    sub(sub(g, "Source_correlator"), "source_corr", fmts(timeslice_norm2(src_data)[0]))
    qp = sub(g, "QuarkProp4")
    for c in range(NC):
        for sp in range(NS):
            r = sp * NC + c  # point_source: source index s * Nc + c
            e = sub(qp, "Qprop")
            sub(e, "color_source", str(c))
            sub(e, "spin_source", str(sp))
            sub(e, "n_count", str(its[r]))
            sub(e, "resid", fmt(res[r]))
    sub(sub(g, "Relaxation_Iterations"), "ncg_had", str(sum(its)))
    corr = timeslice_norm2(s)[0]
    sub(sub(g, "Prop_correlator"), "prop_corr", fmts(corr))
    rec = etree.Element("Propagator")
    sub(rec, "version", "1")
    fwd = sub(rec, "ForwardProp")
    for c in par:
        fwd.append(copy.deepcopy(c))
    rec.append(copy.deepcopy(src.record.find("PropSource")))
    gauge.config_info(rec)
    fxml = etree.Element("propagator")
    sub(fxml, "id", src.file_xml.findtext("id"))
    kappa = p["kappa"]
    mass = p.get("mass", 1.0 / (2.0 * kappa) - 4.0)
    fa = m.element.find("Param/FermionAction")
    if fa is not None and fa.find("Mass") is not None:
        mass = float(fa.findtext("Mass"))
    ctx.objects[m.creates["prop_id"]] = PropObject(
        kind="propagator", data=s, record=rec, file_xml=fxml, t_srce=src.t_srce,
        j_decay=src.j_decay, source_type=src.source_type, mass=mass,
        boundary=tuple(p["boundary"]))
    return {"prop_corr": corr.tolist(), "iterations": its}


def inline_sink_smear(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    gauge = ctx.gauge(m.reads["gauge_id"])
    prop = ctx.prop(m.reads["prop_id"])
    p = m.params
    g = sub(out, "sink_smear")
    sub(g, "update_no", "0")
    par = etree.Element("Param")
    sub(par, "version", str(p["version"]))
    par.append(copy_el(m.element.find("Param/Sink")))
    sub(par, "j_decay", str(p["j_decay"]))
    ctx.named_input(g, m, par)
    gauge.config_info(g)
    mesplq_group(g, "Observables", gauge.u)
    sub(g, "Prop_file_info").append(copy.deepcopy(prop.file_xml))
    sub(g, "Prop_record_info").append(copy.deepcopy(prop.record))
    corr = timeslice_norm2(prop.data)[0]
    sub(sub(g, "Forward_prop_correlator"), "forward_prop_corr", fmts(corr))
    smeared = prop.data  # POINT_SINK: the propagator itself
    sub(sub(g, "SinkSmearedProp_correlator"), "sink_smeared_prop_corr",
        fmts(timeslice_norm2(smeared)[0]))
    rec = etree.Element("SinkSmear")
    sub(rec, "version", "1")
    psink = sub(rec, "PropSink")
    for c in par:
        psink.append(copy.deepcopy(c))
    rec.append(copy.deepcopy(prop.record.find("ForwardProp")))
    rec.append(copy.deepcopy(prop.record.find("PropSource")))
    gauge.config_info(rec)
    fxml = etree.Element("sink_smear")
    sub(fxml, "id", prop.file_xml.findtext("id"))
    ctx.objects[m.creates["smeared_prop_id"]] = PropObject(
        kind="smeared_propagator", data=smeared, record=rec, file_xml=fxml,
        t_srce=prop.t_srce, j_decay=prop.j_decay, source_type=prop.source_type,
        sink_type=p["sink_type"], mass=prop.mass, boundary=prop.boundary)
    return {"sink_smeared_prop_corr": corr.tolist()}


def _sink_pair(ctx: InlineContext, m: Measurement, first_id: str, second_id: str
               ) -> tuple[PropObject, PropObject]:
    """The two sink-smeared propagators of a ``HADRON_SPECTRUM`` pair; Chroma requires equal
    ``j_decay``, source time, source and sink types and time boundary."""
    p1, p2 = ctx.prop(first_id), ctx.prop(second_id)
    for what, a, b in (("j_decay", p1.j_decay, p2.j_decay),
                       ("t_source", p1.t_source, p2.t_source),
                       ("source type", p1.source_type, p2.source_type),
                       ("sink type", p1.sink_type, p2.sink_type),
                       ("time boundary", p1.boundary[p1.j_decay], p2.boundary[p2.j_decay])):
        if a != b:
            raise ConfigError(
                f"{ctx.inp.source}: {m.path}: sink pair {first_id!r}, {second_id!r}: "
                f"the {what} differs ({a} vs {b}); Chroma requires them equal")
    return p1, p2


def _zero_momentum(grp: etree._Element, num_tag: str, prop_tag: str, corr) -> None:
    """``<elem><{num_tag}>n</..><momenta><elem>`` sink momentum 0 and the correlator of channel
    ``n`` (``corr[n, t]``, complex) per channel."""
    for n in range(corr.shape[0]):
        ge = sub(grp, "elem")
        sub(ge, num_tag, str(n))
        mom = sub(sub(ge, "momenta"), "elem")
        sub(mom, "sink_mom_num", "0")
        sub(mom, "sink_mom", "0 0 0")
        complex_elems(sub(mom, prop_tag), corr[n].tolist())


def inline_hadron_spectrum(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    gauge = ctx.gauge(m.reads["gauge_id"])
    p = m.params
    g = sub(out, "hadspec")
    sub(g, "update_no", "0")
    program_info(g, ctx.env)
    par = etree.Element("Param")
    sub(par, "version", "1")
    for key in ("MesonP", "CurrentP", "BaryonP", "time_rev"):
        sub(par, key, bool_text(p[key]))
    sub(par, "mom2_max", str(p["mom2_max"]))
    sub(par, "avg_equiv_mom", bool_text(p["avg_equiv_mom"]))
    inp = ctx.named_input(g, m, par)
    sub(inp, "xml_file", "")
    gauge.config_info(g)
    sub(sub(g, "Output_version"), "out_version", "15")
    mesplq_group(g, "Observables", gauge.u)
    whm = sub(g, "Wilson_hadron_measurements")
    summary: dict[str, Any] = {}
    names = {"POINT_SOURCE": "Point", "POINT_SINK": "Point"}
    for first_id, second_id in p["sink_pairs"]:
        p1, p2 = _sink_pair(ctx, m, first_id, second_id)
        t0 = p1.t_source
        bc_spec = p1.boundary[p1.j_decay]
        e = sub(whm, "elem")
        sub(e, "Mass_1", fmt(p1.mass))
        sub(e, "Mass_2", fmt(p2.mass))
        sub(e, "t0", str(t0))
        hdr = sub(e, "Forward_prop_headers")
        for tag, pr in (("First_forward_prop", p1), ("Second_forward_prop", p2)):
            h = sub(hdr, tag)
            for c in pr.record:
                h.append(copy.deepcopy(c))
        fpc = sub(e, "Forward_prop_correlator")
        sub(fpc, "forward_prop_corr_1", fmts(timeslice_norm2(p1.data)[0]))
        sub(fpc, "forward_prop_corr_2", fmts(timeslice_norm2(p2.data)[0]))
        sst = sub(e, "SourceSinkType")
        for k, pr in ((1, p1), (2, p2)):
            sub(sst, f"source_type_{k}", pr.source_type)
            sub(sst, f"source_disp_type_{k}", "NONE")
            sub(sst, f"sink_type_{k}", pr.sink_type or "POINT_SINK")
            sub(sst, f"sink_disp_type_{k}", "NONE")
        group = f"{names[p1.source_type]}_{names[p1.sink_type or 'POINT_SINK']}"
        if p["MesonP"]:
            mes = meson_correlators(p1.data, p2.data, t0)[0]
            _zero_momentum(sub(e, f"{group}_Wilson_Mesons"), "gamma_value", "mesprop", mes)
            summary.setdefault("pion", mes[15].real.tolist())
        if p["BaryonP"]:
            bar = baryon_correlators(p2.data, p1.data, t0, bc_spec, p["time_rev"])[0]
            _zero_momentum(sub(e, f"{group}_Wilson_Baryons"), "baryon_num", "barprop", bar)
            summary.setdefault("nucleon", bar[0].real.tolist())
    return summary


HADRON_MEASUREMENTS = {
    "MAKE_SOURCE": inline_make_source,
    "PROPAGATOR": inline_propagator,
    "SINK_SMEAR": inline_sink_smear,
    "HADRON_SPECTRUM": inline_hadron_spectrum,
}
"""Measurement name -> ``fn(ctx, measurement, out_elem) -> summary``."""
