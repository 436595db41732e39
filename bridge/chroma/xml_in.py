"""Reading Chroma's input XML: parsing a file, and walking its elements with paths for the
error messages (every :class:`~bridge.errors.ConfigError` names the file and the element path);
the readers of the ``hmc`` (:mod:`bridge.chroma.hmc_input`) and ``chroma``
(:mod:`bridge.chroma.measure_input`) inputs are built on it."""

from __future__ import annotations

import os

from lxml import etree

from ..errors import ConfigError

__all__ = ["XmlNode", "parse_xml_file", "read_seed", "read_kappa_csw"]


def parse_xml_file(path: str | os.PathLike[str], what: str, *,
                   error: type[Exception] = ConfigError, hint: str = "",
                   huge: bool = False) -> etree._ElementTree:
    """Parse an XML file, white space kept: ``FileNotFoundError`` ("``path``: cannot read
    ``what`` (...)") when it cannot be read, ``error`` ("``path``: not well-formed XML``hint``:
    ...") when it does not parse.  ``huge``: lift lxml's size limits (large outputs)."""
    spath = os.fspath(path)
    try:
        return etree.parse(spath, etree.XMLParser(remove_blank_text=False, huge_tree=huge))
    except OSError as exc:
        raise FileNotFoundError(f"{spath}: cannot read {what} ({exc})") from exc
    except etree.XMLSyntaxError as exc:
        raise error(f"{spath}: not well-formed XML{hint}: {exc}") from exc


class XmlNode:
    """Wraps an element; records which children were read so leftovers can be reported.

    ``strict`` (inherited by the children): :meth:`done` refuses unread elements and
    :meth:`supported` refuses what the built-in programs do not run; a lenient node reads the
    facts and lets Chroma judge the rest."""

    def __init__(self, el: etree._Element, path: str, source: str, strict: bool = True) -> None:
        self.el, self.path, self.source, self.strict = el, path, source, strict
        self.used: set[str] = set()

    def _err(self, msg: str) -> ConfigError:
        return ConfigError(f"{self.source}: {msg}")

    def child(self, name: str, required: bool = True) -> XmlNode | None:
        found = self.el.findall(name)
        self.used.add(name)
        if len(found) > 1:
            raise self._err(f"element {self.path}/{name} appears {len(found)} times, expected once")
        if not found:
            if required:
                raise self._err(f"missing required element {self.path}/{name}")
            return None
        return XmlNode(found[0], f"{self.path}/{name}", self.source, self.strict)

    def text(self, name: str, default: str | None = None) -> str:
        node = self.child(name, required=default is None)
        if node is None:
            return str(default)
        node.done()
        return (node.el.text or "").strip()

    def integer(self, name: str, default: int | None = None) -> int:
        raw = self.text(name, None if default is None else str(default))
        try:
            return int(raw)
        except ValueError:
            raise self._err(f"{self.path}/{name}: expected an integer, got {raw!r}") from None

    def real(self, name: str, default: float | None = None) -> float:
        raw = self.text(name, None if default is None else repr(default))
        try:
            return float(raw)
        except ValueError:
            raise self._err(f"{self.path}/{name}: expected a number, got {raw!r}") from None

    def boolean(self, name: str, default: bool) -> bool:
        raw = self.text(name, "true" if default else "false").lower()
        if raw not in ("true", "false"):
            raise self._err(f"{self.path}/{name}: expected true or false, got {raw!r}")
        return raw == "true"

    def elems(self, name: str, required: bool = True) -> list[XmlNode]:
        group = self.child(name, required)
        if group is None:
            return []
        nodes = [
            XmlNode(e, f"{group.path}/elem[{i}]", self.source, self.strict)
            for i, e in enumerate(group.el.findall("elem"))
        ]
        group.used.add("elem")
        group.done()
        return nodes

    def strings(self, name: str) -> list[str]:
        out = []
        for n in self.elems(name):
            out.append((n.el.text or "").strip())
            n.done()
        return out

    def supported(self, ok: bool, msg: str) -> None:
        """A strict node refuses with ``msg`` (prefixed by the source) unless ``ok``."""
        if self.strict and not ok:
            raise self._err(msg)

    def done(self) -> None:
        """Every child element must have been read (strict nodes only)."""
        if not self.strict:
            return
        for c in self.el:
            if not isinstance(c.tag, str):  # comments, processing instructions
                continue
            if c.tag not in self.used:
                raise self._err(
                    f"unsupported element {self.path}/{c.tag}: the built-in engine does not "
                    f"implement it (remove it, or run this input with Chroma)"
                )


def read_seed(rng: XmlNode) -> tuple[int, ...]:
    """QDP++'s ``<RNG><Seed><elem>a</elem> x 4</Seed></RNG>`` (``qdp_primseed.h``)."""
    vals = rng.strings("Seed")
    rng.done()
    where = f"{rng.source}: {rng.path}/Seed"
    try:
        seed = tuple(int(v) for v in vals)
    except ValueError:
        raise ConfigError(f"{where}: expected integer elems, got {vals}") from None
    if len(seed) != 4:
        raise ConfigError(f"{where}: expected 4 elems, got {len(seed)}")
    return seed


def read_kappa_csw(fa: XmlNode, clover: bool) -> tuple[float, float]:
    """``(kappa, c_sw)`` of a Wilson-type ``FermionAction`` (``wilson_fermact_params_w.cc``,
    ``clover_fermact_params_w.cc``): exactly one of ``Kappa`` or ``Mass`` (``Mass = 1/(2 kappa)
    - 4``, so ``Mass > -4``), a positive hopping parameter; for clover ``clovCoeff``, with
    ``clovCoeffR``/``clovCoeffT`` (Chroma's anisotropic form) only equal to it; ``c_sw`` 0
    otherwise.  Errors name the element path and the value."""
    has_kappa = fa.el.find("Kappa") is not None
    if has_kappa == (fa.el.find("Mass") is not None):
        raise fa._err(f"{fa.path}: expected exactly one of Kappa or Mass")
    fa.used.update(("Kappa", "Mass"))
    if has_kappa:
        kappa = fa.real("Kappa")
    else:
        mass = fa.real("Mass")
        if mass <= -4.0:
            raise fa._err(f"{fa.path}/Mass: expected Mass > -4 (kappa = 1/(2 (Mass + 4))), got "
                          f"{mass}")
        kappa = 1.0 / (2.0 * (mass + 4.0))
    if not kappa > 0:
        raise fa._err(f"{fa.path}/Kappa: expected a positive hopping parameter, got {kappa}")
    c_sw = 0.0
    if clover:
        c_sw = fa.real("clovCoeff")
        for extra in ("clovCoeffR", "clovCoeffT"):
            if fa.el.find(extra) is not None and fa.real(extra) != c_sw:
                raise fa._err(f"{fa.path}/{extra}: anisotropic clover coefficients are not "
                              f"supported (must equal clovCoeff)")
    return kappa, c_sw
