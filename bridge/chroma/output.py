"""Chroma's output XML (``hmc`` and ``chroma``) as JSON-able dictionaries and HDF5 series.

Element paths (``docs/formats.md`` section 4, checked against the real outputs in
``../shared/reference/chroma``):

``hmc`` (root ``<hmc>``)
    ``doHMC/MCUpdates/elem/Update/{update_no, WarmUpP, HMCTrajectory/{WarmUpP, H_old/{KE_old,
    PE_old}, H_new/{KE_new, PE_new}, deltaKE, deltaPE, deltaH, AccProb, AcceptP},
    seconds_for_trajectory, InlineObservables/elem/{Plaquette, PolyakovLoop}/...,
    seconds_for_measurements}``; the lattice in ``ProgramInfo/Setgeom/latt_size``.
``chroma`` (root ``<chroma>``)
    ``Observables/{w_plaq, s_plaq, t_plaq, plane_*_plaq, link, pollp/elem/{re, im}}`` and
    ``InlineObservables/elem/<group>`` with the groups ``Plaquette``, ``PolyakovLoop/poly_loop``,
    ``QTop/{k5, qtop}``, ``WilsonFlow/wilson_flow_results/{wflow_step, wflow_gact4i,
    wflow_gactij}``, ``hadspec/Wilson_hadron_measurements/elem/<Src>_<Snk>_Wilson_Mesons/elem/
    {gamma_value, momenta/elem/mesprop/elem/{re, im}}``; the others (``make_source``,
    ``propagator``, ``sink_smear``, ``QActDen``, ``qio_write_named_obj``, ...) are listed by name.
    ``InlineObservables/elem[i]`` is the output of ``Input/chroma/Param/InlineMeasurements/
    elem[i]``; its ``gauge_id`` labels the series of measurements on other fields (flowed).

:func:`store_output` appends the values to an :class:`~bridge.io.hdf5.EnsembleStore` as
measurement series (names in :func:`series`), indexed by trajectory (the hmc ``update_no``; for a
``chroma`` output the trajectory of the configuration: ``StartUpdateNum`` of the hmc record it
carries, or ``..._cfg_<N>.lime``, or given).  Updates already stored are skipped, so parsing a
growing output again appends only the new ones.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from lxml import etree

from ..errors import ConfigError, FormatError
from .measure_input import DEFAULT_GAUGE_ID

__all__ = ["read_output", "parse_hmc_output", "parse_chroma_output", "series", "store_output"]

_PLAQ_FIELDS = ("w_plaq", "s_plaq", "t_plaq", "plane_01_plaq", "plane_02_plaq", "plane_12_plaq",
                "plane_03_plaq", "plane_13_plaq", "plane_23_plaq", "link")


class _Reader:
    """Typed look-ups below one element; errors name file, element path and expectation."""

    def __init__(self, source: str) -> None:
        self.source = source

    def err(self, path: str, msg: str) -> FormatError:
        return FormatError(f"{self.source}: {path}: {msg}")

    def find(self, el: etree._Element, rel: str, path: str, required: bool = True
             ) -> etree._Element | None:
        found = el.find(rel)
        if found is None and required:
            raise self.err(f"{path}/{rel}", "missing required element")
        return found

    def real(self, el: etree._Element, rel: str, path: str, required: bool = True
             ) -> float | None:
        e = self.find(el, rel, path, required)
        if e is None:
            return None
        text = (e.text or "").strip()
        try:
            return float(text)
        except ValueError:
            raise self.err(f"{path}/{rel}", f"expected a number, got {text!r}") from None

    def integer(self, el: etree._Element, rel: str, path: str, required: bool = True
                ) -> int | None:
        e = self.find(el, rel, path, required)
        if e is None:
            return None
        text = (e.text or "").strip()
        try:
            return int(text)
        except ValueError:
            raise self.err(f"{path}/{rel}", f"expected an integer, got {text!r}") from None

    def boolean(self, el: etree._Element, rel: str, path: str, required: bool = True
                ) -> bool | None:
        e = self.find(el, rel, path, required)
        if e is None:
            return None
        text = (e.text or "").strip()
        if text not in ("true", "false"):
            raise self.err(f"{path}/{rel}", f"expected true or false, got {text!r}")
        return text == "true"

    def reals(self, el: etree._Element, rel: str, path: str) -> list[float]:
        e = self.find(el, rel, path)
        text = (e.text or "").strip()
        try:
            return [float(v) for v in text.split()]
        except ValueError:
            raise self.err(f"{path}/{rel}", f"expected numbers separated by spaces, got "
                                            f"{text[:60]!r}") from None

    def complex_elems(self, el: etree._Element, path: str) -> list[list[float]]:
        out = []
        for i, e in enumerate(el.findall("elem")):
            p = f"{path}/elem[{i}]"
            out.append([self.real(e, "re", p), self.real(e, "im", p)])
        return out


def _nrow(root: etree._Element) -> list[int] | None:
    text = root.findtext("ProgramInfo/Setgeom/latt_size")
    try:
        return [int(v) for v in text.split()] if text else None
    except ValueError:
        return None


def _code_version(root: etree._Element) -> dict[str, str]:
    cv = root.find("ProgramInfo/code_version")
    return {} if cv is None else {c.tag: (c.text or "").strip() for c in cv
                                  if isinstance(c.tag, str)}


def _plaquette(r: _Reader, el: etree._Element, path: str) -> dict[str, float]:
    out = {"w_plaq": r.real(el, "w_plaq", path)}
    for f in _PLAQ_FIELDS[1:]:
        v = r.real(el, f, path, required=False)
        if v is not None:
            out[f] = v
    return out


def parse_hmc_output(tree: etree._ElementTree | etree._Element,
                     source: str = "<hmc output>") -> dict[str, Any]:
    """Chroma's ``hmc`` output as ``{"program": "hmc", "nrow", "code_version", "updates":
    [...]}``, one dictionary per ``Update`` with ``update_no``, ``warmup``, ``deltaH``,
    ``AccProb``, ``AcceptP``, the ``KE``/``PE`` values and ``deltaKE``/``deltaPE`` when present,
    ``seconds_for_trajectory``, ``seconds_for_measurements``, ``plaquette`` (``w_plaq``,
    ``s_plaq``, ``t_plaq``, planes, ``link``) and ``poly_loop`` (``[[re, im]] * Nd`` or None)."""
    root = tree.getroot() if isinstance(tree, etree._ElementTree) else tree
    r = _Reader(source)
    if root.tag != "hmc":
        raise r.err(f"/{root.tag}", "expected root element <hmc> of Chroma's hmc output")
    base = "/hmc/doHMC/MCUpdates"
    mc = root.find("doHMC/MCUpdates")
    if mc is None:
        raise r.err(base, "missing required element (no updates in this output)")
    updates = []
    for i, elem in enumerate(mc.findall("elem")):
        path = f"{base}/elem[{i}]/Update"
        up = r.find(elem, "Update", f"{base}/elem[{i}]")
        traj = r.find(up, "HMCTrajectory", path)
        tpath = f"{path}/HMCTrajectory"
        rec: dict[str, Any] = {
            "update_no": r.integer(up, "update_no", path),
            "warmup": bool(r.boolean(up, "WarmUpP", path, required=False)),
        }
        for key, rel in (("KE_old", "H_old/KE_old"), ("PE_old", "H_old/PE_old"),
                         ("KE_new", "H_new/KE_new"), ("PE_new", "H_new/PE_new"),
                         ("deltaKE", "deltaKE"), ("deltaPE", "deltaPE")):
            rec[key] = r.real(traj, rel, tpath, required=False)
        rec["deltaH"] = r.real(traj, "deltaH", tpath)
        rec["AccProb"] = r.real(traj, "AccProb", tpath)
        rec["AcceptP"] = r.boolean(traj, "AcceptP", tpath)
        rec["DeltaDeltaH"] = r.real(traj, "ReversibilityMetrics/DeltaDeltaH", tpath,
                                    required=False)
        rec["seconds_for_trajectory"] = r.real(up, "seconds_for_trajectory", path,
                                               required=False)
        rec["seconds_for_measurements"] = r.real(up, "seconds_for_measurements", path,
                                                 required=False)
        rec["plaquette"] = None
        rec["poly_loop"] = None
        for j, obs in enumerate(up.findall("InlineObservables/elem")):
            opath = f"{path}/InlineObservables/elem[{j}]"
            plaq = obs.find("Plaquette")
            if plaq is not None and rec["plaquette"] is None:
                rec["plaquette"] = _plaquette(r, plaq, f"{opath}/Plaquette")
            poly = obs.find("PolyakovLoop/poly_loop")
            if poly is not None and rec["poly_loop"] is None:
                rec["poly_loop"] = r.complex_elems(poly, f"{opath}/PolyakovLoop/poly_loop")
        updates.append(rec)
    return {"program": "hmc", "source": source, "nrow": _nrow(root),
            "code_version": _code_version(root), "updates": updates}


# -- chroma ------------------------------------------------------------------------------------
def _hadspec(r: _Reader, el: etree._Element, path: str) -> dict[str, Any]:
    """Meson correlators of every ``Wilson_hadron_measurements/elem`` at zero momentum (the
    first ``momenta/elem``): ``{"mesons": {"<Src>_<Snk>": [[[re, im]] * Lt] * 16}, "pion":
    [re] * Lt}`` (the pion is ``gamma_value`` 15 of the first sink pair)."""
    out: dict[str, Any] = {"mesons": {}, "pion": None}
    for i, m in enumerate(el.findall("Wilson_hadron_measurements/elem")):
        mpath = f"{path}/Wilson_hadron_measurements/elem[{i}]"
        for group in m:
            if not isinstance(group.tag, str) or not group.tag.endswith("_Wilson_Mesons"):
                continue
            gpath = f"{mpath}/{group.tag}"
            corr: dict[int, list[list[float]]] = {}
            for j, g in enumerate(group.findall("elem")):
                epath = f"{gpath}/elem[{j}]"
                gamma = r.integer(g, "gamma_value", epath)
                mom = r.find(g, "momenta/elem", epath)
                corr[gamma] = r.complex_elems(r.find(mom, "mesprop", f"{epath}/momenta/elem"),
                                              f"{epath}/momenta/elem/mesprop")
            key = group.tag.removesuffix("_Wilson_Mesons")
            if i:
                key = f"{key}#{i + 1}"
            out["mesons"][key] = [corr[g] for g in sorted(corr)]
            if out["pion"] is None and 15 in corr:
                out["pion"] = [c[0] for c in corr[15]]
    return out


def _group_values(r: _Reader, g: etree._Element, path: str) -> dict[str, Any]:
    tag = g.tag
    if tag == "Plaquette":
        return _plaquette(r, g, path)
    if tag == "PolyakovLoop":
        return {"poly_loop": r.complex_elems(r.find(g, "poly_loop", path), f"{path}/poly_loop")}
    if tag == "QTop":
        return {"k5": r.real(g, "k5", path), "qtop": r.real(g, "qtop", path)}
    if tag == "WilsonFlow":
        res = f"{path}/wilson_flow_results"
        w = r.find(g, "wilson_flow_results", path)
        return {k: r.reals(w, k, res) for k in ("wflow_step", "wflow_gact4i", "wflow_gactij")}
    if tag == "hadspec":
        return _hadspec(r, g, path)
    return {}


def _trajectory(root: etree._Element) -> int | None:
    start = root.findtext("Config_info/Params/MCControl/StartUpdateNum")
    if start is not None and start.strip().isdigit():
        return int(start)
    cfg = root.findtext("Input/chroma/Cfg/cfg_file") or ""
    m = re.search(r"_cfg_(\d+)\.[A-Za-z0-9]+$", cfg.strip())
    return int(m.group(1)) if m else None


def parse_chroma_output(tree: etree._ElementTree | etree._Element,
                        source: str = "<chroma output>") -> dict[str, Any]:
    """Chroma's ``chroma`` output as ``{"program": "chroma", "nrow", "trajectory",
    "observables": {w_plaq, ..., pollp}, "measurements": [{"group", "name", "gauge_id",
    "label", "values"}]}`` in output order; ``label`` is unique (``group``, ``[k5=...]`` for
    ``QTop``, ``@gauge_id`` for a field other than ``default_gauge_field``, ``#n`` for
    repeats)."""
    root = tree.getroot() if isinstance(tree, etree._ElementTree) else tree
    r = _Reader(source)
    if root.tag != "chroma":
        raise r.err(f"/{root.tag}", "expected root element <chroma> of Chroma's chroma output")
    observables: dict[str, Any] = {}
    obs = root.find("Observables")
    if obs is not None:
        observables = _plaquette(r, obs, "/chroma/Observables")
        pollp = obs.find("pollp")
        if pollp is not None:
            observables["pollp"] = r.complex_elems(pollp, "/chroma/Observables/pollp")
    inputs = root.findall("Input/chroma/Param/InlineMeasurements/elem")
    outputs = root.findall("InlineObservables/elem")
    paired = len(inputs) == len(outputs)
    measurements = []
    seen: dict[str, int] = {}
    for i, elem in enumerate(outputs):
        groups = [c for c in elem if isinstance(c.tag, str)]
        path = f"/chroma/InlineObservables/elem[{i}]"
        if not groups:
            raise r.err(path, "expected a measurement group element, got an empty elem")
        g = groups[0]
        name = gauge_id = None
        if paired:
            name = (inputs[i].findtext("Name") or "").strip() or None
            gauge_id = (inputs[i].findtext("NamedObject/gauge_id") or "").strip() or None
        values = _group_values(r, g, f"{path}/{g.tag}")
        label = g.tag
        if g.tag == "QTop":
            label += f"[k5={values['k5']:g}]"
        if gauge_id and gauge_id != DEFAULT_GAUGE_ID:
            label += f"@{gauge_id}"
        seen[label] = seen.get(label, 0) + 1
        if seen[label] > 1:
            label += f"#{seen[label]}"
        measurements.append({"group": g.tag, "name": name, "gauge_id": gauge_id,
                             "label": label, "values": values})
    return {"program": "chroma", "source": source, "nrow": _nrow(root),
            "code_version": _code_version(root), "trajectory": _trajectory(root),
            "observables": observables, "measurements": measurements}


def read_output(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse an ``hmc`` or ``chroma`` output file (chosen by its root element)."""
    from .xml_in import parse_xml_file

    spath = os.fspath(path)
    tree = parse_xml_file(spath, "Chroma output", error=FormatError, huge=True,
                          hint=" (an interrupted run writes an incomplete file)")
    root = tree.getroot()
    if root.tag == "hmc":
        return parse_hmc_output(tree, spath)
    if root.tag == "chroma":
        return parse_chroma_output(tree, spath)
    raise FormatError(f"{spath}: /{root.tag}: expected root <hmc> (hmc output) or <chroma> "
                      f"(chroma output)")


# -- HDF5 series --------------------------------------------------------------------------------
def series(parsed: dict[str, Any]) -> dict[str, tuple[list[int] | None, np.ndarray]]:
    """Measurement series of a parsed output: name -> (trajectories or None, values).

    ``hmc``: ``hmc.deltaH``, ``hmc.AccProb``, ``hmc.AcceptP`` (0/1), ``hmc.warmup`` (0/1),
    ``hmc.seconds_for_trajectory``, ``hmc.<plaquette field>`` and ``hmc.poly_loop``
    (``[Nd, 2]``), indexed by ``update_no``.  ``chroma`` (one row, trajectory None):
    ``chroma.Observables.<field>``, ``chroma.<label>.<field>`` per measurement, with
    ``poly_loop`` ``[Nd, 2]``, ``wflow_*`` ``[nstep + 1]``, ``<Src>_<Snk>_mesons``
    ``[16, Lt, 2]`` and ``pion`` ``[Lt]``."""
    out: dict[str, tuple[list[int] | None, np.ndarray]] = {}
    if parsed["program"] == "hmc":
        ups = parsed["updates"]
        trajs = [u["update_no"] for u in ups]

        def add(name: str, values: Sequence[Any]) -> None:
            if ups and all(v is not None for v in values):
                out[f"hmc.{name}"] = (trajs, np.asarray(values, dtype=np.float64))

        for key in ("deltaH", "AccProb", "seconds_for_trajectory"):
            add(key, [u[key] for u in ups])
        add("AcceptP", [float(u["AcceptP"]) for u in ups])
        add("warmup", [float(u["warmup"]) for u in ups])
        for f in _PLAQ_FIELDS:
            add(f, [None if u["plaquette"] is None else u["plaquette"].get(f) for u in ups])
        add("poly_loop", [u["poly_loop"] for u in ups])
        return out
    for key, value in parsed["observables"].items():
        out[f"chroma.Observables.{key}"] = (None, np.asarray([value], dtype=np.float64))
    for m in parsed["measurements"]:
        values = m["values"]
        for key, value in values.items():
            if key == "mesons":
                for pair, corr in value.items():
                    out[f"chroma.{m['label']}.{pair}_mesons"] = (None, np.asarray([corr]))
            elif value is not None and key != "k5":
                out[f"chroma.{m['label']}.{key}"] = (None, np.asarray([value], dtype=np.float64))
    return out


def store_output(parsed: dict[str, Any], store: Any, traj: int | None = None) -> list[str]:
    """Append the :func:`series` of a parsed output to ``store`` (an open
    :class:`~bridge.io.hdf5.EnsembleStore`, or a path, opened for appending and created with
    the output's lattice).  Rows at or before a series' last stored trajectory are skipped.
    ``traj``: the trajectory of a ``chroma`` output (default: the one found in the output).
    Returns the names of the series that received rows."""
    from ..io.hdf5 import EnsembleStore

    if not hasattr(store, "append_measurement"):
        with EnsembleStore(store, "a", nrow=parsed.get("nrow")) as opened:
            return store_output(parsed, opened, traj)
    if parsed["program"] == "chroma":
        traj = parsed.get("trajectory") if traj is None else traj
        if traj is None:
            raise ConfigError(f"{parsed.get('source')}: the trajectory of the measured "
                              f"configuration is not in the output (no Config_info/Params/"
                              f"MCControl/StartUpdateNum, no ..._cfg_<N> file name); give it")
    written = []
    names = set(store.measurement_names)
    for name, (trajs, values) in series(parsed).items():
        ts = np.asarray(trajs if trajs is not None else [traj], dtype=np.int64)
        if name in names:
            _, have = store.measurement(name)
            if have.size:
                keep = ts > have[-1]
                ts, values = ts[keep], values[keep]
        if ts.size:
            store.append_measurement(name, ts, values)
            written.append(name)
    return written
