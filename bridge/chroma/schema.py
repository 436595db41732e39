"""The structure Chroma's input readers require, as data, and the check of a document against it.

:data:`HMC_STRUCTURE` (``hmc``, root ``<Params>``) and :data:`CHROMA_STRUCTURE` (``chroma``,
root ``<chroma>``) describe the elements Chroma's readers require, written from Chroma's source
(``mainprogs/main/hmc.cc``, ``mainprogs/main/chroma.cc``, ``lib/update/molecdyn/**``,
``lib/meas/inline/**``, ``lib/util/gauge/*_gauge_init.cc``; the facts are collected in
docs/formats.md section 4; the names in :mod:`bridge.chroma.names`).  The check accepts every
input Chroma accepts that uses these names; the built-in programs' strict readers
(:mod:`bridge.chroma.hmc_input`, :mod:`bridge.chroma.measure_input`) accept a subset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .names import (
    CFG_TYPES,
    EO_FERMACTS,
    FERMACTS,
    GAUGE_ACTIONS,
    INTEGRATORS,
    INVERTERS,
    MEASUREMENTS,
    MONOMIALS,
    OBJECT_TYPES,
    PREDICTORS,
    QUDA_MG_CYCLES,
    QUDA_PRECISIONS,
    QUDA_RECONSTRUCTS,
    QUDA_SCHWARZ,
    QUDA_SOLVER_TYPES,
    TWO_FLAVOR_MONOMIALS,
    UNPREC_FERMACTS,
    VOLFMTS,
)
from .quda import quda_problems
from .xml_out import write_xml

__all__ = [
    "Node",
    "HMC_STRUCTURE",
    "CHROMA_STRUCTURE",
    "structure_problems",
    "check_structure",
    "write_checked",
]


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
_QUDA_ACT = {"Kappa": _opt(REAL), "Mass": _opt(REAL), "AnisoParam": _opt(_ANISO)}
_QUDA_CLOVER_ACT = {**_QUDA_ACT, "clovCoeff": _opt(REAL), "clovCoeffR": _opt(REAL),
                    "clovCoeffT": _opt(REAL), "u0": _opt(REAL), "MaxNorm": _opt(REAL),
                    "TwistedM": _opt(REAL)}


def _quda_act_check(el: etree._Element, path: str) -> list[str]:
    """``Kappa`` xor ``Mass`` (``wilson_fermact_params_w.cc``)."""
    if (el.find("Kappa") is None) == (el.find("Mass") is None):
        return [f"{path}: expected exactly one of Kappa or Mass"]
    return []


def _mg_check(el: etree._Element, path: str) -> list[str]:
    """One ``NullVectors`` and pre/post smoother count per ``Blocking`` level
    (``quda_multigrid_params.cc`` aborts otherwise)."""
    levels = len(el.findall("Blocking/elem"))
    return [f"{path}/{n}: expected {levels} values (one per Blocking level), got "
            f"{len((el.findtext(n) or '').split())}"
            for n in ("NullVectors", "Pre-SmootherApplications", "Post-SmootherApplications")
            if el.find(n) is not None and len((el.findtext(n) or "").split()) != levels]


_QUDA_PREC, _QUDA_RECONS = _choice(*QUDA_PRECISIONS), _choice(*QUDA_RECONSTRUCTS)
_QUDA_MG = Node("group", check=_mg_check, children={
    "Verbosity": _req(BOOL), "Precision": _req(_QUDA_PREC), "Reconstruct": _req(_QUDA_RECONS),
    "Blocking": _req(_list(_ints(4))), "NullVectors": _req(_ints()),
    "Pre-SmootherApplications": _req(_ints()), "Post-SmootherApplications": _req(_ints()),
    "GenerateNullspace": _req(BOOL), "GenerateAllLevels": _req(BOOL),
    "CycleType": _req(_choice(*QUDA_MG_CYCLES)), "SchwarzType": _opt(_choice(*QUDA_SCHWARZ)),
    **{n: _opt(TEXT) for n in (
        "CoarseSolverType", "CoarseResidual", "MaxCoarseIterations", "SmootherType",
        "SmootherTol", "SmootherHaloPrecision", "SmootherSchwarzType", "SmootherSchwarzCycle",
        "SubspaceSolver", "RsdTargetSubspaceCreate", "MaxIterSubspaceCreate",
        "MaxIterSubspaceRefresh", "OuterGCRNKrylov", "PrecondGCRNKrylov",
        "CheckMultigridSetup", "RelaxationOmegaMG", "RelaxationOmegaOuter", "SetupOnGPU")}})
_QUDA = {"MaxIter": _req(INT), "RsdTarget": _req(REAL), "AntiPeriodicT": _req(BOOL),
         "Delta": _req(REAL), "SolverType": _req(_choice(*QUDA_SOLVER_TYPES)),
         "Verbose": _opt(BOOL), "AsymmetricLinop": _opt(BOOL), "CudaPrecision": _opt(_QUDA_PREC),
         "CudaSloppyPrecision": _opt(_QUDA_PREC), "CudaReconstruct": _opt(_QUDA_RECONS),
         "CudaSloppyReconstruct": _opt(_QUDA_RECONS), "AxialGaugeFix": _opt(BOOL),
         "SilentFail": _opt(BOOL), "RsdToleranceFactor": _opt(REAL),
         "AutotuneDslash": _opt(BOOL), "Pipeline": _opt(INT)}
_QUDA_W = {**_QUDA, "WilsonParams": _req(Node("group", children=_QUDA_ACT,
                                              check=_quda_act_check))}
_QUDA_C = {**_QUDA, "CloverParams": _req(Node("group", children=_QUDA_CLOVER_ACT,
                                              check=_quda_act_check)),
           "BackupSolverParam": _opt(OPEN), "DumpOnFail": _opt(BOOL)}
INVERT = _keyed("invType", INVERTERS, {}, {  # syssolver_quda_*_params.cc
    "CG_INVERTER": _CG,
    "QUDA_WILSON_INVERTER": {**_QUDA_W, "GCRInnerParams": _opt(OPEN)},
    "QUDA_CLOVER_INVERTER": {**_QUDA_C, "GCRInnerParams": _opt(OPEN)},
    "QUDA_MULTIGRID_WILSON_INVERTER": {**_QUDA_W, "MULTIGRIDParams": _opt(_QUDA_MG)},
    "QUDA_MULTIGRID_CLOVER_INVERTER": {
        **_QUDA_C, "MULTIGRIDParams": _opt(_QUDA_MG), "SubspaceID": _req(TEXT),
        "ThresholdCount": _opt(INT), "SolutionCheckP": _opt(BOOL)}})
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
    quda = quda_problems(el, path)
    if quda:
        return quda
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
        "Param": _req(replace(_group(
            version=_req(INT), quarkSpinType=_opt(_choice("FULL", "NONREL", "UPPER", "LOWER")),
            obsvP=_opt(BOOL), numRetries=_opt(INT), FermionAction=_req(FERMACT),
            InvertParam=_req(INVERT)), check=quda_problems)),
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

