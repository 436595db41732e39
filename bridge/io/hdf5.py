"""HDF5 ensemble store: gauge configurations, per-configuration metadata and measurement
series, appendable and resumable (layout in docs/formats.md, "HDF5 ensemble store").

Layout (version 1)::

    /                         attrs format="qcd-bridge-ensemble", version=1, ensemble, replica,
                                    nrow=[Lx, Ly, Lz, Lt], nd=4, nc=3, precision (32|64),
                                    layout="links[n, mu, t, z, y, x, a, b, re/im]",
                                    n_configs (commit counter)
    /configs/links            float32|64 [n, 4, Lt, Lz, Ly, Lx, 3, 3, 2], one HDF5 chunk per
                              time slice of a configuration, Fletcher-32 checksummed
    /configs/traj             int64  [n]   trajectory numbers, strictly increasing
    /configs/accepted         bool   [n]   accept flag of the update that produced it
    /configs/weight           float64 [n]  reweighting factor (NaN when none)
    /configs/params           str    [n]   JSON: action parameters etc.
    /configs/seed             str    [n]   JSON: seed (e.g. Chroma's 4 integers), "null" if none
    /configs/rng_state        vlen uint8 [n]  raw RNG state bytes (e.g. torch.Generator)
    /measurements/<name>/traj  int64 [m]   trajectory numbers, strictly increasing
    /measurements/<name>/value float64 [m, ...]  attrs n (commit counter)

so that ``pyerrors.Obs([value], [f"{ensemble}|{replica}"], idl=[traj])`` works directly
(:meth:`EnsembleStore.obs`).

Crash safety: an append writes every dataset first and increments the commit counter
(``n_configs`` / ``n``) last, flushing in between.  Rows beyond the counter are the residue of
an interrupted append; they are ignored, and truncated when the file is reopened for appending,
so a run can resume from :attr:`EnsembleStore.last_traj`.  New stores written by
:func:`write_hdf5` go through a temporary file and a rename (:func:`~bridge.io.lime.atomic_path`).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import h5py
import numpy as np
import torch

from ..errors import ChecksumError, FormatError
from ..groups import complex_dtype
from ..groups import reunitarize as _reunitarize
from ..lattice import Lattice
from .ildg import NC, ND, GaugeInfo, _check_precision, as_gauge_field, default_unitarity_tol
from .ildg import _unitarity_violation as _violation
from .lime import atomic_path, check_output_path

__all__ = ["EnsembleStore", "read_hdf5", "write_hdf5", "is_hdf5", "STORE_FORMAT", "STORE_VERSION"]

STORE_FORMAT = "qcd-bridge-ensemble"
STORE_VERSION = 1
_STR = h5py.string_dtype("utf-8")
_BYTES = h5py.vlen_dtype(np.uint8)
_CONFIG_FIELDS = ("traj", "accepted", "weight", "params", "seed", "rng_state")


def _json(value: Any, what: str) -> str:
    try:
        return json.dumps(value, sort_keys=True, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what}: not JSON-serialisable ({exc})") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _rng_bytes(state: bytes | bytearray | np.ndarray | torch.Tensor | None) -> np.ndarray:
    if state is None:
        return np.zeros(0, dtype=np.uint8)
    if isinstance(state, torch.Tensor):
        return state.detach().cpu().contiguous().view(torch.uint8).numpy().reshape(-1).copy()
    if isinstance(state, np.ndarray):
        return np.ascontiguousarray(state).view(np.uint8).reshape(-1).copy()
    if isinstance(state, (bytes, bytearray)):
        return np.frombuffer(bytes(state), dtype=np.uint8).copy()
    raise ValueError(
        f"rng_state: expected bytes, a uint8 tensor/array or None, got {type(state).__name__}"
    )


# -- layout: creation, checks, truncation (functions of the open h5py.File) --------------------
def _create_layout(h5: h5py.File, nrow: Sequence[int] | None, ensemble: str, replica: str,
                   precision: int) -> None:
    """Root attributes of a new store (and ``/configs`` when ``nrow`` is known)."""
    if "|" in ensemble or "|" in replica:
        raise ValueError(
            f"ensemble/replica: '|' separates them in pyerrors names, got {ensemble!r}, "
            f"{replica!r}"
        )
    a = h5.attrs
    a["format"] = STORE_FORMAT
    a["version"] = STORE_VERSION
    a["ensemble"] = ensemble
    a["replica"] = replica
    a["nd"] = ND
    a["nc"] = NC
    a["precision"] = int(precision)
    a["layout"] = "links[n, mu, t, z, y, x, a, b, re/im]"
    a["n_configs"] = 0
    if nrow is not None:
        _init_configs(h5, Lattice(nrow))
    h5.require_group("measurements")
    h5.flush()


def _init_configs(h5: h5py.File, lat: Lattice) -> None:
    """The empty, resizable ``/configs`` datasets for lattice ``lat`` (one HDF5 chunk per time
    slice of the links, Fletcher-32 checksummed)."""
    if lat.nd != ND:
        raise ValueError(f"nrow: expected 4 extents (Lx, Ly, Lz, Lt), got {lat.nrow}")
    g = h5.require_group("configs")
    h5.attrs["nrow"] = np.asarray(lat.nrow, dtype=np.int64)
    real = np.float32 if int(h5.attrs["precision"]) == 32 else np.float64
    shape = (ND, *lat.shape, NC, NC, 2)
    g.create_dataset("links", shape=(0, *shape), maxshape=(None, *shape), dtype=real,
                     chunks=(1, 1, 1, *shape[2:]), fletcher32=True)
    for name, dtype, chunk in (("traj", np.int64, 1024), ("accepted", bool, 1024),
                               ("weight", np.float64, 1024), ("params", _STR, 256),
                               ("seed", _STR, 256), ("rng_state", _BYTES, 64)):
        g.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(chunk,))


def _attr_nrow(h5: h5py.File) -> tuple[int, ...] | None:
    n = h5.attrs.get("nrow")
    return None if n is None else tuple(int(x) for x in n)


def _check_attrs(h5: h5py.File, path: str, nrow: Sequence[int] | None) -> None:
    """The root attributes: format, version, precision, and ``nrow`` against the requested."""
    a = h5.attrs
    fmt = a.get("format")
    if isinstance(fmt, bytes):
        fmt = fmt.decode()
    if fmt != STORE_FORMAT:
        raise FormatError(
            f"file '{path}', attribute '/format': {fmt!r}, expected "
            f"{STORE_FORMAT!r} (not a qcd-bridge ensemble store)"
        )
    version = int(a.get("version", -1))
    if version != STORE_VERSION:
        raise FormatError(
            f"file '{path}', attribute '/version': {version}, expected {STORE_VERSION}"
        )
    prec = int(a.get("precision", -1))
    if prec not in (32, 64):
        raise FormatError(
            f"file '{path}', attribute '/precision': {prec}, expected 32 or 64 "
            f"(unknown precision)"
        )
    have = _attr_nrow(h5)
    if nrow is not None and have is not None and tuple(int(n) for n in nrow) != have:
        raise FormatError(
            f"file '{path}', attribute '/nrow': lattice "
            f"{' '.join(map(str, have))} (x y z t) disagrees with the requested nrow "
            f"{' '.join(str(int(n)) for n in nrow)}"
        )


def _check_configs(h5: h5py.File, path: str) -> None:
    """Every ``/configs`` dataset present, at least ``n_configs`` rows, links of the lattice's
    shape."""
    if "configs" not in h5:
        return
    g = h5["configs"]
    n = int(h5.attrs.get("n_configs", 0))
    for name in ("links", *_CONFIG_FIELDS):
        if name not in g:
            raise FormatError(f"file '{path}', dataset '/configs/{name}': missing")
        if g[name].shape[0] < n:
            raise FormatError(
                f"file '{path}', dataset '/configs/{name}': {g[name].shape[0]} "
                f"rows, expected at least n_configs = {n}"
            )
    nrow = _attr_nrow(h5)
    if nrow is not None:
        want = (ND, *reversed(nrow), NC, NC, 2)
        if tuple(g["links"].shape[1:]) != want:
            raise FormatError(
                f"file '{path}', dataset '/configs/links': shape "
                f"{tuple(g['links'].shape)}, expected (n, {', '.join(map(str, want))})"
            )


def _truncate_uncommitted(h5: h5py.File) -> None:
    """Drop rows written by an interrupted append (beyond the commit counters)."""
    if "configs" in h5:
        n = int(h5.attrs.get("n_configs", 0))
        for name in ("links", *_CONFIG_FIELDS):
            ds = h5["configs"][name]
            if ds.shape[0] != n:
                ds.resize(n, axis=0)
    for grp in h5.get("measurements", {}).values():
        m = int(grp.attrs.get("n", 0))
        for key in ("traj", "value"):
            if grp[key].shape[0] != m:
                grp[key].resize(m, axis=0)
    h5.flush()


# -- configurations ----------------------------------------------------------------------------
def _config_row(traj: int, accepted: bool, weight: float, params: Mapping[str, Any] | None,
                seed: Any, rng_state: Any) -> dict[str, Any]:
    return {
        "traj": int(traj),
        "accepted": bool(accepted),
        "weight": float(weight),
        "params": _json(dict(params or {}), "params"),
        "seed": _json(seed, "seed"),
        "rng_state": _rng_bytes(rng_state),
    }


def _write_config(h5: h5py.File, u: torch.Tensor, row: dict[str, Any]) -> int:
    """Append the links of ``u`` (one chunk per ``(mu, t)``: bounded memory) and ``row``, then
    commit by incrementing ``n_configs``; returns the index."""
    g = h5["configs"]
    n = int(h5.attrs.get("n_configs", 0))
    links = g["links"]
    links.resize(n + 1, axis=0)
    real = np.float32 if int(h5.attrs["precision"]) == 32 else np.float64
    src = torch.view_as_real(u[0].detach())
    for mu in range(ND):
        for t in range(src.shape[1]):
            links[n, mu, t] = src[mu, t].cpu().numpy().astype(real, copy=False)
    for name in _CONFIG_FIELDS:
        ds = g[name]
        ds.resize(n + 1, axis=0)
        ds[n] = row[name]
    h5.flush()
    h5.attrs["n_configs"] = n + 1  # commit
    h5.flush()
    return n


def _read_links(h5: h5py.File, path: str, i: int, dtype: torch.dtype | None,
                tol: float | None, reunitarize: bool) -> tuple[torch.Tensor, float | None]:
    """Configuration ``i`` as ``U[1, 4, ...]`` read chunk by chunk (HDF5 verifies the Fletcher-32
    checksums: a mismatch is a :class:`ChecksumError`); with ``tol`` the unitarity of every chunk
    is checked.  Returns ``U`` and the largest unitarity violation (None unchecked)."""
    links = h5["configs"]["links"]
    lat = Lattice(_attr_nrow(h5) or ())
    u = torch.empty(lat.gauge_shape(1, NC), dtype=complex_dtype(dtype))
    dst = torch.view_as_real(u[0]).numpy()
    worst = 0.0
    for mu in range(ND):
        for t in range(lat.nrow[-1]):
            try:
                dst[mu, t] = links[i, mu, t]
            except OSError as exc:
                raise ChecksumError(
                    f"file '{path}', dataset '/configs/links', configuration {i}, "
                    f"mu {mu}, t {t}: HDF5 could not read the chunk ({exc}); Fletcher-32 "
                    f"checksum mismatch or corrupt file"
                ) from exc
            if tol is not None:
                viol = float(_violation(dst[mu, t]).max())
                worst = max(worst, viol)
                if not viol <= tol:
                    raise FormatError(
                        f"file '{path}', dataset '/configs/links', configuration {i}, "
                        f"mu {mu}, t {t}: links not unitary, max |U U^dagger - 1| = "
                        f"{viol:.3g}, expected <= {tol:.3g}"
                    )
            if reunitarize:
                u[0, mu, t] = _reunitarize(u[0, mu, t])
    return u, (worst if tol is not None else None)


def _config_metadata(h5: h5py.File, i: int) -> dict[str, Any]:
    g = h5["configs"]

    def text(name: str) -> str:
        v = g[name][i]
        return v.decode() if isinstance(v, bytes) else str(v)

    return {
        "index": i,
        "traj": int(g["traj"][i]),
        "accepted": bool(g["accepted"][i]),
        "weight": float(g["weight"][i]),
        "params": json.loads(text("params")),
        "seed": json.loads(text("seed")),
        "rng_state": bytes(np.asarray(g["rng_state"][i], dtype=np.uint8)),
    }


# -- measurements ------------------------------------------------------------------------------
def _series_arrays(name: str, traj: int | Sequence[int] | np.ndarray,
                   value: float | Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(trajs[k], values[k, ...])`` of one value (``traj`` an int) or a series, checked."""
    if not name or "/" in name:
        raise ValueError(f"name: expected a non-empty name without '/', got {name!r}")
    single = np.ndim(traj) == 0
    trajs = np.atleast_1d(np.asarray(traj, dtype=np.int64))
    vals = np.asarray(value, dtype=np.float64)
    if single:
        vals = vals[None]
    if vals.shape[0] != trajs.shape[0]:
        raise ValueError(
            f"value: {vals.shape[0]} values for {trajs.shape[0]} trajectories in "
            f"measurement {name!r}"
        )
    if trajs.size > 1 and not np.all(np.diff(trajs) > 0):
        raise ValueError(f"traj: trajectories of measurement {name!r} must increase strictly")
    return trajs, vals


def _series_group(h5: h5py.File, path: str, name: str, shape: tuple[int, ...]) -> h5py.Group:
    """The group of measurement ``name`` (created for values of ``shape`` per trajectory)."""
    meas = h5.require_group("measurements")
    if name not in meas:
        grp = meas.create_group(name)
        grp.create_dataset("traj", shape=(0,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
        grp.create_dataset("value", shape=(0, *shape), maxshape=(None, *shape), dtype=np.float64,
                           chunks=(max(1, 4096 // max(1, int(np.prod(shape)))), *shape))
        grp.attrs["n"] = 0
    grp = meas[name]
    if tuple(grp["value"].shape[1:]) != shape:
        raise ValueError(
            f"value: shape {shape} per trajectory, but measurement {name!r} in "
            f"'{path}' holds {tuple(grp['value'].shape[1:])}"
        )
    return grp


def _append_series(h5: h5py.File, path: str, name: str, trajs: np.ndarray,
                   vals: np.ndarray) -> None:
    """Append to measurement ``name``; commit by incrementing its counter ``n``."""
    grp = _series_group(h5, path, name, tuple(vals.shape[1:]))
    m = int(grp.attrs["n"])
    if m and trajs.size and trajs[0] <= int(grp["traj"][m - 1]):
        raise ValueError(
            f"traj: {int(trajs[0])} is not after the last trajectory "
            f"{int(grp['traj'][m - 1])} of measurement {name!r} in '{path}'"
        )
    k = trajs.shape[0]
    grp["traj"].resize(m + k, axis=0)
    grp["value"].resize(m + k, axis=0)
    grp["traj"][m:] = trajs
    grp["value"][m:] = vals
    h5.flush()
    grp.attrs["n"] = m + k  # commit
    h5.flush()


# -- the store ---------------------------------------------------------------------------------
_S = TypeVar("_S", bound="_StoreFile")


class _StoreFile:
    """The open HDF5 file of a store: opening (creating, checking, truncating uncommitted rows),
    the root attributes and closing.  :class:`EnsembleStore` adds the data."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: str = "a",
        *,
        nrow: Sequence[int] | None = None,
        ensemble: str = "ens",
        replica: str = "r0",
        precision: int = 64,
        overwrite: bool = False,
    ) -> None:
        self.path = os.fspath(path)
        if mode not in ("r", "a", "w"):
            raise ValueError(f"mode: expected 'r', 'a' or 'w', got {mode!r}")
        _check_precision(precision)
        if mode == "w":
            check_output_path(self.path, overwrite)
        if mode == "r" and not os.path.exists(self.path):
            raise FormatError(f"file '{self.path}': does not exist")
        try:
            self._h5 = h5py.File(self.path, mode)
        except OSError as exc:
            raise FormatError(f"file '{self.path}': cannot open as HDF5 ({exc})") from exc
        self.mode = mode
        try:
            if self._h5.attrs.get("format") is None and mode != "r" and len(self._h5) == 0:
                _create_layout(self._h5, nrow, ensemble, replica, precision)
            _check_attrs(self._h5, self.path, nrow)
            _check_configs(self._h5, self.path)
            if mode != "r":
                _truncate_uncommitted(self._h5)
        except BaseException:
            self._h5.close()
            raise

    @property
    def ensemble(self) -> str:
        """Ensemble name (pyerrors: ``"ensemble|replica"``)."""
        return str(self._h5.attrs["ensemble"])

    @property
    def replica(self) -> str:
        """Replica name."""
        return str(self._h5.attrs["replica"])

    @property
    def precision(self) -> int:
        """32 or 64: the stored precision of the links."""
        return int(self._h5.attrs["precision"])

    @property
    def nrow(self) -> tuple[int, ...] | None:
        """Lattice extents (x y z t), ``None`` before the first configuration."""
        return _attr_nrow(self._h5)

    def __len__(self) -> int:
        return int(self._h5.attrs.get("n_configs", 0))

    def _writable(self) -> None:
        if self.mode == "r":
            raise ValueError(f"file '{self.path}': store opened read-only (mode 'r')")

    def flush(self) -> None:
        """Flush HDF5 buffers to disk."""
        self._h5.flush()

    def close(self) -> None:
        """Close the file."""
        if self._h5.id.valid:
            self._h5.close()

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}('{self.path}', {len(self)} configurations, "
                f"nrow={self.nrow}, {self.precision}-bit)")


class EnsembleStore(_StoreFile):
    """An HDF5 ensemble of gauge configurations with metadata and measurement series.

    ``mode``: ``"r"`` read-only, ``"a"`` append (created if absent), ``"w"`` new file (refused
    if it exists unless ``overwrite``).  ``nrow`` / ``precision`` are needed only to create a
    store; an existing store must agree with them if given.
    """

    @property
    def trajectories(self) -> np.ndarray:
        """Trajectory numbers of the stored configurations."""
        return self._column("traj", np.int64)

    @property
    def weights(self) -> np.ndarray:
        """Reweighting factors of the stored configurations (NaN where none was given)."""
        return self._column("weight", np.float64)

    def _column(self, name: str, dtype: Any) -> np.ndarray:
        if "configs" not in self._h5:
            return np.zeros(0, dtype=dtype)
        return self._h5["configs"][name][: len(self)]

    @property
    def last_traj(self) -> int | None:
        """Trajectory number of the last committed configuration (to resume from)."""
        n = len(self)
        return None if n == 0 else int(self._h5["configs"]["traj"][n - 1])

    def append(self, u: torch.Tensor, *, traj: int, accepted: bool = True,
               weight: float = math.nan, params: Mapping[str, Any] | None = None,
               seed: Any = None, rng_state: bytes | np.ndarray | torch.Tensor | None = None
               ) -> int:
        """Append one configuration ``U[1, 4, Lt, Lz, Ly, Lx, 3, 3]`` with its metadata;
        returns its index.  Trajectory numbers must increase strictly."""
        self._writable()
        u = as_gauge_field(u)
        lat = Lattice.of(u)
        if "configs" not in self._h5:
            _init_configs(self._h5, lat)
        elif lat.nrow != self.nrow:
            raise ValueError(
                f"U: lattice {' '.join(map(str, lat.nrow))} differs from the store's "
                f"{' '.join(map(str, self.nrow or ()))} (file '{self.path}')"
            )
        last = self.last_traj
        if last is not None and int(traj) <= last:
            raise ValueError(
                f"traj: {int(traj)} is not after the last stored trajectory {last} "
                f"(file '{self.path}'); trajectory numbers must increase"
            )
        row = _config_row(traj, accepted, weight, params, seed, rng_state)
        return _write_config(self._h5, u, row)

    def _index(self, index: int | None, traj: int | None) -> int:
        n = len(self)
        if traj is not None:
            hits = np.nonzero(self.trajectories == int(traj))[0]
            if hits.size == 0:
                raise KeyError(f"traj: no configuration with trajectory {traj} in '{self.path}'")
            return int(hits[0])
        i = -1 if index is None else int(index)
        if not -n <= i < n:
            raise IndexError(f"index: {index} out of range for {n} configurations in "
                             f"'{self.path}'")
        return i % n

    def read(self, index: int | None = None, *, traj: int | None = None,
             dtype: torch.dtype | None = None, device: torch.device | str | None = None,
             check_unitarity: bool = True, unitarity_tol: float | None = None,
             reunitarize: bool = False) -> tuple[torch.Tensor, dict[str, Any]]:
        """Configuration ``index`` (default: the last) or the one of trajectory ``traj``:
        ``(U[1, 4, ...], metadata)``.  The Fletcher-32 checksum of every chunk is verified by
        HDF5 (a mismatch is a :class:`ChecksumError`)."""
        i = self._index(index, traj)
        tol = default_unitarity_tol(self.precision) if unitarity_tol is None else unitarity_tol
        u, worst = _read_links(self._h5, self.path, i, dtype, tol if check_unitarity else None,
                               reunitarize)
        meta = self.metadata(i)
        meta["max_unitarity_violation"] = worst
        return (u if device is None else u.to(device)), meta

    def metadata(self, index: int) -> dict[str, Any]:
        """Per-configuration metadata as stored (JSON fields decoded)."""
        return _config_metadata(self._h5, self._index(index, None))

    @property
    def measurement_names(self) -> list[str]:
        """Names of the stored measurement series."""
        return sorted(self._h5["measurements"].keys()) if "measurements" in self._h5 else []

    def append_measurement(self, name: str, traj: int | Sequence[int] | np.ndarray,
                           value: float | Sequence[Any] | np.ndarray) -> None:
        """Append one value (``traj`` an int) or a series (``traj`` a sequence, ``value`` with
        the same leading length) to measurement ``name``.  Trajectories must increase strictly;
        the value shape (after the leading axis) is fixed by the first append."""
        self._writable()
        trajs, vals = _series_arrays(name, traj, value)
        _append_series(self._h5, self.path, name, trajs, vals)

    def measurement(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """``(values, trajs)`` of a measurement series (committed rows only)."""
        if name not in self.measurement_names:
            raise KeyError(
                f"measurement {name!r} not in '{self.path}'; available: {self.measurement_names}"
            )
        grp = self._h5["measurements"][name]
        m = int(grp.attrs["n"])
        return grp["value"][:m], grp["traj"][:m]

    def obs(self, name: str, index: tuple[int, ...] = ()) -> Any:
        """``pyerrors.Obs`` of measurement ``name`` (component ``index`` for array values),
        named ``"ensemble|replica"`` with ``idl`` = the trajectory numbers."""
        import pyerrors as pe

        values, trajs = self.measurement(name)
        samples = values[(slice(None), *index)]
        if samples.ndim != 1:
            raise ValueError(
                f"index: measurement {name!r} has values of shape {values.shape[1:]}; give the "
                f"component index"
            )
        return pe.Obs([samples], [f"{self.ensemble}|{self.replica}"], idl=[trajs])


def is_hdf5(path: str | os.PathLike[str]) -> bool:
    """Whether the file starts with the HDF5 signature."""
    try:
        with open(path, "rb") as f:
            return f.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def read_hdf5(
    path: str | os.PathLike[str],
    *,
    index: int | None = None,
    traj: int | None = None,
    nrow: Sequence[int] | None = None,
    reunitarize: bool = False,
    verify: bool = True,
    check_unitarity: bool = True,
    unitarity_tol: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, GaugeInfo]:
    """One configuration of an ensemble store (default: the last) as ``(U, info)``.  HDF5
    verifies the Fletcher-32 checksums whatever ``verify`` says."""
    spath = os.fspath(path)
    try:
        store = EnsembleStore(spath, "r", nrow=nrow)
    except OSError as exc:  # pragma: no cover - h5py raises OSError for unreadable files
        raise FormatError(f"file '{spath}': cannot read as HDF5 ({exc})") from exc
    with store:
        if len(store) == 0:
            raise FormatError(f"file '{spath}', group '/configs': no configurations stored")
        u, meta = store.read(index, traj=traj, dtype=dtype, device=device,
                             check_unitarity=check_unitarity, unitarity_tol=unitarity_tol,
                             reunitarize=reunitarize)
        info = GaugeInfo(
            path=spath,
            format="hdf5",
            variant=STORE_FORMAT,
            nrow=store.nrow or (),
            precision=store.precision,
            endianness="native",
            checksum="ok",
            metadata={
                "n_configs": len(store),
                "ensemble": store.ensemble,
                "replica": store.replica,
                "measurements": store.measurement_names,
                **{k: v for k, v in meta.items() if k != "rng_state"},
            },
            max_unitarity_violation=meta["max_unitarity_violation"],
            reunitarized=reunitarize,
        )
        info.checksum_stored = {"fletcher32": "per chunk"}
        info.checksum_computed = {"fletcher32": "verified by HDF5"}
    return u, info


def write_hdf5(
    path: str | os.PathLike[str],
    u: torch.Tensor,
    *,
    precision: int = 64,
    traj: int = 0,
    ensemble: str = "ens",
    replica: str = "r0",
    params: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> GaugeInfo:
    """A new ensemble store holding one configuration, written crash-safely."""
    precision = _check_precision(precision)
    u = as_gauge_field(u)
    lat = Lattice.of(u)
    spath = os.fspath(path)
    with atomic_path(spath, overwrite=overwrite) as tmp:
        with EnsembleStore(tmp, "w", nrow=lat.nrow, ensemble=ensemble, replica=replica,
                           precision=precision, overwrite=True) as store:
            store.append(u, traj=traj, params=params)
    return GaugeInfo(path=spath, format="hdf5", variant=STORE_FORMAT, nrow=lat.nrow,
                     precision=precision, endianness="native", checksum="ok")
