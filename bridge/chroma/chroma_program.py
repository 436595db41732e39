"""The built-in ``chroma`` program: runs the inline measurements of a Chroma ``chroma`` input
(parsed strictly by :mod:`bridge.chroma.measure_input`) in order on the configuration named by
``Cfg`` and writes an output XML with Chroma's element paths, so that a script written for
Chroma's output reads ours: ``/chroma/{Input, ProgramInfo, RNG, Config_info, Observables,
InlineObservables/elem/<group>}`` with the groups ``Plaquette``, ``PolyakovLoop``, ``QActDen``,
``QTop``, ``make_source``, ``propagator``, ``sink_smear``, ``hadspec``, ``WilsonFlow``,
``qio_write_named_obj``.

Layouts and values were checked element by element against Chroma 3.44's own output for the
reference input (tests/test_chroma_measure.py): every number Chroma prints agrees to 1e-11
relative or better (most to ~1e-14), except solver iteration counts, residuals and object ids
(implementation details) and Chroma's version strings.  The measurements:
:mod:`bridge.chroma.inline_glue` and :mod:`bridge.chroma.inline_hadron`; definitions in
docs/observables.md.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from lxml import etree

from ..gauge import unit_gauge
from ..lattice import Lattice
from ..progress import Progress
from .inline_glue import GLUE_MEASUREMENTS
from .inline_hadron import HADRON_MEASUREMENTS
from .measure_input import DEFAULT_GAUGE_ID, ChromaMeasureInput, Measurement, read_chroma_input
from .named_objects import GaugeObject, InlineContext
from .xml_out import (
    RunEnv,
    copy_el,
    mesplq_group,
    program_info,
    rng_group,
    run_date,
    sub,
    write_xml,
)

__all__ = ["ChromaRunResult", "INLINE_MEASUREMENTS", "run_chroma_measurements"]

INLINE_MEASUREMENTS: dict[str, Callable[[InlineContext, Measurement, etree._Element], dict]] = {
    **GLUE_MEASUREMENTS, **HADRON_MEASUREMENTS}
"""Chroma's inline measurement name -> the built-in implementation."""


@dataclass
class ChromaRunResult:
    """What :func:`run_chroma_measurements` did: the output path, one summary dict per
    measurement (name and its main numbers) and the files written."""

    output: str
    measurements: list[dict[str, Any]] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    seconds: float = 0.0


def load_configuration(inp: ChromaMeasureInput, device: torch.device) -> GaugeObject:
    """``Cfg``: ``SZINQIO``/``SCIDAC`` reads the QIO/ILDG file (dimensions checked against
    ``nrow``; re-unitarised unless ``reunit`` is false, as Chroma's ``szinqio_gauge_init``);
    ``UNIT`` is the unit field."""
    cfg = inp.cfg
    if cfg.cfg_type == "UNIT":
        u = unit_gauge(Lattice(inp.nrow), "SU3", 1, device=device)
        rec = etree.tostring(copy_el(inp.tree.getroot().find("Cfg"))).decode()
        return GaugeObject(u, '<?xml version="1.0"?>\n<gauge/>\n', rec)
    from ..io.ildg import read_ildg

    path = cfg.cfg_file
    if not os.path.exists(path):
        raise FileNotFoundError(f"{inp.source}: /chroma/Cfg/cfg_file: {path!r} does not exist "
                                f"(relative paths are taken from the working directory "
                                f"{os.getcwd()!r}, as Chroma does)")
    u, info = read_ildg(path, nrow=inp.nrow, reunitarize=cfg.reunit, device=device)
    meta = info.metadata
    file_xml = meta.get("scidac-file-xml") or '<?xml version="1.0"?>\n<gauge/>\n'
    rec = meta.get("scidac-record-xml") or "<Config_info/>"
    return GaugeObject(u, file_xml, rec)


def run_chroma_measurements(
    inp: ChromaMeasureInput | str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> ChromaRunResult:
    """Run the inline measurements of a Chroma ``chroma`` input in order on its configuration
    and write the output XML (Chroma's element paths, module docstring) to ``output``.

    ``inp``: a parsed :class:`~bridge.chroma.measure_input.ChromaMeasureInput` or the path of
    the input XML.  Relative file names (``cfg_file``, ``QIO_WRITE_NAMED_OBJECT`` outputs) are
    taken from the working directory, as Chroma does; ``QIO_WRITE_NAMED_OBJECT`` replaces an
    existing file, as Chroma does.  ``progress`` writes progress lines to stderr.
    """
    t_start = time.perf_counter()
    if not isinstance(inp, ChromaMeasureInput):
        inp = read_chroma_input(inp)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    env = RunEnv(nrow=tuple(inp.nrow), device=dev, seed=inp.seed or (11, 0, 0, 0),
                 run_date=run_date())
    total = len(inp.measurements)
    bar = Progress(total, label="chroma", unit="measurement", enabled=progress)
    gauge = load_configuration(inp, dev)
    ctx = InlineContext(inp, env, bar)
    ctx.objects[DEFAULT_GAUGE_ID] = gauge

    root = etree.Element("chroma")
    sub(root, "Input").append(copy_el(inp.tree.getroot()))
    program_info(root, env)
    rng_group(root, env)
    gauge.config_info(root)
    mesplq_group(root, "Observables", gauge.u)
    inline = sub(root, "InlineObservables")
    result = ChromaRunResult(output=os.fspath(output))
    for k, m in enumerate(inp.measurements):
        bar.say(f"chroma [{k + 1}/{total}] {m.name} ({m.path})")
        t0 = time.perf_counter()
        summary = INLINE_MEASUREMENTS[m.name](ctx, m, sub(inline, "elem"))
        result.measurements.append({"name": m.name, "path": m.path,
                                    "seconds": time.perf_counter() - t0, **summary})
    write_xml(Path(output), root)
    result.files = ctx.files
    result.seconds = time.perf_counter() - t_start
    bar.say(f"chroma: {len(inp.measurements)} measurements in {result.seconds:.1f} s, "
            f"wrote {result.output}")
    return result
