"""Format detection, the ``inspect`` summary and ``convert``, with their command-line
subcommands (``qcd-bridge inspect FILE [--json]``, ``qcd-bridge convert IN OUT --to FMT``).

Detection uses the first bytes only: the LIME magic ``0x456789AB`` (c-lime ``LIME_MAGIC_NO``),
``BEGIN_HEADER`` (NERSC), the HDF5 signature ``\\x89HDF\\r\\n\\x1a\\n``, or the int32 MILC magic
20103 in either byte order.

:mod:`bridge.cli.io` registers the subcommands; their handlers :func:`run_inspect` and
:func:`run_convert` take the parsed options and return the exit code: 0 success, 1 a checksum
or header check failed (inspect), 2 the file could not be read or written.
"""

from __future__ import annotations

import json
import math
import os
import struct
import sys
import warnings
from collections.abc import Sequence
from typing import Any

from lxml import etree

from ..errors import BridgeError, FormatError
from ..gauge import mesplq, polyakov_loop
from .lime import LIME_MAGIC

__all__ = [
    "FORMATS",
    "detect_format",
    "summarize",
    "format_summary",
    "convert",
    "run_inspect",
    "run_convert",
]

FORMATS = ("ildg", "nersc", "milc", "hdf5")
_MILC_MAGIC = 20103


def detect_format(path: str | os.PathLike[str]) -> str:
    """``"ildg"`` (any LIME file), ``"nersc"``, ``"milc"`` or ``"hdf5"`` from the first bytes;
    :class:`FormatError` if none matches."""
    spath = os.fspath(path)
    try:
        with open(spath, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise FormatError(f"file '{spath}': cannot open: {exc.strerror}") from exc
    if len(head) >= 4 and struct.unpack(">I", head[:4])[0] == LIME_MAGIC:
        return "ildg"
    if head.startswith(b"BEGIN_HEADER"):
        return "nersc"
    from .hdf5 import is_hdf5  # h5py only when a file is inspected

    if is_hdf5(spath):
        return "hdf5"
    if len(head) >= 4 and _MILC_MAGIC in (
        struct.unpack(">i", head[:4])[0],
        struct.unpack("<i", head[:4])[0],
    ):
        return "milc"
    raise FormatError(
        f"file '{spath}': unknown format, first bytes {head[:8].hex() or '(empty file)'}; "
        f"expected the LIME magic 456789ab (ILDG/SciDAC), 'BEGIN_HEADER' (NERSC), the MILC "
        f"magic 20103 or the HDF5 signature"
    )


def summarize(
    path: str | os.PathLike[str],
    *,
    nrow: Sequence[int] | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """Everything ``inspect`` prints, as a JSON-ready dict: format, nrow (x y z t), precision,
    records, checksum status (``"ok"``, ``"absent"``, ``"mismatch"``), Chroma's ``MesPlq``
    values (w/s/t plaquette, the six planes, link) and the Polyakov loops
    (``[re, im]`` per direction, Chroma's normalisation ``sum_x tr / (Nc V)``).

    The file is read without raising on checksum or header mismatches (they are reported) and
    without the unitarity limit (the largest violation is reported)."""
    from . import read_gauge

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        u, info = read_gauge(path, nrow=nrow, format=format, verify=False,
                             unitarity_tol=math.inf)
    m = mesplq(u)
    out: dict[str, Any] = info.as_dict()
    out["format"] = info.format
    out["nrow"] = list(info.nrow)
    out["w_plaq"] = float(m.w_plaq[0])
    out["s_plaq"] = float(m.s_plaq[0]) if m.s_plaq is not None else None
    out["t_plaq"] = float(m.t_plaq[0])
    out["planes"] = {f"{mu}{nu}": float(v[0]) for (mu, nu), v in m.planes.items()}
    out["link"] = float(m.link[0])
    poly = [complex(polyakov_loop(u, mu, normalisation="chroma")[0]) for mu in range(4)]
    out["poly_loop"] = [[p.real, p.imag] for p in poly]
    header_ok = all(bool(c["ok"]) for c in info.header_checks.values())
    out["header_checks_ok"] = header_ok
    out["warnings"] = [str(w.message) for w in caught]
    # keep the JSON small: long text records are cut
    out["metadata"] = {
        k: (v[:2000] + "...") if isinstance(v, str) and len(v) > 2000 else v
        for k, v in out["metadata"].items()
    }
    return _finite(out)


def _finite(obj: Any) -> Any:
    """Non-finite floats become ``None`` so that the JSON is strict (no NaN/Infinity)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def format_summary(s: dict[str, Any]) -> str:
    """Human-readable form of :func:`summarize`'s dict."""
    lines = [
        f"file          {s['path']}",
        f"format        {s['format']} ({s['variant']})",
        f"lattice       {' '.join(map(str, s['nrow']))}  (x y z t)",
        f"precision     {s['precision']}-bit, {s['endianness']}-endian",
    ]
    ck = s["checksum"]
    detail = ""
    if s.get("checksum_stored") or s.get("checksum_computed"):
        stored = " ".join(f"{k} {v}" for k, v in (s.get("checksum_stored") or {}).items())
        comp = " ".join(f"{k} {v}" for k, v in (s.get("checksum_computed") or {}).items())
        detail = f"  stored [{stored or '-'}]  computed [{comp or '-'}]"
    lines.append(f"checksum      {ck}{detail}")
    for key, c in s.get("header_checks", {}).items():
        lines.append(
            f"header {key:<10} stored {c['stored']!r}  computed {c['computed']:.10f}  "
            f"{'ok' if c['ok'] else 'MISMATCH'}"
        )
    if s.get("records"):
        lines.append("records")
        for r in s["records"]:
            flags = ("MB " if r["mb"] else "   ") + ("ME" if r["me"] else "  ")
            lines.append(
                f"  {r['index']:3d}  @{r['offset']:>10d}  {r['type']:<28s} {r['nbytes']:>12d} "
                f"bytes  {flags}"
            )
    lines += [
        f"w_plaq        {s['w_plaq']:.15f}",
        f"s_plaq        {s['s_plaq']:.15f}",
        f"t_plaq        {s['t_plaq']:.15f}",
    ]
    for plane, v in s["planes"].items():
        lines.append(f"plane_{plane}_plaq {v:.15f}")
    lines.append(f"link          {s['link']:.15f}")
    for mu, (re_, im_) in enumerate(s["poly_loop"]):
        lines.append(f"poly_loop[{mu}]  {re_: .15f} {im_: .15f}i")
    if s.get("max_unitarity_violation") is not None:
        lines.append(f"max |UU^+-1|  {s['max_unitarity_violation']:.3g}")
    for w in s.get("warnings", []):
        lines.append(f"warning       {w}")
    return "\n".join(lines)


def _well_formed(text: Any) -> bool:
    if not isinstance(text, str) or not text.strip():
        return False
    try:
        etree.fromstring(text.strip().encode("utf-8"))
    except (etree.XMLSyntaxError, ValueError):
        return False
    return True


def convert(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    to: str,
    precision: int | None = None,
    nrow: Sequence[int] | None = None,
    overwrite: bool = False,
    verify: bool = True,
    reunitarize: bool = False,
    storage: str = "3x3",
) -> dict[str, Any]:
    """Read ``src`` (any format) and write ``dst`` as ``to``; precision defaults to the
    source's (MILC output: 32).  ILDG user XML and LFN of an ILDG source are carried over.
    Returns a small report dict."""
    from . import read_gauge, write_gauge

    u, info = read_gauge(src, nrow=nrow, verify=verify, reunitarize=reunitarize)
    target = to.lower()
    prec = precision if precision is not None else (32 if target == "milc" else info.precision)
    options: dict[str, Any] = {}
    if target == "ildg" and info.format == "ildg":
        for key, rtype in (("file_xml", "scidac-file-xml"), ("record_xml", "scidac-record-xml")):
            if _well_formed(info.metadata.get(rtype)):
                options[key] = info.metadata[rtype]
        lfn = info.metadata.get("ildg-data-lfn")
        if isinstance(lfn, str) and lfn.strip():
            options["lfn"] = lfn.strip()
    if target == "nersc":
        options["storage"] = storage
    out = write_gauge(dst, u, format=target, precision=prec, overwrite=overwrite, **options)
    return {
        "input": os.fspath(src),
        "input_format": info.format,
        "input_checksum": info.checksum,
        "output": os.fspath(dst),
        "format": out.format,
        "precision": out.precision,
        "nrow": list(out.nrow),
        "checksum": out.checksum_computed,
    }


# -- command line -----------------------------------------------------------------------------
def run_inspect(args: Any) -> int:
    """Handler of ``qcd-bridge inspect``."""
    try:
        s = summarize(args.file, nrow=args.nrow, format=args.format)
    except (BridgeError, ValueError, OSError) as exc:
        print(f"qcd-bridge inspect: error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(s, sort_keys=True, allow_nan=False))
    else:
        print(format_summary(s))
    return 1 if s["checksum"] == "mismatch" or not s["header_checks_ok"] else 0


def run_convert(args: Any) -> int:
    """Handler of ``qcd-bridge convert``."""
    try:
        report = convert(
            args.input,
            args.output,
            to=args.to,
            precision=args.precision,
            nrow=args.nrow,
            overwrite=args.overwrite,
            verify=not args.no_verify,
            reunitarize=args.reunitarize,
            storage=args.storage,
        )
    except (BridgeError, ValueError, OSError) as exc:
        print(f"qcd-bridge convert: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"wrote {report['output']}: {report['format']}, {report['precision']}-bit, lattice "
        f"{' '.join(map(str, report['nrow']))} (from {report['input_format']} "
        f"{report['input']}, checksum {report['input_checksum']})"
    )
    return 0
