"""Real files: every public reference file and every Chroma configuration reads with the
values its provenance states (plaquette, checksum), and Chroma's own measurements are
reproduced; rewriting the links of Chroma/QIO files reproduces them byte for byte."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest
from conftest import external_file

from bridge.gauge import mesplq, polyakov_loop
from bridge.io import FormatWarning, read_gauge, write_ildg

# (file, format, nrow given by the caller, precision, plaquette, stored checksum or None,
#  computed checksum) -- values from tests/data/PROVENANCE.md
PUBLIC = [
    ("pyquda_weak_field.lime", "ildg", None, 64, 0.994804132266700,
     {"suma": "a2c41090", "sumb": "11193c39"}),
    ("lyncs_unity.lime", "ildg", None, 64, 1.0, {"suma": "35b49a1b", "sumb": "b49a1b35"}),
    ("qcdmeas_conf_00000008.ildg", "ildg", (4, 4, 4, 4), 64, 0.614790430840494, None),
    ("chroma_t_nersc.cfg", "nersc", None, 32, 0.0382422893, {"nersc": "717938df"}),
]
# files of unclear licence, not redistributed: run with `-m external` and QCD_BRIDGE_EXTERNAL_DATA
EXTERNAL = [
    ("ahmidas_conf.48", "ildg", None, 64, 0.635005572228871,
     {"suma": "1c231a18", "sumb": "3c553b"}),
    ("ahmidas_conf.9999", "ildg", None, 64, 0.626472923739766,
     {"suma": "ec8526f5", "sumb": "c9815e53"}),
    ("ahmidas_conf48.0000", "ildg", None, 64, 0.606940320340472,
     {"suma": "30ce3715", "sumb": "422e142"}),
    ("ahmidas_conf.88", "ildg", None, 64, 0.599819441165663, None),
    ("ahmidas_lat.sample.l4444.ildg", "ildg", None, 32, 0.594850158947151,
     {"suma": "37affb9c", "sumb": "2fc07bbf"}),
    ("ahmidas_lat.sample.l4444.milc", "milc", None, 32, 0.594850158947151,
     {"sum29": "2352c05", "sum31": "d137321d"}),
]
# checksums PROVENANCE.md states as computed for the files that store none
COMPUTED_ONLY = {
    "ahmidas_conf.88": {"suma": "c60f4edd", "sumb": "4b4a1be5"},
    "qcdmeas_conf_00000008.ildg": {"suma": "b387080f", "sumb": "21a12342"},
}


@pytest.fixture(scope="module")
def public(data_dir: Path) -> Path:
    return data_dir / "public"


@pytest.mark.parametrize("name, fmt, nrow, precision, plaq, stored", PUBLIC,
                         ids=[p[0] for p in PUBLIC])
def test_public_file_plaquette_and_checksum(public, name, fmt, nrow, precision, plaq, stored):
    _check_plaquette_and_checksum(public / name, name, fmt, nrow, precision, plaq, stored)


@pytest.mark.external
@pytest.mark.parametrize("name, fmt, nrow, precision, plaq, stored", EXTERNAL,
                         ids=[p[0] for p in EXTERNAL])
def test_external_file_plaquette_and_checksum(name, fmt, nrow, precision, plaq, stored):
    _check_plaquette_and_checksum(external_file(name), name, fmt, nrow, precision, plaq, stored)


def _check_plaquette_and_checksum(path, name, fmt, nrow, precision, plaq, stored):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u, info = read_gauge(path, nrow=nrow)
    assert info.format == fmt
    assert info.precision == precision
    assert tuple(info.nrow) == tuple(nrow or info.nrow)
    assert info.nrow[0] == 4 or name == "ahmidas_conf.88"
    tol = 1e-12 if precision == 64 else 1e-6
    if name == "chroma_t_nersc.cfg":
        tol = 1e-9  # the stated value has 10 decimals
    assert float(mesplq(u).w_plaq[0]) == pytest.approx(plaq, abs=tol)
    if stored is None:
        assert info.checksum == "absent"
        assert info.checksum_computed == COMPUTED_ONLY[name]
        assert any(issubclass(w.category, FormatWarning) and "checksum" in str(w.message)
                   for w in caught)
    else:
        assert info.checksum == "ok"
        assert info.checksum_stored == stored
        assert info.checksum_computed == stored


def test_public_details(public):
    """Sub-plaquettes and link traces stated in PROVENANCE.md; the NERSC header values are
    checked."""
    u, _ = read_gauge(public / "pyquda_weak_field.lime")
    m = mesplq(u)
    assert float(m.s_plaq[0]) == pytest.approx(0.9947985783, abs=1e-10)
    assert float(m.t_plaq[0]) == pytest.approx(0.9948096862, abs=1e-10)
    assert float(m.link[0]) == pytest.approx(0.3794493487, abs=1e-10)
    # Chroma's single-precision regression output for the same WEAK_FIELD start (1.4e-7)
    assert float(m.w_plaq[0]) == pytest.approx(0.994803994066185, abs=2e-7)
    assert float(m.link[0]) == pytest.approx(0.379449338496973, abs=2e-7)

    n, info = read_gauge(public / "chroma_t_nersc.cfg")
    assert info.variant == "3x2"
    assert info.header_checks["PLAQUETTE"]["ok"] and info.header_checks["LINK_TRACE"]["ok"]
    assert float(mesplq(n).link[0]) == pytest.approx(0.4630322098, abs=1e-9)
    assert info.metadata["CREATOR_HARDWARE"].endswith("Quarks=g")  # value contains '='


def test_tmlqcd_file(public):
    """A tmLQCD file (pretty-printed ildg-format, xlf-info record) reads as alien ILDG."""
    _, info = read_gauge(public / "lyncs_unity.lime")
    assert info.variant == "ildg"
    assert "xlf-info" in info.metadata


@pytest.mark.external
def test_milc_binary_and_qio_files_hold_the_same_links():
    """MILC's binary sample lattice holds the links of its QIO ILDG file; sub-plaquettes."""
    a, ia = read_gauge(external_file("ahmidas_lat.sample.l4444.ildg"))
    b, ib = read_gauge(external_file("ahmidas_lat.sample.l4444.milc"))
    assert ia.variant == "scidac" and ib.endianness == "little"
    assert bool((a == b).all())
    m = mesplq(a)
    assert float(m.s_plaq[0]) == pytest.approx(0.5982250520, abs=1e-9)
    assert float(m.t_plaq[0]) == pytest.approx(0.5914752659, abs=1e-9)
    assert float(m.link[0]) == pytest.approx(0.6467587374, abs=1e-9)
    assert ia.metadata["ildg-data-lfn"] == "lfn://USQCD/MILC/test/lat.sample.l4444"


@pytest.mark.external
def test_tmlqcd_variants():
    """Older tmLQCD files: 0x checksums, MB=ME=1 records, extra records (xlf-info,
    ranluxd-state) -- all read as alien ILDG."""
    for name in ("ahmidas_conf.48", "ahmidas_conf.9999"):
        _, info = read_gauge(external_file(name))
        assert info.variant == "ildg"
        assert "xlf-info" in info.metadata
    _, info = read_gauge(external_file("ahmidas_conf.48"))
    assert "ranluxd-state" in [r.type for r in info.records]
    assert "0x1c231a18" in info.metadata["scidac-checksum"]


def _chroma_sets(data_dir: Path) -> list[Path]:
    base = data_dir / "chroma"
    return sorted(p for p in base.iterdir() if (p / "measured_by_chroma.json").is_file())


def test_chroma_configurations_reproduce_measurements(data_dir):
    checked = 0
    for folder in _chroma_sets(data_dir):
        entries = json.loads((folder / "measured_by_chroma.json").read_text())
        for e in entries:
            u, info = read_gauge(folder / e["file"])
            assert info.checksum == "ok" and info.variant == "scidac"
            assert info.precision == e.get("precision", 64)
            if "nrow" in e:
                assert list(info.nrow) == e["nrow"]
            m = mesplq(u)
            assert float(m.w_plaq[0]) == pytest.approx(e["w_plaq"], abs=1e-12)
            checked += 1
            if "s_plaq" in e:
                assert float(m.s_plaq[0]) == pytest.approx(e["s_plaq"], abs=1e-12)
                assert float(m.t_plaq[0]) == pytest.approx(e["t_plaq"], abs=1e-12)
                assert float(m.link[0]) == pytest.approx(e["link"], abs=1e-12)
                for (mu, nu), v in m.planes.items():
                    assert float(v[0]) == pytest.approx(e[f"plane_{mu}{nu}_plaq"], abs=1e-12)
            if "poly_loop" in e:
                for mu, (re_, im_) in enumerate(e["poly_loop"]):
                    p = complex(polyakov_loop(u, mu)[0])
                    assert p.real == pytest.approx(re_, abs=1e-12)
                    assert p.imag == pytest.approx(im_, abs=1e-12)
            if "poly_t" in e:
                p = complex(polyakov_loop(u, 3)[0])
                assert (p.real, p.imag) == pytest.approx(tuple(e["poly_t"]), abs=1e-12)
    assert checked >= 10


def _date(info) -> str:
    return re.search(r"<date>(.*?)</date>", info.metadata["scidac-private-record-xml"]).group(1)


def test_rewrite_pyquda_byte_for_byte(public, tmp_path):
    src = public / "pyquda_weak_field.lime"
    u, info = read_gauge(src)
    out = tmp_path / "rewritten.lime"
    write_ildg(out, u, precision=64, file_xml=info.metadata["scidac-file-xml"],
               record_xml=info.metadata["scidac-record-xml"], date=_date(info))
    assert out.read_bytes() == src.read_bytes()


def test_rewrite_chroma_hmc_configuration_byte_for_byte(data_dir, tmp_path):
    src = data_dir / "chroma" / "pure_gauge_b5.5_4x4" / "pg_b5.5_4x4_cfg_500.lime"
    u, info = read_gauge(src)
    out = tmp_path / "rewritten.lime"
    write_ildg(out, u, file_xml=info.metadata["scidac-file-xml"],
               record_xml=info.metadata["scidac-record-xml"], date=_date(info))
    assert out.read_bytes() == src.read_bytes()


@pytest.mark.external
def test_rewrite_milc_qio_file_byte_for_byte(tmp_path):
    """MILC's QIO file (32-bit, LFN record, old v1.0 private record XML passed through)."""
    src = external_file("ahmidas_lat.sample.l4444.ildg")
    u, info = read_gauge(src)
    out = tmp_path / "rewritten.ildg"
    write_ildg(out, u, precision=32, file_xml=info.metadata["scidac-file-xml"],
               record_xml=info.metadata["scidac-record-xml"],
               private_record=info.metadata["scidac-private-record-xml"],
               lfn=info.metadata["ildg-data-lfn"])
    assert out.read_bytes() == src.read_bytes()


def test_sloppy_real_file_variants(public, tmp_path):
    """Trailing bytes after a real file: a newline silently, junk with a warning; the field is
    unchanged.  Broken MB/ME structure (all flags cleared) is accepted."""
    src = public / "pyquda_weak_field.lime"
    u, _ = read_gauge(src)
    data = src.read_bytes()
    path = tmp_path / "sloppy.lime"
    path.write_bytes(data + b"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch_equal(read_gauge(path)[0], u)
    path.write_bytes(data + b"trailing junk " * 20)
    with pytest.warns(FormatWarning, match="ignoring 280 trailing bytes"):
        assert torch_equal(read_gauge(path)[0], u)
    buf = bytearray(data)
    off = 0
    while off + 144 <= len(buf):  # clear every MB/ME flag
        buf[off + 6] = 0
        n = int.from_bytes(buf[off + 8 : off + 16], "big")
        off += 144 + n + (-n) % 8
    path.write_bytes(bytes(buf))
    v, info = read_gauge(path)
    assert torch_equal(v, u) and info.checksum == "ok"
    assert not any(r.mb or r.me for r in info.records)


def torch_equal(a, b) -> bool:
    return bool((a == b).all())


def test_test_data_is_unchanged(data_dir):
    """Every file of tests/data is the byte-for-byte copy PROVENANCE.md describes."""
    import hashlib

    lines = (data_dir / "SHA256SUMS").read_text().split("\n")
    sums = dict(reversed(line.split("  ", 1)) for line in lines if line)
    assert len(sums) >= 20
    for name, digest in sums.items():
        assert hashlib.sha256((data_dir / name).read_bytes()).hexdigest() == digest, name
