"""Chroma's QUDA solvers in its inputs: the settings of an ``InvertParam`` block of
``QUDA_WILSON_INVERTER``, ``QUDA_CLOVER_INVERTER`` and their multigrid forms, their validation,
their reading back from XML, and the consistency of such a block with the fermion action beside it.

Element names and defaults follow Chroma's readers (``lib/actions/ferm/invert/quda_solvers/
syssolver_quda_{wilson,clover,multigrid_wilson,multigrid_clover}_params.cc``,
``quda_multigrid_params.{h,cc}``, ``enum_quda_io.cc``).  A QUDA block carries its own copy of the
action (``WilsonParams``/``CloverParams``: ``Kappa`` or ``Mass``, ``clovCoeff``) and its own time
boundary (``AntiPeriodicT``; QUDA's spatial boundaries are periodic), and QUDA solves the even-odd
(odd-odd ``MATPC``) system, so the block must agree with the even-odd preconditioned
``FermionAction`` beside it: :func:`quda_problems`.  The rendering is in
:mod:`bridge.chroma.templates`; the built-in engine solves a QUDA block with its own CG
(:func:`read_as_builtin_cg`).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lxml import etree

from ..errors import ConfigError
from .names import (
    EO_FERMACTS,
    QUDA_INVERTERS,
    QUDA_MDAGM_INVERTERS,
    QUDA_MG_CYCLES,
    QUDA_PRECISIONS,
    QUDA_RECONSTRUCTS,
    QUDA_SOLVER_TYPES,
)
from .xml_in import XmlNode

__all__ = ["INVERTER_CHOICES", "QUDA_KEYS", "QudaOptions", "check_inverter", "read_quda_invert",
           "read_as_builtin_cg", "quda_problems", "quda_options_from_dict"]

INVERTER_CHOICES = ("cg", *QUDA_INVERTERS)
"""``--inverter`` values: Chroma's ``CG_INVERTER`` or one of its QUDA solvers."""
_QUDA_NAMES = tuple(QUDA_INVERTERS.values())
_OPTIONAL_UNMODELLED = ("Pipeline", "GCRInnerParams", "BackupSolverParam", "DumpOnFail",
                        "ThresholdCount", "SolutionCheckP")
"""Chroma reads these too; they tune QUDA (or its failure handling) and are accepted as given."""
_MG_UNMODELLED = ("CoarseSolverType", "CoarseResidual", "MaxCoarseIterations", "SmootherType",
                  "SmootherTol", "SmootherHaloPrecision", "SmootherSchwarzType",
                  "SmootherSchwarzCycle", "SubspaceSolver", "RsdTargetSubspaceCreate",
                  "MaxIterSubspaceCreate", "MaxIterSubspaceRefresh", "OuterGCRNKrylov",
                  "PrecondGCRNKrylov", "CheckMultigridSetup", "RelaxationOmegaMG",
                  "RelaxationOmegaOuter", "SetupOnGPU", "SchwarzType")


def _fail(source: str, key: str, value: Any, expected: str) -> ConfigError:
    return ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")


@dataclass
class QudaOptions:
    """The solver settings of a QUDA ``InvertParam`` (defaults: Chroma's, where its reader has
    one).  ``solver_type`` ``SolverType`` (required by Chroma; ``None``: ``CG``, ``GCR`` for
    multigrid, as in Chroma's test inputs); ``delta`` the reliable-update ``Delta`` (required by
    Chroma; 0.1 as in its ``t_leapfrog`` QUDA input); ``precision``/``sloppy_precision``
    ``CudaPrecision``/``CudaSloppyPrecision``; ``reconstruct``/``sloppy_reconstruct`` the link
    compression; ``asymmetric`` ``AsymmetricLinop``; ``tolerance_factor``
    ``RsdToleranceFactor``; ``autotune`` ``AutotuneDslash``.  Multigrid (``MULTIGRIDParams``,
    defaults of Chroma's ``MULTIGRIDSolverParams``): ``mg_blocking`` one block ``(x, y, z, t)``
    per coarse level, ``mg_null_vectors``, ``mg_pre_smooth``, ``mg_post_smooth`` (one value, or
    one per coarse level), ``mg_precision``, ``mg_reconstruct``, ``mg_cycle``, and
    ``mg_subspace_id`` (``SubspaceID``, the named object holding the clover null space)."""

    solver_type: str | None = None
    delta: float = 0.1
    precision: str = "DEFAULT"
    sloppy_precision: str = "DEFAULT"
    reconstruct: str = "RECONS_12"
    sloppy_reconstruct: str = "RECONS_12"
    asymmetric: bool = False
    tolerance_factor: float = 10.0
    autotune: bool = False
    mg_blocking: tuple[tuple[int, ...], ...] = ((4, 4, 4, 4),)
    mg_null_vectors: int | tuple[int, ...] = 16
    mg_pre_smooth: int | tuple[int, ...] = 2
    mg_post_smooth: int | tuple[int, ...] = 2
    mg_precision: str = "DEFAULT"
    mg_reconstruct: str = "RECONS_NONE"
    mg_cycle: str = "MG_VCYCLE"
    mg_subspace_id: str = "qcd_bridge_mg_subspace"

    def solver(self, inv_type: str) -> str:
        """``SolverType`` for ``inv_type``."""
        if self.solver_type is not None:
            return self.solver_type
        return "GCR" if "MULTIGRID" in inv_type else "CG"

    def validate(self, source: str, nrow: Sequence[int], inverter: str) -> None:
        """Raise :class:`ConfigError` naming ``source``, the option, its value and what Chroma
        accepts, for the options ``inverter`` (a key of :data:`INVERTER_CHOICES`) reads;
        normalises the per-level lists to one value per coarse level."""
        if inverter == "cg":
            return
        if self.solver_type is None:
            self.solver_type = "GCR" if "multigrid" in inverter else "CG"
        for key, value, names in (("quda_solver", self.solver_type, QUDA_SOLVER_TYPES),
                                  ("quda_precision", self.precision, QUDA_PRECISIONS),
                                  ("quda_sloppy_precision", self.sloppy_precision,
                                   QUDA_PRECISIONS),
                                  ("quda_reconstruct", self.reconstruct, QUDA_RECONSTRUCTS),
                                  ("quda_sloppy_reconstruct", self.sloppy_reconstruct,
                                   QUDA_RECONSTRUCTS),
                                  ("mg_precision", self.mg_precision, QUDA_PRECISIONS),
                                  ("mg_reconstruct", self.mg_reconstruct, QUDA_RECONSTRUCTS),
                                  ("mg_cycle", self.mg_cycle, QUDA_MG_CYCLES)):
            if not (value is None and key == "quda_solver") and value not in names:
                raise _fail(source, key, value, "one of Chroma's names " + ", ".join(names))
        if (isinstance(self.delta, bool) or not isinstance(self.delta, (int, float))
                or not 0 < self.delta <= 1):
            raise _fail(source, "quda_delta", self.delta, "a reliable-update delta in (0, 1]")
        if (isinstance(self.tolerance_factor, bool)
                or not isinstance(self.tolerance_factor, (int, float))
                or not self.tolerance_factor >= 1):
            raise _fail(source, "quda_tolerance_factor", self.tolerance_factor, "a number >= 1")
        if "multigrid" not in inverter:
            return
        self.mg_blocking = _check_blocking(source, self.mg_blocking, nrow)
        levels = len(self.mg_blocking)
        for key in ("mg_null_vectors", "mg_pre_smooth", "mg_post_smooth"):
            setattr(self, key, _per_level(source, key, getattr(self, key), levels,
                                          1 if key == "mg_null_vectors" else 0))
        sid = self.mg_subspace_id
        if not isinstance(sid, str) or not sid or any(c.isspace() or c in "<>&" for c in sid):
            raise _fail(source, "mg_subspace_id", sid, "a name without spaces or <>&")


def _check_blocking(source: str, blocking: Any, nrow: Sequence[int]) -> tuple[tuple[int, ...], ...]:
    """Each coarse level's block ``(bx, by, bz, bt)`` must divide the lattice of the level
    above (the coarse lattice of QUDA's multigrid is the fine one divided by the blocks)."""
    ok = isinstance(blocking, (list, tuple)) and len(blocking) >= 1 and all(
        isinstance(b, (list, tuple)) and len(b) == 4
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in b)
        for b in blocking)
    if not ok:
        raise _fail(source, "mg_blocking", blocking,
                    "one or more blocks of 4 positive integers (x y z t), one per coarse level")
    dims = list(nrow)
    for level, block in enumerate(blocking):
        if any(d % b for d, b in zip(dims, block, strict=True)):
            raise _fail(source, "mg_blocking", blocking,
                        f"blocks that divide the lattice: level {level + 1} block "
                        f"{' '.join(map(str, block))} does not divide "
                        f"{' '.join(map(str, dims))}")
        dims = [d // b for d, b in zip(dims, block, strict=True)]
    return tuple(tuple(b) for b in blocking)


def _per_level(source: str, key: str, value: Any, levels: int, minimum: int) -> tuple[int, ...]:
    vals = (value,) if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(vals, (list, tuple)) or len(vals) not in (1, levels)
            or any(isinstance(v, bool) or not isinstance(v, int) or v < minimum for v in vals)):
        raise _fail(source, key, value, f"one integer >= {minimum}, or one per coarse level "
                    f"({levels})")
    return tuple(vals) * (levels if len(vals) == 1 else 1)


def check_inverter(source: str, inverter: Any, fermion: str, precond: str,
                   boundary: Sequence[int], program: str) -> None:
    """``inverter`` (one of :data:`INVERTER_CHOICES`) against the action it solves:
    ``fermion`` ``wilson``/``clover``, ``precond`` ``eo``/``none``, the fermion ``boundary``
    (QUDA's spatial boundaries are periodic) and ``program`` ``hmc`` (MdagM solves in the
    monomials) or ``chroma`` (propagators)."""
    if inverter not in INVERTER_CHOICES:
        raise _fail(source, "inverter", inverter, " or ".join(INVERTER_CHOICES))
    if inverter == "cg":
        return
    if inverter.endswith("clover") != (fermion == "clover"):
        want = [k for k in QUDA_INVERTERS if k.endswith(fermion)]
        raise _fail(source, "inverter", inverter, f"a QUDA {fermion} inverter for the "
                    f"{fermion} action ({' or '.join(want)})")
    if precond != "eo":
        raise _fail(source, "inverter", inverter, "an even-odd preconditioned action (precond "
                    "eo): QUDA solves the odd-odd preconditioned system")
    if tuple(boundary[:3]) != (1, 1, 1):
        raise _fail(source, "boundary", tuple(boundary), "periodic spatial boundaries (1 1 1 "
                    "and 1 or -1 in time) with a QUDA inverter: QUDA sets only the time one")
    if program == "hmc" and QUDA_INVERTERS[inverter] not in QUDA_MDAGM_INVERTERS:
        raise _fail(source, "inverter", inverter, "an inverter Chroma registers for the hmc "
                    "monomials' MdagM solves (quda-wilson, quda-clover or "
                    "quda-multigrid-clover; QUDA_MULTIGRID_WILSON_INVERTER solves propagators "
                    "only)")


def _ints_text(node: XmlNode, name: str) -> tuple[int, ...]:
    raw = node.text(name)
    try:
        return tuple(int(v) for v in raw.split())
    except ValueError:
        raise node._err(f"{node.path}/{name}: expected integers, got {raw!r}") from None


def _required_bool(node: XmlNode, name: str) -> bool:
    raw = node.text(name)
    if raw not in ("true", "false"):
        raise node._err(f"{node.path}/{name}: expected true or false, got {raw!r}")
    return raw == "true"


def _read_action(inv: XmlNode, clover: bool) -> tuple[float, float | None]:
    act = inv.child("CloverParams" if clover else "WilsonParams")
    has_kappa, has_mass = act.el.find("Kappa") is not None, act.el.find("Mass") is not None
    if has_kappa == has_mass:
        raise act._err(f"{act.path}: expected exactly one of Kappa or Mass")
    kappa = act.real("Kappa") if has_kappa else 1.0 / (2.0 * (act.real("Mass") + 4.0))
    act.used.update(("Kappa", "Mass", "AnisoParam", "u0", "MaxNorm", "TwistedM",
                     "clovCoeffR", "clovCoeffT"))
    csw = act.real("clovCoeff") if clover else None
    act.done()
    return kappa, csw


def _read_multigrid(inv: XmlNode, opts: dict[str, Any]) -> None:
    mg = inv.child("MULTIGRIDParams")
    opts["mg_precision"] = mg.text("Precision")
    opts["mg_reconstruct"] = mg.text("Reconstruct")
    opts["mg_cycle"] = mg.text("CycleType")
    blocks = mg.child("Blocking")
    blocking = []
    for i, e in enumerate(blocks.el.findall("elem")):
        try:
            blocking.append(tuple(int(v) for v in (e.text or "").split()))
        except ValueError:
            raise mg._err(f"{blocks.path}/elem[{i}]: expected 4 integers, got "
                          f"{e.text!r}") from None
    opts["mg_blocking"] = tuple(blocking)
    blocks.used.add("elem")
    blocks.done()
    for key, name in (("mg_null_vectors", "NullVectors"),
                      ("mg_pre_smooth", "Pre-SmootherApplications"),
                      ("mg_post_smooth", "Post-SmootherApplications")):
        opts[key] = _ints_text(mg, name)
    for name in ("Verbosity", "GenerateNullspace", "GenerateAllLevels"):
        mg.boolean(name, False)
    mg.used.update(_MG_UNMODELLED)
    mg.done()


def read_quda_invert(inv: XmlNode, nrow: Sequence[int] | None = None) -> dict[str, Any]:
    """A QUDA ``InvertParam`` (the node of the element): ``inv_type``, ``rsd`` (``RsdTarget``),
    ``max_iter`` (``MaxIter``), ``kappa`` and ``csw`` (``None`` for Wilson) of its action,
    ``anti_periodic_t`` and ``options`` (:class:`QudaOptions`, validated against ``nrow`` when
    given).  Elements Chroma reads but this model does not (``Pipeline``, ``GCRInnerParams``,
    backup solvers, multigrid smoother details) are accepted; unknown ones are refused by a
    strict node."""
    inv_type = inv.text("invType")
    if inv_type not in _QUDA_NAMES:
        raise inv._err(f"{inv.path}/invType: expected one of {', '.join(_QUDA_NAMES)}, got "
                       f"{inv_type!r}")
    kappa, csw = _read_action(inv, "CLOVER" in inv_type)
    opts: dict[str, Any] = {
        "solver_type": inv.text("SolverType"), "delta": inv.real("Delta"),
        "precision": inv.text("CudaPrecision", "DEFAULT"),
        "sloppy_precision": inv.text("CudaSloppyPrecision", "DEFAULT"),
        "reconstruct": inv.text("CudaReconstruct", "RECONS_12"),
        "sloppy_reconstruct": inv.text("CudaSloppyReconstruct", "RECONS_12"),
        "asymmetric": inv.boolean("AsymmetricLinop", False),
        "tolerance_factor": inv.real("RsdToleranceFactor", 10.0),
        "autotune": inv.boolean("AutotuneDslash", False)}
    out = {"inv_type": inv_type, "rsd": inv.real("RsdTarget"), "max_iter": inv.integer("MaxIter"),
           "kappa": kappa, "csw": csw, "anti_periodic_t": _required_bool(inv, "AntiPeriodicT")}
    for name in ("Verbose", "AxialGaugeFix", "SilentFail"):
        inv.boolean(name, False)
    if "MULTIGRID" in inv_type:
        _read_multigrid(inv, opts)
        if "CLOVER" in inv_type:
            opts["mg_subspace_id"] = inv.text("SubspaceID")
    inv.used.update(_OPTIONAL_UNMODELLED)
    inv.done()
    options = QudaOptions(**opts)
    if nrow is not None:
        kind = next(k for k, v in QUDA_INVERTERS.items() if v == inv_type)
        options.validate(f"{inv.source}: {inv.path}", nrow, kind)
    out["options"] = options
    return out


def read_as_builtin_cg(inv: XmlNode) -> dict[str, Any]:
    """The built-in engine's reading of a QUDA ``InvertParam``: its own CG with ``RsdCG`` =
    ``RsdTarget`` and ``MaxCG`` = ``MaxIter`` (CG on the even-odd normal equations reaches the
    same solution; the QUDA settings only tune how QUDA gets there).  Prints a one-line notice
    to stderr: the input runs, without a GPU."""
    q = read_quda_invert(inv)
    parent = inv.el.getparent()
    problems = [] if parent is None else quda_problems(parent, inv.path.rpartition("/")[0],
                                                       inv.el.tag)
    if problems:
        raise inv._err("the QUDA inverter disagrees with the fermion action it solves:\n  "
                       + "\n  ".join(problems))
    print(f"notice: {inv.source}: {inv.path}/invType {q['inv_type']}: the built-in engine "
          f"solves with its own CG (RsdCG = RsdTarget = {q['rsd']:g}, MaxCG = MaxIter = "
          f"{q['max_iter']}); the QUDA settings apply when Chroma+QUDA runs this input",
          file=sys.stderr)
    return {"rsd_cg": q["rsd"], "max_cg": q["max_iter"]}


def _kappa_of(el: etree._Element) -> float | None:
    for tag, conv in (("Kappa", float), ("Mass", lambda m: 1.0 / (2.0 * (float(m) + 4.0)))):
        text = el.findtext(tag)
        if text is not None:
            try:
                return conv(text.strip())
            except (ValueError, ZeroDivisionError):
                return None
    return None


def _differ(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and not math.isclose(a, b, rel_tol=1e-12)


def quda_problems(el: etree._Element, path: str, inv_path: str = "InvertParam",
                  act_path: str = "FermionAction") -> list[str]:
    """Problems of a QUDA ``InvertParam`` at ``el/inv_path`` against the ``FermionAction`` at
    ``el/act_path``: QUDA solves the even-odd system of its own copy of the action, so the
    action must be ``WILSON``/``CLOVER`` (clover for the clover inverters), the copy's kappa and
    clover coefficient must equal the action's, and ``AntiPeriodicT`` must match the action's
    time boundary (spatial ones periodic).  Empty for other inverters."""
    inv, act = el.find(inv_path), el.find(act_path)
    inv_type = "" if inv is None else (inv.findtext("invType") or "").strip()
    if inv_type not in _QUDA_NAMES or act is None:
        return []
    out: list[str] = []
    where = f"{path}/{inv_path}"
    fermact = (act.findtext("FermAct") or "").strip()
    clover = "CLOVER" in inv_type
    if fermact not in EO_FERMACTS or (fermact == "CLOVER") != clover:
        want = "CLOVER" if clover else "WILSON"
        out.append(f"{where}/invType: {inv_type} solves the even-odd preconditioned "
                   f"{want.lower()} system; {path}/{act_path}/FermAct must be {want}, got "
                   f"{fermact!r}")
    copy = inv.find("CloverParams" if clover else "WilsonParams")
    if copy is not None:
        k_inv, k_act = _kappa_of(copy), _kappa_of(act)
        if _differ(k_inv, k_act):
            out.append(f"{where}: kappa {k_inv:.15g} of QUDA's action differs from kappa "
                       f"{k_act:.15g} of {path}/{act_path} (QUDA builds its operator from "
                       f"InvertParam)")
        c_inv, c_act = copy.findtext("clovCoeff"), act.findtext("clovCoeff")
        try:
            if clover and c_inv and c_act and _differ(float(c_inv), float(c_act)):
                out.append(f"{where}: clovCoeff {c_inv.strip()} of QUDA's action differs from "
                           f"clovCoeff {c_act.strip()} of {path}/{act_path}")
        except ValueError:
            pass  # reported by the structural check of the value
    bnd = (act.findtext("FermionBC/boundary") or act.findtext("FermState/FermionBC/boundary")
           or "").split()
    anti = (inv.findtext("AntiPeriodicT") or "").strip()
    if len(bnd) == 4 and anti in ("true", "false"):
        if bnd[:3] != ["1", "1", "1"]:
            out.append(f"{path}/{act_path}/FermionBC/boundary: QUDA's solvers take periodic "
                       f"spatial boundaries, got {' '.join(bnd)}")
        if (bnd[3] == "-1") != (anti == "true"):
            out.append(f"{where}/AntiPeriodicT: {anti} disagrees with the time boundary "
                       f"{bnd[3]} of {path}/{act_path}/FermionBC")
    return out


QUDA_KEYS = {"quda_solver": "solver_type", "quda_delta": "delta",
             "quda_precision": "precision", "quda_sloppy_precision": "sloppy_precision",
             "quda_reconstruct": "reconstruct", "quda_sloppy_reconstruct": "sloppy_reconstruct",
             "quda_asymmetric": "asymmetric", "quda_tolerance_factor": "tolerance_factor",
             "quda_autotune": "autotune", "mg_blocking": "mg_blocking",
             "mg_null_vectors": "mg_null_vectors", "mg_pre_smooth": "mg_pre_smooth",
             "mg_post_smooth": "mg_post_smooth", "mg_precision": "mg_precision",
             "mg_reconstruct": "mg_reconstruct", "mg_cycle": "mg_cycle",
             "mg_subspace_id": "mg_subspace_id"}
"""Flat-dictionary keys (JSON config, command line with ``-``) -> :class:`QudaOptions` fields."""


def quda_options_from_dict(d: dict[str, Any], source: str) -> QudaOptions:
    """:class:`QudaOptions` from the flat keys :data:`QUDA_KEYS` (``mg_blocking`` as blocks or
    as a flat list of 4 integers per level); refuses QUDA keys with ``inverter`` ``cg`` and
    multigrid keys with a non-multigrid inverter (validation: :meth:`QudaOptions.validate`)."""
    inverter = d.get("inverter", "cg")
    given = {k: d[k] for k in QUDA_KEYS if d.get(k) is not None}
    for key, value in given.items():
        if inverter == "cg" or (key.startswith("mg_") and "multigrid" not in str(inverter)) or (
                key == "mg_subspace_id" and inverter != "quda-multigrid-clover"):
            raise _fail(source, key, value, f"no {key} setting with inverter {inverter} (it "
                        f"belongs to the QUDA{' multigrid' if key.startswith('mg_') else ''} "
                        f"inverters)")
    blocking = given.get("mg_blocking")
    if (isinstance(blocking, (list, tuple)) and blocking
            and all(isinstance(v, int) for v in blocking)):
        if len(blocking) % 4:
            raise _fail(source, "mg_blocking", blocking, "4 integers (x y z t) per level")
        given["mg_blocking"] = tuple(tuple(blocking[i:i + 4])
                                     for i in range(0, len(blocking), 4))
    for key in ("mg_null_vectors", "mg_pre_smooth", "mg_post_smooth"):
        if isinstance(given.get(key), list):
            given[key] = tuple(given[key])
    return QudaOptions(**{QUDA_KEYS[k]: v for k, v in given.items()})
