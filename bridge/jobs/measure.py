"""``qcd-bridge measure``: observables of the registry over an ensemble, into an HDF5 store.

:func:`measure_ensemble` measures observables of :data:`bridge.observables.OBSERVABLES` over an
ensemble (ILDG/NERSC/MILC files or an HDF5 :class:`~bridge.io.hdf5.EnsembleStore`) and appends
the series, with trajectory numbers, to an HDF5 store; configurations already measured are
skipped (resumable).  The command line is :mod:`bridge.cli.measure`; Chroma's ``chroma``
measurement program is :mod:`bridge.chroma.chroma_program`.
"""

from __future__ import annotations

import glob
import inspect
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..observables import OBSERVABLES, get_observable
from ..progress import Progress
from .measure_params import PARAM_FLAGS

__all__ = [
    "measurement_name",
    "trajectory_from_name",
    "measure_ensemble",
]

_CFG_RE = re.compile(r"_cfg_(\d+)\.[A-Za-z0-9]+$")



def _fmt_param(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return format(v, ".15g")
    if isinstance(v, (tuple, list)):
        return ",".join(_fmt_param(x) for x in v)
    return str(v)


def measurement_name(observable: str, params: dict[str, Any]) -> str:
    """The store series name of ``observable`` with explicit ``params``: the bare name without
    parameters, else ``name[k1=v1;k2=v2]`` with the keys sorted (no ``/``: HDF5 groups)."""
    if not params:
        return observable
    inner = ";".join(f"{k}={_fmt_param(params[k])}" for k in sorted(params))
    return f"{observable}[{inner}]".replace("/", "_")


def trajectory_from_name(path: str | os.PathLike[str]) -> int:
    """Trajectory number from a Chroma-style file name ``<prefix>_cfg_<N>.<ext>``;
    ``ValueError`` naming the file otherwise."""
    name = os.path.basename(os.fspath(path))
    m = _CFG_RE.search(name)
    if m is None:
        raise ValueError(f"{os.fspath(path)}: cannot read a trajectory number from the name; "
                         f"expected Chroma's <prefix>_cfg_<N>.lime (or give an HDF5 store)")
    return int(m.group(1))


@dataclass
class _Source:
    """One configuration of the ensemble: trajectory number and how to load it."""

    traj: int
    label: str
    load: Callable[[], torch.Tensor]


def _ensemble(inputs: Sequence[str], device: torch.device) -> tuple[list[_Source], Any]:
    """Expand globs; an HDF5 store gives its configurations, other files are gauge files named
    ``*_cfg_<N>.*``.  Returns the sources sorted by trajectory and the input store (or None)."""
    from ..io import read_gauge
    from ..io.hdf5 import EnsembleStore, is_hdf5

    paths: list[str] = []
    for item in inputs:
        hits = sorted(glob.glob(item)) if glob.has_magic(item) else [item]
        if not hits:
            raise FileNotFoundError(f"{item}: no file matches")
        paths += hits
    if len(paths) == 1 and os.path.exists(paths[0]) and is_hdf5(paths[0]):
        store = EnsembleStore(paths[0], "r")
        srcs = []
        for i, traj in enumerate(store.trajectories.tolist()):
            srcs.append(_Source(int(traj), f"{paths[0]}[traj {traj}]",
                                lambda i=i: store.read(i, device=device)[0]))
        return srcs, store
    srcs = []
    seen: dict[int, str] = {}
    for p in paths:
        if not os.path.exists(p):
            raise FileNotFoundError(f"{p}: no such file")
        if is_hdf5(p):
            raise ValueError(f"{p}: an HDF5 store must be the only input (got {len(paths)} "
                             f"inputs)")
        traj = trajectory_from_name(p)
        if traj in seen:
            raise ValueError(f"{p}: trajectory {traj} also comes from {seen[traj]}")
        seen[traj] = p
        srcs.append(_Source(traj, p, lambda p=p: read_gauge(p, device=device)[0]))
    srcs.sort(key=lambda s: s.traj)
    return srcs, None


def _accepted_params(fn: Callable[..., Any]) -> set[str]:
    sig = inspect.signature(fn)
    return {n for n, prm in sig.parameters.items()
            if prm.kind is inspect.Parameter.KEYWORD_ONLY}


def _required_params(fn: Callable[..., Any]) -> set[str]:
    sig = inspect.signature(fn)
    return {n for n, prm in sig.parameters.items()
            if prm.kind is inspect.Parameter.KEYWORD_ONLY and prm.default is inspect._empty}


def _as_real_array(v: torch.Tensor) -> np.ndarray:
    """Values per configuration as float64; complex values get a trailing (re, im) axis."""
    a = v.detach().cpu()
    if a.is_complex():
        a = torch.view_as_real(a)
    return a.to(torch.float64).numpy()


def measure_ensemble(
    inputs: Sequence[str],
    observables: Sequence[str],
    params: dict[str, Any] | None = None,
    *,
    store: str | os.PathLike[str] | None = None,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> dict[str, dict[str, int]]:
    """Measure ``observables`` (names of :data:`bridge.observables.OBSERVABLES`) on every
    configuration of ``inputs`` and append the series to the HDF5 store ``store``.

    ``inputs``: gauge files (ILDG/SciDAC, NERSC, MILC; globs allowed) named Chroma-style
    ``<prefix>_cfg_<N>.<ext>`` (``N`` is the trajectory number), or one HDF5
    :class:`~bridge.io.hdf5.EnsembleStore` (its trajectory numbers).  ``store``: the output
    store (created if absent); default: the input store itself.  ``params``: keyword arguments
    passed to each observable that accepts them (e.g. ``flow_time``, ``kappa``); a parameter
    no chosen observable accepts, or a missing required one, is a ``ValueError``.

    Each series is named :func:`measurement_name` ``(observable, params it accepts)``; values
    are float64 per configuration (complex ones with a trailing re/im axis).  Resumable:
    trajectories already in a series are skipped; a new trajectory that precedes the last stored
    one of a series is an error (the store keeps trajectories increasing).  Returns per series
    ``{"measured": n, "skipped": m}``.
    """
    from ..io.hdf5 import EnsembleStore

    params = dict(params or {})
    if not observables:
        raise ValueError(f"observables: give at least one of {sorted(OBSERVABLES)}")
    fns = {name: get_observable(name) for name in observables}
    unused = set(params)
    plan: dict[str, tuple[Callable[..., torch.Tensor], dict[str, Any]]] = {}
    for name, fn in fns.items():
        accepted = _accepted_params(fn)
        kw = {k: v for k, v in params.items() if k in accepted}
        missing = _required_params(fn) - set(kw)
        if missing:
            flags = ", ".join(PARAM_FLAGS[k].flag if k in PARAM_FLAGS else k
                              for k in sorted(missing))
            raise ValueError(f"observable {name!r}: missing required parameter(s) {flags}")
        unused -= set(kw)
        plan[measurement_name(name, kw)] = (fn, kw)
    if unused:
        names = ", ".join(f"{k} ({PARAM_FLAGS[k].flag})" if k in PARAM_FLAGS else k
                          for k in sorted(unused))
        raise ValueError(f"parameter(s) {names} not accepted by any chosen observable "
                         f"({', '.join(observables)})")
    dev = torch.device(device) if device is not None else torch.device("cpu")
    srcs, in_store = _ensemble(inputs, dev)
    if store is None:
        if in_store is None:
            raise ValueError("store: give the output HDF5 store (-o/--store) for gauge-file "
                             "inputs")
        store = in_store.path
    out_path = os.fspath(store)
    same = in_store is not None and os.path.abspath(in_store.path) == os.path.abspath(out_path)
    if same:
        in_store.close()
        out = EnsembleStore(out_path, "a")
        for s in srcs:  # re-bind the loaders to the writable handle
            idx = int(np.nonzero(out.trajectories == s.traj)[0][0])
            s.load = (lambda i=idx: out.read(i, device=dev)[0])
    else:
        out = EnsembleStore(out_path, "a")
    stats = {name: {"measured": 0, "skipped": 0} for name in plan}
    try:
        done_sets: dict[str, set[int]] = {}
        last: dict[str, int | None] = {}
        for name in plan:
            if name in out.measurement_names:
                _, trajs = out.measurement(name)
                done_sets[name] = {int(t) for t in trajs}
                last[name] = int(trajs[-1]) if len(trajs) else None
            else:
                done_sets[name], last[name] = set(), None
        todo = []
        for s in srcs:
            names = [n for n in plan if s.traj not in done_sets[n]]
            for n in plan:
                if s.traj in done_sets[n]:
                    stats[n]["skipped"] += 1
            for n in names:
                if last[n] is not None and s.traj < last[n]:
                    raise ValueError(
                        f"{s.label}: trajectory {s.traj} is not measured for {n!r} but precedes "
                        f"its last stored trajectory {last[n]} in '{out_path}'; the store keeps "
                        f"trajectories increasing (measure into a new store)")
            if names:
                todo.append((s, names))
        bar = Progress(len(todo), label="measure", unit="cfg", enabled=progress, width=30)
        for k, (s, names) in enumerate(todo):
            u = s.load()
            for n in names:
                fn, kw = plan[n]
                val = _as_real_array(fn(u, **kw))[0]
                out.append_measurement(n, s.traj, val)
                stats[n]["measured"] += 1
            bar.update(k + 1, s.label)
        bar.close()
    finally:
        out.close()
        if in_store is not None and not same:
            in_store.close()
    return stats
