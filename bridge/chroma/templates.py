"""Chroma input XML from templates: typed parameters, validation, rendering, structural check.

The template files live in the top-level ``xml_templates/`` (installed as ``bridge.xml_templates``).  Rendering loads them with
lxml, sets element texts, clones elements (monomials, integrator levels, measurements) and never
formats XML as strings.  Every rendered document is checked against :data:`HMC_STRUCTURE` or
:data:`CHROMA_STRUCTURE` -- a description of the elements Chroma's readers require, written from
Chroma's source (``mainprogs/main/hmc.cc``, ``mainprogs/main/chroma.cc``,
``lib/update/molecdyn/**``, ``lib/meas/inline/**``, ``lib/util/gauge/*_gauge_init.cc``; the facts
are collected in ``docs/formats.md`` section 4) -- before it is written atomically with
:func:`bridge.chroma.hmc_input.write_xml`.

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
"""

from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .hmc_input import write_xml

__all__ = [
    "GaugeParams",
    "FermionParams",
    "IntegratorParams",
    "HMCParams",
    "PionParams",
    "FlowParams",
    "MeasureParams",
    "TEMPLATE_FILES",
    "HMC_STRUCTURE",
    "CHROMA_STRUCTURE",
    "load_template",
    "render_hmc",
    "render_measure",
    "structure_problems",
    "check_structure",
    "write_checked",
    "hmc_params_from_dict",
    "measure_params_from_dict",
    "params_to_dict",
]

# -- facts from Chroma's source (docs/formats.md section 4) -----------------------------------
CFG_TYPES = ("UNIT", "DISORDERED", "WEAK_FIELD", "SZINQIO", "SCIDAC", "NERSC", "MILC", "SZIN",
             "KYU", "CPPACS", "CERN", "CLASSICAL_SF", "WUPP")
"""``Cfg/cfg_type`` values registered in ``gauge_init_aggregate.cc`` (there is no ``ILDG``)."""
VOLFMTS = ("SINGLEFILE", "MULTIFILE", "PARTFILE")
TWO_FLAVOR_MONOMIALS = ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL",
                        "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL",
                        "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL",
                        "TWO_FLAVOR_SEOPREC_CONSTDET_FERM_MONOMIAL")
MONOMIALS = ("GAUGE_MONOMIAL", *TWO_FLAVOR_MONOMIALS,
             "ONE_FLAVOR_UNPREC_FERM_RAT_MONOMIAL", "ONE_FLAVOR_EOPREC_CONSTDET_FERM_RAT_MONOMIAL",
             "ONE_FLAVOR_EOPREC_LOGDET_FERM_RAT_MONOMIAL",
             "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL", "N_FLAVOR_LOGDET_DIAG_FERM_MONOMIAL")
INTEGRATORS = ("LCM_STS_LEAPFROG", "LCM_TST_LEAPFROG", "LCM_STS_MIN_NORM_2", "LCM_TST_MIN_NORM_2",
               "LCM_STS_FORCE_GRAD", "LCM_4MN4FP", "LCM_4MN5FP", "LCM_4MN5FV",
               "LCM_CREUTZ_GOCKSCH_4", "LCM_EXP_S", "LCM_EXP_T", "LCM_EXP_S_DTAU",
               "LCM_EXP_T_DTAU")
EO_FERMACTS = ("WILSON", "CLOVER")
"""Even-odd preconditioned Wilson-type actions (Chroma's ``WILSON`` *is* the eo-prec one)."""
UNPREC_FERMACTS = ("UNPRECONDITIONED_WILSON", "UNPRECONDITIONED_CLOVER")
FERMACTS = (*EO_FERMACTS, *UNPREC_FERMACTS, "SEOPREC_CLOVER", "PARWILSON",
            "UNPRECONDITIONED_PARWILSON")
GAUGE_ACTIONS = ("WILSON_GAUGEACT", "ANISO_SYM_SPATIAL_GAUGEACT", "ANISO_SYM_TEMPORAL_GAUGEACT",
                 "LW_TREE_GAUGEACT", "LW_TADPOLE_GAUGEACT", "RG_GAUGEACT")
INVERTERS = ("CG_INVERTER", "BICGSTAB_INVERTER", "QUDA_WILSON_INVERTER", "QUDA_CLOVER_INVERTER",
             "QUDA_MULTIGRID_WILSON_INVERTER", "QUDA_MULTIGRID_CLOVER_INVERTER")
PREDICTORS = ("NULL_4D_PREDICTOR", "ZERO_GUESS_4D_PREDICTOR", "LAST_SOLUTION_4D_PREDICTOR",
              "MRE_INITCG_4D_PREDICTOR", "QUDA_4D_PREDICTOR")
MEASUREMENTS = ("PLAQUETTE", "POLYAKOV_LOOP", "QACTDEN", "QTOP_NAIVE", "MAKE_SOURCE",
                "PROPAGATOR", "SINK_SMEAR", "HADRON_SPECTRUM", "MESON_SPECTRUM", "WILSON_FLOW",
                "LINK_SMEAR", "QIO_WRITE_NAMED_OBJECT", "QIO_READ_NAMED_OBJECT",
                "NERSC_WRITE_NAMED_OBJECT", "NERSC_READ_NAMED_OBJECT", "ERASE_NAMED_OBJECT")
OBJECT_TYPES = ("Multi1dLatticeColorMatrix", "Multi1dLatticeColorMatrixF",
                "Multi1dLatticeColorMatrixD", "LatticePropagator", "LatticePropagatorF",
                "LatticePropagatorD")
MIN_NORM_2_LAMBDA = 0.1931833275037836
"""Chroma's default ``lambda`` of the 2MN (Omelyan) integrator."""

TEMPLATE_FILES = ("hmc.xml", "hmc_monomial_gauge.xml", "hmc_monomial_two_flavor.xml",
                  "hmc_integrator.xml", "chroma.xml", "meas_plaquette.xml", "meas_polyakov.xml",
                  "meas_pion.xml", "meas_wilson_flow.xml", "meas_qtop_naive.xml",
                  "meas_qio_write.xml")


# == structural description ====================================================================
@dataclass(frozen=True)
class Node:
    """What Chroma's reader requires of one element.

    ``kind``: ``group`` (children), ``list`` (``<elem>`` children, each ``item``), ``text``,
    ``int``, ``real``, ``bool`` or ``ints`` (space-separated, ``count`` of them when given).
    ``choices``: allowed texts.  ``children``: name -> (node, required).  A keyed group (Chroma's
    factories) names its key child in ``key``; ``variants`` maps a key value to the extra
    children it reads; a key value in ``choices`` without a variant is a Chroma object this
    description does not detail, whose other children are accepted unchecked.
    ``one_of``: tuples of child names of which exactly one must be present.  ``check``: extra
    consistency rule returning problems for an element.
    """

    kind: str = "group"
    children: Mapping[str, tuple[Node, bool]] = field(default_factory=dict)
    choices: tuple[str, ...] | None = None
    item: Node | None = None
    key: str | None = None
    variants: Mapping[str, Mapping[str, tuple[Node, bool]]] = field(default_factory=dict)
    one_of: tuple[tuple[str, ...], ...] = ()
    count: int | None = None
    open: bool = False
    check: Callable[[etree._Element, str], list[str]] | None = None


TEXT, INT, REAL, BOOL = Node("text"), Node("int"), Node("real"), Node("bool")
OPEN = Node("group", open=True)


def _ints(n: int | None = None) -> Node:
    return Node("ints", count=n)


def _choice(*values: str) -> Node:
    return Node("text", choices=values)


def _req(node: Node) -> tuple[Node, bool]:
    return (node, True)


def _opt(node: Node) -> tuple[Node, bool]:
    return (node, False)


def _group(**children: tuple[Node, bool]) -> Node:
    return Node("group", children=children)


def _list(item: Node) -> Node:
    return Node("list", item=item)


def _keyed(key: str, choices: Sequence[str], common: Mapping[str, tuple[Node, bool]],
           variants: Mapping[str, Mapping[str, tuple[Node, bool]]], **kw: Any) -> Node:
    return Node("group", children={key: _req(_choice(*choices)), **common}, key=key,
                choices=tuple(choices), variants=variants, **kw)


_SEED = _group(Seed=_req(_list(INT)))
_ANISO = _group(anisoP=_req(BOOL), t_dir=_opt(INT), xi_0=_opt(REAL), nu=_opt(REAL))
_FILE_CFG = {"cfg_file": _req(TEXT), "parallel_io": _opt(BOOL), "ParallelIO": _opt(BOOL),
             "reunit": _opt(BOOL)}
_DUMMY_CFG = {"cfg_file": _opt(TEXT)}
CFG = _keyed("cfg_type", CFG_TYPES, {}, {
    "UNIT": _DUMMY_CFG, "DISORDERED": _DUMMY_CFG, "WEAK_FIELD": _DUMMY_CFG,
    "SZINQIO": _FILE_CFG, "SCIDAC": _FILE_CFG,
})
_FERMBC = _keyed("FermBC", ("SIMPLE_FERMBC", "SCHROEDINGER_NONPERT_FERMBC"), {},
                 {"SIMPLE_FERMBC": {"boundary": _req(_ints(4))}})
_WILSON_PARAMS = {"Kappa": _opt(REAL), "Mass": _opt(REAL), "AnisoParam": _opt(_ANISO),
                  "FermionBC": _opt(_FERMBC), "FermState": _opt(OPEN)}
_CLOVER_PARAMS = {**_WILSON_PARAMS, "clovCoeff": _opt(REAL), "clovCoeffR": _opt(REAL),
                  "clovCoeffT": _opt(REAL)}


def _fermact_check(el: etree._Element, path: str) -> list[str]:
    """``Kappa`` xor ``Mass``; clover: ``clovCoeff`` or ``clovCoeffR``/``clovCoeffT``; a
    ``FermionBC`` directly or inside ``FermState`` (``wilson_fermact_params_w.cc``,
    ``clover_fermact_params_w.cc``)."""
    act = (el.findtext("FermAct") or "").strip()
    if act not in (*EO_FERMACTS, *UNPREC_FERMACTS):
        return []
    out = []
    if (el.find("Kappa") is None) == (el.find("Mass") is None):
        out.append(f"{path}: expected exactly one of Kappa or Mass")
    if "CLOVER" in act and el.find("clovCoeff") is None and (
            el.find("clovCoeffR") is None or el.find("clovCoeffT") is None):
        out.append(f"{path}: the {act} action needs clovCoeff (or clovCoeffR and clovCoeffT)")
    if el.find("FermionBC") is None and el.find("FermState/FermionBC") is None:
        out.append(f"{path}: missing required element {path}/FermionBC")
    return out


FERMACT = _keyed("FermAct", FERMACTS, {}, {
    "WILSON": _WILSON_PARAMS, "UNPRECONDITIONED_WILSON": _WILSON_PARAMS,
    "CLOVER": _CLOVER_PARAMS, "UNPRECONDITIONED_CLOVER": _CLOVER_PARAMS,
}, check=_fermact_check)
_CG = {"RsdCG": _req(REAL), "MaxCG": _req(INT), "RsdCGRestart": _opt(REAL),
       "MaxCGRestart": _opt(INT), "MinCG": _opt(INT)}
INVERT = _keyed("invType", INVERTERS, {}, {"CG_INVERTER": _CG})
_NAMED_MONOMIAL = {"NamedObject": _req(_group(monomial_id=_req(TEXT)))}
_GAUGEACT = _keyed("Name", GAUGE_ACTIONS, {}, {"WILSON_GAUGEACT": {
    "beta": _req(REAL), "AnisoParam": _opt(_ANISO),
    "GaugeBC": _opt(_keyed("Name", ("PERIODIC_GAUGEBC", "SCHROEDINGER_1LINK_GAUGEBC",
                                    "SCHROEDINGER_2LINK_GAUGEBC"), {},
                           {"PERIODIC_GAUGEBC": {}})),
    "GaugeState": _opt(OPEN)}})
_TWO_FLAVOR = {"InvertParam": _req(INVERT), "FermionAction": _req(FERMACT),
               "ChronologicalPredictor": _opt(_keyed("Name", PREDICTORS, {}, {})),
               **_NAMED_MONOMIAL}


def _monomial_check(el: etree._Element, path: str) -> list[str]:
    """Chroma casts the fermion action to the kind the monomial needs (and aborts otherwise):
    the unpreconditioned monomial an ``UNPRECONDITIONED_*`` action, the eo-prec ones
    ``WILSON``/``CLOVER`` (``eoprec_constdet_two_flavor_monomial_w.cc``: a cast to
    ``EvenOddPrecWilsonTypeFermAct``, which the clover action passes; see :func:`_hmc_check`
    for the clover determinant)."""
    name = (el.findtext("Name") or "").strip()
    act = (el.findtext("FermionAction/FermAct") or "").strip()
    where = f"{path}/FermionAction/FermAct"
    if name == "TWO_FLAVOR_UNPREC_FERM_MONOMIAL" and act in EO_FERMACTS:
        return [f"{where}: {name} needs an unpreconditioned action "
                f"({' or '.join(UNPREC_FERMACTS)}), got {act!r}"]
    if "_EOPREC_" in name and act in UNPREC_FERMACTS:
        return [f"{where}: {name} needs an even-odd preconditioned action "
                f"({' or '.join(EO_FERMACTS)}), got {act!r}"]
    return []


MONOMIAL = _keyed("Name", MONOMIALS, {}, {
    "GAUGE_MONOMIAL": {"GaugeAction": _req(_GAUGEACT), **_NAMED_MONOMIAL},
    **{m: _TWO_FLAVOR for m in TWO_FLAVOR_MONOMIALS},
    "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL": {  # eoprec_logdet_ee_monomial_w.cc
        "FermionAction": _req(FERMACT), "num_flavors": _req(INT), **_NAMED_MONOMIAL},
}, check=_monomial_check)


def _integrator(depth: int) -> Node:
    common: dict[str, tuple[Node, bool]] = {"n_steps": _req(INT),
                                            "monomial_ids": _req(_list(TEXT))}
    if depth:
        common["SubIntegrator"] = _opt(_integrator(depth - 1))
    mn2 = {"lambda": _opt(REAL)}
    return _keyed("Name", INTEGRATORS, common, {
        "LCM_STS_LEAPFROG": {}, "LCM_TST_LEAPFROG": {},
        "LCM_STS_MIN_NORM_2": mn2, "LCM_TST_MIN_NORM_2": mn2,
    })


INTEGRATOR = _integrator(6)
_GAUGE_ID = _group(gauge_id=_req(TEXT))
_VERSION_ONLY = _group(version=_req(INT), GaugeState=_opt(OPEN))
_DISPLACEMENT = _opt(OPEN)
MEASUREMENT = _keyed("Name", MEASUREMENTS, {"Frequency": _opt(INT), "xml_file": _opt(TEXT)}, {
    "PLAQUETTE": {"Param": _opt(_VERSION_ONLY), "NamedObject": _req(_GAUGE_ID)},
    "POLYAKOV_LOOP": {"Param": _opt(_VERSION_ONLY), "NamedObject": _req(_GAUGE_ID)},
    "QACTDEN": {"Param": _opt(_VERSION_ONLY), "NamedObject": _req(_GAUGE_ID)},
    "QTOP_NAIVE": {"Param": _req(_group(version=_req(INT), k5=_req(REAL))),
                   "NamedObject": _req(_GAUGE_ID)},
    "MAKE_SOURCE": {
        "Param": _req(_group(version=_req(INT), Source=_req(_keyed(
            "SourceType", ("POINT_SOURCE", "SHELL_SOURCE", "WALL_SOURCE", "RAND_ZN_SOURCE"),
            {"version": _req(INT), "j_decay": _req(INT), "Displacement": _DISPLACEMENT,
             "SmearingParam": _opt(OPEN), "LinkSmearing": _opt(OPEN)},
            {"POINT_SOURCE": {"t_srce": _req(_ints(4))},
             "SHELL_SOURCE": {"t_srce": _req(_ints(4)), "quark_smear_lastP": _opt(BOOL)}})))),
        "NamedObject": _req(_group(gauge_id=_req(TEXT), source_id=_req(TEXT)))},
    "PROPAGATOR": {
        "Param": _req(_group(version=_req(INT), quarkSpinType=_opt(_choice("FULL", "NONREL",
                                                                           "UPPER", "LOWER")),
                             obsvP=_opt(BOOL), numRetries=_opt(INT),
                             FermionAction=_req(FERMACT), InvertParam=_req(INVERT))),
        "NamedObject": _req(_group(gauge_id=_req(TEXT), source_id=_req(TEXT),
                                   prop_id=_req(TEXT)))},
    "SINK_SMEAR": {
        "Param": _req(_group(version=_req(INT), Sink=_req(_keyed(
            "SinkType", ("POINT_SINK", "SHELL_SINK", "WALL_SINK"),
            {"version": _req(INT), "j_decay": _req(INT), "Displacement": _DISPLACEMENT,
             "SmearingParam": _opt(OPEN), "LinkSmearing": _opt(OPEN)},
            {"POINT_SINK": {}})))),
        "NamedObject": _req(_group(gauge_id=_req(TEXT), prop_id=_req(TEXT),
                                   smeared_prop_id=_req(TEXT)))},
    "HADRON_SPECTRUM": {
        "Param": _req(_group(version=_req(INT), MesonP=_req(BOOL), CurrentP=_req(BOOL),
                             BaryonP=_req(BOOL), time_rev=_req(BOOL), mom2_max=_req(INT),
                             avg_equiv_mom=_req(BOOL))),
        "NamedObject": _req(_group(gauge_id=_req(TEXT), sink_pairs=_req(_list(_group(
            first_id=_req(TEXT), second_id=_req(TEXT))))))},
    "WILSON_FLOW": {
        "Param": _req(_group(version=_req(INT), nstep=_req(INT), wtime=_req(REAL),
                             t_dir=_req(INT), smear_dirs=_opt(_ints(4)))),
        "NamedObject": _req(_group(gauge_in=_req(TEXT), gauge_out=_req(TEXT)))},
    "QIO_WRITE_NAMED_OBJECT": {
        "NamedObject": _req(_group(object_id=_req(TEXT),
                                   object_type=_req(_choice(*OBJECT_TYPES)))),
        "File": _req(_group(file_name=_req(TEXT), file_volfmt=_req(_choice(*VOLFMTS)),
                            parallel_io=_opt(BOOL)))},
    "ERASE_NAMED_OBJECT": {"NamedObject": _req(_group(object_id=_req(TEXT)))},
})


def _clover_det_check(el: etree._Element, path: str) -> list[str]:
    """``TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL`` with ``CLOVER``: Chroma runs it, but the
    monomial leaves out ``det(A_ee)^2`` of the clover term (it depends on the links), so the
    Hamiltonian must also hold an ``N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL`` (as in Chroma's
    ``tests/hmc/hmc.eoprec_clover.mgproto.ini.xml``); otherwise another distribution than Nf=2
    clover is sampled."""
    monomials = el.findall("HMCTrj/Monomials/elem")
    ham = {(e.text or "").strip() for e in el.findall("HMCTrj/Hamiltonian/monomial_ids/elem")}

    def used(m: etree._Element) -> bool:
        return (m.findtext("NamedObject/monomial_id") or "").strip() in ham

    if any(used(m) and (m.findtext("Name") or "").strip()
           == "N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL" for m in monomials):
        return []
    return [f"{path}/HMCTrj/Monomials/elem[{i}]: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with "
            f"FermAct CLOVER leaves out det(A_ee) of the clover term (Chroma runs it, but "
            f"samples another distribution than Nf=2 clover); use "
            f"TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL, or add an "
            f"N_FLAVOR_LOGDET_EVEN_EVEN_FERM_MONOMIAL with the same action to the Hamiltonian"
            for i, m in enumerate(monomials)
            if used(m) and (m.findtext("Name") or "").strip()
            == "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"
            and (m.findtext("FermionAction/FermAct") or "").strip() == "CLOVER"]


def _hmc_check(el: etree._Element, path: str) -> list[str]:
    """Monomial ids: unique; the Hamiltonian and every integrator level use only defined ids;
    the clover determinant is complete (:func:`_clover_det_check`)."""
    out = _clover_det_check(el, path)
    ids = [(e.findtext("NamedObject/monomial_id") or "").strip()
           for e in el.findall("HMCTrj/Monomials/elem")]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        out.append(f"{path}/HMCTrj/Monomials: duplicate monomial_id {', '.join(dup)}")
    refs = [("HMCTrj/Hamiltonian/monomial_ids", el.find("HMCTrj/Hamiltonian/monomial_ids"))]
    level = el.find("HMCTrj/MDIntegrator/Integrator")
    lpath = "HMCTrj/MDIntegrator/Integrator"
    while level is not None:
        refs.append((f"{lpath}/monomial_ids", level.find("monomial_ids")))
        level, lpath = level.find("SubIntegrator"), f"{lpath}/SubIntegrator"
    for where, group in refs:
        for e in [] if group is None else group.findall("elem"):
            mid = (e.text or "").strip()
            if mid not in ids:
                out.append(f"{path}/{where}: unknown monomial id {mid!r} (defined: "
                           f"{', '.join(ids) or 'none'})")
    return out


HMC_STRUCTURE = Node("group", children={
    "annotation": _opt(OPEN),
    "MCControl": _req(_group(
        Cfg=_req(CFG), RNG=_req(_SEED), StartUpdateNum=_req(INT), NWarmUpUpdates=_req(INT),
        NProductionUpdates=_req(INT), NUpdatesThisRun=_req(INT), SaveInterval=_req(INT),
        SavePrefix=_req(TEXT), SaveVolfmt=_req(_choice(*VOLFMTS)), parallel_io=_opt(BOOL),
        ParallelIO=_opt(BOOL), ReproCheckP=_opt(BOOL), ReproCheckFrequency=_opt(INT),
        ReverseCheckP=_opt(BOOL), ReverseCheckFrequency=_opt(INT), MonitorForces=_opt(BOOL),
        InlineMeasurements=_opt(_list(MEASUREMENT)))),
    "HMCTrj": _req(_group(
        nrow=_req(_ints(4)), Monomials=_req(_list(MONOMIAL)),
        Hamiltonian=_req(_group(monomial_ids=_req(_list(TEXT)))),
        MDIntegrator=_req(_group(tau0=_req(REAL), Integrator=_req(INTEGRATOR),
                                 copyList=_opt(OPEN), anisoP=_opt(BOOL), t_dir=_opt(INT),
                                 xi_mom=_opt(REAL))))),
}, check=_hmc_check)
"""Chroma ``hmc`` input, root ``/Params`` (``hmc.cc: read(..., MCControl&)``, ``HMCTrj``)."""

CHROMA_STRUCTURE = Node("group", children={
    "annotation": _opt(OPEN),
    "Param": _req(_group(nrow=_req(_ints(4)), InlineMeasurements=_req(_list(MEASUREMENT)))),
    "RNG": _opt(_SEED),
    "Cfg": _req(CFG),
})
"""Chroma ``chroma`` input, root ``/chroma`` (``chroma.cc``)."""

_ROOTS = {"Params": ("hmc", HMC_STRUCTURE), "chroma": ("chroma", CHROMA_STRUCTURE)}


def _value_problem(node: Node, el: etree._Element, path: str) -> str | None:
    text = (el.text or "").strip()
    if len(el) and node.kind != "group":
        return f"{path}: expected a {node.kind} value, got child elements"
    if node.choices is not None and node.kind == "text" and text not in node.choices:
        return f"{path}: {text!r} is not one of Chroma's names {', '.join(node.choices)}"
    try:
        if node.kind == "int":
            int(text)
        elif node.kind == "real":
            float(text)
        elif node.kind == "ints":
            vals = [int(v) for v in text.split()]
            if node.count is not None and len(vals) != node.count:
                return f"{path}: expected {node.count} integers, got {len(vals)} ({text!r})"
    except ValueError:
        what = {"int": "an integer", "real": "a number", "ints": "integers"}[node.kind]
        return f"{path}: expected {what}, got {text!r}"
    if node.kind == "bool" and text not in ("true", "false"):
        return f"{path}: expected true or false, got {text!r}"
    return None


def _walk(node: Node, el: etree._Element, path: str, strict: bool, out: list[str]) -> None:
    if node.kind == "list":
        for i, e in enumerate(c for c in el if isinstance(c.tag, str)):
            if e.tag != "elem":
                out.append(f"{path}/{e.tag}: expected <elem> items in this list")
                continue
            _walk(node.item or TEXT, e, f"{path}/elem[{i}]", strict, out)
        return
    if node.kind != "group":
        problem = _value_problem(node, el, path)
        if problem:
            out.append(problem)
        return
    children = dict(node.children)
    is_open = node.open
    if node.key is not None:
        key_el = el.find(node.key)
        value = (key_el.text or "").strip() if key_el is not None else None
        if value is not None and value in node.variants:
            children.update(node.variants[value])
        elif value is not None:
            # a Chroma object whose parameters are not described here, or a wrong key (reported
            # once, at the key, not again for every parameter of the object)
            is_open = True
    present = [c for c in el if isinstance(c.tag, str)]
    for name, (child, required) in children.items():
        found = [c for c in present if c.tag == name]
        if not found:
            if required:
                out.append(f"missing required element {path}/{name}")
            continue
        if len(found) > 1:
            out.append(f"{path}/{name}: appears {len(found)} times, expected once")
        if not strict and name == node.key:
            continue  # lenient: an object name this description does not list is accepted
        _walk(child, found[0], f"{path}/{name}", strict, out)
    for names in node.one_of:
        if sum(el.find(n) is not None for n in names) != 1:
            out.append(f"{path}: expected exactly one of {' or '.join(names)}")
    if strict and not is_open:
        for c in present:
            if c.tag not in children:
                out.append(f"{path}/{c.tag}: element not read by Chroma here (expected one "
                           f"of {', '.join(children) or 'no children'})")
    if node.check is not None:
        out.extend(node.check(el, path))


def structure_problems(root: etree._Element | etree._ElementTree, *,
                       strict: bool = True) -> list[str]:
    """Problems of a Chroma ``hmc`` (root ``<Params>``) or ``chroma`` (root ``<chroma>``)
    input against :data:`HMC_STRUCTURE` / :data:`CHROMA_STRUCTURE`, each naming the element
    path.  ``strict``: elements Chroma does not read at their place are problems too (Chroma
    itself ignores them, which hides typos), and so are object names (``invType``, ``FermAct``,
    ``Name``, ...) this description does not list; without it both are accepted."""
    if isinstance(root, etree._ElementTree):
        root = root.getroot()
    if root.tag not in _ROOTS:
        return [f"/{root.tag}: expected root <Params> (hmc input) or <chroma> (chroma input)"]
    out: list[str] = []
    _walk(_ROOTS[root.tag][1], root, f"/{root.tag}", strict, out)
    return out


def check_structure(root: etree._Element | etree._ElementTree, source: str = "<rendered>", *,
                    strict: bool = True) -> None:
    """Raise :class:`ConfigError` listing every structural problem (see
    :func:`structure_problems`), prefixed with ``source``."""
    problems = structure_problems(root, strict=strict)
    if problems:
        raise ConfigError(f"{source}: not a valid Chroma input:\n  " + "\n  ".join(problems))


def write_checked(path: str | os.PathLike[str], root: etree._Element) -> None:
    """Check ``root`` strictly, then write it atomically (nothing is written on a problem)."""
    check_structure(root, os.fspath(path))
    write_xml(path, root)


# == typed parameters ===========================================================================
def _fail(source: str, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")


def _check_positive_int(source: str, key: str, value: Any, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(source, key, value, f"an integer >= {minimum}")


def _check_real(source: str, key: str, value: Any, lo: float | None = None,
                hi: float | None = None, what: str = "a number") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise _fail(source, key, value, what)
    if (lo is not None and not value > lo) or (hi is not None and not value < hi):
        raise _fail(source, key, value, what)


def _check_nrow(source: str, nrow: Any) -> tuple[int, ...]:
    if (not isinstance(nrow, (list, tuple)) or len(nrow) != 4
            or any(isinstance(n, bool) or not isinstance(n, int) or n < 2 for n in nrow)):
        raise _fail(source, "nrow", nrow, "4 lattice extents >= 2 (x y z t)")
    return tuple(nrow)


def _check_seed(source: str, seed: Any) -> tuple[int, ...]:
    if isinstance(seed, int) and not isinstance(seed, bool):
        seed = (seed, 0, 0, 0)
    if (not isinstance(seed, (list, tuple)) or len(seed) != 4
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed)):
        raise _fail(source, "seed", seed, "one or four non-negative integers (QDP++ Seed)")
    return tuple(seed)


def _check_boundary(source: str, key: str, b: Any) -> tuple[int, ...]:
    if not isinstance(b, (list, tuple)) or len(b) != 4 or any(v not in (1, -1) for v in b):
        raise _fail(source, key, b, "4 phases 1 or -1, e.g. 1 1 1 -1")
    return tuple(int(v) for v in b)


def _check_fermion(source: str, f: Any) -> None:
    """The fields :class:`FermionParams` and :class:`PionParams` share: ``kappa``,
    ``fermion`` with ``csw``, ``boundary`` (normalised to a tuple), ``rsd_cg``, ``max_cg``."""
    _check_real(source, "kappa", f.kappa, 0.0, None, "a positive hopping parameter")
    if f.fermion not in ("wilson", "clover"):
        raise _fail(source, "fermion", f.fermion, "wilson or clover")
    if f.fermion == "clover":
        if f.csw is None:
            raise _fail(source, "csw", f.csw, "a clover coefficient for --fermion clover")
        _check_real(source, "csw", f.csw, 0.0, None, "a positive clover coefficient")
    elif f.csw is not None:
        raise _fail(source, "csw", f.csw, "no csw for the Wilson action (use clover)")
    f.boundary = _check_boundary(source, "boundary", f.boundary)
    _check_real(source, "rsd_cg", f.rsd_cg, 0.0, 1.0, "a CG residual in (0, 1)")
    _check_positive_int(source, "max_cg", f.max_cg)


@dataclass
class GaugeParams:
    """``GAUGE_MONOMIAL`` with ``WILSON_GAUGEACT`` and periodic boundaries."""

    beta: float
    monomial_id: str = "gauge"


@dataclass
class FermionParams:
    """Two degenerate flavours: ``fermion`` ``wilson``/``clover`` (``csw`` for clover),
    ``precond`` ``eo`` (eo-prec constdet for Wilson, logdet for clover) or ``none``
    (``TWO_FLAVOR_UNPREC_FERM_MONOMIAL``); CG solver; ``boundary`` as Chroma's
    ``SIMPLE_FERMBC``."""

    kappa: float
    fermion: str = "wilson"
    csw: float | None = None
    precond: str = "eo"
    boundary: tuple[int, ...] = (1, 1, 1, -1)
    rsd_cg: float = 1e-10
    max_cg: int = 2000
    predictor: str = "LAST_SOLUTION_4D_PREDICTOR"
    monomial_id: str = "wilson_two_flav"

    @property
    def monomial_name(self) -> str:
        """Chroma's monomial ``Name`` for this action and preconditioning."""
        if self.precond == "none":
            return "TWO_FLAVOR_UNPREC_FERM_MONOMIAL"
        if self.fermion == "clover":
            return "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL"
        return "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL"

    @property
    def fermact(self) -> str:
        """Chroma's ``FermAct``: ``WILSON``/``CLOVER`` are even-odd preconditioned,
        ``UNPRECONDITIONED_*`` not."""
        base = self.fermion.upper()
        return f"UNPRECONDITIONED_{base}" if self.precond == "none" else base


@dataclass
class IntegratorParams:
    """``MDIntegrator``: ``name`` (``LCM_STS_LEAPFROG`` or ``LCM_STS_MIN_NORM_2``), ``tau0``,
    ``n_steps`` of the outer level; ``gauge_steps``: if given, the gauge monomial moves to a
    nested ``SubIntegrator`` of the same scheme with that many steps per outer step;
    ``lam``: the 2MN ``lambda`` (Chroma's default when None)."""

    name: str = "LCM_STS_LEAPFROG"
    tau0: float = 1.0
    n_steps: int = 10
    gauge_steps: int | None = None
    lam: float | None = None


@dataclass
class HMCParams:
    """Everything an ``hmc`` input sets.  ``start``: ``unit``, ``weak``, ``hot`` (Chroma's
    ``DISORDERED``) or ``szin:FILE`` (``SZINQIO``, a QIO/ILDG lime file)."""

    nrow: tuple[int, ...]
    gauge: GaugeParams
    fermion: FermionParams | None = None
    integrator: IntegratorParams = field(default_factory=IntegratorParams)
    n_updates: int = 10
    n_warmup: int = 0
    start_update: int = 0
    save_interval: int = 10
    prefix: str = "cfg"
    start: str = "unit"
    seed: tuple[int, ...] = (11, 0, 0, 0)
    reverse_check_every: int = 10
    polyakov: bool = True

    @property
    def cfg(self) -> tuple[str, str]:
        """``(cfg_type, cfg_file)`` of the start."""
        kind, _, path = self.start.partition(":")
        table = {"unit": "UNIT", "weak": "WEAK_FIELD", "hot": "DISORDERED", "szin": "SZINQIO"}
        return table[kind], (path if kind == "szin" else "DUMMY")

    def validate(self, source: str = "hmc parameters") -> None:
        """Raise :class:`ConfigError` naming ``source``, the parameter, its value and what is
        expected, for any value Chroma (or physics) would not accept."""
        self.nrow = _check_nrow(source, self.nrow)
        self.seed = _check_seed(source, self.seed)
        _check_real(source, "beta", self.gauge.beta, 0.0, None, "a positive gauge coupling")
        it = self.integrator
        if it.name not in ("LCM_STS_LEAPFROG", "LCM_STS_MIN_NORM_2"):
            raise _fail(source, "integrator", it.name, "LCM_STS_LEAPFROG or LCM_STS_MIN_NORM_2")
        _check_real(source, "tau", it.tau0, 0.0, None, "a positive trajectory length")
        _check_positive_int(source, "md_steps", it.n_steps)
        if it.gauge_steps is not None:
            _check_positive_int(source, "gauge_steps", it.gauge_steps)
            if self.fermion is None:
                raise _fail(source, "gauge_steps", it.gauge_steps,
                            "no gauge sub-integrator for pure gauge (use md_steps alone)")
        if it.lam is not None:
            if it.name != "LCM_STS_MIN_NORM_2":
                raise _fail(source, "lambda", it.lam, "no lambda for LCM_STS_LEAPFROG")
            _check_real(source, "lambda", it.lam, 0.0, 0.5, "a 2MN lambda in (0, 0.5)")
        _check_positive_int(source, "n_updates", self.n_updates)
        _check_positive_int(source, "n_warmup", self.n_warmup, 0)
        _check_positive_int(source, "start_update", self.start_update, 0)
        _check_positive_int(source, "save_interval", self.save_interval)
        _check_positive_int(source, "reverse_check_every", self.reverse_check_every)
        if not isinstance(self.prefix, str) or not self.prefix or any(
                c.isspace() or c in "<>&" for c in self.prefix):
            raise _fail(source, "prefix", self.prefix,
                        "a non-empty file prefix without spaces or <>&")
        kind, _, path = self.start.partition(":") if isinstance(self.start, str) else ("", "", "")
        if kind not in ("unit", "weak", "hot", "szin") or (kind == "szin") != bool(path):
            raise _fail(source, "start", self.start, "unit, weak, hot or szin:FILE")
        f = self.fermion
        if f is None:
            return
        _check_fermion(source, f)
        if f.precond not in ("eo", "none"):
            raise _fail(source, "precond", f.precond, "eo or none")
        if f.predictor not in PREDICTORS:
            raise _fail(source, "predictor", f.predictor, " or ".join(PREDICTORS))


@dataclass
class PionParams:
    """Point-source pion: ``kappa``, ``fermion`` (``wilson``/``clover`` with ``csw``),
    ``boundary``, source position ``t_srce``; ``save``: write the propagator to this file."""

    kappa: float
    fermion: str = "wilson"
    csw: float | None = None
    boundary: tuple[int, ...] = (1, 1, 1, -1)
    t_srce: tuple[int, ...] = (0, 0, 0, 0)
    rsd_cg: float = 1e-12
    max_cg: int = 2000
    save: str | None = None


@dataclass
class FlowParams:
    """Wilson flow to ``wtime`` in ``nstep`` RK3 steps; ``save``: write the flowed field."""

    wtime: float = 4.0
    nstep: int = 400
    save: str | None = None


@dataclass
class MeasureParams:
    """Everything a ``chroma`` input sets.  ``cfg``: the configuration (``SZINQIO``), or
    ``unit`` for the unit field.  ``qtop``: ``k5`` values of ``QTOP_NAIVE`` (measured on the
    flowed field when ``wilson_flow`` is given); with a flow, ``plaquette`` also measures the
    flowed field."""

    nrow: tuple[int, ...]
    cfg: str
    plaquette: bool = True
    polyakov: bool = False
    pion: PionParams | None = None
    wilson_flow: FlowParams | None = None
    qtop: tuple[float, ...] = ()
    seed: tuple[int, ...] = (11, 11, 11, 0)

    def validate(self, source: str = "measure parameters") -> None:
        """Raise :class:`ConfigError` naming ``source``, the parameter, value and expectation."""
        self.nrow = _check_nrow(source, self.nrow)
        self.seed = _check_seed(source, self.seed)
        if not isinstance(self.cfg, str) or not self.cfg:
            raise _fail(source, "cfg", self.cfg, "a configuration file (SZINQIO) or 'unit'")
        p = self.pion
        if p is not None:
            _check_fermion(source, p)
            if (not isinstance(p.t_srce, (list, tuple)) or len(p.t_srce) != 4
                    or any(not isinstance(c, int) or not 0 <= c < n
                           for c, n in zip(p.t_srce, self.nrow, strict=False))):
                raise _fail(source, "t_srce", p.t_srce, f"4 coordinates inside {self.nrow}")
            p.t_srce = tuple(p.t_srce)
        w = self.wilson_flow
        if w is not None:
            _check_real(source, "wilson_flow", w.wtime, 0.0, None, "a positive flow time")
            _check_positive_int(source, "flow_steps", w.nstep)
        for k5 in self.qtop:
            _check_real(source, "qtop", k5, None, None, "k5 values (numbers)")
        if not (self.plaquette or self.polyakov or p or w or self.qtop):
            raise _fail(source, "measurements", "none", "at least one measurement")


# -- flat dictionaries (JSON config, command line) ----------------------------------------------
_HMC_KEYS = {"nrow", "beta", "kappa", "csw", "fermion", "precond", "boundary", "rsd_cg",
             "max_cg", "predictor", "integrator", "tau", "md_steps", "gauge_steps", "lambda",
             "n_updates", "n_warmup", "start_update", "save_interval", "prefix", "start", "seed",
             "reverse_check_every", "polyakov"}
_MEASURE_KEYS = {"nrow", "cfg", "plaquette", "polyakov", "pion", "kappa", "fermion", "csw",
                 "boundary", "t_srce", "rsd_cg", "max_cg", "save_prop", "wilson_flow",
                 "flow_steps", "save_flowed", "qtop", "seed"}


def _unknown(d: Mapping[str, Any], allowed: set[str], source: str) -> None:
    bad = sorted(set(d) - allowed)
    if bad:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(bad)}; expected some of "
                          f"{', '.join(sorted(allowed))}")


def hmc_params_from_dict(d: Mapping[str, Any], source: str = "hmc config") -> HMCParams:
    """Build and validate :class:`HMCParams` from a flat dictionary (the JSON config, whose
    keys are the ``qcd-bridge chroma-xml hmc`` option names with ``_``); ``kappa`` present
    means Nf=2."""
    _unknown(d, _HMC_KEYS, source)
    for key in ("nrow", "beta"):
        if key not in d:
            raise ConfigError(f"{source}: missing required key {key!r}")
    fermion = None
    if d.get("kappa") is not None:
        fermion = FermionParams(
            kappa=d["kappa"], fermion=d.get("fermion", "wilson"), csw=d.get("csw"),
            precond=d.get("precond", "eo"), boundary=tuple(d.get("boundary", (1, 1, 1, -1))),
            rsd_cg=d.get("rsd_cg", 1e-10), max_cg=d.get("max_cg", 2000),
            predictor=d.get("predictor", "LAST_SOLUTION_4D_PREDICTOR"))
    else:
        for key in ("csw", "fermion", "precond", "boundary", "rsd_cg", "max_cg", "predictor"):
            if d.get(key) is not None:
                raise _fail(source, key, d[key], "no fermion parameters without kappa")
    p = HMCParams(
        nrow=tuple(d["nrow"]) if isinstance(d["nrow"], (list, tuple)) else d["nrow"],
        gauge=GaugeParams(beta=d["beta"]), fermion=fermion,
        integrator=IntegratorParams(name=d.get("integrator", "LCM_STS_LEAPFROG"),
                                    tau0=d.get("tau", 1.0), n_steps=d.get("md_steps", 10),
                                    gauge_steps=d.get("gauge_steps"), lam=d.get("lambda")),
        n_updates=d.get("n_updates", 10), n_warmup=d.get("n_warmup", 0),
        start_update=d.get("start_update", 0), save_interval=d.get("save_interval", 10),
        prefix=d.get("prefix", "cfg"), start=d.get("start", "unit"),
        seed=d.get("seed", (11, 0, 0, 0)), reverse_check_every=d.get("reverse_check_every", 10),
        polyakov=d.get("polyakov", True))
    p.validate(source)
    return p


def measure_params_from_dict(d: Mapping[str, Any],
                             source: str = "measure config") -> MeasureParams:
    """Build and validate :class:`MeasureParams` from a flat dictionary (keys: the
    ``qcd-bridge chroma-xml measure`` option names with ``_``)."""
    _unknown(d, _MEASURE_KEYS, source)
    for key in ("nrow", "cfg"):
        if key not in d:
            raise ConfigError(f"{source}: missing required key {key!r}")
    pion = None
    if d.get("pion"):
        if d.get("kappa") is None:
            raise _fail(source, "kappa", None, "a hopping parameter for the pion")
        pion = PionParams(kappa=d["kappa"], fermion=d.get("fermion", "wilson"),
                          csw=d.get("csw"), boundary=tuple(d.get("boundary", (1, 1, 1, -1))),
                          t_srce=tuple(d.get("t_srce", (0, 0, 0, 0))),
                          rsd_cg=d.get("rsd_cg", 1e-12), max_cg=d.get("max_cg", 2000),
                          save=d.get("save_prop"))
    flow = None
    if d.get("wilson_flow") is not None:
        flow = FlowParams(wtime=d["wilson_flow"], nstep=d.get("flow_steps", 400),
                          save=d.get("save_flowed"))
    qtop = d.get("qtop") or ()
    p = MeasureParams(
        nrow=tuple(d["nrow"]) if isinstance(d["nrow"], (list, tuple)) else d["nrow"],
        cfg=d["cfg"], plaquette=bool(d.get("plaquette", True)),
        polyakov=bool(d.get("polyakov", False)), pion=pion, wilson_flow=flow,
        qtop=tuple(qtop) if isinstance(qtop, (list, tuple)) else (qtop,),
        seed=d.get("seed", (11, 11, 11, 0)))
    p.validate(source)
    return p


# == rendering ==================================================================================
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


def params_to_dict(p: HMCParams | MeasureParams) -> dict[str, Any]:
    """The parameters as a JSON-able dictionary (nested, for provenance records)."""
    return dataclasses.asdict(copy.deepcopy(p))
