"""Molecular-dynamics integrators as coefficient data plus one generic builder.

A scheme is a sequence of updates ``("P", c)`` (momentum, ``P <- P - c eps F(U)``) and ``("Q", c)``
(links, ``U <- exp(c eps P) U``) that make up one step of size ``eps``; it is symmetric, hence
reversible and area preserving.  Names follow Chroma (``lib/update/molecdyn/integrator/``):

- ``LCM_STS_LEAPFROG``: ``P(eps/2) Q(eps) P(eps/2)`` (second order, |dH| ~ eps^2).
- ``LCM_TST_LEAPFROG``: ``Q(eps/2) P(eps) Q(eps/2)``.
- ``LCM_STS_MIN_NORM_2``: Omelyan's 2MN ``P(l eps) Q(eps/2) P((1-2l) eps) Q(eps/2) P(l eps)`` with
  Chroma's default ``lambda = 0.1931833275037836`` (Omelyan, Mryglod & Folk, Comput. Phys. Commun.
  151 (2003) 272, eq. 31; Takaishi & de Forcrand, hep-lat/0505020, eq. 19).
- ``LCM_TST_MIN_NORM_2``: ``Q(l eps) P(eps/2) Q((1-2l) eps) P(eps/2) Q(l eps)``.

Time scales nest as in Chroma's ``Integrator``/``SubIntegrator``: a :class:`Level` owns monomials
and a number of steps; its ``Q`` updates run the next (finer) level over the same time span, and
only the innermost level moves the links.  Adjacent momentum updates of one level are fused (the
force is evaluated once), which changes results only by rounding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..errors import PhysicsError
from ..groups import expm_algebra_mul
from .monomials import Monomial

__all__ = [
    "Scheme",
    "SCHEMES",
    "MIN_NORM_2_LAMBDA",
    "leapfrog",
    "min_norm_2",
    "scheme",
    "Level",
    "Integrator",
]

MIN_NORM_2_LAMBDA = 0.1931833275037836  # Chroma lcm_sts_min_norm2_recursive.cc default


@dataclass(frozen=True)
class Scheme:
    """One integration step as coefficient data: ``(("P", c1), ("Q", c2), ...)``."""

    name: str
    updates: tuple[tuple[str, float], ...]
    order: int

    def __post_init__(self) -> None:
        for kind, _ in self.updates:
            if kind not in ("P", "Q"):
                raise ValueError(
                    f"scheme {self.name}: update kind must be 'P' or 'Q', got {kind!r}"
                )
        for kind in ("P", "Q"):
            total = sum(c for k, c in self.updates if k == kind)
            if abs(total - 1.0) > 1e-12:
                raise ValueError(
                    f"scheme {self.name}: {kind} coefficients must sum to 1, got {total}"
                )


def leapfrog(kind: str = "STS") -> Scheme:
    if kind == "STS":
        return Scheme("LCM_STS_LEAPFROG", (("P", 0.5), ("Q", 1.0), ("P", 0.5)), 2)
    return Scheme("LCM_TST_LEAPFROG", (("Q", 0.5), ("P", 1.0), ("Q", 0.5)), 2)


def min_norm_2(lam: float = MIN_NORM_2_LAMBDA, kind: str = "STS") -> Scheme:
    a, b = ("P", "Q") if kind == "STS" else ("Q", "P")
    return Scheme(
        f"LCM_{kind}_MIN_NORM_2",
        ((a, lam), (b, 0.5), (a, 1.0 - 2.0 * lam), (b, 0.5), (a, lam)),
        2,
    )


SCHEMES: dict[str, Callable[..., Scheme]] = {
    "LCM_STS_LEAPFROG": lambda: leapfrog("STS"),
    "LCM_TST_LEAPFROG": lambda: leapfrog("TST"),
    "LCM_STS_MIN_NORM_2": lambda lam=MIN_NORM_2_LAMBDA: min_norm_2(lam, "STS"),
    "LCM_TST_MIN_NORM_2": lambda lam=MIN_NORM_2_LAMBDA: min_norm_2(lam, "TST"),
}


def scheme(name: str, **params: float) -> Scheme:
    """A scheme by Chroma's name, e.g. ``scheme("LCM_STS_MIN_NORM_2", lam=0.19)``."""
    if name not in SCHEMES:
        raise ValueError(f"integrator Name: expected one of {sorted(SCHEMES)}, got {name!r}")
    if params and "MIN_NORM" not in name:
        raise ValueError(f"integrator {name}: takes no parameters, got {sorted(params)}")
    return SCHEMES[name](**params)


@dataclass
class Level:
    """One time scale: a scheme, its number of steps and the monomials whose forces it applies."""

    scheme: Scheme
    n_steps: int
    monomials: Sequence[Monomial] = field(default_factory=list)

    def __post_init__(self) -> None:
        if int(self.n_steps) != self.n_steps or self.n_steps < 1:
            raise ValueError(f"n_steps: expected a positive integer, got {self.n_steps!r}")


def _ops(level: Level, fuse_q: bool) -> list[tuple[str, float]]:
    """The level's updates over all its steps, adjacent same-kind updates fused."""
    out: list[list] = []
    for _ in range(level.n_steps):
        for kind, c in level.scheme.updates:
            if out and out[-1][0] == kind and (kind == "P" or fuse_q):
                out[-1][1] += c
            else:
                out.append([kind, c])
    return [(k, c) for k, c in out]


class Integrator:
    """Generic nested integrator built from :class:`Level` data (outermost first).

    ``integrator(U, P, tau)`` returns the new ``(U, P)`` and the number of force evaluations per
    monomial.  Reversibility: integrating ``(U', -P')`` gives back ``(U, -P)`` up to rounding.
    """

    def __init__(self, levels: Sequence[Level]) -> None:
        if not levels:
            raise ValueError("levels: expected at least one integrator level")
        self.levels = list(levels)
        self._ops = [_ops(lvl, fuse_q=(i == len(levels) - 1)) for i, lvl in enumerate(levels)]

    @property
    def monomials(self) -> list[Monomial]:
        return [m for lvl in self.levels for m in lvl.monomials]

    def force(self, level: int, u: torch.Tensor) -> torch.Tensor:
        mons = self.levels[level].monomials
        f = mons[0].force(u)
        for m in mons[1:]:
            f = f + m.force(u)
        return f

    def __call__(
        self, u: torch.Tensor, p: torch.Tensor, tau: float
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, int]]:
        counts: dict[str, int] = {m.name: 0 for m in self.monomials}
        u, p, _ = self._run(0, u, p, float(tau), counts)
        return u, p, counts

    def _run(self, i: int, u, p, dt: float, counts: dict[str, int], owned: bool = False):
        """Run level ``i`` over ``dt``.  ``owned``: ``p`` is a tensor this call made (so it may
        be updated in place); the caller's momentum is never modified."""
        lvl = self.levels[i]
        eps = dt / lvl.n_steps
        last = i == len(self.levels) - 1
        for kind, c in self._ops[i]:
            if kind == "P":
                if not lvl.monomials:
                    continue
                f = self.force(i, u)
                for m in lvl.monomials:
                    counts[m.name] += 1
                # one reduction instead of an elementwise isfinite pass: a NaN or Inf entry (or
                # an overflowing force) makes the sum non-finite
                if not bool(torch.isfinite(torch.view_as_real(f).sum())):
                    names = ", ".join(m.name for m in lvl.monomials)
                    raise PhysicsError(
                        f"integrator level {i} ({lvl.scheme.name}): non-finite force from "
                        f"monomial(s) {names}; step size eps = {eps:g} may be too large or the "
                        f"field is corrupted"
                    )
                if owned:
                    p.sub_(f, alpha=c * eps)
                else:
                    p = torch.sub(p, f, alpha=c * eps)
                    owned = True
            elif last:
                u = expm_algebra_mul(p, u, c * eps)
            else:
                u, p, owned = self._run(i + 1, u, p, c * eps, counts, owned)
        return u, p, owned
