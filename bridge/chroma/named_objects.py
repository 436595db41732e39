"""The state of one run of the built-in ``chroma`` program: Chroma's named-object map (gauge
fields and ``LatticePropagator`` s with their record and file XML), the run context the inline
measurements share, and the program's progress lines."""

from __future__ import annotations

import sys
import time
import zlib
from dataclasses import dataclass, field

import torch
from lxml import etree

from ..errors import ConfigError
from ..observables import point_source_propagator
from .measure_input import ChromaMeasureInput, Measurement
from .xml_out import RunEnv, copy_el, sub

__all__ = ["GaugeObject", "PropObject", "InlineContext", "ProgramProgress", "object_id"]


@dataclass
class GaugeObject:
    """A gauge field in the named-object map with its file XML and record XML (Chroma's
    ``Config_info`` content)."""

    u: torch.Tensor
    file_xml: str
    record_xml: str

    def config_info(self, parent: etree._Element, tag: str = "Config_info") -> None:
        ci = sub(parent, tag)
        try:
            root = etree.fromstring(self.record_xml.encode())
        except etree.XMLSyntaxError:
            return
        ci.append(root)


@dataclass
class PropObject:
    """A ``LatticePropagator`` in the named-object map: a source, a propagator or a
    sink-smeared propagator, with its record XML (``MakeSource`` / ``Propagator`` /
    ``SinkSmear``) and file XML, and the facts ``HADRON_SPECTRUM`` reads from the headers."""

    kind: str
    data: torch.Tensor | None  # S[b, t, z, y, x, s, c, s', c']; None for a point source
    record: etree._Element
    file_xml: etree._Element
    t_srce: tuple[int, ...]
    j_decay: int
    source_type: str = "POINT_SOURCE"
    sink_type: str | None = None
    mass: float | None = None
    boundary: tuple[int, ...] | None = None

    @property
    def t_source(self) -> int:
        return self.t_srce[self.j_decay]

    def tensor(self, nrow: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The propagator; a point source is built on demand."""
        if self.data is not None:
            return self.data
        return point_source_propagator(nrow, self.t_srce, device=device)


def object_id(name: str) -> int:
    """A stable stand-in for Chroma's ``uniqueId()`` in the file XML of sources/propagators."""
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


class ProgramProgress:
    """Progress lines on stderr: one per measurement, live steps for the long parts."""

    def __init__(self, enabled: bool, total: int) -> None:
        self.enabled, self.total = enabled, total
        self.tty = enabled and sys.stderr.isatty()
        self.t0 = time.perf_counter()

    def say(self, text: str) -> None:
        if self.enabled:
            sys.stderr.write(f"{text}\n")
            sys.stderr.flush()

    def start(self, k: int, m: Measurement) -> float:
        self.say(f"chroma [{k + 1}/{self.total}] {m.name} ({m.path})")
        return time.perf_counter()

    def step(self, label: str, i: int, n: int, extra: str = "") -> None:
        if not self.enabled:
            return
        every = max(1, n // 10)
        if self.tty:
            end = "\n" if i == n else ""
            sys.stderr.write(f"\r  {label} {i}/{n} {extra}   {end}")
        elif i % every == 0 or i == n:
            sys.stderr.write(f"  {label} {i}/{n} {extra}\n")
        sys.stderr.flush()


@dataclass
class InlineContext:
    """What the inline measurements of one run share: the input, run facts, progress lines,
    the named-object map and the files written."""

    inp: ChromaMeasureInput
    env: RunEnv
    progress: ProgramProgress
    objects: dict[str, GaugeObject | PropObject] = field(default_factory=dict)
    files: list[str] = field(default_factory=list)

    def gauge(self, oid: str) -> GaugeObject:
        obj = self.objects[oid]
        if not isinstance(obj, GaugeObject):  # the parser checked kinds; keep the runtime honest
            raise ConfigError(f"{self.inp.source}: named object {oid!r} is not a gauge field")
        return obj

    def prop(self, oid: str) -> PropObject:
        obj = self.objects[oid]
        if not isinstance(obj, PropObject):
            raise ConfigError(f"{self.inp.source}: named object {oid!r} is not a propagator")
        return obj

    @staticmethod
    def named_input(parent: etree._Element, m: Measurement, params: etree._Element
                    ) -> etree._Element:
        """The measurement's ``<Input>`` echo: its ``Param`` and ``NamedObject``."""
        inp = sub(parent, "Input")
        inp.append(params)
        named = m.element.find("NamedObject") if m.element is not None else None
        inp.append(copy_el(named))
        return inp
