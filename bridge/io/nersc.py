"""NERSC ("Gauge Connection Archive") gauge fields.

Facts (docs/formats.md 2.6; QDP++ ``lib/qdp_iogauge.cc: readArchivHeader, writeArchivHeader``,
``lib/qdp_scalar_specific.cc: readArchiv, writeArchiv, computeChecksum``; Grid
``Grid/parallelIO/NerscIO.h``, ``MetaData.h``):

* ASCII header: ``BEGIN_HEADER\\n``, lines ``KEY = VALUE\\n``, ``END_HEADER\\n``; the binary data
  start right after that newline.  Lines are split on the **first** ``=`` and both sides
  stripped (``CREATOR_HARDWARE`` may itself contain ``=``; PyQUDA's reader crashes on it).
* ``DATATYPE``: ``4D_SU3_GAUGE_3x3`` (18 reals per link) or ``4D_SU3_GAUGE`` (12 reals, the
  first two rows; the third is ``conj(row0 x row1)``, QDP++ ``readArchiv``, Grid
  ``reconstruct3``).
* ``FLOATING_POINT``: ``IEEE32BIG``, ``IEEE32`` (big-endian, as QDP++ reads it; Grid reads it
  little-endian, so it is ambiguous), ``IEEE64BIG``; little-endian ``IEEE32LITTLE``,
  ``IEEE64LITTLE`` and ``IEEE64`` (Grid, PyQUDA) are read too.  Written: ``IEEE32BIG`` or
  ``IEEE64BIG`` only (the forms Chroma/QDP++ can read).
* data: sites with x fastest, 4 directions x, y, z, t, each matrix row-major with (re, im);
* ``CHECKSUM``: the uint32 sum (mod 2^32) of the payload seen as 32-bit words **after**
  conversion from file byte order (for doubles both halves); hex.
* ``PLAQUETTE``: mean of ``Re tr P / 3`` over the 6 planes (Chroma's ``w_plaq``);
  ``LINK_TRACE``: mean of ``Re tr U / 3``.  Readers check both (QDP++ and Grid: 1e-5 on the
  plaquette; QDP++ 1e-5, Grid 1e-6 on the link trace); here both to the precision they are
  printed with and the precision of the data (:func:`header_tolerance`: ~5e-11 for 64-bit 3x3
  data printed to 10 decimals, ~4e-7 for Chroma's 32-bit two-row ``t_nersc.cfg``).
* header keys written by QDP++, in order: ``CHECKSUM, LINK_TRACE, PLAQUETTE, DATATYPE,
  HDR_VERSION, STORAGE_FORMAT, DIMENSION_1..4, BOUNDARY_1..4, ENSEMBLE_ID, ENSEMBLE_LABEL,
  SEQUENCE_NUMBER, CREATOR, CREATOR_HARDWARE, CREATION_DATE, ARCHIVE_DATE, FLOATING_POINT``.
"""

from __future__ import annotations

import math
import os
import platform
import time
import warnings
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

import numpy as np
import torch

from ..errors import ChecksumError, FormatError
from ..gauge import mesplq
from ..groups import reunitarize as _reunitarize
from ..lattice import Lattice
from .ildg import (
    DEFAULT_CHUNK_BYTES,
    NC,
    ND,
    READ_CHUNK_BYTES,
    GaugeInfo,
    _check_precision,
    _unitarity_violation,
    as_gauge_field,
    default_unitarity_tol,
    stream_read_links,
    stream_write_links,
)
from .lime import FormatWarning, IntegrityWarning, atomic_output

__all__ = ["read_nersc", "write_nersc", "read_nersc_header", "header_tolerance",
           "NERSC_FLOATING_POINT"]

BEGIN = b"BEGIN_HEADER"
END = b"END_HEADER"
MAX_HEADER_BYTES = 1 << 20

#: ``FLOATING_POINT`` value -> numpy dtype of one real.
NERSC_FLOATING_POINT: dict[str, str] = {
    "IEEE32BIG": ">f4",
    "IEEE32": ">f4",  # QDP++: big-endian (Grid: little-endian; ambiguous)
    "IEEE64BIG": ">f8",
    "IEEE32LITTLE": "<f4",
    "IEEE64LITTLE": "<f8",
    "IEEE64": "<f8",  # Grid
}
_DATATYPES = {"4D_SU3_GAUGE_3x3": 3, "4D_SU3_GAUGE": 2}


def _where(path: str, what: str) -> str:
    return f"file '{path}', {what}"


def _key(path: str, key: str) -> str:
    return _where(path, f"header key {key!r}")


def read_nersc_header(path: str | os.PathLike[str]) -> tuple[dict[str, str], int, int]:
    """Parse the header; returns ``(entries, data_offset, file_size)``.  Entries keep the
    file's order; keys and values are stripped; the first ``=`` splits a line."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            first = f.readline(64)
            if first.rstrip(b"\r\n") != BEGIN:
                raise FormatError(
                    f"{_where(spath, 'header line 1')}: found {first[:40]!r}, expected "
                    f"'BEGIN_HEADER' (wrong magic: not a NERSC file)"
                )
            entries: dict[str, str] = {}
            line_no = 1
            while True:
                line = f.readline(MAX_HEADER_BYTES)
                line_no += 1
                if not line:
                    raise FormatError(
                        f"{_where(spath, f'header line {line_no}')}: end of file before "
                        f"'END_HEADER' (truncated header)"
                    )
                if f.tell() > MAX_HEADER_BYTES:
                    raise FormatError(
                        f"{_where(spath, 'header')}: no 'END_HEADER' within the first "
                        f"{MAX_HEADER_BYTES} bytes"
                    )
                if not line.endswith(b"\n"):
                    raise FormatError(
                        f"{_where(spath, f'header line {line_no}')}: no newline, expected "
                        f"'KEY = VALUE' lines ending in '\\n' (truncated header?)"
                    )
                text = line.decode("latin-1").strip()
                if text == END.decode():
                    return entries, f.tell(), size
                if not text:
                    continue
                key, sep, value = text.partition("=")
                key = key.strip()
                if not sep or not key:
                    warnings.warn(
                        f"{_where(spath, f'header line {line_no}')}: ignoring {text[:60]!r}, "
                        f"expected 'KEY = VALUE'",
                        FormatWarning,
                        stacklevel=3,
                    )
                    continue
                entries[key] = value.strip()
    except OSError as exc:
        raise FormatError(f"file '{spath}': cannot read: {exc.strerror}") from exc


def _require(entries: Mapping[str, str], key: str, path: str) -> str:
    if key not in entries:
        raise FormatError(
            f"{_where(path, f'header key {key!r}')}: missing, expected it in the NERSC header"
        )
    return entries[key]


def _header_value(entries: Mapping[str, str], key: str, path: str) -> tuple[float, str] | None:
    """A header PLAQUETTE / LINK_TRACE: its value and text, ``None`` if absent."""
    if key not in entries:
        return None
    text = entries[key]
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise FormatError(f"{_key(path, key)}: value {text!r}, expected a finite number")
    return value, text


def header_tolerance(text: str, precision: int, terms: int, violation: float | None = None
                     ) -> float:
    """Largest accepted ``|stored - computed|`` for a header PLAQUETTE / LINK_TRACE printed as
    ``text``, the mean of ``terms`` traces over data stored at ``precision`` bits.

    The sum of: half a unit in the last printed digit; one double rounding unit per term (the
    writer's order of summation); 16 rounding units of the stored precision divided by
    ``sqrt(terms)`` (the writer may have used its copy of the field before rounding it to the
    file's precision: independent errors that average out); for two-row storage, twice the
    mean unitarity violation of the links (``violation``: the writer's third row need not be
    the rebuilt one, and a slightly non-unitary field shifts every trace the same way).  About
    5e-11 for a small 64-bit 3x3 lattice printed to 10 decimals; 4e-7 for Chroma's 32-bit
    two-row ``t_nersc.cfg``, whose values agree to 5e-10 -- instead of the 1e-5 of QDP++."""
    try:
        exponent = Decimal(text).as_tuple().exponent
        printed = 0.5 * 10.0 ** int(exponent)  # finite: checked by _header_value
    except (InvalidOperation, ValueError, OverflowError):
        printed = 0.0
    unit = float(np.finfo(np.float32 if precision == 32 else np.float64).eps) / 2
    summed = terms * float(np.finfo(np.float64).eps) / 2
    return printed + summed + 16 * unit / math.sqrt(terms) + 2 * (violation or 0.0)


def _decimals(text: str) -> str:
    try:
        return f"1e{int(Decimal(text).as_tuple().exponent)}"
    except (InvalidOperation, ValueError, OverflowError):
        return "an unknown precision"


def _geometry(entries: Mapping[str, str], spath: str, nrow: Sequence[int] | None
              ) -> tuple[tuple[int, ...], str, int, str, np.dtype]:
    """``(dims, DATATYPE, rows stored, FLOATING_POINT, file dtype)`` from the header."""
    dims: list[int] = []
    for i in range(1, ND + 1):
        key = f"DIMENSION_{i}"
        raw = _require(entries, key, spath)
        try:
            d = int(raw)
        except ValueError:
            raise FormatError(
                f"{_key(spath, key)}: value {raw!r}, expected a positive integer"
            ) from None
        if d <= 0:
            raise FormatError(f"{_key(spath, key)}: value {d}, expected a positive integer")
        dims.append(d)
    dims_t = tuple(dims)
    if nrow is not None and tuple(int(n) for n in nrow) != dims_t:
        raise FormatError(
            f"{_where(spath, 'header keys DIMENSION_1..4')}: lattice "
            f"{' '.join(map(str, dims_t))} (x y z t) disagrees with the requested nrow "
            f"{' '.join(str(int(n)) for n in nrow)}"
        )
    datatype = _require(entries, "DATATYPE", spath)
    if datatype not in _DATATYPES:
        raise FormatError(
            f"{_key(spath, 'DATATYPE')}: value {datatype!r}, expected "
            f"'4D_SU3_GAUGE_3x3' or '4D_SU3_GAUGE'"
        )
    fp = _require(entries, "FLOATING_POINT", spath)
    if fp not in NERSC_FLOATING_POINT:
        raise FormatError(
            f"{_key(spath, 'FLOATING_POINT')}: value {fp!r} (unknown precision), "
            f"expected one of {', '.join(NERSC_FLOATING_POINT)}"
        )
    return dims_t, datatype, _DATATYPES[datatype], fp, np.dtype(NERSC_FLOATING_POINT[fp])


def _stored_checksum(entries: Mapping[str, str], spath: str) -> int | None:
    if "CHECKSUM" not in entries:
        return None
    try:
        value = int(entries["CHECKSUM"], 16)
    except ValueError:
        value = -1
    if not 0 <= value <= 0xFFFFFFFF:
        raise FormatError(
            f"{_key(spath, 'CHECKSUM')}: value {entries['CHECKSUM']!r}, expected a 32-bit "
            f"hexadecimal number"
        )
    return value


def _check_header_values(u: torch.Tensor, entries: Mapping[str, str], info: GaugeInfo, *,
                         rows: int, header_tol: float | None, verify: bool) -> None:
    """Compare the header PLAQUETTE and LINK_TRACE with the data (before re-unitarisation):
    :class:`ChecksumError` beyond the tolerance (:func:`header_tolerance` unless
    ``header_tol``), naming the key, both values and the tolerance."""
    m = mesplq(u)
    # the data as held: a 64-bit file read into complex64 is checked to 32-bit precision
    held = min(info.precision, 32 if u.dtype == torch.complex64 else 64)
    computed = {"PLAQUETTE": float(m.w_plaq[0]), "LINK_TRACE": float(m.link[0])}
    violation = None
    if rows != NC:  # the mean, which one corrupt link cannot inflate as it would the maximum
        links = torch.view_as_real(u.permute(0, 2, 3, 4, 5, 1, 6, 7).contiguous()).numpy()
        violation = float(_unitarity_violation(links.reshape(-1, NC, NC, 2)).mean())
    for key, value in computed.items():
        found = _header_value(entries, key, info.path)
        if found is None:
            if verify:
                warnings.warn(f"{_key(info.path, key)}: missing; not verified", FormatWarning,
                              stacklevel=3)
            continue
        stored, text = found
        terms = math.prod(info.nrow) * (ND if key == "LINK_TRACE" else ND * (ND - 1) // 2)
        tol = (header_tolerance(text, held, terms, violation) if header_tol is None
               else float(header_tol))
        ok = abs(stored - value) <= tol
        info.header_checks[key] = {"stored": stored, "computed": value, "ok": ok,
                                   "tolerance": tol}
        if verify and not ok:
            how = ("" if header_tol is not None else
                   f" for {text!r} printed to {_decimals(text)} and {held}-bit data"
                   + (" stored as two rows" if violation else ""))
            raise ChecksumError(
                f"{_key(info.path, key)}: stored {stored!r}, computed {value!r} from the "
                f"data (difference {abs(stored - value):.3g}, expected <= {tol:.3g}{how}); "
                f"the header or the binary data are corrupt (header_tol=... accepts more)"
            )


def read_nersc(
    path: str | os.PathLike[str],
    *,
    nrow: Sequence[int] | None = None,
    reunitarize: bool = False,
    verify: bool = True,
    check_unitarity: bool = True,
    unitarity_tol: float | None = None,
    header_tol: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> tuple[torch.Tensor, GaugeInfo]:
    """Read a NERSC file; returns ``(U[1, 4, Lt, Lz, Ly, Lx, 3, 3], info)``.

    With ``verify`` the header ``CHECKSUM``, ``PLAQUETTE`` and ``LINK_TRACE`` are compared with
    the data (:class:`ChecksumError` on disagreement; the plaquette and link trace to the
    precision they are printed with, :func:`header_tolerance`, unless ``header_tol`` is given).
    A missing ``CHECKSUM`` is an :class:`IntegrityWarning` (nothing else detects a small change
    of the data), a missing plaquette or link trace a :class:`FormatWarning`.  ``nrow``
    (optional) must agree with ``DIMENSION_1..4``.  ``U`` is a non-contiguous view of the links
    in file order (see :func:`~bridge.io.ildg.stream_read_links`).
    """
    spath = os.fspath(path)
    entries, data_off, size = read_nersc_header(spath)
    dims_t, datatype, rows, fp, file_dtype = _geometry(entries, spath, nrow)
    precision = file_dtype.itemsize * 8
    volume = math.prod(dims_t)  # Python ints: no overflow on absurd headers
    expected = volume * ND * rows * NC * 2 * file_dtype.itemsize
    have = size - data_off
    if have < expected:
        raise FormatError(
            f"{_where(spath, f'binary data at byte {data_off}')}: {have} bytes, expected "
            f"{expected} for lattice {' '.join(map(str, dims_t))} ({datatype}, {fp}) "
            f"(truncated file?)"
        )
    if have > expected:
        warnings.warn(
            f"{_where(spath, f'byte {data_off + expected}')}: ignoring {have - expected} "
            f"trailing bytes after the binary data",
            FormatWarning,
            stacklevel=2,
        )
    stored_ck = _stored_checksum(entries, spath)
    word = np.dtype(file_dtype.byteorder + "u4")
    total = 0

    def add(raw: np.ndarray, _first: int) -> None:
        nonlocal total
        total = (total + int(raw.reshape(-1).view(word).sum(dtype=np.uint64))) & 0xFFFFFFFF

    tol = None
    if check_unitarity:
        tol = default_unitarity_tol(precision) if unitarity_tol is None else float(unitarity_tol)
    with open(spath, "rb") as f:
        f.seek(data_off)
        u, links = stream_read_links(
            f,
            nrow=dims_t,
            file_dtype=file_dtype,
            rows=rows,
            where=_where(spath, f"binary data at byte {data_off}"),
            dtype=dtype,
            on_chunk=add,
            unitarity_tol=tol,
            reunitarize=False,
            chunk_bytes=chunk_bytes,
        )
    info = GaugeInfo(
        path=spath,
        format="nersc",
        variant="3x3" if rows == 3 else "3x2",
        nrow=dims_t,
        precision=precision,
        endianness="big" if file_dtype.byteorder == ">" else "little",
        checksum_computed={"nersc": f"{total:x}"},
        metadata=dict(entries),
        max_unitarity_violation=links.worst,
    )
    if stored_ck is None:
        info.checksum = "absent"
        if verify:
            warnings.warn(
                f"{_where(spath, 'header')}: no CHECKSUM entry; the binary data at byte "
                f"{data_off} cannot be verified (integrity unknown)",
                IntegrityWarning,
                stacklevel=2,
            )
    else:
        info.checksum_stored = {"nersc": f"{stored_ck:x}"}
        info.checksum = "ok" if stored_ck == total else "mismatch"
        if verify and stored_ck != total:
            raise ChecksumError(
                f"{_key(spath, 'CHECKSUM')}: stored {stored_ck:08x}, computed "
                f"{total:08x} over the binary data at byte {data_off} (corrupt data)"
            )
    links.raise_if_bad()
    _check_header_values(u, entries, info, rows=rows, header_tol=header_tol, verify=verify)
    if reunitarize:
        flat = u[0].reshape(ND, -1, NC, NC)
        step = max(1, chunk_bytes // (ND * NC * NC * 16))
        for s in range(0, flat.shape[1], step):
            flat[:, s : s + step] = _reunitarize(flat[:, s : s + step])
        info.reunitarized = True
    if device is not None:
        u = u.to(device)
    return u, info


def _format_float(x: float, precision: int) -> str:
    return f"{x:.10f}" if precision == 32 else f"{x:.15f}"


def write_nersc(
    path: str | os.PathLike[str],
    u: torch.Tensor,
    *,
    precision: int = 64,
    storage: str = "3x3",
    ensemble_id: str = "qcd-bridge",
    ensemble_label: str = "qcd-bridge",
    sequence_number: int = 0,
    creator: str = "qcd-bridge",
    boundary: Sequence[str] = ("PERIODIC",) * ND,
    header: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> GaugeInfo:
    """Write ``U`` as a NERSC file, big-endian (``IEEE32BIG`` / ``IEEE64BIG``), ``storage``
    ``"3x3"`` (``4D_SU3_GAUGE_3x3``) or ``"3x2"`` (``4D_SU3_GAUGE``), with the QDP++ key order;
    ``header`` adds or replaces entries.  Crash-safe; returns the written file's info."""
    precision = _check_precision(precision)
    if storage not in ("3x3", "3x2"):
        raise ValueError(f"storage: expected '3x3' or '3x2', got {storage!r}")
    u = as_gauge_field(u)
    lat = Lattice.of(u)
    if len(boundary) != ND or any(b not in ("PERIODIC", "ANTIPERIODIC") for b in boundary):
        raise ValueError(
            f"boundary: expected 4 entries 'PERIODIC' or 'ANTIPERIODIC', got {tuple(boundary)}"
        )
    rows = 3 if storage == "3x3" else 2
    file_dtype = np.dtype(">f4" if precision == 32 else ">f8")
    word = np.dtype(">u4")
    total = 0

    def add(raw: np.ndarray, _first: int) -> None:
        nonlocal total
        total = (total + int(raw.reshape(-1).view(word).sum(dtype=np.uint64))) & 0xFFFFFFFF

    stream_write_links(None, u, file_dtype=file_dtype, rows=rows, on_chunk=add,
                       chunk_bytes=chunk_bytes)
    m = mesplq(u)
    now = time.asctime()
    entries: dict[str, str] = {
        "CHECKSUM": f"{total:x}",
        "LINK_TRACE": _format_float(float(m.link[0]), precision),
        "PLAQUETTE": _format_float(float(m.w_plaq[0]), precision),
        "DATATYPE": "4D_SU3_GAUGE_3x3" if rows == 3 else "4D_SU3_GAUGE",
        "HDR_VERSION": "1.0",
        "STORAGE_FORMAT": "1.0",
    }
    for i, n in enumerate(lat.nrow, start=1):
        entries[f"DIMENSION_{i}"] = str(n)
    for i, b in enumerate(boundary, start=1):
        entries[f"BOUNDARY_{i}"] = b
    entries.update(
        {
            "ENSEMBLE_ID": ensemble_id,
            "ENSEMBLE_LABEL": ensemble_label,
            "SEQUENCE_NUMBER": str(int(sequence_number)),
            "CREATOR": creator,
            "CREATOR_HARDWARE": f"{platform.machine()}-{platform.system()}",
            "CREATION_DATE": now,
            "ARCHIVE_DATE": now,
            "FLOATING_POINT": "IEEE32BIG" if precision == 32 else "IEEE64BIG",
        }
    )
    protected = {"CHECKSUM", "LINK_TRACE", "PLAQUETTE", "DATATYPE", "FLOATING_POINT"} | {
        f"DIMENSION_{i}" for i in range(1, ND + 1)
    }
    for key, value in (header or {}).items():
        text = str(value)
        if key in protected:
            raise ValueError(f"header: {key!r} is computed by the writer and cannot be set")
        if not key or "=" in key or any(c in key + text for c in "\r\n") or key != key.strip():
            raise ValueError(
                f"header: entry {key!r} = {text!r} is not a valid 'KEY = VALUE' line"
            )
        entries[key] = text
    for key, value in entries.items():
        if any(c in value for c in "\r\n"):
            raise ValueError(f"{key}: value {value!r} contains a newline")
    head = "BEGIN_HEADER\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()) + "END_HEADER\n"
    try:
        head_bytes = head.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header: NERSC headers are ASCII, got {exc.object[exc.start:exc.end]!r}"
                         ) from None
    spath = os.fspath(path)
    with atomic_output(spath, overwrite=overwrite) as fh:
        fh.write(head_bytes)
        stream_write_links(fh, u, file_dtype=file_dtype, rows=rows, chunk_bytes=chunk_bytes)
    return GaugeInfo(
        path=spath,
        format="nersc",
        variant=storage,
        nrow=lat.nrow,
        precision=precision,
        checksum="ok",
        checksum_stored={"nersc": f"{total:x}"},
        checksum_computed={"nersc": f"{total:x}"},
        metadata=entries,
    )
