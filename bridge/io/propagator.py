"""SciDAC (QIO) single files of a QDP++ ``LatticePropagator``, as Chroma's
``QIO_WRITE_NAMED_OBJECT`` writes them (the gauge-field counterpart is :mod:`bridge.io.ildg`)."""

from __future__ import annotations

import os

import torch

from ._ildg_records import checksum_xml, private_file_xml, qio_date
from .ildg import scidac_checksum
from .lime import LimeWriter, atomic_output

__all__ = ["write_qio_propagator"]


def write_qio_propagator(
    path: str | os.PathLike[str],
    s: torch.Tensor,
    *,
    precision: int = 64,
    file_xml: str,
    record_xml: str,
    overwrite: bool = True,
) -> None:
    """Write a propagator ``S[1, t, z, y, x, s, c, s', c']`` as a SciDAC (QIO) single file the
    way QDP++ ``QDPFileWriter::write(xml, OLattice<T>)`` does for a ``LatticePropagator``:
    records ``scidac-private-file-xml``, ``scidac-file-xml``, ``scidac-private-record-xml``
    (``datatype`` ``Lattice``, QDP++ ``QIOStringTraits<OLattice<T>>``; ``spins`` 4, ``colors`` 3,
    ``typesize`` 288 x bytes per real, ``datacount`` 1), ``scidac-record-xml``,
    ``scidac-binary-data`` (sites lexicographic, x fastest; per site the spin matrix of colour
    matrices row-major, ``elem(s, s').elem(c, c')``, re/im, big-endian) and ``scidac-checksum``
    (DML checksum, :class:`~bridge.io.ildg.ScidacChecksum`).

    Not verified against a propagator file written by Chroma (none is among the reference
    data); the layout follows the QDP++ sources named above.
    """
    if precision not in (32, 64):
        raise ValueError(f"precision: expected 32 or 64, got {precision!r}")
    letter = "F" if precision == 32 else "D"
    if s.dim() != 9 or s.shape[0] != 1 or s.shape[5] != s.shape[7] or s.shape[6] != s.shape[8]:
        raise ValueError(f"{os.fspath(path)}: expected a propagator S[1, t, z, y, x, s, c, s', "
                         f"c'], got shape {tuple(s.shape)}")
    ns, nc = s.shape[5], s.shape[6]
    lt, lz, ly, lx = s.shape[1:5]
    nrow = (lx, ly, lz, lt)
    data = s[0].permute(0, 1, 2, 3, 4, 6, 5, 7).contiguous()  # [t,z,y,x, s, s', c, c']
    arr = torch.view_as_real(data.cpu()).numpy()
    arr = arr.astype(">f4" if precision == 32 else ">f8")
    raw = arr.tobytes()
    site_bytes = ns * ns * nc * nc * 2 * precision // 8
    suma, sumb = scidac_checksum(raw, site_bytes)
    head = '<?xml version="1.0" encoding="UTF-8"?>'
    private_record = (
        f"{head}<scidacRecord><version>1.1</version><date>{qio_date()}</date>"
        f"<recordtype>0</recordtype><datatype>Lattice</datatype><precision>{letter}</precision>"
        f"<colors>{nc}</colors><spins>{ns}</spins><typesize>{site_bytes}</typesize>"
        f"<datacount>1</datacount></scidacRecord>"
    )
    with atomic_output(path, overwrite=overwrite) as fh:
        w = LimeWriter(fh, os.fspath(path))
        w.write_string("scidac-private-file-xml", private_file_xml(nrow), mb=True, me=False)
        w.write_string("scidac-file-xml", file_xml, mb=False, me=True)
        w.write_string("scidac-private-record-xml", private_record, mb=True, me=False)
        w.write_string("scidac-record-xml", record_xml, mb=False, me=False)
        w.write_record("scidac-binary-data", raw, mb=False, me=False)
        w.write_string("scidac-checksum", checksum_xml(suma, sumb), mb=False, me=True)
        w.close()
