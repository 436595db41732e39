"""The Sheikholeslami-Wohlert (clover) term ``C = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu}``
(hep-lat/9605038) with Chroma's ``mesField`` field strength
(:func:`bridge.gauge.clover_field_strength`), in the two chiral ``2 Nc x 2 Nc`` blocks per site
of Chroma's ``PrimitiveClovTriang`` layout; its force kernels go through autograd of the field
strength.  Conventions: docs/fermions.md."""

from __future__ import annotations

import torch

from ..gauge import clover_field_strength
from ..groups import dagger, mm, project_algebra
from .gamma import NS, sigma_matrices

__all__ = [
    "clover_field_strength",
    "clover_matrix",
    "clover_diagonal",
    "clover_apply",
    "blocks_to_full",
    "field_strength_grad",
    "clover_bilinear",
]


def i_sigma(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``i sigma_{mu nu}`` for the six planes, ``[6, 4, 4]``."""
    return 1j * sigma_matrices(dtype, device)


def clover_matrix(u: torch.Tensor) -> torch.Tensor:
    """``C = i sum_{mu<nu} sigma_{mu nu} Fhat_{mu nu}`` per site in its two chiral 6x6 blocks.

    Shape ``[batch, t, z, y, x, 2, 2 Nc, 2 Nc]``; block 0 acts on spins (0, 1), block 1 on
    spins (2, 3), and within a block the index is ``spin_local * Nc + colour`` (Chroma's
    ``PrimitiveClovTriang`` layout).  ``sigma_{mu nu}`` commutes with ``gamma_5`` (diagonal in
    this basis), so the off-diagonal chiral blocks vanish.  Hermitian.
    """
    f = clover_field_strength(u)
    nc = int(u.shape[-1])
    isig = i_sigma(u.dtype, u.device)
    full = torch.einsum("pst,bp...ac->b...satc", isig, f)
    full = full.reshape(*full.shape[:-4], NS * nc, NS * nc)
    h = 2 * nc
    return torch.stack([full[..., :h, :h], full[..., h:, h:]], dim=-3)


def clover_diagonal(
    u: torch.Tensor, kappa: float, c_sw: float
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """``(C, A)`` in chiral blocks ``[B, 1, *L, 2, 2Nc, 2Nc]`` with ``A = 1 + kappa c_sw C`` the
    site-diagonal part of ``D``; ``(None, None)`` without clover (``c_sw = 0``, ``A = 1``)."""
    if c_sw == 0.0:
        return None, None
    c = clover_matrix(u).unsqueeze(1)
    eye = torch.eye(2 * int(u.shape[-1]), dtype=u.dtype, device=u.device)
    return c, eye + (kappa * c_sw) * c


def clover_apply(blocks: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
    """Apply per-site chiral blocks ``[B, 1, *L, 2, 2Nc, 2Nc]`` to ``psi[B, R, *L, 4, Nc]``."""
    nc = psi.shape[-1]
    v = psi.reshape(*psi.shape[:-2], 2, 2 * nc, 1)
    return torch.matmul(blocks, v).reshape(psi.shape)


def blocks_to_full(blocks: torch.Tensor) -> torch.Tensor:
    """Chiral blocks ``[..., 2, n, n]`` -> block-diagonal ``[..., 2n, 2n]``."""
    n = blocks.shape[-1]
    z = torch.zeros_like(blocks[..., 0, :, :])
    top = torch.cat([blocks[..., 0, :, :], z], dim=-1)
    bot = torch.cat([z, blocks[..., 1, :, :]], dim=-1)
    out = torch.cat([top, bot], dim=-2)
    return out.reshape(*blocks.shape[:-3], 2 * n, 2 * n)


def project(m: torch.Tensor, nc: int) -> torch.Tensor:
    """The algebra projection ``TA(m)`` of the fermion forces (U(1) for ``Nc = 1``)."""
    return project_algebra(m, "U1" if nc == 1 else None)


def field_strength_grad(u: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """``G`` with ``d Re sum Tr[Fhat_p N_p] = sum Re Tr[Z G]`` (``N[B, 6, *L, Nc, Nc]`` fixed).

    By autograd: torch returns ``g = ds/dRe U + i ds/dIm U``, so ``ds = Re sum conj(g) dU
    = Re Tr[Z U g^dag]`` for ``dU = Z U``; hence ``G = TA(U g^dag)``.
    """
    with torch.enable_grad():
        ug = u.detach().requires_grad_(True)
        f = clover_field_strength(ug)
        s = (f * n.transpose(-1, -2)).real.sum()
        (g,) = torch.autograd.grad(s, ug)
    return project(mm(u, dagger(g)), int(u.shape[-1]))


def clover_bilinear(u: torch.Tensor, x5: torch.Tensor, y5: torch.Tensor) -> torch.Tensor:
    """``G`` with ``d Re<Y, C X> = sum Re Tr[Z G]``: ``Re<Y, C X> = Re sum_p Tr[Fhat_p N_p]``,
    ``N_p = ((i sigma_p) X)^T conj(Y)`` (summed over spins and right-hand sides)."""
    isig = i_sigma(u.dtype, u.device)
    sx = torch.einsum("pst,brvtc->brpvsc", isig, x5.flatten(2, 5)).reshape(
        *x5.shape[:2], 6, *x5.shape[2:]
    )
    n = torch.matmul(sx.transpose(-1, -2), y5.unsqueeze(2).conj()).sum(1)
    return field_strength_grad(u, n)
