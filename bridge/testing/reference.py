"""Straightforward reference implementations that the tests compare the fast kernels against
(kept out of the production classes; slower, but written as the formulas read)."""

from __future__ import annotations

import torch

from ..fermions.evenodd import EvenOdd
from ..fermions.hopping import Geometry, HopLinks, coefficients, hop_fused, uses_gather
from ..fermions.wilson import WilsonDirac

__all__ = ["hop_gather_reference", "schur5_reference"]


def hop_gather_reference(psi: torch.Tensor, links: HopLinks, geo: Geometry) -> torch.Tensor:
    """The Wilson hopping term ``H psi`` (``psi[B, R, *L, 4, Nc]``, full lattice or one parity)
    in a handful of whole-field ops: all 8 half spinors at every source site (one ``addcmul`` on
    spin-permuted rows), one ``index_select`` gathering each target's 8 neighbours, one
    ``matmul`` against the 8 stacked link matrices, and the reconstruction as two reductions."""
    b, r = psi.shape[:2]
    lat = psi.shape[2:6]
    v = lat[0] * lat[1] * lat[2] * lat[3]
    nc = psi.shape[-1]
    c = coefficients(psi.dtype, psi.device)
    up = psi[..., :2, :].unsqueeze(-3)
    lo = psi[..., 2:, :].index_select(-2, c["lo_idx"]).view(*psi.shape[:-2], 8, 2, nc)
    h = torch.addcmul(up, lo, c["gP"]).reshape(b, r, v * 8, 2, nc)
    h = h.index_select(2, geo.gather_index(psi.device))
    w = torch.matmul(h, links.stacked()).reshape(*psi.shape[:-2], 16, nc)
    out_up = w.view(*psi.shape[:-2], 8, 2, nc).sum(-3)
    out_lo = w.index_select(-2, c["w_idx"]).view(*psi.shape[:-2], 8, 2, nc) * c["gL"]
    return torch.cat([out_up, out_lo.sum(-3)], dim=-2)


def schur5_reference(op: WilsonDirac, x5: torch.Tensor) -> torch.Tensor:
    """The literal ``K x = s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo) x`` of an operator on a compact
    odd-parity field ``x5[B, R, t, z, y, x/2, 4, Nc]``."""
    eo: EvenOdd = op._eo_setup()

    def hop(f: torch.Tensor, target: int) -> torch.Tensor:
        links, geo = eo.links[target], eo.geo[target]
        return hop_gather_reference(f, links, geo) if uses_gather(f) else hop_fused(f, links, geo)

    tmp = eo.diag(hop(x5, 0), 0, inverse=True)
    out = eo.diag(x5, 1) - (op.kappa**2) * hop(tmp, 1)
    return out * op.scale if op.scale != 1.0 else out
