"""The figures of ``qcd-bridge scaling`` (:mod:`bridge.jobs.scaling`), drawn like those of
arXiv:2211.07541 (Figs. 3-6 there): quantities against the volume on logarithmic axes, one colour
per coupling, the fitted power laws ``a V^z`` as dashed lines labelled with ``z``, and lower
bounds (unreached targets, unresolved tau_int) as open markers with upward arrows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_scaling", "plot_spacing", "plot_chains"]

_FLOOR = 0.1  # seconds: where a training time of 0 (target met by the transfer) is drawn


def _series(points: list[dict[str, Any]], beta: float, part: str, key: str
            ) -> tuple[list[float], list[float | None], list[bool]]:
    pts = sorted((p for p in points if p["beta"] == beta), key=lambda p: p["volume"])
    return ([p["volume"] for p in pts], [(p.get(part) or {}).get(key) for p in pts],
            [bool((p.get(part) or {}).get("is_lower_bound")) for p in pts])


def _draw(ax: Any, v: list[float], y: list[float | None], lower: list[bool], *, color: Any,
          marker: str, label: str, floor: float | None = None, ls: str = "-") -> None:
    """Points joined by a line; lower bounds open with an arrow up; ``floor`` replaces 0."""
    pts = [(a, (floor if (b == 0 and floor) else b), lb) for a, b, lb in zip(v, y, lower,
                                                                              strict=True)
           if b is not None and (b > 0 or floor)]
    if not pts:
        return
    ax.plot([p[0] for p in pts], [p[1] for p in pts], ls=ls, color=color, lw=1, alpha=0.6)
    for i, (a, b, lb) in enumerate(pts):
        ax.plot([a], [b], marker=marker, color=color, ms=6, ls="none",
                mfc="none" if lb else color, label=label if i == 0 else None)
        if lb:
            ax.annotate("", xy=(a, b * 2.2), xytext=(a, b),
                        arrowprops={"arrowstyle": "->", "color": color, "lw": 1})
            ax.plot([a], [b * 2.6], alpha=0)  # keeps the arrow inside the axes


def _fit_line(ax: Any, v: list[float], f: dict[str, Any] | None, color: Any, name: str) -> None:
    if not f:
        return
    xs = [min(v) / 1.3, max(v) * 1.3]
    err = "" if f.get("z_error") is None else f"({f['z_error']:.2f})"
    ax.plot(xs, [f["a"] * x ** f["z"] for x in xs], ls="--", color=color, lw=1,
            label=f"{name}: z = {f['z']:.2f}{err}" + (" (bounds)" if f.get(
                "includes_lower_bounds") else ""))


def _style(ax: Any, ylabel: str, title: str, xlabel: str = "V = L^2",
           ticks: list[float] | None = None) -> None:
    """Log x axis labelled at ``ticks`` only (the measured values; the minor labels of a
    narrow logarithmic range overlap), grid, legend."""
    from matplotlib.ticker import NullFormatter

    ax.set_xscale("log")
    if ticks:
        ax.set_xticks(sorted(set(ticks)), [f"{t:g}" for t in sorted(set(ticks))])
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6.5)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def plot_scaling(result: dict[str, Any], out: Path) -> list[Path]:
    """Write ``scaling_ess.png``, ``scaling_training.png`` and ``scaling_cost.png`` into
    ``out``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, fits = result["points"], result["fits"]
    betas = sorted({p["beta"] for p in points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fam = result["settings"]["family"]
    nd = int(result.get("nd", 2))
    src = "x".join([str(result["settings"]["train_L"])] * nd)
    xl = f"V = L^{nd}"
    vt = [float(p["volume"]) for p in points]
    chains = any("hybrid" in p for p in points)
    paths = []

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8, 3.4))
    for i, beta in enumerate(betas):
        c = colors[i % len(colors)]
        # few effective samples make the ESS an upper bound, drawn as measured here; the -log
        # ESS on the right and the costs are drawn as lower bounds
        v, e, lb = _series(points, beta, "transfer", "ess")
        _draw(a1, v, e, [False] * len(v), color=c, marker="o", label=f"ESS, beta {beta:g}")
        v, a, _ = _series(points, beta, "transfer", "acceptance")
        _draw(a1, v, a, [False] * len(v), color=c, marker="s",
              label=f"acceptance, beta {beta:g}", ls=":")
        for part, mk in (("hybrid", "D"),) if chains else ():
            v, a, _ = _series(points, beta, part, "acceptance")
            _draw(a1, v, [x.get("flow") for x in a], [False] * len(v), color=c, marker=mk,
                  label=f"hybrid chain flow acc., beta {beta:g}", ls="--")
        v, m, lb = _series(points, beta, "transfer", "minus_log_ess")
        _draw(a2, v, m, lb, color=c, marker="o", label=f"beta {beta:g}")
        _fit_line(a2, v, fits[f"{beta:g}"].get("minus_log_ess"), c, "fit")
    a1.set_ylim(0, 1.05)
    _style(a1, "ESS / IMH acceptance", f"{fam} flow trained on {src}, used on L^{nd}", xl,
           vt)
    a2.set_yscale("log")
    _style(a2, "-log ESS", "local model: -log ESS ~ V", xl, vt)
    paths.append(_save(fig, out / "scaling_ess.png"))

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for i, beta in enumerate(betas):
        for j, (part, mk, name) in enumerate((("train_scratch", "o", "from scratch"),
                                              ("train_transfer", "s", f"from the {src} model"))):
            c = colors[(2 * i + j) % len(colors)]
            v, y, lb = _series(points, beta, part, "seconds")
            _draw(ax, v, y, lb, color=c, marker=mk, label=f"{name}, beta {beta:g}",
                  floor=_FLOOR, ls="-" if part == "train_scratch" else ":")
    ax.set_yscale("log")
    _style(ax, f"training seconds to ESS {result['settings']['target_ess']:g} "
               f"(0 drawn at {_FLOOR})", "training cost to the target ESS", xl, vt)
    paths.append(_save(fig, out / "scaling_training.png"))

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for i, beta in enumerate(betas):
        per = fits[f"{beta:g}"]
        for j, (part, key, mk, ls, name) in enumerate((
                ("hmc", "cost_per_independent_q", "o", "-", "HMC, per indep. Q"),
                ("hybrid", "cost_per_independent_q", "s", "-", "hybrid, per indep. Q"),
                ("transfer", "cost_per_effective_sample", "^", ":", "flow, per eff. sample"))):
            if part != "transfer" and not chains:
                continue
            c = colors[(3 * i + j) % len(colors)]
            v, y, lb = _series(points, beta, part, key)
            _draw(ax, v, y, lb, color=c, marker=mk, label=f"{name}, beta {beta:g}", ls=ls)
            fit = {"hybrid": "hybrid_cost_per_independent_q",
                   "transfer": "cost_per_effective_sample"}.get(part)
            if fit:
                _fit_line(ax, v, per.get(fit), c, "fit")
    ax.set_yscale("log")
    _style(ax, "seconds (one CPU thread)", "cost per independent sample (open: lower bound)", xl,
           vt)
    paths.append(_save(fig, out / "scaling_cost.png"))
    if "spacing_fits" in result:
        paths.append(plot_spacing(points, result["spacing_fits"], out / "scaling_spacing.png"))
    if nd != 2 and chains:
        paths.append(plot_chains(result, out / "scaling_chains.png"))
    return paths


_CHAIN_SERIES = (("hybrid", "plaquette", "s", "-"), ("hybrid", "q", "D", ":"),
                 ("hmc", "plaquette", "o", "-"), ("hmc", "q", "^", ":"))


def plot_chains(result: dict[str, Any], path: Path) -> Path:
    """The chains of a 4D study against V: ``tau_int`` of the plaquette and of the flowed Q
    for the hybrid (cycles) and HMC (trajectories) on the left, the CPU seconds per
    independent plaquette and Q on the right with the fitted ``a V^z``; one colour per
    (coupling, chain), open markers for unresolved tau_int (lower bounds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, fits = [p for p in result["points"] if "hybrid" in p], result["fits"]
    betas = sorted({p["beta"] for p in points})
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    nd = int(result.get("nd", 4))
    vt = [float(p["volume"]) for p in points]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2))
    for i, beta in enumerate(betas):
        for j, (part, what, mk, ls) in enumerate(_CHAIN_SERIES):
            c = colors[(2 * i + j // 2) % len(colors)]
            name = f"{'HMC' if part == 'hmc' else 'hybrid'} {'P' if what == 'plaquette' else 'Q'}"
            pts = sorted((p for p in points if p["beta"] == beta), key=lambda p: p["volume"])
            v = [p["volume"] for p in pts]
            lb = [not p[part][what]["resolved"] for p in pts]
            _draw(a1, v, [p[part][what]["tau_int"] for p in pts], lb, color=c, marker=mk,
                  label=f"{name}, beta {beta:g}", ls=ls)
            _draw(a2, v, [p[part][f"cost_per_independent_{what}"] for p in pts], lb, color=c,
                  marker=mk, label=f"{name}, beta {beta:g}", ls=ls)
            f = fits[f"{beta:g}"].get(f"{part}_cost_per_independent_{what}")
            if f:
                _fit_line(a2, v, f, c, f"{name} fit")
    _style(a1, "tau_int (hybrid: cycles, HMC: trajectories)",
           f"tau_int of the plaquette P and of Q (Wilson flow t = "
           f"{result['settings'].get('q_flow_time', 0.5):g})", f"V = L^{nd}", vt)
    a2.set_yscale("log")
    _style(a2, "CPU seconds per independent sample", "cost per independent P and Q "
           "(open: lower bound)", f"V = L^{nd}", vt)
    a1.legend(fontsize=6, ncol=2)
    a2.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.02, 0.5))
    return _save(fig, path)


_COSTS = (("hmc", "cost_per_independent_q", "o", "-", "HMC/Q", "hmc_cost_per_independent_q"),
          ("hybrid", "cost_per_independent_q", "s", "-", "hybrid/Q",
           "hybrid_cost_per_independent_q"),
          ("transfer", "cost_per_effective_sample", "^", ":", "flow/eff.",
           "cost_per_effective_sample"))


def _z(f: dict[str, Any] | None) -> str:
    if not f:
        return ""
    err = "" if f.get("z_error") is None else f"({f['z_error']:.2f})"
    return f": z = {f['z']:.2f}{err}" + (" bounds" if f.get("includes_lower_bounds") else "")


def plot_spacing(points: list[dict[str, Any]], sf: dict[str, Any], path: Path,
                 min_points: int = 3) -> Path:
    """Costs against ``xi_t`` (1/a in units of sqrt(chi_t), :mod:`.scaling_spacing`) at fixed
    L (left; the lines of ``min_points`` or more couplings) and at fixed physical volume
    ``V chi_t`` (right), with the fitted ``xi_t^z``: one colour per line, one marker per cost
    (HMC and hybrid per independent Q, the flow per effective sample)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .scaling_spacing import xi_t

    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6), sharey=True)
    lines = [(axes[0], f"L={k}", fs, lambda p, k=k: p["L"] == int(k))
             for k, fs in sf["fixed_L"].items() if len(fs["betas"]) >= min_points]
    for k, fs in sf["fixed_physical_volume"].items():
        members = {(int(a), float(b)) for a, b in fs["points"]}
        lines.append((axes[1], f"V chi_t={k}", fs,
                      lambda p, m=members: (int(p["L"]), float(p["beta"])) in m))
    n = {id(axes[0]): 0, id(axes[1]): 0}
    for ax, name, fs, member in lines:
        pts = sorted((p for p in points if member(p)), key=lambda p: p["beta"])
        c = colors[n[id(ax)] % len(colors)]
        n[id(ax)] += 1
        x = [xi_t(p["beta"]) for p in pts]
        for part, key, mk, ls, what, fitname in _COSTS:
            if not any(part in p for p in pts):
                continue
            _draw(ax, x, [p[part].get(key) for p in pts],
                  [bool(p[part].get("is_lower_bound")) for p in pts], color=c, marker=mk,
                  label=f"{name} {what}{_z(fs.get(fitname))}", ls=ls)
            f = fs.get(fitname)
            if f:
                xs = [min(x) / 1.15, max(x) * 1.15]
                ax.plot(xs, [f["a"] * v ** f["z"] for v in xs], ls="--", color=c, lw=0.8)
    for ax, title in ((axes[0], "fixed L x L, beta varies"),
                      (axes[1], "fixed physical volume V chi_t (L ~ xi_t)")):
        ax.set_yscale("log")
        lo, hi = ax.get_xlim()
        _style(ax, "seconds (one CPU thread)", f"{title}; open: lower bound, dashed: fit",
               "xi_t = (chi_t a^2)^(-1/2)  (1/a in units of sqrt(chi_t))",
               [t for t in (4, 6, 8, 12, 16, 24, 32, 48, 64) if lo <= t <= hi])
    return _save(fig, path)
