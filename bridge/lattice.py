"""Lattice geometry: extents, the tensor layout, shifts, parity and coordinates.

Layout (the one layout of the project, see docs/conventions.md)
-----------------------------------------------------------------
Extents are given in Chroma's ``nrow`` order ``(Lx, Ly, Lz, Lt)`` (``(Lx, Lt)`` in 2D); direction
``mu = 0 .. Nd-1`` is ``x, y, z, t`` and time is the last direction.  Tensors store the lattice
axes *reversed*, C-order, so that x is the fastest-running index, exactly as in ILDG files::

    gauge field   U[batch, mu, t, z, y, x, a, b]     (Nd = 4)
    site field    f[batch, t, z, y, x, ...]           (any trailing internal indices)

so the lexicographic site index of a flattened lattice block is ``x + Lx*(y + Ly*(z + Lz*t))``.
Direction ``mu`` lives on lattice axis ``Nd - 1 - mu`` (counted from the first lattice axis).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Lattice", "as_device"]


def as_device(device: torch.device | str | None) -> torch.device:
    """Normalise a device argument (``None`` means CPU)."""
    return torch.device("cpu") if device is None else torch.device(device)


def _check_nrow(nrow: Sequence[int]) -> tuple[int, ...]:
    """The extents ``nrow`` as a tuple of 2 to 4 positive integers (``ValueError`` otherwise)."""
    try:
        extents = tuple(int(n) for n in nrow)
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"nrow: expected a sequence of integers (Lx ... Lt), got {nrow!r}"
        ) from exc
    if any(float(n) != e for n, e in zip(nrow, extents, strict=False)):
        raise ValueError(f"nrow: expected integer extents, got {tuple(nrow)!r}")
    if not 2 <= len(extents) <= 4:
        raise ValueError(
            f"nrow: expected Nd = 2, 3 or 4 extents (Lx ... Lt), got {len(extents)}: {extents}"
        )
    if any(e <= 0 for e in extents):
        raise ValueError(f"nrow: every extent must be positive, got {extents}")
    return extents


def _boundary_factor(
    field: torch.Tensor, ax: int, length: int, step: int, phase: complex
) -> torch.Tensor:
    """``phase ** wraps`` along tensor axis ``ax`` (broadcastable against ``field``), ``wraps``
    the number of times the site ``x + step`` crosses the boundary: ``floor((x + step) / L)``."""
    coord = torch.arange(length, device=field.device)
    wraps = torch.div(coord + step, length, rounding_mode="floor")
    factor = torch.tensor(complex(phase), dtype=torch.complex128, device=field.device) ** wraps
    view = [1] * field.dim()
    view[ax] = length
    return factor.to(field.dtype).reshape(view)


@dataclass(frozen=True)
class Lattice:
    """A hypercubic lattice with periodic topology.

    Parameters
    ----------
    nrow:
        Extents in Chroma's order ``(Lx, Ly, Lz, Lt)`` for Nd = 4, ``(Lx, Lt)`` for Nd = 2, and
        ``(Lx, Ly, Lt)`` for Nd = 3.
    """

    nrow: tuple[int, ...]

    def __init__(self, nrow: Sequence[int]) -> None:
        object.__setattr__(self, "nrow", _check_nrow(nrow))

    # -- basic properties -------------------------------------------------------------------
    @property
    def nd(self) -> int:
        """Number of space-time dimensions."""
        return len(self.nrow)

    @property
    def volume(self) -> int:
        """Number of sites."""
        v = 1
        for e in self.nrow:
            v *= e
        return v

    @property
    def shape(self) -> tuple[int, ...]:
        """Lattice axes as stored in tensors: ``(Lt, ..., Ly, Lx)``."""
        return tuple(reversed(self.nrow))

    def axis(self, mu: int) -> int:
        """Index, among the lattice axes of a tensor, of direction ``mu``."""
        self._check_mu(mu)
        return self.nd - 1 - mu

    def planes(self) -> list[tuple[int, int]]:
        """All planes ``(mu, nu)`` with ``mu < nu``, in Chroma's MesPlq order."""
        return [(mu, nu) for nu in range(self.nd) for mu in range(nu)]

    def _check_mu(self, mu: int) -> None:
        if not 0 <= int(mu) < self.nd:
            raise ValueError(f"mu: expected a direction in 0..{self.nd - 1}, got {mu}")

    # -- shifts -------------------------------------------------------------------------------
    def shift(
        self,
        field: torch.Tensor,
        mu: int,
        step: int = 1,
        *,
        site_dim: int = 1,
        phase: complex | None = None,
    ) -> torch.Tensor:
        """Return ``g(x) = f(x + step * mu_hat)`` with periodic (or twisted) boundaries.

        ``site_dim`` is the tensor axis of the first lattice axis (1 for ``f[batch, t, ..., x]``).
        With ``phase`` the field obeys ``f(x + L mu_hat) = phase * f(x)``: values that cross the
        boundary going forward pick up ``phase``, going backward ``conj(phase)`` (|phase| = 1), as
        for Chroma's ``SIMPLE_FERMBC`` boundary factors.
        """
        ax = site_dim + self.axis(mu)
        if field.dim() < site_dim + self.nd or tuple(
            field.shape[site_dim : site_dim + self.nd]
        ) != self.shape:
            raise ValueError(
                f"field: expected lattice axes {self.shape} at dims {site_dim}.."
                f"{site_dim + self.nd - 1}, got shape {tuple(field.shape)}"
            )
        out = torch.roll(field, shifts=-step, dims=ax)
        if phase is None or phase == 1:
            return out
        return out * _boundary_factor(field, ax, self.nrow[mu], step, phase)

    # -- coordinates and parity ------------------------------------------------------------
    def coordinates(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Integer tensor ``c[mu, t, ..., x]`` holding the coordinate ``x_mu`` of every site."""
        dev = as_device(device)
        grids = torch.meshgrid(
            *[torch.arange(n, device=dev) for n in self.shape], indexing="ij"
        )
        return torch.stack(list(reversed(grids)))

    def parity(self, device: torch.device | str | None = None) -> torch.Tensor:
        """Parity ``(x + y + z + t) % 2`` of every site (0 even, 1 odd), shape ``self.shape``.

        Even/odd decomposition needs every extent even; otherwise a ``ValueError`` is raised.
        """
        odd = [e for e in self.nrow if e % 2]
        if odd:
            raise ValueError(
                f"nrow: even/odd decomposition needs even extents, got {self.nrow}"
            )
        return self.coordinates(device).sum(0) % 2

    def lexicographic_index(self, device: torch.device | str | None = None) -> torch.Tensor:
        """ILDG lexicographic rank ``x + Lx*(y + Ly*(z + Lz*t))`` of every site."""
        return torch.arange(self.volume, device=as_device(device)).reshape(self.shape)

    def __repr__(self) -> str:
        return f"Lattice({'x'.join(str(n) for n in self.nrow)})"

    # -- shape helpers -----------------------------------------------------------------------
    def gauge_shape(self, batch: int, nc: int) -> tuple[int, ...]:
        """Shape of a batched gauge field ``U[batch, mu, t, ..., x, a, b]``."""
        return (batch, self.nd, *self.shape, nc, nc)

    def check_gauge(self, u: torch.Tensor, name: str = "U") -> tuple[int, int]:
        """Validate a gauge field's shape; return ``(batch, Nc)``.  Raises ``ValueError``."""
        if not isinstance(u, torch.Tensor):
            raise ValueError(f"{name}: expected a torch.Tensor, got {type(u).__name__}")
        expected = f"[batch, {self.nd}, {', '.join(map(str, self.shape))}, Nc, Nc]"
        if (
            u.dim() != self.nd + 4
            or u.shape[1] != self.nd
            or tuple(u.shape[2 : 2 + self.nd]) != self.shape
            or u.shape[-1] != u.shape[-2]
        ):
            raise ValueError(f"{name}: expected shape {expected}, got {tuple(u.shape)}")
        if not u.is_complex():
            raise ValueError(f"{name}: expected a complex dtype, got {u.dtype}")
        return int(u.shape[0]), int(u.shape[-1])

    @staticmethod
    def of(u: torch.Tensor) -> Lattice:
        """The lattice of a gauge field ``U[batch, mu, t, ..., x, a, b]``."""
        if u.dim() < 6:
            raise ValueError(
                f"U: expected a gauge field [batch, mu, lattice..., Nc, Nc], got shape "
                f"{tuple(u.shape)}"
            )
        nd = u.dim() - 4
        if u.shape[1] != nd:
            raise ValueError(
                f"U: axis 1 must hold Nd = {nd} directions for {nd} lattice axes, got "
                f"shape {tuple(u.shape)}"
            )
        return Lattice(tuple(reversed(u.shape[2 : 2 + nd])))
