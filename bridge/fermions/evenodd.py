"""Even-odd (Schur) preconditioning of the Wilson(-clover) operator, as Chroma's
``EvenOddPrecWilsonLinOp`` / ``EvenOddPrecCloverLinOp``.

With ``D = [[A_ee, -kappa H_eo], [-kappa H_oe, A_oo]]`` the Schur complement on the odd sites is
``K = A_oo - kappa^2 H_oe A_ee^{-1} H_eo`` (times ``1/(2 kappa)`` for Chroma's normalisation);
``det D = det A_ee det K``.  One-parity fields are compact,
``psi_p[batch, t, z, y, x // 2, 4, Nc]`` with the sites ``(x + y + z + t) % 2 == p``
(Chroma's ``rb[p]``).  Derivations: docs/fermions.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ..lattice import Lattice
from ..solvers.base import FusedCG
from . import _native
from .clover import clover_apply
from .gamma import NS
from .hopping import (
    _TERMS,
    HopLinks,
    _native_spin_table,
    coefficients,
    gather_colour,
    hop,
    hop_native,
    kernel_links,
    shared_geometry,
    uses_gather,
)

if TYPE_CHECKING:
    from .wilson import WilsonDirac

__all__ = [
    "EvenOdd",
    "schur5",
    "schur_normal5",
    "schur_normal_cg",
    "schur_rhs5",
    "schur_reconstruct5",
    "clover_logdet",
]


_TERM_TABLE: dict[torch.device, torch.Tensor] = {}
_PARITY_OFFSETS: dict[tuple[tuple[int, ...], torch.device], torch.Tensor] = {}


class _StackedLinks(HopLinks):
    """Hop links built stacked (by the native kernel); the per-term tensors of the torch paths
    are views of it, made on first use."""

    def __init__(self, stacked: torch.Tensor, half: tuple[int, ...]) -> None:  # noqa: D107
        self._stacked: torch.Tensor | None = stacked
        self._half = half
        self._terms: list[torch.Tensor] | None = None

    @property
    def terms(self) -> list[torch.Tensor]:  # type: ignore[override]
        if self._terms is None:
            st = self._stacked
            per = st.view(st.shape[0], 1, *self._half, 8, *st.shape[-2:])
            self._terms = [per[..., j, :, :] for j in range(8)]
        return self._terms


def parity_offset(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """``(t + z + y) % 2 == 1`` as ``[t, z, y, 1]``: there the even sites have odd ``x``
    (cached per shape and device)."""
    key = (tuple(shape), device)
    if key not in _PARITY_OFFSETS:
        _PARITY_OFFSETS[key] = _parity_offset(shape, device)
    return _PARITY_OFFSETS[key]


def _parity_offset(shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    t, z, y, _ = shape
    c = (
        torch.arange(t, device=device).view(t, 1, 1)
        + torch.arange(z, device=device).view(1, z, 1)
        + torch.arange(y, device=device).view(1, 1, y)
    )
    return (c % 2 == 1).view(t, z, y, 1)


class EvenOdd:
    """The even-odd data of one operator: the parity offset mask ``o0``, per target parity ``p``
    the geometry and kernel links of the hop from parity ``1 - p``, and the clover blocks
    ``A_pp`` with their inverses (``None`` without clover)."""

    def __init__(
        self, lattice: Lattice, uph: torch.Tensor, a: torch.Tensor | None, device: torch.device
    ) -> None:
        if any(e % 2 for e in lattice.nrow):
            raise ValueError(
                f"U: even-odd preconditioning needs even extents, got nrow {lattice.nrow}"
            )
        t, z, y, x = lattice.shape
        self.o0 = parity_offset(lattice.shape, device)
        geo = []
        for p in (0, 1):
            m = self.o0 if p == 0 else ~self.o0  # x-offset o_p = 1 at these (t, z, y)
            geo.append(shared_geometry((t, z, y, x // 2), p, device, m.view(1, 1, *m.shape, 1, 1)))
        self.geo = tuple(geo)
        if _native.usable(uph):
            self.links = self._native_links(uph, (t, z, y, x // 2))
        else:
            u = self.split(uph)
            self.links = tuple(kernel_links(u[p], u[1 - p], self.geo[p]) for p in (0, 1))
        self.a = None if a is None else self.split(a)
        self.ainv = None if a is None else tuple(torch.linalg.inv(ap) for ap in self.a)

    def _native_links(self, uph: torch.Tensor, half: tuple[int, ...]) -> tuple[HopLinks, ...]:
        """:func:`kernel_links` of both parities in one native pass; the terms are views of
        the stacked tensor the kernels read (the same numbers, copied and conjugated only)."""
        key = uph.device
        if key not in _TERM_TABLE:
            _TERM_TABLE[key] = torch.tensor(_TERMS, dtype=torch.long)
        stacked = _native.eo_links(uph.contiguous(), self.geo[0].native_index(),
                                   self.geo[1].native_index(), _TERM_TABLE[key])
        return tuple(_StackedLinks(st, half) for st in stacked)

    def _mask(self, f: torch.Tensor) -> torch.Tensor:
        t, z, y = self.o0.shape[:3]
        return self.o0.view(1, 1, t, z, y, 1, *([1] * (f.dim() - 6)))

    def split(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split ``f[d0, d1, t, z, y, x, ...]`` (lattice at dims 2..5) into compact parities."""
        fv = f.reshape(*f.shape[:5], f.shape[5] // 2, 2, *f.shape[6:])
        a, b = fv.select(6, 0), fv.select(6, 1)
        m = self._mask(f)
        return torch.where(m, b, a), torch.where(m, a, b)

    def merge(self, fe: torch.Tensor, fo: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`split`."""
        m = self._mask(fe)
        st = torch.stack([torch.where(m, fo, fe), torch.where(m, fe, fo)], dim=6)
        return st.reshape(*fe.shape[:5], 2 * fe.shape[5], *fe.shape[6:])

    def hop(
        self, src: torch.Tensor, target: int, dagger: bool = False, scale: float = 1.0
    ) -> torch.Tensor:
        """``scale H_{target, 1-target} src`` on compact fields ``[B, R, t, z, y, x/2, 4, Nc]``
        (``dagger``: ``gamma_5 H gamma_5``)."""
        return hop(src, self.links[target], self.geo[target], dagger, scale)

    def diag(self, p5: torch.Tensor, parity: int, inverse: bool = False) -> torch.Tensor:
        """``A_pp p5`` (``inverse``: ``A_pp^{-1} p5``); the identity without clover."""
        if self.a is None:
            return p5
        return clover_apply((self.ainv if inverse else self.a)[parity], p5)


def schur5(op: WilsonDirac, x5: torch.Tensor, dagger: bool = False) -> torch.Tensor:
    """``K x`` (``dagger``: ``K^dag x = gamma_5 K gamma_5 x``, as ``A`` commutes with gamma_5 and
    ``H^dag = gamma_5 H gamma_5``); the factors ``-kappa^2 s`` and ``s`` are folded into the
    second hop and one in-place add."""
    eo = op._eo_setup()
    if op._a is None and _native.usable(x5):
        tmp = hop_native(x5, eo.links[0], eo.geo[0], dagger)
        return hop_native(tmp, eo.links[1], eo.geo[1], dagger, -(op.kappa**2) * op.scale, x5,
                          op.scale)
    if op._a is None and uses_gather(x5):
        return _schur5_gather(op, eo, x5, dagger)
    tmp = eo.diag(eo.hop(x5, 0, dagger), 0, inverse=True)
    out = eo.hop(tmp, 1, dagger, -(op.kappa**2) * op.scale)
    return out.add_(eo.diag(x5, 1), alpha=op.scale)


def _schur5_gather(op: WilsonDirac, eo: EvenOdd, x5: torch.Tensor, dagger: bool) -> torch.Tensor:
    """``K x`` (or ``K^dag x``) for Wilson fermions on small fields: the reconstruction of the
    first hop and the projection of the second are one ``[16, 16]`` spin matrix ``P R`` (with
    ``-kappa^2 s``), so ``K`` costs three spin contractions instead of four."""
    b, r = x5.shape[:2]
    v = x5.shape[2] * x5.shape[3] * x5.shape[4] * x5.shape[5]
    nc = x5.shape[-1]
    c = coefficients(x5.dtype, x5.device)
    d = int(dagger)
    pr = c[f"PR{d}"] * (-(op.kappa**2) * op.scale)
    h = torch.einsum("ks,brvsc->brvkc", c[f"P{d}"], x5.reshape(b, r, v, 4, nc))
    w = gather_colour(h, eo.links[0].stacked(), eo.geo[0])
    h = torch.einsum("kj,brvjc->brvkc", pr, w)
    w = gather_colour(h, eo.links[1].stacked(), eo.geo[1])
    out = torch.einsum("sk,brvkc->brvsc", c[f"R{d}"], w).reshape(x5.shape)
    return out.add_(x5, alpha=op.scale)


def schur_normal5(op: WilsonDirac, x5: torch.Tensor) -> torch.Tensor:
    """``K^dag K x`` (Hermitian positive, on odd sites); one native call for Wilson on the CPU."""
    if op._a is None and _native.usable(x5):
        eo = op._eo_setup()
        b, r = x5.shape[:2]
        v = x5.shape[2] * x5.shape[3] * x5.shape[4] * x5.shape[5]
        out = _native.schur_normal(
            x5.view(b, r, v, 4, op.nc),
            eo.links[0].stacked(), eo.geo[0].native_index(),
            eo.links[1].stacked(), eo.geo[1].native_index(),
            _native_spin_table(False), _native_spin_table(True),
            -(op.kappa**2) * op.scale, op.scale,
        )
        return out.view(x5.shape)
    return schur5(op, schur5(op, x5), dagger=True)


def schur_normal_cg(
    op: WilsonDirac,
    b: torch.Tensor,
    x0: torch.Tensor | None,
    tol: float,
    max_iter: int,
    max_restarts: int,
) -> FusedCG | None:
    """:class:`bridge.solvers.CG` on ``K^dag K x = b`` (flat one-parity fields ``[B*R, ...]``)
    as one native call: Wilson, complex128, on the CPU with the native kernel built; None
    otherwise (the solver then iterates in Python)."""
    if op._a is not None or b.dtype != torch.complex128 or not _native.usable(b):
        return None
    b5 = op._in(b, True, "b")
    nb, r = b5.shape[:2]
    v = b5.shape[2] * b5.shape[3] * b5.shape[4] * b5.shape[5]
    shape = (nb, r, v, 4, op.nc)
    x05 = None if x0 is None else op._in(x0, True, "x0").view(shape)
    eo = op._eo_setup()
    x, info = _native.cg_schur_normal(
        b5.view(shape), x05,
        eo.links[0].stacked(), eo.geo[0].native_index(),
        eo.links[1].stacked(), eo.geo[1].native_index(),
        _native_spin_table(False), _native_spin_table(True),
        -(op.kappa**2) * op.scale, op.scale, tol, max_iter, max_restarts,
    )
    head = info[:5].tolist()
    status = int(head[0])
    ns = nb * r  # systems: the solver's batch axis is the flat [B*R]
    return FusedCG(
        x=x.view(b.shape),
        iterations_per_system=info[5:5 + ns].to(torch.long),
        rr=info[5 + ns:5 + 2 * ns],
        bnorm2=info[5 + 2 * ns:],
        operator_applications=int(head[2]),
        restarts=int(head[3]),
        total=int(head[4]),
        breakdown=(status, head[1]) if status >= 0 else None,
    )


def schur_rhs5(op: WilsonDirac, b5: torch.Tensor) -> torch.Tensor:
    """Odd-site source of the Schur system: ``b_o + kappa H_oe A_ee^{-1} b_e`` (compact)."""
    eo = op._eo_setup()
    be, bo = eo.split(b5)
    return bo + op.kappa * eo.hop(eo.diag(be, 0, inverse=True), 1)


def schur_reconstruct5(op: WilsonDirac, xo: torch.Tensor, b5: torch.Tensor) -> torch.Tensor:
    """Full solution from the odd part: ``x_e = A_ee^{-1}(b_e / s + kappa H_eo x_o)``."""
    eo = op._eo_setup()
    be, _ = eo.split(b5)
    rhs = (be / op.scale if op.scale != 1.0 else be) + op.kappa * eo.hop(xo, 0)
    return eo.merge(eo.diag(rhs, 0, inverse=True), xo)


def clover_logdet(op: WilsonDirac, parity: int = 0) -> torch.Tensor:
    """``sum_{x in parity} log |det A(x)|`` per configuration (``A`` in the operator's
    normalisation, i.e. including ``1/(2 kappa)`` per component for ``"chroma"``); zero
    without clover and in kappa normalisation (``A = 1``)."""
    if parity not in (0, 1):
        raise ValueError(f"parity: expected 0 (even) or 1 (odd), got {parity!r}")
    nsite = op.lattice.volume // 2
    const = -NS * op.nc * nsite * math.log(2 * op.kappa) if op.scale != 1.0 else 0.0
    if op._a is None:
        return torch.full((op.batch,), const, dtype=torch.float64, device=op.device)
    _, logabs = torch.linalg.slogdet(op._eo_setup().a[parity])
    return logabs.reshape(op.batch, -1).sum(1).to(torch.float64) + const
