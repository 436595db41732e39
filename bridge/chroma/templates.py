"""Chroma input XML from templates: loading and rendering.

The template files live in the top-level ``xml_templates/`` (installed as
``bridge.xml_templates``).  Rendering loads them with lxml, sets element texts, clones elements
(monomials, integrator levels, measurements) and never formats XML as strings.  Every rendered
document is checked against :data:`bridge.chroma.schema.HMC_STRUCTURE` or
:data:`~bridge.chroma.schema.CHROMA_STRUCTURE` (the elements Chroma's readers require) before it
is written atomically (:func:`bridge.chroma.schema.write_checked`).  Parameters:
:mod:`bridge.chroma.params`.

``hmc``  (:class:`HMCParams`, :func:`render_hmc`)
    pure gauge, or Nf=2 Wilson/clover fermions with ``TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL``
    (Wilson), ``TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL`` (clover: its even-even determinant is
    not constant, and Chroma's constdet monomial would leave it out) or
    ``TWO_FLAVOR_UNPREC_FERM_MONOMIAL`` (``UNPRECONDITIONED_WILSON``/``UNPRECONDITIONED_CLOVER``);
    ``LCM_STS_LEAPFROG`` / ``LCM_STS_MIN_NORM_2`` with an optional nested gauge
    ``SubIntegrator``; ``UNIT``, ``WEAK_FIELD``, ``DISORDERED`` or ``SZINQIO`` start.
``chroma`` (:class:`MeasureParams`, :func:`render_measure`)
    ``PLAQUETTE``, ``POLYAKOV_LOOP``, the pion (``MAKE_SOURCE`` + ``PROPAGATOR`` + ``SINK_SMEAR``
    + ``HADRON_SPECTRUM``), ``WILSON_FLOW``, ``QTOP_NAIVE`` and ``QIO_WRITE_NAMED_OBJECT``.

The fermion monomial and the pion propagator solve with ``CG_INVERTER`` or one of Chroma's QUDA
solvers (:func:`render_quda_invert`, settings :mod:`bridge.chroma.quda`; docs/quda.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

from lxml import etree

from ..errors import ConfigError
from .names import QUDA_INVERTERS
from .params import HMCParams, MeasureParams
from .quda import QudaOptions
from .schema import check_structure

__all__ = ["TEMPLATE_FILES", "load_template", "render_hmc", "render_measure",
           "render_quda_invert"]

TEMPLATE_FILES = ("hmc.xml", "hmc_monomial_gauge.xml", "hmc_monomial_two_flavor.xml",
                  "hmc_integrator.xml", "chroma.xml", "meas_plaquette.xml", "meas_polyakov.xml",
                  "meas_pion.xml", "meas_wilson_flow.xml", "meas_qtop_naive.xml",
                  "meas_qio_write.xml", "invert_quda.xml", "invert_quda_multigrid.xml")



def _template_dir():
    """The installed ``bridge.xml_templates`` package; in a source tree that is not installed,
    the top-level ``xml_templates/`` folder beside ``bridge/``."""
    try:
        return resources.files("bridge.xml_templates")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parents[2] / "xml_templates"


def load_template(name: str) -> etree._Element:
    """A fresh copy of the root element of template ``name`` (one of :data:`TEMPLATE_FILES`),
    comments removed."""
    if name not in TEMPLATE_FILES:
        raise ConfigError(f"template {name!r}: expected one of {', '.join(TEMPLATE_FILES)}")
    data = _template_dir().joinpath(name).read_bytes()
    parser = etree.XMLParser(remove_blank_text=True, remove_comments=True)
    return etree.fromstring(data, parser)


def _num(x: float) -> str:
    return repr(float(x))


def _set(root: etree._Element, path: str, text: str) -> None:
    el = root.find(path)
    if el is None:  # a template was edited so that the renderer no longer fits it
        raise ConfigError(f"template <{root.tag}>: missing element {path}")
    el.text = text


def _fill_list(el: etree._Element, items: Sequence[str]) -> None:
    for c in list(el):
        el.remove(c)
    for item in items:
        etree.SubElement(el, "elem").text = item


def _insert_after(el: etree._Element, after: str, tag: str, text: str) -> None:
    new = etree.Element(tag)
    new.text = text
    el.find(after).addnext(new)


def _fermion_action(fa: etree._Element, fermact: str, kappa: float, csw: float | None,
                    boundary: Sequence[int]) -> None:
    _set(fa, "FermAct", fermact)
    _set(fa, "Kappa", _num(kappa))
    if csw is not None:
        _insert_after(fa, "Kappa", "clovCoeff", _num(csw))
    _set(fa, "FermionBC/boundary", " ".join(str(b) for b in boundary))


def _integrator_level(name: str, n_steps: int, ids: Sequence[str], lam: float | None,
                      tag: str = "Integrator") -> etree._Element:
    el = load_template("hmc_integrator.xml")
    el.tag = tag
    _set(el, "Name", name)
    _set(el, "n_steps", str(n_steps))
    _fill_list(el.find("monomial_ids"), ids)
    if lam is not None:
        _insert_after(el, "n_steps", "lambda", _num(lam))
    return el


def _words(values: Sequence[object]) -> str:
    return " ".join(str(v) for v in values)


def render_quda_invert(inverter: str, opts: QudaOptions, *, kappa: float, csw: float | None,
                       boundary: Sequence[int], rsd: float, max_iter: int) -> etree._Element:
    """The ``InvertParam`` of Chroma's QUDA solver ``inverter`` (a key of
    :data:`~bridge.chroma.names.QUDA_INVERTERS`; options validated by the caller): QUDA's copy
    of the action (``kappa``, ``csw`` for clover), ``AntiPeriodicT`` from the time ``boundary``,
    ``RsdTarget``/``MaxIter`` and the settings of ``opts``; multigrid inverters add
    ``MULTIGRIDParams`` (and ``SubspaceID`` for clover)."""
    inv_type = QUDA_INVERTERS[inverter]
    el = load_template("invert_quda.xml")
    _set(el, "invType", inv_type)
    act = el.find("CloverParams")
    _set(act, "Kappa", _num(kappa))
    if "CLOVER" in inv_type:
        _set(act, "clovCoeff", _num(csw))
    else:
        act.tag = "WilsonParams"
        act.remove(act.find("clovCoeff"))
    flag = {True: "true", False: "false"}
    for path, text in (("AntiPeriodicT", flag[boundary[3] == -1]), ("RsdTarget", _num(rsd)),
                       ("MaxIter", str(max_iter)), ("Delta", _num(opts.delta)),
                       ("SolverType", opts.solver(inv_type)),
                       ("AsymmetricLinop", flag[opts.asymmetric]),
                       ("CudaPrecision", opts.precision),
                       ("CudaSloppyPrecision", opts.sloppy_precision),
                       ("CudaReconstruct", opts.reconstruct),
                       ("CudaSloppyReconstruct", opts.sloppy_reconstruct),
                       ("RsdToleranceFactor", _num(opts.tolerance_factor)),
                       ("AutotuneDslash", flag[opts.autotune])):
        _set(el, path, text)
    if "MULTIGRID" in inv_type:
        if "CLOVER" in inv_type:
            etree.SubElement(el, "SubspaceID").text = opts.mg_subspace_id
        mg = load_template("invert_quda_multigrid.xml")
        _set(mg, "Precision", opts.mg_precision)
        _set(mg, "Reconstruct", opts.mg_reconstruct)
        _set(mg, "CycleType", opts.mg_cycle)
        _fill_list(mg.find("Blocking"), [_words(b) for b in opts.mg_blocking])
        _set(mg, "NullVectors", _words(opts.mg_null_vectors))
        _set(mg, "Pre-SmootherApplications", _words(opts.mg_pre_smooth))
        _set(mg, "Post-SmootherApplications", _words(opts.mg_post_smooth))
        el.append(mg)
    return el


def render_hmc(p: HMCParams, source: str = "hmc parameters") -> etree._Element:
    """The ``hmc`` input for ``p`` (validated first), checked against :data:`HMC_STRUCTURE`."""
    p.validate(source)
    root = load_template("hmc.xml")
    cfg_type, cfg_file = p.cfg
    _set(root, "MCControl/Cfg/cfg_type", cfg_type)
    _set(root, "MCControl/Cfg/cfg_file", cfg_file)
    _fill_list(root.find("MCControl/RNG/Seed"), [str(s) for s in p.seed])
    total = p.start_update + p.n_updates
    for path, value in (("StartUpdateNum", p.start_update), ("NWarmUpUpdates", p.n_warmup),
                        ("NProductionUpdates", total), ("NUpdatesThisRun", p.n_updates),
                        ("SaveInterval", p.save_interval), ("SavePrefix", p.prefix),
                        ("ReverseCheckFrequency", p.reverse_check_every)):
        _set(root, f"MCControl/{path}", str(value))
    if not p.polyakov:
        meas = root.find("MCControl/InlineMeasurements")
        meas.getparent().remove(meas)
    monomials = root.find("HMCTrj/Monomials")
    ids: list[str] = []
    f = p.fermion
    if f is not None:
        m = load_template("hmc_monomial_two_flavor.xml")
        _set(m, "Name", f.monomial_name)
        _set(m, "InvertParam/RsdCG", _num(f.rsd_cg))
        _set(m, "InvertParam/MaxCG", str(f.max_cg))
        if f.inverter != "cg":
            m.replace(m.find("InvertParam"), render_quda_invert(
                f.inverter, f.quda, kappa=f.kappa, csw=f.csw, boundary=f.boundary,
                rsd=f.rsd_cg, max_iter=f.max_cg))
        _fermion_action(m.find("FermionAction"), f.fermact, f.kappa, f.csw, f.boundary)
        _set(m, "ChronologicalPredictor/Name", f.predictor)
        _set(m, "NamedObject/monomial_id", f.monomial_id)
        monomials.append(m)
        ids.append(f.monomial_id)
    g = load_template("hmc_monomial_gauge.xml")
    _set(g, "GaugeAction/beta", _num(p.gauge.beta))
    _set(g, "NamedObject/monomial_id", p.gauge.monomial_id)
    monomials.append(g)
    ids.append(p.gauge.monomial_id)
    _fill_list(root.find("HMCTrj/Hamiltonian/monomial_ids"), ids)
    it = p.integrator
    md = root.find("HMCTrj/MDIntegrator")
    _set(md, "tau0", _num(it.tau0))
    if it.gauge_steps is None:
        top = _integrator_level(it.name, it.n_steps, ids, it.lam)
    else:
        top = _integrator_level(it.name, it.n_steps, ids[:-1], it.lam)
        top.append(_integrator_level(it.name, it.gauge_steps, ids[-1:], it.lam,
                                     tag="SubIntegrator"))
    md.replace(md.find("Integrator"), top)
    _set(root, "HMCTrj/nrow", " ".join(map(str, p.nrow)))
    check_structure(root, source)
    return root


def _meas(name: str, gauge_id: str | None = None) -> etree._Element:
    el = load_template(name)
    if gauge_id is not None:
        _set(el, "NamedObject/gauge_id", gauge_id)
    return el


def _qio_write(object_id: str, object_type: str, file_name: str) -> etree._Element:
    el = load_template("meas_qio_write.xml")
    _set(el, "NamedObject/object_id", object_id)
    _set(el, "NamedObject/object_type", object_type)
    _set(el, "File/file_name", file_name)
    return el


def render_measure(p: MeasureParams, source: str = "measure parameters") -> etree._Element:
    """The ``chroma`` input for ``p`` (validated first), checked against
    :data:`CHROMA_STRUCTURE`.  Order: plaquette, Polyakov loop, pion (+ propagator file), Wilson
    flow, plaquette of the flowed field, ``QTOP_NAIVE`` per k5, flowed-field file."""
    p.validate(source)
    root = load_template("chroma.xml")
    meas = root.find("Param/InlineMeasurements")
    default = "default_gauge_field"
    if p.plaquette:
        meas.append(_meas("meas_plaquette.xml"))
    if p.polyakov:
        meas.append(_meas("meas_polyakov.xml"))
    if p.pion is not None:
        pi = p.pion
        chain = load_template("meas_pion.xml")
        src, prop = chain[0], chain[1]
        _set(src, "Param/Source/t_srce", " ".join(map(str, pi.t_srce)))
        _fermion_action(prop.find("Param/FermionAction"), pi.fermion.upper(), pi.kappa, pi.csw,
                        pi.boundary)
        _set(prop, "Param/InvertParam/RsdCG", _num(pi.rsd_cg))
        _set(prop, "Param/InvertParam/MaxCG", str(pi.max_cg))
        if pi.inverter != "cg":
            par = prop.find("Param")
            par.replace(par.find("InvertParam"), render_quda_invert(
                pi.inverter, pi.quda, kappa=pi.kappa, csw=pi.csw, boundary=pi.boundary,
                rsd=pi.rsd_cg, max_iter=pi.max_cg))
        meas.extend(list(chain))
        if pi.save:
            meas.append(_qio_write(prop.findtext("NamedObject/prop_id"), "LatticePropagatorD",
                                   pi.save))
    gauge_for_glue = default
    if p.wilson_flow is not None:
        w = load_template("meas_wilson_flow.xml")
        _set(w, "Param/nstep", str(p.wilson_flow.nstep))
        _set(w, "Param/wtime", _num(p.wilson_flow.wtime))
        meas.append(w)
        gauge_for_glue = w.findtext("NamedObject/gauge_out")
        if p.plaquette:
            meas.append(_meas("meas_plaquette.xml", gauge_for_glue))
    for k5 in p.qtop:
        q = _meas("meas_qtop_naive.xml", gauge_for_glue)
        _set(q, "Param/k5", _num(k5))
        meas.append(q)
    if p.wilson_flow is not None and p.wilson_flow.save:
        meas.append(_qio_write(gauge_for_glue, "Multi1dLatticeColorMatrixD", p.wilson_flow.save))
    _set(root, "Param/nrow", " ".join(map(str, p.nrow)))
    _fill_list(root.find("RNG/Seed"), [str(s) for s in p.seed])
    cfg = root.find("Cfg")
    if p.cfg.lower() == "unit":
        _set(cfg, "cfg_type", "UNIT")
        _set(cfg, "cfg_file", "DUMMY")
    else:
        _set(cfg, "cfg_file", p.cfg)
    check_structure(root, source)
    return root
