"""MILC binary gauge fields (the pre-QIO MILC format, "version 5").

Facts (docs/formats.md 2.6, "MILC binary format", checked on ``lat.sample.l4444``; the same
configuration as the MILC/QIO ILDG sample, links identical):

* header, 96 bytes, in the file's byte order::

      int32   magic 20103 (its byte order gives the file's endianness)
      int32   dims[4]        nx ny nz nt
      char    time_stamp[64]
      int32   order          0 = natural (lexicographic) order; other values not supported
      uint32  sum29, sum31   checksums

* data: float32, sites with x fastest, then 4 row-major 3x3 complex matrices (x, y, z, t);
* checksum: for every 32-bit word of the data (numeric value in file byte order) with global
  word index ``i``: ``sum29 ^= rotl32(word, i % 29)``, ``sum31 ^= rotl32(word, i % 31)`` (no CRC).
"""

from __future__ import annotations

import math
import os
import struct
import time
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from ..errors import ChecksumError, FormatError
from ..lattice import Lattice
from .ildg import (
    DEFAULT_CHUNK_BYTES,
    ND,
    READ_CHUNK_BYTES,
    REALS_PER_LINK,
    GaugeInfo,
    ResidueXor,
    _rotl32,
    as_gauge_field,
    default_unitarity_tol,
    stream_read_links,
    stream_write_links,
)
from .lime import FormatWarning, atomic_output

__all__ = ["MILC_MAGIC", "read_milc", "write_milc", "read_milc_header", "MilcChecksum"]

MILC_MAGIC = 20103
HEADER_BYTES = 96
_WORDS_PER_SITE = ND * REALS_PER_LINK  # 72 float32 words


class MilcChecksum:
    """MILC's ``sum29`` / ``sum31``, accumulated chunk by chunk and vectorised: the words with
    ``i % 29 = k`` are XORed first (:class:`~bridge.io.ildg.ResidueXor`), then rotated once."""

    def __init__(self, byteorder: str) -> None:
        self._word = np.dtype(byteorder + "u4")
        self._xor = ResidueXor(1, np.uint32)

    def update(self, raw: np.ndarray, first_site: int) -> None:
        """Add the raw bytes of whole sites starting at site ``first_site``."""
        words = raw.reshape(-1).view(self._word).astype(np.uint32).reshape(-1, 1)
        self._xor.update(words, first_site * _WORDS_PER_SITE)

    def digest(self) -> tuple[int, int]:
        """``(sum29, sum31)``."""
        out = []
        for modulus in (29, 31):
            xs = self._xor.classes(modulus)[:, 0]
            total = 0
            for k in range(modulus):
                total ^= _rotl32(int(xs[k]), k)
            out.append(total)
        return out[0], out[1]


def read_milc_header(path: str | os.PathLike[str]) -> tuple[dict[str, object], str, int]:
    """``(header, byteorder '<' or '>', file size)``; the byte order is the one in which the
    magic number reads 20103."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(HEADER_BYTES)
    except OSError as exc:
        raise FormatError(f"file '{spath}': cannot read: {exc.strerror}") from exc
    if len(head) < 4:
        raise FormatError(
            f"file '{spath}', MILC header: {len(head)} bytes, expected {HEADER_BYTES} "
            f"(truncated file)"
        )
    for order in (">", "<"):
        if struct.unpack(order + "i", head[:4])[0] == MILC_MAGIC:
            break
    else:
        raise FormatError(
            f"file '{spath}', MILC header (byte 0): magic {head[:4].hex()}, expected "
            f"{MILC_MAGIC} in either byte order (wrong magic: not a MILC file)"
        )
    if len(head) < HEADER_BYTES:
        raise FormatError(
            f"file '{spath}', MILC header: {len(head)} bytes, expected {HEADER_BYTES} "
            f"(truncated file)"
        )
    dims = struct.unpack(order + "4i", head[4:20])
    stamp = head[20:84].split(b"\0", 1)[0].decode("latin-1")
    site_order, sum29, sum31 = struct.unpack(order + "iII", head[84:96])
    header = {"dims": dims, "time_stamp": stamp, "order": site_order, "sum29": sum29,
              "sum31": sum31}
    return header, order, size


def read_milc(
    path: str | os.PathLike[str],
    *,
    nrow: Sequence[int] | None = None,
    reunitarize: bool = False,
    verify: bool = True,
    check_unitarity: bool = True,
    unitarity_tol: float | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
    chunk_bytes: int = READ_CHUNK_BYTES,
) -> tuple[torch.Tensor, GaugeInfo]:
    """Read a MILC binary file; returns ``(U[1, 4, Lt, Lz, Ly, Lx, 3, 3], info)``.  With
    ``verify`` a ``sum29``/``sum31`` mismatch is a :class:`ChecksumError`."""
    spath = os.fspath(path)
    header, order, size = read_milc_header(spath)
    dims: tuple[int, ...] = tuple(header["dims"])  # type: ignore[arg-type]
    if any(d <= 0 for d in dims):
        raise FormatError(
            f"file '{spath}', MILC header dims (bytes 4-19): {' '.join(map(str, dims))}, "
            f"expected 4 positive extents (nx ny nz nt)"
        )
    if nrow is not None and tuple(int(n) for n in nrow) != dims:
        raise FormatError(
            f"file '{spath}', MILC header dims (bytes 4-19): lattice "
            f"{' '.join(map(str, dims))} (x y z t) disagrees with the requested nrow "
            f"{' '.join(str(int(n)) for n in nrow)}"
        )
    if header["order"] != 0:
        raise FormatError(
            f"file '{spath}', MILC header order (bytes 84-87): {header['order']}, expected 0 "
            f"(natural site order; other orders are not supported)"
        )
    volume = math.prod(dims)  # Python ints: no overflow on absurd headers
    expected = volume * _WORDS_PER_SITE * 4
    have = size - HEADER_BYTES
    if have < expected:
        raise FormatError(
            f"file '{spath}', binary data at byte {HEADER_BYTES}: {have} bytes, expected "
            f"{expected} for lattice {' '.join(map(str, dims))} in single precision "
            f"(truncated file?)"
        )
    if have > expected:
        warnings.warn(
            f"file '{spath}', byte {HEADER_BYTES + expected}: ignoring {have - expected} "
            f"trailing bytes after the binary data",
            FormatWarning,
            stacklevel=2,
        )
    ck = MilcChecksum(order)
    tol = None
    if check_unitarity:
        tol = default_unitarity_tol(32) if unitarity_tol is None else float(unitarity_tol)
    with open(spath, "rb") as f:
        f.seek(HEADER_BYTES)
        u, links = stream_read_links(
            f,
            nrow=dims,
            file_dtype=np.dtype(order + "f4"),
            rows=3,
            where=f"file '{spath}', binary data at byte {HEADER_BYTES}",
            dtype=dtype,
            on_chunk=ck.update,
            unitarity_tol=tol,
            reunitarize=reunitarize,
            chunk_bytes=chunk_bytes,
        )
    s29, s31 = ck.digest()
    stored = (int(header["sum29"]), int(header["sum31"]))  # type: ignore[call-overload]
    info = GaugeInfo(
        path=spath,
        format="milc",
        variant="binary",
        nrow=dims,
        precision=32,
        endianness="big" if order == ">" else "little",
        checksum="ok" if stored == (s29, s31) else "mismatch",
        checksum_stored={"sum29": f"{stored[0]:x}", "sum31": f"{stored[1]:x}"},
        checksum_computed={"sum29": f"{s29:x}", "sum31": f"{s31:x}"},
        metadata={k: (list(v) if isinstance(v, tuple) else v) for k, v in header.items()},
        max_unitarity_violation=links.worst,
        reunitarized=reunitarize,
    )
    if verify and info.checksum == "mismatch":
        raise ChecksumError(
            f"file '{spath}', MILC header sum29/sum31 (bytes 88-95): stored {stored[0]:08x} "
            f"{stored[1]:08x}, computed {s29:08x} {s31:08x} over the binary data at byte "
            f"{HEADER_BYTES} (corrupt data)"
        )
    links.raise_if_bad()
    if device is not None:
        u = u.to(device)
    return u, info


def write_milc(
    path: str | os.PathLike[str],
    u: torch.Tensor,
    *,
    byteorder: str = ">",
    time_stamp: str | None = None,
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
) -> GaugeInfo:
    """Write ``U`` as a MILC binary file (single precision, natural order, ``byteorder`` '>'
    or '<'), crash-safely."""
    if byteorder not in ("<", ">"):
        raise ValueError(f"byteorder: expected '<' or '>', got {byteorder!r}")
    u = as_gauge_field(u)
    lat = Lattice.of(u)
    stamp = (time_stamp if time_stamp is not None else time.asctime()).encode("latin-1")
    if len(stamp) > 63:
        raise ValueError(f"time_stamp: expected at most 63 characters, got {len(stamp)}")
    file_dtype = np.dtype(byteorder + "f4")
    ck = MilcChecksum(byteorder)
    stream_write_links(None, u, file_dtype=file_dtype, on_chunk=ck.update,
                       chunk_bytes=chunk_bytes)
    s29, s31 = ck.digest()
    head = (
        struct.pack(byteorder + "5i", MILC_MAGIC, *lat.nrow)
        + stamp.ljust(64, b"\0")
        + struct.pack(byteorder + "iII", 0, s29, s31)
    )
    spath = os.fspath(path)
    with atomic_output(spath, overwrite=overwrite) as fh:
        fh.write(head)
        stream_write_links(fh, u, file_dtype=file_dtype, chunk_bytes=chunk_bytes)
    return GaugeInfo(
        path=spath,
        format="milc",
        variant="binary",
        nrow=lat.nrow,
        precision=32,
        endianness="big" if byteorder == ">" else "little",
        checksum="ok",
        checksum_stored={"sum29": f"{s29:x}", "sum31": f"{s31:x}"},
        checksum_computed={"sum29": f"{s29:x}", "sum31": f"{s31:x}"},
    )
