"""Observables and statistics of the chains of :mod:`bridge.jobs.chain`: what is measured after
every cycle, the summary of a run (acceptance per kernel, plaquette and topological charge with
naive and Gamma-method errors, ``tau_int``; Wolff, hep-lat/0306017) and its printed lines.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain import ChainSettings

__all__ = ["observable_names", "measure", "summarize", "summary_lines"]


def observable_names(s: ChainSettings) -> list[str]:
    """Names of the per-cycle observables of a chain with these settings."""
    names = ["action", "plaquette"]
    nd, group = len(s.nrow), s.group
    if nd == 4 or (nd == 2 and group == "u1"):
        names.append("topological_charge")
    if s.polyakov:
        names.append("polyakov_loop")
    return names


def measure(u: Any, action: Any, names: Sequence[str]) -> dict[str, Any]:
    """Observables per chain (numpy ``[C]``): the action (cached by the chain), the plaquette
    (Chroma's ``w_plaq``), the topological charge (geometric for 2D U(1), rounded to the integer
    it is up to floating-point noise; clover without smoothing in 4D:
    :func:`bridge.observables.field_strength.topological_charge`) and the real part of the
    Polyakov loop in the time direction (Chroma's normalisation)."""
    import torch

    from ..gauge import mesplq, polyakov_loop
    from ..lattice import Lattice
    from ..observables.field_strength import topological_charge

    out: dict[str, Any] = {}
    with torch.no_grad():
        for name in names:
            if name == "action":
                v = action
            elif name == "plaquette":
                v = mesplq(u).w_plaq
            elif name == "topological_charge":
                v = topological_charge(u)
                if Lattice.of(u).nd == 2:  # geometric charge: an integer up to rounding
                    v = torch.round(v)
            else:
                v = polyakov_loop(u).real
            out[name] = v.detach().to(torch.float64).cpu().numpy()
    return out


def summarize(obs: dict[str, Any], acceptance: dict[str, list[float]], s: ChainSettings,
              ) -> dict[str, Any]:
    """Statistics of all chains after the first ``therm`` cycles: acceptance per kernel,
    plaquette mean with the naive error (no autocorrelations) and the Gamma-method error
    (pyerrors, chains as replicas; Wolff, hep-lat/0306017), the topological charge's mean,
    ``<Q^2>/V`` and ``tau_int`` (when there are enough cycles), and the exact 2D U(1) values
    (character expansion, :mod:`bridge.exact`)."""
    import numpy as np

    from ..analysis.stats import MIN_CONFIGS, gamma

    therm = int(s.therm)
    cyc = np.asarray(obs["cycle"])
    keep = cyc > therm
    out: dict[str, Any] = {
        "chains": int(np.asarray(obs["plaquette"]).shape[1]) if len(cyc) else 0,
        "cycles": int(cyc.size), "therm": therm, "measured_cycles": int(keep.sum()),
        "acceptance": {k: (a / n if n else None) for k, (a, n) in acceptance.items()},
    }
    vol = math.prod(s.nrow)
    geometric = len(s.nrow) == 2 and s.group == "u1"
    for name in [k for k in obs if k != "cycle"]:
        x = np.asarray(obs[name])[keep]
        st: dict[str, Any] = {"mean": None, "naive_error": None, "error": None,
                              "tau_int": None, "tau_int_error": None}
        if x.size:
            st["mean"] = float(x.mean())
            st["naive_error"] = float(x.std(ddof=1) / math.sqrt(x.size)) if x.size > 1 else None
        if x.shape[0] >= MIN_CONFIGS and float(x.std()) > 0:
            try:
                g = gamma([x[:, c] for c in range(x.shape[1])],
                          [cyc[keep] for _ in range(x.shape[1])],
                          replicas=[f"c{c}" for c in range(x.shape[1])], what=name)
                st.update(error=g.error, tau_int=g.tau_int, tau_int_error=g.tau_int_error)
            except Exception:  # noqa: BLE001 - statistics are optional in a summary
                pass
        if name == "topological_charge":
            st["definition"] = "geometric" if geometric else "clover, no smoothing"
        if name == "topological_charge" and x.size:
            q = np.round(x) if geometric else x
            st["chi_t"] = float(np.mean(q**2) / vol)
            st["chi_t_naive_error"] = (float(np.std(q**2, ddof=1) / math.sqrt(q.size) / vol)
                                       if q.size > 1 else None)
            st["chi_t_error"] = None  # Gamma method on Q^2, chains as replicas
            if q.shape[0] >= MIN_CONFIGS and float((q**2).std()) > 0:
                try:
                    g = gamma([q[:, c] ** 2 / vol for c in range(q.shape[1])],
                              [cyc[keep] for _ in range(q.shape[1])],
                              replicas=[f"c{c}" for c in range(q.shape[1])], what="Q^2/V")
                    st["chi_t_error"] = g.error
                except Exception:  # noqa: BLE001 - statistics are optional in a summary
                    pass
        out[name] = st
    if geometric:
        from ..exact import u1_2d_plaquette, u1_2d_topological_susceptibility

        nrow = (s.nrow[0], s.nrow[1])
        out["exact"] = {"plaquette": u1_2d_plaquette(s.beta, nrow),
                        "chi_t": u1_2d_topological_susceptibility(s.beta, nrow)}
    return out


def _pm(value: float | None, error: float | None) -> str:
    from ..analysis.format import value_error

    return value_error(value, error, style="pm")


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """The human-readable summary printed at the end of a run."""
    acc = ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                    for k, v in summary["acceptance"].items())
    lines = [f"{summary['chains']} chains x {summary['cycles']} cycles "
             f"({summary['measured_cycles']} measured after {summary['therm']} thermalisation); "
             f"acceptance: {acc}"]
    p = summary.get("plaquette", {})
    if p.get("mean") is not None:
        text = f"plaquette {_pm(p['mean'], p['naive_error'])} (naive)"
        if p.get("error") is not None:
            text += f", {_pm(p['mean'], p['error'])} (Gamma method, tau_int {p['tau_int']:.2f})"
        if "exact" in summary:
            text += f"; exact {summary['exact']['plaquette']:.6f}"
        lines.append(text)
    q = summary.get("topological_charge")
    if q and q.get("mean") is not None:
        tau = "n/a (too few cycles or frozen)" if q.get("tau_int") is None else \
            f"{q['tau_int']:.2f} +- {q['tau_int_error']:.2f} cycles"
        what = "" if q.get("definition", "geometric") == "geometric" else \
            f" ({q['definition']})"
        gamma_err = q.get("chi_t_error")
        err, how = ((gamma_err, "Gamma method") if gamma_err is not None else
                    (q["chi_t_naive_error"], "naive"))
        if "exact" in summary:
            how += f"; exact {summary['exact']['chi_t']:.6f}"
        lines.append(f"topological charge{what} <Q> {q['mean']:+.3f}, <Q^2>/V "
                     f"{_pm(q['chi_t'], err)} ({how}), tau_int(Q) {tau}")
    return lines
