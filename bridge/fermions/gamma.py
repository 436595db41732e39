"""Dirac gamma matrices in Chroma's DeGrand-Rossi basis and Chroma's ``Gamma(n)`` numbering.

Basis (QDP++ ``Gamma`` / Chroma / QUDA's "DeGrand-Rossi" order; ``gamma_1 .. gamma_4`` are the
directions ``x, y, z, t`` = ``mu = 0 .. 3``)::

    gamma_1 = [[0, 0, 0, i], [0, 0, i, 0], [0, -i, 0, 0], [-i, 0, 0, 0]]
    gamma_2 = [[0, 0, 0, -1], [0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0]]
    gamma_3 = [[0, 0, i, 0], [0, 0, 0, -i], [-i, 0, 0, 0], [0, i, 0, 0]]
    gamma_4 = [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]]

They are Hermitian, square to one and anticommute (Euclidean Clifford algebra
``{gamma_mu, gamma_nu} = 2 delta_{mu nu}``).  ``gamma_5 = gamma_1 gamma_2 gamma_3 gamma_4 =
diag(1, 1, -1, -1)`` (chiral basis: upper two spin components have positive chirality).

Chroma numbers the 16 elements of the Clifford algebra by four bits ``n = b0 + 2 b1 + 4 b2 + 8 b3``
with ``Gamma(n) = gamma_1^b0 gamma_2^b1 gamma_3^b2 gamma_4^b3`` (QDP++ ``Gamma(n)``; Chroma's
``triacntr`` documents the same rule), so ``Gamma(15) = gamma_5`` (the pion's ``gamma_value``)
and, e.g., ``Gamma(3) = gamma_1 gamma_2 = diag(-i, i, -i, i)``, as Chroma's clover code lists.

Every function takes ``dtype`` (complex128 by default) and ``device`` and creates fresh tensors.
"""

from __future__ import annotations

import torch

from ..groups import complex_dtype
from ..lattice import as_device

__all__ = [
    "NS",
    "apply_gamma5",
    "gamma",
    "gamma_matrices",
    "gamma5",
    "chroma_gamma",
    "sigma",
    "sigma_matrices",
    "spin_projectors",
]

NS = 4
"""Number of spin components (4D Wilson fermions)."""

_I = 1j
_GAMMA_ENTRIES: tuple[tuple[tuple[complex, ...], ...], ...] = (
    ((0, 0, 0, _I), (0, 0, _I, 0), (0, -_I, 0, 0), (-_I, 0, 0, 0)),
    ((0, 0, 0, -1), (0, 0, 1, 0), (0, 1, 0, 0), (-1, 0, 0, 0)),
    ((0, 0, _I, 0), (0, 0, 0, -_I), (-_I, 0, 0, 0), (0, _I, 0, 0)),
    ((0, 0, 1, 0), (0, 0, 0, 1), (1, 0, 0, 0), (0, 1, 0, 0)),
)


def _check_mu(mu: int) -> int:
    if isinstance(mu, bool) or int(mu) != mu or not 0 <= int(mu) < 4:
        raise ValueError(f"mu: expected a direction 0..3 (x, y, z, t), got {mu!r}")
    return int(mu)


def gamma_matrices(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``g[mu]`` = gamma_{mu+1} for ``mu = 0..3`` (x, y, z, t), shape ``[4, 4, 4]``."""
    return torch.tensor(_GAMMA_ENTRIES, dtype=complex_dtype(dtype), device=as_device(device))


def gamma(
    mu: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The single matrix ``gamma_{mu+1}`` (direction ``mu`` = 0..3)."""
    return gamma_matrices(dtype, device)[_check_mu(mu)]


def gamma5(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``gamma_5 = gamma_1 gamma_2 gamma_3 gamma_4 = diag(1, 1, -1, -1)``."""
    g = gamma_matrices(dtype, device)
    return g[0] @ g[1] @ g[2] @ g[3]


def chroma_gamma(
    n: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """Chroma's ``Gamma(n) = gamma_1^b0 gamma_2^b1 gamma_3^b2 gamma_4^b3`` for ``n = sum b_k 2^k``.

    ``Gamma(0) = 1``, ``Gamma(1, 2, 4, 8) = gamma_{1, 2, 3, 4}``, ``Gamma(15) = gamma_5``.
    """
    if isinstance(n, bool) or int(n) != n or not 0 <= int(n) < 16:
        raise ValueError(f"n: expected a Gamma index 0..15, got {n!r}")
    g = gamma_matrices(dtype, device)
    out = torch.eye(NS, dtype=g.dtype, device=g.device)
    for k in range(4):
        if (int(n) >> k) & 1:
            out = out @ g[k]
    return out


def sigma(
    mu: int, nu: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``sigma_{mu nu} = (i/2) [gamma_mu, gamma_nu]`` (Hermitian; zero for mu = nu)."""
    g = gamma_matrices(dtype, device)
    a, b = g[_check_mu(mu)], g[_check_mu(nu)]
    return 0.5j * (a @ b - b @ a)


def sigma_matrices(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """``sigma_{mu nu}`` for the six planes ``mu < nu`` in Chroma's order
    ``(0,1), (0,2), (0,3), (1,2), (1,3), (2,3)`` (as ``mesField``), shape ``[6, 4, 4]``."""
    return torch.stack(
        [sigma(mu, nu, dtype, device) for mu in range(3) for nu in range(mu + 1, 4)]
    )


def spin_projectors(
    dtype: torch.dtype | None = None, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Half-spinor projections ``B^{(s)}_mu`` (shape ``[2, 4, 2, 4]``: sign index ``s`` = 0 for
    ``1 - gamma_mu`` and 1 for ``1 + gamma_mu``, direction, 2 x 4 matrix) and the same as a
    compact description.

    ``1 -/+ gamma_mu`` has rank 2 and, in this basis, every row of ``gamma_mu`` has a single
    entry ``c_i`` in column ``p(i)`` with ``p`` an involution swapping {0,1} with {2,3}.  With
    ``B`` the first two rows of ``1 - s gamma_mu`` one has ``1 - s gamma_mu = B^dagger B``
    (because ``gamma_mu`` is Hermitian: row ``p(r)`` equals ``-s c_{p(r)}`` times row ``r``).  So
    ``(1 - s gamma_mu) U psi = B^dagger (U (B psi))``: project to a 2-spinor, multiply the colour
    matrix onto two spin components instead of four, reconstruct.

    Returns ``(B, lower)``: ``B[s, mu]`` (2 x 4) and ``lower[s, mu]`` (2 x 2) with
    ``lower[s, mu][j, r]`` the coefficient of half-spinor row ``r`` in the reconstructed spin
    component ``2 + j`` (``B^dagger = [1_2 ; lower]``).
    """
    g = gamma_matrices(dtype, device)
    eye = torch.eye(NS, dtype=g.dtype, device=g.device)
    b = torch.stack([torch.stack([(eye - s * g[mu])[:2] for mu in range(4)]) for s in (1, -1)])
    lower = b.conj().transpose(-1, -2)[..., 2:, :]
    return b, lower


def apply_gamma5(psi: torch.Tensor) -> torch.Tensor:
    """``gamma_5 psi`` for ``psi[..., 4, Nc]`` in the DeGrand-Rossi basis (``diag(1,1,-1,-1)``)."""
    return torch.cat([psi[..., :2, :], -psi[..., 2:, :]], dim=-2)
