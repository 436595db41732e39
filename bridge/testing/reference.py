"""Straightforward reference implementations that the tests compare the fast kernels against
(kept out of the production classes; slower, but written as the formulas read)."""

from __future__ import annotations

import torch

from ..fermions.evenodd import EvenOdd
from ..fermions.hopping import Geometry, HopLinks, coefficients, hop_fused, uses_gather
from ..fermions.wilson import WilsonDirac
from ..groups import _xi0, mm, trace

__all__ = ["expm_su3_reference", "hop_gather_reference", "schur5_reference"]


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


def expm_su3_reference(x: torch.Tensor) -> torch.Tensor:
    """exp of traceless anti-Hermitian 3x3 ``X`` by Cayley-Hamilton, exact in closed form: the
    straightforward form of :func:`bridge.groups._expm_su3` (which folds a scale into the scalars
    and assembles the result in place).

    Morningstar & Peardon, hep-lat/0311018, eqs. (19)-(34): with ``Q = -i X`` (Hermitian,
    traceless), ``exp(iQ) = f0 + f1 Q + f2 Q^2``, ``c0 = det Q = Tr Q^3 / 3``,
    ``c1 = Tr Q^2 / 2``, ``theta = arccos(c0 / c0max)``, ``c0max = 2 (c1/3)^{3/2}``,
    ``u = sqrt(c1/3) cos(theta/3)``, ``w = sqrt(c1) sin(theta/3)``, and for ``c0 < 0`` the
    symmetry ``f_j(-c0, c1) = (-1)^j conj(f_j(c0, c1))`` (eq. 34).  The denominator
    ``9u^2 - w^2 >= 2 c1`` never vanishes except at Q = 0, where the exact limit
    ``f = (1, i, -1/2)`` is used.
    """
    q = -1j * x
    q2 = mm(q, q)
    rdt = torch.empty(0, dtype=x.dtype).real.dtype
    c0 = ((q2 * q.transpose(-1, -2)).sum((-1, -2)).real / 3.0).to(rdt)  # Tr(Q^2 Q) / 3
    c1 = (trace(q2).real / 2.0).to(rdt)
    neg = c0 < 0
    c0a = c0.abs()
    tiny = torch.finfo(rdt).tiny ** 0.5
    small = c1 <= tiny
    c1s = torch.where(small, torch.ones_like(c1), c1)
    c0max = 2.0 * (c1s / 3.0) ** 1.5
    theta = torch.arccos(torch.clamp(c0a / c0max, -1.0, 1.0))
    u = torch.sqrt(c1s / 3.0) * torch.cos(theta / 3.0)
    w = torch.sqrt(c1s) * torch.sin(theta / 3.0)
    u2, w2 = u * u, w * w
    cw, xi = torch.cos(w), _xi0(w)
    e2iu = torch.polar(torch.ones_like(u), 2.0 * u)
    emiu = torch.polar(torch.ones_like(u), -u)
    h0 = (u2 - w2) * e2iu + emiu * torch.complex(8.0 * u2 * cw, 2.0 * u * (3.0 * u2 + w2) * xi)
    h1 = 2.0 * u * e2iu - emiu * torch.complex(2.0 * u * cw, -(3.0 * u2 - w2) * xi)
    h2 = e2iu - emiu * torch.complex(cw, 3.0 * u * xi)
    den = 9.0 * u2 - w2
    f0, f1, f2 = h0 / den, h1 / den, h2 / den
    # c0 < 0: f_j -> (-1)^j conj(f_j)
    f0 = torch.where(neg, f0.conj(), f0)
    f1 = torch.where(neg, -f1.conj(), f1)
    f2 = torch.where(neg, f2.conj(), f2)
    one = torch.ones_like(f0)
    f0 = torch.where(small, one, f0)
    f1 = torch.where(small, 1j * one, f1)
    f2 = torch.where(small, -0.5 * one, f2)
    eye = torch.eye(3, dtype=x.dtype, device=x.device)
    return (f0[..., None, None] * eye + f1[..., None, None] * q
            + f2[..., None, None] * q2).to(x.dtype)
