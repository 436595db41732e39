"""Gauge-field I/O: ILDG/SciDAC (LIME), NERSC, MILC and an HDF5 ensemble store.

Public API::

    U, info = read_gauge(path, nrow=None, format=None, reunitarize=False, verify=True,
                         dtype=None, device=None)
    info = write_gauge(path, U, format="ildg", precision=64, overwrite=False, **options)
    with EnsembleStore(path, "a", nrow=(4, 4, 4, 8)) as store: store.append(U, traj=10, ...)

``U`` has the project layout ``U[1, mu, t, z, y, x, a, b]`` (:mod:`bridge.lattice`), complex128
unless ``dtype`` asks for complex64.  The ILDG, NERSC and MILC readers return it as a
non-contiguous view of the links kept in file order ``[1, t, z, y, x, mu, a, b]`` (no
layout-converting copy; ``U.contiguous()`` makes one).  ``info`` is a :class:`GaugeInfo`.
Every reader raises only :class:`~bridge.errors.FormatError` (bad file) and
:class:`~bridge.errors.ChecksumError` (stored checksum / header plaquette / link trace
disagreeing with the data), with messages naming the file, the record and the value found and
expected; recoverable sloppiness is a :class:`FormatWarning`, and data that nothing vouches for
(no checksum stored) an :class:`IntegrityWarning`: a damaged file fails, or reads as written,
or says that it cannot be verified.  Every writer is crash-safe
(temporary file, fsync, rename) and refuses an existing path unless ``overwrite=True``.  The
formats and their sources are described in ``docs/formats.md``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from .ildg import GaugeInfo, read_ildg, write_ildg
from .inspect import FORMATS, detect_format
from .lime import FormatWarning, IntegrityWarning, LimeReader, LimeRecord, LimeWriter
from .milc import read_milc, write_milc
from .nersc import read_nersc, write_nersc

__all__ = [
    "read_gauge",
    "write_gauge",
    "detect_format",
    "GaugeInfo",
    "EnsembleStore",
    "FormatWarning",
    "IntegrityWarning",
    "LimeReader",
    "LimeWriter",
    "LimeRecord",
    "read_ildg",
    "write_ildg",
    "read_nersc",
    "write_nersc",
    "read_milc",
    "write_milc",
    "read_hdf5",
    "write_hdf5",
    "FORMATS",
]

_HDF5_NAMES = ("EnsembleStore", "read_hdf5", "write_hdf5")


def __getattr__(name: str) -> Any:
    """The HDF5 names load h5py on first use (commands that never touch HDF5 start faster)."""
    if name in _HDF5_NAMES:
        from . import hdf5

        return getattr(hdf5, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def read_hdf5(*args: Any, **kwargs: Any) -> Any:
    """:func:`bridge.io.hdf5.read_hdf5` (h5py imported on the first call)."""
    from .hdf5 import read_hdf5 as read

    return read(*args, **kwargs)


_READERS = {"ildg": read_ildg, "nersc": read_nersc, "milc": read_milc, "hdf5": read_hdf5}
_ALIASES = {"lime": "ildg", "scidac": "ildg", "qio": "ildg", "h5": "hdf5"}


def _format_name(format: str) -> str:
    name = _ALIASES.get(str(format).lower(), str(format).lower())
    if name not in FORMATS:
        raise ValueError(f"format: expected one of {', '.join(FORMATS)}, got {format!r}")
    return name


def read_gauge(
    path: str | os.PathLike[str],
    *,
    nrow: Sequence[int] | None = None,
    format: str | None = None,
    reunitarize: bool = False,
    verify: bool = True,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    **options: Any,
) -> tuple[torch.Tensor, GaugeInfo]:
    """Read a gauge field in any supported format (detected from the file's first bytes unless
    ``format`` is given).

    ``nrow`` (x y z t) is required for LIME files holding only a binary record and otherwise
    checked against the file.  ``reunitarize`` re-unitarises the links (Chroma's ``reunit``;
    useful for single-precision files).  ``verify`` checks stored checksums (and NERSC header
    plaquette and link trace).  Further ``options`` go to the format's reader, e.g.
    ``check_unitarity``, ``unitarity_tol``, ``precision`` (LIME binary-only files), ``index`` /
    ``traj`` (HDF5 store).
    """
    name = detect_format(path) if format is None else _format_name(format)
    reader = _READERS[name]
    return reader(path, nrow=nrow, reunitarize=reunitarize, verify=verify, dtype=dtype,
                  device=device, **options)


def write_gauge(
    path: str | os.PathLike[str],
    u: torch.Tensor,
    format: str = "ildg",
    precision: int = 64,
    *,
    overwrite: bool = False,
    **options: Any,
) -> GaugeInfo:
    """Write ``U[1, 4, Lt, Lz, Ly, Lx, 3, 3]`` as ``format`` (``"ildg"``, ``"nersc"``,
    ``"milc"`` or ``"hdf5"``) at ``precision`` 32 or 64 (MILC: 32 only), crash-safely.

    ``options`` go to the writer: ILDG ``file_xml``, ``record_xml``, ``lfn``, ``date``;
    NERSC ``storage`` (``"3x3"``/``"3x2"``), ``header``, ...; HDF5 ``traj``, ``params``.
    """
    name = _format_name(format)
    if name == "ildg":
        return write_ildg(path, u, precision=precision, overwrite=overwrite, **options)
    if name == "nersc":
        return write_nersc(path, u, precision=precision, overwrite=overwrite, **options)
    if name == "hdf5":
        from .hdf5 import write_hdf5

        return write_hdf5(path, u, precision=precision, overwrite=overwrite, **options)
    if precision != 32:
        raise ValueError(f"precision: the MILC binary format is single precision (32), got "
                         f"{precision!r}")
    return write_milc(path, u, overwrite=overwrite, **options)
