"""Validate one ensemble against another (e.g. a flow or hybrid ensemble against HMC), observable
by observable, as in Figures 2 and 3 of arXiv:2208.03832: density histograms of both ensembles
with a ratio panel, the distribution of the bin residuals against chi^2 with one degree of
freedom, and a table of means with Gamma-method errors, tau_int and a p-value per observable.

Statistics (details and assumptions: docs/validation.md):

* Means: Gamma-method errors through pyerrors (:func:`bridge.analysis.stats.gamma`; Wolff,
  hep-lat/0306017), reweighted as ``<w O>/<w>`` when an ensemble carries weights.  Two-sided
  test of equal means ``z = (m_A - m_B) / sqrt(dm_A^2 + dm_B^2)``, ``p_mean = erfc(|z|/sqrt 2)``
  (A and B independent; the errors include the autocorrelations).
* Histograms: common bins (``--bins`` equal bins over the pooled range, centred on integers for
  integer-valued observables, merged until A and B each have an effective count of at least
  ``min_count`` in every bin); bin fractions with block-bootstrap errors (``n_boot``
  resamples, blocks of ``1 + ceil(4 (tau_int - 1/2))`` configurations, weights resampled with
  their configurations), the bootstrap variances multiplied by
  ``max(1, dm_Gamma^2 / dm_block^2)``: how much the Gamma method's variance of the mean exceeds
  the one the same blocks give (long autocorrelation tails that blocks of a few tau_int miss).
  Distribution test: ``chi2 = d^T (C_A + C_B)^+ d`` with ``d`` the difference of the bin
  fractions and ``C`` their bootstrap covariances, dropping the last bin (the fractions sum to 1),
  against chi^2 with ``n_bins - 1`` degrees of freedom -> ``p_hist``.
* Per observable: ``p = min(1, 2 min(p_mean, p_hist))`` (Bonferroni over its two tests).  An
  observable disagrees if ``p < alpha / K`` with ``K`` the number of observables compared
  (Bonferroni over observables: the probability that two samples of the same distribution fail
  anywhere is at most ``alpha``).
* Residuals ``r_i = d_i / sqrt(C_ii)`` of all bins of all observables: their squares are compared
  with the chi^2(1) density (figure ``residuals.png``) and a Kolmogorov-Smirnov p-value against
  chi^2(1) is reported (informational: residuals of one histogram are correlated).

Inputs (:func:`load_series`; one file = one replica/chain):

* HDF5 ensemble stores (:class:`bridge.io.hdf5.EnsembleStore`): the measurement series
  ``/measurements/<name>`` (e.g. written by ``qcd-bridge measure``); an observable of
  :data:`bridge.observables.OBSERVABLES` that is not stored is measured on the stored
  configurations.  Weights: ``/configs/weight`` (matched by trajectory number) when not NaN,
  else a measurement series named ``weight``.
* ``.npz``: one array per observable (leading axis = configurations), optional ``traj``,
  ``weight``, ``nrow`` and ``group``.
* ``.csv`` / ``.txt`` / ``.dat``: a header line of comma-separated column names (``traj`` and
  ``weight`` are special), ``#`` comment lines (``# nrow: 8 8``, ``# group: U1`` are read as
  metadata), then one row per configuration.

* ``qcd-bridge chain`` files (HDF5 with attribute ``format = "qcd-bridge-chain"``,
  :mod:`bridge.jobs.chain`): ``/observables/<name>`` ``[cycles, chains]``, **one replica per chain**
  (named ``<file stem>.c<global chain index>``), the cycles ``<= therm`` (attribute) left out.

Components of array-valued series are addressed as ``name[i]`` (``name[i,j]``).

Exit status of ``qcd-bridge validate``: 0 all observables agree, :data:`EXIT_DISAGREE` (3) some
observable disagrees; 1 for errors (unreadable files, unknown observables, mismatched lattices).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .stats import (
    Series,
    block_length,
    blocked_variance,
    bootstrap_histogram,
    check_trajectories,
    check_weights,
    histogram_edges,
)

__all__ = [
    "EXIT_DISAGREE",
    "SUMMARY_KEYS",
    "SPECIAL_COLUMNS",
    "load_series",
    "available_observables",
    "ensemble_metadata",
    "ObservableComparison",
    "ValidationResult",
    "compare_series",
    "validate",
    "write_report",
    "plot_histogram",
    "plot_residuals",
    "add_validate_parser",
    "run_validate",
]

EXIT_DISAGREE = 3
"""Exit status of ``qcd-bridge validate`` when some observable disagrees."""

SUMMARY_KEYS = ("format", "version", "passed", "failed", "alpha", "threshold", "settings", "a",
                "b", "observables", "residuals", "figures")
"""Top-level keys of ``summary.json`` (documented in docs/validation.md)."""

SUMMARY_FORMAT = "qcd-bridge-validation"
SUMMARY_VERSION = 1

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


@dataclass(frozen=True)
class ObservableComparison:
    """The comparison of one observable: Gamma-method results, bootstrap histograms on common
    edges, residuals per bin and the p-values (see the module docstring)."""

    name: str
    a: Any  # analysis.GammaResult
    b: Any
    hist_a: Any  # analysis.Histogram
    hist_b: Any
    residuals: np.ndarray
    z: float
    p_mean: float
    chi2: float | None
    dof: int
    p_hist: float | None
    p_value: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        def hist(h: Any) -> dict[str, Any]:
            return {"density": h.density, "error": h.error, "counts": h.counts, "block": h.block,
                    "variance_scale": h.variance_scale}

        return {
            "name": self.name,
            "a": self.a.as_dict(),
            "b": self.b.as_dict(),
            "z": self.z,
            "p_mean": self.p_mean,
            "chi2": self.chi2,
            "dof": self.dof,
            "p_hist": self.p_hist,
            "p_value": self.p_value,
            "passed": self.passed,
            "edges": self.hist_a.edges,
            "hist_a": hist(self.hist_a),
            "hist_b": hist(self.hist_b),
            "residuals": self.residuals,
        }


@dataclass
class ValidationResult:
    """All comparisons, the residual test and the verdict; :meth:`summary` is the content of
    ``summary.json``."""

    observables: list[ObservableComparison]
    alpha: float
    threshold: float
    ks_statistic: float | None
    ks_pvalue: float | None
    settings: dict[str, Any]
    a_meta: dict[str, Any]
    b_meta: dict[str, Any]
    figures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.observables)

    @property
    def failed(self) -> list[str]:
        return [c.name for c in self.observables if not c.passed]

    @property
    def residuals(self) -> np.ndarray:
        if not self.observables:
            return np.zeros(0)
        return np.concatenate([c.residuals for c in self.observables])

    def summary(self) -> dict[str, Any]:
        r = self.residuals
        return {
            "format": SUMMARY_FORMAT,
            "version": SUMMARY_VERSION,
            "passed": self.passed,
            "failed": self.failed,
            "alpha": self.alpha,
            "threshold": self.threshold,
            "settings": self.settings,
            "a": self.a_meta,
            "b": self.b_meta,
            "observables": [c.as_dict() for c in self.observables],
            "residuals": {
                "n": int(r.size),
                "sum_squares": float(np.square(r).sum()),
                "mean_square": float(np.square(r).mean()) if r.size else None,
                "ks_statistic": self.ks_statistic,
                "ks_pvalue": self.ks_pvalue,
            },
            "figures": list(self.figures),
        }


def _stderr(msg: str) -> None:
    print(f"validate: {msg}", file=sys.stderr, flush=True)


def _path_list(paths: Paths, label: str) -> list[str]:
    if isinstance(paths, (str, os.PathLike)):
        out = [p for p in os.fspath(paths).split(",") if p]
    else:
        out = [os.fspath(p) for p in paths]
    if not out:
        raise ValueError(f"ensemble {label}: no files given")
    for p in out:
        if not os.path.exists(p):
            raise FileNotFoundError(f"ensemble {label}: file '{p}' does not exist")
    return out


def _fmt_lattice(meta: dict[str, Any]) -> str:
    parts = []
    if "nrow" in meta:
        parts.append("nrow " + " ".join(map(str, meta["nrow"])))
    if "group" in meta:
        parts.append(f"group {meta['group']}")
    return ", ".join(parts) or "no lattice recorded"


def _lattice(paths: list[str], label: str) -> dict[str, Any]:
    """Lattice metadata common to the files of one ensemble (an error if they differ)."""
    metas = [ensemble_metadata(p) for p in paths]
    out: dict[str, Any] = {}
    for key in ("nrow", "group"):
        vals = {(m["file"], str(m[key])) for m in metas if key in m}
        if len({v for _, v in vals}) > 1:
            raise ValueError(
                f"ensemble {label}: files disagree on {key}: "
                + "; ".join(f"'{f}' has {v}" for f, v in sorted(vals))
            )
        for m in metas:
            if key in m:
                out[key] = m[key]
    ensembles = [m["ensemble"] for m in metas if "ensemble" in m]
    if ensembles:
        out["ensemble"] = ensembles[0]
    replicas = [m["replica"] for m in metas if "replica" in m]
    if replicas:
        out["replicas"] = replicas
    out["files"] = paths
    out["formats"] = sorted({m["format"] for m in metas})
    return out


def _check_lattices(a: dict[str, Any], b: dict[str, Any]) -> None:
    for key in ("nrow", "group"):
        if key in a and key in b and str(a[key]) != str(b[key]):
            raise ValueError(
                f"mismatched lattices: A ({', '.join(a['files'])}) has {_fmt_lattice(a)}; "
                f"B ({', '.join(b['files'])}) has {_fmt_lattice(b)}; an ensemble can only be "
                f"validated against one of the same lattice and gauge group"
            )


def _covariance_chi2(d: np.ndarray, cov: np.ndarray) -> tuple[float | None, int]:
    """``d^T C^+ d`` over all bins but the last (the fractions sum to one), with the rank of the
    covariance as degrees of freedom; ``(None, 0)`` with fewer than two bins."""
    if d.size < 2:
        return None, 0
    dd, cc = d[:-1], cov[:-1, :-1]
    lam, vec = np.linalg.eigh(cc)
    keep = lam > 1e-12 * max(float(lam.max()), 1e-300)
    if not keep.any():
        return None, 0
    proj = vec[:, keep].T @ dd
    return float(np.sum(proj**2 / lam[keep])), int(keep.sum())


def compare_series(
    sa: Series,
    sb: Series,
    *,
    bins: int = 30,
    n_boot: int = 1000,
    seed: int | np.random.SeedSequence = 1,
    min_count: int = 20,
    S: float = 2.0,
    threshold: float = 0.01,
    block_factor: float = 4.0,
    calibrate: bool = True,
) -> ObservableComparison:
    """Compare two :class:`bridge.analysis.stats.Series` of the same observable (module docstring):
    Gamma-method means (pyerrors ensembles ``"A"`` and ``"B"``), bootstrap histograms on common
    edges, the means test, the histogram chi^2 test and the per-bin residuals; the observable
    passes when its p-value is at least ``threshold``."""
    from scipy import stats

    ga = sa.gamma("A", S=S)
    gb = sb.gamma("B", S=S)
    den = math.hypot(ga.error, gb.error)
    diff = ga.value - gb.value
    if den > 0:
        z = diff / den
    else:
        z = 0.0 if diff == 0 else math.copysign(math.inf, diff)
    p_mean = float(math.erfc(abs(z) / math.sqrt(2.0)))
    edges = histogram_edges([list(sa.values), list(sb.values)], bins, min_count=min_count,
                            weights=[None if ser.weights is None else list(ser.weights)
                                     for ser in (sa, sb)])
    ss = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
    hists = []
    for ser, g, child, lab in ((sa, ga, ss.spawn(1)[0], "A"), (sb, gb, ss.spawn(1)[0], "B")):
        block = block_length(g.tau_int, block_factor)
        weights = None if ser.weights is None else list(ser.weights)
        scale = 1.0
        if calibrate:
            bv = blocked_variance(list(ser.values), block, weights=weights)
            scale = max(1.0, g.error**2 / bv) if bv > 0 else 1.0
        hists.append(bootstrap_histogram(
            list(ser.values), edges, weights=weights, n_boot=n_boot,
            seed=np.random.default_rng(child), block=block, variance_scale=scale,
            what=f"{lab} {ser.observable!r}"))
    ha, hb = hists
    d = ha.fraction - hb.fraction
    cov = ha.covariance + hb.covariance
    var = np.diag(cov)
    ok = var > 0
    residuals = d[ok] / np.sqrt(var[ok])
    chi2, dof = _covariance_chi2(d, cov)
    p_hist = None if chi2 is None else float(stats.chi2.sf(chi2, dof))
    p = p_mean if p_hist is None else min(1.0, 2.0 * min(p_mean, p_hist))
    return ObservableComparison(
        name=sa.observable, a=ga, b=gb, hist_a=ha, hist_b=hb, residuals=residuals, z=float(z),
        p_mean=p_mean, chi2=chi2, dof=dof, p_hist=p_hist, p_value=float(p),
        passed=bool(p >= threshold),
    )


def validate(
    a: Paths,
    b: Paths,
    *,
    observables: Sequence[str] | None = None,
    bins: int = 30,
    n_boot: int = 1000,
    alpha: float = 0.01,
    seed: int = 1,
    min_count: int = 20,
    S: float = 2.0,
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Compare ensemble ``a`` with ensemble ``b`` (each one file or several files = replicas:
    HDF5 ensemble stores, .npz or CSV series; a string may list files separated by commas) on
    ``observables`` (default: every series both carry).  Mismatched lattices (stored ``nrow`` /
    ``group``) are an error naming both.  Nothing is written; see :func:`write_report`."""
    if not (0.0 < float(alpha) < 1.0):
        raise ValueError(f"alpha: expected a significance level in (0, 1), got {alpha}")
    if int(bins) < 1:
        raise ValueError(f"bins: expected at least one bin, got {bins}")
    if int(min_count) < 1:
        raise ValueError(f"min_count: expected at least 1, got {min_count}")
    if int(n_boot) < 2:
        raise ValueError(f"bootstrap: expected at least 2 resamples, got {n_boot}")
    pa, pb = _path_list(a, "A"), _path_list(b, "B")
    ma, mb = _lattice(pa, "A"), _lattice(pb, "B")
    _check_lattices(ma, mb)
    if observables is None:
        avail_a = [n for n in available_observables(pa[0])
                   if all(n in available_observables(p) for p in pa[1:])]
        avail_b = set(available_observables(pb[0])).intersection(
            *[available_observables(p) for p in pb[1:]])
        names = [n for n in avail_a if n in avail_b]
        if not names:
            raise ValueError(
                f"observables: A ({', '.join(pa)}) and B ({', '.join(pb)}) have no measurement "
                f"series in common (A: {avail_a}, B: {sorted(avail_b)}); name them with "
                f"--observables"
            )
    else:
        names = [n.strip() for o in observables for n in str(o).split(",") if n.strip()]
        if not names:
            raise ValueError("observables: empty list")
        if len(set(names)) != len(names):
            raise ValueError(f"observables: duplicate names in {names}")
    k = len(names)
    threshold = float(alpha) / k
    children = np.random.SeedSequence(int(seed)).spawn(k)
    comps = []
    for i, name in enumerate(names):
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: reading")
        sa = load_series(pa, name, progress=progress)
        sb = load_series(pb, name, progress=progress)
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: Gamma method and {n_boot} bootstrap resamples "
                     f"(A: {sa.n}, B: {sb.n} configurations)")
        c = compare_series(sa, sb, bins=bins, n_boot=n_boot, seed=children[i],
                           min_count=min_count, S=S, threshold=threshold)
        comps.append(c)
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: p = {c.p_value:.3g} "
                     f"({'ok' if c.passed else 'DISAGREES'})")
    for meta, comp in ((ma, "a"), (mb, "b")):
        ess_vals = [getattr(c, comp).ess for c in comps]
        meta["weighted"] = ess_vals[0] is not None
        meta["ess"] = ess_vals[0]
    r = np.concatenate([c.residuals for c in comps]) if comps else np.zeros(0)
    ks_stat = ks_p = None
    if r.size:
        from scipy import stats

        ks = stats.kstest(np.square(r), "chi2", args=(1,))
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    settings = {"observables": names, "bins": int(bins), "bootstrap": int(n_boot),
                "seed": int(seed), "min_count": int(min_count), "S": float(S),
                "block_rule": "1 + ceil(4 (tau_int - 1/2))",
                "variance_scale_rule": "max(1, Gamma variance / blocked variance of the mean)",
                "test": "p = min(1, 2 min(p_mean, p_hist)); fail if p < alpha / K"}
    return ValidationResult(observables=comps, alpha=float(alpha), threshold=threshold,
                            ks_statistic=ks_stat, ks_pvalue=ks_p, settings=settings,
                            a_meta=ma, b_meta=mb)


# -- series from files ----------------------------------------------------------------------------
SPECIAL_COLUMNS = ("traj", "weight", "nrow", "group")
"""Names in npz/CSV files (and the store series ``weight``) that are not observables."""

_COMPONENT = re.compile(r"^(?P<base>.+)\[(?P<index>\s*-?\d+\s*(,\s*-?\d+\s*)*)\]$")



def _kind(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"file '{path}': does not exist")
    with open(path, "rb") as f:
        head = f.read(8)
    if head == b"\x89HDF\r\n\x1a\n":
        return "chain" if _is_chain_file(path) else "hdf5"
    if head.startswith(b"PK"):
        return "npz"
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".txt", ".dat"):
        return "csv"
    raise ValueError(
        f"file '{path}': not an HDF5 ensemble store, .npz or CSV series file (expected the HDF5 "
        f"signature, a zip archive, or the extension .csv/.txt/.dat)"
    )


def _is_chain_file(path: str) -> bool:
    import h5py

    from ..jobs.chain import CHAIN_FORMAT

    try:
        with h5py.File(path, "r") as f:
            fmt = f.attrs.get("format")
    except OSError:
        return False
    return (fmt.decode() if isinstance(fmt, bytes) else fmt) == CHAIN_FORMAT


def _read_chain(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A ``qcd-bridge chain`` file: the committed observables ``[cycles, chains]`` after the
    thermalisation cycles, with ``cycle`` as trajectory numbers, and the lattice metadata."""
    import h5py

    with h5py.File(path, "r") as f:
        a = f.attrs
        n, therm = int(a["n_cycles"]), int(a.get("therm", 0))
        cols = {k: np.asarray(ds[:n]) for k, ds in f["observables"].items()}
        c0, nc = int(a.get("chain_offset", 0)), int(a["n_chains"])
        meta = {"nrow": [int(v) for v in np.ravel(a["nrow"])], "group": str(a["group"]),
                "ensemble": "chain", "replica": f"c{c0}-c{c0 + nc - 1}", "therm": therm,
                "chain_offset": c0}
    keep = cols["cycle"] > therm
    return {k: v[keep] for k, v in cols.items()}, meta


def _split_component(name: str, known: Sequence[str] = ()) -> tuple[str, tuple[int, ...]]:
    """``"name[i,j]"`` -> ``("name", (i, j))``; a name that is itself a known series (e.g. a
    ``qcd-bridge measure`` name such as ``topological_charge[flow_time=4]``) stays whole."""
    if name in known:
        return name, ()
    m = _COMPONENT.match(name)
    if m is None:
        return name, ()
    return m.group("base"), tuple(int(i) for i in m.group("index").split(","))


def _expand(name: str, shape: tuple[int, ...]) -> list[str]:
    if not shape:
        return [name]
    return [f"{name}[{','.join(map(str, idx))}]" for idx in np.ndindex(*shape)]


def _read_csv(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    meta: dict[str, Any] = {}
    header: list[str] | None = None
    rows: list[list[str]] = []
    with open(path, newline="") as f:
        for lineno, line in enumerate(f, 1):
            s = line.strip()
            if not s:
                continue
            if s.startswith("#"):
                m = re.match(r"#\s*(nrow|group)\s*[:=]\s*(.+)$", s)
                if m:
                    meta[m.group(1)] = m.group(2).strip()
                continue
            cells = [c.strip() for c in next(csv.reader([s]))]
            if header is None:
                header = cells
                continue
            if len(cells) != len(header):
                raise ValueError(
                    f"file '{path}', line {lineno}: {len(cells)} columns, expected "
                    f"{len(header)} as in the header {header}"
                )
            rows.append(cells)
    if header is None:
        raise ValueError(f"file '{path}': no header line with column names")
    try:
        data = np.array(rows, dtype=np.float64).reshape(len(rows), len(header))
    except ValueError as exc:
        raise ValueError(f"file '{path}': non-numeric entry ({exc})") from None
    cols = {h: data[:, i] for i, h in enumerate(header)}
    if "nrow" in meta:
        meta["nrow"] = [int(v) for v in re.split(r"[\s,]+", meta["nrow"]) if v]
    return cols, meta


def _read_npz(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    try:
        with np.load(path, allow_pickle=False) as z:
            data = {k: np.asarray(z[k]) for k in z.files}
    except (ValueError, OSError) as exc:
        raise ValueError(f"file '{path}': cannot read as .npz ({exc})") from None
    meta: dict[str, Any] = {}
    if "nrow" in data:
        meta["nrow"] = [int(v) for v in np.ravel(data.pop("nrow"))]
    if "group" in data:
        meta["group"] = str(data.pop("group"))
    return data, meta


def _table(path: str, kind: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return _read_csv(path) if kind == "csv" else _read_npz(path)


def available_observables(path: str | os.PathLike[str]) -> list[str]:
    """Names of the observable series in a file (components of array-valued series expanded as
    ``name[i]``; ``traj``/``weight`` excluded).  For an ensemble store: the measurement series;
    observables of the registry that could be measured on its configurations are not listed."""
    spath = os.fspath(path)
    kind = _kind(spath)
    names: list[str] = []
    if kind == "hdf5":
        from ..io.hdf5 import EnsembleStore

        with EnsembleStore(spath, "r") as st:
            for m in st.measurement_names:
                if m in SPECIAL_COLUMNS:
                    continue
                values, _ = st.measurement(m)
                names += _expand(m, tuple(values.shape[1:]))
        return names
    if kind == "chain":
        return [k for k in _read_chain(spath)[0] if k != "cycle"]
    cols, _ = _table(spath, kind)
    for k, v in cols.items():
        if k not in SPECIAL_COLUMNS:
            names += _expand(k, tuple(np.shape(v)[1:]))
    return names


def ensemble_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Lattice metadata of a file for consistency checks: ``nrow`` and ``group`` where recorded
    (store attributes ``nrow``/``nc``, else ``params["nrow"]``/``params["group"]`` of the first
    configuration; npz arrays / CSV comments ``nrow`` and ``group``), plus ``ensemble`` and
    ``replica`` names of a store."""
    spath = os.fspath(path)
    kind = _kind(spath)
    meta: dict[str, Any] = {"file": spath, "format": kind}
    if kind == "chain":
        m = _read_chain(spath)[1]
        meta.update({k: m[k] for k in ("nrow", "group", "ensemble", "replica")})
        return meta
    if kind != "hdf5":
        meta.update(_table(spath, kind)[1])
        return meta
    from ..io.hdf5 import EnsembleStore
    from ..io.ildg import NC

    with EnsembleStore(spath, "r") as st:
        meta["ensemble"], meta["replica"] = st.ensemble, st.replica
        params = st.metadata(0)["params"] if len(st) else {}
        if st.nrow is not None:
            meta["nrow"] = list(st.nrow)
            meta["group"] = f"SU{NC}"
        if isinstance(params, dict):
            if "nrow" in params and "nrow" not in meta:
                meta["nrow"] = [int(v) for v in params["nrow"]]
            if "group" in params:
                meta["group"] = str(params["group"])
    return meta


def _component(values: np.ndarray, name: str, index: tuple[int, ...], source: str) -> np.ndarray:
    if values.ndim == 1 and not index:
        return values
    if len(index) != values.ndim - 1:
        raise ValueError(
            f"observable {name!r} in '{source}': values of shape {values.shape[1:]} per "
            f"configuration; give a component, e.g. {_expand(name, values.shape[1:])[0]!r}"
            if not index else
            f"observable {name!r} in '{source}': index {list(index)} does not fit values of shape "
            f"{values.shape[1:]} per configuration"
        )
    try:
        return values[(slice(None), *index)]
    except IndexError:
        raise ValueError(
            f"observable {name!r} in '{source}': index {list(index)} out of range for values of "
            f"shape {values.shape[1:]} per configuration"
        ) from None


def _store_weights(path: str, trajs: np.ndarray, st: Any) -> np.ndarray | None:
    """Weights of the series' trajectories: ``/configs/weight`` (matched by trajectory) unless all
    NaN, else the measurement series ``weight``; None when the store carries neither."""
    import h5py

    n = len(st)
    if n:
        with h5py.File(path, "r") as f:
            ctraj = f["configs/traj"][:n]
            cw = f["configs/weight"][:n]
        if not np.isnan(cw).all():
            pos = np.searchsorted(ctraj, trajs)
            ok = (pos < n) & (ctraj[np.minimum(pos, n - 1)] == trajs)
            if not ok.all():
                raise ValueError(
                    f"file '{path}': no stored configuration (and weight) for trajectory "
                    f"{int(trajs[~ok][0])} of the series; weights must cover every measurement"
                )
            return cw[pos]
    if "weight" in st.measurement_names:
        wv, wt = st.measurement("weight")
        pos = np.searchsorted(wt, trajs)
        ok = (pos < wt.size) & (wt[np.minimum(pos, max(wt.size - 1, 0))] == trajs)
        if not ok.all():
            raise ValueError(
                f"file '{path}': measurement 'weight' has no value for trajectory "
                f"{int(trajs[~ok][0])} of the series; weights must cover every measurement"
            )
        return np.asarray(wv, dtype=np.float64).reshape(wv.shape[0], -1)[pos, 0]
    return None


def _measure_store(st: Any, path: str, base: str,
                   progress: Callable[[str], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Measure a registry observable on every stored configuration (complex values: real
    part)."""
    import torch

    from ..observables import get_observable

    fn = get_observable(base)
    n = len(st)
    out = []
    for i in range(n):
        u, _ = st.read(i)
        try:
            v = fn(u)
        except TypeError as exc:
            raise ValueError(
                f"observable {base!r}: cannot be measured with default parameters on "
                f"'{path}' ({exc}); measure it and store it as a series"
            ) from None
        if torch.is_complex(v):
            v = v.real
        out.append(v[0].detach().cpu().numpy().astype(np.float64))
        if progress is not None and (i + 1) % 100 == 0:
            progress(f"measured {base} on {i + 1}/{n} configurations of '{path}'")
    return np.stack(out) if out else np.zeros(0), np.asarray(st.trajectories, dtype=np.int64)


def _load_one(path: str, observable: str,
              progress: Callable[[str], None] | None) -> tuple[np.ndarray, np.ndarray,
                                                               np.ndarray | None, str]:
    kind = _kind(path)
    if kind == "hdf5":
        from ..io.hdf5 import EnsembleStore
        from ..observables import OBSERVABLES

        with EnsembleStore(path, "r") as st:
            base, index = _split_component(observable, st.measurement_names)
            if base in st.measurement_names and base not in SPECIAL_COLUMNS:
                values, trajs = st.measurement(base)
            elif base in OBSERVABLES and len(st):
                if progress is not None:
                    progress(f"measuring {base} on {len(st)} configurations of '{path}'")
                values, trajs = _measure_store(st, path, base, progress)
            else:
                avail = [m for m in st.measurement_names if m not in SPECIAL_COLUMNS]
                extra = (f"; with stored configurations, also the registry observables "
                         f"{sorted(OBSERVABLES)}") if len(st) else ""
                raise ValueError(
                    f"observable {observable!r}: unknown in '{path}'; available measurement "
                    f"series: {avail}{extra} (add series with `qcd-bridge measure`)"
                )
            weights = _store_weights(path, np.asarray(trajs, dtype=np.int64), st)
            replica = st.replica
    else:
        cols, _ = _table(path, kind)
        base, index = _split_component(observable, list(cols))
        if base not in cols or base in SPECIAL_COLUMNS:
            avail = [k for k in cols if k not in SPECIAL_COLUMNS]
            raise ValueError(
                f"observable {observable!r}: unknown in '{path}'; available series: {avail}"
            )
        values = np.asarray(cols[base], dtype=np.float64)
        m = values.shape[0] if values.ndim else 0
        trajs = cols.get("traj", np.arange(m))
        if np.shape(trajs) != (m,):
            raise ValueError(
                f"file '{path}': 'traj' has shape {np.shape(trajs)}, expected ({m},) like "
                f"{base!r} (mismatched lengths)"
            )
        weights = cols.get("weight")
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
            if weights.shape != (m,):
                raise ValueError(
                    f"file '{path}': 'weight' has shape {weights.shape}, expected ({m},) like "
                    f"{base!r} (mismatched lengths)"
                )
        replica = os.path.splitext(os.path.basename(path))[0]
    values = _component(np.asarray(values, dtype=np.float64), base, index, path)
    return values, np.asarray(trajs), weights, replica


def _load_chain(path: str, observable: str) -> list[tuple[np.ndarray, np.ndarray, None, str]]:
    """One replica per chain of a ``qcd-bridge chain`` file (no weights: the chain is exact)."""
    cols, meta = _read_chain(path)
    base, index = _split_component(observable, list(cols))
    if base not in cols or base == "cycle":
        avail = [k for k in cols if k != "cycle"]
        raise ValueError(
            f"observable {observable!r}: unknown in chain file '{path}'; available series: "
            f"{avail}"
        )
    if index:
        raise ValueError(
            f"observable {observable!r} in chain file '{path}': the series is one number per "
            f"chain and cycle; give it without an index"
        )
    values, cyc = np.asarray(cols[base], dtype=np.float64), np.asarray(cols["cycle"])
    stem = os.path.splitext(os.path.basename(path))[0]
    return [(values[:, c], cyc, None, f"{stem}.c{meta['chain_offset'] + c}")
            for c in range(values.shape[1])]


def load_series(
    paths: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    observable: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> Series:
    """The series of ``observable`` from one file or several (one replica each; see the module
    docstring for the formats).  Weights: either every file carries them or none (mixed is an
    error).  An unknown observable is a ``ValueError`` naming the file and the available ones."""
    plist = [os.fspath(paths)] if isinstance(paths, (str, os.PathLike)) else [
        os.fspath(p) for p in paths]
    if not plist:
        raise ValueError("paths: no files given")
    vals, trajs, ws, reps = [], [], [], []
    sources = []
    for p in plist:
        for v, t, w, r in (_load_chain(p, observable) if _kind(p) == "chain"
                           else [_load_one(p, observable, progress)]):
            if w is not None:
                check_weights(w, f"weights of '{p}'", [v.size])
            vals.append(v)
            trajs.append(check_trajectories(t, [v], f"observable {observable!r} in '{p}'")[0])
            ws.append(w)
            reps.append(r)
            sources.append(p)
    plist = sources
    have = [w is not None for w in ws]
    if any(have) and not all(have):
        with_w = list(dict.fromkeys(p for p, h in zip(plist, have, strict=True) if h))
        without = list(dict.fromkeys(p for p, h in zip(plist, have, strict=True) if not h))
        raise ValueError(
            f"weights: {', '.join(with_w)} carry weights but {', '.join(without)} do not; "
            f"expected all or none"
        )
    if len(set(reps)) != len(reps):
        reps = [f"r{i}" for i in range(len(reps))]
    return Series(
        observable=observable,
        replicas=tuple(reps),
        values=tuple(vals),
        trajs=tuple(trajs),
        weights=tuple(np.asarray(w, dtype=np.float64) for w in ws) if all(have) else None,
        sources=tuple(dict.fromkeys(plist)),
    )


def _jsonable(obj: Any) -> Any:
    """Plain-JSON copy (numpy scalars/arrays converted, NaN/inf -> None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        return float(obj) if math.isfinite(float(obj)) else None
    return obj


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` with numpy types converted and NaN written as null."""
    return json.dumps(_jsonable(obj), indent=2, sort_keys=False)


# -- figures --------------------------------------------------------------------------------------
def _figure(width: float, height: float) -> Any:
    """A matplotlib Figure drawn by the Agg canvas (no display, no pyplot state)."""
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def plot_histogram(c: ObservableComparison, path: str | os.PathLike[str],
                   labels: tuple[str, str] = ("A", "B")) -> None:
    """Density histograms of A and B with bootstrap errors, and their ratio A/B below
    (arXiv:2208.03832, Fig. 2)."""
    fig = _figure(6.0, 5.0)
    top, bot = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    e = c.hist_a.edges
    mid = 0.5 * (e[1:] + e[:-1])
    shift = 0.1 * np.diff(e)  # error bars of A and B side by side
    for h, lab, col, sgn in ((c.hist_a, labels[0], "C0", -1), (c.hist_b, labels[1], "C1", 1)):
        top.stairs(h.density, e, color=col, label=lab)
        top.errorbar(mid + sgn * shift, h.density, yerr=h.error, fmt="none", ecolor=col,
                     capsize=2)
    top.set_ylabel("density")
    top.set_title(f"{c.name}: p = {c.p_value:.3g} ({'agrees' if c.passed else 'disagrees'})")
    top.legend(fontsize="small")
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = c.hist_a.density / c.hist_b.density
        rerr = np.abs(ratio) * np.hypot(c.hist_a.error / c.hist_a.density,
                                        c.hist_b.error / c.hist_b.density)
    good = np.isfinite(ratio) & np.isfinite(rerr)
    bot.axhline(1.0, color="k", lw=0.8)
    bot.errorbar(mid[good], ratio[good], yerr=rerr[good], fmt="o", ms=3, color="C2", capsize=2)
    bot.set_ylabel(f"{labels[0]}/{labels[1]}")
    bot.set_xlabel(c.name)
    fig.savefig(os.fspath(path), dpi=100)


def plot_residuals(result: ValidationResult, path: str | os.PathLike[str]) -> None:
    """Histogram of the squared bin residuals of all observables against the chi^2(1) density
    (arXiv:2208.03832, Fig. 3)."""
    from scipy import stats

    fig = _figure(6.0, 4.0)
    ax = fig.subplots()
    r2 = np.square(result.residuals)
    top = max(10.0, float(r2.max()) if r2.size else 0.0)
    edges = np.linspace(0.0, top, 41)
    if r2.size:
        ax.hist(r2, bins=edges, density=True, histtype="stepfilled", alpha=0.5, color="C0",
                label=f"residuals$^2$ ({r2.size} bins)")
    x = np.linspace(edges[1] / 20, top, 400)
    ax.plot(x, stats.chi2.pdf(x, 1), color="k", label=r"$\chi^2$, 1 d.o.f.")
    ax.set_yscale("log")
    ax.set_xlabel(r"$r^2 = (A - B)^2 / \sigma^2$ per bin")
    ax.set_ylabel("density")
    ks = "n/a" if result.ks_pvalue is None else f"{result.ks_pvalue:.3g}"
    ax.set_title(f"bin residuals of {len(result.observables)} observable(s): KS p = {ks}")
    ax.legend(fontsize="small")
    fig.savefig(os.fspath(path), dpi=100)


# -- report ---------------------------------------------------------------------------------------
def _slug(name: str, used: set[str]) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "observable"
    base, i = s, 1
    while s in used:
        i += 1
        s = f"{base}_{i}"
    used.add(s)
    return s


def _pm(value: float, error: float) -> str:
    """``value(error)`` with two significant digits of the error, e.g. ``0.6969(25)``."""
    if not (math.isfinite(value) and math.isfinite(error) and error > 0):
        return f"{value:.6g}"
    digits = 1 - int(math.floor(math.log10(error)))
    if not 0 <= digits <= 12:
        return f"{value:.6g}+-{error:.2g}"
    err = round(error * 10**digits)
    if err >= 100:  # rounding carried into a third digit
        digits -= 1
        err = round(error * 10**digits)
    if digits == 0:
        return f"{value:.0f}({err})"
    return f"{value:.{digits}f}({err})"


def _p(p: float | None) -> str:
    return "-" if p is None else f"{p:.3g}"


def _markdown(result: ValidationResult, figs: dict[str, str]) -> str:
    s = result.settings
    lines = [
        "# Ensemble validation report",
        "",
        f"**Verdict: {'PASS' if result.passed else 'FAIL'}** - "
        + ("all observables agree" if result.passed else
           f"disagreeing: {', '.join(result.failed)}")
        + f" (alpha = {result.alpha:g}, Bonferroni threshold alpha/K = {result.threshold:.3g} "
        f"for K = {len(result.observables)} observable(s)).",
        "",
        "## Ensembles",
        "",
        "| | files | lattice | weighted | ESS per configuration |",
        "|---|---|---|---|---|",
    ]
    for lab, m in (("A", result.a_meta), ("B", result.b_meta)):
        ess = "-" if m.get("ess") is None else f"{m['ess']:.4f}"
        lines.append(f"| {lab} | {', '.join(f'`{f}`' for f in m['files'])} | "
                     f"{_fmt_lattice(m)} | {'yes' if m.get('weighted') else 'no'} | {ess} |")
    lines += [
        "",
        f"Settings: {s['bins']} bins requested (merged until A and B each have >= "
        f"{s['min_count']} effective samples per bin), {s['bootstrap']} bootstrap resamples "
        f"(seed {s['seed']}), Gamma method with S = {s['S']:g}.",
        "",
        "## Observables",
        "",
        "| observable | N_A | A | tau_int A | N_B | B | tau_int B | z | p_mean | chi2/dof "
        "| p_hist | p | result |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result.observables:
        chi = "-" if c.chi2 is None else f"{c.chi2:.1f}/{c.dof}"
        lines.append(
            f"| {c.name} | {c.a.n} | {_pm(c.a.value, c.a.error)} | "
            f"{_pm(c.a.tau_int, c.a.tau_int_error)} | {c.b.n} | "
            f"{_pm(c.b.value, c.b.error)} | {_pm(c.b.tau_int, c.b.tau_int_error)} | "
            f"{c.z:+.2f} | {_p(c.p_mean)} | {chi} | {_p(c.p_hist)} | {_p(c.p_value)} | "
            f"{'ok' if c.passed else '**disagrees**'} |"
        )
    r = result.residuals
    lines += [
        "",
        "## Bin residuals",
        "",
        f"{r.size} bins; mean of r^2 = "
        f"{(float(np.square(r).mean()) if r.size else float('nan')):.3f} (1 expected); "
        f"Kolmogorov-Smirnov test of r^2 against chi^2(1): p = {_p(result.ks_pvalue)} "
        f"(informational, residuals within one histogram are correlated).",
        "",
        f"![residuals]({figs['residuals']})",
        "",
        "## Histograms",
        "",
    ]
    for c in result.observables:
        lines += [f"### {c.name}", "", f"![{c.name}]({figs[c.name]})", ""]
    lines += [
        "## Method",
        "",
        "Means and errors: Gamma method (Wolff, hep-lat/0306017) through pyerrors; weighted "
        "ensembles as <w O>/<w>. p_mean: two-sided test of equal means, "
        "z = (A - B)/sqrt(dA^2 + dB^2). p_hist: chi^2 of the difference of the bin fractions "
        "with the summed bootstrap covariances (block bootstrap, blocks of "
        f"{s['block_rule']} configurations, variances scaled by {s['variance_scale_rule']}), "
        "n_bins - 1 degrees of freedom. "
        "p = min(1, 2 min(p_mean, p_hist)); an observable disagrees if p < alpha/K. "
        "Figures as in arXiv:2208.03832, Figs. 2 and 3. See docs/validation.md.",
        "",
    ]
    return "\n".join(lines)


def write_report(
    result: ValidationResult,
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    progress: Callable[[str], None] | None = None,
) -> list[str]:
    """Write ``report.md``, ``summary.json``, ``residuals.png`` and one ``hist_<name>.png`` per
    observable into directory ``out`` (created if needed); existing report files are refused
    unless ``overwrite``.  Returns the paths written."""
    out = os.fspath(out)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"report directory '{out}': exists and is not a directory")
    os.makedirs(out, exist_ok=True)
    for name in ("report.md", "summary.json"):
        p = os.path.join(out, name)
        if os.path.exists(p) and not overwrite:
            raise FileExistsError(
                f"file '{p}': a report exists; refusing to overwrite it (pass overwrite=True, or "
                f"--overwrite on the command line, or choose another --out)"
            )
    used: set[str] = set()
    figs = {"residuals": "residuals.png"}
    for c in result.observables:
        figs[c.name] = f"hist_{_slug(c.name, used)}.png"
    written = []
    for c in result.observables:
        plot_histogram(c, os.path.join(out, figs[c.name]))
        written.append(os.path.join(out, figs[c.name]))
    plot_residuals(result, os.path.join(out, figs["residuals"]))
    written.append(os.path.join(out, figs["residuals"]))
    result.figures = [figs["residuals"]] + [figs[c.name] for c in result.observables]
    for name, text in (("summary.json", dumps(result.summary()) + "\n"),
                       ("report.md", _markdown(result, figs))):
        p = os.path.join(out, name)
        tmp = os.path.join(out, f".{name}.tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, p)
        written.append(p)
    if progress is not None:
        progress(f"wrote {len(written)} files to '{out}'")
    return written


# -- command line ---------------------------------------------------------------------------------
def add_validate_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``qcd-bridge validate A B [...]``."""
    p = subparsers.add_parser(
        "validate",
        help="compare two ensembles observable by observable (histograms, residuals, means)",
        description=(
            "Compare ensemble A with ensemble B (e.g. flow or hybrid against HMC) as in "
            "arXiv:2208.03832, Figs. 2-3: density histograms with ratio panels and bootstrap "
            "errors, bin residuals against chi^2(1), means with Gamma-method errors (pyerrors) and "
            "a p-value per observable. Writes report.md, summary.json and PNG figures to --out. "
            "Exit status 0: all observables agree; 3: some observable disagrees at significance "
            "alpha (Bonferroni-corrected over observables); 1: error. See docs/validation.md."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("a", metavar="A", help="ensemble A: HDF5 ensemble store(s), .npz or CSV series "
                   "files; several files (one replica each) separated by commas")
    p.add_argument("b", metavar="B", help="ensemble B, as A")
    p.add_argument("--observables", nargs="+", default=None, metavar="NAME",
                   help="observables to compare (series names, name[i] for components, or "
                   "registry observables measured on stored configurations); default: every "
                   "series both ensembles carry")
    p.add_argument("--bins", type=int, default=30, help="histogram bins before merging")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples")
    p.add_argument("--alpha", type=float, default=0.01,
                   help="significance level for the whole comparison (divided by the number "
                   "of observables)")
    p.add_argument("--out", default="validation_report", help="report directory")
    p.add_argument("--seed", type=int, default=1, help="seed of the bootstrap generator")
    p.add_argument("--min-count", type=int, default=20,
                   help="merge bins until A and B each have this many (effective) samples in "
                   "every bin")
    p.add_argument("--S", type=float, default=2.0, dest="S",
                   help="Wolff's windowing parameter of the Gamma method")
    p.add_argument("--overwrite", action="store_true", help="replace an existing report")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.set_defaults(func=run_validate)
    return p


def run_validate(args: argparse.Namespace) -> int:
    """Handler of ``qcd-bridge validate``: 0 agree, :data:`EXIT_DISAGREE` disagree."""
    progress = None if args.quiet else _stderr
    res = validate(args.a, args.b, observables=args.observables, bins=args.bins,
                   n_boot=args.bootstrap, alpha=args.alpha, seed=args.seed,
                   min_count=args.min_count, S=args.S, progress=progress)
    write_report(res, args.out, overwrite=args.overwrite, progress=progress)
    for c in res.observables:
        print(f"{c.name}: A {_pm(c.a.value, c.a.error)}  B {_pm(c.b.value, c.b.error)}  "
              f"p = {c.p_value:.3g}  {'ok' if c.passed else 'DISAGREES'}")
    print(f"{'PASS' if res.passed else 'FAIL'}: {len(res.observables) - len(res.failed)}/"
          f"{len(res.observables)} observables agree (alpha = {res.alpha:g}, threshold "
          f"{res.threshold:.3g}); report in '{args.out}'")
    return 0 if res.passed else EXIT_DISAGREE
