"""Costs of the 2D U(1) scaling study against the inverse lattice spacing, in the manner of
arXiv:2211.07541 (cost against the correlation length / towards the continuum, at fixed lattice
size and at fixed physical volume).

Scale.  2D U(1) sets its scale exactly: the infinite-volume topological susceptibility
``chi_t a^2`` (:func:`bridge.exact.u1_2d_topological_susceptibility_infinite`) is a physical
quantity in lattice units, so

    xi_t(beta) = (chi_t a^2)^(-1/2),      a(beta) / a(beta') = xi_t(beta') / xi_t(beta),

``xi_t`` being ``1/a`` in units of ``sqrt(chi_t)`` (a correlation length in lattice units; about
``2 pi sqrt(beta)`` at weak coupling).  The physical volume of an ``L x L`` lattice is
``V chi_t = (L / xi_t)^2``, the infinite-volume ``<Q^2>`` of that box.

Fits.  ``cost = c xi_t^z`` (:func:`bridge.jobs.scaling.fit_power_law`) for every cost of
:data:`bridge.jobs.scaling.FIT_KEYS`

* at fixed ``L`` (every ``L`` measured at two or more couplings): the cost of finer spacing in a
  shrinking box;
* at fixed physical volume (points whose ``V chi_t`` agree within ``tol``, at two or more
  ``L``): the continuum limit proper, where ``V`` grows like ``xi_t^2`` too.
  :func:`beta_at_physical_volume` gives the coupling of ``L`` on such a line of constant
  physics (``qcd-bridge scaling --physical-volume``).

A fit over values that include lower bounds (HMC's unresolved tau_int(Q)) says so, and is
repeated over the measured values alone (``NAME_resolved``) where two or more remain.
"""

from __future__ import annotations

import math
from typing import Any

from ..errors import ConfigError

__all__ = ["xi_t", "physical_volume", "beta_at_physical_volume", "spacing_fits",
           "merge_points", "spacing_lines", "points_of", "spacing_study"]


def xi_t(beta: float) -> float:
    """``1/a`` in units of ``sqrt(chi_t)``: ``(chi_t a^2)^(-1/2)`` in infinite volume."""
    from ..exact import u1_2d_topological_susceptibility_infinite

    return u1_2d_topological_susceptibility_infinite(float(beta)) ** -0.5


def physical_volume(L: int, beta: float) -> float:
    """``V chi_t = (L / xi_t)^2`` of an ``L x L`` lattice at ``beta``."""
    return (int(L) / xi_t(beta)) ** 2


def beta_at_physical_volume(L: int, volume_chi: float, *, lo: float = 0.05,
                            hi: float = 1e4) -> float:
    """The coupling at which ``L x L`` has the physical volume ``V chi_t = volume_chi``
    (bisection: ``chi_t a^2`` falls monotonically with beta)."""
    if not (volume_chi > 0 and math.isfinite(volume_chi)):
        raise ConfigError(f"--physical-volume {volume_chi:g}: expected a positive V chi_t")
    f_lo, f_hi = physical_volume(L, lo) - volume_chi, physical_volume(L, hi) - volume_chi
    if f_lo * f_hi > 0:
        raise ConfigError(
            f"--physical-volume {volume_chi:g} with --L {L}: expected V chi_t between "
            f"{physical_volume(L, hi):.3g} and {physical_volume(L, lo):.3g} (beta {hi:g} .. "
            f"{lo:g}) for this L")
    a, b = math.log(lo), math.log(hi)
    for _ in range(200):
        m = 0.5 * (a + b)
        if (physical_volume(L, math.exp(m)) - volume_chi) * f_lo > 0:
            a = m
        else:
            b = m
        if b - a < 1e-13:
            break
    return math.exp(0.5 * (a + b))


def merge_points(*point_lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points of several studies, one per ``(L, beta)`` (a later list replaces an earlier
    one's point), sorted by beta and L."""
    seen: dict[tuple[int, float], dict[str, Any]] = {}
    for pts in point_lists:
        for p in pts:
            seen[(int(p["L"]), round(float(p["beta"]), 9))] = p
    return [seen[k] for k in sorted(seen, key=lambda k: (k[1], k[0]))]


def _fit_all(pts: list[dict[str, Any]]) -> dict[str, Any]:
    from .scaling import fit_all

    return fit_all(pts, [p["xi_t"] for p in pts])


def spacing_fits(points: list[dict[str, Any]], tol: float = 0.02) -> dict[str, Any]:
    """The fits of the module docstring: ``{"points": [(L, beta, xi_t, V chi_t)],
    "fixed_L": {L: fits}, "fixed_physical_volume": {V chi_t: fits}}`` (a line of constant
    physics is named by the mean ``V chi_t`` of its points, to 3 digits; ``tol`` is the relative
    spread allowed within it)."""
    pts = [{**p, "xi_t": xi_t(p["beta"]), "volume_chi": physical_volume(p["L"], p["beta"])}
           for p in points]
    out: dict[str, Any] = {
        "scale": "xi_t = (chi_t a^2)^(-1/2), infinite-volume exact (1/a in units of sqrt(chi_t))",
        "points": [{"L": p["L"], "beta": p["beta"], "xi_t": p["xi_t"],
                    "volume_chi": p["volume_chi"]} for p in pts],
        "fixed_L": {}, "fixed_physical_volume": {}}
    for L in sorted({p["L"] for p in pts}):
        line = sorted((p for p in pts if p["L"] == L), key=lambda p: p["xi_t"])
        if len({p["beta"] for p in line}) >= 2:
            out["fixed_L"][str(L)] = {"betas": [p["beta"] for p in line], **_fit_all(line)}
    rest = sorted(pts, key=lambda p: p["volume_chi"])
    while rest:  # greedy groups of V chi_t within tol of the group's first
        first = rest[0]["volume_chi"]
        group = [p for p in rest if p["volume_chi"] <= first * (1 + tol)]
        rest = rest[len(group):]
        if len({p["L"] for p in group}) >= 2:
            mean = sum(p["volume_chi"] for p in group) / len(group)
            group.sort(key=lambda p: p["xi_t"])
            out["fixed_physical_volume"][f"{mean:.3g}"] = {
                "points": [[p["L"], p["beta"]] for p in group], **_fit_all(group)}
    return out


def spacing_lines(fits: dict[str, Any]) -> list[str]:
    """One printed line per fitted cost of :func:`spacing_fits`."""
    lines = []
    for kind, per in (("L", fits["fixed_L"]), ("V chi_t", fits["fixed_physical_volume"])):
        for key, fs in per.items():
            for name, f in fs.items():
                if not isinstance(f, dict) or "z" not in f:
                    continue
                err = "" if f["z_error"] is None else f" +- {f['z_error']:.2f}"
                lb = " (includes lower bounds)" if f.get("includes_lower_bounds") else ""
                lines.append(f"{kind} = {key}: {name} ~ xi_t^{f['z']:.2f}{err}{lb}")
    return lines


def points_of(data: dict[str, Any], where: str) -> list[dict[str, Any]]:
    """The points of a 2D U(1) study: ``OUT/scaling.json`` of ``qcd-bridge scaling``
    (``points``) or the results file of ``benchmarks/bench_scaling.py`` (``rows``)."""
    pts = data.get("points", data.get("rows"))
    settings = data.get("settings") or data.get("meta", {}).get("settings") or {}
    if not isinstance(pts, list) or not all(isinstance(p, dict) and {"L", "beta", "transfer"}
                                            <= set(p) for p in pts):
        raise ConfigError(f"{where}: expected the JSON of qcd-bridge scaling ('points') or of "
                          f"benchmarks/bench_scaling.py ('rows') with L, beta and transfer per "
                          f"point")
    if settings.get("family", "plaquette") not in ("plaquette", "coupling"):
        raise ConfigError(f"{where}: a study of the {settings['family']!r} family; the exact "
                          f"scale xi_t is that of 2D U(1)")
    return pts


def spacing_study(sources: dict[str, dict[str, Any]], out: Any) -> dict[str, Any]:
    """Merge the 2D U(1) studies ``{name: json}`` (:func:`points_of`, :func:`merge_points`),
    fit the costs against ``xi_t`` (:func:`spacing_fits`) and draw ``OUT/scaling_spacing.png``.
    Returns ``{"sources", "points", "spacing_fits", "figure"}``."""
    from pathlib import Path

    from .scaling_plots import plot_spacing

    merged = merge_points(*(points_of(d, name) for name, d in sources.items()))
    sf = spacing_fits(merged)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_spacing(merged, sf, out / "scaling_spacing.png")
    return {"sources": list(sources), "points": merged, "spacing_fits": sf, "figure": str(fig)}
