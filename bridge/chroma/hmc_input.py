"""Chroma's ``hmc`` input XML: the subset the built-in engine runs, parsed strictly.

Element names, required/optional elements and defaults follow ``../shared/docs/formats.md``
section 4.1 (Chroma ``mainprogs/main/hmc.cc``, ``lib/update/molecdyn/...``).  Every element of
the input must be understood: an element the built-in engine does not support is a
:class:`~bridge.errors.ConfigError` naming its path, never silently ignored.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ..errors import ConfigError
from ..io.lime import atomic_path

__all__ = [
    "CfgSpec",
    "MonomialSpec",
    "IntegratorSpec",
    "HMCInput",
    "read_hmc_input",
    "parse_hmc_input",
    "restart_xml",
    "set_szinqio_start",
    "parse_xml_file",
    "write_xml",
]


@dataclass
class CfgSpec:
    cfg_type: str  # UNIT, DISORDERED, WEAK_FIELD, SZINQIO (alias SCIDAC)
    cfg_file: str
    reunit: bool = True


@dataclass
class MonomialSpec:
    kind: str  # Chroma's monomial Name
    monomial_id: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass
class IntegratorSpec:
    name: str
    n_steps: int
    monomial_ids: list[str]
    lam: float | None = None
    sub: IntegratorSpec | None = None


@dataclass
class HMCInput:
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
    integrator: IntegratorSpec
    tree: etree._ElementTree

    @property
    def n_updates(self) -> int:
        """Updates this run performs: ``min(NUpdatesThisRun, NProductionUpdates - Start)``."""
        return max(0, min(self.n_this_run, self.n_production - self.start_update))


# -- strict element walking -------------------------------------------------------------------
class _Node:
    """Wraps an element; records which children were read so leftovers can be reported."""

    def __init__(self, el: etree._Element, path: str, source: str) -> None:
        self.el, self.path, self.source = el, path, source
        self.used: set[str] = set()

    def _err(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {msg}")

    def child(self, name: str, required: bool = True) -> _Node | None:
        found = self.el.findall(name)
        self.used.add(name)
        if len(found) > 1:
            raise self._err(f"element {self.path}/{name} appears {len(found)} times, expected once")
        if not found:
            if required:
                raise self._err(f"missing required element {self.path}/{name}")
            return None
        return _Node(found[0], f"{self.path}/{name}", self.source)

    def text(self, name: str, default: str | None = None) -> str:
        node = self.child(name, required=default is None)
        if node is None:
            return str(default)
        node.done()
        return (node.el.text or "").strip()

    def integer(self, name: str, default: int | None = None) -> int:
        raw = self.text(name, None if default is None else str(default))
        try:
            return int(raw)
        except ValueError:
            raise self._err(f"{self.path}/{name}: expected an integer, got {raw!r}") from None

    def real(self, name: str, default: float | None = None) -> float:
        raw = self.text(name, None if default is None else repr(default))
        try:
            return float(raw)
        except ValueError:
            raise self._err(f"{self.path}/{name}: expected a number, got {raw!r}") from None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "true" if default else "false").lower()
        if raw not in ("true", "false"):
            raise self._err(f"{self.path}/{name}: expected true or false, got {raw!r}")
        return raw == "true"

    def elems(self, name: str, required: bool = True) -> list[_Node]:
        group = self.child(name, required)
        if group is None:
            return []
        nodes = [
            _Node(e, f"{group.path}/elem[{i}]", self.source)
            for i, e in enumerate(group.el.findall("elem"))
        ]
        group.used.add("elem")
        group.done()
        return nodes

    def strings(self, name: str) -> list[str]:
        out = []
        for n in self.elems(name):
            out.append((n.el.text or "").strip())
            n.done()
        return out

    def done(self) -> None:
        """Every child element must have been read."""
        for c in self.el:
            if not isinstance(c.tag, str):  # comments, processing instructions
                continue
            if c.tag not in self.used:
                raise self._err(
                    f"unsupported element {self.path}/{c.tag}: the built-in engine does not "
                    f"implement it (remove it, or run this input with Chroma)"
                )


# -- parsing ------------------------------------------------------------------------------------
_CFG_TYPES = {"UNIT", "DISORDERED", "WEAK_FIELD", "SZINQIO", "SCIDAC"}
_FERMION_MONOMIALS = {
    "TWO_FLAVOR_UNPREC_FERM_MONOMIAL",
    "TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL",
    "TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL",
}
# Chroma's FermAct names: WILSON / CLOVER are the even-odd preconditioned actions, the
# UNPRECONDITIONED_* ones the unpreconditioned (unprec_wilson_fermact_w.cc, ...); a monomial casts
# its action to the kind it needs and fails otherwise.
_EO_FERMACTS = {"WILSON": "WILSON", "CLOVER": "CLOVER"}
_UNPREC_FERMACTS = {"UNPRECONDITIONED_WILSON": "WILSON", "UNPRECONDITIONED_CLOVER": "CLOVER"}
_PREDICTORS = {"LAST_SOLUTION_4D_PREDICTOR", "ZERO_GUESS_4D_PREDICTOR"}
_INTEGRATORS = {"LCM_STS_LEAPFROG", "LCM_TST_LEAPFROG", "LCM_STS_MIN_NORM_2", "LCM_TST_MIN_NORM_2"}
_MEASUREMENTS = {"POLYAKOV_LOOP", "PLAQUETTE"}


def _cfg(node: _Node) -> CfgSpec:
    kind = node.text("cfg_type")
    if kind not in _CFG_TYPES:
        raise node._err(
            f"{node.path}/cfg_type: the built-in engine supports {sorted(_CFG_TYPES)}, got {kind!r}"
        )
    spec = CfgSpec(kind, node.text("cfg_file", "DUMMY"))
    if kind in ("SZINQIO", "SCIDAC"):
        node.boolean("parallel_io", False)
        node.boolean("ParallelIO", False)
        spec.reunit = node.boolean("reunit", True)
    node.done()
    return spec


def _gauge_monomial(node: _Node) -> dict[str, Any]:
    ga = node.child("GaugeAction")
    name = ga.text("Name")
    if name != "WILSON_GAUGEACT":
        raise node._err(f"{ga.path}/Name: the built-in engine supports WILSON_GAUGEACT, got "
                        f"{name!r}")
    beta = ga.real("beta")
    bc = ga.child("GaugeBC", required=False)
    if bc is not None:
        bcname = bc.text("Name")
        if bcname != "PERIODIC_GAUGEBC":
            raise node._err(f"{bc.path}/Name: only PERIODIC_GAUGEBC is supported, got {bcname!r}")
        bc.done()
    ga.done()
    return {"beta": beta}


def read_kappa_csw(fa: _Node, clover: bool) -> tuple[float, float]:
    """``(kappa, c_sw)`` of a Wilson-type ``FermionAction`` (``wilson_fermact_params_w.cc``,
    ``clover_fermact_params_w.cc``): exactly one of ``Kappa`` or ``Mass`` (``Mass = 1/(2 kappa)
    - 4``, so ``Mass > -4``), a positive hopping parameter; for clover ``clovCoeff``, with
    ``clovCoeffR``/``clovCoeffT`` (Chroma's anisotropic form) only equal to it; ``c_sw`` 0
    otherwise.  Errors name the element path and the value."""
    has_kappa = fa.el.find("Kappa") is not None
    if has_kappa == (fa.el.find("Mass") is not None):
        raise fa._err(f"{fa.path}: give exactly one of Kappa or Mass")
    fa.used.update(("Kappa", "Mass"))
    if has_kappa:
        kappa = fa.real("Kappa")
    else:
        mass = fa.real("Mass")
        if mass <= -4.0:
            raise fa._err(f"{fa.path}/Mass: expected Mass > -4 (kappa = 1/(2 (Mass + 4))), got "
                          f"{mass}")
        kappa = 1.0 / (2.0 * (mass + 4.0))
    if not kappa > 0:
        raise fa._err(f"{fa.path}/Kappa: expected a positive hopping parameter, got {kappa}")
    c_sw = 0.0
    if clover:
        c_sw = fa.real("clovCoeff")
        for extra in ("clovCoeffR", "clovCoeffT"):
            if fa.el.find(extra) is not None and fa.real(extra) != c_sw:
                raise fa._err(f"{fa.path}/{extra}: anisotropic clover coefficients are not "
                              f"supported (must equal clovCoeff)")
    return kappa, c_sw


def _fermion_monomial(node: _Node) -> dict[str, Any]:
    inv = node.child("InvertParam")
    inv_type = inv.text("invType")
    if inv_type != "CG_INVERTER":
        raise node._err(f"{inv.path}/invType: the built-in engine supports CG_INVERTER, got "
                        f"{inv_type!r}")
    params: dict[str, Any] = {
        "rsd_cg": inv.real("RsdCG"),
        "max_cg": inv.integer("MaxCG"),
    }
    inv.real("RsdCGRestart", params["rsd_cg"])
    inv.integer("MaxCGRestart", params["max_cg"])
    inv.integer("MinCG", 0)
    inv.done()
    fa = node.child("FermionAction")
    act = fa.text("FermAct")
    kind = node.el.findtext("Name", "").strip()
    want = _UNPREC_FERMACTS if kind == "TWO_FLAVOR_UNPREC_FERM_MONOMIAL" else _EO_FERMACTS
    if act not in want:
        other = "an unpreconditioned" if want is _UNPREC_FERMACTS else "an even-odd preconditioned"
        raise node._err(f"{fa.path}/FermAct: {kind} needs {other} fermion action "
                        f"({' or '.join(want)}), got {act!r}")
    params["fermact"] = want[act]
    params["fermact_name"] = act
    kappa, c_sw = read_kappa_csw(fa, params["fermact"] == "CLOVER")
    params["kappa"] = kappa
    if params["fermact"] == "CLOVER":
        params["c_sw"] = c_sw
    bc = fa.child("FermionBC")
    kind = bc.text("FermBC")
    if kind != "SIMPLE_FERMBC":
        raise node._err(f"{bc.path}/FermBC: the built-in engine supports SIMPLE_FERMBC, got "
                        f"{kind!r}")
    raw = bc.text("boundary").split()
    try:
        params["boundary"] = tuple(int(b) for b in raw)
    except ValueError:
        raise node._err(f"{bc.path}/boundary: expected integers like '1 1 1 -1', got "
                        f"{' '.join(raw)!r}") from None
    bc.done()
    fa.done()
    pred = node.child("ChronologicalPredictor", required=False)
    params["predictor"] = "ZERO_GUESS_4D_PREDICTOR"
    if pred is not None:
        pname = pred.text("Name")
        if pname not in _PREDICTORS:
            raise node._err(f"{pred.path}/Name: supported predictors are {sorted(_PREDICTORS)}, "
                            f"got {pname!r}")
        params["predictor"] = pname
        pred.done()
    return params


def _monomial(node: _Node) -> MonomialSpec:
    kind = node.text("Name")
    if kind == "GAUGE_MONOMIAL":
        params = _gauge_monomial(node)
    elif kind in _FERMION_MONOMIALS:
        params = _fermion_monomial(node)
    else:
        raise node._err(
            f"{node.path}/Name: the built-in engine supports GAUGE_MONOMIAL and "
            f"{sorted(_FERMION_MONOMIALS)}, got {kind!r}"
        )
    named = node.child("NamedObject")
    mid = named.text("monomial_id")
    named.done()
    node.done()
    return MonomialSpec(kind, mid, params)


def _integrator(node: _Node, known: dict[str, MonomialSpec]) -> IntegratorSpec:
    name = node.text("Name")
    if name not in _INTEGRATORS:
        raise node._err(f"{node.path}/Name: the built-in engine supports {sorted(_INTEGRATORS)}, "
                        f"got {name!r}")
    n_steps = node.integer("n_steps")
    if n_steps < 1:
        raise node._err(f"{node.path}/n_steps: expected a positive integer, got {n_steps}")
    ids = node.strings("monomial_ids")
    for mid in ids:
        if mid not in known:
            raise node._err(f"{node.path}/monomial_ids: unknown monomial id {mid!r} "
                            f"(defined: {sorted(known)})")
    lam = node.real("lambda", 0.1931833275037836) if "MIN_NORM_2" in name else None
    sub_node = node.child("SubIntegrator", required=False)
    sub = _integrator(sub_node, known) if sub_node is not None else None
    node.done()
    return IntegratorSpec(name, n_steps, ids, lam, sub)


def _measurement(node: _Node) -> dict[str, Any]:
    name = node.text("Name")
    if name not in _MEASUREMENTS:
        raise node._err(f"{node.path}/Name: the built-in hmc supports the inline measurements "
                        f"{sorted(_MEASUREMENTS)}, got {name!r}")
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


def read_seed(rng: _Node) -> tuple[int, ...]:
    """QDP++'s ``<RNG><Seed><elem>a</elem> x 4</Seed></RNG>`` (``qdp_primseed.h``)."""
    vals = rng.strings("Seed")
    rng.done()
    where = f"{rng.source}: {rng.path}/Seed"
    try:
        seed = tuple(int(v) for v in vals)
    except ValueError:
        raise ConfigError(f"{where}: expected integer elems, got {vals}") from None
    if len(seed) != 4:
        raise ConfigError(f"{where}: expected 4 elems, got {len(seed)}")
    return seed


def parse_hmc_input(tree: etree._ElementTree, source: str = "<input>") -> HMCInput:
    root = tree.getroot()
    if root.tag != "Params":
        raise ConfigError(f"{source}: expected root element <Params> of Chroma's hmc input, got "
                          f"<{root.tag}>")
    top = _Node(root, "/Params", source)
    mc = top.child("MCControl")
    cfg = _cfg(mc.child("Cfg"))
    seed = read_seed(mc.child("RNG"))
    spec_mc = dict(
        start_update=mc.integer("StartUpdateNum"),
        n_warmup=mc.integer("NWarmUpUpdates"),
        n_production=mc.integer("NProductionUpdates"),
        n_this_run=mc.integer("NUpdatesThisRun"),
        save_interval=mc.integer("SaveInterval"),
        save_prefix=mc.text("SavePrefix"),
        save_volfmt=mc.text("SaveVolfmt"),
    )
    if spec_mc["save_volfmt"] != "SINGLEFILE":
        raise ConfigError(f"{source}: /Params/MCControl/SaveVolfmt: the built-in engine writes "
                          f"SINGLEFILE, got {spec_mc['save_volfmt']!r}")
    if spec_mc["save_interval"] < 1:
        raise ConfigError(f"{source}: /Params/MCControl/SaveInterval: expected a positive "
                          f"integer, got {spec_mc['save_interval']}")
    mc.boolean("parallel_io", False)
    mc.boolean("ParallelIO", False)
    flags = dict(
        repro_check=mc.boolean("ReproCheckP", True),
        repro_frequency=mc.integer("ReproCheckFrequency", 10),
        reverse_check=mc.boolean("ReverseCheckP", True),
        reverse_frequency=mc.integer("ReverseCheckFrequency", 10),
        monitor_forces=mc.boolean("MonitorForces", True),
    )
    meas = [_measurement(n) for n in mc.elems("InlineMeasurements", required=False)]
    mc.done()
    trj = top.child("HMCTrj")
    raw_nrow = trj.text("nrow").split()
    try:
        nrow = tuple(int(n) for n in raw_nrow)
    except ValueError:
        raise ConfigError(f"{source}: /Params/HMCTrj/nrow: expected integers, got "
                          f"{' '.join(raw_nrow)!r}") from None
    monomials: dict[str, MonomialSpec] = {}
    for n in trj.elems("Monomials"):
        m = _monomial(n)
        if m.monomial_id in monomials:
            raise ConfigError(f"{source}: {n.path}: duplicate monomial_id {m.monomial_id!r}")
        monomials[m.monomial_id] = m
    ham = trj.child("Hamiltonian")
    ham_ids = ham.strings("monomial_ids")
    ham.done()
    for mid in ham_ids:
        if mid not in monomials:
            raise ConfigError(f"{source}: /Params/HMCTrj/Hamiltonian/monomial_ids: unknown "
                              f"monomial id {mid!r} (defined: {sorted(monomials)})")
    md = trj.child("MDIntegrator")
    tau0 = md.real("tau0")
    integ = _integrator(md.child("Integrator"), monomials)
    md.done()
    trj.done()
    top.done()
    # every Hamiltonian monomial must be integrated exactly once, as Chroma requires
    seen: list[str] = []
    level: IntegratorSpec | None = integ
    while level is not None:
        seen += level.monomial_ids
        level = level.sub
    if sorted(seen) != sorted(ham_ids):
        raise ConfigError(f"{source}: the integrator levels integrate {sorted(seen)} but the "
                          f"Hamiltonian has {sorted(ham_ids)}; each monomial must appear on "
                          f"exactly one level")
    return HMCInput(source=source, cfg=cfg, seed=seed, **spec_mc, **flags, measurements=meas,
                    nrow=nrow, monomials=monomials, hamiltonian=ham_ids, tau0=tau0,
                    integrator=integ, tree=tree)


def parse_xml_file(path: str | os.PathLike[str], what: str, *,
                   error: type[Exception] = ConfigError, hint: str = "",
                   huge: bool = False) -> etree._ElementTree:
    """Parse an XML file, white space kept: ``FileNotFoundError`` ("``path``: cannot read
    ``what`` (...)") when it cannot be read, ``error`` ("``path``: not well-formed XML``hint``:
    ...") when it does not parse.  ``huge``: lift lxml's size limits (large outputs)."""
    spath = os.fspath(path)
    try:
        return etree.parse(spath, etree.XMLParser(remove_blank_text=False, huge_tree=huge))
    except OSError as exc:
        raise FileNotFoundError(f"{spath}: cannot read {what} ({exc})") from exc
    except etree.XMLSyntaxError as exc:
        raise error(f"{spath}: not well-formed XML{hint}: {exc}") from exc


def read_hmc_input(path: str | os.PathLike[str]) -> HMCInput:
    """Parse a Chroma ``hmc`` input file (raises :class:`ConfigError` naming file and path)."""
    return parse_hmc_input(parse_xml_file(path, "hmc input"), os.fspath(path))


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


def write_xml(path: str | os.PathLike[str], root: etree._Element | bytes) -> None:
    """Write an XML document (element or serialised bytes) crash-safely, replacing ``path``
    (temporary file in the same directory, fsync, rename: :func:`bridge.io.lime.atomic_path`)."""
    data = root if isinstance(root, bytes) else etree.tostring(
        root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
