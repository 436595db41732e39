"""The validation report: ``report.md``, ``summary.json``, density histograms of A and B with a
ratio panel (arXiv:2208.03832, Fig. 2) and the squared bin residuals against chi^2(1) (Fig. 3),
drawn with matplotlib's Agg canvas.  The statistics: :mod:`bridge.analysis.compare`; the
summary's keys: docs/validation.md."""

from __future__ import annotations

import json
import math
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from .compare import ObservableComparison, ValidationResult, describe_lattice
from .format import value_error

__all__ = ["dumps", "plot_histogram", "plot_residuals", "write_report"]


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
                     f"{describe_lattice(m)} | {'yes' if m.get('weighted') else 'no'} | {ess} |")
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
            f"| {c.name} | {c.a.n} | {value_error(c.a.value, c.a.error)} | "
            f"{value_error(c.a.tau_int, c.a.tau_int_error)} | {c.b.n} | "
            f"{value_error(c.b.value, c.b.error)} | "
            f"{value_error(c.b.tau_int, c.b.tau_int_error)} | "
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
