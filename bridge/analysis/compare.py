"""Compare one ensemble with another, observable by observable (as in arXiv:2208.03832, Figs. 2
and 3): Gamma-method means, bootstrap histograms on common bins, bin residuals and a verdict.
Pure statistics on :class:`~bridge.analysis.stats.Series` (reading them from files:
:mod:`bridge.jobs.validate`; the report: :mod:`bridge.analysis.report`).

* Means: Gamma-method errors through pyerrors (Wolff, hep-lat/0306017), reweighted as
  ``<w O>/<w>`` when an ensemble carries weights.  Two-sided test of equal means
  ``z = (m_A - m_B) / sqrt(dm_A^2 + dm_B^2)``, ``p_mean = erfc(|z|/sqrt 2)``.
* Histograms: common bins merged until A and B each have ``min_count`` effective samples per bin;
  bin fractions with block-bootstrap covariances (blocks of ``1 + ceil(4 (tau_int - 1/2))``
  configurations), the variances scaled by ``max(1, dm_Gamma^2 / dm_block^2)``.
  ``chi2 = d^T (C_A + C_B)^+ d`` over all bins but the last -> ``p_hist``.
* Per observable ``p = min(1, 2 min(p_mean, p_hist))``; it disagrees if ``p < alpha / K`` for
  ``K`` observables (Bonferroni).  The squared bin residuals are compared with chi^2(1) by a
  Kolmogorov-Smirnov test (informational).

Assumptions and derivations: docs/validation.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from .stats import (
    GammaResult,
    Histogram,
    Series,
    block_length,
    blocked_variance,
    bootstrap_histogram,
    histogram_edges,
)

__all__ = [
    "SUMMARY_KEYS",
    "SUMMARY_FORMAT",
    "SUMMARY_VERSION",
    "CompareSettings",
    "ObservableComparison",
    "ValidationResult",
    "describe_lattice",
    "check_lattices",
    "compare_series",
    "compare_ensembles",
]

SUMMARY_KEYS = ("format", "version", "passed", "failed", "alpha", "threshold", "settings", "a",
                "b", "observables", "residuals", "figures")
"""Top-level keys of ``summary.json`` (documented in docs/validation.md)."""

SUMMARY_FORMAT = "qcd-bridge-validation"
SUMMARY_VERSION = 1

BLOCK_RULE = "1 + ceil(4 (tau_int - 1/2))"
VARIANCE_SCALE_RULE = "max(1, Gamma variance / blocked variance of the mean)"
TEST_RULE = "p = min(1, 2 min(p_mean, p_hist)); fail if p < alpha / K"


@dataclass(frozen=True)
class CompareSettings:
    """Settings of a comparison: ``bins`` requested (before merging), ``n_boot`` bootstrap
    resamples, significance ``alpha`` of the whole comparison, bootstrap ``seed``, ``min_count``
    effective samples per bin, Wolff's windowing parameter ``S``."""

    bins: int = 30
    n_boot: int = 1000
    alpha: float = 0.01
    seed: int = 1
    min_count: int = 20
    S: float = 2.0

    def __post_init__(self) -> None:
        if not (0.0 < float(self.alpha) < 1.0):
            raise ValueError(f"alpha: expected a significance level in (0, 1), got {self.alpha}")
        if int(self.bins) < 1:
            raise ValueError(f"bins: expected at least one bin, got {self.bins}")
        if int(self.min_count) < 1:
            raise ValueError(f"min_count: expected at least 1, got {self.min_count}")
        if int(self.n_boot) < 2:
            raise ValueError(f"bootstrap: expected at least 2 resamples, got {self.n_boot}")

    def summary(self, names: Sequence[str]) -> dict[str, Any]:
        """The ``settings`` entry of ``summary.json``."""
        return {"observables": list(names), "bins": int(self.bins),
                "bootstrap": int(self.n_boot), "seed": int(self.seed),
                "min_count": int(self.min_count), "S": float(self.S), "block_rule": BLOCK_RULE,
                "variance_scale_rule": VARIANCE_SCALE_RULE, "test": TEST_RULE}


@dataclass(frozen=True)
class ObservableComparison:
    """The comparison of one observable: Gamma-method results, bootstrap histograms on common
    edges, residuals per bin and the p-values (see the module docstring)."""

    name: str
    a: GammaResult
    b: GammaResult
    hist_a: Histogram
    hist_b: Histogram
    residuals: np.ndarray
    z: float
    p_mean: float
    chi2: float | None
    dof: int
    p_hist: float | None
    p_value: float
    passed: bool

    def as_dict(self) -> dict[str, Any]:
        def hist(h: Histogram) -> dict[str, Any]:
            return {"density": h.density, "error": h.error, "counts": h.counts, "block": h.block,
                    "variance_scale": h.variance_scale}

        return {
            "name": self.name, "a": self.a.as_dict(), "b": self.b.as_dict(), "z": self.z,
            "p_mean": self.p_mean, "chi2": self.chi2, "dof": self.dof, "p_hist": self.p_hist,
            "p_value": self.p_value, "passed": self.passed, "edges": self.hist_a.edges,
            "hist_a": hist(self.hist_a), "hist_b": hist(self.hist_b),
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


def describe_lattice(meta: dict[str, Any]) -> str:
    """``"nrow 8 8, group U1"`` from an ensemble's metadata (what is recorded of it)."""
    parts = []
    if "nrow" in meta:
        parts.append("nrow " + " ".join(map(str, meta["nrow"])))
    if "group" in meta:
        parts.append(f"group {meta['group']}")
    return ", ".join(parts) or "no lattice recorded"


def check_lattices(a: dict[str, Any], b: dict[str, Any]) -> None:
    """A ``ValueError`` naming both ensembles' files and lattices when their recorded ``nrow`` or
    ``group`` differ."""
    for key in ("nrow", "group"):
        if key in a and key in b and str(a[key]) != str(b[key]):
            raise ValueError(
                f"mismatched lattices: A ({', '.join(a['files'])}) has {describe_lattice(a)}; "
                f"B ({', '.join(b['files'])}) has {describe_lattice(b)}; an ensemble can only be "
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


def _histogram(ser: Series, g: GammaResult, edges: np.ndarray, seed: np.random.SeedSequence,
               label: str, n_boot: int, block_factor: float, calibrate: bool) -> Histogram:
    """Block-bootstrap histogram of one series, its variances calibrated to the Gamma method."""
    block = block_length(g.tau_int, block_factor)
    weights = None if ser.weights is None else list(ser.weights)
    scale = 1.0
    if calibrate:
        bv = blocked_variance(list(ser.values), block, weights=weights)
        scale = max(1.0, g.error**2 / bv) if bv > 0 else 1.0
    return bootstrap_histogram(
        list(ser.values), edges, weights=weights, n_boot=n_boot,
        seed=np.random.default_rng(seed), block=block, variance_scale=scale,
        what=f"{label} {ser.observable!r}")


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
    """Compare two series of the same observable (module docstring): Gamma-method means
    (pyerrors ensembles ``"A"`` and ``"B"``), bootstrap histograms on common edges, the means
    test, the histogram chi^2 test and the per-bin residuals; the observable passes when its
    p-value is at least ``threshold``."""
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
    ha = _histogram(sa, ga, edges, ss.spawn(1)[0], "A", n_boot, block_factor, calibrate)
    hb = _histogram(sb, gb, edges, ss.spawn(1)[0], "B", n_boot, block_factor, calibrate)
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


def compare_ensembles(
    names: Sequence[str],
    load: Callable[[str], tuple[Series, Series]],
    settings: CompareSettings,
    *,
    a_meta: dict[str, Any],
    b_meta: dict[str, Any],
    progress: Callable[[str], None] | None = None,
) -> ValidationResult:
    """Compare ensembles A and B on ``names`` (``load(name)`` gives both series), each observable
    at the Bonferroni threshold ``alpha / K``, with independent bootstrap seeds per observable
    spawned from ``settings.seed``; the KS test of all squared residuals against chi^2(1).
    ``a_meta``/``b_meta`` get ``weighted`` and ``ess``."""
    from scipy import stats

    k = len(names)
    threshold = float(settings.alpha) / k
    children = np.random.SeedSequence(int(settings.seed)).spawn(k)
    opts = {key: v for key, v in asdict(settings).items() if key not in ("alpha", "seed")}
    comps = []
    for i, name in enumerate(names):
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: reading")
        sa, sb = load(name)
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: Gamma method and {settings.n_boot} bootstrap "
                     f"resamples (A: {sa.n}, B: {sb.n} configurations)")
        c = compare_series(sa, sb, **opts, seed=children[i], threshold=threshold)
        comps.append(c)
        if progress is not None:
            progress(f"[{i + 1}/{k}] {name}: p = {c.p_value:.3g} "
                     f"({'ok' if c.passed else 'DISAGREES'})")
    for meta, comp in ((a_meta, "a"), (b_meta, "b")):
        ess_vals = [getattr(c, comp).ess for c in comps]
        meta["weighted"] = ess_vals[0] is not None
        meta["ess"] = ess_vals[0]
    r = np.concatenate([c.residuals for c in comps]) if comps else np.zeros(0)
    ks_stat = ks_p = None
    if r.size:
        ks = stats.kstest(np.square(r), "chi2", args=(1,))
        ks_stat, ks_p = float(ks.statistic), float(ks.pvalue)
    return ValidationResult(observables=comps, alpha=float(settings.alpha), threshold=threshold,
                            ks_statistic=ks_stat, ks_pvalue=ks_p,
                            settings=settings.summary(names), a_meta=a_meta, b_meta=b_meta)
