"""The metadata records of ILDG/SciDAC files: writing their XML as QIO does, and reading the
lattice, precision and stored checksum back from them (docs/formats.md 2.1-2.5).

Split from :mod:`.ildg`, which keeps the links (layout, streaming, checksums of the data) and
the public ``read_ildg`` / ``write_ildg``.  Every reading error is a
:class:`~bridge.errors.FormatError` naming the file, the record (index, type, byte offset), the
value found and what was expected; a file whose data cannot be verified says so with an
:class:`~bridge.io.lime.IntegrityWarning`.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

from lxml import etree

from ..errors import ChecksumError, FormatError
from .lime import IntegrityWarning, LimeReader, LimeRecord, lime_padding, xml_text

ND = 4
NC = 3
REALS_PER_LINK = 2 * NC * NC  # 18
PRECISIONS = (32, 64)

_XML_HEAD = '<?xml version="1.0" encoding="UTF-8"?>'
# record types kept as text in GaugeInfo.metadata
TEXT_RECORDS = (
    "scidac-private-file-xml",
    "scidac-file-xml",
    "scidac-private-record-xml",
    "scidac-record-xml",
    "ildg-format",
    "ildg-data-lfn",
    "scidac-checksum",
    "xlf-info",
)
BINARY_RECORDS = ("ildg-binary-data", "scidac-binary-data")


def check_precision(precision: object, what: str = "precision") -> int:
    """``precision`` as 32 or 64 (bits per real); ``ValueError`` otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"{what}: expected 32 or 64 (bits per real number), got {precision!r}")
    return int(precision)  # type: ignore[call-overload]


# -- writing the XML -------------------------------------------------------------------------------
def private_file_xml(nrow: Sequence[int]) -> str:
    """``scidac-private-file-xml`` (``QIO_encode_file_info``; each dim printed ``"%d "``)."""
    dims = "".join(f"{int(n)} " for n in nrow)
    return (
        f"{_XML_HEAD}<scidacFile><version>1.1</version><spacetime>{len(nrow)}</spacetime>"
        f"<dims>{dims}</dims><volfmt>0</volfmt></scidacFile>"
    )


def qio_date(when: float | None = None) -> str:
    """QIO's record date: ``asctime(gmtime())`` without its newline, plus ``" UTC"``
    (``QIO_insert_record_date``)."""
    return time.asctime(time.gmtime(when)) + " UTC"


def private_record_xml(precision: int, date: str | None = None) -> str:
    """``scidac-private-record-xml``, QIO record format 1.1, as written for Chroma's
    ``multi1d<LatticeColorMatrix>`` (datatype from QDP++ ``qdp_qio_strings.cc``; spins 1;
    typesize = bytes of one 3x3 complex matrix; datacount 4)."""
    precision = check_precision(precision)
    letter = "F" if precision == 32 else "D"
    typesize = NC * NC * 2 * precision // 8
    return (
        f"{_XML_HEAD}<scidacRecord><version>1.1</version><date>{date or qio_date()}</date>"
        f"<recordtype>0</recordtype><datatype>QDP_{letter}3_ColorMatrix</datatype>"
        f"<precision>{letter}</precision><colors>{NC}</colors><spins>1</spins>"
        f"<typesize>{typesize}</typesize><datacount>{ND}</datacount></scidacRecord>"
    )


def ildg_format_xml(nrow: Sequence[int], precision: int) -> str:
    """``ildg-format`` (``QIO_info_ildg_record.c: QIO_create_ildg_format_info``)."""
    precision = check_precision(precision)
    lx, ly, lz, lt = (int(n) for n in nrow)
    return (
        f'{_XML_HEAD}<ildgFormat xmlns="http://www.lqcd.org/ildg" '
        f'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
        f'xsi:schemaLocation="http://www.lqcd.org/ildg/filefmt.xsd"><version>1.0</version>'
        f"<field>su3gauge</field><precision>{precision}</precision><lx>{lx}</lx><ly>{ly}</ly>"
        f"<lz>{lz}</lz><lt>{lt}</lt></ildgFormat>"
    )


def checksum_xml(suma: int, sumb: int) -> str:
    """``scidac-checksum`` (``QIO_encode_checksum_info``: ``%x``, lowercase, no padding)."""
    return (
        f"{_XML_HEAD}<scidacChecksum><version>1.0</version><suma>{suma:x}</suma>"
        f"<sumb>{sumb:x}</sumb></scidacChecksum>"
    )


def xml_or_default(xml: str | bytes | None, default: str, what: str) -> str:
    """User XML to write (``default`` if ``None``): well-formed, without NUL."""
    text = default if xml is None else (xml.decode("utf-8") if isinstance(xml, bytes) else xml)
    if not isinstance(text, str):
        raise ValueError(f"{what}: expected an XML string, got {type(xml).__name__}")
    if "\0" in text:
        raise ValueError(f"{what}: contains a NUL byte; QIO string records are NUL-terminated")
    try:
        etree.fromstring(text.strip().encode("utf-8"))
    except etree.XMLSyntaxError as exc:
        raise ValueError(f"{what}: not well-formed XML ({exc}): {text[:80]!r}") from None
    return text


# -- reading the metadata ----------------------------------------------------------------------
def _parse_int(text: str | None, rec: LimeRecord, tag: str, *, base: int = 10) -> int:
    if text is None:
        raise FormatError(f"{rec.where()}: no <{tag}> element, expected one")
    try:
        return int(text.strip(), base)
    except ValueError:
        kind = "a hexadecimal number" if base == 16 else "an integer"
        raise FormatError(f"{rec.where()}: <{tag}> is {text!r}, expected {kind}") from None


def _parse_hex(text: str | None, rec: LimeRecord, tag: str) -> int:
    # QIO writes %x, tmLQCD %08x or 0x-prefixed; int(s, 16) accepts all of them
    value = _parse_int(text, rec, tag, base=16)
    if not 0 <= value <= 0xFFFFFFFF:
        raise FormatError(f"{rec.where()}: <{tag}> is {text!r}, expected a 32-bit value")
    return value


def _check_dims(dims: Sequence[int], rec: LimeRecord, what: str) -> tuple[int, ...]:
    dims = tuple(int(d) for d in dims)
    if len(dims) != ND or any(d <= 0 for d in dims):
        raise FormatError(
            f"{rec.where()}: {what} {' '.join(map(str, dims))}, expected 4 positive extents "
            f"(lx ly lz lt)"
        )
    return dims


def _text(rec: LimeRecord, tag: str, root: etree._Element) -> str | None:
    return xml_text(root, tag, rec.where())


@dataclass
class Layout:
    """What the metadata records say about the binary record: its dimensions (x y z t) and
    precision, where the dimensions came from, the variant (``scidac``, ``ildg``, ``binary``)
    and the text records."""

    binary: LimeRecord
    dims: tuple[int, ...]
    precision: int
    source: str
    variant: str
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def volume(self) -> int:
        return math.prod(self.dims)


def find_binary(r: LimeReader) -> LimeRecord:
    """The first ``ildg-binary-data`` (else ``scidac-binary-data``) record; a
    :class:`FormatError` listing the records found (index, type, byte offset) otherwise."""
    rec = r.first(BINARY_RECORDS[0]) or r.first(BINARY_RECORDS[1])
    if rec is not None:
        return rec
    found = ", ".join(f"{x.index} {x.type!r} (byte {x.header_offset})" for x in r.records)
    last = r.records[-1]
    end = last.end + lime_padding(last.nbytes)
    raise FormatError(
        f"file '{r.path}': no 'ildg-binary-data' or 'scidac-binary-data' record, expected "
        f"one; records found: {found}; the LIME records end at byte {end} of {r.size}"
    )


def _from_ildg_format(r: LimeReader, rec: LimeRecord) -> tuple[int, tuple[int, ...]]:
    root = r.read_xml(rec)
    fieldname = _text(rec, "field", root)
    if fieldname is not None and fieldname != "su3gauge":
        raise FormatError(f"{rec.where()}: <field> is {fieldname!r}, expected 'su3gauge'")
    prec = _parse_int(_text(rec, "precision", root), rec, "precision")
    if prec not in PRECISIONS:
        raise FormatError(
            f"{rec.where()}: <precision> is {prec}, expected 32 or 64 (unknown precision)"
        )
    dims = [_parse_int(_text(rec, t, root), rec, t) for t in ("lx", "ly", "lz", "lt")]
    return prec, _check_dims(dims, rec, "lattice")


def _from_private_file(r: LimeReader, rec: LimeRecord) -> tuple[int, ...]:
    dtext = _text(rec, "dims", r.read_xml(rec))
    if dtext is None:
        raise FormatError(f"{rec.where()}: no <dims> element, expected one")
    try:
        dims = [int(d) for d in dtext.split()]
    except ValueError:
        raise FormatError(f"{rec.where()}: <dims> is {dtext!r}, expected integers") from None
    return _check_dims(dims, rec, "<dims>")


def _from_private_record(r: LimeReader, rec: LimeRecord) -> int:
    root = r.read_xml(rec)
    letter = (_text(rec, "precision", root) or "").upper()
    if letter not in ("F", "D"):
        raise FormatError(
            f"{rec.where()}: <precision> is {letter!r}, expected 'F' or 'D' (unknown precision)"
        )
    datacount = _text(rec, "datacount", root)
    if datacount is not None and datacount.strip() != str(ND):
        raise FormatError(
            f"{rec.where()}: <datacount> is {datacount!r}, expected {ND} (a gauge field: one "
            f"colour matrix per direction)"
        )
    colors = _text(rec, "colors", root)
    if colors is not None and colors.strip() != str(NC):
        raise FormatError(f"{rec.where()}: <colors> is {colors!r}, expected {NC}")
    return 32 if letter == "F" else 64


def _file_layout(r: LimeReader, bin_rec: LimeRecord
                 ) -> tuple[tuple[int, ...] | None, int | None, str]:
    """Dimensions, precision and the place they came from, as the records state them:
    ``ildg-format`` first, then the SciDAC private file and record XML (which must agree)."""
    dims: tuple[int, ...] | None = None
    prec: int | None = None
    source = ""
    fmt_rec = r.first("ildg-format")
    if fmt_rec is not None:
        prec, dims = _from_ildg_format(r, fmt_rec)
        source = fmt_rec.where()
    if r.records[0].type != "scidac-private-file-xml":
        return dims, prec, source
    frec = r.records[0]
    fdims = _from_private_file(r, frec)
    if dims is not None and fdims != dims:
        raise FormatError(
            f"{frec.where()}: <dims> {' '.join(map(str, fdims))} disagrees with {source}: "
            f"{' '.join(map(str, dims))}"
        )
    if dims is None:
        dims, source = fdims, frec.where()
    prec_rec = None
    for cand in r.records[1 : bin_rec.index]:
        if cand.type == "scidac-private-record-xml":
            prec_rec = cand
    if prec_rec is not None:
        rprec = _from_private_record(r, prec_rec)
        if prec is not None and rprec != prec:
            letter = "F" if rprec == 32 else "D"
            raise FormatError(
                f"{prec_rec.where()}: <precision> {letter} ({rprec}-bit) disagrees with "
                f"{source}: precision {prec}"
            )
        prec = rprec
    return dims, prec, source


def read_layout(r: LimeReader, nrow: Sequence[int] | None, precision: int | None) -> Layout:
    """Dimensions and precision of the binary record from the records, else from the caller
    (``nrow``; ``precision`` or the record size), checked against each other and against the
    record's length."""
    bin_rec = find_binary(r)
    metadata = {}
    for rt in TEXT_RECORDS:
        rec = r.first(rt)
        if rec is not None:
            metadata[rt] = r.read_raw_text(rec)
    native = r.records[0].type == "scidac-private-file-xml"
    variant = "scidac" if native else ("ildg" if r.first("ildg-format") else "binary")
    dims, prec, source = _file_layout(r, bin_rec)
    if nrow is not None:
        want = tuple(int(n) for n in nrow)
        if dims is not None and want != dims:
            raise FormatError(
                f"{source}: lattice {' '.join(map(str, dims))} (x y z t) in the file "
                f"disagrees with the requested nrow {' '.join(map(str, want))}"
            )
        if dims is None:
            if len(want) != ND or any(n <= 0 for n in want):
                raise ValueError(f"nrow: expected 4 positive extents, got {tuple(nrow)}")
            dims, source = want, "nrow given by the caller"
    if dims is None:
        raise FormatError(
            f"{bin_rec.where()}: the file holds no dimensions (no 'ildg-format' or "
            f"'scidac-private-file-xml' record); pass nrow=(Lx, Ly, Lz, Lt) "
            f"(--nrow LX LY LZ LT on the command line)"
        )
    volume = math.prod(dims)
    if precision is not None:
        check_precision(precision)
        if prec is not None and prec != precision:
            raise FormatError(
                f"{source}: precision {prec} in the file disagrees with the requested "
                f"precision {precision}"
            )
        prec = precision
    if prec is None:
        per_real = bin_rec.nbytes / (volume * ND * REALS_PER_LINK)
        if per_real not in (4, 8):
            raise FormatError(
                f"{bin_rec.where()}: {bin_rec.nbytes} bytes for {volume} sites of 4 SU(3) "
                f"links is {per_real:g} bytes per real, expected 4 (32-bit) or 8 (64-bit)"
            )
        prec = int(per_real * 8)
    expected = volume * ND * REALS_PER_LINK * prec // 8
    if bin_rec.nbytes != expected:
        raise FormatError(
            f"{bin_rec.where()}: {bin_rec.nbytes} bytes, expected {expected} for lattice "
            f"{' '.join(map(str, dims))} (x y z t, from {source}) at {prec}-bit precision"
        )
    return Layout(bin_rec, dims, prec, source, variant, metadata)


def read_stored_checksum(r: LimeReader, bin_rec: LimeRecord
                         ) -> tuple[tuple[int, int] | None, LimeRecord | None]:
    """``(suma, sumb)`` of the first ``scidac-checksum`` record after the binary record, and
    that record; ``(None, None)`` if there is none."""
    rec = r.first("scidac-checksum", after=bin_rec.index)
    if rec is None:
        return None, None
    root = r.read_xml(rec)
    stored = (_parse_hex(_text(rec, "suma", root), rec, "suma"),
              _parse_hex(_text(rec, "sumb", root), rec, "sumb"))
    return stored, rec


def checksum_status(
    stored: tuple[int, int] | None,
    computed: tuple[int, int],
    ck_rec: LimeRecord | None,
    bin_rec: LimeRecord,
    *,
    verify: bool,
    also: str | None = None,
) -> str:
    """``"ok"``, ``"mismatch"`` or ``"absent"``.  With ``verify`` a mismatch is a
    :class:`ChecksumError` (``also``: a further finding to add to its message) and absence an
    :class:`IntegrityWarning`: the links read are whatever the file holds."""
    if stored is None or ck_rec is None:
        if verify:
            warnings.warn(
                f"{bin_rec.where()}: no 'scidac-checksum' record follows it; the binary data "
                f"cannot be verified (integrity unknown)",
                IntegrityWarning,
                stacklevel=3,
            )
        return "absent"
    if stored == computed:
        return "ok"
    if verify:
        raise ChecksumError(
            f"{ck_rec.where()}: stored suma {stored[0]:08x} sumb {stored[1]:08x}, computed "
            f"suma {computed[0]:08x} sumb {computed[1]:08x} over {bin_rec.where()} (corrupt "
            f"data)" + (f"; also {also}" if also else "")
        )
    return "mismatch"
