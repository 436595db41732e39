"""Bad input gives a clear error naming the file, the record, the value and what was expected,
and nothing is lost: truncation, wrong magic, checksum mismatch, geometry disagreement, unknown
precision, header plaquette mismatch, non-unitary links, existing output paths; interrupted
writes leave no file under the final name and the previous file intact."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

import bridge.io.ildg as ildg_mod
from bridge.errors import BridgeError, ChecksumError, FormatError
from bridge.gauge import random_gauge
from bridge.io import FormatWarning, IntegrityWarning, LimeReader, read_gauge, write_gauge
from bridge.io.ildg import read_ildg
from bridge.io.lime import parse_xml, xml_text
from bridge.io.milc import read_milc
from bridge.io.nersc import header_tolerance, read_nersc
from bridge.lattice import Lattice

NROW = (4, 4, 2, 6)


@pytest.fixture(scope="module")
def field() -> torch.Tensor:
    return random_gauge(Lattice(NROW), "SU3", generator=torch.Generator().manual_seed(7))


@pytest.fixture
def lime(tmp_path, field) -> Path:
    path = tmp_path / "cfg.lime"
    write_gauge(path, field, precision=64)
    return path


@pytest.fixture
def nersc(tmp_path, field) -> Path:
    path = tmp_path / "cfg.nersc"
    write_gauge(path, field, format="nersc", precision=32)
    return path


def _replace(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1, old
    path.write_bytes(data.replace(old, new, 1))


# -- truncated files ------------------------------------------------------------------------
def test_truncated_lime(lime):
    data = lime.read_bytes()
    lime.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError) as exc:
        read_gauge(lime)
    msg = str(exc.value)
    assert str(lime) in msg
    assert re.search(r"record 5 'ildg-binary-data' \(header at byte \d+\): data length 110592 "
                     r"bytes, but only \d+ bytes remain .*truncated", msg), msg


def test_truncated_nersc_and_milc(nersc, tmp_path, field):
    data = nersc.read_bytes()
    nersc.write_bytes(data[:-100])
    with pytest.raises(FormatError, match=rf"{re.escape(str(nersc))}', binary data at byte \d+: "
                                          r"\d+ bytes, expected 55296 .*truncated"):
        read_gauge(nersc)
    nersc.write_bytes(data[:200])  # inside the header
    with pytest.raises(FormatError, match=r"header line \d+: (end of file|no newline)"):
        read_gauge(nersc)
    milc = tmp_path / "cfg.milc"
    write_gauge(milc, field, format="milc", precision=32)
    milc.write_bytes(milc.read_bytes()[:50])
    with pytest.raises(FormatError, match=r"cfg\.milc', MILC header: 50 bytes, expected 96"):
        read_gauge(milc)


# -- wrong magic ----------------------------------------------------------------------------
def test_wrong_magic(lime, nersc, tmp_path):
    _replace(lime, bytes.fromhex("456789ab"), bytes.fromhex("456789ac"))
    with pytest.raises(FormatError, match=rf"{re.escape(str(lime))}': unknown format, first "
                                          r"bytes 456789ac.*expected the LIME magic 456789ab"):
        read_gauge(lime)
    with pytest.raises(FormatError, match=r"record 0 \(header at byte 0\): wrong magic "
                                          r"0x456789ac, expected LIME magic 0x456789ab"):
        read_ildg(lime)
    _replace(nersc, b"BEGIN_HEADER", b"BEGIN_HEADEX")
    with pytest.raises(FormatError, match=r"header line 1: found b'BEGIN_HEADEX\\n', expected "
                                          r"'BEGIN_HEADER'"):
        read_nersc(nersc)
    other = tmp_path / "x.bin"
    other.write_bytes(b"\x00\x00\x4e\x88" + bytes(200))
    with pytest.raises(FormatError, match=r"x\.bin', MILC header \(byte 0\): magic 00004e88, "
                                          r"expected 20103"):
        read_milc(other)


# -- checksum mismatch ----------------------------------------------------------------------
def test_checksum_mismatch_in_data(lime):
    data = bytearray(lime.read_bytes())
    with LimeReader(lime) as r:  # find the binary record
        rec = r.first("ildg-binary-data")
    data[rec.data_offset + 7] ^= 0x01  # last mantissa bit of the first real: still unitary
    lime.write_bytes(bytes(data))
    with pytest.raises(ChecksumError) as exc:
        read_gauge(lime)
    msg = str(exc.value)
    assert str(lime) in msg and "record 6 'scidac-checksum'" in msg
    assert re.search(r"stored suma [0-9a-f]{8} sumb [0-9a-f]{8}, computed suma [0-9a-f]{8} "
                     r"sumb [0-9a-f]{8} over .*record 5 'ildg-binary-data'", msg), msg
    # verify=False reads and reports it
    u, info = read_gauge(lime, verify=False)
    assert info.checksum == "mismatch" and info.checksum_stored != info.checksum_computed


def test_checksum_mismatch_in_record_and_nersc(lime, nersc):
    text = lime.read_bytes()
    suma = re.search(rb"<suma>([0-9a-f]+)</suma>", text).group(1)
    bad = (b"0" if suma[:1] != b"0" else b"1") + suma[1:]
    _replace(lime, b"<suma>" + suma, b"<suma>" + bad)
    with pytest.raises(ChecksumError, match=rf"stored suma {bad.decode():0>8}"):
        read_gauge(lime)
    head = nersc.read_bytes()
    ck = re.search(rb"CHECKSUM = ([0-9a-f]+)\n", head).group(1)
    bad = (b"0" if ck[:1] != b"0" else b"1") + ck[1:]
    _replace(nersc, b"CHECKSUM = " + ck, b"CHECKSUM = " + bad)
    with pytest.raises(ChecksumError, match=rf"header key 'CHECKSUM': stored {int(bad, 16):08x}"
                                            rf", computed {int(ck, 16):08x}"):
        read_gauge(nersc)


# -- geometry -------------------------------------------------------------------------------
def test_dimensions_disagree_with_caller(lime, nersc, tmp_path, field):
    with pytest.raises(FormatError, match=r"record 4 'ildg-format' .*lattice 4 4 2 6 \(x y z t\) "
                                          r"in the file disagrees with the requested nrow "
                                          r"4 4 4 4"):
        read_gauge(lime, nrow=(4, 4, 4, 4))
    with pytest.raises(FormatError, match=r"DIMENSION_1\.\.4: lattice 4 4 2 6 \(x y z t\) "
                                          r"disagrees with the requested nrow 4 4 2 5"):
        read_gauge(nersc, nrow=(4, 4, 2, 5))
    milc = tmp_path / "cfg.milc"
    write_gauge(milc, field, format="milc", precision=32)
    with pytest.raises(FormatError, match="disagrees with the requested nrow 2 4 2 6"):
        read_gauge(milc, nrow=(2, 4, 2, 6))
    # binary-only file: caller's geometry must fit the record size
    from bridge.io.lime import pack_header

    with LimeReader(lime) as r:
        rec = r.first("ildg-binary-data")
        payload = r.read_bytes(rec)
    raw = tmp_path / "raw.ildg"
    raw.write_bytes(pack_header("ildg-binary-data", len(payload), mb=True, me=True) + payload)
    with pytest.raises(FormatError, match=r"holds no dimensions .* pass nrow"):
        read_gauge(raw)
    with pytest.raises(FormatError, match=r"110592 bytes for 128 sites .* is 12 bytes per real, "
                                          r"expected 4 \(32-bit\) or 8 \(64-bit\)"):
        read_gauge(raw, nrow=(4, 4, 2, 4))
    with pytest.raises(FormatError, match=r"110592 bytes, expected 55296 for lattice 4 4 2 6"):
        read_gauge(raw, nrow=NROW, precision=32)
    with pytest.warns(IntegrityWarning, match=r"raw\.ildg', record 0 'ildg-binary-data' "
                                              r"\(header at byte 0\): no 'scidac-checksum' "
                                              r"record follows it; the binary data cannot be "
                                              r"verified \(integrity unknown\)"):
        u, info = read_gauge(raw, nrow=NROW)
    assert torch.equal(u, field) and info.variant == "binary" and info.checksum == "absent"


def test_scidac_dims_disagree_with_ildg_format(lime):
    _replace(lime, b"<dims>4 4 2 6 </dims>", b"<dims>4 4 6 2 </dims>")
    with pytest.raises(FormatError, match=r"record 0 'scidac-private-file-xml' .*<dims> 4 4 6 2 "
                                          r"disagrees with .*'ildg-format'.*: 4 4 2 6"):
        read_gauge(lime)


# -- XML and records ------------------------------------------------------------------------
def test_recovered_xml_with_an_invalid_element_name(lime):
    """lxml recovers ``<:recision>`` as an element whose name ``etree.QName`` rejects: a
    FormatError naming file, record and byte offset, never lxml's ``ValueError``."""
    _replace(lime, b"<precision>64</precision>", b"<:recision>64</precision>")
    with pytest.raises(FormatError) as exc:
        read_gauge(lime)
    msg = str(exc.value)
    assert re.fullmatch(rf"file '{re.escape(str(lime))}', record 4 'ildg-format' \(header at "
                        r"byte \d+\): malformed XML \(Failed to parse QName ':recision'.*\); "
                        r"lxml's recovered tree has an invalid element name ':recision', "
                        r"expected a well-formed XML document", msg), msg
    with pytest.raises(FormatError, match=r"^here: malformed XML .*recovered tree has an invalid "
                                          r"element name 'a:b:c'"):
        parse_xml(b"<r><a:b:c>1</a:b:c></r>", "here")
    # an undeclared prefix is recovered and matched by the local name
    with pytest.warns(FormatWarning, match="recovered"):
        root = parse_xml(b"<r><ildg:lx>4</ildg:lx></r>", "here")
    assert xml_text(root, "lx") == "4"


def test_xml_text_turns_lxml_errors_into_format_errors():
    class Broken:
        def iter(self):
            raise ValueError("Invalid tag name ':x'")

    with pytest.raises(FormatError, match=r"^file 'f', record 4 'ildg-format': cannot read <lx> "
                                          r"from the XML \(ValueError: Invalid tag name ':x'\), "
                                          r"expected a well-formed XML document$"):
        xml_text(Broken(), "lx", "file 'f', record 4 'ildg-format'")


def test_no_binary_record_lists_the_records_and_their_offsets(lime):
    _replace(lime, b"ildg-binary-data", b"ildg-binary-datX")
    size = lime.stat().st_size
    with pytest.raises(FormatError) as exc:
        read_gauge(lime)
    msg = str(exc.value)
    assert msg.startswith(f"file '{lime}': no 'ildg-binary-data' or 'scidac-binary-data' "
                          f"record, expected one; records found: 0 'scidac-private-file-xml' "
                          f"(byte 0), 1 'scidac-file-xml' (byte "), msg
    assert re.search(r"5 'ildg-binary-datX' \(byte \d+\), 6 'scidac-checksum' \(byte \d+\); "
                     rf"the LIME records end at byte {size} of {size}$", msg), msg


def test_bytes_inserted_or_deleted_before_the_checksum_record(lime):
    """The checksum record shifted by a few bytes is not trailing junk to ignore (which would
    leave the data unverified) but an error naming both offsets and the record hit."""
    data = lime.read_bytes()
    with LimeReader(lime) as r:
        rec = r.first("ildg-binary-data")
    end = rec.end  # where record 6 'scidac-checksum' starts (no padding: 110592 % 8 == 0)
    for delta, new in ((3, data[: end - 8] + b"abc" + data[end - 8 :]),
                       (-5, data[: end - 8] + data[end - 3 :])):
        lime.write_bytes(new)
        with pytest.raises(FormatError) as exc:
            read_gauge(lime)
        assert str(exc.value) == (
            f"file '{lime}', record 6 (header at byte {end}): no LIME header here, but one at "
            f"byte {end + delta} ({delta:+d} bytes): bytes were inserted into or deleted from "
            f"record 5 'ildg-binary-data' (header at byte {rec.header_offset}) (corrupt file)")


def test_milc_header_fields_name_their_bytes(tmp_path, field):
    import struct

    path = tmp_path / "cfg.milc"
    write_gauge(path, field, format="milc", precision=32)
    data = path.read_bytes()
    path.write_bytes(data[:4] + struct.pack(">i", 0) + data[8:])
    with pytest.raises(FormatError, match=rf"^file '{re.escape(str(path))}', MILC header dims "
                                          r"\(bytes 4-19\): 0 4 2 6, expected 4 positive "
                                          r"extents \(nx ny nz nt\)$"):
        read_gauge(path)
    path.write_bytes(data[:84] + struct.pack(">i", 1) + data[88:])
    with pytest.raises(FormatError, match=r"MILC header order \(bytes 84-87\): 1, expected 0 "
                                          r"\(natural site order"):
        read_gauge(path)
    path.write_bytes(data[:88] + bytes([data[88] ^ 1]) + data[89:])
    with pytest.raises(ChecksumError, match=r"MILC header sum29/sum31 \(bytes 88-95\): stored "
                                            r"[0-9a-f]{8} [0-9a-f]{8}, computed [0-9a-f]{8} "
                                            r"[0-9a-f]{8} over the binary data at byte 96 "
                                            r"\(corrupt data\)$"):
        read_gauge(path)


# -- precision ------------------------------------------------------------------------------
def test_unknown_precision(lime, nersc, field, tmp_path):
    _replace(lime, b"<precision>64</precision>", b"<precision>48</precision>")
    with pytest.raises(FormatError, match=r"record 4 'ildg-format' .*<precision> is 48, expected "
                                          r"32 or 64 \(unknown precision\)"):
        read_gauge(lime)
    _replace(nersc, b"IEEE32BIG", b"IEEE16BIG")
    with pytest.raises(FormatError, match=r"header key 'FLOATING_POINT': value 'IEEE16BIG' \("
                                          r"unknown precision\), expected one of IEEE32BIG"):
        read_gauge(nersc)
    for fmt in ("ildg", "nersc", "hdf5"):
        with pytest.raises(ValueError, match=r"precision: expected 32 or 64 .*got 16"):
            write_gauge(tmp_path / f"p16.{fmt}", field, format=fmt, precision=16)
    with pytest.raises(ValueError, match="MILC binary format is single precision"):
        write_gauge(tmp_path / "p.milc", field, format="milc", precision=64)
    assert not list(tmp_path.glob("p16.*")) and not (tmp_path / "p.milc").exists()


def test_private_record_precision_disagrees(lime):
    _replace(lime, b"<precision>D</precision>", b"<precision>F</precision>")
    with pytest.raises(FormatError, match=r"'scidac-private-record-xml' .*<precision> F \(32-bit\)"
                                          r" disagrees with .*precision 64"):
        read_gauge(lime)


# -- NERSC header plaquette / link trace ----------------------------------------------------
def test_header_plaquette_mismatch(nersc):
    text = nersc.read_bytes()
    plaq = re.search(rb"PLAQUETTE = (-?[0-9.]+)\n", text).group(1)
    wrong = f"{float(plaq) + 0.001:.10f}".encode()
    _replace(nersc, b"PLAQUETTE = " + plaq, b"PLAQUETTE = " + wrong)
    with pytest.raises(ChecksumError) as exc:
        read_gauge(nersc)
    msg = str(exc.value)
    assert str(nersc) in msg and "header key 'PLAQUETTE'" in msg
    found = re.search(rf"stored {re.escape(repr(float(wrong)))}, "
                      r"computed (-?[0-9.]+(?:e-?\d+)?) ", msg)
    # the data are 32-bit: they reproduce the header to the reader's own tolerance
    tol = header_tolerance(plaq.decode(), 32, 6 * math.prod(NROW))
    assert found and float(found.group(1)) == pytest.approx(float(plaq), abs=tol), msg
    tol = header_tolerance(wrong.decode(), 32, 6 * math.prod(NROW))
    assert f"expected <= {tol:.3g} for '{wrong.decode()}' printed to 1e-10 and 32-bit data); " \
           "the header or the binary data are corrupt (header_tol=... accepts more)" in msg
    u, info = read_gauge(nersc, verify=False)
    assert info.header_checks["PLAQUETTE"]["ok"] is False
    assert info.header_checks["PLAQUETTE"]["tolerance"] == tol
    # an explicit header_tol replaces the automatic tolerance
    _, info = read_gauge(nersc, header_tol=0.01)
    assert info.header_checks["PLAQUETTE"]["ok"]
    with pytest.raises(ChecksumError, match=r"'PLAQUETTE': .*\(difference 0\.001, expected <= "
                                            r"0\.0005\); the header"):
        read_gauge(nersc, header_tol=5e-4)


def test_header_tolerance_follows_printed_digits_and_precision():
    """Half a unit in the last printed digit, summation, rounding of the stored precision
    (averaging over the terms) and, for two stored rows, twice the unitarity violation."""
    assert header_tolerance("0.0382422893", 64, 1536) == pytest.approx(5e-11, rel=0.01)
    assert header_tolerance("0.038242289312345", 64, 1536) == pytest.approx(
        5e-16 + 1536 * 2**-53 + 16 * 2**-53 / math.sqrt(1536))
    assert header_tolerance("0.5", 32, 1024) == pytest.approx(0.05)
    assert header_tolerance("3.8e-2", 32, 100) == pytest.approx(5e-4 + 16 * 2**-24 / 10,
                                                                rel=1e-6)
    assert header_tolerance("0.0382422893", 32, 1024, violation=4e-7) == pytest.approx(
        5e-11 + 1024 * 2**-53 + 16 * 2**-24 / 32 + 8e-7)


def test_header_plaquette_checked_to_its_printed_digits(tmp_path, field):
    """A 64-bit file (header printed to 15 decimals): a change of 1e-12 is an error, with the
    key, both values and the tolerance named."""
    path = tmp_path / "d.nersc"
    write_gauge(path, field, format="nersc", precision=64)
    plaq = re.search(rb"PLAQUETTE = (-?[0-9.]+)\n", path.read_bytes()).group(1)
    wrong = f"{float(plaq) + 1e-12:.15f}".encode()
    _replace(path, b"PLAQUETTE = " + plaq, b"PLAQUETTE = " + wrong)
    with pytest.raises(ChecksumError) as exc:
        read_gauge(path)
    msg = str(exc.value)
    assert re.search(rf"{re.escape(str(path))}', header key 'PLAQUETTE': stored "
                     rf"{re.escape(repr(float(wrong)))}, computed -?\d\.\d+(e-\d+)? from the data "
                     r"\(difference 1e-12, expected <= 1\.\d+e-13 for '-?\d\.\d{15}' printed to "
                     r"1e-15 and 64-bit data\)", msg), msg


def test_nersc_header_entries_that_cannot_be_used(nersc):
    data = nersc.read_bytes()
    ck = re.search(rb"CHECKSUM = ([0-9a-f]+)\n", data).group(1)
    nersc.write_bytes(data.replace(b"CHECKSUM = " + ck, b"CHECKSUM = 1" + ck.rjust(8, b"0")))
    with pytest.raises(FormatError, match=rf"header key 'CHECKSUM': value '1{ck.decode():0>8}', "
                                          r"expected a 32-bit hexadecimal number"):
        read_gauge(nersc)
    plaq = re.search(rb"PLAQUETTE = (-?[0-9.]+)\n", data).group(1)
    nersc.write_bytes(data.replace(b"PLAQUETTE = " + plaq, b"PLAQUETTE = nan"))
    with pytest.raises(FormatError, match=r"header key 'PLAQUETTE': value 'nan', expected a "
                                          r"finite number"):
        read_gauge(nersc)


def test_nersc_without_checksum_warns_that_it_cannot_be_verified(nersc):
    data = nersc.read_bytes()
    line = re.search(rb"CHECKSUM = [0-9a-f]+\n", data).group(0)
    nersc.write_bytes(data.replace(line, b""))
    offset = data.index(b"END_HEADER\n") + len(b"END_HEADER\n") - len(line)
    with pytest.warns(IntegrityWarning) as caught:
        _, info = read_gauge(nersc)
    assert info.checksum == "absent"
    assert [str(w.message) for w in caught] == [
        f"file '{nersc}', header: no CHECKSUM entry; the binary data at byte {offset} cannot be "
        f"verified (integrity unknown)"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_gauge(nersc, verify=False)


def test_nersc_checksum_misses_compensating_changes(nersc, field):
    """A limit of the format, not of the reader: the NERSC CHECKSUM is a sum of 32-bit words,
    so +1 in the last byte of one word and -1 in another cancel, and a change of one rounding
    unit is below what the plaquette, link trace and unitarity can see.  Such a file reads
    without complaint (docs/formats.md, "Integrity contract")."""
    data = bytearray(nersc.read_bytes())
    start = data.index(b"END_HEADER\n") + len(b"END_HEADER\n")
    a, b = start + 3, start + 4 * 37 + 3  # last (big-endian) bytes of words 0 and 37
    assert data[a] < 255 and data[b] > 0
    data[a] += 1
    data[b] -= 1
    nersc.write_bytes(bytes(data))
    u, info = read_gauge(nersc)
    assert info.checksum == "ok" and all(c["ok"] for c in info.header_checks.values())
    assert 0 < float((u - field.to(torch.complex64)).abs().max()) < 1e-6


def test_link_trace_mismatch(nersc):
    text = nersc.read_bytes()
    lt = re.search(rb"LINK_TRACE = (-?[0-9.]+)\n", text).group(1)
    _replace(nersc, b"LINK_TRACE = " + lt, b"LINK_TRACE = 0.5")
    with pytest.raises(ChecksumError, match=r"header key 'LINK_TRACE': stored 0\.5, computed"):
        read_gauge(nersc)


# -- non-unitary links ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ildg", "nersc", "milc", "hdf5"])
def test_non_unitary_links(tmp_path, field, fmt):
    bad = field.clone()
    bad[0, 2, 1, 0, 3, 2] *= 1.01  # U_2 at x=2, y=3, z=0, t=1
    path = tmp_path / f"bad.{fmt}"
    write_gauge(path, bad, format=fmt, precision=32 if fmt == "milc" else 64)
    with pytest.raises(FormatError) as exc:
        read_gauge(path, verify=False)
    msg = str(exc.value)
    assert str(path) in msg and "not unitary" in msg and "expected <= 1e-05" in msg
    if fmt != "hdf5":
        assert "U_2(x=2, y=3, z=0, t=1)" in msg
    u, info = read_gauge(path, verify=False, unitarity_tol=0.1)
    assert info.max_unitarity_violation == pytest.approx(0.0201, abs=1e-3)
    read_gauge(path, verify=False, check_unitarity=False)


@pytest.mark.parametrize("fmt", ["ildg", "nersc", "milc"])
def test_non_unitary_link_is_located_in_a_later_chunk(tmp_path, fmt):
    """Links are checked in file order chunk by chunk: a bad link far into the file (many small
    chunks) is named by its own direction and site, and the worst of several bad links is
    reported as the maximum."""
    nrow = (4, 6, 2, 8)  # x y z t
    u = random_gauge(Lattice(nrow), "SU3", generator=torch.Generator().manual_seed(3))
    bad = u.clone()
    bad[0, 1, 6, 1, 4, 3] *= 1.01  # U_1 at x=3, y=4, z=1, t=6: site rank 3+4*4+1*24+6*48
    bad[0, 3, 7, 0, 5, 1] *= 1.02  # a worse link later on
    path = tmp_path / f"bad.{fmt}"
    write_gauge(path, bad, format=fmt, precision=32 if fmt == "milc" else 64)
    where = r"U_1\(x=3, y=4, z=1, t=6\) is not unitary: .* = 0\.0201"
    with pytest.raises(FormatError, match=where):
        read_gauge(path, verify=False, chunk_bytes=5 * 576)
    _, info = read_gauge(path, verify=False, unitarity_tol=0.1, chunk_bytes=5 * 576)
    assert info.max_unitarity_violation == pytest.approx(1.02**2 - 1, abs=1e-6)


def test_nan_links_are_rejected(tmp_path, field):
    bad = field.clone()
    bad[0, 0, 0, 0, 0, 0, 1, 1] = complex("nan")
    path = tmp_path / "nan.lime"
    write_gauge(path, bad)
    with pytest.raises(FormatError, match=r"U_0\(x=0, y=0, z=0, t=0\) is not unitary: .* = inf"):
        read_gauge(path)


# -- existing output paths -------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ildg", "nersc", "milc", "hdf5"])
def test_existing_output_is_refused(tmp_path, field, fmt):
    path = tmp_path / f"out.{fmt}"
    path.write_bytes(b"precious")
    prec = 32 if fmt == "milc" else 64
    with pytest.raises(FileExistsError, match=rf"{re.escape(str(path))}': output path exists; "
                                              r"refusing to overwrite it \(pass overwrite=True"):
        write_gauge(path, field, format=fmt, precision=prec)
    assert path.read_bytes() == b"precious"
    write_gauge(path, field, format=fmt, precision=prec, overwrite=True)
    want = field if prec == 64 else field.to(torch.complex64).to(torch.complex128)
    assert torch.equal(read_gauge(path)[0], want)
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporaries left


def test_bad_field_arguments(tmp_path, field):
    with pytest.raises(ValueError, match=r"U: expected one SU\(3\) gauge field of shape "
                                         r"\[1, 4, Lt, Lz, Ly, Lx, 3, 3\]"):
        write_gauge(tmp_path / "a.lime", torch.cat([field, field]))
    with pytest.raises(ValueError, match="U: expected a complex dtype"):
        write_gauge(tmp_path / "a.lime", field.real)
    with pytest.raises(ValueError, match=r"file_xml: not well-formed XML"):
        write_gauge(tmp_path / "a.lime", field, file_xml="<a>")
    with pytest.raises(ValueError, match="format: expected one of ildg, nersc, milc, hdf5"):
        write_gauge(tmp_path / "a.x", field, format="openqcd")
    with pytest.raises(FileNotFoundError, match="output directory"):
        write_gauge(tmp_path / "missing" / "a.lime", field)
    assert not (tmp_path / "a.lime").exists()


# -- interrupted writes ----------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["ildg", "nersc", "milc", "hdf5"])
@pytest.mark.parametrize("previous", [False, True])
def test_interrupted_write_leaves_nothing_or_the_old_file(tmp_path, field, monkeypatch, fmt,
                                                          previous):
    path = tmp_path / f"cfg.{fmt}"
    prec = 32 if fmt == "milc" else 64
    old = None
    if previous:
        write_gauge(path, field, format=fmt, precision=prec)
        old = path.read_bytes()
    calls = {"n": 0}
    real = ildg_mod.project_to_file

    def failing(src, block):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash in the middle of the binary data")
        real(src, block)

    monkeypatch.setattr(ildg_mod, "project_to_file", failing)
    options = {"chunk_bytes": 2000}
    if fmt == "hdf5":  # the HDF5 writer copies per time slice: interrupt it half-way
        import bridge.io.hdf5 as h5mod

        def failing_append(self, u, **kwargs):
            if "configs" not in self._h5:
                h5mod._init_configs(self._h5, Lattice.of(u))
            self._h5["configs"]["links"].resize(1, axis=0)
            self._h5["configs"]["links"][0, 0, 0] = 1.0
            raise KeyboardInterrupt("simulated crash while appending")

        monkeypatch.setattr(h5mod.EnsembleStore, "append", failing_append)
        options = {}
    with pytest.raises(KeyboardInterrupt):
        write_gauge(path, -field, format=fmt, precision=prec, overwrite=True, **options)
    if previous:
        assert path.read_bytes() == old
    else:
        assert not path.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ([path.name] if previous else [])


def test_killed_process_never_leaves_a_truncated_file(tmp_path, field):
    """A hard kill (os._exit, no clean-up) during the write: the final name holds the old file;
    only a hidden temporary remains."""
    path = tmp_path / "cfg.lime"
    write_gauge(path, field)
    old = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, torch
        import bridge.io.ildg as m
        from bridge.io import write_gauge
        from bridge.gauge import random_gauge
        from bridge.lattice import Lattice
        u = random_gauge(Lattice({NROW}), "SU3")
        real, n = m.project_to_file, [0]
        def dying(src, block):
            n[0] += 1
            if n[0] == 3:
                os._exit(17)
            real(src, block)
        m.project_to_file = dying
        write_gauge({str(path)!r}, u, overwrite=True, chunk_bytes=2000)
    """)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          timeout=120)
    assert proc.returncode == 17, proc.stderr.decode()
    assert path.read_bytes() == old
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != path.name]
    assert all(n.startswith(".cfg.lime.") and n.endswith(".tmp") for n in leftovers)


def test_errors_are_project_types():
    assert issubclass(FormatError, BridgeError) and issubclass(ChecksumError, FormatError)
