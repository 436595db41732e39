"""Measurements: the fallback for Chroma's ``chroma`` program and ensemble measurement series.

``qcd-bridge chroma -i IN.xml -o OUT.xml``
    :func:`run_chroma_measurements` runs the inline measurements of a Chroma ``chroma`` input
    (parsed strictly by :mod:`bridge.chroma.measure_input`) in order on the configuration named
    by ``Cfg`` and writes an output XML with Chroma's element paths, so that a script written for
    Chroma's output reads ours: ``/chroma/{Input, ProgramInfo, RNG, Config_info, Observables,
    InlineObservables/elem/<group>}`` with the groups ``Plaquette``, ``PolyakovLoop``,
    ``QActDen``, ``QTop``, ``make_source``, ``propagator``, ``sink_smear``, ``hadspec``,
    ``WilsonFlow``, ``qio_write_named_obj``.  Layouts and values were checked element by element
    against Chroma 3.44's own output for the reference input
    (``../shared/reference/chroma/nf2_b1.0_k0.1_4x4/chroma_measure_cfg_1500.out.xml``,
    tests/test_chroma_measure.py): every number Chroma prints agrees to 1e-11 relative or
    better (most to ~1e-14), except solver iteration counts, residuals and object ids
    (implementation details) and Chroma's version strings.

``qcd-bridge measure OBS... -o STORE.h5 CONFIGS...``
    :func:`measure_ensemble` measures observables of the registry
    :data:`bridge.observables.OBSERVABLES` over an ensemble (ILDG/NERSC/MILC files or an HDF5
    :class:`~bridge.io.hdf5.EnsembleStore`) and appends the series, with trajectory numbers, to
    an HDF5 store; configurations already measured are skipped (resumable).

Sources of the Chroma definitions (Chroma 3.44 / QDP++ 1.46, also quoted in docs/formats.md 4.2
and docs/observables.md):

* mesons: ``lib/meas/hadron/mesons2_w.cc``: ``C_Gamma(t) = sum_x Tr[(g5 S_2 g5)^dag Gamma S_1
  Gamma]`` with ``Gamma = Gamma(n)``, ``n = 0..15`` (:func:`bridge.fermions.gamma.chroma_gamma`),
  ``t`` counted from the source, no boundary sign;
* baryons: ``lib/meas/hadron/barhqlq_w.cc`` (17 baryons, ``Baryon2PtContractions``), spin
  matrices ``barspinmat_w.cc``, QDP++ ``quarkContract13`` (``primspinmat.h``,
  ``primcolormat.h: quarkContractXX``) and Chroma's sign flip for antiperiodic time when the
  sink time wraps past the lattice end;
* ``QACTDEN``: ``lib/meas/glue/qactden.cc``; ``QTOP_NAIVE``: ``lib/meas/glue/qnaive.cc``
  (:mod:`bridge.observables.qtop_naive`); ``WILSON_FLOW``: ``wilson_flow_w.cc``
  (:func:`bridge.observables.chroma_wilson_flow`); ``MesPlq``: ``mesplq.cc``.
"""

from __future__ import annotations

import argparse
import copy
import glob
import inspect
import math
import os
import re
import sys
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lxml import etree

from .. import __version__
from ..chroma.hmc_input import write_xml
from ..chroma.measure_input import (
    DEFAULT_GAUGE_ID,
    ChromaMeasureInput,
    Measurement,
    read_chroma_input,
)
from ..errors import ConfigError, PhysicsError
from ..fermions.gamma import NS, chroma_gamma
from ..gauge import mesplq, plaquette_traces, polyakov_loop, unit_gauge
from ..lattice import Lattice
from ..observables import (
    OBSERVABLES,
    energy_density_split,
    get_observable,
    point_propagator,
    qtop_naive,
    rk3_step,
    topological_charge_density,
)
from ..solvers import CG

__all__ = [
    "ChromaRunResult",
    "run_chroma_measurements",
    "meson_correlators",
    "baryon_correlators",
    "write_qio_propagator",
    "measurement_name",
    "trajectory_from_name",
    "measure_ensemble",
    "add_chroma_parser",
    "add_measure_parser",
]

NC = 3
_C128 = torch.complex128
# Chroma's MesPlq plane order (mesplq.cc: for mu, for nu > mu ... printed 01 02 12 03 13 23)
_MESPLQ_PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))


# ================================================================================================
# hadron contractions (Chroma's conventions)
# ================================================================================================
def _as_chroma_prop(s: torch.Tensor) -> torch.Tensor:
    """``S[b, t, z, y, x, s, c, s', c']`` (:func:`bridge.observables.point_propagator`) ->
    Chroma's ``LatticePropagator`` layout ``P[b, t, z, y, x, s, s', c, c']`` (spin matrix of
    colour matrices, ``elem(s_sink, s_src).elem(c_sink, c_src)``)."""
    return s.permute(0, 1, 2, 3, 4, 5, 7, 6, 8)


def _slice_sum(corr: torch.Tensor) -> torch.Tensor:
    """``sum`` over the spatial sites per time slice: ``[b, t, z, y, x] -> [b, t]``."""
    return corr.flatten(2).sum(2)


def meson_correlators(s1: torch.Tensor, s2: torch.Tensor, t0: int) -> torch.Tensor:
    """Chroma's ``mesons2`` (``mesons2_w.cc``) at zero momentum for all 16 ``Gamma(n)``:
    ``C_n(t) = sum_x Tr[(g5 S_2 g5)^dag Gamma(n) S_1 Gamma(n)](x, t0 + t)``, shape
    ``[b, 16, Lt]`` (complex), ``t`` counted from the source time slice ``t0``.

    ``s1``, ``s2``: propagators ``S[b, t, z, y, x, s, c, s', c']`` (sink spin-colour first) in
    Chroma's normalisation.  ``n = 15`` (``gamma_5``) is the pion, ``Tr[S^dag S]``.
    """
    b = s1.shape[0]
    lat_shape = s1.shape[1:5]
    nc = s1.shape[-1]
    m1 = s1.reshape(b, *lat_shape, NS * nc, NS * nc)
    m2 = s2.reshape(b, *lat_shape, NS * nc, NS * nc)
    eye = torch.eye(nc, dtype=s1.dtype, device=s1.device)
    g5 = torch.kron(chroma_gamma(15, s1.dtype, s1.device), eye)
    anti = g5 @ m2 @ g5
    out = []
    for n in range(NS * NS):
        g = torch.kron(chroma_gamma(n, s1.dtype, s1.device), eye)
        # Tr[A^dag G S G] = sum_{ij} conj(A)_{ji} (G S G)_{ji}
        corr = (anti.conj() * (g @ m1 @ g)).sum((-1, -2))
        out.append(_slice_sum(corr))
    c = torch.stack(out, dim=1)
    return torch.roll(c, shifts=-int(t0), dims=2)


_EPS = {(0, 1, 2): 1, (1, 2, 0): 1, (2, 0, 1): 1, (1, 0, 2): -1, (0, 2, 1): -1, (2, 1, 0): -1}


def _epsilon(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    e = torch.zeros(3, 3, 3, dtype=dtype, device=device)
    for idx, sign in _EPS.items():
        e[idx] = sign
    return e


class _BaryonAlgebra:
    """QDP++ operations on ``P[..., s, s', c, c']`` needed by ``barhqlq_w.cc``."""

    def __init__(self, dtype: torch.dtype, device: torch.device) -> None:
        self.eps = _epsilon(dtype, device)
        g = {n: chroma_gamma(n, dtype, device) for n in range(16)}
        one = g[0]
        nr = 0.5 * (one + g[8])
        nr_neg = 0.5 * (one - g[8])
        gm = 0.5 * (g[2] + 1j * g[1])
        # barspinmat_w.cc
        self.t_mixed = 0.5 * (one + g[8] - 1j * (g[3] + g[11]))
        self.t_mixed_neg = 0.5 * (one - g[8] - 1j * (g[3] - g[11]))
        self.t_unpol = nr
        self.cg5 = g[5]
        self.cg5g4 = -g[13]
        self.cg5nr = g[5] @ nr
        self.cg5nr_neg = g[5] @ nr_neg
        self.cgm = g[10] @ gm
        self.cg4m = g[10] @ (g[8] @ gm)
        self.cgm_nr = self.cgm @ nr
        self.g7 = g[7]

    def qc13(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """QDP++ ``quarkContract13``: ``D[i, j][k2, k1] = sum_k eps^{i1 j1 k1} eps^{i2 j2 k2}
        A[k, i][i1, i2] B[k, j][j1, j2]``."""
        return torch.einsum("...kiab,...kjcd,acq,bdr->...ijrq", a, b, self.eps, self.eps)

    @staticmethod
    def rspin(a: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...stab,tu->...suab", a, m)

    @staticmethod
    def lspin(m: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return torch.einsum("st,...tuab->...suab", m, a)

    @staticmethod
    def tr_t_colour(t: torch.Tensor, q: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``trace(T * traceColor(q * m))`` with ``m`` a colour matrix (spin identity)."""
        return torch.einsum("st,...tsac,...ca->...", t, q, m)

    @staticmethod
    def tr_t_full(t: torch.Tensor, q: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
        """``trace(T * traceColor(q * d))`` with ``d`` a propagator."""
        return torch.einsum("st,...tuac,...usca->...", t, q, d)

    @staticmethod
    def tr_spin(d: torch.Tensor) -> torch.Tensor:
        return torch.einsum("...sscd->...cd", d)

    def diquark(self, q1: torch.Tensor, q2: torch.Tensor, sp: torch.Tensor) -> torch.Tensor:
        return self.qc13(self.rspin(q1, sp), self.lspin(sp, q2))

    # Baryon2PtContractions
    def sigma(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        return self.tr_t_colour(t, q2, self.tr_spin(d)) + self.tr_t_full(t, q2, d)

    def xi(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        return self.tr_t_colour(t, q1, self.tr_spin(d)) + self.tr_t_full(t, q1, d)

    def lambda_(self, q1, q2, t, sp):
        d = self.diquark(q2, q2, sp)
        b = self.tr_t_colour(t, q1, self.tr_spin(d)) + self.tr_t_full(t, q1, d)
        return b + self.tr_t_full(t, q2, self.diquark(q2, q1, sp))

    def lambda_naive(self, q1, q2, t, sp):
        return self.tr_t_colour(t, q1, self.tr_spin(self.diquark(q2, q2, sp)))

    def sigma_star(self, q1, q2, t, sp):
        d = self.diquark(q1, q2, sp)
        b = self.tr_t_colour(t, q2, self.tr_spin(d)) + self.tr_t_full(t, q2, d)
        b = b + self.tr_t_full(t, q2, self.diquark(q2, q1, sp))
        d = self.diquark(q2, q2, sp)
        b = 2.0 * (b + self.tr_t_full(t, q1, d))
        return b + self.tr_t_colour(t, q1, self.tr_spin(d))

    def all17(self, q1: torch.Tensor, q2: torch.Tensor) -> list[torch.Tensor]:
        """``barhqlq(q1 = "s", q2 = "u")`` baryons 0..16, each ``[b, t, z, y, x]``."""
        tm, tu = self.t_mixed, self.t_unpol
        return [
            self.sigma(q1, q2, tm, self.cg5),
            self.lambda_(q1, q2, tm, self.cg5),
            self.sigma_star(q1, q2, tm, self.cgm),
            self.sigma(q1, q2, tm, self.cg5g4),
            self.lambda_(q1, q2, tm, self.cg5g4),
            self.sigma_star(q1, q2, tm, self.cg4m),
            self.sigma(q1, q2, tm, self.cg5nr),
            self.lambda_(q1, q2, tm, self.cg5nr),
            4.0 * self.sigma_star(q1, q2, tm, self.cgm_nr),  # Chroma's "goofy factor of 4"
            self.sigma(q1, q2, tu, self.cg5),
            self.sigma(q1, q2, tu, self.cg5g4),
            self.sigma(q1, q2, tu, self.cg5nr),
            self.lambda_naive(q1, q2, tu, self.cg5),
            self.xi(q1, q2, tu, self.cg5),
            self.lambda_naive(q1, q2, tu, self.cg5),
            self.xi(q1, q2, tm, self.cg5),
            self.sigma(q1, q2, self.t_mixed_neg, self.cg5nr_neg),
        ]


def baryon_correlators(
    s_strange: torch.Tensor,
    s_up: torch.Tensor,
    t0: int,
    bc_spec: int,
    time_rev: bool = False,
) -> torch.Tensor:
    """Chroma's ``barhqlq`` (``barhqlq_w.cc``) at zero momentum: the 17 baryon correlators,
    shape ``[b, 17, Lt]`` (complex), ``t`` counted from ``t0``.

    ``s_strange`` / ``s_up`` are Chroma's ``propagator_1`` / ``propagator_2`` (``HADRON_SPECTRUM``
    passes ``sink_prop_2, sink_prop_1``), layout ``S[b, t, z, y, x, s, c, s', c']``.  With
    ``bc_spec < 0`` (antiperiodic time) a value whose sink time wrapped past the lattice end
    changes sign; ``time_rev`` (only for ``bc_spec = +-1``, as Chroma) averages with the
    time-charge reversed propagators ``-Gamma(7) S Gamma(7)``.
    """
    alg = _BaryonAlgebra(s_up.dtype, s_up.device)
    q1 = _as_chroma_prop(s_strange)
    q2 = _as_chroma_prop(s_up)
    lt = s_up.shape[1]
    fwd = torch.stack([_slice_sum(b) for b in alg.all17(q1, q2)], dim=1)  # [b, 17, Lt]
    t = torch.arange(lt)
    t_eff = (t - t0) % lt
    out = torch.empty_like(fwd)
    sign = torch.where((t_eff + t0 >= lt) & torch.tensor(bc_spec < 0), -1.0, 1.0)
    out[..., t_eff] = fwd * sign.to(fwd.dtype).to(fwd.device)
    if time_rev and bc_spec * bc_spec == 1:
        g7 = alg.g7
        r1 = -torch.einsum("st,...tuab,uv->...svab", g7, q1, g7)
        r2 = -torch.einsum("st,...tuab,uv->...svab", g7, q2, g7)
        bwd = torch.stack([_slice_sum(b) for b in alg.all17(r1, r2)], dim=1)
        for tt in range(lt):
            te = (lt - tt + t0) % lt
            if bc_spec < 0 and te - t0 > 0:
                out[..., te] = 0.5 * (out[..., te] - bwd[..., tt])
            else:
                out[..., te] = 0.5 * (out[..., te] + bwd[..., tt])
    return out


# ================================================================================================
# XML helpers
# ================================================================================================
def _fmt(x: float) -> str:
    """Chroma prints doubles with 15 significant digits."""
    return format(float(x), ".15g")


def _fmts(xs: Sequence[float] | torch.Tensor | np.ndarray) -> str:
    return " ".join(_fmt(x) for x in (xs.tolist() if hasattr(xs, "tolist") else xs))


def _bool(b: bool) -> str:
    return "true" if b else "false"


def _el(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    e = etree.SubElement(parent, tag)
    if text is not None:
        e.text = text
    return e


def _copy(el: etree._Element | None) -> etree._Element:
    if el is None:
        raise ConfigError("internal: missing element to copy")
    c = copy.deepcopy(el)
    c.tail = None
    return c


def _complex_elems(parent: etree._Element, values: Sequence[complex]) -> None:
    for z in values:
        e = _el(parent, "elem")
        _el(e, "re", _fmt(z.real))
        _el(e, "im", _fmt(z.imag))


def _mesplq_values(parent: etree._Element, u: torch.Tensor, pollp: bool) -> None:
    m = mesplq(u)
    for tag, val in (("w_plaq", m.w_plaq), ("s_plaq", m.s_plaq), ("t_plaq", m.t_plaq)):
        _el(parent, tag, _fmt(val[0]))
    for a, b in _MESPLQ_PLANES:
        _el(parent, f"plane_{a}{b}_plaq", _fmt(m.planes[(a, b)][0]))
    _el(parent, "link", _fmt(m.link[0]))
    if pollp:
        loops = _el(parent, "pollp")
        _complex_elems(loops, [complex(polyakov_loop(u, mu)[0]) for mu in range(u.shape[1])])


def _mesplq_group(parent: etree._Element, tag: str, u: torch.Tensor) -> None:
    """Chroma's ``MesPlq(xml, tag, u)``: plaquettes, link and the four Polyakov loops."""
    _mesplq_values(_el(parent, tag), u, pollp=True)


@dataclass
class _Env:
    """Run-wide facts written into several groups."""

    nrow: tuple[int, ...]
    device: torch.device
    seed: tuple[int, ...]
    run_date: str


def _program_info(parent: etree._Element, env: _Env) -> None:
    p = _el(parent, "ProgramInfo")
    cv = _el(p, "code_version")
    _el(cv, "qcd_bridge", __version__)
    _el(cv, "torch", torch.__version__)
    _el(cv, "basePrecision", "64")
    _el(p, "run_date", env.run_date)
    g = _el(p, "Setgeom")
    nrow = " ".join(map(str, env.nrow))
    _el(g, "latt_size", nrow)
    _el(g, "logical_size", " ".join(["1"] * len(env.nrow)))
    _el(g, "subgrid_size", nrow)
    _el(g, "total_volume", str(math.prod(env.nrow)))
    _el(g, "subgrid_volume", str(math.prod(env.nrow)))
    _el(g, "device", str(env.device))


def _rng(parent: etree._Element, env: _Env) -> None:
    seed = _el(_el(parent, "RNG"), "Seed")
    for s in env.seed:
        _el(seed, "elem", str(s))


# ================================================================================================
# named objects
# ================================================================================================
@dataclass
class _Gauge:
    u: torch.Tensor
    file_xml: str
    record_xml: str  # the configuration's record XML (Chroma's Config_info content)

    def config_info(self, parent: etree._Element, tag: str = "Config_info") -> None:
        ci = _el(parent, tag)
        try:
            root = etree.fromstring(self.record_xml.encode())
        except etree.XMLSyntaxError:
            return
        ci.append(root)


@dataclass
class _Prop:
    """A ``LatticePropagator`` in the named-object map: a source, a propagator or a
    sink-smeared propagator, with its record XML (``MakeSource`` / ``Propagator`` /
    ``SinkSmear``) and file XML, and the facts ``HADRON_SPECTRUM`` reads from the headers."""

    kind: str
    data: torch.Tensor | None  # S[b, t, z, y, x, s, c, s', c']; None for a point source
    record: etree._Element
    file_xml: etree._Element
    t_srce: tuple[int, ...]
    j_decay: int
    source_type: str = "POINT_SOURCE"
    sink_type: str | None = None
    mass: float | None = None
    boundary: tuple[int, ...] | None = None

    @property
    def t_source(self) -> int:
        return self.t_srce[self.j_decay]


def _point_source_tensor(nrow: tuple[int, ...], t_srce: tuple[int, ...], device: torch.device
                         ) -> torch.Tensor:
    lx, ly, lz, lt = nrow
    s = torch.zeros(1, lt, lz, ly, lx, NS, NC, NS, NC, dtype=_C128, device=device)
    x, y, z, t = t_srce
    eye = torch.eye(NS * NC, dtype=_C128, device=device).reshape(NS, NC, NS, NC)
    s[0, t, z, y, x] = eye
    return s


def _prop_data(p: _Prop, nrow: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return p.data if p.data is not None else _point_source_tensor(nrow, p.t_srce, device)


def _timeslice_norm2(s: torch.Tensor) -> torch.Tensor:
    """Chroma's ``sumMulti(localNorm2(prop), timeslice)``: ``[Lt]`` (absolute time)."""
    return (s.abs() ** 2).flatten(5).sum(5).flatten(2).sum(2)[0]


def _object_id(name: str) -> int:
    """A stable stand-in for Chroma's ``uniqueId()`` in the file XML of sources/propagators."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# ================================================================================================
# QIO output of a LatticePropagator
# ================================================================================================
def write_qio_propagator(
    path: str | os.PathLike[str],
    s: torch.Tensor,
    *,
    precision: int = 64,
    file_xml: str,
    record_xml: str,
    overwrite: bool = True,
) -> None:
    """Write a propagator ``S[1, t, z, y, x, s, c, s', c']`` as a SciDAC (QIO) single file the
    way QDP++ ``QDPFileWriter::write(xml, OLattice<T>)`` does for a ``LatticePropagator``:
    records ``scidac-private-file-xml``, ``scidac-file-xml``, ``scidac-private-record-xml``
    (``datatype`` ``Lattice``, QDP++ ``QIOStringTraits<OLattice<T>>``; ``spins`` 4, ``colors`` 3,
    ``typesize`` 288 x bytes per real, ``datacount`` 1), ``scidac-record-xml``,
    ``scidac-binary-data`` (sites lexicographic, x fastest; per site the spin matrix of colour
    matrices row-major, ``elem(s, s').elem(c, c')``, re/im, big-endian) and ``scidac-checksum``
    (DML checksum, :class:`~bridge.io.ildg.ScidacChecksum`).

    Not verified against a propagator file written by Chroma (none is among the reference
    data); the layout follows the QDP++ sources named above.
    """
    from ..io.ildg import checksum_xml, private_file_xml, qio_date, scidac_checksum
    from ..io.lime import LimeWriter, atomic_output

    if precision not in (32, 64):
        raise ValueError(f"precision: expected 32 or 64, got {precision!r}")
    letter = "F" if precision == 32 else "D"
    lt, lz, ly, lx = s.shape[1:5]
    nrow = (lx, ly, lz, lt)
    data = s[0].permute(0, 1, 2, 3, 4, 6, 5, 7).contiguous()  # [t,z,y,x, s, s', c, c']
    arr = torch.view_as_real(data.cpu()).numpy()
    arr = arr.astype(">f4" if precision == 32 else ">f8")
    raw = arr.tobytes()
    site_bytes = NS * NS * NC * NC * 2 * precision // 8
    suma, sumb = scidac_checksum(raw, site_bytes)
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    private_record = (
        f"{head}<scidacRecord><version>1.1</version><date>{qio_date()}</date>"
        f"<recordtype>0</recordtype><datatype>Lattice</datatype><precision>{letter}</precision>"
        f"<colors>{NC}</colors><spins>{NS}</spins><typesize>{site_bytes}</typesize>"
        f"<datacount>1</datacount></scidacRecord>"
    )
    with atomic_output(path, overwrite=overwrite) as fh:
        w = LimeWriter(fh, os.fspath(path))
        w.write_string("scidac-private-file-xml", private_file_xml(nrow), mb=True, me=False)
        w.write_string("scidac-file-xml", file_xml, mb=False, me=True)
        w.write_string("scidac-private-record-xml", private_record, mb=True, me=False)
        w.write_string("scidac-record-xml", record_xml, mb=False, me=False)
        w.write_record("scidac-binary-data", raw, mb=False, me=False)
        w.write_string("scidac-checksum", checksum_xml(suma, sumb), mb=False, me=True)
        w.close()


# ================================================================================================
# the chroma fallback
# ================================================================================================
@dataclass
class ChromaRunResult:
    """What :func:`run_chroma_measurements` did: the output path, one summary dict per
    measurement (name and its main numbers) and the files written."""

    output: str
    measurements: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


class _Progress:
    """Progress lines on stderr: one per measurement, live steps for the long parts."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"{text}\n")
            sys.stderr.flush()

    def start(self, k: int, m: Measurement) -> float:
        self.say(f"chroma [{k + 1}/{self.total}] {m.name} ({m.path})")
        return time.perf_counter()

    def step(self, label: str, i: int, n: int, extra: str = "") -> None:
        if not self.enabled:
            return
        every = max(1, n // 10)
        if self.tty:
            end = "\n" if i == n else ""
            sys.stderr.write(f"\r  {label} {i}/{n} {extra}   {end}")
        elif i % every == 0 or i == n:
            sys.stderr.write(f"  {label} {i}/{n} {extra}\n")
        sys.stderr.flush()


class _Runner:
    """Executes the measurements of one ``chroma`` input on one configuration."""

    def __init__(self, inp: ChromaMeasureInput, env: _Env, progress: _Progress) -> None:
        self.inp, self.env, self.progress = inp, env, progress
        self.objects: dict[str, _Gauge | _Prop] = {}
        self.files: list[str] = []

    # -- helpers ------------------------------------------------------------------------------
    def gauge(self, oid: str) -> _Gauge:
        obj = self.objects[oid]
        if not isinstance(obj, _Gauge):  # the parser checked kinds; keep the runtime honest
            raise ConfigError(f"{self.inp.source}: named object {oid!r} is not a gauge field")
        return obj

    def prop(self, oid: str) -> _Prop:
        obj = self.objects[oid]
        if not isinstance(obj, _Prop):
            raise ConfigError(f"{self.inp.source}: named object {oid!r} is not a propagator")
        return obj

    @staticmethod
    def named_input(parent: etree._Element, m: Measurement, params: etree._Element
                    ) -> etree._Element:
        inp = _el(parent, "Input")
        inp.append(params)
        named = m.element.find("NamedObject") if m.element is not None else None
        inp.append(_copy(named))
        return inp

    # -- measurements ---------------------------------------------------------------------------
    def plaquette(self, m: Measurement, out: etree._Element) -> dict:
        u = self.gauge(m.reads["gauge_id"]).u
        g = _el(out, "Plaquette")
        _el(g, "update_no", "0")
        _mesplq_values(g, u, pollp=False)
        return {"w_plaq": float(mesplq(u).w_plaq[0])}

    def polyakov(self, m: Measurement, out: etree._Element) -> dict:
        u = self.gauge(m.reads["gauge_id"]).u
        g = _el(out, "PolyakovLoop")
        _el(g, "update_no", "0")
        loops = [complex(polyakov_loop(u, mu)[0]) for mu in range(u.shape[1])]
        _complex_elems(_el(g, "poly_loop"), loops)
        return {"poly_loop": loops}

    def qactden(self, m: Measurement, out: etree._Element) -> dict:
        """``qactden.cc``: per site ``lract = sum_{planes, 4 leaves} Re Tr(1 - L) / (4 (2 pi)^2)``
        and ``lrqtop`` = the clover charge density with the non-traceless ``mesField``."""
        u = self.gauge(m.reads["gauge_id"]).u
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
        g = _el(out, "QActDen")
        _el(g, "update_no", "0")
        lx, ly, lz, _ = self.env.nrow
        for tag, dens in (("actionDensity", act), ("naiveTopCharge", q)):
            ol = _el(_el(g, tag), "OLattice")
            for site, val in enumerate(dens[0].flatten().tolist()):
                e = _el(ol, "elem", _fmt(val))
                x, y = site % lx, (site // lx) % ly
                z, t = (site // (lx * ly)) % lz, site // (lx * ly * lz)
                e.set("site", str(site))
                e.set("coord", f"{x} {y} {z} {t}")
        return {"Q": float(q.sum())}

    def qtop_naive(self, m: Measurement, out: etree._Element) -> dict:
        u = self.gauge(m.reads["gauge_id"]).u
        k5 = m.params["k5"]
        q = float(qtop_naive(u, k5)[0])
        g = _el(out, "QTop")
        _el(g, "update_no", "0")
        _el(g, "k5", _fmt(k5))
        _el(g, "qtop", _fmt(q))
        return {"k5": k5, "qtop": q}

    def make_source(self, m: Measurement, out: etree._Element) -> dict:
        gauge = self.gauge(m.reads["gauge_id"])
        p = m.params
        env = self.env
        g = _el(out, "make_source")
        _el(g, "update_no", "0")
        _program_info(g, env)
        _rng(g, env)
        par = etree.Element("Param")
        _el(par, "version", str(p["version"]))
        src_el = m.element.find("Param/Source")
        par.append(_copy(src_el))
        _el(par, "j_decay", str(p["j_decay"]))
        _el(par, "t_source", str(p["t_srce"][p["j_decay"]]))
        self.named_input(g, m, par)
        gauge.config_info(g)
        _mesplq_group(g, "Observables", gauge.u)
        src = _point_source_tensor(env.nrow, p["t_srce"], env.device)
        _el(_el(g, "Source_correlator"), "source_corr", _fmts(_timeslice_norm2(src)))
        # record and file XML of the new object (qprop_io.cc: MakeSourceProp_t, "make_source")
        rec = etree.Element("MakeSource")
        _el(rec, "version", "1")
        ps = _el(rec, "PropSource")
        for c in par:
            ps.append(copy.deepcopy(c))
        gauge.config_info(rec)
        fxml = etree.Element("make_source")
        _el(fxml, "id", str(_object_id(m.creates["source_id"])))
        self.objects[m.creates["source_id"]] = _Prop(
            kind="source", data=None, record=rec, file_xml=fxml, t_srce=tuple(p["t_srce"]),
            j_decay=p["j_decay"], source_type=p["source_type"])
        return {"source_corr": _timeslice_norm2(src).tolist()}

    def propagator(self, m: Measurement, out: etree._Element) -> dict:
        gauge = self.gauge(m.reads["gauge_id"])
        src = self.prop(m.reads["source_id"])
        p = m.params
        env = self.env
        solver = CG(tol=p["rsd_cg"], max_iter=p["max_cg"])
        self.progress.say(f"  PROPAGATOR: {NS * NC} CG solves ({p['fermact']}, kappa "
                          f"{p['kappa']:g}, RsdCG {p['rsd_cg']:g}) ...")
        t0 = time.perf_counter()
        s, stats = point_propagator(
            gauge.u, p["kappa"], source=src.t_srce, c_sw=p["c_sw"],
            boundary=tuple(complex(b) for b in p["boundary"]), normalisation="chroma",
            solver=solver)
        its = [int(i) for i in stats.iterations_per_system.tolist()]
        res = [float(r) for r in stats.residuals.tolist()]
        self.progress.say(f"  PROPAGATOR: done, {sum(its)} CG iterations, "
                          f"{time.perf_counter() - t0:.2f} s")
        g = _el(out, "propagator")
        _el(g, "update_no", "0")
        _program_info(g, env)
        par = etree.Element("Param")
        _el(par, "version", "9")  # qprop_io.cc writes ChromaProp_t as version 9
        _el(par, "quarkSpinType", "FULL")
        _el(par, "obsvP", _bool(p["obsvP"]))
        par.append(_copy(m.element.find("Param/FermionAction")))
        par.append(_copy(m.element.find("Param/InvertParam")))
        self.named_input(g, m, par)
        gauge.config_info(g)
        _el(_el(g, "Output_version"), "out_version", "1")
        _mesplq_group(g, "Observables", gauge.u)
        _el(g, "Source_file_info").append(copy.deepcopy(src.file_xml))
        _el(g, "Source_record_info").append(copy.deepcopy(src.record))
        src_data = _prop_data(src, env.nrow, env.device)
        _el(_el(g, "Source_correlator"), "source_corr", _fmts(_timeslice_norm2(src_data)))
        qp = _el(g, "QuarkProp4")
        for c in range(NC):
            for sp in range(NS):
                r = sp * NC + c  # point_source: source index s * Nc + c
                e = _el(qp, "Qprop")
                _el(e, "color_source", str(c))
                _el(e, "spin_source", str(sp))
                _el(e, "n_count", str(its[r]))
                _el(e, "resid", _fmt(res[r]))
        _el(_el(g, "Relaxation_Iterations"), "ncg_had", str(sum(its)))
        corr = _timeslice_norm2(s)
        _el(_el(g, "Prop_correlator"), "prop_corr", _fmts(corr))
        rec = etree.Element("Propagator")
        _el(rec, "version", "1")
        fwd = _el(rec, "ForwardProp")
        for c in par:
            fwd.append(copy.deepcopy(c))
        rec.append(copy.deepcopy(src.record.find("PropSource")))
        gauge.config_info(rec)
        fxml = etree.Element("propagator")
        _el(fxml, "id", src.file_xml.findtext("id"))
        kappa = p["kappa"]
        mass = p.get("mass", 1.0 / (2.0 * kappa) - 4.0)
        fa = m.element.find("Param/FermionAction")
        if fa is not None and fa.find("Mass") is not None:
            mass = float(fa.findtext("Mass"))
        self.objects[m.creates["prop_id"]] = _Prop(
            kind="propagator", data=s, record=rec, file_xml=fxml, t_srce=src.t_srce,
            j_decay=src.j_decay, source_type=src.source_type, mass=mass,
            boundary=tuple(p["boundary"]))
        return {"prop_corr": corr.tolist(), "iterations": its}

    def sink_smear(self, m: Measurement, out: etree._Element) -> dict:
        gauge = self.gauge(m.reads["gauge_id"])
        prop = self.prop(m.reads["prop_id"])
        p = m.params
        g = _el(out, "sink_smear")
        _el(g, "update_no", "0")
        par = etree.Element("Param")
        _el(par, "version", str(p["version"]))
        par.append(_copy(m.element.find("Param/Sink")))
        _el(par, "j_decay", str(p["j_decay"]))
        self.named_input(g, m, par)
        gauge.config_info(g)
        _mesplq_group(g, "Observables", gauge.u)
        _el(g, "Prop_file_info").append(copy.deepcopy(prop.file_xml))
        _el(g, "Prop_record_info").append(copy.deepcopy(prop.record))
        corr = _timeslice_norm2(prop.data)
        _el(_el(g, "Forward_prop_correlator"), "forward_prop_corr", _fmts(corr))
        smeared = prop.data  # POINT_SINK: the propagator itself
        _el(_el(g, "SinkSmearedProp_correlator"), "sink_smeared_prop_corr",
            _fmts(_timeslice_norm2(smeared)))
        rec = etree.Element("SinkSmear")
        _el(rec, "version", "1")
        psink = _el(rec, "PropSink")
        for c in par:
            psink.append(copy.deepcopy(c))
        rec.append(copy.deepcopy(prop.record.find("ForwardProp")))
        rec.append(copy.deepcopy(prop.record.find("PropSource")))
        gauge.config_info(rec)
        fxml = etree.Element("sink_smear")
        _el(fxml, "id", prop.file_xml.findtext("id"))
        self.objects[m.creates["smeared_prop_id"]] = _Prop(
            kind="smeared_propagator", data=smeared, record=rec, file_xml=fxml,
            t_srce=prop.t_srce, j_decay=prop.j_decay, source_type=prop.source_type,
            sink_type=p["sink_type"], mass=prop.mass, boundary=prop.boundary)
        return {"sink_smeared_prop_corr": corr.tolist()}

    def hadron_spectrum(self, m: Measurement, out: etree._Element) -> dict:
        gauge = self.gauge(m.reads["gauge_id"])
        p = m.params
        g = _el(out, "hadspec")
        _el(g, "update_no", "0")
        _program_info(g, self.env)
        par = etree.Element("Param")
        _el(par, "version", "1")
        for key in ("MesonP", "CurrentP", "BaryonP", "time_rev"):
            _el(par, key, _bool(p[key]))
        _el(par, "mom2_max", str(p["mom2_max"]))
        _el(par, "avg_equiv_mom", _bool(p["avg_equiv_mom"]))
        inp = self.named_input(g, m, par)
        _el(inp, "xml_file", "")
        gauge.config_info(g)
        _el(_el(g, "Output_version"), "out_version", "15")
        _mesplq_group(g, "Observables", gauge.u)
        whm = _el(g, "Wilson_hadron_measurements")
        summary: dict[str, Any] = {}
        names = {"POINT_SOURCE": "Point", "POINT_SINK": "Point"}
        for first_id, second_id in p["sink_pairs"]:
            p1, p2 = self.prop(first_id), self.prop(second_id)
            for what, a, b in (("j_decay", p1.j_decay, p2.j_decay),
                               ("t_source", p1.t_source, p2.t_source),
                               ("source type", p1.source_type, p2.source_type),
                               ("sink type", p1.sink_type, p2.sink_type),
                               ("time boundary", p1.boundary[p1.j_decay],
                                p2.boundary[p2.j_decay])):
                if a != b:
                    raise ConfigError(
                        f"{self.inp.source}: {m.path}: sink pair {first_id!r}, {second_id!r}: "
                        f"the {what} differs ({a} vs {b}); Chroma requires them equal")
            t0 = p1.t_source
            bc_spec = p1.boundary[p1.j_decay]
            e = _el(whm, "elem")
            _el(e, "Mass_1", _fmt(p1.mass))
            _el(e, "Mass_2", _fmt(p2.mass))
            _el(e, "t0", str(t0))
            hdr = _el(e, "Forward_prop_headers")
            for tag, pr in (("First_forward_prop", p1), ("Second_forward_prop", p2)):
                h = _el(hdr, tag)
                for c in pr.record:
                    h.append(copy.deepcopy(c))
            fpc = _el(e, "Forward_prop_correlator")
            _el(fpc, "forward_prop_corr_1", _fmts(_timeslice_norm2(p1.data)))
            _el(fpc, "forward_prop_corr_2", _fmts(_timeslice_norm2(p2.data)))
            sst = _el(e, "SourceSinkType")
            for k, pr in ((1, p1), (2, p2)):
                _el(sst, f"source_type_{k}", pr.source_type)
                _el(sst, f"source_disp_type_{k}", "NONE")
                _el(sst, f"sink_type_{k}", pr.sink_type or "POINT_SINK")
                _el(sst, f"sink_disp_type_{k}", "NONE")
            group = f"{names[p1.source_type]}_{names[p1.sink_type or 'POINT_SINK']}"
            if p["MesonP"]:
                mes = meson_correlators(p1.data, p2.data, t0)[0]
                grp = _el(e, f"{group}_Wilson_Mesons")
                for n in range(NS * NS):
                    ge = _el(grp, "elem")
                    _el(ge, "gamma_value", str(n))
                    mom = _el(_el(ge, "momenta"), "elem")
                    _el(mom, "sink_mom_num", "0")
                    _el(mom, "sink_mom", "0 0 0")
                    _complex_elems(_el(mom, "mesprop"), mes[n].tolist())
                summary.setdefault("pion", mes[15].real.tolist())
            if p["BaryonP"]:
                bar = baryon_correlators(p2.data, p1.data, t0, bc_spec, p["time_rev"])[0]
                grp = _el(e, f"{group}_Wilson_Baryons")
                for n in range(bar.shape[0]):
                    be = _el(grp, "elem")
                    _el(be, "baryon_num", str(n))
                    mom = _el(_el(be, "momenta"), "elem")
                    _el(mom, "sink_mom_num", "0")
                    _el(mom, "sink_mom", "0 0 0")
                    _complex_elems(_el(mom, "barprop"), bar[n].tolist())
                summary.setdefault("nucleon", bar[0].real.tolist())
        return summary

    def wilson_flow(self, m: Measurement, out: etree._Element) -> dict:
        """``WILSON_FLOW``: ``nstep`` RK3 steps of ``eps = wtime / nstep`` and Chroma's
        ``measure_wilson_gauge`` before the first and after every step -- the loop of
        :func:`bridge.observables.chroma_wilson_flow`, here with a progress line."""
        gauge = self.gauge(m.reads["gauge_in"])
        p = m.params
        nstep, wtime, t_dir = p["nstep"], p["wtime"], p["t_dir"]
        eps = wtime / nstep
        u = gauge.u
        g4, gs = [], []
        t_start = time.perf_counter()
        for k in range(nstep + 1):
            if k:
                u = rk3_step(u, eps)
            a, b = energy_density_split(u, t_dir=t_dir, traceless=False)
            g4.append(float(a[0]))
            gs.append(float(b[0]))
            if k:
                rate = (time.perf_counter() - t_start) / k
                self.progress.step("WILSON_FLOW step", k, nstep,
                                   f"t = {k * eps:.4g}  E = {g4[-1] + gs[-1]:.6g}  "
                                   f"eta {rate * (nstep - k):.0f} s")
        if not bool(torch.isfinite(torch.view_as_real(u)).all()):
            raise PhysicsError(f"{self.inp.source}: {m.path}: the flowed field became NaN/Inf "
                               f"by flow time {wtime:g}")
        steps = (torch.arange(nstep + 1, dtype=torch.float64) * eps).tolist()
        g = _el(out, "WilsonFlow")
        _el(g, "update_no", "0")
        _program_info(g, self.env)
        _el(_el(g, "Output_version"), "out_version", "1")
        par = etree.Element("Param")
        _el(par, "version", str(p["version"]))
        _el(par, "nstep", str(nstep))
        _el(par, "wtime", _fmt(wtime))
        _el(par, "t_dir", str(t_dir))
        if "smear_dirs" in p:
            _el(par, "smear_dirs", " ".join(map(str, p["smear_dirs"])))
        self.named_input(g, m, par)
        gauge.config_info(_el(g, "GaugeFieldInfo"))
        _mesplq_group(g, "GaugeObservables", gauge.u)
        res = _el(g, "wilson_flow_results")
        _el(res, "wflow_step", _fmts(steps))
        _el(res, "wflow_gact4i", _fmts(g4))
        _el(res, "wflow_gactij", _fmts(gs))
        _mesplq_group(g, "WilsonFlowGaugeObservables", u)
        self.objects[m.creates["gauge_out"]] = _Gauge(u, gauge.file_xml, gauge.record_xml)
        e_end = g4[-1] + gs[-1]
        return {"wflow_step": steps, "wflow_gact4i": g4, "wflow_gactij": gs,
                "t2E": steps[-1] ** 2 * e_end}

    def qio_write(self, m: Measurement, out: etree._Element) -> dict:
        from ..io.ildg import write_ildg

        oid = m.reads["object_id"]
        obj = self.objects[oid]
        name = m.params["file_name"]
        prec = m.params["precision"]
        if isinstance(obj, _Gauge):
            write_ildg(name, obj.u.cpu(), precision=prec, file_xml=obj.file_xml,
                       record_xml=obj.record_xml, overwrite=True)
        else:
            data = _prop_data(obj, self.env.nrow, self.env.device)
            write_qio_propagator(
                name, data, precision=prec,
                file_xml=etree.tostring(obj.file_xml, xml_declaration=True,
                                        encoding="UTF-8").decode(),
                record_xml=etree.tostring(obj.record, xml_declaration=True,
                                          encoding="UTF-8").decode())
        self.files.append(name)
        self.progress.say(f"  wrote {name}")
        g = _el(out, "qio_write_named_obj")
        _el(g, "update_no", "0")
        _el(g, "object_id", oid)
        return {"file": name}

    def erase(self, m: Measurement, out: etree._Element) -> dict:
        oid = m.reads["object_id"]
        self.objects.pop(oid, None)
        g = _el(out, "erase_named_obj")
        _el(g, "update_no", "0")
        _el(g, "object_id", oid)
        return {}

    def dispatch(self) -> dict[str, Callable[[Measurement, etree._Element], dict]]:
        return {
            "PLAQUETTE": self.plaquette,
            "POLYAKOV_LOOP": self.polyakov,
            "QACTDEN": self.qactden,
            "QTOP_NAIVE": self.qtop_naive,
            "MAKE_SOURCE": self.make_source,
            "PROPAGATOR": self.propagator,
            "SINK_SMEAR": self.sink_smear,
            "HADRON_SPECTRUM": self.hadron_spectrum,
            "WILSON_FLOW": self.wilson_flow,
            "QIO_WRITE_NAMED_OBJECT": self.qio_write,
            "ERASE_NAMED_OBJECT": self.erase,
        }


def _load_configuration(inp: ChromaMeasureInput, device: torch.device) -> _Gauge:
    """``Cfg``: ``SZINQIO``/``SCIDAC`` reads the QIO/ILDG file (dimensions checked against
    ``nrow``; re-unitarised unless ``reunit`` is false, as Chroma's ``szinqio_gauge_init``);
    ``UNIT`` is the unit field."""
    cfg = inp.cfg
    if cfg.cfg_type == "UNIT":
        u = unit_gauge(Lattice(inp.nrow), "SU3", 1, device=device)
        rec = etree.tostring(_copy(inp.tree.getroot().find("Cfg"))).decode()
        return _Gauge(u, '<?xml version="1.0"?>\n<gauge/>\n', rec)
    from ..io.ildg import read_ildg

    path = cfg.cfg_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"{inp.source}: /chroma/Cfg/cfg_file: {path!r} does not exist "
                                f"(relative paths are taken from the working directory "
                                f"{os.getcwd()!r}, as Chroma does)")
    u, info = read_ildg(path, nrow=inp.nrow, reunitarize=cfg.reunit, device=device)
    meta = info.metadata
    file_xml = meta.get("scidac-file-xml") or '<?xml version="1.0"?>\n<gauge/>\n'
    rec = meta.get("scidac-record-xml") or "<Config_info/>"
    return _Gauge(u, file_xml, rec)


def run_chroma_measurements(
    inp: ChromaMeasureInput | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ChromaRunResult:
    """Run the inline measurements of a Chroma ``chroma`` input in order on its configuration
    and write the output XML (Chroma's element paths, module docstring) to ``output``.

    ``inp``: a parsed :class:`~bridge.chroma.measure_input.ChromaMeasureInput` or the path of
    the input XML.  Relative file names (``cfg_file``, ``QIO_WRITE_NAMED_OBJECT`` outputs) are
    taken from the working directory, as Chroma does; ``QIO_WRITE_NAMED_OBJECT`` replaces an
    existing file, as Chroma does.  ``progress`` writes progress lines to stderr.
    """
    t_start = time.perf_counter()
    if not isinstance(inp, ChromaMeasureInput):
        inp = read_chroma_input(inp)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    env = _Env(nrow=tuple(inp.nrow), device=dev, seed=inp.seed or (11, 0, 0, 0),
               run_date=time.strftime("%d %b %y %H:%M:%S UTC", time.gmtime()))
    bar = _Progress(progress, len(inp.measurements))
    gauge = _load_configuration(inp, dev)
    runner = _Runner(inp, env, bar)
    runner.objects[DEFAULT_GAUGE_ID] = gauge

    root = etree.Element("chroma")
    _el(root, "Input").append(_copy(inp.tree.getroot()))
    _program_info(root, env)
    _rng(root, env)
    gauge.config_info(root)
    _mesplq_group(root, "Observables", gauge.u)
    inline = _el(root, "InlineObservables")
    result = ChromaRunResult(output=os.fspath(output))
    table = runner.dispatch()
    for k, m in enumerate(inp.measurements):
        t0 = bar.start(k, m)
        summary = table[m.name](m, _el(inline, "elem"))
        result.measurements.append({"name": m.name, "path": m.path,
                                    "seconds": time.perf_counter() - t0, **summary})
    write_xml(Path(output), root)
    result.files = runner.files
    result.seconds = time.perf_counter() - t_start
    bar.say(f"chroma: {len(inp.measurements)} measurements in {result.seconds:.1f} s, "
            f"wrote {result.output}")
    return result


# ------------------------------------------------------------------------------------------------
# CLI: qcd-bridge chroma
# ------------------------------------------------------------------------------------------------
def add_chroma_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``qcd-bridge chroma`` (the fallback for Chroma's ``chroma`` program)."""
    from ..chroma.measure_input import SUPPORTED_MEASUREMENTS

    p = subparsers.add_parser(
        "chroma",
        help="run Chroma's chroma (measurement) input XML with the built-in engine",
        description=(
            "Run the inline measurements of a Chroma `chroma` input file (root <chroma>) on the "
            "configuration named by /chroma/Cfg (SZINQIO/SCIDAC or UNIT) and write the output "
            "XML with Chroma's element paths (/chroma/InlineObservables/elem/<group>/...), so "
            "scripts written for Chroma's output read it unchanged. Supported measurements: "
            + ", ".join(SUPPORTED_MEASUREMENTS) + ". Anything else in the input is an error "
            "that names its element path. Relative file names are taken from the working "
            "directory, as Chroma does."
        ),
        epilog="example: qcd-bridge chroma -i chroma_measure.ini.xml -o measure.out.xml",
    )
    p.add_argument("-i", "--input", required=True, help="Chroma chroma input XML")
    p.add_argument("-o", "--output", required=True, help="output XML (Chroma's layout)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    p.set_defaults(func=_run_chroma_cli)
    return p


def _run_chroma_cli(args: argparse.Namespace) -> int:
    res = run_chroma_measurements(args.input, args.output, device=args.device,
                                  progress=not args.quiet)
    for m in res.measurements:
        keys = [k for k in ("w_plaq", "qtop", "t2E") if k in m]
        detail = "  ".join(f"{k} = {m[k]:.12g}" for k in keys)
        if "pion" in m:
            detail = "pion mesprop = " + " ".join(f"{v:.6g}" for v in m["pion"])
        print(f"{m['name']:<24} {m['seconds']:8.2f} s  {detail}".rstrip())
    print(f"wrote {res.output}" + (f" and {', '.join(res.files)}" if res.files else ""))
    return 0


# ================================================================================================
# qcd-bridge measure: observables over an ensemble, into an HDF5 store
# ================================================================================================
_CFG_RE = re.compile(r"_cfg_(\d+)\.[A-Za-z0-9]+$")

# CLI flag -> observable keyword
_PARAM_FLAGS: dict[str, tuple[str, Any, str]] = {
    "flow_time": ("--flow-time", float, "Wilson-flow time t/a^2 before measuring (0: no flow)"),
    "eps": ("--eps", float, "Wilson-flow RK3 step size"),
    "definition": ("--definition", str, "discretisation: clover/plaquette (E), clover/geometric "
                   "(Q)"),
    "traceless": ("--traceless", None, "remove the trace of the clover F"),
    "normalisation": ("--normalisation", str, "chroma or seed (plaquette, Polyakov loop); "
                      "kappa or chroma (pion)"),
    "mu": ("--mu", int, "Polyakov-loop direction (default: time)"),
    "kappa": ("--kappa", float, "Wilson hopping parameter (pion)"),
    "c_sw": ("--c-sw", float, "clover coefficient (pion)"),
    "source": ("--source", None, "pion point source x y z t"),
    "boundary": ("--boundary", None, "fermion boundary phases x y z t, e.g. 1 1 1 -1"),
}


def _fmt_param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".15g")
    if isinstance(v, (tuple, list)):
        return ",".join(_fmt_param(x) for x in v)
    return str(v)


def measurement_name(observable: str, params: dict[str, Any]) -> str:
    """The store series name of ``observable`` with explicit ``params``: the bare name without
    parameters, else ``name[k1=v1;k2=v2]`` with the keys sorted (no ``/``: HDF5 groups)."""
    if not params:
        return observable
    inner = ";".join(f"{k}={_fmt_param(params[k])}" for k in sorted(params))
    return f"{observable}[{inner}]".replace("/", "_")


def trajectory_from_name(path: str | os.PathLike[str]) -> int:
    """Trajectory number from a Chroma-style file name ``<prefix>_cfg_<N>.<ext>``;
    ``ValueError`` naming the file otherwise."""
    name = os.path.basename(os.fspath(path))
    m = _CFG_RE.search(name)
    if m is None:
        raise ValueError(f"{os.fspath(path)}: cannot read a trajectory number from the name; "
                         f"expected Chroma's <prefix>_cfg_<N>.lime (or give an HDF5 store)")
    return int(m.group(1))


@dataclass
class _Source:
    """One configuration of the ensemble: trajectory number and how to load it."""

    traj: int
    label: str
    load: Callable[[], torch.Tensor]


def _ensemble(inputs: Sequence[str], device: torch.device) -> tuple[list[_Source], Any]:
    """Expand globs; an HDF5 store gives its configurations, other files are gauge files named
    ``*_cfg_<N>.*``.  Returns the sources sorted by trajectory and the input store (or None)."""
    from ..io import read_gauge
    from ..io.hdf5 import EnsembleStore, is_hdf5

    paths: list[str] = []
    for item in inputs:
        hits = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not hits:
            raise FileNotFoundError(f"{item}: no file matches")
        paths += hits
    if len(paths) == 1 and os.path.exists(paths[0]) and is_hdf5(paths[0]):
        store = EnsembleStore(paths[0], "r")
        srcs = []
        for i, traj in enumerate(store.trajectories.tolist()):
            srcs.append(_Source(int(traj), f"{paths[0]}[traj {traj}]",
                                lambda i=i: store.read(i, device=device)[0]))
        return srcs, store
    srcs = []
    seen: dict[int, str] = {}
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such file")
        if is_hdf5(p):
            raise ValueError(f"{p}: an HDF5 store must be the only input (got {len(paths)} "
                             f"inputs)")
        traj = trajectory_from_name(p)
        if traj in seen:
            raise ValueError(f"{p}: trajectory {traj} also comes from {seen[traj]}")
        seen[traj] = p
        srcs.append(_Source(traj, p, lambda p=p: read_gauge(p, device=device)[0]))
    srcs.sort(key=lambda s: s.traj)
    return srcs, None


def _accepted_params(fn: Callable[..., Any]) -> set[str]:
    sig = inspect.signature(fn)
    return {n for n, prm in sig.parameters.items()
            if prm.kind is inspect.Parameter.KEYWORD_ONLY}


def _required_params(fn: Callable[..., Any]) -> set[str]:
    sig = inspect.signature(fn)
    return {n for n, prm in sig.parameters.items()
            if prm.kind is inspect.Parameter.KEYWORD_ONLY and prm.default is inspect._empty}


def _as_real_array(v: torch.Tensor) -> np.ndarray:
    """Values per configuration as float64; complex values get a trailing (re, im) axis."""
    a = v.detach().cpu()
    if a.is_complex():
        a = torch.view_as_real(a)
    return a.to(torch.float64).numpy()


class _Bar:
    """A progress bar on stderr (one updating line on a terminal, ~10 lines in a log)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.t0 = time.perf_counter()
        self.every = max(1, total // 10)

    def update(self, done: int, label: str) -> None:
        if not self.enabled or self.total == 0:
            return
        if not self.tty and done % self.every and done != self.total:
            return
        width = 30
        fill = int(width * done / self.total)
        rate = (time.perf_counter() - self.t0) / max(done, 1)
        line = (f"measure [{'#' * fill}{'.' * (width - fill)}] {done}/{self.total}  "
                f"{rate:.2f} s/cfg  eta {rate * (self.total - done):.0f} s  {label}")
        if self.tty:
            sys.stderr.write("\r" + line[:160] + ("\n" if done == self.total else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def measure_ensemble(
    inputs: Sequence[str],
    observables: Sequence[str],
    params: dict[str, Any] | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, dict[str, int]]:
    """Measure ``observables`` (names of :data:`bridge.observables.OBSERVABLES`) on every
    configuration of ``inputs`` and append the series to the HDF5 store ``store``.

    ``inputs``: gauge files (ILDG/SciDAC, NERSC, MILC; globs allowed) named Chroma-style
    ``<prefix>_cfg_<N>.<ext>`` (``N`` is the trajectory number), or one HDF5
    :class:`~bridge.io.hdf5.EnsembleStore` (its trajectory numbers).  ``store``: the output
    store (created if absent); default: the input store itself.  ``params``: keyword arguments
    passed to each observable that accepts them (e.g. ``flow_time``, ``kappa``); a parameter
    no chosen observable accepts, or a missing required one, is a ``ValueError``.

    Each series is named :func:`measurement_name` ``(observable, params it accepts)``; values
    are float64 per configuration (complex ones with a trailing re/im axis).  Resumable:
    trajectories already in a series are skipped; a new trajectory that precedes the last stored
    one of a series is an error (the store keeps trajectories increasing).  Returns per series
    ``{"measured": n, "skipped": m}``.
    """
    from ..io.hdf5 import EnsembleStore

    params = dict(params or {})
    if not observables:
        raise ValueError(f"observables: give at least one of {sorted(OBSERVABLES)}")
    fns = {name: get_observable(name) for name in observables}
    unused = set(params)
    plan: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any]]] = {}
    for name, fn in fns.items():
        accepted = _accepted_params(fn)
        kw = {k: v for k, v in params.items() if k in accepted}
        missing = _required_params(fn) - set(kw)
        if missing:
            flags = ", ".join(_PARAM_FLAGS[k][0] if k in _PARAM_FLAGS else k
                              for k in sorted(missing))
            raise ValueError(f"observable {name!r}: missing required parameter(s) {flags}")
        unused -= set(kw)
        plan[measurement_name(name, kw)] = (fn, kw)
    if unused:
        names = ", ".join(f"{k} ({_PARAM_FLAGS[k][0]})" if k in _PARAM_FLAGS else k
                          for k in sorted(unused))
        raise ValueError(f"parameter(s) {names} not accepted by any chosen observable "
                         f"({', '.join(observables)})")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    srcs, in_store = _ensemble(inputs, dev)
    if store is None:
        if in_store is None:
            raise ValueError("store: give the output HDF5 store (-o/--store) for gauge-file "
                             "inputs")
        store = in_store.path
    out_path = os.fspath(store)
    same = in_store is not None and os.path.abspath(in_store.path) == os.path.abspath(out_path)
    if same:
        in_store.close()
        out = EnsembleStore(out_path, "a")
        for s in srcs:  # re-bind the loaders to the writable handle
            idx = int(np.nonzero(out.trajectories == s.traj)[0][0])
            s.load = (lambda i=idx: out.read(i, device=dev)[0])
    else:
        out = EnsembleStore(out_path, "a")
    stats = {name: {"measured": 0, "skipped": 0} for name in plan}
    try:
        done_sets: dict[str, set[int]] = {}
        last: dict[str, int | None] = {}
        for name in plan:
            if name in out.measurement_names:
                _, trajs = out.measurement(name)
                done_sets[name] = {int(t) for t in trajs}
                last[name] = int(trajs[-1]) if len(trajs) else None
            else:
                done_sets[name], last[name] = set(), None
        todo = []
        for s in srcs:
            names = [n for n in plan if s.traj not in done_sets[n]]
            for n in plan:
                if s.traj in done_sets[n]:
                    stats[n]["skipped"] += 1
            for n in names:
                if last[n] is not None and s.traj < last[n]:
                    raise ValueError(
                        f"{s.label}: trajectory {s.traj} is not measured for {n!r} but precedes "
                        f"its last stored trajectory {last[n]} in '{out_path}'; the store keeps "
                        f"trajectories increasing (measure into a new store)")
            if names:
                todo.append((s, names))
        bar = _Bar(len(todo), progress)
        for k, (s, names) in enumerate(todo):
            u = s.load()
            for n in names:
                fn, kw = plan[n]
                val = _as_real_array(fn(u, **kw))[0]
                out.append_measurement(n, s.traj, val)
                stats[n]["measured"] += 1
            bar.update(k + 1, s.label)
    finally:
        out.close()
        if in_store is not None and not same:
            in_store.close()
    return stats


def add_measure_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``qcd-bridge measure`` (observables over an ensemble into an HDF5 store)."""
    known = ", ".join(sorted(OBSERVABLES))
    p = subparsers.add_parser(
        "measure",
        help="measure observables over an ensemble into an HDF5 store (resumable)",
        description=(
            "Measure observables of the registry (" + known + ") on every configuration of an "
            "ensemble -- gauge files (ILDG/SciDAC, NERSC, MILC; globs allowed) named "
            "Chroma-style <prefix>_cfg_<N>.lime, N being the trajectory number, or one "
            "qcd-bridge HDF5 ensemble store -- and append each series with its trajectory "
            "numbers to an HDF5 store (the input store by default). Re-running skips the "
            "configurations already measured. A series is named after the observable and the "
            "parameters it takes, e.g. topological_charge[flow_time=4]."
        ),
        epilog=("examples:\n"
                "  qcd-bridge measure -O plaquette -O polyakov -o meas.h5 'cfgs/run_cfg_*.lime'\n"
                "  qcd-bridge measure -O topological_charge --flow-time 4 ensemble.h5\n"
                "  qcd-bridge measure -O pion --kappa 0.1 -o pion.h5 cfgs/*.lime"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="CONFIG",
                   help="gauge files or globs (quote globs), or one HDF5 ensemble store")
    p.add_argument("-O", "--observable", action="append", required=True, metavar="NAME",
                   help=f"observable to measure (repeatable): {known}")
    p.add_argument("-o", "--store", default=None,
                   help="output HDF5 store (created if absent; default: the input store)")
    for key, (flag, typ, text) in _PARAM_FLAGS.items():
        if key == "traceless":
            p.add_argument(flag, dest=key, action="store_const", const=True, default=None,
                           help=text)
        elif key in ("source", "boundary"):
            p.add_argument(flag, dest=key, nargs=4, type=int if key == "source" else float,
                           default=None, metavar=("X", "Y", "Z", "T"), help=text)
        else:
            p.add_argument(flag, dest=key, type=typ, default=None, help=text)
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_run_measure_cli)
    return p


def _run_measure_cli(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {}
    for key in _PARAM_FLAGS:
        v = getattr(args, key, None)
        if v is None:
            continue
        if key == "source":
            v = tuple(int(c) for c in v)
        elif key == "boundary":
            v = tuple(float(c) for c in v)
        params[key] = v
    stats = measure_ensemble(args.inputs, args.observable, params, store=args.store,
                             device=args.device, progress=not args.quiet)
    for name, s in stats.items():
        print(f"{name}: measured {s['measured']}, skipped {s['skipped']} (already in the store)")
    return 0
