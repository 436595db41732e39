"""Reading ``qcd-bridge chain`` files (``chain.h5``; layout in :mod:`bridge.jobs.chain` and
docs/sampler.md): HDF5 with the root attribute ``format = "qcd-bridge-chain"``, per-cycle
observables ``[n, chains]``, per-step records and saved fields, each group cut at its commit
counter (``n_cycles``, ``n_records``, ``n_fields``) so that the residue of an interrupted write is
never read.  The writer is :class:`bridge.io.chain_writer.ChainFile`."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from ..errors import FormatError
from .hdf5 import is_hdf5

__all__ = ["CHAIN_FORMAT", "CHAIN_VERSION", "is_chain_file", "read_chain",
           "read_chain_observables"]

CHAIN_FORMAT = "qcd-bridge-chain"
CHAIN_VERSION = 1


def _format(attrs: Any) -> Any:
    fmt = attrs.get("format")
    return fmt.decode() if isinstance(fmt, bytes) else fmt


def is_chain_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an HDF5 file with the chain file's ``format`` attribute."""
    import h5py

    if not is_hdf5(path):
        return False
    try:
        with h5py.File(os.fspath(path), "r") as f:
            return _format(f.attrs) == CHAIN_FORMAT
    except OSError:
        return False


def _open(path: str | os.PathLike[str]) -> Any:
    import h5py

    spath = os.fspath(path)
    try:
        h5 = h5py.File(spath, "r")
    except OSError as exc:
        raise FormatError(f"file '{spath}': cannot open it as HDF5 ({exc})") from exc
    if _format(h5.attrs) != CHAIN_FORMAT:
        fmt = _format(h5.attrs)
        h5.close()
        raise FormatError(f"file '{spath}', attribute '/format': {fmt!r}, expected "
                          f"{CHAIN_FORMAT!r} (not a qcd-bridge chain file)")
    return h5


def read_chain(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The committed content of a chain file: ``attrs``, ``observables`` (name -> ``[n, C]``,
    plus ``cycle``), ``records`` (name -> array, ``kernel`` as names) and ``fields``."""
    with _open(path) as h5:
        attrs = {k: (v.tolist() if hasattr(v, "tolist") else v) for k, v in h5.attrs.items()}
        nc, nr, nf = int(attrs["n_cycles"]), int(attrs["n_records"]), int(attrs["n_fields"])
        kernels = json.loads(attrs["kernels"])
        obs = {k: ds[:nc] for k, ds in h5["observables"].items()}
        rec = {k: ds[:nr] for k, ds in h5["records"].items()}
        rec["kernel"] = [kernels[int(i)] for i in rec["kernel"]]
        fields = {k: ds[:nf] for k, ds in h5["fields"].items()}
    return {"attrs": attrs, "observables": obs, "records": rec, "fields": fields}


def read_chain_observables(path: str | os.PathLike[str]
                           ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The committed observables ``[cycles, chains]`` (and ``cycle``) after the thermalisation
    cycles (``cycle > therm``), and the metadata ``nrow``, ``group``, ``ensemble`` (``"chain"``),
    ``replica`` (``c<first>-c<last>`` global chain indices), ``therm``, ``chain_offset``."""
    with _open(path) as f:
        a = f.attrs
        n, therm = int(a["n_cycles"]), int(a.get("therm", 0))
        cols = {k: np.asarray(ds[:n]) for k, ds in f["observables"].items()}
        c0, nc = int(a.get("chain_offset", 0)), int(a["n_chains"])
        meta = {"nrow": [int(v) for v in np.ravel(a["nrow"])], "group": str(a["group"]),
                "ensemble": "chain", "replica": f"c{c0}-c{c0 + nc - 1}", "therm": therm,
                "chain_offset": c0}
    keep = cols["cycle"] > therm
    return {k: v[keep] for k, v in cols.items()}, meta
