"""Mutated copies of real files (Chroma-written ILDG, PyQUDA, lyncs/tmLQCD with and without its
checksum record, a LIME file with only a binary record, NERSC, and a MILC file written by the
project) keep the integrity contract: a project exception naming the file and the place, or the
original links exactly, or different links *with* an :class:`IntegrityWarning` -- never a
different field in silence.

Mutations and oracle are those of ``benchmarks/bench_fuzz.py`` (the 10^4-mutant campaign); here
a bounded, seeded number per class and file, deterministic on every run (a few seconds).
``HYPOTHESIS_PROFILE=explore`` lets the hypothesis test draw fresh mutants."""

from __future__ import annotations

import importlib.util
import random
import sys
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.errors import FormatError
from bridge.io import IntegrityWarning, read_gauge

DATA = Path(__file__).parent / "data"
BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fuzz.py"
NAMES = ("chroma_ildg", "pyquda", "lyncs", "lyncs_nock", "binary_ildg", "nersc", "milc")
CLASSES = ("bitflip", "header", "truncate", "insert", "delete")
#: files whose binary data a stored checksum covers
CHECKSUMMED = ("chroma_ildg", "pyquda", "lyncs", "nersc", "milc")
PER_CELL = 20  # mutants per file and class on every run: 7 x 5 x 20 = 700 reads
SWEEP_READS = 150  # header bytes swept per file


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("bench_fuzz", BENCH)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_fuzz"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def seeds(fuzz, tmp_path_factory):
    return fuzz.load_seeds(tmp_path_factory.mktemp("seeds"), seed=0, data=DATA)


def _allowed(name: str, cls: str) -> set[str]:
    ok = {"identical", "identical_warned", "project_error", "differs_integrity_warned"}
    if name in CHECKSUMMED and cls in ("bitflip", "header"):
        # one flipped bit or header byte: the data are intact or the checksum catches it
        ok.discard("differs_integrity_warned")
    return ok


def test_reference_files_and_oracle(fuzz, seeds, tmp_path):
    """Every reference file is present and reads as itself (so the oracle compares against real
    links), and the oracle tells the outcomes apart."""
    assert tuple(seeds) == NAMES
    for name, s in seeds.items():
        path = tmp_path / name
        path.write_bytes(s.data)
        outcome, _ = fuzz.classify(path, s)
        want = "identical_warned" if name in ("lyncs_nock", "binary_ildg") else "identical"
        assert outcome == want, (name, outcome)
        assert 0 < s.meta_size < len(s.data)
    s = seeds["binary_ildg"]
    path = tmp_path / "changed.ildg"
    data = bytearray(s.data)
    data[-1] ^= 1  # lowest mantissa bit of the last real: different links, no checksum
    path.write_bytes(bytes(data))
    assert fuzz.classify(path, s)[0] == "differs_integrity_warned"
    outcome, detail = fuzz.classify(tmp_path / "missing", s)
    assert outcome == "error_without_place" and "cannot open" in detail  # no place named


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("name", NAMES)
def test_mutants_keep_the_contract(fuzz, seeds, name, cls, tmp_path):
    allowed = _allowed(name, cls)
    bad = []
    for k in range(PER_CELL):
        path = tmp_path / f"mutant_{k}_{name}"
        path.write_bytes(fuzz.mutate(seeds[name], cls, random.Random(f"ci:{name}:{cls}:{k}")))
        outcome, detail = fuzz.classify(path, seeds[name])
        if outcome not in allowed:
            bad.append(f"#{k} {outcome}: {detail}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("name", NAMES)
def test_header_byte_sweep(fuzz, seeds, name, tmp_path):
    """Deterministic sweep over the metadata (LIME headers and XML, NERSC and MILC headers):
    evenly spaced bytes replaced by ':' (the character behind lxml's ``':recision'``) or
    bit-inverted."""
    s = seeds[name]
    path = tmp_path / name
    step = max(1, s.meta_size // SWEEP_READS)
    bad = []
    for k in range(0, s.meta_size, step):
        pos = s.meta_position(k)
        buf = bytearray(s.data)
        buf[pos] = ord(":") if (k // step) % 2 == 0 and buf[pos] != ord(":") else buf[pos] ^ 0xFF
        path.write_bytes(bytes(buf))
        outcome, detail = fuzz.classify(path, s)
        if outcome not in _allowed(name, "header"):
            bad.append(f"byte {pos}: {outcome}: {detail}")
    assert not bad, "\n".join(bad)


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(NAMES), cls=st.sampled_from(CLASSES),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_mutants(fuzz, seeds, name, cls, seed):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"mutant_{name}"
        path.write_bytes(fuzz.mutate(seeds[name], cls, random.Random(seed)))
        outcome, detail = fuzz.classify(path, seeds[name])
    assert outcome in _allowed(name, cls), f"{outcome}: {detail}"


# -- the three findings of the campaign that motivated the contract ---------------------------
def test_recovered_xml_with_an_invalid_tag_is_a_format_error(tmp_path):
    """lxml recovers ``<:recision>`` as a tag on which ``etree.QName`` raised ``ValueError``;
    now a :class:`FormatError` naming file, record and byte offset."""
    data = (DATA / "public" / "pyquda_weak_field.lime").read_bytes()
    path = tmp_path / "recision.lime"
    path.write_bytes(data.replace(b"<precision>64<", b"<:recision>64<", 1))
    with pytest.raises(FormatError) as exc:
        read_gauge(path)
    msg = str(exc.value)
    assert msg.startswith(f"file '{path}', record 4 'ildg-format' (header at byte ")
    assert "lxml's recovered tree has an invalid element name ':recision'" in msg


def test_lime_without_checksum_and_inserted_bytes_warns(seeds, tmp_path):
    """A byte inserted into the last real of a LIME file without a checksum record changes the
    links; the read says that the data cannot be verified."""
    data = seeds["lyncs_nock"].data
    path = tmp_path / "nock.lime"
    path.write_bytes(data[:-1] + b"\x01" + data[-1:])
    with pytest.warns(IntegrityWarning) as caught:
        u, info = read_gauge(path)
    assert info.checksum == "absent" and not torch.equal(u, seeds["lyncs_nock"].field)
    assert any(str(w.message).startswith(f"file '{path}', record 2 'ildg-binary-data' (header "
                                         f"at byte 920): no 'scidac-checksum' record follows it; "
                                         f"the binary data cannot be verified")
               for w in caught)


def test_nersc_header_values_are_checked_tightly(seeds, tmp_path):
    """Chroma's 32-bit two-row NERSC file: a header plaquette or link trace changed by 1e-6 was
    accepted within QDP++'s 1e-5; now each must agree to ~4e-7 (the file's own values agree to
    5e-10), and the original reads without a warning."""
    data = seeds["nersc"].data
    path = tmp_path / "t.cfg"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, info = read_gauge(path)
    assert all(c["ok"] and c["tolerance"] < 5e-7 for c in info.header_checks.values())
    for key, old, new in ((b"PLAQUETTE", b"0.0382422893", b"0.0382432893"),
                          (b"LINK_TRACE", b"0.4630322094", b"0.4630312094")):
        path.write_bytes(data.replace(key + b" = " + old, key + b" = " + new, 1))
        with pytest.raises(FormatError, match=rf"'{key.decode()}': stored {new.decode()}, "
                                              r"computed 0\.\d+ from the data \(difference "
                                              r"1e-06, expected <= 4\.\d+e-07 for "):
            read_gauge(path)
