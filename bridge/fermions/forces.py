"""Force kernels of the Wilson(-clover) operator: the algebra-valued ``G`` with
``d Re<Y, D X> = sum_{x,mu} Re Tr[Z_mu(x) G_mu(x)]`` for ``U -> exp(e Z) U``, for ``D``, the Schur
operator ``K`` and the clover log-determinant.  The Nf=2 pseudofermion force is ``G`` with
``X = (D^dag D)^{-1} phi``, ``Y = D X`` (derivation: docs/fermions.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..gauge.wilson import _project_algebra_gemm
from . import _native
from .clover import blocks_to_full, clover_bilinear, field_strength_grad, i_sigma, project
from .gamma import NS
from .hopping import (
    _ROWS,
    _TERMS,
    Geometry,
    HopLinks,
    _native_spin_table,
    coefficients,
    hop_native,
)

if TYPE_CHECKING:
    from .wilson import WilsonDirac

__all__ = [
    "hop_bilinear",
    "hop_bilinear_directional",
    "force_bilinear",
    "schur_force_bilinear",
    "clover_logdet_force",
]

_BILINEAR_GATHER_MAX_SITES = 1024
"""Fields with fewer sites (incl. batch and right-hand sides) take the all-directions gather form
of :func:`hop_bilinear`, larger ones :func:`hop_bilinear_directional` (measured crossover:
docs/fermions.md)."""


def _half_spinor(
    up: torch.Tensor, lo: torch.Tensor, rows: tuple[tuple[int, complex], ...], sign: float
) -> torch.Tensor:
    """Unshifted half spinor ``h_j = up_j + sign k_j lo_{perm j}``."""
    parts = [
        torch.add(up[..., j, :], lo[..., pj, :], alpha=sign * kj)
        for j, (pj, kj) in enumerate(rows)
    ]
    return torch.stack(parts, dim=-2)


def hop_bilinear(
    links: HopLinks, geo: Geometry, x5: torch.Tensor, y5: torch.Tensor
) -> torch.Tensor:
    """``G`` with ``d Re<Y, H X> = sum_{x,mu} Re Tr[Z_mu(x) G_mu(x)]`` (full-lattice fields
    ``[B, R, *L, 4, Nc]``).  Small fields, all four directions at once: the half spinors
    ``B^-/+ X`` and ``B^-/+ Y`` of every site as one spin contraction each, one gather for the
    shifted ones, two batched colour products with the forward links and two batched outer
    products; the projection is one GEMM.  Larger fields: :func:`hop_bilinear_directional`."""
    b, r = x5.shape[:2]
    lat = x5.shape[2:6]
    v = lat[0] * lat[1] * lat[2] * lat[3]
    if b * r * v >= _BILINEAR_GATHER_MAX_SITES:
        return hop_bilinear_directional(links, geo, x5, y5)
    nc = x5.shape[-1]
    c = coefficients(x5.dtype, x5.device)
    fwd = c["fwd_terms"]
    pm = torch.cat([c["P0"], c["P1"]], dim=0)  # [32, 4]: B_k (rows of 1 -/+ g), then B_k^+
    hx = torch.einsum("ks,brvsc->brvkc", pm, x5.reshape(b, r, v, 4, nc))
    hy = torch.einsum("ks,brvsc->brvkc", pm, y5.reshape(b, r, v, 4, nc))
    gidx = geo.gather_index(x5.device)
    # forward terms: (B^- X)(x + mu) from hx[:, :, :, :16], (B^+ Y)(x + mu) from hy[..., 16:]
    sx = hx[:, :, :, :16].reshape(b, r, v * 8, 2, nc).index_select(2, gidx)
    sy = hy[:, :, :, 16:].reshape(b, r, v * 8, 2, nc).index_select(2, gidx)
    lst = links.stacked().view(b, 1, v, 8, nc, nc).index_select(3, fwd)
    vx = torch.matmul(sx.view(b, r, v, 8, 2, nc).index_select(3, fwd), lst)
    wy = torch.matmul(sy.view(b, r, v, 8, 2, nc).index_select(3, fwd), lst)
    py = hy[:, :, :, :16].reshape(b, r, v, 8, 2, nc).index_select(3, fwd)  # B^- Y(x)
    px = hx[:, :, :, 16:].reshape(b, r, v, 8, 2, nc).index_select(3, fwd)  # B^+ X(x)
    m = torch.matmul(vx.transpose(-1, -2), py.conj()) - torch.matmul(
        px.transpose(-1, -2), wy.conj())
    g = m.sum(1).permute(0, 2, 1, 3, 4).reshape(b, 4, *lat, nc, nc)
    return _project_algebra_gemm(g, nc > 1, 1.0)


def hop_bilinear_directional(
    links: HopLinks, geo: Geometry, x5: torch.Tensor, y5: torch.Tensor
) -> torch.Tensor:
    """:func:`hop_bilinear` direction by direction (large fields; the gather form is tested
    against it).

    ``H`` contains ``(1-g_mu) U_mu(x) X(x+mu)`` and ``(1+g_mu) U_mu(x)^dag X(x)`` at
    ``x+mu``; with ``dU = Z U``, ``dU^dag = -U^dag Z`` and ``1 -/+ g = B^dag B``::

        d<Y, H X> = sum_x,mu Tr[Z (M1 - M2)],
        M1 = (U B^- X(x+mu))^T conj(B^- Y(x)),   M2 = (B^+ X(x))^T conj(U B^+ Y(x+mu))

    (matrices indexed [colour b, colour a], summed over the 2 half-spinor rows and the
    right-hand sides).  ``Re Tr[Z M] = Tr[Z TA(M)]`` for anti-Hermitian traceless Z.
    """
    xu, xl = x5[..., :2, :], x5[..., 2:, :]
    yu, yl = y5[..., :2, :], y5[..., 2:, :]
    out = []
    h = torch.empty((*x5.shape[:-2], 2, x5.shape[-1]), dtype=x5.dtype, device=x5.device)
    for mu in range(4):
        rows = _ROWS[mu][0]
        ut = links[_TERMS.index((mu, 1))]
        v = torch.matmul(geo.project_shift(xu, xl, rows, 1.0, mu, 1, h), ut)
        m1 = torch.matmul(v.transpose(-1, -2), _half_spinor(yu, yl, rows, 1.0).conj())
        w = torch.matmul(geo.project_shift(yu, yl, rows, -1.0, mu, 1, h), ut)
        m2 = torch.matmul(_half_spinor(xu, xl, rows, -1.0).transpose(-1, -2), w.conj())
        out.append((m1 - m2).sum(1))
    return project(torch.stack(out, dim=1), int(x5.shape[-1]))


def force_bilinear(op: WilsonDirac, x5: torch.Tensor, y5: torch.Tensor) -> torch.Tensor:
    """``G`` (shape of U, algebra-valued) with ``d Re<Y, D X> = sum Re Tr[Z G]`` for
    ``U -> exp(e Z) U`` (full fields ``[B, R, ...]``; right-hand sides are summed).

    ``D = s (A - kappa H)``, so ``G = s (-kappa G_H + kappa c_sw G_C)``.
    """
    g = -op.kappa * hop_bilinear(op._links, op._geo, x5, y5)
    if op._clover is not None:
        g = g + (op.kappa * op.c_sw) * clover_bilinear(op.U, x5, y5)
    return g * op.scale if op.scale != 1.0 else g


def schur_force_bilinear(op: WilsonDirac, xo: torch.Tensor, yo: torch.Tensor) -> torch.Tensor:
    """``G`` with ``d Re<Y_o, K X_o> = sum Re Tr[Z G]`` for the Schur operator ``K``.

    ``K = s (A_oo - kappa^2 H_oe A_ee^{-1} H_eo)``; with ``Z_e = A_ee^{-1} H_eo X``,
    ``W_e = A_ee^{-1} H_oe^dag Y = A_ee^{-1} g5 H_eo g5 Y``::

        d<Y, K X> / s = <Y, dA_oo X> - kappa^2 (<Y, dH_oe Z_e> + <W_e, dH_eo X>)
                        + kappa^2 <W_e, dA_ee Z_e>,

    i.e. a full-lattice hopping bilinear with ``X_h = (Z_e, X)``, ``Y_h = (W_e, Y)`` times
    ``-kappa^2`` plus a clover bilinear with ``(kappa Z_e, X)``, ``(kappa W_e, Y)``.
    """
    eo = op._eo_setup()
    if op._a is None and _native.usable(xo):
        return _schur_force_native(op, xo, yo)
    ze = eo.diag(eo.hop(xo, 0), 0, inverse=True)
    we = eo.diag(eo.hop(yo, 0, dagger=True), 0, inverse=True)
    xh, yh = eo.merge(ze, xo), eo.merge(we, yo)
    g = -(op.kappa**2) * hop_bilinear(op._links, op._geo, xh, yh)
    if op._clover is not None:
        xc = eo.merge(op.kappa * ze, xo)
        yc = eo.merge(op.kappa * we, yo)
        g = g + (op.kappa * op.c_sw) * clover_bilinear(op.U, xc, yc)
    return g * op.scale if op.scale != 1.0 else g


def _schur_force_native(op: WilsonDirac, xo: torch.Tensor, yo: torch.Tensor) -> torch.Tensor:
    """:func:`schur_force_bilinear` for Wilson fermions by the native kernel: the two even-site
    hops and the bilinear of every link in one pass over the compact parities (no merge into
    full-lattice fields, the projection and ``-kappa^2 s`` folded in)."""
    eo = op._eo_setup()
    b, r = xo.shape[:2]
    v = xo.shape[2] * xo.shape[3] * xo.shape[4] * xo.shape[5]
    shape = (b, r, v, 4, op.nc)
    ze = hop_native(xo, eo.links[0], eo.geo[0]).view(shape)
    we = hop_native(yo, eo.links[0], eo.geo[0], dagger=True).view(shape)
    return _native.eo_bilinear(
        ze, xo.reshape(shape).contiguous(), we, yo.reshape(shape).contiguous(),
        eo.links[0].stacked(), eo.geo[0].native_index(),
        eo.links[1].stacked(), eo.geo[1].native_index(),
        _native_spin_table(False), _native_spin_table(True),
        coefficients(xo.dtype, xo.device)["fwd_terms"].cpu(),
        tuple(op.lattice.shape), -(op.kappa**2) * op.scale,
    )


def clover_logdet_force(op: WilsonDirac, parity: int = 0) -> torch.Tensor:
    """``G`` with ``d sum_{x in parity} log det A(x) = sum Re Tr[Z G]``.

    ``d log det A = Tr[A^{-1} dA] = kappa c_sw sum_p Tr_c[dFhat_p N_p]`` with
    ``N_p[a, b] = sum_{s,t} A^{-1}[(s,a),(t,b)] (i sigma_p)[t, s]`` on the sites of ``parity``.
    """
    if op._a is None:
        return torch.zeros_like(op.U)
    eo = op._eo_setup()
    nc = op.nc
    ainv = blocks_to_full(eo.ainv[parity]).reshape(*eo.ainv[parity].shape[:-3], NS, nc, NS, nc)
    isig = i_sigma(op.dtype, op.device)
    n = torch.einsum("b...satc,pts->bp...ac", ainv[:, 0], isig)  # [B, 6, t, z, y, x/2, Nc, Nc]
    zero = torch.zeros_like(n)
    full = eo.merge(n, zero) if parity == 0 else eo.merge(zero, n)
    return (op.kappa * op.c_sw) * field_strength_grad(op.U, full)
