"""What the drop-in loop (:mod:`bridge.jobs.dropin`) reads from and writes into the user's
Chroma ``hmc`` input: the facts it needs (lattice, seed, counters, save prefix, start, monomials,
Hamiltonian; read leniently, since Chroma may run elements the built-in engine does not), the
action of the Hamiltonian for the flow steps, and the input rewritten for one HMC segment.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = ["XMLFacts", "xml_facts", "gauge_beta", "flow_action", "segment_xml"]

_FERMION_KINDS = ("TWO_FLAVOR_UNPREC_FERM_MONOMIAL", "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL",
                  "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL")


@dataclass
class XMLFacts:
    """The parts of a Chroma ``hmc`` input the drop-in loop uses (read leniently: Chroma may
    run elements the built-in engine does not)."""

    source: str
    tree: Any
    nrow: tuple[int, ...]
    seed: tuple[int, ...]
    start_update: int
    save_prefix: str
    cfg_type: str
    cfg_file: str
    monomials: dict[str, dict[str, Any]]
    hamiltonian: list[str]


def _need(el: Any, path: str, source: str) -> str:
    found = el.find(path)
    if found is None:
        raise ConfigError(f"{source}: missing required element /Params/{path}")
    return (found.text or "").strip()


def _ints(text: str, what: str, source: str) -> tuple[int, ...]:
    try:
        return tuple(int(x) for x in text.split())
    except ValueError:
        raise ConfigError(f"{source}: {what}: expected integers, got {text!r}") from None


def _real(el: Any, rel: str, where: str, source: str, required: bool = False
          ) -> float | None:
    """The number in ``el/rel`` (None when absent and not ``required``); errors name the
    file, the element path and the text."""
    found = el.find(rel)
    if found is None:
        if required:
            raise ConfigError(f"{source}: missing required element {where}/{rel}")
        return None
    text = (found.text or "").strip()
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{source}: {where}/{rel}: expected a number, got {text!r}") from None


def xml_facts(path: str | os.PathLike[str]) -> XMLFacts:
    """Parse the user's ``hmc`` input for lattice, monomials, seed, counters and save prefix
    (:class:`~bridge.errors.ConfigError` naming the file and element path otherwise)."""
    from ..chroma.xml_in import parse_xml_file

    source = os.fspath(path)
    tree = parse_xml_file(source, "the hmc input")
    root = tree.getroot()
    if root.tag != "Params":
        raise ConfigError(f"{source}: expected root element <Params> of Chroma's hmc input, "
                          f"got <{root.tag}>")
    nrow = _ints(_need(root, "HMCTrj/nrow", source), "/Params/HMCTrj/nrow", source)
    if len(nrow) != 4 or min(nrow) < 1:
        raise ConfigError(f"{source}: /Params/HMCTrj/nrow: expected 4 positive extents, got "
                          f"{nrow}")
    seed_el = root.findall("MCControl/RNG/Seed/elem")
    seed = _ints(" ".join((e.text or "") for e in seed_el), "/Params/MCControl/RNG/Seed",
                 source)
    if len(seed) != 4:
        raise ConfigError(f"{source}: /Params/MCControl/RNG/Seed: expected 4 elems, got "
                          f"{len(seed)}")
    start = _ints(_need(root, "MCControl/StartUpdateNum", source),
                  "/Params/MCControl/StartUpdateNum", source)
    for tag in ("NWarmUpUpdates", "NProductionUpdates", "NUpdatesThisRun", "SaveInterval"):
        _ints(_need(root, f"MCControl/{tag}", source), f"/Params/MCControl/{tag}", source)
    prefix = _need(root, "MCControl/SavePrefix", source)
    if not prefix:
        raise ConfigError(f"{source}: /Params/MCControl/SavePrefix is empty")
    volfmt = _need(root, "MCControl/SaveVolfmt", source)
    if volfmt != "SINGLEFILE":
        raise ConfigError(f"{source}: /Params/MCControl/SaveVolfmt: the drop-in loop reads the "
                          f"single file <SavePrefix>_cfg_<N>.lime, expected SINGLEFILE, got "
                          f"{volfmt!r}")
    cfg_type = _need(root, "MCControl/Cfg/cfg_type", source)
    cfg_file = (root.findtext("MCControl/Cfg/cfg_file") or "").strip()
    monomials: dict[str, dict[str, Any]] = {}
    for i, el in enumerate(root.findall("HMCTrj/Monomials/elem")):
        where = f"/Params/HMCTrj/Monomials/elem[{i}]"
        name = (el.findtext("Name") or "").strip()
        mid = (el.findtext("NamedObject/monomial_id") or "").strip()
        if not name or not mid:
            raise ConfigError(f"{source}: {where}: expected Name and NamedObject/monomial_id")
        info: dict[str, Any] = {"kind": name, "where": where}
        if name == "GAUGE_MONOMIAL":
            info["action"] = (el.findtext("GaugeAction/Name") or "").strip()
            info["beta"] = _real(el, "GaugeAction/beta", where, source, required=True)
            bc = el.findtext("GaugeAction/GaugeBC/Name")
            state = el.find("GaugeAction/GaugeState")
            info["gauge_bc"] = (bc or "").strip() or ("GaugeState" if state is not None
                                                      else "PERIODIC_GAUGEBC")
            info["aniso"] = el.find("GaugeAction/AnisoParam") is not None
        elif name in _FERMION_KINDS:
            fa = el.find("FermionAction")
            if fa is None:
                raise ConfigError(f"{source}: {where}: missing FermionAction")
            info["fermact"] = (fa.findtext("FermAct") or "").strip()
            fwhere = f"{where}/FermionAction"
            kappa, mass = _real(fa, "Kappa", fwhere, source), _real(fa, "Mass", fwhere, source)
            if (kappa is None) == (mass is None):
                raise ConfigError(f"{source}: {fwhere}: expected exactly one of Kappa or Mass")
            if mass is not None:
                if not mass > -4.0:
                    raise ConfigError(f"{source}: {fwhere}/Mass: expected Mass > -4 (kappa = "
                                      f"1/(2 (Mass + 4))), got {mass}")
                kappa = 1.0 / (2.0 * (mass + 4.0))
            if not kappa > 0:
                raise ConfigError(f"{source}: {fwhere}/Kappa: expected a positive hopping "
                                  f"parameter, got {kappa}")
            info["kappa"] = kappa
            info["c_sw"] = [c for c in (_real(fa, t, fwhere, source) for t in (
                "clovCoeff", "clovCoeffR", "clovCoeffT")) if c is not None]
            info["fermstate"] = (fa.findtext("FermState/Name") or "").strip() or (
                "FermState" if fa.find("FermState") is not None else "")
            info["fermbc"] = (fa.findtext("FermionBC/FermBC") or "").strip()
            info["boundary"] = _ints(fa.findtext("FermionBC/boundary") or "1 1 1 -1",
                                     f"{where}/FermionAction/FermionBC/boundary", source)
            info["aniso"] = fa.find("AnisoParam") is not None
        monomials[mid] = info
    ham = [(e.text or "").strip() for e in root.findall("HMCTrj/Hamiltonian/monomial_ids/elem")]
    if not ham:
        raise ConfigError(f"{source}: /Params/HMCTrj/Hamiltonian/monomial_ids: expected at "
                          f"least one monomial id")
    for mid in ham:
        if mid not in monomials:
            raise ConfigError(f"{source}: /Params/HMCTrj/Hamiltonian/monomial_ids: unknown "
                              f"monomial id {mid!r} (defined: {sorted(monomials)})")
    return XMLFacts(source, tree, nrow, seed, start[0], prefix, cfg_type, cfg_file, monomials,
                    ham)


def gauge_beta(facts: XMLFacts) -> float:
    """Total Wilson coupling of the Hamiltonian's gauge monomials."""
    return sum(m["beta"] for mid, m in facts.monomials.items()
               if mid in facts.hamiltonian and m["kind"] == "GAUGE_MONOMIAL")


def flow_action(facts: XMLFacts, *, max_sites: int = 256
                ) -> tuple[Callable[[Any], Any], str]:
    """The action ``S(U)`` of the XML's Hamiltonian for the flow steps, and its description.

    Wilson gauge monomials (periodic gauge boundary, isotropic) give ``beta sum (1 - Re tr P /
    Nc)``; Nf = 2 Wilson/clover monomials add ``-log det(D^dag D)`` computed exactly
    (:func:`bridge.fermions.exact_logdet`, dense: refused beyond ``max_sites`` lattice sites).
    Anything else is refused with a :class:`~bridge.errors.ConfigError` that says why; plain
    HMC (no flow steps) stays possible."""
    from ..lattice import Lattice

    vol = Lattice(facts.nrow).volume
    parts: list[tuple[str, dict[str, Any]]] = []
    desc = []
    for mid in facts.hamiltonian:
        m = facts.monomials[mid]
        where = f"{facts.source}: {m['where']}"
        if m["kind"] == "GAUGE_MONOMIAL":
            if m["action"] != "WILSON_GAUGEACT" or m["aniso"]:
                raise ConfigError(
                    f"{where}: flow steps support the isotropic WILSON_GAUGEACT, got "
                    f"{m['action']!r}{' with AnisoParam' if m['aniso'] else ''}; run plain HMC "
                    f"(no model, flow_steps 0) or change the gauge action")
            if m["gauge_bc"] != "PERIODIC_GAUGEBC":
                raise ConfigError(
                    f"{where}: flow steps support PERIODIC_GAUGEBC, got {m['gauge_bc']!r}; the "
                    f"flow's action must have the engine's boundary conditions")
            parts.append(("gauge", m))
            desc.append(f"{mid}: Wilson gauge, beta = {m['beta']}")
        elif m["kind"] in _FERMION_KINDS:
            # Chroma's WILSON/CLOVER are even-odd preconditioned, UNPRECONDITIONED_* not: the
            # same det(D^dag D) up to a constant (the monomial/action pairing is the engine's)
            act = m["fermact"].removeprefix("UNPRECONDITIONED_")
            if act not in ("WILSON", "CLOVER") or m["aniso"]:
                raise ConfigError(f"{where}: flow steps support isotropic WILSON and CLOVER "
                                  f"fermions (or their UNPRECONDITIONED_ forms), got FermAct "
                                  f"{m['fermact']!r}{' with AnisoParam' if m['aniso'] else ''}")
            if m["kind"] == "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL" and act == "CLOVER":
                raise ConfigError(
                    f"{where}: TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL with FermAct CLOVER: "
                    f"Chroma's monomial leaves out det(A_ee) of the clover term, so the engine "
                    f"does not sample det(D^dag D) and the flow steps would target another "
                    f"distribution; use TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL, or run plain "
                    f"HMC (no model, flow_steps 0)")
            if m["fermstate"]:
                raise ConfigError(
                    f"{where}/FermionAction/FermState: flow steps support unsmeared fermions "
                    f"(no FermState), got {m['fermstate']!r}; the flow's action must be the "
                    f"engine's")
            if m["fermbc"] != "SIMPLE_FERMBC":
                raise ConfigError(
                    f"{where}/FermionAction/FermionBC/FermBC: flow steps support "
                    f"SIMPLE_FERMBC, got {m['fermbc'] or 'no FermionBC'!r}")
            csw = m["c_sw"]
            if act == "CLOVER" and (not csw or len(set(csw)) != 1):
                raise ConfigError(
                    f"{where}/FermionAction: flow steps support isotropic clover (clovCoeff, or "
                    f"equal clovCoeffR and clovCoeffT), got clover coefficients {csw}")
            m = {**m, "c_sw": csw[0] if act == "CLOVER" else 0.0}
            if vol > max_sites:
                raise ConfigError(
                    f"{where}: {m['kind']}: flow steps with fermions use the exact determinant "
                    f"(dense, dimension 12 V), limited to fermion_max_sites = {max_sites} "
                    f"lattice sites; the lattice {' '.join(map(str, facts.nrow))} has {vol}. "
                    f"Run plain HMC (no model, flow_steps 0), a smaller lattice, or raise "
                    f"fermion_max_sites in the workflow")
            parts.append(("fermion", m))
            desc.append(f"{mid}: Nf=2 {m['fermact']} kappa = {m['kappa']}, c_sw = {m['c_sw']}, "
                        f"boundary {' '.join(map(str, m['boundary']))} (exact determinant)")
        else:
            raise ConfigError(
                f"{where}: flow steps support GAUGE_MONOMIAL and {list(_FERMION_KINDS)}, got "
                f"{m['kind']!r}; run plain HMC (no model, flow_steps 0) for this input")

    def action(u: Any) -> Any:
        from ..fermions import exact_logdet
        from ..gauge import wilson_action

        total = None
        for kind, m in parts:
            if kind == "gauge":
                s = wilson_action(u, m["beta"])
            else:
                s = -exact_logdet(u, m["kappa"], c_sw=m["c_sw"], boundary=m["boundary"],
                                  max_dim=12 * max_sites).to(u.real.dtype)
            total = s if total is None else total + s
        return total

    return action, "; ".join(desc)


# -- segment input XML --------------------------------------------------------------------------
def _set(parent: Any, tag: str, text: str) -> None:
    from lxml import etree

    el = parent.find(tag)
    if el is None:
        el = etree.SubElement(parent, tag)
    el.text = text


def segment_xml(facts: XMLFacts, *, start_cfg: str | None, start_update: int, n: int,
                save_prefix: str, seed: tuple[int, ...]) -> bytes:
    """The user's input rewritten for one segment: ``Cfg`` -> ``SZINQIO`` at ``start_cfg``
    (unchanged when None: the first segment starts as the user's input does, a relative
    ``cfg_file`` made absolute), ``StartUpdateNum``, ``NProductionUpdates = start + n``,
    ``NUpdatesThisRun = SaveInterval = n``, ``SavePrefix`` and the RNG seed."""
    from lxml import etree

    from ..chroma.hmc_input import set_szinqio_start

    tree = copy.deepcopy(facts.tree)
    root = tree.getroot()
    mc = root.find("MCControl")
    cfg = mc.find("Cfg")
    if start_cfg is not None:
        set_szinqio_start(root, start_cfg, facts.source)
    elif facts.cfg_type not in ("UNIT", "DISORDERED", "WEAK_FIELD") and facts.cfg_file:
        f = Path(facts.cfg_file)
        if not f.is_absolute():
            cfg.find("cfg_file").text = str(Path(facts.source).resolve().parent / f)
    _set(mc, "StartUpdateNum", str(start_update))
    _set(mc, "NProductionUpdates", str(start_update + n))
    _set(mc, "NUpdatesThisRun", str(n))
    _set(mc, "SaveInterval", str(n))
    _set(mc, "SavePrefix", save_prefix)
    for el, v in zip(mc.findall("RNG/Seed/elem"), seed, strict=True):
        el.text = str(int(v))
    etree.indent(tree, space="  ")
    return etree.tostring(tree, xml_declaration=True, encoding="UTF-8", pretty_print=True)
