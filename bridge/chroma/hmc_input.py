"""Chroma's ``hmc`` input XML: the one reader and model of it.

Element names, required/optional elements and defaults follow docs/formats.md section 4.1
(Chroma ``mainprogs/main/hmc.cc``, ``lib/update/molecdyn/...``).  Two modes of the same reader:

``strict`` (the built-in ``hmc``, :mod:`bridge.chroma.hmc_program`)
    every element of the input must be understood: an element or a value the built-in engine
    does not support is a :class:`~bridge.errors.ConfigError` naming its path, never silently
    ignored;
lenient (``strict=False``: the drop-in loop, which hands the input to Chroma)
    reads the facts the loop needs -- lattice, seed, counters, save prefix, start, the monomials
    with their actions and parameters, the Hamiltonian -- and lets Chroma judge the rest (other
    actions, integrators, measurements, solver settings); malformed values are still errors.

The monomials' actions are built by :mod:`bridge.chroma.monomials`; the structural check of any
input (what Chroma itself requires) is :mod:`bridge.chroma.schema`.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .names import (
    BUILTIN_CFG_TYPES,
    BUILTIN_FERMION_MONOMIALS,
    BUILTIN_HMC_MEASUREMENTS,
    BUILTIN_INTEGRATORS,
    BUILTIN_PREDICTORS,
    MIN_NORM_2_LAMBDA,
    QUDA_INVERTERS,
)
from .quda import read_as_builtin_cg
from .xml_in import XmlNode, parse_xml_file, read_kappa_csw, read_seed

__all__ = [
    "CfgSpec",
    "MonomialSpec",
    "IntegratorSpec",
    "HMCInput",
    "read_hmc_input",
    "parse_hmc_input",
    "restart_xml",
    "set_szinqio_start",
]


@dataclass
class CfgSpec:
    cfg_type: str  # UNIT, DISORDERED, WEAK_FIELD, SZINQIO (alias SCIDAC); lenient: any
    cfg_file: str
    reunit: bool = True


@dataclass
class MonomialSpec:
    """One ``/Params/HMCTrj/Monomials/elem``: Chroma's monomial ``Name`` (``kind``), its id,
    its element path and its parameters.

    Gauge monomials: ``gauge_action`` (``GaugeAction/Name``), ``beta``, ``gauge_bc``
    (``GaugeBC/Name``, ``"GaugeState"`` for a ``GaugeState`` element), ``aniso``.  Two-flavour
    fermion monomials: ``fermact_name`` (``FermAct`` as written), ``fermact`` (``WILSON`` or
    ``CLOVER``), ``kappa`` (from ``Kappa`` or ``Mass``), ``clover_coeffs`` (the ``clovCoeff``,
    ``clovCoeffR``, ``clovCoeffT`` present), ``c_sw`` (strict: the clover coefficient),
    ``fermbc``, ``boundary``, ``fermstate`` (``FermState/Name``, empty when unsmeared),
    ``aniso``; strict also ``rsd_cg``, ``max_cg``, ``predictor``.  Other monomials (lenient
    only) carry no parameters.
    """

    kind: str
    monomial_id: str
    params: dict[str, Any] = field(default_factory=dict)
    path: str = ""


@dataclass
class IntegratorSpec:
    name: str
    n_steps: int
    monomial_ids: list[str]
    lam: float | None = None
    sub: IntegratorSpec | None = None


@dataclass
class HMCInput:
    """A parsed ``hmc`` input; lenient readings have no ``integrator`` (Chroma integrates),
    ``tau0`` NaN when absent and no ``measurements``."""

    source: str
    cfg: CfgSpec
    seed: tuple[int, ...]
    start_update: int
    n_warmup: int
    n_production: int
    n_this_run: int
    save_interval: int
    save_prefix: str
    save_volfmt: str
    repro_check: bool
    repro_frequency: int
    reverse_check: bool
    reverse_frequency: int
    monitor_forces: bool
    measurements: list[dict[str, Any]]
    nrow: tuple[int, ...]
    monomials: dict[str, MonomialSpec]
    hamiltonian: list[str]
    tau0: float
    integrator: IntegratorSpec | None
    tree: etree._ElementTree
    strict: bool = True

    @property
    def n_updates(self) -> int:
        """Updates this run performs: ``min(NUpdatesThisRun, NProductionUpdates - Start)``."""
        return max(0, min(self.n_this_run, self.n_production - self.start_update))


# Chroma's FermAct names: WILSON / CLOVER are the even-odd preconditioned actions, the
# UNPRECONDITIONED_* ones the unpreconditioned (unprec_wilson_fermact_w.cc, ...); a monomial casts
# its action to the kind it needs and fails otherwise.
_EO_FERMACTS = {"WILSON": "WILSON", "CLOVER": "CLOVER"}
_UNPREC_FERMACTS = {"UNPRECONDITIONED_WILSON": "WILSON", "UNPRECONDITIONED_CLOVER": "CLOVER"}
_CLOVER_COEFFS = ("clovCoeff", "clovCoeffR", "clovCoeffT")


def _cfg(node: XmlNode) -> CfgSpec:
    kind = node.text("cfg_type")
    node.supported(kind in BUILTIN_CFG_TYPES, f"{node.path}/cfg_type: the built-in engine "
                   f"supports {sorted(BUILTIN_CFG_TYPES)}, got {kind!r}")
    spec = CfgSpec(kind, node.text("cfg_file", "DUMMY"))
    if kind in ("SZINQIO", "SCIDAC"):
        node.boolean("parallel_io", False)
        node.boolean("ParallelIO", False)
        spec.reunit = node.boolean("reunit", True)
    node.done()
    return spec


def _gauge_monomial(node: XmlNode) -> dict[str, Any]:
    ga = node.child("GaugeAction")
    name = ga.text("Name")
    ga.supported(name == "WILSON_GAUGEACT", f"{ga.path}/Name: the built-in engine supports "
                 f"WILSON_GAUGEACT, got {name!r}")
    params: dict[str, Any] = {"gauge_action": name, "beta": ga.real("beta"),
                              "gauge_bc": "PERIODIC_GAUGEBC", "aniso": False}
    bc = ga.child("GaugeBC", required=False)
    if bc is not None:
        params["gauge_bc"] = bc.text("Name")
        bc.supported(params["gauge_bc"] == "PERIODIC_GAUGEBC", f"{bc.path}/Name: only "
                     f"PERIODIC_GAUGEBC is supported, got {params['gauge_bc']!r}")
        bc.done()
    if not ga.strict:
        if ga.el.find("GaugeState") is not None and bc is None:
            params["gauge_bc"] = "GaugeState"
        params["aniso"] = ga.el.find("AnisoParam") is not None
    ga.done()
    return params


def _invert_param(node: XmlNode) -> dict[str, Any]:
    inv = node.child("InvertParam")
    inv_type = inv.text("invType")
    if inv_type in QUDA_INVERTERS.values():  # solved by the built-in CG, with a notice
        return read_as_builtin_cg(inv)
    inv.supported(inv_type == "CG_INVERTER", f"{inv.path}/invType: the built-in engine "
                  f"supports CG_INVERTER, got {inv_type!r}")
    params = {"rsd_cg": inv.real("RsdCG"), "max_cg": inv.integer("MaxCG")}
    inv.real("RsdCGRestart", params["rsd_cg"])
    inv.integer("MaxCGRestart", params["max_cg"])
    inv.integer("MinCG", 0)
    inv.done()
    return params


def _fermion_action(fa: XmlNode, kind: str) -> dict[str, Any]:
    act = fa.text("FermAct")
    want = _UNPREC_FERMACTS if kind == "TWO_FLAVOR_UNPREC_FERM_MONOMIAL" else _EO_FERMACTS
    other = "an unpreconditioned" if want is _UNPREC_FERMACTS else "an even-odd preconditioned"
    fa.supported(act in want, f"{fa.path}/FermAct: {kind} needs {other} fermion action "
                 f"({' or '.join(want)}), got {act!r}")
    fermact = want.get(act, act.removeprefix("UNPRECONDITIONED_"))
    params: dict[str, Any] = {"fermact": fermact, "fermact_name": act}
    kappa, c_sw = read_kappa_csw(fa, fa.strict and fermact == "CLOVER")
    params["kappa"] = kappa
    if fa.strict:  # a clover coefficient of a Wilson action stays an unsupported element
        params["clover_coeffs"] = [c_sw] if fermact == "CLOVER" else []
        if fermact == "CLOVER":
            params["c_sw"] = c_sw
    else:
        params["clover_coeffs"] = [fa.real(t) for t in _CLOVER_COEFFS
                                   if fa.el.find(t) is not None]
    bc = fa.child("FermionBC", required=fa.strict)
    params["fermbc"], params["boundary"] = "", (1, 1, 1, -1)
    if bc is not None:
        params["fermbc"] = bc.text("FermBC")
        bc.supported(params["fermbc"] == "SIMPLE_FERMBC", f"{bc.path}/FermBC: the built-in "
                     f"engine supports SIMPLE_FERMBC, got {params['fermbc']!r}")
        raw = bc.text("boundary", None if bc.strict else "1 1 1 -1").split()
        try:
            params["boundary"] = tuple(int(b) for b in raw)
        except ValueError:
            raise bc._err(f"{bc.path}/boundary: expected integers like '1 1 1 -1', got "
                          f"{' '.join(raw)!r}") from None
        bc.done()
    state = fa.el.find("FermState")
    params["fermstate"] = "" if state is None else (
        (state.findtext("Name") or "").strip() or "FermState")
    params["aniso"] = fa.el.find("AnisoParam") is not None
    fa.done()
    return params


def _fermion_monomial(node: XmlNode, kind: str) -> dict[str, Any]:
    params = _invert_param(node) if node.strict else {}
    params.update(_fermion_action(node.child("FermionAction"), kind))
    pred = node.child("ChronologicalPredictor", required=False)
    params["predictor"] = "ZERO_GUESS_4D_PREDICTOR"
    if pred is not None:
        pname = pred.text("Name")
        pred.supported(pname in BUILTIN_PREDICTORS, f"{pred.path}/Name: supported predictors "
                       f"are {sorted(BUILTIN_PREDICTORS)}, got {pname!r}")
        params["predictor"] = pname
        pred.done()
    return params


def _monomial(node: XmlNode) -> MonomialSpec:
    kind = node.text("Name")
    if kind == "GAUGE_MONOMIAL":
        params = _gauge_monomial(node)
    elif kind in BUILTIN_FERMION_MONOMIALS:
        params = _fermion_monomial(node, kind)
    else:
        node.supported(False, f"{node.path}/Name: the built-in engine supports GAUGE_MONOMIAL "
                       f"and {sorted(BUILTIN_FERMION_MONOMIALS)}, got {kind!r}")
        params = {}
    named = node.child("NamedObject")
    mid = named.text("monomial_id")
    named.done()
    node.done()
    return MonomialSpec(kind, mid, params, node.path)


def _integrator(node: XmlNode, known: dict[str, MonomialSpec]) -> IntegratorSpec:
    name = node.text("Name")
    if name not in BUILTIN_INTEGRATORS:
        raise node._err(f"{node.path}/Name: the built-in engine supports "
                        f"{sorted(BUILTIN_INTEGRATORS)}, got {name!r}")
    n_steps = node.integer("n_steps")
    if n_steps < 1:
        raise node._err(f"{node.path}/n_steps: expected a positive integer, got {n_steps}")
    ids = node.strings("monomial_ids")
    for mid in ids:
        if mid not in known:
            raise node._err(f"{node.path}/monomial_ids: unknown monomial id {mid!r} "
                            f"(defined: {sorted(known)})")
    lam = node.real("lambda", MIN_NORM_2_LAMBDA) if "MIN_NORM_2" in name else None
    sub_node = node.child("SubIntegrator", required=False)
    sub = _integrator(sub_node, known) if sub_node is not None else None
    node.done()
    return IntegratorSpec(name, n_steps, ids, lam, sub)


def _measurement(node: XmlNode) -> dict[str, Any]:
    name = node.text("Name")
    if name not in BUILTIN_HMC_MEASUREMENTS:
        raise node._err(f"{node.path}/Name: the built-in hmc supports the inline measurements "
                        f"{sorted(BUILTIN_HMC_MEASUREMENTS)}, got {name!r}")
    freq = node.integer("Frequency", 1)
    par = node.child("Param", required=False)
    if par is not None:
        par.integer("version", 2)
        par.done()
    named = node.child("NamedObject", required=False)
    if named is not None:
        gid = named.text("gauge_id", "default_gauge_field")
        if gid != "default_gauge_field":
            raise node._err(f"{named.path}/gauge_id: only default_gauge_field exists in hmc, "
                            f"got {gid!r}")
        named.done()
    node.text("xml_file", "")
    node.done()
    return {"name": name, "frequency": freq}


def _mc_control(mc: XmlNode, source: str) -> dict[str, Any]:
    """``/Params/MCControl`` (without ``Cfg`` and ``RNG``): counters, saving, checks and, when
    strict, the inline measurements."""
    spec = dict(
        start_update=mc.integer("StartUpdateNum"),
        n_warmup=mc.integer("NWarmUpUpdates"),
        n_production=mc.integer("NProductionUpdates"),
        n_this_run=mc.integer("NUpdatesThisRun"),
        save_interval=mc.integer("SaveInterval"),
        save_prefix=mc.text("SavePrefix"),
        save_volfmt=mc.text("SaveVolfmt"),
    )
    where = f"{source}: /Params/MCControl"
    if spec["save_volfmt"] != "SINGLEFILE":
        raise ConfigError(f"{where}/SaveVolfmt: the built-in engine writes SINGLEFILE and the "
                          f"drop-in loop reads the single file <SavePrefix>_cfg_<N>.lime, "
                          f"expected SINGLEFILE, got {spec['save_volfmt']!r}")
    if spec["save_interval"] < 1:
        raise ConfigError(f"{where}/SaveInterval: expected a positive integer, got "
                          f"{spec['save_interval']}")
    if not spec["save_prefix"]:
        raise ConfigError(f"{where}/SavePrefix is empty")
    mc.boolean("parallel_io", False)
    mc.boolean("ParallelIO", False)
    spec.update(
        repro_check=mc.boolean("ReproCheckP", True),
        repro_frequency=mc.integer("ReproCheckFrequency", 10),
        reverse_check=mc.boolean("ReverseCheckP", True),
        reverse_frequency=mc.integer("ReverseCheckFrequency", 10),
        monitor_forces=mc.boolean("MonitorForces", True),
    )
    spec["measurements"] = ([_measurement(n) for n in mc.elems("InlineMeasurements",
                                                              required=False)]
                            if mc.strict else [])
    mc.done()
    return spec


def _nrow(trj: XmlNode, source: str) -> tuple[int, ...]:
    raw = trj.text("nrow").split()
    try:
        nrow = tuple(int(n) for n in raw)
    except ValueError:
        raise ConfigError(f"{source}: /Params/HMCTrj/nrow: expected integers, got "
                          f"{' '.join(raw)!r}") from None
    if len(nrow) != 4 or min(nrow) < 1:
        raise ConfigError(f"{source}: /Params/HMCTrj/nrow: expected 4 positive extents (Chroma's "
                          f"hmc is 4D), got {nrow}")
    return nrow


def _monomials(trj: XmlNode, source: str) -> tuple[dict[str, MonomialSpec], list[str]]:
    monomials: dict[str, MonomialSpec] = {}
    for n in trj.elems("Monomials"):
        m = _monomial(n)
        if m.monomial_id in monomials:
            raise ConfigError(f"{source}: {n.path}: duplicate monomial_id {m.monomial_id!r}")
        monomials[m.monomial_id] = m
    ham = trj.child("Hamiltonian")
    ham_ids = ham.strings("monomial_ids")
    ham.done()
    where = f"{source}: /Params/HMCTrj/Hamiltonian/monomial_ids"
    if not ham_ids:
        raise ConfigError(f"{where}: expected at least one monomial id")
    for mid in ham_ids:
        if mid not in monomials:
            raise ConfigError(f"{where}: unknown monomial id {mid!r} (defined: "
                              f"{sorted(monomials)})")
    return monomials, ham_ids


def _md(trj: XmlNode, monomials: dict[str, MonomialSpec], ham_ids: list[str], source: str
        ) -> tuple[float, IntegratorSpec | None]:
    """``MDIntegrator``: ``tau0`` and the integrator levels (strict); every Hamiltonian monomial
    must be integrated on exactly one level, as Chroma requires."""
    if not trj.strict:  # Chroma integrates: only tau0, when given
        md = trj.child("MDIntegrator", required=False)
        has_tau0 = md is not None and md.el.find("tau0") is not None
        return (md.real("tau0") if has_tau0 else float("nan")), None
    md = trj.child("MDIntegrator")
    tau0 = md.real("tau0")
    integ = _integrator(md.child("Integrator"), monomials)
    md.done()
    seen: list[str] = []
    level: IntegratorSpec | None = integ
    while level is not None:
        seen += level.monomial_ids
        level = level.sub
    if sorted(seen) != sorted(ham_ids):
        raise ConfigError(f"{source}: the integrator levels integrate {sorted(seen)} but the "
                          f"Hamiltonian has {sorted(ham_ids)}; each monomial must appear on "
                          f"exactly one level")
    return tau0, integ


def parse_hmc_input(tree: etree._ElementTree, source: str = "<input>", *,
                    strict: bool = True) -> HMCInput:
    """Parse an ``hmc`` input document (module docstring: ``strict`` or lenient)."""
    root = tree.getroot()
    if root.tag != "Params":
        raise ConfigError(f"{source}: expected root element <Params> of Chroma's hmc input, got "
                          f"<{root.tag}>")
    top = XmlNode(root, "/Params", source, strict)
    mc = top.child("MCControl")
    cfg = _cfg(mc.child("Cfg"))
    seed = read_seed(mc.child("RNG"))
    spec_mc = _mc_control(mc, source)
    trj = top.child("HMCTrj")
    nrow = _nrow(trj, source)
    monomials, ham_ids = _monomials(trj, source)
    tau0, integ = _md(trj, monomials, ham_ids, source)
    trj.done()
    top.done()
    return HMCInput(source=source, cfg=cfg, seed=seed, **spec_mc, nrow=nrow, monomials=monomials,
                    hamiltonian=ham_ids, tau0=tau0, integrator=integ, tree=tree, strict=strict)


def read_hmc_input(path: str | os.PathLike[str], *, strict: bool = True) -> HMCInput:
    """Parse a Chroma ``hmc`` input file (raises :class:`ConfigError` naming file and path)."""
    return parse_hmc_input(parse_xml_file(path, "hmc input"), os.fspath(path), strict=strict)


def set_szinqio_start(root: etree._Element, cfg_file: str, source: str = "<hmc input>") -> None:
    """Switch ``/Params/MCControl/Cfg`` of an hmc input (in place) to ``SZINQIO`` at
    ``cfg_file`` with ``reunit`` false (a continuation reads the configuration bit for bit), as
    Chroma's restart XML does; the indentation of the old ``Cfg`` children is kept."""
    cfg = root.find("MCControl/Cfg")
    if cfg is None:
        raise ConfigError(f"{source}: missing required element /Params/MCControl/Cfg")
    tails = [c.tail for c in cfg]
    for c in list(cfg):
        cfg.remove(c)
    for tag, text in (("cfg_type", "SZINQIO"), ("cfg_file", cfg_file), ("reunit", "false")):
        e = etree.SubElement(cfg, tag)
        e.text, e.tail = text, tails[0] if tails else None
    if tails:
        e.tail = tails[-1]


def restart_xml(inp: HMCInput, update_no: int, cfg_file: str) -> bytes:
    """Chroma's ``<SavePrefix>_restart_<N>.xml``: the input with ``Cfg`` switched to ``SZINQIO``
    at ``cfg_file`` and ``StartUpdateNum = N`` (``hmc.cc: saveState``), with ``reunit`` false so
    that the continuation is bit-identical to an uninterrupted run.  The RNG seed is kept:
    the built-in engine's random streams are counter-based (:mod:`bridge.rng`), so seed and
    update number determine the continuation."""
    tree = copy.deepcopy(inp.tree)
    root = tree.getroot()
    set_szinqio_start(root, cfg_file, inp.source)
    root.find("MCControl/StartUpdateNum").text = str(update_no)
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)
