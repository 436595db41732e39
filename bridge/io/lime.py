"""The LIME container (c-lime) and the crash-safe output files shared by every writer.

A LIME file is a plain concatenation of records; there is no file header and no terminator.
Each record is a 144-byte header followed by the data and 0-7 NUL bytes of padding
(docs/formats.md, section 1).  Facts and their sources in c-lime:

* header layout, all integers big-endian (``include/lime_binary_header.h``, ``MAX_HDR64 18``;
  ``lib/lime_writer.c: write_lime_record_binary_header()``; ``lib/lime_reader.c:
  readAndParseHeader()``; ``doc/lime_1p2.tex``, appendix "Binary LIME format")::

      bytes 0-3     magic 0x456789AB (LIME_MAGIC_NO), uint32
      bytes 4-5     LIME version, uint16, = 1 (LIME_VERSION)
      byte  6       flags: MB = 0x80 (message begin), ME = 0x40 (message end)  (lime_defs.h)
      byte  7       reserved, 0
      bytes 8-15    data length in bytes, padding excluded, uint64
      bytes 16-143  record type, ASCII, NUL-padded, at most 127 characters (byte 143 is NUL)

* padding ``(8 - n % 8) % 8`` NUL bytes (``lib/lime_utils.c: lime_padding()``; written by
  ``limeWriterCloseRecord()``); the next header starts at ``offset + 144 + n + pad``;
* end of file: fewer than 144 bytes left is end of file (``readAndParseHeader`` returns
  ``LIME_EOF``), so short trailing junk is tolerated;
* messages: a run of records whose first has MB and whose last has ME.  The writer enforces
  it (``limeWriteRecordHeader()`` returns ``LIME_ERR_MBME``), the reader does not (the check is
  commented out in ``readAndParseHeader``) and real tmLQCD files break it, so this reader
  never enforces it while :class:`LimeWriter` always does;
* QIO writes every XML/string record as ``strlen + 1`` bytes, the terminating NUL included
  (``QIO_utils.c: QIO_write_string``); tmLQCD writes no NUL and pretty-prints.  Readers strip
  trailing NULs and whitespace before parsing (:func:`parse_xml`).

Reading is tolerant where real files are sloppy (MB/ME structure, NUL/whitespace around XML,
short trailing bytes, non-LIME trailing bytes after the last record, padding missing at the
very end); writing is strict.  Every error is a :class:`~bridge.errors.FormatError` whose
message names the file, the record (index, type, byte offset), the value found and what was
expected.

This module also holds the atomic output files used by all writers of :mod:`bridge.io`
(:func:`atomic_output`, :func:`atomic_path`): data go to a temporary file in the destination
directory, which is flushed, fsync'ed and only then renamed onto the final name, so an
interrupted write never leaves a truncated file under the final name.
"""

from __future__ import annotations

import contextlib
import os
import struct
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from lxml import etree

from ..errors import FormatError

__all__ = [
    "LIME_MAGIC",
    "LIME_VERSION",
    "HEADER_BYTES",
    "MB_FLAG",
    "ME_FLAG",
    "FormatWarning",
    "IntegrityWarning",
    "LimeRecord",
    "LimeReader",
    "LimeWriter",
    "lime_padding",
    "pack_header",
    "scan_records",
    "parse_xml",
    "xml_text",
    "atomic_output",
    "atomic_path",
    "check_output_path",
    "read_exact_into",
]

LIME_MAGIC = 0x456789AB  # LIME_MAGIC_NO, include/lime_defs.h
LIME_VERSION = 1  # LIME_VERSION, include/lime_defs.h
HEADER_BYTES = 144  # MAX_HDR64 = 18 64-bit words, include/lime_binary_header.h
MB_FLAG = 0x80  # MB_MASK (byte 6), include/lime_defs.h
ME_FLAG = 0x40  # ME_MASK (byte 6)
TYPE_BYTES = 128  # bytes 16..143; the writer forces byte 143 to NUL
_HEADER_STRUCT = struct.Struct(">IHBBQ")  # magic, version, flags, reserved, data length
_MAX_XML_BYTES = 64 * 1024 * 1024  # refuse to parse absurdly large "XML" records


class FormatWarning(UserWarning):
    """A file is readable but sloppy (trailing bytes, missing checksum, recovered XML, ...)."""


class IntegrityWarning(FormatWarning):
    """A file was read but its binary data could not be verified (no checksum stored, or the
    stored one could not be found): the links may differ from what was written."""


def lime_padding(nbytes: int) -> int:
    """NUL bytes after ``nbytes`` of data: ``(8 - n % 8) % 8`` (``lib/lime_utils.c``)."""
    return (8 - nbytes % 8) % 8


def _where(path: str | os.PathLike[str], index: int | None = None, rtype: str | None = None,
           offset: int | None = None) -> str:
    """``"file 'x', record 3 'ildg-binary-data' at byte 1608"`` for error messages."""
    text = f"file '{os.fspath(path)}'"
    if index is not None:
        text += f", record {index}"
        if rtype is not None:
            text += f" '{rtype}'"
        if offset is not None:
            text += f" (header at byte {offset})"
    elif offset is not None:
        text += f", byte {offset}"
    return text


@dataclass(frozen=True)
class LimeRecord:
    """One record of a LIME file as found by :func:`scan_records`."""

    index: int
    type: str
    header_offset: int
    data_offset: int
    nbytes: int
    mb: bool
    me: bool
    path: str = ""

    @property
    def end(self) -> int:
        """Offset of the byte after the data (padding excluded)."""
        return self.data_offset + self.nbytes

    def where(self) -> str:
        """Location string for error messages: file, record index, type and offset."""
        return _where(self.path, self.index, self.type, self.header_offset)

    def as_dict(self) -> dict[str, object]:
        """JSON-friendly description."""
        return {
            "index": self.index,
            "type": self.type,
            "offset": self.header_offset,
            "data_offset": self.data_offset,
            "nbytes": self.nbytes,
            "mb": self.mb,
            "me": self.me,
        }


def pack_header(rtype: str, nbytes: int, *, mb: bool, me: bool) -> bytes:
    """The 144-byte header of a record (strict: ASCII type of 1..127 characters, no NUL)."""
    if not isinstance(rtype, str) or not rtype:
        raise ValueError(f"LIME record type: expected a non-empty string, got {rtype!r}")
    try:
        raw = rtype.encode("ascii")
    except UnicodeEncodeError as exc:
        raise ValueError(f"LIME record type: expected ASCII, got {rtype!r}") from exc
    if len(raw) > TYPE_BYTES - 1 or b"\0" in raw:
        raise ValueError(
            f"LIME record type: expected at most {TYPE_BYTES - 1} ASCII characters without "
            f"NUL (lime_writer.c forces byte 143 to NUL), got {len(raw)}: {rtype!r}"
        )
    if int(nbytes) != nbytes or nbytes < 0:
        raise ValueError(f"LIME record '{rtype}': expected a length >= 0, got {nbytes!r}")
    flags = (MB_FLAG if mb else 0) | (ME_FLAG if me else 0)
    return _HEADER_STRUCT.pack(LIME_MAGIC, LIME_VERSION, flags, 0, int(nbytes)) + raw.ljust(
        TYPE_BYTES, b"\0"
    )


def _is_blank(data: bytes) -> bool:
    return not data.strip(b"\0 \t\r\n")


_SHIFT_WINDOW = 256  # bytes searched on either side for a header that moved


def _shifted_header(f: BinaryIO, off: int, lo: int, size: int) -> int | None:
    """Offset of a LIME header start (magic and version 1) within :data:`_SHIFT_WINDOW` bytes
    of ``off`` (not before ``lo``), other than ``off`` itself, or ``None``: a record that
    follows after inserted or deleted bytes."""
    start = max(lo, off - _SHIFT_WINDOW)
    f.seek(start)
    window = f.read(min(size, off + _SHIFT_WINDOW + 6) - start)
    token = _HEADER_STRUCT.pack(LIME_MAGIC, LIME_VERSION, 0, 0, 0)[:6]
    best = None
    pos = window.find(token)
    while pos >= 0:
        if start + pos != off and (best is None or abs(start + pos - off) < abs(best - off)):
            best = start + pos
        pos = window.find(token, pos + 1)
    return best


def scan_records(f: BinaryIO, path: str | os.PathLike[str], size: int | None = None
                 ) -> list[LimeRecord]:
    """Index every record of an open LIME file (headers only; data are not read).

    Tolerant as ``lib/lime_reader.c`` is: MB/ME are not checked; fewer than 144 bytes after the
    last record are end of file (a warning if they are not blank; an error if they start with
    the LIME magic: a record header cut short); bytes without the LIME magic
    after at least one record are ignored with a :class:`FormatWarning`; padding missing at the
    very end of the file is accepted.  Errors (:class:`FormatError`): no magic at byte 0, a
    version other than 1 (c-lime exits on it), data running past the end of the file, and a
    header a few bytes away from where the next record should start (bytes inserted into or
    deleted from the previous record: ignoring it would hide, e.g., the checksum record).
    """
    spath = os.fspath(path)
    if size is None:
        f.seek(0, os.SEEK_END)
        size = f.tell()
    records: list[LimeRecord] = []
    off = 0
    while True:
        if size - off < HEADER_BYTES:
            if off < size:
                f.seek(off)
                rest = f.read(size - off)
                if not records:
                    raise FormatError(
                        f"{_where(spath, 0, None, 0)}: file has {size} bytes, expected at least "
                        f"one {HEADER_BYTES}-byte LIME header (truncated or not a LIME file)"
                    )
                if rest[:4] == LIME_MAGIC.to_bytes(4, "big")[: len(rest)]:  # also 1-3 bytes of it
                    raise FormatError(
                        f"{_where(spath, len(records), None, off)}: truncated LIME record "
                        f"header: {size - off} of {HEADER_BYTES} bytes after the last complete "
                        f"record (the file was cut short)"
                    )
                if not _is_blank(rest):
                    warnings.warn(
                        f"{_where(spath, offset=off)}: ignoring {size - off} trailing bytes "
                        f"after the last LIME record (fewer than {HEADER_BYTES}, c-lime's "
                        f"LIME_EOF)",
                        FormatWarning,
                        stacklevel=3,
                    )
            elif not records:
                raise FormatError(f"{_where(spath)}: empty file, expected LIME records")
            return records
        f.seek(off)
        head = f.read(HEADER_BYTES)
        if len(head) != HEADER_BYTES:
            raise FormatError(
                f"{_where(spath, len(records), None, off)}: could read only {len(head)} of "
                f"{HEADER_BYTES} header bytes"
            )
        magic, version, flags, _reserved, nbytes = _HEADER_STRUCT.unpack_from(head)
        if magic != LIME_MAGIC:
            if not records:
                raise FormatError(
                    f"{_where(spath, 0, None, 0)}: wrong magic 0x{magic:08x}, expected LIME "
                    f"magic 0x{LIME_MAGIC:08x} (not a LIME file)"
                )
            moved = _shifted_header(f, off, records[-1].data_offset, size)
            if moved is not None:
                prev = records[-1]
                raise FormatError(
                    f"{_where(spath, len(records), None, off)}: no LIME header here, but one "
                    f"at byte {moved} ({moved - off:+d} bytes): bytes were inserted into or "
                    f"deleted from record {prev.index} '{prev.type}' (header at byte "
                    f"{prev.header_offset}) (corrupt file)"
                )
            f.seek(off)
            rest = f.read(min(size - off, 1 << 16))
            if not _is_blank(rest):
                warnings.warn(
                    f"{_where(spath, len(records), None, off)}: ignoring {size - off} trailing "
                    f"bytes after the last LIME record: magic 0x{magic:08x}, expected "
                    f"0x{LIME_MAGIC:08x}",
                    FormatWarning,
                    stacklevel=3,
                )
            return records
        rtype = head[16:HEADER_BYTES].split(b"\0", 1)[0].decode("latin-1")
        where = _where(spath, len(records), rtype, off)
        if version != LIME_VERSION:
            raise FormatError(
                f"{where}: LIME version {version}, expected {LIME_VERSION} "
                f"(c-lime refuses other versions)"
            )
        data_off = off + HEADER_BYTES
        if nbytes > size - data_off:
            raise FormatError(
                f"{where}: data length {nbytes} bytes, but only {size - data_off} bytes remain "
                f"in the file of {size} bytes (truncated file?)"
            )
        records.append(
            LimeRecord(
                index=len(records),
                type=rtype,
                header_offset=off,
                data_offset=data_off,
                nbytes=int(nbytes),
                mb=bool(flags & MB_FLAG),
                me=bool(flags & ME_FLAG),
                path=spath,
            )
        )
        off = data_off + nbytes + lime_padding(nbytes)
        if off > size:  # padding missing at the very end: the data are complete
            return records


def read_exact_into(f: BinaryIO, buf: memoryview | np.ndarray, where: str) -> None:
    """Fill ``buf`` from ``f`` (``readinto`` in a loop); :class:`FormatError` on a short read."""
    view = memoryview(buf).cast("B")
    total = len(view)
    got = 0
    while got < total:
        n = f.readinto(view[got:])
        if not n:
            raise FormatError(
                f"{where}: could read only {got} of {total} bytes (truncated file?)"
            )
        got += n


def _strip_xml_bytes(data: bytes) -> bytes:
    # QIO appends a NUL (QIO_write_string); tmLQCD pretty-prints and writes none.
    return data.split(b"\0", 1)[0].strip()


def _valid_name(part: str) -> bool:
    try:
        etree.QName(part)
    except ValueError:
        return False
    return True


def _tag_error(root: etree._Element) -> str | None:
    """The first element name of a recovered tree that is not a valid XML name (lxml's
    recovering parser keeps names such as ``':recision'``, on which ``etree.QName`` raises), or
    ``None``.  A name with an undeclared prefix (``'ildg:precision'``) is valid: it is matched
    by its local part."""
    for el in root.iter():
        if isinstance(el.tag, str):
            parts = _localname(el.tag, prefixed=True).split(":")
            if len(parts) > 2 or not all(_valid_name(p) for p in parts):
                return f"invalid element name {_localname(el.tag, prefixed=True)!r}"
    return None


def parse_xml(data: bytes, where: str) -> etree._Element:
    """Parse the XML of a record: everything from the first NUL on is dropped, surrounding
    whitespace stripped.  Malformed XML is recovered if lxml can (with a
    :class:`FormatWarning`), otherwise :class:`FormatError` naming ``where``; so is a recovered
    tree with invalid element names.  No lxml exception escapes."""
    text = _strip_xml_bytes(data)
    if not text:
        raise FormatError(f"{where}: empty XML record, expected an XML document")
    parser = etree.XMLParser(resolve_entities=False, no_network=True, huge_tree=False)
    try:
        return etree.fromstring(text, parser=parser)
    except (etree.LxmlError, ValueError) as exc:
        first_error = exc
    recover = etree.XMLParser(resolve_entities=False, no_network=True, recover=True)
    try:
        root = etree.fromstring(text, parser=recover)
    except (etree.LxmlError, ValueError):
        root = None
    if root is None:
        raise FormatError(f"{where}: malformed XML ({first_error}), expected an XML document")
    bad = _tag_error(root)
    if bad is not None:
        raise FormatError(
            f"{where}: malformed XML ({first_error}); lxml's recovered tree has an {bad}, "
            f"expected a well-formed XML document"
        )
    warnings.warn(
        f"{where}: malformed XML ({first_error}); using lxml's recovered tree",
        FormatWarning,
        stacklevel=2,
    )
    return root


def _localname(tag: str, *, prefixed: bool = False) -> str:
    """``'{namespace}prefix:name'`` -> ``'name'`` (``'prefix:name'`` with ``prefixed``); plain
    string work, so no lxml name validation can raise."""
    name = tag.rpartition("}")[2]
    return name if prefixed else name.rpartition(":")[2]


def xml_text(root: etree._Element, tag: str, where: str = "XML record") -> str | None:
    """Stripped text of the first element with local name ``tag`` (namespace-agnostic, as
    tmLQCD's and QIO's ``ildgFormat`` differ in namespace and whitespace), or ``None``.
    Any lxml error while walking the tree is a :class:`FormatError` naming ``where``."""
    try:
        for el in root.iter():
            if isinstance(el.tag, str) and _localname(el.tag) == tag:
                return (el.text or "").strip()
    except (etree.LxmlError, ValueError) as exc:
        raise FormatError(
            f"{where}: cannot read <{tag}> from the XML ({type(exc).__name__}: {exc}), "
            f"expected a well-formed XML document"
        ) from None
    return None


class LimeReader:
    """Random access to the records of a LIME file.

    ``with LimeReader(path) as r: r.records, r.first("ildg-format"), r.read_bytes(rec)``.
    Binary data are read straight into caller-provided arrays (:meth:`read_into`) or in chunks
    (:meth:`seek_data`) so that large fields are never copied twice.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            self._f: BinaryIO = open(self.path, "rb")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise FormatError(f"{_where(self.path)}: cannot open: {exc.strerror}") from exc
        try:
            self.size = os.fstat(self._f.fileno()).st_size
            self.records = scan_records(self._f, self.path, self.size)
        except BaseException:
            self._f.close()
            raise

    # -- context manager ------------------------------------------------------------------
    def close(self) -> None:
        """Close the file."""
        self._f.close()

    def __enter__(self) -> LimeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def file(self) -> BinaryIO:
        """The underlying binary file object (for streamed reads after :meth:`seek_data`)."""
        return self._f

    # -- lookup -------------------------------------------------------------------------------
    def find(self, rtype: str) -> list[LimeRecord]:
        """All records of type ``rtype``, in file order."""
        return [r for r in self.records if r.type == rtype]

    def first(self, rtype: str, after: int = -1) -> LimeRecord | None:
        """The first record of type ``rtype`` with index greater than ``after``, or ``None``."""
        for r in self.records:
            if r.index > after and r.type == rtype:
                return r
        return None

    # -- reading ------------------------------------------------------------------------------
    def read_bytes(self, rec: LimeRecord, limit: int | None = None) -> bytes:
        """The data of a record (at most ``limit`` bytes)."""
        n = rec.nbytes if limit is None else min(rec.nbytes, limit)
        self._f.seek(rec.data_offset)
        data = self._f.read(n)
        if len(data) != n:
            raise FormatError(f"{rec.where()}: could read only {len(data)} of {n} bytes")
        return data

    def read_text(self, rec: LimeRecord) -> str:
        """A string record: trailing NUL and surrounding whitespace removed, UTF-8 (invalid
        bytes replaced)."""
        if rec.nbytes > _MAX_XML_BYTES:
            raise FormatError(
                f"{rec.where()}: {rec.nbytes} bytes, expected a text record of at most "
                f"{_MAX_XML_BYTES} bytes"
            )
        return _strip_xml_bytes(self.read_bytes(rec)).decode("utf-8", errors="replace")

    def read_raw_text(self, rec: LimeRecord) -> str:
        """A string record exactly as stored up to its first NUL (for byte-exact rewrites)."""
        if rec.nbytes > _MAX_XML_BYTES:
            raise FormatError(
                f"{rec.where()}: {rec.nbytes} bytes, expected a text record of at most "
                f"{_MAX_XML_BYTES} bytes"
            )
        return self.read_bytes(rec).split(b"\0", 1)[0].decode("utf-8", errors="replace")

    def read_xml(self, rec: LimeRecord) -> etree._Element:
        """Parse an XML record (see :func:`parse_xml`)."""
        if rec.nbytes > _MAX_XML_BYTES:
            raise FormatError(
                f"{rec.where()}: {rec.nbytes} bytes, expected an XML record of at most "
                f"{_MAX_XML_BYTES} bytes"
            )
        return parse_xml(self.read_bytes(rec), rec.where())

    def read_into(self, rec: LimeRecord, out: np.ndarray, offset: int = 0) -> None:
        """Fill the C-contiguous array ``out`` with data bytes ``offset .. offset+out.nbytes``
        of the record (one ``readinto``, no intermediate copy)."""
        if not out.flags.c_contiguous:
            raise ValueError("out: expected a C-contiguous array")
        if offset < 0 or offset + out.nbytes > rec.nbytes:
            raise FormatError(
                f"{rec.where()}: asked for bytes {offset}..{offset + out.nbytes} of a record "
                f"of {rec.nbytes} bytes"
            )
        self._f.seek(rec.data_offset + offset)
        read_exact_into(self._f, out.reshape(-1).view(np.uint8), rec.where())

    def seek_data(self, rec: LimeRecord, offset: int = 0) -> BinaryIO:
        """Position the file at data byte ``offset`` of ``rec`` and return the file object."""
        self._f.seek(rec.data_offset + offset)
        return self._f


class LimeWriter:
    """Strict LIME writer on an open binary file.

    Enforces what ``lib/lime_writer.c`` enforces: the MB/ME sequence (a record's MB must equal
    the previous record's ME, ``LIME_ERR_MBME``), type strings of at most 127 ASCII
    characters, the declared data length, and NUL padding to 8 bytes.  Large records are
    streamed: :meth:`begin_record` with the final length, :meth:`write` chunks, :meth:`end_record`.
    """

    def __init__(self, f: BinaryIO, path: str | os.PathLike[str] = "<stream>") -> None:
        self._f = f
        self.path = os.fspath(path)
        self._prev_me: bool | None = None
        self._open: tuple[str, int] | None = None
        self._written = 0
        self.count = 0

    def begin_record(self, rtype: str, nbytes: int, *, mb: bool, me: bool) -> None:
        """Write the header of a record of ``nbytes`` data bytes."""
        if self._open is not None:
            raise RuntimeError(
                f"{_where(self.path, self.count, self._open[0])}: record still open "
                f"({self._written} of {self._open[1]} bytes written)"
            )
        if self._prev_me is not None and self._prev_me != mb:
            raise ValueError(
                f"{_where(self.path, self.count, rtype)}: MB={int(mb)} after a record with "
                f"ME={int(self._prev_me)}; a message must end (ME=1) before the next begins "
                f"(MB=1) (c-lime LIME_ERR_MBME)"
            )
        if self._prev_me is None and not mb:
            raise ValueError(
                f"{_where(self.path, self.count, rtype)}: the first record must have MB=1"
            )
        self._f.write(pack_header(rtype, nbytes, mb=mb, me=me))
        self._open = (rtype, int(nbytes))
        self._written = 0
        self._prev_me = me

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Write data bytes of the open record."""
        if self._open is None:
            raise RuntimeError(f"{_where(self.path)}: write() outside a record")
        n = data.nbytes if isinstance(data, (memoryview, np.ndarray)) else len(data)
        if self._written + n > self._open[1]:
            raise ValueError(
                f"{_where(self.path, self.count, self._open[0])}: writing {n} more bytes "
                f"after {self._written} exceeds the declared length {self._open[1]}"
            )
        self._f.write(data)
        self._written += n

    def end_record(self) -> None:
        """Check the length and write the NUL padding."""
        if self._open is None:
            raise RuntimeError(f"{_where(self.path)}: end_record() without begin_record()")
        rtype, nbytes = self._open
        if self._written != nbytes:
            raise ValueError(
                f"{_where(self.path, self.count, rtype)}: {self._written} bytes written, "
                f"expected the declared {nbytes}"
            )
        self._f.write(b"\0" * lime_padding(nbytes))
        self._open = None
        self.count += 1

    def write_record(self, rtype: str, data: bytes, *, mb: bool, me: bool) -> None:
        """Write a complete record."""
        self.begin_record(rtype, len(data), mb=mb, me=me)
        self.write(data)
        self.end_record()

    def write_string(self, rtype: str, text: str, *, mb: bool, me: bool) -> None:
        """Write a string/XML record as QIO does: ``strlen + 1`` bytes, NUL included
        (``QIO_utils.c: QIO_write_string``).  The text must not contain NUL."""
        raw = text.encode("utf-8")
        if b"\0" in raw:
            raise ValueError(
                f"{_where(self.path, self.count, rtype)}: the text contains a NUL byte; QIO "
                f"string records are NUL-terminated"
            )
        self.write_record(rtype, raw + b"\0", mb=mb, me=me)

    def close(self) -> None:
        """Check that no record is left open and that the last message ended (ME=1)."""
        if self._open is not None:
            raise ValueError(
                f"{_where(self.path, self.count, self._open[0])}: record left open"
            )
        if self._prev_me is False:
            raise ValueError(
                f"{_where(self.path, self.count - 1)}: the last record must have ME=1"
            )


# -- crash-safe output files -----------------------------------------------------------------------
def check_output_path(path: str | os.PathLike[str], overwrite: bool) -> Path:
    """Refuse an existing output path unless ``overwrite`` (``FileExistsError``); the parent
    directory must exist (``FileNotFoundError``)."""
    p = Path(path)
    if p.exists() and not overwrite:
        raise FileExistsError(
            f"file '{p}': output path exists; refusing to overwrite it (pass overwrite=True, "
            f"or --overwrite on the command line)"
        )
    if p.exists() and p.is_dir():
        raise IsADirectoryError(f"file '{p}': output path is a directory, expected a file")
    if not p.parent.is_dir():
        raise FileNotFoundError(
            f"file '{p}': output directory '{p.parent}' does not exist"
        )
    return p


def _umask() -> int:
    # Reading the umask needs setting it; done once per write, restored at once.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path in the destination directory; on success it is fsync'ed and
    renamed onto ``path`` (``os.replace``; without ``overwrite`` a no-clobber ``os.link``), on
    any exception it is removed and ``path`` (old file or nothing) is left untouched."""
    final = check_output_path(path, overwrite)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, final)
        else:
            try:
                os.link(tmp, final)  # atomic no-clobber
            except FileExistsError:
                raise FileExistsError(
                    f"file '{final}': output path appeared during the write; refusing to "
                    f"overwrite it (pass overwrite=True)"
                ) from None
            except OSError:  # file systems without hard links
                if final.exists():
                    raise FileExistsError(
                        f"file '{final}': output path appeared during the write; refusing to "
                        f"overwrite it (pass overwrite=True)"
                    ) from None
                os.replace(tmp, final)
            else:
                tmp.unlink()
        _fsync_dir(final.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, overwrite: bool = False
                  ) -> Iterator[BinaryIO]:
    """Binary file object for crash-safe writing of ``path`` (see :func:`atomic_path`)."""
    with atomic_path(path, overwrite=overwrite) as tmp, open(tmp, "wb") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
