"""Writing the chain file of ``qcd-bridge chain`` (:mod:`bridge.jobs.chain`): one HDF5 file per
rank, appended cycle by cycle, with commit counters written at every checkpoint so that a
resumed run cuts away what a crashed one wrote after its last checkpoint.  The reader is
:mod:`bridge.io.chains`.

Layout::

    attrs format="qcd-bridge-chain", version, group, nrow, beta, n_chains, chain_offset
          (global index of the first chain), kernels (JSON list), schedule, therm,
          n_cycles / n_records / n_fields (commit counters)
    /observables/cycle      int64 [n]       cycle number (1, 2, ...) after which it was measured
    /observables/<name>     float64 [n, C]  action, plaquette, topological_charge, polyakov_loop
    /records/step           int64 [m]       elementary step number (ChainState.step)
    /records/cycle          int64 [m]
    /records/kernel         int8 [m]        index into attrs kernels
    /records/accepted       bool [m, C]
    /records/delta          float64 [m, C]  deltaH (HMC) or log w(U') - log w(U) (flow)
    /records/acc_prob       float64 [m, C]
    /records/nonfinite, refreshed  int64 [m];  /records/seconds float64 [m]
    /fields/cycle           int64 [k];  /fields/links float [k, C, mu, lattice..., Nc, Nc, 2]
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from typing import Any

from ..errors import ConfigError
from .chains import CHAIN_FORMAT, CHAIN_VERSION

__all__ = ["ChainFile"]


class ChainFile:
    """``chain.h5`` (layout in the module docstring): resizable datasets appended cycle by cycle;
    the commit counters (``n_cycles``, ``n_records``, ``n_fields``) are written by
    :meth:`flush`, at every checkpoint; :meth:`truncate` cuts the datasets back to a
    checkpoint's counts on resume."""

    def __init__(self, path: str | os.PathLike[str], mode: str, *, attrs: dict[str, Any],
                 n_chains: int, observables: Sequence[str]) -> None:
        import h5py

        self.path = os.fspath(path)
        self.n_chains = int(n_chains)
        try:
            self.h5 = h5py.File(self.path, mode)
        except OSError as exc:
            raise ConfigError(f"file {self.path}: cannot open it as HDF5 ({exc})") from exc
        if mode == "w":
            a = self.h5.attrs
            a["format"] = CHAIN_FORMAT
            a["version"] = CHAIN_VERSION
            for k, v in attrs.items():
                a[k] = json.dumps(v) if isinstance(v, (dict, list)) and k != "nrow" else v
            for k in ("n_cycles", "n_records", "n_fields"):
                a[k] = 0
            c = self.n_chains
            self._make("observables/cycle", (), "int64")
            for name in observables:
                self._make(f"observables/{name}", (c,), "float64")
            for name, shape, dt in (("step", (), "int64"), ("cycle", (), "int64"),
                                    ("kernel", (), "int8"), ("accepted", (c,), "bool"),
                                    ("delta", (c,), "float64"), ("acc_prob", (c,), "float64"),
                                    ("nonfinite", (), "int64"), ("refreshed", (), "int64"),
                                    ("seconds", (), "float64")):
                self._make(f"records/{name}", shape, dt)
            self._make("fields/cycle", (), "int64")
            self.h5.flush()
        elif self.h5.attrs.get("format") != CHAIN_FORMAT:
            self.h5.close()
            raise ConfigError(f"file {self.path}: not a qcd-bridge chain file (attribute "
                              f"format is not {CHAIN_FORMAT!r})")
        self.kernels = json.loads(self.h5.attrs["kernels"])
        self.observables = [k for k in self.h5["observables"] if k != "cycle"]

    def _make(self, name: str, shape: tuple[int, ...], dtype: str) -> None:
        rows = max(1, 4096 // max(1, int(math.prod(shape)) if shape else 1))
        self.h5.create_dataset(name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype,
                               chunks=(rows, *shape))

    @staticmethod
    def _append(ds: Any, rows: Any) -> None:
        n = ds.shape[0]
        ds.resize(n + len(rows), axis=0)
        ds[n:] = rows

    def counts(self) -> tuple[int, int, int]:
        """Rows written so far: ``(cycles, records, fields)``."""
        return (self.h5["observables/cycle"].shape[0], self.h5["records/step"].shape[0],
                self.h5["fields/cycle"].shape[0])

    def append_cycle(self, cycle: int, obs: dict[str, Any], infos: Sequence[Any]) -> None:
        """One cycle's observables and the records of its elementary steps."""
        import numpy as np

        self._append(self.h5["observables/cycle"], np.array([cycle], dtype=np.int64))
        for name in self.observables:
            self._append(self.h5[f"observables/{name}"], np.asarray(obs[name])[None, :])
        if not infos:
            return
        g = self.h5["records"]
        cols: dict[str, Any] = {
            "step": [i.step for i in infos], "cycle": [cycle] * len(infos),
            "kernel": [self.kernels.index(i.kernel) for i in infos],
            "accepted": [i.accepted.detach().cpu().numpy() for i in infos],
            "delta": [i.delta.detach().to("cpu").double().numpy() for i in infos],
            "acc_prob": [i.acc_prob.detach().to("cpu").double().numpy() for i in infos],
            "nonfinite": [i.nonfinite for i in infos],
            "refreshed": [i.refreshed for i in infos],
            "seconds": [i.seconds for i in infos]}
        for name, rows in cols.items():
            self._append(g[name], np.asarray(rows, dtype=g[name].dtype))

    def append_fields(self, cycle: int, u: Any, precision: int) -> None:
        """The fields of all chains after ``cycle`` (links as (re, im) pairs)."""
        import numpy as np
        import torch

        arr = torch.view_as_real(u.detach().cpu()).numpy()
        arr = arr.astype(np.float32 if precision == 32 else np.float64)
        if "fields/links" not in self.h5:
            self.h5.create_dataset("fields/links", shape=(0, *arr.shape),
                                   maxshape=(None, *arr.shape), dtype=arr.dtype,
                                   chunks=(1, 1, *arr.shape[1:]))
        self._append(self.h5["fields/links"], arr[None])
        self._append(self.h5["fields/cycle"], np.array([cycle], dtype=np.int64))

    def truncate(self, n_cycles: int, n_records: int, n_fields: int) -> None:
        """Drop everything written after a checkpoint with these counts."""
        for grp, n in (("observables", n_cycles), ("records", n_records), ("fields", n_fields)):
            for ds in self.h5[grp].values():
                if ds.shape[0] < n:
                    raise ConfigError(
                        f"file {self.path}: dataset {ds.name} has {ds.shape[0]} rows, the "
                        f"checkpoint expects at least {n}; the chain file does not belong to "
                        f"this checkpoint")
                ds.resize(n, axis=0)
        self.flush()

    def flush(self) -> None:
        """Write the commit counters and flush the file."""
        c, r, f = self.counts()
        a = self.h5.attrs
        a["n_cycles"], a["n_records"], a["n_fields"] = c, r, f
        self.h5.flush()

    def column(self, name: str) -> Any:
        """``observables/<name>`` or ``records/<name>`` as written so far."""
        return self.h5[name][:]

    def close(self) -> None:
        if self.h5.id.valid:
            self.h5.close()
