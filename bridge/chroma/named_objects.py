"""The state of one run of the built-in ``chroma`` program: Chroma's named-object map (gauge
fields and ``LatticePropagator`` s with their record and file XML) and the run context the inline
measurements share (with the run's progress lines, :class:`bridge.progress.Progress`)."""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch
from lxml import etree

from ..errors import ConfigError
from ..observables import point_source_propagator
from ..progress import Progress
from .measure_input import ChromaMeasureInput, Measurement
from .xml_out import RunEnv, copy_el, sub

__all__ = ["GaugeObject", "PropObject", "InlineContext", "object_id"]


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


@dataclass
class InlineContext:
    """What the inline measurements of one run share: the input, run facts, the progress bar
    (its :meth:`~bridge.progress.Progress.say` writes the program's lines), the named-object
    map and the files written."""

    inp: ChromaMeasureInput
    env: RunEnv
    progress: Progress
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
