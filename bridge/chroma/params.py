"""Typed parameters of the inputs the templates write (:mod:`bridge.chroma.templates`): the
``hmc`` run (:class:`HMCParams`) and the ``chroma`` measurements (:class:`MeasureParams`), their
validation (errors name the key, the value and what was expected) and their flat-dictionary form
(JSON config, command line)."""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigError
from .names import PREDICTORS
from .quda import QUDA_KEYS, QudaOptions, check_inverter, quda_options_from_dict

__all__ = [
    "GaugeParams",
    "FermionParams",
    "IntegratorParams",
    "HMCParams",
    "PionParams",
    "FlowParams",
    "MeasureParams",
    "hmc_params_from_dict",
    "measure_params_from_dict",
    "params_to_dict",
]


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
    inverter: str = "cg"
    quda: QudaOptions = field(default_factory=QudaOptions)

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
        check_inverter(source, f.inverter, f.fermion, f.precond, f.boundary, "hmc")
        f.quda.validate(source, self.nrow, f.inverter)


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
    inverter: str = "cg"
    quda: QudaOptions = field(default_factory=QudaOptions)


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
            check_inverter(source, p.inverter, p.fermion, "eo", p.boundary, "chroma")
            p.quda.validate(source, self.nrow, p.inverter)
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
             "reverse_check_every", "polyakov", "inverter", *QUDA_KEYS}
_MEASURE_KEYS = {"nrow", "cfg", "plaquette", "polyakov", "pion", "kappa", "fermion", "csw",
                 "boundary", "t_srce", "rsd_cg", "max_cg", "save_prop", "wilson_flow",
                 "flow_steps", "save_flowed", "qtop", "seed", "inverter", *QUDA_KEYS}


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
            predictor=d.get("predictor", "LAST_SOLUTION_4D_PREDICTOR"),
            inverter=d.get("inverter", "cg"), quda=quda_options_from_dict(d, source))
    else:
        for key in ("csw", "fermion", "precond", "boundary", "rsd_cg", "max_cg", "predictor",
                    "inverter", *QUDA_KEYS):
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
                          save=d.get("save_prop"), inverter=d.get("inverter", "cg"),
                          quda=quda_options_from_dict(d, source))
    elif any(d.get(k) is not None for k in ("inverter", *QUDA_KEYS)):
        key = next(k for k in ("inverter", *QUDA_KEYS) if d.get(k) is not None)
        raise _fail(source, key, d[key], "no inverter settings without --pion")
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

def params_to_dict(p: HMCParams | MeasureParams) -> dict[str, Any]:
    """The parameters as a JSON-able dictionary (nested, for provenance records)."""
    return dataclasses.asdict(copy.deepcopy(p))

