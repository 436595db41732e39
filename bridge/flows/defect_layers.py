"""Defect-localised stout layers: masked stout steps that move only the links near a
time-boundary defect (:mod:`bridge.gauge.defect`), with separate coefficients for the staples
that close a defect plaquette and for the others -- the defect coupling layers of the
stochastic normalizing flows that switch a defect from open to periodic (Bonanno et al.,
arXiv:2510.25704; arXiv:2601.20708).

Region.  Let ``S_0`` be the box that holds the defect plaquettes' corners: ``x_t`` in
``{L_t - 1, 0}`` and ``0 <= x_i <= d_i`` (periodically) in the other directions.  A link
``U_mu(x)`` is in the region of radius ``r`` when both ``x`` and ``x + mu`` lie within max-norm
(periodic) distance ``r`` of ``S_0``; radius 0 holds every link of a defect plaquette.  A
:class:`DefectMask` is a :class:`~.residual.StapleMask` ``(mu, parity)`` restricted to the
region, so the staples of its active links are frozen as before and the layer keeps the
block-diagonal Jacobian.

Map.  For the active link ``U_mu(x)`` with staples ``S_k`` (:func:`~.residual.link_staples`
order), ``B = sum_k c_k(x) S_k`` with ``c_k(x) = c_D`` when the plaquette of ``S_k`` is a defect
plaquette and ``c_N`` otherwise, then ``U' = exp(TA(U B)) U`` as in
:class:`~.residual.ResidualStapleLayer`.  The coefficients depend on the position only, so the
layer is gauge equivariant; ``sum_k |c_k(x)| <= 2(Nd - 1) max(|c_D|, |c_N|) <= kappa`` with
``c = kappa tanh(r) / (2(Nd - 1))``, so the map is invertible, and the log-Jacobian is that of
the residual staple layer, link by link.

Leading order.  At fixed ``beta`` the block ``c_{k-1} -> c_k`` of the defect protocol changes
the action by ``-(beta / N) (c_k - c_{k-1}) sum_{p in D} Re Tr P`` (plus a constant), a Wilson
step ``beta dc`` restricted to the defect plaquettes, whose leading-order map
(:func:`~.snf.luscher_coefficient`) is ``c_D = -beta dc / (4 dim G)``, ``c_N = 0``; with a
coupling step too, :class:`~.snf.SNFModel` takes ``c_D`` from ``d(beta c)`` and ``c_N`` from
``d_beta``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .. import _native_stout
from ..gauge.defect import check_defect, defect_mask
from ..groups import Group
from ..lattice import Lattice, as_device
from .masks import MaskError
from .models import GaugeFlow
from .residual import (
    ResidualStapleLayer,
    StapleMask,
    _coordinate_maps,
    _staple_tables,
    active_staples,
    psi_terms,
    staple_mask_cycle,
)

__all__ = ["DefectMask", "defect_region", "DefectStapleLayer", "DefectCycle"]


def _interval_distance(coord: torch.Tensor, lo: int, hi: int, n: int) -> torch.Tensor:
    """Periodic distance of the coordinates ``coord`` (mod ``n``) to the set ``lo .. hi``."""
    members = torch.arange(lo, hi + 1, device=coord.device) % n
    d = (coord[..., None] - members).remainder(n)
    return torch.minimum(d, n - d).min(-1).values


def _check_radius(radius: object) -> None:
    if isinstance(radius, bool) or not isinstance(radius, int) or radius < 0:
        raise MaskError(f"radius: expected an integer >= 0, got {radius!r}")


def defect_region(lattice: Lattice, extent: Sequence[int], radius: int, device=None
                  ) -> torch.Tensor:
    """Boolean ``[Nd, *lattice.shape]``: the links ``U_mu(x)`` of the region of ``radius``
    around the defect of ``extent`` (module docstring)."""
    ext = check_defect(lattice, extent)
    _check_radius(radius)
    c = lattice.coordinates(as_device(device))
    t = lattice.nd - 1
    dist = _interval_distance(c[t], -1, 0, lattice.nrow[t])
    for i, d in enumerate(ext):
        dist = torch.maximum(dist, _interval_distance(c[i], 0, d, lattice.nrow[i]))
    near = dist <= int(radius)
    return torch.stack([near & lattice.shift(near[None], mu)[0] for mu in range(lattice.nd)])


@dataclass(frozen=True)
class DefectMask(StapleMask):
    """A :class:`~.residual.StapleMask` ``(mu, parity)`` restricted to the links of the region
    of ``radius`` around the defect of ``extent`` (module docstring)."""

    extent: tuple[int, ...] = ()
    radius: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.extent:
            raise MaskError("extent: a defect mask needs the defect's extents")
        object.__setattr__(self, "extent", tuple(int(d) for d in self.extent))  # hashable
        _check_radius(self.radius)

    def active_sites(self, lattice: Lattice, device=None) -> torch.Tensor:
        sites = super().active_sites(lattice, device)
        return sites & defect_region(lattice, self.extent, self.radius, sites.device)[self.mu]


_FLAGS: dict[tuple, torch.Tensor] = {}


def defect_staple_flags(lat: Lattice, mask: DefectMask, device: torch.device) -> torch.Tensor:
    """Boolean ``[n, Nd - 1, 2]``: whether staple ``(nu, forward / backward)`` of each active
    link of ``mask`` closes a defect plaquette (forward: ``P_{mu nu}(x)``; backward:
    ``P_{mu nu}(x - nu)``)."""
    key = (lat.nrow, mask, device)
    if key not in _FLAGS:
        idx, _ = _staple_tables(lat, mask, device)
        dm = defect_mask(lat, mask.extent, device).flatten(1)  # [planes, V]
        planes = lat.planes()
        site = torch.arange(lat.volume, device=device).reshape(1, *lat.shape)
        rows = []
        for nu in (n for n in range(lat.nd) if n != mask.mu):
            plane = dm[planes.index((min(mask.mu, nu), max(mask.mu, nu)))]
            back = lat.shift(site, nu, -1).reshape(-1)
            rows.append(torch.stack([plane[idx], plane[back[idx]]], -1))
        _FLAGS[key] = (torch.stack(rows, 1) if rows
                       else torch.zeros((idx.numel(), 0, 2), dtype=torch.bool, device=device))
    return _FLAGS[key]


class DefectStapleLayer(ResidualStapleLayer):
    """A masked stout step on the links of a :class:`DefectMask` (module docstring), with the two
    learnable coefficients ``(c_D, c_N)`` of the defect-plaquette and the other staples:
    ``forward(U) -> (U', logdet)``, ``reverse`` and the log-Jacobian as for
    :class:`~.residual.ResidualStapleLayer` (the identity at initialisation)."""

    def __init__(self, group: Group | str | int, nd: int, mask: DefectMask, *,
                 kappa: float = 0.9, dtype: torch.dtype = torch.float64) -> None:
        if not isinstance(mask, DefectMask):
            raise MaskError(f"mask: expected a DefectMask, got {type(mask).__name__}")
        super().__init__(group, nd, mask, kappa=kappa, tied=False, dtype=dtype)
        self.raw = torch.nn.Parameter(torch.zeros(2, dtype=dtype))

    def coefficients(self) -> torch.Tensor:
        """``(c_D, c_N)``, each ``kappa tanh(r) / (2(Nd - 1))``."""
        return self.kappa * torch.tanh(self.raw) / self.n_staples

    def set_coefficients(self, c: float, c_near: float = 0.0) -> None:
        """Set ``c_D = c`` and ``c_N = c_near`` (each ``|.| < kappa / (2(Nd - 1))``)."""
        bound = self.kappa / self.n_staples
        for name, v in (("c", c), ("c_near", c_near)):
            if not abs(float(v)) < bound:
                raise ValueError(f"{name}: expected |{name}| < kappa / {self.n_staples} = "
                                 f"{bound:.4g}, got {v}")
        with torch.no_grad():
            self.raw.copy_(torch.tensor([math.atanh(float(v) / bound) for v in (c, c_near)],
                                        dtype=self.raw.dtype))

    def _psi_terms(self) -> int:
        return psi_terms(2.0 * self.n_staples * float(self.coefficients().detach().abs().max()))

    def site_coefficients(self, lat: Lattice, device: torch.device, dtype: torch.dtype
                          ) -> torch.Tensor:
        """``c_k(x)`` of the active links, ``[n, Nd - 1, 2]``."""
        flags = defect_staple_flags(lat, self.mask, device)
        c = self.coefficients().to(dtype)
        return torch.where(flags, c[0], c[1])

    def _frozen(self, u: torch.Tensor, lat: Lattice) -> tuple[torch.Tensor, torch.Tensor]:
        idx, up, low = active_staples(u, lat, self.mask)
        c = self.site_coefficients(lat, u.device, u.real.dtype)  # [n, nt, 2]
        cf = c[..., 0].T[None, :, :, None, None]
        cb = c[..., 1].T[None, :, :, None, None]
        return idx, (cf * up).sum(1) + (cb * low).sum(1)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lat = self._check(u)
        if _native_stout.usable(u, self.raw):
            idx, tab = _staple_tables(lat, self.mask, u.device)
            coef = self.site_coefficients(lat, u.device, torch.float64)
            return _native_stout.layer(
                u, self.mask.mu, idx, tab, coef.reshape(idx.numel(), -1), False,
                _coordinate_maps(self.group.nc, torch.complex128, u.device), self._psi_terms())
        return self._move(u, lat, *self._frozen(u, lat))


class DefectCycle(GaugeFlow):
    """The ``2 Nd`` :class:`DefectStapleLayer` steps ``(mu, parity)`` around the defect of
    ``extent`` within ``radius`` (module docstring), applied in order: every link of the region
    moves once.  ``c`` and ``c_near`` set every step's ``(c_D, c_N)``."""

    def __init__(self, group: Group | str | int, nd: int, extent: Sequence[int], *,
                 radius: int = 1, c: float = 0.0, c_near: float = 0.0, kappa: float = 0.9,
                 dtype: torch.dtype = torch.float64) -> None:
        ext = tuple(int(d) for d in extent)
        steps = [DefectStapleLayer(group, nd, DefectMask(m.mu, m.parity, ext, int(radius)),
                                   kappa=kappa, dtype=dtype) for m in staple_mask_cycle(nd)]
        for lay in steps:
            lay.set_coefficients(c, c_near)
        super().__init__(group, nd, steps)

    def coefficients(self) -> torch.Tensor:
        """``[2 Nd, 2]``: ``(c_D, c_N)`` of every step."""
        return torch.stack([lay.coefficients() for lay in self.layers])
