"""Validate one ensemble against another from their files: read the series of each observable
from HDF5 ensemble stores, ``.npz``/CSV series files or ``qcd-bridge chain`` files (one file = one
replica, one chain = one replica), check that the lattices agree, and compare them with
:func:`bridge.analysis.compare.compare_ensembles` (statistics: docs/validation.md).

Inputs (:func:`load_series`):

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
* ``qcd-bridge chain`` files (:mod:`bridge.io.chains`): ``/observables/<name>``
  ``[cycles, chains]``, one replica per chain (named ``<file stem>.c<global chain index>``), the
  cycles ``<= therm`` left out.

Components of array-valued series are addressed as ``name[i]`` (``name[i,j]``).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..analysis.compare import CompareSettings, ValidationResult, check_lattices, compare_ensembles
from ..analysis.stats import Series, check_trajectories, check_weights
from ..io.chains import is_chain_file, read_chain_observables
from ..io.hdf5 import EnsembleStore, is_hdf5
from ..io.ildg import NC
from ..observables import OBSERVABLES, get_observable

__all__ = [
    "EXIT_DISAGREE",
    "SPECIAL_COLUMNS",
    "validate",
    "load_series",
    "available_observables",
    "ensemble_metadata",
]

EXIT_DISAGREE = 3
"""Exit status of ``qcd-bridge validate`` when some observable disagrees."""

SPECIAL_COLUMNS = ("traj", "weight", "nrow", "group")
"""Names in npz/CSV files (and the store series ``weight``) that are not observables."""

_COMPONENT = re.compile(r"^(?P<base>.+)\[(?P<index>\s*-?\d+\s*(,\s*-?\d+\s*)*)\]$")

Paths = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


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
    ``group``) are an error naming both.  Nothing is written; the report:
    :func:`bridge.analysis.report.write_report`."""
    settings = CompareSettings(bins=bins, n_boot=n_boot, alpha=alpha, seed=seed,
                               min_count=min_count, S=S)
    pa, pb = _path_list(a, "A"), _path_list(b, "B")
    ma, mb = _lattice(pa, "A"), _lattice(pb, "B")
    check_lattices(ma, mb)
    names = _names(pa, pb, observables)

    def load(name: str) -> tuple[Series, Series]:
        return (load_series(pa, name, progress=progress),
                load_series(pb, name, progress=progress))

    return compare_ensembles(names, load, settings, a_meta=ma, b_meta=mb, progress=progress)


def _names(pa: list[str], pb: list[str], observables: Sequence[str] | None) -> list[str]:
    """The observables asked for (comma-separated entries split), else those every file of A
    and of B carries."""
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
        return names
    names = [n.strip() for o in observables for n in str(o).split(",") if n.strip()]
    if not names:
        raise ValueError("observables: empty list")
    if len(set(names)) != len(names):
        raise ValueError(f"observables: duplicate names in {names}")
    return names


def _kind(path: str) -> str:
    """``"chain"``, ``"hdf5"`` (an ensemble store), ``"npz"`` or ``"csv"``."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"file '{path}': does not exist")
    if is_hdf5(path):
        return "chain" if is_chain_file(path) else "hdf5"
    with open(path, "rb") as f:
        head = f.read(2)
    if head == b"PK":
        return "npz"
    ext = os.path.splitext(path)[1].lower()
    if ext in (".csv", ".txt", ".dat"):
        return "csv"
    raise ValueError(
        f"file '{path}': not an HDF5 ensemble store, .npz or CSV series file (expected the HDF5 "
        f"signature, a zip archive, or the extension .csv/.txt/.dat)"
    )


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
        with EnsembleStore(spath, "r") as st:
            for m in st.measurement_names:
                if m in SPECIAL_COLUMNS:
                    continue
                values, _ = st.measurement(m)
                names += _expand(m, tuple(values.shape[1:]))
        return names
    if kind == "chain":
        return [k for k in read_chain_observables(spath)[0] if k != "cycle"]
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
        m = read_chain_observables(spath)[1]
        meta.update({k: m[k] for k in ("nrow", "group", "ensemble", "replica")})
        return meta
    if kind != "hdf5":
        meta.update(_table(spath, kind)[1])
        return meta
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


def _store_weights(path: str, trajs: np.ndarray, st: EnsembleStore) -> np.ndarray | None:
    """Weights of the series' trajectories: ``/configs/weight`` (matched by trajectory) unless all
    NaN, else the measurement series ``weight``; None when the store carries neither."""
    n = len(st)
    if n:
        ctraj, cw = st.trajectories, st.weights
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


def _measure_store(st: EnsembleStore, path: str, base: str,
                   progress: Callable[[str], None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Measure a registry observable on every stored configuration (complex values: real
    part)."""
    import torch

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


Replica = tuple[np.ndarray, np.ndarray, np.ndarray | None, str]
"""One replica's ``(values, trajectories, weights or None, replica name)``."""


def _load_store(path: str, observable: str, progress: Callable[[str], None] | None) -> Replica:
    """A measurement series of an ensemble store, else a registry observable measured on its
    configurations; weights from the store."""
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
    values = _component(np.asarray(values, dtype=np.float64), base, index, path)
    return values, np.asarray(trajs), weights, replica


def _load_table(path: str, kind: str, observable: str) -> Replica:
    """A column of an npz or CSV file with its ``traj`` and ``weight`` columns."""
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
    values = _component(values, base, index, path)
    return values, np.asarray(trajs), weights, replica


def _load_chain(path: str, observable: str) -> list[Replica]:
    """One replica per chain of a ``qcd-bridge chain`` file (no weights: the chain is exact)."""
    cols, meta = read_chain_observables(path)
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


def _load_file(path: str, observable: str,
               progress: Callable[[str], None] | None) -> list[Replica]:
    kind = _kind(path)
    if kind == "chain":
        return _load_chain(path, observable)
    if kind == "hdf5":
        return [_load_store(path, observable, progress)]
    return [_load_table(path, kind, observable)]


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
        for v, t, w, r in _load_file(p, observable, progress):
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
