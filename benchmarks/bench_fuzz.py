"""Mutation campaign against the gauge-field readers: ``--n`` randomly mutated copies of real
reference files (Chroma-written ILDG, PyQUDA, lyncs/tmLQCD, lyncs without its checksum record,
a LIME file holding only a binary record, NERSC, and a MILC file written here) are read with
:func:`bridge.io.read_gauge`.

Each mutant carries one error of one class: ``bitflip`` (one bit anywhere), ``header`` (one
byte of the metadata -- LIME record headers and XML, the NERSC header, the MILC header --
replaced), ``truncate`` (the file cut short), ``insert`` / ``delete`` (1-16 bytes inserted or
deleted).  The contract checked (docs/formats.md, "Integrity contract"): a mutant either fails
with a project exception (:class:`~bridge.errors.BridgeError`) naming the file and a place
(record, byte offset, header key or line), or reads identically (possibly with a warning), or
reads differently *and* warned that its integrity could not be verified
(:class:`~bridge.io.IntegrityWarning`).  Any other exception, an exception without file and
place, or a different field without that warning is a failure; the script then exits 1.

    python benchmarks/bench_fuzz.py [--n 10000] [--seed 0] [--out benchmarks/results/fuzz.json]
                                    [--formats NAME ...] [--classes CLASS ...]

Deterministic for a given ``--seed`` and ``--n``.  ``tests/test_io_fuzz.py`` uses the same
mutations and oracle (:func:`mutate`, :func:`classify`) on a bounded number of mutants.
"""

from __future__ import annotations

import argparse
import io
import random
import re
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bridge.errors import BridgeError
from bridge.io import IntegrityWarning, read_gauge, write_gauge
from bridge.io.lime import scan_records
from bridge.io.milc import HEADER_BYTES as MILC_HEADER_BYTES
from bridge.io.nersc import read_nersc_header

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
CLASSES = ("bitflip", "header", "truncate", "insert", "delete")
#: outcomes; the last three break the contract
OUTCOMES = ("identical", "identical_warned", "differs_integrity_warned", "project_error",
            "error_without_place", "other_error", "silently_different")
FAILURES = ("error_without_place", "other_error", "silently_different")
#: a project exception must name a place besides the file
PLACE = re.compile(r"record \d+|byte \d+|header key '|header line \d+|MILC header|"
                   r"unknown format, first bytes")
#: byte values for header mutations: half random, half from characters the parsers care about
_ALPHABET = b"0123456789abcdefABCDEF<>/:=. \n\t-_x?!\"'&;"


@dataclass(frozen=True)
class Seed:
    """A reference file: its bytes, the ``nrow`` it needs, its metadata byte ranges (headers,
    XML) and the field read from it unmutated."""

    name: str
    data: bytes
    nrow: tuple[int, ...] | None
    meta: tuple[tuple[int, int], ...]
    field: torch.Tensor

    @property
    def meta_size(self) -> int:
        return sum(b - a for a, b in self.meta)

    def meta_position(self, k: int) -> int:
        """The ``k``-th metadata byte (0 <= k < meta_size) as a file offset."""
        for a, b in self.meta:
            if k < b - a:
                return a + k
            k -= b - a
        raise IndexError(k)


def _lime_meta(data: bytes) -> tuple[tuple[int, int], ...]:
    records = scan_records(io.BytesIO(data), "<seed>", len(data))
    out, start = [], 0
    for rec in records:
        if "binary-data" in rec.type:
            out.append((start, rec.data_offset))
            start = rec.end
    out.append((start, len(data)))
    return tuple((a, b) for a, b in out if b > a)


def _milc_seed(folder: Path, seed: int) -> Path:
    """A 4^4 MILC file written by the project's own writer (no MILC file ships with the tests)."""
    from bridge.gauge import random_gauge
    from bridge.lattice import Lattice

    u = random_gauge(Lattice((4, 4, 4, 4)), "SU3", generator=torch.Generator().manual_seed(seed))
    path = folder / "random_4x4x4x4.milc"
    write_gauge(path, u, format="milc", precision=32, overwrite=True,
                time_stamp="qcd-bridge fuzz seed")
    return path


def load_seeds(folder: Path, seed: int = 0, data: Path = DATA) -> dict[str, Seed]:
    """The reference files (from ``data``, by default ``tests/data``; MILC written into
    ``folder``), keyed by a short name; also ``lyncs_nock``, the lyncs file with its
    ``scidac-checksum`` record removed."""
    public = data / "public"
    chroma = data / "chroma" / "pure_gauge_b5.5_4x4" / "pg_b5.5_4x4_cfg_500.lime"
    lyncs = (public / "lyncs_unity.lime").read_bytes()
    last = scan_records(io.BytesIO(lyncs), "<lyncs>", len(lyncs))[-1]
    assert last.type == "scidac-checksum", last
    sources: dict[str, tuple[bytes, tuple[int, ...] | None]] = {
        "chroma_ildg": (chroma.read_bytes(), None),
        "pyquda": ((public / "pyquda_weak_field.lime").read_bytes(), None),
        "lyncs": (lyncs, None),
        "lyncs_nock": (lyncs[: last.header_offset], None),
        "binary_ildg": ((public / "qcdmeas_conf_00000008.ildg").read_bytes(), (4, 4, 4, 4)),
        "nersc": ((public / "chroma_t_nersc.cfg").read_bytes(), None),
        "milc": (_milc_seed(folder, seed).read_bytes(), None),
    }
    seeds = {}
    for name, (data, nrow) in sources.items():
        path = folder / f"seed_{name}"
        path.write_bytes(data)
        if name == "nersc":
            meta: tuple[tuple[int, int], ...] = ((0, read_nersc_header(path)[1]),)
        elif name == "milc":
            meta = ((0, MILC_HEADER_BYTES),)
        else:
            meta = _lime_meta(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            u, _ = read_gauge(path, nrow=nrow)
        seeds[name] = Seed(name, data, nrow, meta, u)
    return seeds


def mutate(s: Seed, cls: str, rng: random.Random) -> bytes:
    """One error of class ``cls`` in a copy of the seed's bytes, drawn from ``rng``."""
    buf = bytearray(s.data)
    n = len(buf)

    def position(extra: int = 0) -> int:  # half in the metadata, half anywhere
        if rng.random() < 0.5:
            return s.meta_position(rng.randrange(s.meta_size))
        return rng.randrange(n + extra)

    if cls == "bitflip":
        buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
    elif cls == "header":
        pos = s.meta_position(rng.randrange(s.meta_size))
        choices = [v for v in (_ALPHABET if rng.random() < 0.5 else range(256)) if v != buf[pos]]
        buf[pos] = rng.choice(choices)
    elif cls == "truncate":
        cut = rng.randrange(n) if rng.random() < 0.5 else max(0, n - 1 - rng.randrange(512))
        del buf[cut:]
    elif cls == "insert":
        pos = position(extra=1)
        buf[pos:pos] = rng.randbytes(rng.randint(1, 16))
    elif cls == "delete":
        pos = position()
        del buf[pos : pos + rng.randint(1, 16)]
    else:
        raise ValueError(f"cls: expected one of {', '.join(CLASSES)}, got {cls!r}")
    return bytes(buf)


def classify(path: Path, s: Seed) -> tuple[str, str]:
    """Read the mutant at ``path``; returns ``(outcome, detail)`` with an outcome of
    :data:`OUTCOMES` and the message of the exception or warnings behind it."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # never deduplicated: every mutant reports its own
        try:
            u, _ = read_gauge(path, nrow=s.nrow)
        except BridgeError as exc:
            msg = str(exc)
            ok = str(path) in msg and PLACE.search(msg) is not None
            return ("project_error" if ok else "error_without_place"), msg
        except Exception as exc:  # noqa: BLE001 - the campaign's point is to catch them all
            return "other_error", f"{type(exc).__name__}: {exc}"
    notes = "; ".join(f"{w.category.__name__}: {w.message}" for w in caught)
    if u.shape == s.field.shape and torch.equal(u, s.field):
        return ("identical_warned" if caught else "identical"), notes
    if any(issubclass(w.category, IntegrityWarning) and str(path) in str(w.message)
           for w in caught):
        return "differs_integrity_warned", notes
    diff = ((u - s.field).abs().max().item() if u.shape == s.field.shape
            else f"shape {tuple(u.shape)}")
    return "silently_different", f"max difference {diff}; warnings: {notes or 'none'}"


def campaign(seeds: dict[str, Seed], n: int, seed: int, folder: Path,
             classes: tuple[str, ...] = CLASSES) -> Iterator[tuple[str, str, int, str, str]]:
    """``n`` mutants spread evenly over seeds x classes; yields
    ``(seed name, class, index, outcome, detail)``."""
    cells = [(name, cls) for name in seeds for cls in classes]
    for i in range(n):
        name, cls = cells[i % len(cells)]
        k = i // len(cells)
        rng = random.Random(f"{seed}:{name}:{cls}:{k}")
        path = folder / f"mutant_{name}"
        path.write_bytes(mutate(seeds[name], cls, rng))
        outcome, detail = classify(path, seeds[name])
        yield name, cls, k, outcome, detail


_COLUMNS = (("n", None), ("identical", "identical"), ("ident+warn", "identical_warned"),
            ("differs+integrity", "differs_integrity_warned"), ("project exc", "project_error"),
            ("exc w/o place", "error_without_place"), ("OTHER exc", "other_error"),
            ("SILENTLY DIFFERENT", "silently_different"))


def format_table(counts: dict[tuple[str, str], dict[str, int]]) -> str:
    """One row per format x class (and per format), one column per outcome."""
    head = f"{'format':<12} {'class':<9}" + "".join(f" {c:>{max(len(c), 5)}}" for c, _ in _COLUMNS)
    lines = [head, "-" * len(head)]
    names = list(dict.fromkeys(k[0] for k in counts))
    for name in names:
        rows = [(cls, counts[(name, cls)]) for cls in CLASSES if (name, cls) in counts]
        total = {o: sum(r[o] for _, r in rows) for o in OUTCOMES}
        for cls, row in [*rows, ("all", total)]:
            cells = [sum(row.values())] + [row[o] for _, o in _COLUMNS[1:]]
            lines.append(f"{name:<12} {cls:<9}" + "".join(
                f" {v:>{max(len(c), 5)}}" for (c, _), v in zip(_COLUMNS, cells, strict=True)))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=10_000, help="number of mutants (default 10000)")
    ap.add_argument("--seed", type=int, default=0, help="campaign seed (default 0)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" /
                                         "fuzz.json"), help="JSON result file")
    ap.add_argument("--formats", nargs="+", default=None, metavar="NAME",
                    help="only these reference files (default: all of chroma_ildg pyquda "
                         "lyncs lyncs_nock binary_ildg nersc milc)")
    ap.add_argument("--classes", nargs="+", default=list(CLASSES), choices=CLASSES,
                    help="only these mutation classes (default: all)")
    ap.add_argument("--show", type=int, default=5,
                    help="failures printed per outcome (default 5)")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _results import write_results

    counts: dict[tuple[str, str], dict[str, int]] = {}
    failures: list[dict[str, object]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_fuzz_") as tmp:
        folder = Path(tmp)
        seeds = load_seeds(folder, args.seed)
        if args.formats:
            unknown = sorted(set(args.formats) - set(seeds))
            if unknown:
                ap.error(f"--formats: unknown {', '.join(unknown)}; expected some of "
                         f"{', '.join(seeds)}")
            seeds = {k: v for k, v in seeds.items() if k in args.formats}
        for name, cls, k, outcome, detail in campaign(seeds, args.n, args.seed, folder,
                                                      tuple(args.classes)):
            row = counts.setdefault((name, cls), dict.fromkeys(OUTCOMES, 0))
            row[outcome] += 1
            if outcome in FAILURES:
                failures.append({"format": name, "class": cls, "index": k, "outcome": outcome,
                                 "detail": detail[:500]})
    seconds = time.perf_counter() - t0
    print(format_table(counts))
    print(f"{args.n} mutants in {seconds:.1f} s ({1e3 * seconds / max(args.n, 1):.2f} ms each), "
          f"seed {args.seed}")
    for outcome in FAILURES:
        shown = [f for f in failures if f["outcome"] == outcome][: args.show]
        for f in shown:
            print(f"{outcome}: {f['format']} {f['class']} #{f['index']}: {f['detail']}")
    rows = [{"format": name, "class": cls, "n": sum(row.values()), **row}
            for (name, cls), row in counts.items()]
    write_results(args.out, rows, n=args.n, seed=args.seed, seconds=round(seconds, 2),
                  failures=failures[:200])
    bad = len(failures)
    print("contract held: only project exceptions, identical reads, or differences with an "
          "integrity warning" if not bad else f"CONTRACT BROKEN by {bad} mutants")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
