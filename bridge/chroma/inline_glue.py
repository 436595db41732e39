"""The built-in ``chroma`` program's gauge measurements and named-object I/O: ``PLAQUETTE``,
``POLYAKOV_LOOP``, ``QACTDEN`` (``lib/meas/glue/qactden.cc``), ``QTOP_NAIVE``
(``lib/meas/glue/qnaive.cc``, :mod:`bridge.observables.qtop_naive`), ``WILSON_FLOW``
(``wilson_flow_w.cc``, :func:`bridge.observables.chroma_wilson_flow`),
``QIO_WRITE_NAMED_OBJECT`` and ``ERASE_NAMED_OBJECT``.  Each writes its group of Chroma's output
XML and returns a summary of its main numbers."""

from __future__ import annotations

import math

import torch
from lxml import etree

from ..errors import PhysicsError
from ..gauge import mesplq, plaquette_traces
from ..io.propagator import write_qio_propagator
from ..lattice import Lattice
from ..observables import energy_density_split, qtop_naive, rk3_step, topological_charge_density
from ..progress import Progress
from .measure_input import Measurement
from .named_objects import GaugeObject, InlineContext
from .xml_out import fmt, fmts, mesplq_group, plaquette_group, polyakov_group, program_info, sub

__all__ = ["GLUE_MEASUREMENTS"]

NC = 3


def inline_plaquette(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    u = ctx.gauge(m.reads["gauge_id"]).u
    plaquette_group(out, u, 0)
    return {"w_plaq": float(mesplq(u).w_plaq[0])}


def inline_polyakov(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    u = ctx.gauge(m.reads["gauge_id"]).u
    return {"poly_loop": polyakov_group(out, u, 0)}


def inline_qactden(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    """``qactden.cc``: per site ``lract = sum_{planes, 4 leaves} Re Tr(1 - L) / (4 (2 pi)^2)``
    and ``lrqtop`` = the clover charge density with the non-traceless ``mesField``."""
    u = ctx.gauge(m.reads["gauge_id"]).u
    lat = Lattice.of(u)
    tr = plaquette_traces(u)  # Re Tr P / Nc, [b, planes, *L]
    act = torch.zeros_like(tr[:, 0])
    for i, (mu, nu) in enumerate(lat.planes()):
        p = tr[:, i]
        pm = lat.shift(p, mu, -1)
        four = p + pm + lat.shift(p, nu, -1) + lat.shift(pm, nu, -1)
        act = act + NC * (4.0 - four)
    act = act / (4.0 * (2.0 * math.pi) ** 2)
    q = topological_charge_density(u, traceless=False)
    g = sub(out, "QActDen")
    sub(g, "update_no", "0")
    lx, ly, lz, _ = ctx.env.nrow
    for tag, dens in (("actionDensity", act), ("naiveTopCharge", q)):
        ol = sub(sub(g, tag), "OLattice")
        for site, val in enumerate(dens[0].flatten().tolist()):
            e = sub(ol, "elem", fmt(val))
            x, y = site % lx, (site // lx) % ly
            z, t = (site // (lx * ly)) % lz, site // (lx * ly * lz)
            e.set("site", str(site))
            e.set("coord", f"{x} {y} {z} {t}")
    return {"Q": float(q.sum())}


def inline_qtop_naive(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    u = ctx.gauge(m.reads["gauge_id"]).u
    k5 = m.params["k5"]
    q = float(qtop_naive(u, k5)[0])
    g = sub(out, "QTop")
    sub(g, "update_no", "0")
    sub(g, "k5", fmt(k5))
    sub(g, "qtop", fmt(q))
    return {"k5": k5, "qtop": q}


def inline_wilson_flow(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    """``WILSON_FLOW``: ``nstep`` RK3 steps of ``eps = wtime / nstep`` and Chroma's
    ``measure_wilson_gauge`` before the first and after every step -- the loop of
    :func:`bridge.observables.chroma_wilson_flow`, here with a progress line."""
    gauge = ctx.gauge(m.reads["gauge_in"])
    p = m.params
    nstep, wtime, t_dir = p["nstep"], p["wtime"], p["t_dir"]
    eps = wtime / nstep
    u = gauge.u
    g4, gs = [], []
    bar = Progress(nstep, label="  WILSON_FLOW step", unit="step",
                   enabled=ctx.progress.enabled, stream=ctx.progress.stream)
    for k in range(nstep + 1):
        if k:
            u = rk3_step(u, eps)
        a, b = energy_density_split(u, t_dir=t_dir, traceless=False)
        g4.append(float(a[0]))
        gs.append(float(b[0]))
        if k:
            bar.update(k, f"t = {k * eps:.4g}  E = {g4[-1] + gs[-1]:.6g}")
    bar.close()
    if not bool(torch.isfinite(torch.view_as_real(u)).all()):
        raise PhysicsError(f"{ctx.inp.source}: {m.path}: the flowed field became NaN/Inf "
                           f"by flow time {wtime:g}")
    steps = (torch.arange(nstep + 1, dtype=torch.float64) * eps).tolist()
    g = sub(out, "WilsonFlow")
    sub(g, "update_no", "0")
    program_info(g, ctx.env)
    sub(sub(g, "Output_version"), "out_version", "1")
    par = etree.Element("Param")
    sub(par, "version", str(p["version"]))
    sub(par, "nstep", str(nstep))
    sub(par, "wtime", fmt(wtime))
    sub(par, "t_dir", str(t_dir))
    if "smear_dirs" in p:
        sub(par, "smear_dirs", " ".join(map(str, p["smear_dirs"])))
    ctx.named_input(g, m, par)
    gauge.config_info(sub(g, "GaugeFieldInfo"))
    mesplq_group(g, "GaugeObservables", gauge.u)
    res = sub(g, "wilson_flow_results")
    sub(res, "wflow_step", fmts(steps))
    sub(res, "wflow_gact4i", fmts(g4))
    sub(res, "wflow_gactij", fmts(gs))
    mesplq_group(g, "WilsonFlowGaugeObservables", u)
    ctx.objects[m.creates["gauge_out"]] = GaugeObject(u, gauge.file_xml, gauge.record_xml)
    e_end = g4[-1] + gs[-1]
    return {"wflow_step": steps, "wflow_gact4i": g4, "wflow_gactij": gs,
            "t2E": steps[-1] ** 2 * e_end}


def inline_qio_write(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    from ..io.ildg import write_ildg

    oid = m.reads["object_id"]
    obj = ctx.objects[oid]
    name = m.params["file_name"]
    prec = m.params["precision"]
    if isinstance(obj, GaugeObject):
        write_ildg(name, obj.u.cpu(), precision=prec, file_xml=obj.file_xml,
                   record_xml=obj.record_xml, overwrite=True)
    else:
        data = obj.tensor(ctx.env.nrow, ctx.env.device)
        write_qio_propagator(
            name, data, precision=prec,
            file_xml=etree.tostring(obj.file_xml, xml_declaration=True,
                                    encoding="UTF-8").decode(),
            record_xml=etree.tostring(obj.record, xml_declaration=True,
                                      encoding="UTF-8").decode())
    ctx.files.append(name)
    ctx.progress.say(f"  wrote {name}")
    g = sub(out, "qio_write_named_obj")
    sub(g, "update_no", "0")
    sub(g, "object_id", oid)
    return {"file": name}


def inline_erase(ctx: InlineContext, m: Measurement, out: etree._Element) -> dict:
    oid = m.reads["object_id"]
    ctx.objects.pop(oid, None)
    g = sub(out, "erase_named_obj")
    sub(g, "update_no", "0")
    sub(g, "object_id", oid)
    return {}


GLUE_MEASUREMENTS = {
    "PLAQUETTE": inline_plaquette,
    "POLYAKOV_LOOP": inline_polyakov,
    "QACTDEN": inline_qactden,
    "QTOP_NAIVE": inline_qtop_naive,
    "WILSON_FLOW": inline_wilson_flow,
    "QIO_WRITE_NAMED_OBJECT": inline_qio_write,
    "ERASE_NAMED_OBJECT": inline_erase,
}
"""Measurement name -> ``fn(ctx, measurement, out_elem) -> summary``."""
