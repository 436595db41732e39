"""Chroma's ``chroma`` (measurement program) input XML: the subset the built-in fallback runs,
parsed strictly.

Element names and layout follow ``docs/formats.md`` section 4.2 (Chroma
``mainprogs/main/chroma.cc`` and the ``lib/meas/inline/**`` readers it dispatches to) and the
reference input ``../shared/reference/chroma/nf2_b1.0_k0.1_4x4/chroma_measure.ini.xml``::

    /chroma/Param/nrow                          "Lx Ly Lz Lt"
    /chroma/Param/InlineMeasurements/elem       Name, [Frequency], Param, NamedObject, [xml_file]
    /chroma/RNG/Seed/elem                       optional (Chroma's default seed: 11)
    /chroma/Cfg/{cfg_type, cfg_file, ...}       SZINQIO (alias SCIDAC) or UNIT

Supported inline measurements (anything else is a :class:`~bridge.errors.ConfigError` naming the
element path): ``PLAQUETTE``, ``POLYAKOV_LOOP``, ``QACTDEN``, ``QTOP_NAIVE``, ``MAKE_SOURCE``
(``POINT_SOURCE``), ``PROPAGATOR`` (``WILSON``/``CLOVER``, ``CG_INVERTER``), ``SINK_SMEAR``
(``POINT_SINK``), ``HADRON_SPECTRUM`` (mesons and baryons, zero momentum), ``WILSON_FLOW``,
``QIO_WRITE_NAMED_OBJECT`` and ``ERASE_NAMED_OBJECT``.  Every element of the input must be
understood: an unknown or unsupported element is an error, never silently ignored.

Named objects are tracked in input order, as Chroma's ``TheNamedObjMap`` holds them at run time:
``default_gauge_field`` exists from the start; ``MAKE_SOURCE`` creates a source,
``PROPAGATOR`` a propagator, ``SINK_SMEAR`` a sink-smeared propagator, ``WILSON_FLOW`` a gauge
field; ``ERASE_NAMED_OBJECT`` removes one.  A measurement that reads an id that does not exist
(yet), or that has the wrong kind (e.g. ``HADRON_SPECTRUM`` on an unsmeared propagator, as
Chroma's ``/SinkSmear`` record lookup would fail), is an error naming the id, the element path
and the ids that exist at that point.  Creating an id that exists replaces the object.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .hmc_input import CfgSpec
from .names import QUDA_INVERTERS
from .quda import read_as_builtin_cg
from .xml_in import XmlNode, parse_xml_file, read_kappa_csw, read_seed

__all__ = [
    "Measurement",
    "ChromaMeasureInput",
    "SUPPORTED_MEASUREMENTS",
    "DEFAULT_GAUGE_ID",
    "parse_chroma_input",
    "read_chroma_input",
]

DEFAULT_GAUGE_ID = "default_gauge_field"
"""The id under which ``chroma`` stores the configuration named by ``Cfg``."""

# object kinds in the named-object map
GAUGE, SOURCE, PROP, SMEARED = "gauge", "source", "propagator", "smeared_propagator"
_KIND_TEXT = {
    GAUGE: "a gauge field (Multi1dLatticeColorMatrix)",
    SOURCE: "a quark source (LatticePropagator from MAKE_SOURCE)",
    PROP: "a quark propagator (LatticePropagator from PROPAGATOR)",
    SMEARED: "a sink-smeared propagator (LatticePropagator from SINK_SMEAR)",
}
_PROPAGATOR_KINDS = (SOURCE, PROP, SMEARED)
_OBJECT_TYPES = {
    "Multi1dLatticeColorMatrix": (GAUGE,),
    "Multi1dLatticeColorMatrixD": (GAUGE,),
    "Multi1dLatticeColorMatrixF": (GAUGE,),
    "LatticePropagator": _PROPAGATOR_KINDS,
    "LatticePropagatorD": _PROPAGATOR_KINDS,
    "LatticePropagatorF": _PROPAGATOR_KINDS,
}
_CFG_TYPES = ("SZINQIO", "SCIDAC", "UNIT")


@dataclass
class Measurement:
    """One ``InlineMeasurements/elem``: Chroma's ``Name``, its element ``path``, ``Frequency``,
    the parsed parameters, the named objects it reads (``reads``: role -> id) and creates
    (``creates``: role -> id), and the input element itself (echoed into the output)."""

    name: str
    path: str
    frequency: int
    params: dict[str, Any]
    reads: dict[str, str] = field(default_factory=dict)
    creates: dict[str, str] = field(default_factory=dict)
    element: etree._Element | None = None


@dataclass
class ChromaMeasureInput:
    """A parsed ``chroma`` input: lattice, configuration, optional seed, the measurements in
    order, and the parsed tree (``/chroma/Input`` of the output is a copy of its root)."""

    source: str
    nrow: tuple[int, ...]
    cfg: CfgSpec
    seed: tuple[int, ...] | None
    measurements: list[Measurement]
    tree: etree._ElementTree


# -- small typed readers ------------------------------------------------------------------------
def _ints(node: XmlNode, name: str, count: int | None = None,
          default: str | None = None) -> tuple[int, ...]:
    raw = node.text(name, default)
    try:
        vals = tuple(int(v) for v in raw.split())
    except ValueError:
        raise node._err(f"{node.path}/{name}: expected integers separated by spaces, got "
                        f"{raw!r}") from None
    if count is not None and len(vals) != count:
        raise node._err(f"{node.path}/{name}: expected {count} integers, got {len(vals)} "
                        f"({raw!r})")
    return vals


def _version(node: XmlNode, allowed: tuple[int, ...], default: int | None = None) -> int:
    v = node.integer("version", default)
    if v not in allowed:
        raise node._err(f"{node.path}/version: the built-in chroma reads version "
                        f"{' or '.join(map(str, allowed))}, got {v}")
    return v


def _choice(node: XmlNode, name: str, allowed: tuple[str, ...], what: str,
            default: str | None = None) -> str:
    v = node.text(name, default)
    if v not in allowed:
        raise node._err(f"{node.path}/{name}: the built-in chroma supports {what} "
                        f"{', '.join(allowed)}; got {v!r}")
    return v


def _positive(node: XmlNode, name: str, default: int | None = None) -> int:
    v = node.integer(name, default)
    if v < 1:
        raise node._err(f"{node.path}/{name}: expected a positive integer, got {v}")
    return v


def _j_decay(node: XmlNode, nd: int) -> int:
    j = node.integer("j_decay")
    if j != nd - 1:
        raise node._err(f"{node.path}/j_decay: the built-in chroma measures along the time "
                        f"direction j_decay = {nd - 1} only, got {j}")
    return j


def _displacement(node: XmlNode) -> None:
    disp = node.child("Displacement", required=False)
    if disp is not None:
        _version(disp, (1,), 1)
        _choice(disp, "DisplacementType", ("NONE",), "the quark displacement")
        disp.done()


# -- measurement readers ----------------------------------------------------------------------
# Each returns (params, reads, creates); reads: role -> (id, allowed kinds); creates: role ->
# (id, kind).  Param echo and defaults follow the Chroma readers named in each docstring.
Reads = dict[str, tuple[str, tuple[str, ...]]]
Creates = dict[str, tuple[str, str]]


def _gauge_only(node: XmlNode, versions: tuple[int, ...] | None) -> tuple[dict, Reads, Creates]:
    par = node.child("Param", required=versions is not None)
    params: dict[str, Any] = {}
    if par is not None:
        params["version"] = (par.integer("version", 2) if versions is None
                             else _version(par, versions))
        par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    named.done()
    return params, {"gauge_id": (gid, (GAUGE,))}, {}


def _plaquette(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_plaquette.cc``: ``Param/version`` (optional here), ``NamedObject/gauge_id``."""
    return _gauge_only(node, None)


def _polyakov(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_polylp.cc``: ``Param/version``, ``NamedObject/gauge_id``."""
    return _gauge_only(node, None)


def _qactden(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_qactden.cc``: ``Param/version 1``, ``NamedObject/gauge_id``."""
    return _gauge_only(node, (1,))


def _qtop_naive(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_qnaive.cc``: ``Param/{version 1, k5}``, ``NamedObject/gauge_id``."""
    par = node.child("Param")
    params = {"version": _version(par, (1,)), "k5": par.real("k5")}
    par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    named.done()
    return params, {"gauge_id": (gid, (GAUGE,))}, {}


def _make_source(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_make_source_w.cc`` / ``qprop_io.cc: PropSourceConst_t``: ``Param/{version 6,
    Source/{version, SourceType POINT_SOURCE, j_decay, t_srce, [Displacement NONE]}}``,
    ``NamedObject/{gauge_id, source_id}``."""
    par = node.child("Param")
    params: dict[str, Any] = {"version": _version(par, (6,))}
    src = par.child("Source")
    params["source_version"] = _version(src, (1, 2))
    params["source_type"] = _choice(src, "SourceType", ("POINT_SOURCE",), "the source type")
    nd = len(nrow)
    params["j_decay"] = _j_decay(src, nd)
    t_srce = _ints(src, "t_srce", nd)
    if any(not 0 <= c < n for c, n in zip(t_srce, nrow, strict=True)):
        raise src._err(f"{src.path}/t_srce: {' '.join(map(str, t_srce))} lies outside the "
                       f"lattice {' '.join(map(str, nrow))}")
    params["t_srce"] = t_srce
    _displacement(src)
    src.done()
    par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    sid = named.text("source_id")
    named.done()
    return params, {"gauge_id": (gid, (GAUGE,))}, {"source_id": (sid, SOURCE)}


def _fermion_action(fa: XmlNode, nd: int) -> dict[str, Any]:
    """``FermionAction`` of ``WILSON`` / ``CLOVER`` or their ``UNPRECONDITIONED_`` forms
    (``wilson_fermact_params_w.cc``,
    ``clover_fermact_params_w.cc``): exactly one of ``Kappa``/``Mass``, isotropic only,
    ``FermionBC`` ``SIMPLE_FERMBC`` with integer ``boundary`` phases +-1."""
    act = _choice(fa, "FermAct", ("WILSON", "CLOVER", "UNPRECONDITIONED_WILSON",
                                  "UNPRECONDITIONED_CLOVER"), "the fermion actions")
    # a propagator is the same for the even-odd preconditioned and the unpreconditioned action
    act = act.removeprefix("UNPRECONDITIONED_")
    out: dict[str, Any] = {"fermact": act}
    out["kappa"], out["c_sw"] = read_kappa_csw(fa, act == "CLOVER")
    aniso = fa.child("AnisoParam", required=False)
    if aniso is not None:
        if aniso.boolean("anisoP", False):
            raise aniso._err(f"{aniso.path}/anisoP: anisotropic actions are not supported by the "
                             f"built-in chroma (anisoP must be false)")
        aniso.integer("t_dir", nd - 1)
        aniso.real("xi_0", 1.0)
        aniso.real("nu", 1.0)
        aniso.done()
    bc = fa.child("FermionBC")
    _choice(bc, "FermBC", ("SIMPLE_FERMBC",), "the fermion boundary condition")
    boundary = _ints(bc, "boundary", nd)
    if any(b not in (1, -1) for b in boundary):
        raise bc._err(f"{bc.path}/boundary: expected phases 1 or -1, got "
                      f"{' '.join(map(str, boundary))}")
    out["boundary"] = boundary
    bc.done()
    fa.done()
    return out


def _invert_param(inv: XmlNode) -> dict[str, Any]:
    """``InvertParam`` of ``CG_INVERTER`` (``syssolver_cg_params.cc``); a QUDA inverter is
    solved by the built-in CG with a notice (:func:`~bridge.chroma.quda.read_as_builtin_cg`)."""
    if (inv.el.findtext("invType") or "").strip() in QUDA_INVERTERS.values():
        return read_as_builtin_cg(inv)
    _choice(inv, "invType", ("CG_INVERTER",), "the inverter")
    rsd = inv.real("RsdCG")
    if not 0 < rsd < 1:
        raise inv._err(f"{inv.path}/RsdCG: expected a relative residual in (0, 1), got {rsd}")
    max_cg = _positive(inv, "MaxCG")
    inv.real("RsdCGRestart", rsd)
    inv.integer("MaxCGRestart", max_cg)
    inv.integer("MinCG", 0)
    inv.done()
    return {"rsd_cg": rsd, "max_cg": max_cg}


def _propagator(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_propagator_w.cc`` / ``qprop_io.cc: ChromaProp_t`` (versions 9 and 10 are the
    same): ``Param/{version, quarkSpinType FULL, obsvP, [numRetries], FermionAction,
    InvertParam}``, ``NamedObject/{gauge_id, source_id, prop_id}``."""
    par = node.child("Param")
    params: dict[str, Any] = {"version": _version(par, (9, 10))}
    _choice(par, "quarkSpinType", ("FULL",), "the quark spin type", "FULL")
    params["obsvP"] = par.boolean("obsvP", True)
    par.integer("numRetries", 1)
    params.update(_fermion_action(par.child("FermionAction"), len(nrow)))
    params.update(_invert_param(par.child("InvertParam")))
    par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    sid = named.text("source_id")
    pid = named.text("prop_id")
    named.done()
    return (params, {"gauge_id": (gid, (GAUGE,)), "source_id": (sid, (SOURCE,))},
            {"prop_id": (pid, PROP)})


def _sink_smear(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_sink_smear_w.cc`` / ``qprop_io.cc: PropSinkSmear_t``: ``Param/{version 5,
    Sink/{version, SinkType POINT_SINK, j_decay, [Displacement NONE]}}``,
    ``NamedObject/{gauge_id, prop_id, smeared_prop_id}``."""
    par = node.child("Param")
    params: dict[str, Any] = {"version": _version(par, (5,))}
    snk = par.child("Sink")
    params["sink_version"] = _version(snk, (1, 2))
    params["sink_type"] = _choice(snk, "SinkType", ("POINT_SINK",), "the sink type")
    params["j_decay"] = _j_decay(snk, len(nrow))
    _displacement(snk)
    snk.done()
    par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    pid = named.text("prop_id")
    sid = named.text("smeared_prop_id")
    named.done()
    return (params, {"gauge_id": (gid, (GAUGE,)), "prop_id": (pid, (PROP,))},
            {"smeared_prop_id": (sid, SMEARED)})


def _hadron_spectrum(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_hadspec_w.cc``: ``Param/{version 1, MesonP, CurrentP, BaryonP, time_rev,
    mom2_max, avg_equiv_mom}``, ``NamedObject/{gauge_id, sink_pairs/elem/{first_id,
    second_id}}``.  Zero momentum only (``mom2_max`` 0); no meson currents."""
    par = node.child("Param")
    params: dict[str, Any] = {"version": _version(par, (1,))}
    for key in ("MesonP", "CurrentP", "BaryonP", "time_rev"):
        if par.el.find(key) is None:
            raise par._err(f"missing required element {par.path}/{key}")
        params[key] = par.boolean(key, False)
    if params["CurrentP"]:
        raise par._err(f"{par.path}/CurrentP: meson currents (curcor2) are not implemented in "
                       f"the built-in chroma; set it to false")
    params["mom2_max"] = par.integer("mom2_max")
    if params["mom2_max"] != 0:
        raise par._err(f"{par.path}/mom2_max: the built-in chroma projects to zero momentum only "
                       f"(mom2_max 0), got {params['mom2_max']}")
    params["avg_equiv_mom"] = par.boolean("avg_equiv_mom", True)
    par.done()
    named = node.child("NamedObject")
    gid = named.text("gauge_id")
    reads: Reads = {"gauge_id": (gid, (GAUGE,))}
    pairs = []
    for i, pair in enumerate(named.elems("sink_pairs")):
        first, second = pair.text("first_id"), pair.text("second_id")
        pair.done()
        reads[f"sink_pairs[{i}]/first_id"] = (first, (SMEARED,))
        reads[f"sink_pairs[{i}]/second_id"] = (second, (SMEARED,))
        pairs.append((first, second))
    if not pairs:
        raise named._err(f"{named.path}/sink_pairs: expected at least one elem")
    named.done()
    params["sink_pairs"] = pairs
    return params, reads, {}


def _wilson_flow(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_wilson_flow.cc``: ``Param/{version 1|2, nstep, wtime, t_dir, [smear_dirs]}``
    (``smear_dirs`` all 1 only), ``NamedObject/{gauge_in, gauge_out}``."""
    nd = len(nrow)
    par = node.child("Param")
    params: dict[str, Any] = {"version": _version(par, (1, 2))}
    params["nstep"] = _positive(par, "nstep")
    params["wtime"] = par.real("wtime")
    if not params["wtime"] > 0:
        raise par._err(f"{par.path}/wtime: expected a positive flow time, got {params['wtime']}")
    params["t_dir"] = par.integer("t_dir", nd - 1)
    if not 0 <= params["t_dir"] < nd:
        raise par._err(f"{par.path}/t_dir: expected a direction 0..{nd - 1}, got "
                       f"{params['t_dir']}")
    if params["version"] == 2:
        dirs = _ints(par, "smear_dirs", nd, " ".join(["1"] * nd))
        if any(d != 1 for d in dirs):
            raise par._err(f"{par.path}/smear_dirs: the built-in chroma flows in all directions "
                           f"only (smear_dirs {' '.join(['1'] * nd)}), got "
                           f"{' '.join(map(str, dirs))}")
        params["smear_dirs"] = dirs
    par.done()
    named = node.child("NamedObject")
    gin = named.text("gauge_in")
    gout = named.text("gauge_out")
    named.done()
    return params, {"gauge_in": (gin, (GAUGE,))}, {"gauge_out": (gout, GAUGE)}


def _qio_write(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_qio_write_obj.cc``: ``NamedObject/{object_id, object_type}``,
    ``File/{file_name, file_volfmt SINGLEFILE, [parallel_io]}``."""
    named = node.child("NamedObject")
    oid = named.text("object_id")
    otype = _choice(named, "object_type", tuple(_OBJECT_TYPES), "the object types")
    named.done()
    f = node.child("File")
    name = f.text("file_name")
    if not name:
        raise f._err(f"{f.path}/file_name: expected a file name, got an empty element")
    _choice(f, "file_volfmt", ("SINGLEFILE",), "the volume format")
    f.boolean("parallel_io", False)
    f.done()
    precision = 32 if otype.endswith("F") else 64
    return ({"object_type": otype, "file_name": name, "precision": precision},
            {"object_id": (oid, _OBJECT_TYPES[otype])}, {})


def _erase(node: XmlNode, nrow: tuple[int, ...]):
    """``inline_erase_obj.cc``: ``NamedObject/object_id``."""
    named = node.child("NamedObject")
    oid = named.text("object_id")
    named.done()
    return {}, {"object_id": (oid, (GAUGE, *_PROPAGATOR_KINDS))}, {}


_READERS = {
    "PLAQUETTE": _plaquette,
    "POLYAKOV_LOOP": _polyakov,
    "QACTDEN": _qactden,
    "QTOP_NAIVE": _qtop_naive,
    "MAKE_SOURCE": _make_source,
    "PROPAGATOR": _propagator,
    "SINK_SMEAR": _sink_smear,
    "HADRON_SPECTRUM": _hadron_spectrum,
    "WILSON_FLOW": _wilson_flow,
    "QIO_WRITE_NAMED_OBJECT": _qio_write,
    "ERASE_NAMED_OBJECT": _erase,
}
SUPPORTED_MEASUREMENTS: tuple[str, ...] = tuple(_READERS)
"""Chroma inline measurement names the built-in ``chroma`` runs."""


def _measurement(node: XmlNode, nrow: tuple[int, ...], objects: dict[str, tuple[str, str]]
                 ) -> Measurement:
    name = node.text("Name")
    reader = _READERS.get(name)
    if reader is None:
        raise node._err(f"{node.path}/Name: unsupported inline measurement {name!r}; the "
                        f"built-in chroma runs {', '.join(SUPPORTED_MEASUREMENTS)} (run this "
                        f"input with Chroma)")
    freq = _positive(node, "Frequency", 1)
    params, reads, creates = reader(node, nrow)
    xml_file = node.text("xml_file", "")
    if xml_file:
        raise node._err(f"{node.path}/xml_file: writing a measurement to a separate XML file is "
                        f"not supported by the built-in chroma (got {xml_file!r}); remove it")
    node.done()
    for role, (oid, kinds) in reads.items():
        have = objects.get(oid)
        where = f"{node.path}/NamedObject/{role}"
        if have is None:
            known = ", ".join(f"{k!r} ({v[0]})" for k, v in objects.items()) or "none"
            raise node._err(f"{where}: {name} refers to the named object {oid!r}, which does not "
                            f"exist at this point of the input (defined so far: {known})")
        if have[0] not in kinds:
            raise node._err(f"{where}: {name} needs {' or '.join(_KIND_TEXT[k] for k in kinds)}, "
                            f"but {oid!r} is {_KIND_TEXT[have[0]]} (created by {have[1]})")
    if name == "ERASE_NAMED_OBJECT":
        objects.pop(reads["object_id"][0])
    for _role, (oid, kind) in creates.items():
        objects[oid] = (kind, f"{node.path} ({name})")
    return Measurement(
        name=name,
        path=node.path,
        frequency=freq,
        params=params,
        reads={k: v[0] for k, v in reads.items()},
        creates={k: v[0] for k, v in creates.items()},
        element=node.el,
    )


def _cfg(node: XmlNode) -> CfgSpec:
    kind = _choice(node, "cfg_type", _CFG_TYPES, "the configuration types")
    if kind == "UNIT":
        spec = CfgSpec(kind, node.text("cfg_file", "DUMMY"))
    else:
        spec = CfgSpec(kind, node.text("cfg_file"))
        node.boolean("parallel_io", False)
        node.boolean("ParallelIO", False)
        spec.reunit = node.boolean("reunit", True)
    node.done()
    return spec


def parse_chroma_input(tree: etree._ElementTree, source: str = "<input>") -> ChromaMeasureInput:
    """Parse a ``chroma`` input tree (raises :class:`ConfigError` naming ``source`` and the
    element path of anything unsupported or inconsistent)."""
    root = tree.getroot()
    if root.tag != "chroma":
        raise ConfigError(f"{source}: expected root element <chroma> of Chroma's chroma input, "
                          f"got <{root.tag}>")
    top = XmlNode(root, "/chroma", source)
    param = top.child("Param")
    nrow = _ints(param, "nrow")
    if len(nrow) != 4 or any(n < 1 for n in nrow):
        raise param._err(f"{param.path}/nrow: expected 4 positive extents (x y z t), got "
                         f"{' '.join(map(str, nrow))}")
    objects: dict[str, tuple[str, str]] = {DEFAULT_GAUGE_ID: (GAUGE, "/chroma/Cfg")}
    meas = [_measurement(n, nrow, objects) for n in param.elems("InlineMeasurements")]
    param.done()
    seed: tuple[int, ...] | None = None
    rng = top.child("RNG", required=False)
    if rng is not None:
        seed = read_seed(rng)
    cfg = _cfg(top.child("Cfg"))
    top.done()
    return ChromaMeasureInput(source=source, nrow=nrow, cfg=cfg, seed=seed, measurements=meas,
                              tree=tree)


def read_chroma_input(path: str | os.PathLike[str]) -> ChromaMeasureInput:
    """Parse a Chroma ``chroma`` input file (:class:`ConfigError` naming file and element path
    for anything unsupported; ``FileNotFoundError`` if it cannot be read)."""
    return parse_chroma_input(parse_xml_file(path, "chroma input"), os.fspath(path))
