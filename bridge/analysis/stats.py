"""Statistical analysis of Monte Carlo series: Gamma-method errors and integrated autocorrelation
times (through pyerrors), reweighted estimators, the effective sample size and bootstrap
histograms.

The Gamma method is not re-implemented here: :func:`make_obs` builds a ``pyerrors.Obs`` with
``idl`` = the trajectory numbers (one replica name ``"ensemble|replica"`` per chain) and
:func:`gamma` calls its ``gamma_method()``.  Reweighted means ``<O> = <w O>_q / <w>_q`` are the
ratio of two Obs, so pyerrors propagates the errors (and autocorrelations) of numerator and
denominator together (:func:`reweighted_obs`).

Sources:

* U. Wolff, "Monte Carlo errors with less errors", Comput. Phys. Commun. 156 (2004) 143,
  hep-lat/0306017 (Gamma method, automatic windowing with parameter ``S``, eq. (42) error of
  tau_int, eq. (49) bias correction).
* F. Joswig, S. Kuberski, J. T. Kuhlmann, J. Neuendorf, "pyerrors: a python framework for error
  analysis of Monte Carlo data", Comput. Phys. Commun. 288 (2023) 108750, arXiv:2209.14371.
* Reweighting and the effective sample size per configuration
  ``ESS = (sum w)^2 / (N sum w^2)``: Kish's formula, normalised per configuration as in the flow
  literature (e.g. Albergo et al., arXiv:2101.08176); validation as in Abbott et al.,
  arXiv:2208.03832 (PoS LATTICE2022 036), Figs. 2-3.
* Block bootstrap (blocks of consecutive configurations resampled with replacement): Kuensch,
  Ann. Statist. 17 (1989) 1217; with ``block=1`` Efron's bootstrap.

Pure statistics on arrays (no file access): the comparison of two ensembles is
:mod:`bridge.analysis.compare`; reading series from ensemble files lives in
:mod:`bridge.jobs.validate` (downstream of :mod:`bridge.io`, see docs/architecture.md).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..mcmc import reweighting

__all__ = [
    "MIN_CONFIGS",
    "MIN_REPLICA",
    "Series",
    "GammaResult",
    "Histogram",
    "check_weights",
    "check_trajectories",
    "ess",
    "make_obs",
    "reweighted_obs",
    "gamma",
    "bootstrap_histogram",
    "block_length",
    "blocked_variance",
    "histogram_edges",
]

MIN_CONFIGS = 20
"""Default minimum number of configurations (all replicas together) for the Gamma method."""

MIN_REPLICA = 5
"""pyerrors needs at least this many samples per replica."""

def _pe() -> Any:
    """pyerrors, imported lazily (it imports matplotlib.pyplot and scipy: about 1 s); the
    deprecation warnings its import triggers in newer scipy are not ours to show."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import pyerrors as pe

    return pe


# -- input checks ---------------------------------------------------------------------------------
def _replica_list(values: np.ndarray | Sequence[np.ndarray], what: str) -> list[np.ndarray]:
    """One array per replica: a 1-D array is one replica, a 2-D array or a sequence of 1-D
    arrays several."""
    if isinstance(values, np.ndarray) and values.ndim == 2:
        reps = list(values)
    elif isinstance(values, np.ndarray) or (
        isinstance(values, Sequence) and len(values) > 0 and np.ndim(values[0]) == 0
    ):
        reps = [values]
    else:
        reps = list(values)
    out = []
    for r, v in enumerate(reps):
        a = np.asarray(v, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(
                f"{what}: replica {r} has shape {a.shape}, expected a 1-D series of samples"
            )
        out.append(a)
    if not out:
        raise ValueError(f"{what}: no replicas (expected at least one series of samples)")
    return out


def _check_finite(values: list[np.ndarray], what: str) -> None:
    for r, v in enumerate(values):
        bad = ~np.isfinite(v)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(
                f"{what}: replica {r} has {int(bad.sum())} non-finite value(s), first {v[i]} at "
                f"position {i}; expected finite numbers"
            )


def check_trajectories(trajs: np.ndarray | Sequence[np.ndarray] | None,
                       values: list[np.ndarray], what: str) -> list[np.ndarray]:
    """Trajectory numbers per replica as int64 arrays (default ``0, 1, ...``): one per replica,
    as long as its samples, integer and strictly increasing."""
    if trajs is None:
        return [np.arange(len(v), dtype=np.int64) for v in values]
    tl = _replica_list(trajs, f"{what} trajectories")
    if len(tl) != len(values):
        raise ValueError(
            f"{what}: {len(tl)} trajectory series for {len(values)} replicas (mismatched lengths)"
        )
    out = []
    for r, (t, v) in enumerate(zip(tl, values, strict=True)):
        if t.shape != v.shape:
            raise ValueError(
                f"{what}: replica {r} has {len(v)} samples but {t.size} trajectory numbers "
                f"(mismatched lengths)"
            )
        ti = np.asarray(np.rint(t), dtype=np.int64)
        if not np.array_equal(ti, t):
            raise ValueError(f"{what}: replica {r}: trajectory numbers must be integers")
        if ti.size > 1 and not np.all(np.diff(ti) > 0):
            k = int(np.argmax(np.diff(ti) <= 0))
            raise ValueError(
                f"{what}: replica {r}: trajectory numbers must increase strictly, got "
                f"{int(ti[k])} then {int(ti[k + 1])} at position {k + 1}"
            )
        out.append(ti)
    return out


def check_weights(weights: np.ndarray | Sequence[np.ndarray], what: str = "weights",
                  lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """Validated reweighting factors, one float64 array per replica: finite, non-negative, not
    all zero; with ``lengths`` the replica lengths must match."""
    wl = _replica_list(weights, what)
    if lengths is not None:
        if len(wl) != len(lengths):
            raise ValueError(
                f"{what}: {len(wl)} weight series for {len(lengths)} replicas (mismatched lengths)"
            )
        for r, (w, n) in enumerate(zip(wl, lengths, strict=True)):
            if w.size != n:
                raise ValueError(
                    f"{what}: replica {r} has {w.size} weights for {n} samples (mismatched "
                    f"lengths)"
                )
    allw = np.concatenate(wl)
    if allw.size == 0:
        raise ValueError(f"{what}: no weights")
    nan = np.isnan(allw)
    if nan.all():
        raise ValueError(f"{what}: all {allw.size} weights are NaN; expected finite weights")
    if nan.any():
        raise ValueError(
            f"{what}: {int(nan.sum())} of {allw.size} weights are NaN (first at position "
            f"{int(np.argmax(nan))}); expected finite weights"
        )
    if not np.isfinite(allw).all():
        raise ValueError(f"{what}: infinite weight(s); expected finite weights")
    if (allw < 0).any():
        raise ValueError(
            f"{what}: negative weight {allw[allw < 0][0]} (position {int(np.argmax(allw < 0))});"
            f" expected non-negative reweighting factors"
        )
    if not (allw > 0).any():
        raise ValueError(f"{what}: all {allw.size} weights are zero; nothing to average")
    return wl


def ess(weights: np.ndarray | Sequence[np.ndarray]) -> float:
    """Effective sample size per configuration, ``(sum w)^2 / (N sum w^2)`` in ``[1/N, 1]``:
    1 for equal weights, ``1/N`` when one weight carries everything (Kish)."""
    w = np.concatenate(check_weights(weights))
    with np.errstate(divide="ignore"):
        return reweighting.ess(np.log(w))


def _names(ensemble: str, replicas: Sequence[str] | None, n: int) -> list[str]:
    if not ensemble or "|" in ensemble:
        raise ValueError(f"ensemble: expected a non-empty name without '|', got {ensemble!r}")
    reps = [f"r{i}" for i in range(n)] if replicas is None else [str(r) for r in replicas]
    if len(reps) != n:
        raise ValueError(f"replicas: {len(reps)} names for {n} series (mismatched lengths)")
    if len(set(reps)) != n or any(not r or "|" in r for r in reps):
        raise ValueError(f"replicas: expected distinct non-empty names without '|', got {reps}")
    return [f"{ensemble}|{r}" for r in reps]


def _check_counts(values: list[np.ndarray], min_configs: int, what: str) -> None:
    total = sum(v.size for v in values)
    short = [(r, v.size) for r, v in enumerate(values) if v.size < MIN_REPLICA]
    if total < min_configs or short:
        per = ", ".join(str(v.size) for v in values)
        raise ValueError(
            f"{what}: too few configurations for the Gamma method: {total} in {len(values)} "
            f"replica(s) ({per}); need at least {min_configs} in total and {MIN_REPLICA} per "
            f"replica"
        )


# -- pyerrors glue --------------------------------------------------------------------------------
def make_obs(
    values: np.ndarray | Sequence[np.ndarray],
    trajs: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    ensemble: str = "ens",
    replicas: Sequence[str] | None = None,
    min_configs: int = MIN_CONFIGS,
    what: str = "values",
) -> Any:
    """``pyerrors.Obs`` of a series (one 1-D array) or of several replicas (a 2-D array, one row
    per chain, or a sequence of 1-D arrays), named ``"ensemble|replica"``, with ``idl`` = the
    trajectory numbers (default ``0, 1, 2, ...``; strictly increasing integers)."""
    vals = _replica_list(values, what)
    _check_finite(vals, what)
    _check_counts(vals, min_configs, what)
    tl = check_trajectories(trajs, vals, what)
    names = _names(ensemble, replicas, len(vals))
    pe = _pe()
    return pe.Obs(vals, names, idl=[_idl(t) for t in tl])


def _idl(t: np.ndarray) -> range | list[int]:
    if t.size > 1:
        d = np.diff(t)
        if np.all(d == d[0]):
            return range(int(t[0]), int(t[-1]) + int(d[0]), int(d[0]))
    return [int(x) for x in t]


def reweighted_obs(
    values: np.ndarray | Sequence[np.ndarray],
    weights: np.ndarray | Sequence[np.ndarray],
    trajs: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    ensemble: str = "ens",
    replicas: Sequence[str] | None = None,
    min_configs: int = MIN_CONFIGS,
    what: str = "values",
) -> Any:
    """Reweighted mean ``<O>_p = <w O>_q / <w>_q`` as a derived ``pyerrors.Obs`` (the ratio of
    the Obs of ``w O`` and of ``w``; the weights are first divided by their mean, which leaves the
    ratio unchanged), so its error includes the fluctuations and autocorrelations of both."""
    vals = _replica_list(values, what)
    wl = check_weights(weights, f"{what} weights", [v.size for v in vals])
    scale = float(np.concatenate(wl).mean())
    wl = [w / scale for w in wl]
    num = make_obs([w * v for w, v in zip(wl, vals, strict=True)], trajs, ensemble=ensemble,
                   replicas=replicas, min_configs=min_configs, what=what)
    den = make_obs(wl, trajs, ensemble=ensemble, replicas=replicas, min_configs=min_configs,
                   what=f"{what} weights")
    return num / den


@dataclass(frozen=True)
class GammaResult:
    """Mean with its Gamma-method error and integrated autocorrelation time.

    ``tau_int`` is in units of the spacing of the trajectory numbers (pyerrors' gap: the smallest
    difference between consecutive ``idl`` entries); ``tau_int = 0.5`` for uncorrelated data.
    ``ess`` is the per-configuration effective sample size of the weights (``None``
    unweighted)."""

    value: float
    error: float
    tau_int: float
    tau_int_error: float
    n: int
    ess: float | None
    obs: Any

    def as_dict(self) -> dict[str, Any]:
        return {"n": self.n, "mean": self.value, "error": self.error, "tau_int": self.tau_int,
                "tau_int_error": self.tau_int_error, "ess": self.ess}


def gamma(
    values: np.ndarray | Sequence[np.ndarray],
    trajs: np.ndarray | Sequence[np.ndarray] | None = None,
    weights: np.ndarray | Sequence[np.ndarray] | None = None,
    *,
    ensemble: str = "ens",
    replicas: Sequence[str] | None = None,
    S: float = 2.0,
    min_configs: int = MIN_CONFIGS,
    what: str = "values",
) -> GammaResult:
    """Mean, Gamma-method error and ``tau_int`` of a series (replicas as in :func:`make_obs`),
    reweighted when ``weights`` are given; ``S`` is Wolff's windowing parameter
    (hep-lat/0306017, sec. 3.3; pyerrors' default 2)."""
    if weights is None:
        o = make_obs(values, trajs, ensemble=ensemble, replicas=replicas,
                     min_configs=min_configs, what=what)
        e = None
    else:
        o = reweighted_obs(values, weights, trajs, ensemble=ensemble, replicas=replicas,
                           min_configs=min_configs, what=what)
        e = ess(weights)
    o.gamma_method(S=S)
    return GammaResult(
        value=float(o.value),
        error=float(o.dvalue),
        tau_int=float(o.e_tauint[ensemble]),
        tau_int_error=float(o.e_dtauint[ensemble]),
        n=int(o.N),
        ess=e,
        obs=o,
    )


# -- histograms -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Histogram:
    """A (weighted) density histogram with bootstrap errors.

    ``fraction[i]``: weighted fraction of all samples in bin ``i`` (sum 1 when the edges cover all
    samples); ``density = fraction / width``; ``error``: bootstrap standard deviation of
    ``density``; ``boot``: the bootstrap replicas of ``fraction``, ``[n_boot, n_bins]``;
    ``counts``: unweighted numbers of samples per bin; ``block``: the block length used;
    ``variance_scale``: factor applied to the bootstrap variances in ``error`` and
    :attr:`covariance` (1 unless a calibration was asked for)."""

    edges: np.ndarray
    fraction: np.ndarray
    density: np.ndarray
    error: np.ndarray
    boot: np.ndarray
    counts: np.ndarray
    block: int
    variance_scale: float = 1.0

    @property
    def widths(self) -> np.ndarray:
        return np.diff(self.edges)

    @property
    def fraction_error(self) -> np.ndarray:
        return self.error * self.widths

    @property
    def covariance(self) -> np.ndarray:
        """Bootstrap covariance of ``fraction`` (times ``variance_scale``), ``[n_bins, n_bins]``."""
        return self.variance_scale * np.atleast_2d(np.cov(self.boot, rowvar=False))


def _rng(seed: int | np.random.Generator | np.random.SeedSequence | None) -> np.random.Generator:
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("seed: expected an explicit integer seed or numpy Generator, got None")
    return np.random.default_rng(seed)


def bootstrap_histogram(
    values: np.ndarray | Sequence[np.ndarray],
    edges: np.ndarray | Sequence[float],
    *,
    weights: np.ndarray | Sequence[np.ndarray] | None = None,
    n_boot: int = 1000,
    seed: int | np.random.Generator | np.random.SeedSequence = 0,
    block: int = 1,
    variance_scale: float = 1.0,
    what: str = "values",
) -> Histogram:
    """Density histogram of ``values`` (replicas as in :func:`make_obs`) on ``edges`` with
    bootstrap errors: blocks of ``block`` consecutive configurations (never straddling two
    replicas) are drawn with replacement, ``n_boot`` times, from a numpy Generator seeded with
    ``seed``; weighted histograms resample configurations together with their weights.  Bins are
    half-open ``[e_i, e_{i+1})`` except the last, which includes its right edge; samples outside
    the edges count in the normalisation only.  ``variance_scale`` multiplies the bootstrap
    variances (see :func:`blocked_variance` for a calibration against the Gamma method)."""
    vals = _replica_list(values, what)
    _check_finite(vals, what)
    if weights is None:
        wl = [np.ones_like(v) for v in vals]
    else:
        wl = check_weights(weights, f"{what} weights", [v.size for v in vals])
    e = np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or not np.all(np.diff(e) > 0) or not np.isfinite(e).all():
        raise ValueError(f"edges: expected at least two finite increasing bin edges, got {e}")
    n_boot, block = int(n_boot), int(block)
    if n_boot < 2:
        raise ValueError(f"n_boot: expected at least 2 bootstrap resamples, got {n_boot}")
    if block < 1:
        raise ValueError(f"block: expected a block length >= 1, got {block}")
    if not (math.isfinite(variance_scale) and variance_scale > 0):
        raise ValueError(f"variance_scale: expected a positive number, got {variance_scale}")
    nb = e.size - 1
    x = np.concatenate(vals)
    w = np.concatenate(wl)
    if x.size == 0:
        raise ValueError(f"{what}: no samples")
    b = np.searchsorted(e, x, side="right") - 1
    b[x == e[-1]] = nb - 1
    inside = (b >= 0) & (b < nb)
    # block index of every sample: blocks restart in each replica
    offs, blk = 0, []
    for v in vals:
        blk.append(offs + np.arange(v.size) // block)
        offs += -(-v.size // block)
    bi = np.concatenate(blk)
    nblocks = offs
    s = np.zeros((nblocks, nb))
    np.add.at(s, (bi[inside], b[inside]), w[inside])
    wsum = np.bincount(bi, weights=w, minlength=nblocks)
    total = float(w.sum())
    fraction = s.sum(0) / total
    counts = np.bincount(b[inside], minlength=nb).astype(np.int64)
    rng = _rng(seed)
    boot = np.empty((n_boot, nb))
    chunk = max(1, min(n_boot, 4_000_000 // max(1, nblocks)))
    p = np.full(nblocks, 1.0 / nblocks)
    for i in range(0, n_boot, chunk):
        k = rng.multinomial(nblocks, p, size=min(chunk, n_boot - i)).astype(np.float64)
        tot = k @ wsum
        with np.errstate(invalid="ignore", divide="ignore"):
            boot[i:i + k.shape[0]] = (k @ s) / tot[:, None]
    good = np.isfinite(boot).all(1)
    if good.sum() < 2:
        raise ValueError(
            f"{what}: the weights vanish in almost every bootstrap resample; ESS too small for a "
            f"histogram"
        )
    boot = boot[good]
    width = np.diff(e)
    return Histogram(
        edges=e,
        fraction=fraction,
        density=fraction / width,
        error=math.sqrt(variance_scale) * boot.std(0, ddof=1) / width,
        boot=boot,
        counts=counts,
        block=block,
        variance_scale=float(variance_scale),
    )


def blocked_variance(
    values: np.ndarray | Sequence[np.ndarray],
    block: int,
    *,
    weights: np.ndarray | Sequence[np.ndarray] | None = None,
) -> float:
    """Variance of the (weighted) mean estimated from non-overlapping blocks of ``block``
    configurations (blocks restart in each replica, as in :func:`bootstrap_histogram`):
    ``B/(B-1) sum_b ((S_b - m W_b) / W)^2`` with ``S_b = sum_b w O``, ``W_b = sum_b w``; this is
    the variance the block bootstrap gives the mean, to compare with the Gamma method's."""
    vals = _replica_list(values, "values")
    wl = [np.ones_like(v) for v in vals] if weights is None else check_weights(
        weights, "weights", [v.size for v in vals])
    s_b, w_b = [], []
    for v, w in zip(vals, wl, strict=True):
        idx = np.arange(v.size) // int(block)
        s_b.append(np.bincount(idx, weights=w * v))
        w_b.append(np.bincount(idx, weights=w))
    s, w = np.concatenate(s_b), np.concatenate(w_b)
    if s.size < 2:
        raise ValueError(f"block: {block} leaves {s.size} block(s); need at least 2")
    tot = w.sum()
    m = s.sum() / tot
    return float(s.size / (s.size - 1) * np.sum(((s - m * w) / tot) ** 2))


def block_length(tau_int: float, factor: float = 4.0) -> int:
    """Bootstrap block length ``1 + ceil(factor * (tau_int - 1/2))`` configurations: 1 for
    uncorrelated data (``tau_int = 1/2``), about ``factor * tau_int`` for long autocorrelations."""
    if not (math.isfinite(tau_int) and tau_int > 0):
        raise ValueError(f"tau_int: expected a positive finite number, got {tau_int}")
    return 1 + max(0, math.ceil(factor * (tau_int - 0.5) - 1e-9))


def histogram_edges(
    sets: Sequence[np.ndarray | Sequence[np.ndarray]],
    bins: int,
    *,
    weights: Sequence[np.ndarray | Sequence[np.ndarray] | None] | None = None,
    min_count: float = 20,
    integer: bool | None = None,
) -> np.ndarray:
    """Common bin edges for several sets of samples (each one array or a sequence of replica
    arrays, e.g. ensembles A and B): ``bins`` equal bins over the pooled range (for
    integer-valued data, e.g. a topological charge, bins centred on the integers), then
    neighbouring bins merged from left to right until every set has an effective count of at
    least ``min_count`` in each bin (Kish's ``(sum w)^2 / sum w^2``; the number of samples when
    unweighted); a remainder joins the last bin.  So every bin's bootstrap error of every set rests
    on enough samples for the Gaussian approximation of the tests.  All samples lie inside the
    edges."""
    if int(bins) < 1:
        raise ValueError(f"bins: expected at least one bin, got {bins}")
    xs = [np.concatenate([np.asarray(r, dtype=np.float64).ravel()
                          for r in _replica_list(s_, "samples")]) for s_ in sets]
    if weights is None:
        weights = [None] * len(xs)
    if len(weights) != len(xs):
        raise ValueError(f"weights: {len(weights)} weight sets for {len(xs)} sample sets")
    ws = [np.ones_like(x) if w is None else np.concatenate(
        check_weights(w, "weights", None)) for x, w in zip(xs, weights, strict=True)]
    for x, w in zip(xs, ws, strict=True):
        if w.size != x.size:
            raise ValueError(f"weights: {w.size} weights for {x.size} samples (mismatched lengths)")
    x = np.concatenate(xs) if xs else np.zeros(0)
    if x.size == 0:
        raise ValueError("samples: no samples to bin")
    if not np.isfinite(x).all():
        raise ValueError("samples: non-finite values; expected finite numbers")
    lo, hi = float(x.min()), float(x.max())
    if integer is None:
        integer = bool(np.all(np.abs(x - np.rint(x)) < 1e-6))
    if integer:
        lo_i, hi_i = round(lo), round(hi)
        step = max(1, math.ceil((hi_i - lo_i + 1) / int(bins)))
        edges = np.arange(lo_i - 0.5, hi_i + 0.5 + step, step, dtype=np.float64)
        edges = edges[: np.searchsorted(edges, hi_i + 0.5, side="left") + 1]
    elif hi > lo:
        edges = np.linspace(lo, hi, int(bins) + 1)
    else:
        edges = np.array([lo - 0.5, lo + 0.5])
    sw = np.array([np.histogram(x_, edges, weights=w_)[0] for x_, w_ in zip(xs, ws, strict=True)])
    sw2 = np.array([np.histogram(x_, edges, weights=w_**2)[0]
                    for x_, w_ in zip(xs, ws, strict=True)])
    keep = [0]
    acc, acc2 = np.zeros(len(xs)), np.zeros(len(xs))
    for i in range(edges.size - 1):
        acc += sw[:, i]
        acc2 += sw2[:, i]
        with np.errstate(invalid="ignore", divide="ignore"):
            eff = np.where(acc2 > 0, acc**2 / acc2, 0.0)
        if np.all(eff >= min_count - 1e-9):
            keep.append(i + 1)
            acc[:], acc2[:] = 0.0, 0.0
    if keep[-1] != edges.size - 1:
        if len(keep) > 1:
            keep[-1] = edges.size - 1
        else:
            keep.append(edges.size - 1)
    # A weighted remainder can lower the last bin's effective count (Kish's count of a union is
    # not the sum): merge it further left until it holds again.
    while len(keep) > 2 and not _enough(sw, sw2, keep[-2], keep[-1], min_count):
        del keep[-2]
    return edges[keep]


def _enough(sw: np.ndarray, sw2: np.ndarray, i: int, j: int, min_count: float) -> bool:
    """Whether every set has an effective count of at least ``min_count`` in bins ``i..j-1``."""
    acc, acc2 = sw[:, i:j].sum(1), sw2[:, i:j].sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        eff = np.where(acc2 > 0, acc**2 / acc2, 0.0)
    return bool(np.all(eff >= min_count - 1e-9))


# -- series --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Series:
    """One observable on one ensemble: per replica the samples, trajectory numbers and (when the
    ensemble carries them) weights; ``sources`` are the files."""

    observable: str
    replicas: tuple[str, ...]
    values: tuple[np.ndarray, ...]
    trajs: tuple[np.ndarray, ...]
    weights: tuple[np.ndarray, ...] | None
    sources: tuple[str, ...]

    @property
    def n(self) -> int:
        return int(sum(v.size for v in self.values))

    def gamma(self, ensemble: str = "ens", *, S: float = 2.0,
              min_configs: int = MIN_CONFIGS) -> GammaResult:
        """:func:`gamma` of this series (reweighted when it carries weights)."""
        return gamma(list(self.values), list(self.trajs),
                     None if self.weights is None else list(self.weights), ensemble=ensemble,
                     replicas=self.replicas, S=S, min_configs=min_configs,
                     what=f"observable {self.observable!r} of {', '.join(self.sources)}")
