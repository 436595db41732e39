"""Output XML with Chroma's layout: the element helpers both built-in programs (``hmc``,
:mod:`bridge.chroma.hmc_program`; ``chroma``, :mod:`bridge.chroma.chroma_program`) write with.

Numbers are printed as Chroma prints doubles (15 significant digits); the ``MesPlq`` group
(``lib/meas/glue/mesplq.cc``) lists the planes in Chroma's order ``01 02 12 03 13 23``;
``ProgramInfo`` and ``RNG`` follow ``chroma.cc``/``hmc.cc`` with this package's versions in place
of Chroma's.  Files are written crash-safely (:func:`write_xml`).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from lxml import etree

from .. import __version__
from ..errors import ConfigError
from ..gauge import mesplq, polyakov_loop
from ..io.lime import atomic_path

__all__ = [
    "MESPLQ_PLANES",
    "RunEnv",
    "fmt",
    "fmts",
    "bool_text",
    "sub",
    "copy_el",
    "complex_elems",
    "mesplq_values",
    "mesplq_group",
    "plaquette_group",
    "polyakov_group",
    "program_info",
    "rng_group",
    "run_date",
    "write_xml",
]

MESPLQ_PLANES = ((0, 1), (0, 2), (1, 2), (0, 3), (1, 3), (2, 3))
"""Chroma's ``MesPlq`` plane order (``for mu, for nu > mu`` ... printed 01 02 12 03 13 23)."""


def fmt(x: float) -> str:
    """A double as Chroma prints it: 15 significant digits."""
    return format(float(x), ".15g")


def fmts(xs: Sequence[float] | torch.Tensor | np.ndarray) -> str:
    """A list of doubles, space separated (Chroma's ``multi1d<Real>``)."""
    return " ".join(fmt(x) for x in (xs.tolist() if hasattr(xs, "tolist") else xs))


def bool_text(b: bool) -> str:
    return "true" if b else "false"


def sub(parent: etree._Element, tag: str, text: str | None = None) -> etree._Element:
    """A new child ``<tag>text</tag>`` of ``parent``."""
    e = etree.SubElement(parent, tag)
    if text is not None:
        e.text = text
    return e


def copy_el(el: etree._Element | None) -> etree._Element:
    """A deep copy of an input element (without its tail) to echo it in the output."""
    if el is None:
        raise ConfigError("internal: missing element to copy")
    c = copy.deepcopy(el)
    c.tail = None
    return c


def complex_elems(parent: etree._Element, values: Sequence[complex]) -> None:
    """``<elem><re>..</re><im>..</im></elem>`` per value (``multi1d<Complex>``)."""
    for z in values:
        e = sub(parent, "elem")
        sub(e, "re", fmt(z.real))
        sub(e, "im", fmt(z.imag))


def mesplq_values(parent: etree._Element, u: torch.Tensor, pollp: bool) -> None:
    """``MesPlq``'s plaquettes and link into ``parent`` (first configuration of ``u``); with
    ``pollp`` also the Polyakov loops of every direction."""
    m = mesplq(u)
    for tag, val in (("w_plaq", m.w_plaq), ("s_plaq", m.s_plaq), ("t_plaq", m.t_plaq)):
        sub(parent, tag, fmt(val[0]))
    for a, b in MESPLQ_PLANES:
        sub(parent, f"plane_{a}{b}_plaq", fmt(m.planes[(a, b)][0]))
    sub(parent, "link", fmt(m.link[0]))
    if pollp:
        loops = sub(parent, "pollp")
        complex_elems(loops, [complex(polyakov_loop(u, mu)[0]) for mu in range(u.shape[1])])


def mesplq_group(parent: etree._Element, tag: str, u: torch.Tensor) -> None:
    """Chroma's ``MesPlq(xml, tag, u)``: plaquettes, link and the four Polyakov loops."""
    mesplq_values(sub(parent, tag), u, pollp=True)


def plaquette_group(parent: etree._Element, u: torch.Tensor, update_no: int) -> None:
    """The inline ``PLAQUETTE`` measurement's ``<Plaquette>`` group."""
    g = sub(parent, "Plaquette")
    sub(g, "update_no", str(update_no))
    mesplq_values(g, u, pollp=False)


def polyakov_group(parent: etree._Element, u: torch.Tensor, update_no: int) -> list[complex]:
    """The inline ``POLYAKOV_LOOP`` measurement's ``<PolyakovLoop>`` group; returns the loops."""
    g = sub(parent, "PolyakovLoop")
    sub(g, "update_no", str(update_no))
    loops = [complex(polyakov_loop(u, mu)[0]) for mu in range(u.shape[1])]
    complex_elems(sub(g, "poly_loop"), loops)
    return loops


@dataclass
class RunEnv:
    """Run-wide facts written into several groups."""

    nrow: tuple[int, ...]
    device: torch.device
    seed: tuple[int, ...]
    run_date: str


def run_date() -> str:
    """The date line of ``ProgramInfo`` (UTC)."""
    return time.strftime("%d %b %y %H:%M:%S UTC", time.gmtime())


def program_info(parent: etree._Element, env: RunEnv) -> None:
    """``<ProgramInfo>``: code versions, run date and the geometry (``Setgeom``)."""
    p = sub(parent, "ProgramInfo")
    cv = sub(p, "code_version")
    sub(cv, "qcd_bridge", __version__)
    sub(cv, "torch", torch.__version__)
    sub(cv, "basePrecision", "64")
    sub(p, "run_date", env.run_date)
    g = sub(p, "Setgeom")
    nrow = " ".join(map(str, env.nrow))
    sub(g, "latt_size", nrow)
    sub(g, "logical_size", " ".join(["1"] * len(env.nrow)))
    sub(g, "subgrid_size", nrow)
    sub(g, "total_volume", str(math.prod(env.nrow)))
    sub(g, "subgrid_volume", str(math.prod(env.nrow)))
    sub(g, "device", str(env.device))


def rng_group(parent: etree._Element, env: RunEnv) -> None:
    """``<RNG><Seed><elem>..</elem> x 4</Seed></RNG>``."""
    seed = sub(sub(parent, "RNG"), "Seed")
    for s in env.seed:
        sub(seed, "elem", str(s))


def write_xml(path: str | os.PathLike[str], root: etree._Element | bytes) -> None:
    """Write an XML document (element or serialised bytes) crash-safely, replacing ``path``
    (temporary file in the same directory, fsync, rename: :func:`bridge.io.lime.atomic_path`)."""
    data = root if isinstance(root, bytes) else etree.tostring(
        root, xml_declaration=True, encoding="UTF-8", pretty_print=True)
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_bytes(data)
