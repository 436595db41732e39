"""The LIME layer (headers, padding, MB/ME, tolerant reading, strict writing) and the
vectorised checksums against direct per-site / per-word implementations."""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
import pytest

from bridge.errors import FormatError
from bridge.io.ildg import ScidacChecksum, scidac_checksum
from bridge.io.lime import (
    HEADER_BYTES,
    LIME_MAGIC,
    FormatWarning,
    LimeReader,
    LimeWriter,
    lime_padding,
    pack_header,
    parse_xml,
    xml_text,
)
from bridge.io.milc import MilcChecksum


def _write(path, records):
    buf = io.BytesIO()
    w = LimeWriter(buf, path)
    for rtype, data, mb, me in records:
        w.write_record(rtype, data, mb=mb, me=me)
    w.close()
    path.write_bytes(buf.getvalue())
    return buf.getvalue()


def test_header_layout_matches_c_lime():
    h = pack_header("ildg-format", 319, mb=True, me=False)
    assert len(h) == HEADER_BYTES
    assert h[:8].hex() == "456789ab00018000"  # magic, version 1, MB
    assert struct.unpack(">Q", h[8:16])[0] == 319
    assert h[16:27] == b"ildg-format" and set(h[27:]) == {0}
    assert pack_header("x", 0, mb=False, me=True)[6] == 0x40
    assert pack_header("x", 0, mb=True, me=True)[6] == 0xC0
    assert [lime_padding(n) for n in (0, 1, 7, 8, 9, 149)] == [0, 7, 1, 0, 7, 3]


def test_roundtrip_records_padding_and_offsets(tmp_path):
    path = tmp_path / "a.lime"
    data = _write(path, [("first", b"abc", True, False), ("second", b"12345678", False, True),
                         ("third", b"", True, True)])
    assert len(data) == 3 * HEADER_BYTES + 8 + 8 + 0
    with LimeReader(path) as r:
        assert [x.type for x in r.records] == ["first", "second", "third"]
        assert [(x.mb, x.me) for x in r.records] == [(True, False), (False, True), (True, True)]
        assert r.read_bytes(r.records[0]) == b"abc"
        assert r.records[1].header_offset == HEADER_BYTES + 8
        out = np.empty(8, dtype=np.uint8)
        r.read_into(r.records[1], out)
        assert out.tobytes() == b"12345678"
        with pytest.raises(FormatError, match="asked for bytes"):
            r.read_into(r.records[1], np.empty(9, np.uint8))


def test_writer_is_strict(tmp_path):
    w = LimeWriter(io.BytesIO(), "x.lime")
    with pytest.raises(ValueError, match="first record must have MB=1"):
        w.write_record("a", b"", mb=False, me=False)
    w.write_record("a", b"", mb=True, me=False)
    with pytest.raises(ValueError, match="LIME_ERR_MBME"):
        w.write_record("b", b"", mb=True, me=True)
    with pytest.raises(ValueError, match="at most 127"):
        w.write_record("t" * 128, b"", mb=False, me=True)
    with pytest.raises(ValueError, match="ASCII"):
        w.write_record("é", b"", mb=False, me=True)
    w.begin_record("c", 4, mb=False, me=False)
    with pytest.raises(ValueError, match="exceeds the declared length 4"):
        w.write(b"12345")
    w.write(b"12")
    with pytest.raises(ValueError, match="2 bytes written, expected the declared 4"):
        w.end_record()
    w.write(b"34")
    w.end_record()
    with pytest.raises(ValueError, match="last record must have ME=1"):
        w.close()
    with pytest.raises(ValueError, match="NUL"):
        w.write_string("d", "a\0b", mb=False, me=True)


def test_reader_tolerates_sloppy_files(tmp_path):
    # broken MB/ME (every record MB=ME=0) and short trailing junk: read with a warning
    body = b"".join(pack_header(t, 8, mb=False, me=False) + b"x" * 8 for t in ("a", "b"))
    path = tmp_path / "sloppy.lime"
    path.write_bytes(body + b"junk")
    with pytest.warns(FormatWarning, match="ignoring 4 trailing bytes"):
        r = LimeReader(path)
    assert [x.type for x in r.records] == ["a", "b"]
    r.close()
    # trailing newline / NULs: silent
    path.write_bytes(body + b"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LimeReader(path).close()
    # long trailing non-LIME bytes after records: warning, records kept
    path.write_bytes(body + b"\x01" * 200)
    with pytest.warns(FormatWarning, match="magic 0x01010101"):
        r = LimeReader(path)
    assert len(r.records) == 2
    r.close()


def test_record_header_cut_short_is_an_error(tmp_path):
    # fewer than 144 bytes left that start with the LIME magic: a record header cut short by a
    # truncated copy, not trailing junk (c-lime would stop silently and lose the record)
    body = b"".join(pack_header(t, 8, mb=True, me=True) + b"x" * 8 for t in ("a", "b"))
    path = tmp_path / "cut.lime"
    path.write_bytes(body + pack_header("scidac-checksum", 8, mb=True, me=True)[:139])
    with pytest.raises(FormatError, match=r"cut\.lime.*truncated LIME record header: 139 of 144 "
                                          r"bytes"):
        LimeReader(path)
    # last record without its padding
    path.write_bytes(pack_header("a", 3, mb=True, me=True) + b"abc")
    with LimeReader(path) as r:
        assert r.read_bytes(r.records[0]) == b"abc"


def test_reader_errors_name_file_record_and_problem(tmp_path):
    path = tmp_path / "bad.lime"
    path.write_bytes(b"\x00\x01" + pack_header("a", 0, mb=True, me=True)[2:])
    with pytest.raises(FormatError, match=r"bad\.lime', record 0.*wrong magic 0x000189ab, "
                                          r"expected LIME magic 0x456789ab"):
        LimeReader(path)
    head = bytearray(pack_header("ildg-binary-data", 100, mb=True, me=True))
    path.write_bytes(bytes(head) + b"x" * 50)
    with pytest.raises(FormatError, match=r"record 0 'ildg-binary-data' \(header at byte 0\): "
                                          r"data length 100 bytes, but only 50 bytes remain"):
        LimeReader(path)
    head[4:6] = b"\x00\x02"
    path.write_bytes(bytes(head) + b"x" * 100)
    with pytest.raises(FormatError, match="LIME version 2, expected 1"):
        LimeReader(path)
    path.write_bytes(b"")
    with pytest.raises(FormatError, match="empty file"):
        LimeReader(path)
    path.write_bytes(b"\x45\x67\x89\xab")
    with pytest.raises(FormatError, match="at least one 144-byte LIME header"):
        LimeReader(path)


def test_xml_parsing_tolerance():
    qio = b'<?xml version="1.0" encoding="UTF-8"?><a><lx>4</lx></a>\0'
    tm = (b'<?xml version="1.0" encoding="UTF-8"?>\n<ildgFormat xmlns="http://www.lqcd.org/ildg">'
          b"\n  <lx> 4 </lx>\n</ildgFormat>")
    for raw in (qio, tm, b"\n  " + tm + b"\n\n"):
        assert xml_text(parse_xml(raw, "here"), "lx") == "4"
    with pytest.warns(FormatWarning, match="recovered"):
        root = parse_xml(b"<a><lx>4</lx>", "here")
    assert xml_text(root, "lx") == "4"
    with pytest.raises(FormatError, match="here: empty XML record"):
        parse_xml(b"\0\0", "here")


# -- checksums ------------------------------------------------------------------------------
def _rotl(w: int, r: int) -> int:
    return w if r == 0 else ((w << r) | (w >> (32 - r))) & 0xFFFFFFFF


def _direct_scidac(data: bytes, site_bytes: int) -> tuple[int, int]:
    a = b = 0
    for r in range(len(data) // site_bytes):
        c = zlib.crc32(data[r * site_bytes : (r + 1) * site_bytes])
        a ^= _rotl(c, r % 29)
        b ^= _rotl(c, r % 31)
    return a, b


@pytest.mark.parametrize("volume", [1, 7, 29, 31, 898, 899, 900, 2000, 4096])
@pytest.mark.parametrize("site_bytes", [288, 576, 12, 5])
def test_vectorised_scidac_checksum_equals_direct(volume, site_bytes):
    rng = np.random.default_rng(volume * 1000 + site_bytes)
    data = rng.integers(0, 256, volume * site_bytes, dtype=np.uint8)
    assert scidac_checksum(data, site_bytes) == _direct_scidac(data.tobytes(), site_bytes)
    # any chunking, any order of chunks
    ck = ScidacChecksum(site_bytes)
    cuts = sorted({0, volume, *rng.integers(0, volume + 1, 5).tolist()})
    pieces = list(zip(cuts[:-1], cuts[1:], strict=True))
    rng.shuffle(pieces)
    for lo, hi in pieces:
        ck.update(data[lo * site_bytes : hi * site_bytes], lo)
    assert ck.digest(volume) == _direct_scidac(data.tobytes(), site_bytes)


@pytest.mark.parametrize("byteorder", ["<", ">"])
def test_vectorised_milc_checksum_equals_direct(byteorder):
    rng = np.random.default_rng(3)
    sites = 37
    raw = rng.integers(0, 256, sites * 288, dtype=np.uint8)
    words = raw.view(byteorder + "u4")
    s29 = s31 = 0
    for i, w in enumerate(words.tolist()):
        s29 ^= _rotl(w, i % 29)
        s31 ^= _rotl(w, i % 31)
    ck = MilcChecksum(byteorder)
    ck.update(raw[: 10 * 288].reshape(10, 288), 0)
    ck.update(raw[10 * 288 :].reshape(27, 288), 10)
    assert ck.digest() == (s29, s31)


def test_known_crc_and_rotation_edge_cases():
    # rotl by 0 keeps the word; one site: suma = sumb = crc of the site
    data = bytes(range(72))
    assert scidac_checksum(data, 72) == (zlib.crc32(data), zlib.crc32(data))
    assert LIME_MAGIC == 0x456789AB
