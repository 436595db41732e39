"""Chroma's ``QTOP_NAIVE``: the improved gluonic topological charge with parameter ``k5``
(Chroma ``lib/meas/glue/qnaive.cc``; Bilson-Thompson, Leinweber, Williams, hep-lat/0203008).

Per pair of planes ``(01, 23), (02, 31), (03, 12)`` a clover sum of rectangular Wilson loops
(1x1, 2x2, 1x2/2x1, 1x3/3x1, 3x3) with the weights of :func:`qtop_naive_weights` (they sum to 2
in a smooth field for every ``k5``), made traceless, and ``qtop = -sum_x sum_pairs Re Tr[C_1 C_2]
/ (256 (2 pi)^2)``.  ``k5 = 0`` is *not* the plaquette clover charge (the larger loops keep
non-zero weights).  Where Chroma skips every zero-weight loop and leaves its clover
uninitialised (``k1 = 0``, ``k5 = 19/495``), the sum here starts from zero.  Formulas and the
checks against Chroma: docs/observables.md ("QTOP_NAIVE").
"""

from __future__ import annotations

import math

import torch

from ..groups import dagger, mm, trace
from ..lattice import Lattice

__all__ = ["qtop_naive", "qtop_naive_weights", "rectangle_clover"]

# Chroma's pairing of planes: (mu1, nu1) with (mu2, nu2), mu2 = nu1 % 3 + 1, nu2 = mu2 % 3 + 1
_PAIRS = tuple(((0, nu1), (nu1 % 3 + 1, (nu1 % 3 + 1) % 3 + 1)) for nu1 in (1, 2, 3))


def qtop_naive_weights(k5: float) -> dict[tuple[int, int], float]:
    """Chroma's loop weights for ``k5`` (``qnaive.cc``), keyed by loop shape ``(a, b)`` (``a``
    links along ``mu``, ``b`` along ``nu``); zero weights are left out as Chroma skips them."""
    k5 = float(k5)
    k1 = 2.0 * (19.0 / 9.0 - 55.0 * k5)
    k2 = 2.0 * (1.0 / 36.0 - 16.0 * k5)
    k3 = 64.0 * k5 - 32.0 / 45.0
    k4 = 1.0 / 15.0 - 6.0 * k5
    kk5 = 2.0 * k5
    w = {(1, 1): k1, (2, 2): k2, (2, 1): k3, (1, 2): k3, (3, 1): k4, (1, 3): k4, (3, 3): kk5}
    return {shape: k for shape, k in w.items() if k != 0.0}


def _line(lat: Lattice, u: torch.Tensor, mu: int, n: int) -> torch.Tensor:
    """``L(x) = U_mu(x) U_mu(x+mu) ... U_mu(x+(n-1)mu)``: transport from ``x + n mu`` to ``x``."""
    out = u
    for k in range(1, n):
        out = mm(out, lat.shift(u, mu, k))
    return out


def rectangle_clover(u: torch.Tensor, mu: int, nu: int, a: int, b: int) -> torch.Tensor:
    """``W_{++} - W_{+-} + W_{--} - W_{-+}`` at every site for ``a x b`` loops in the ``mu nu``
    plane (module docstring), shape ``[batch, *lattice, N, N]``.

    With ``A(z) = L_mu^a(z) L_nu^b(z + a mu)``, ``B(z) = L_nu^b(z) L_mu^a(z + b nu)``,
    ``C(z) = L_nu^b(z)^dag L_mu^a(z)`` and ``D(z) = L_mu^a(z + b nu) L_nu^b(z + a mu)^dag`` for the
    rectangle with lower-left corner ``z``: ``W_{++}(z) = A B^dag``, ``W_{--}(z + a mu + b nu) =
    B^dag A``, ``W_{+-}(z + b nu) = D C^dag``, ``W_{-+}(z + a mu) = C^dag D``.
    """
    lat = Lattice.of(u)
    umu, unu = u[:, mu], u[:, nu]
    lmu = _line(lat, umu, mu, a)
    lnu = _line(lat, unu, nu, b)
    lnu_amu = lat.shift(lnu, mu, a)  # L_nu^b(z + a mu)
    lmu_bnu = lat.shift(lmu, nu, b)  # L_mu^a(z + b nu)
    big_a = mm(lmu, lnu_amu)
    big_b = mm(lnu, lmu_bnu)
    big_c = mm(dagger(lnu), lmu)
    big_d = mm(lmu_bnu, dagger(lnu_amu))
    w = mm(big_a, dagger(big_b))
    w = w + lat.shift(lat.shift(mm(dagger(big_b), big_a), mu, -a), nu, -b)
    w = w - lat.shift(mm(big_d, dagger(big_c)), nu, -b)
    w = w - lat.shift(mm(dagger(big_c), big_d), mu, -a)
    return w


def _clover_sum(u: torch.Tensor, mu: int, nu: int, weights: dict) -> torch.Tensor:
    lat = Lattice.of(u)
    nc = u.shape[-1]
    c = torch.zeros(u.shape[:1] + lat.shape + (nc, nc), dtype=u.dtype, device=u.device)
    for (a, b), k in weights.items():
        c = c + k * rectangle_clover(u, mu, nu, a, b)
    c = c - dagger(c)
    eye = torch.eye(nc, dtype=c.dtype, device=c.device)
    return c - (trace(c) / nc)[..., None, None] * eye


def qtop_naive(u: torch.Tensor, k5: float = 0.0) -> torch.Tensor:
    """Chroma's ``QTOP_NAIVE`` charge ``qtop`` per configuration, shape ``[batch]`` (real), for a
    4D gauge field ``U[batch, 4, t, z, y, x, N, N]`` (module docstring; ``qnaive.cc``)."""
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"U: expected a torch.Tensor gauge field, got {type(u).__name__}")
    lat = Lattice.of(u)
    lat.check_gauge(u)
    if lat.nd != 4:
        raise ValueError(f"U: QTOP_NAIVE needs Nd = 4 (as Chroma's qnaive.cc), got Nd = {lat.nd}")
    try:
        k5f = float(k5)
    except (TypeError, ValueError):
        raise ValueError(f"k5: expected a real number, got {k5!r}") from None
    if not math.isfinite(k5f):
        raise ValueError(f"k5: expected a finite number, got {k5!r}")
    weights = qtop_naive_weights(k5f)
    q = torch.zeros(u.shape[0], dtype=u.real.dtype, device=u.device)
    for (mu1, nu1), (mu2, nu2) in _PAIRS:
        c1 = _clover_sum(u, mu1, nu1, weights)
        c2 = _clover_sum(u, mu2, nu2, weights)
        q = q - (c1 * c2.transpose(-1, -2)).real.sum((-1, -2)).flatten(1).sum(1)
    return q / (16.0 * 16.0 * (2.0 * math.pi) ** 2)
