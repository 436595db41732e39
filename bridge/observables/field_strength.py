"""Clover-leaf field strength, the energy density and the topological charge.

``F_{mu nu} = (Q_{mu nu} - Q_{mu nu}^dag) / 8`` from the four plaquette leaves at ``x`` (Chroma's
``mesField``; by default the trace is kept, as Chroma does, ``traceless=True`` removes it);
``E_clover = -(1/V) sum_x sum_{mu<nu} Re Tr F F`` and the plaquette form (Luescher,
arXiv:1006.4518); the clover charge ``q(x) = -1/(4 pi^2) Re Tr[F_01 F_23 + F_02 F_31 + F_03 F_12]``
(Chroma's ``QACTDEN``); the geometric charge of 2D U(1), ``(1/2 pi) sum_x arg P_01(x)``, an exact
integer.  Vectorised over the lattice and the batch; device and dtype come from ``U``.  The
definitions, signs, Chroma's conventions and the exactly known test fields: docs/observables.md,
sections 3-5.
"""

from __future__ import annotations

import math

import torch

from .. import _native_gauge
from ..gauge import clover_field_strength, clover_planes, plaquette_field, plaquette_traces
from ..gauge.loops import _native_tables
from ..lattice import Lattice

__all__ = [
    "clover_planes",
    "clover_field_strength",
    "energy_density_field",
    "energy_density",
    "energy_density_split",
    "topological_charge_density",
    "clover_charge",
    "geometric_charge_u1",
    "topological_charge",
]

_DEFINITIONS_E = ("clover", "plaquette")
_DEFINITIONS_Q = ("clover", "geometric")


def _gauge(u: torch.Tensor, name: str = "U") -> tuple[Lattice, int, int]:
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"{name}: expected a torch.Tensor gauge field, got {type(u).__name__}")
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u, name)
    return lat, b, nc


def _re_tr_prod(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``Re Tr[A B]`` over the last two axes without forming the product."""
    return (a * b.transpose(-1, -2)).real.sum((-1, -2))


def energy_density_field(u: torch.Tensor, *, traceless: bool = False) -> torch.Tensor:
    """Clover action density per plane, ``e_{mu nu}(x) = -Re Tr[F_{mu nu}(x)^2]`` (>= 0), shape
    ``[batch, n_planes, *lattice]`` (plane order of :func:`clover_planes`)."""
    f = clover_field_strength(u, traceless=traceless)
    return -_re_tr_prod(f, f)


def _check_definition(definition: str, allowed: tuple[str, ...]) -> str:
    if definition not in allowed:
        raise ValueError(f"definition: expected one of {allowed}, got {definition!r}")
    return definition


def energy_density(
    u: torch.Tensor, *, definition: str = "clover", traceless: bool = False
) -> torch.Tensor:
    """Volume-averaged energy density ``E`` per configuration, shape ``[batch]`` (real).

    ``definition="clover"``: ``E = -(1/V) sum_x sum_{mu<nu} Re Tr F_{mu nu}^2`` (with
    ``traceless=False`` exactly Chroma's ``wflow_gact4i + wflow_gactij``);
    ``definition="plaquette"``: ``E = (2/V) sum_x sum_{mu<nu} Re Tr[1 - P_{mu nu}]``
    (Luescher's plaquette form, arXiv:1006.4518).  Both are ``(1/4) G^a G^a + O(a^2)``.
    """
    _check_definition(definition, _DEFINITIONS_E)
    lat, b, nc = _gauge(u)
    if definition == "plaquette":
        tr = plaquette_traces(u)  # Re Tr P / N
        return (2.0 * nc) * (1.0 - tr).flatten(2).mean(2).sum(1)
    return energy_density_field(u, traceless=traceless).flatten(2).mean(2).sum(1)


def energy_density_split(
    u: torch.Tensor, *, t_dir: int | None = None, traceless: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chroma's ``(wflow_gact4i, wflow_gactij)``: the clover energy density split into the planes
    holding the time direction ``t_dir`` (default ``Nd - 1``) and the others, each
    ``-(1/V) sum_x sum_{planes} Re Tr F^2``, shape ``[batch]`` each.  Default ``traceless=False``
    as Chroma's ``mesField``.  (Chroma's ``measure_wilson_gauge`` tests only ``nu == t_dir``,
    which is the same as "the plane holds t_dir" for its default ``t_dir = Nd - 1``.)"""
    lat, b, nc = _gauge(u)
    t_dir = lat.nd - 1 if t_dir is None else t_dir
    lat._check_mu(t_dir)
    if not (traceless and nc > 1) and _native_gauge.usable(u):
        # native kernel (bridge/_native_gauge.py): the same leaves and products, one pass
        fwd, bwd, _ = _native_tables(lat)
        e2 = _native_gauge.clover_energy(u.contiguous().view(b, lat.nd, lat.volume, nc, nc),
                                         fwd, bwd, t_dir)
        e2 = e2.to(torch.float32 if u.dtype == torch.complex64 else torch.float64)
        return e2[:, 0], e2[:, 1]
    e = energy_density_field(u, traceless=traceless).flatten(2).mean(2)
    tmask = torch.tensor([t_dir in p for p in clover_planes(lat.nd)], device=e.device)
    return e[:, tmask].sum(1), e[:, ~tmask].sum(1)


_PAIRS_4D = (((0, 1), (2, 3)), ((0, 2), (3, 1)), ((0, 3), (1, 2)))


def topological_charge_density(u: torch.Tensor, *, traceless: bool = False) -> torch.Tensor:
    """Clover charge density ``q(x) = -1/(4 pi^2) Re Tr[F01 F23 + F02 F31 + F03 F12]`` (4D
    only), shape ``[batch, t, z, y, x]``.  With ``traceless=False`` it is Chroma's ``QACTDEN``
    ``lrqtop`` site by site."""
    lat, _, _ = _gauge(u)
    if lat.nd != 4:
        raise ValueError(
            f"U: the clover topological charge needs Nd = 4, got Nd = {lat.nd} "
            "(use geometric_charge_u1 for 2D U(1))"
        )
    f = clover_field_strength(u, traceless=traceless)
    index = {p: i for i, p in enumerate(clover_planes(4))}
    q = torch.zeros(f.shape[:1] + f.shape[2:-2], dtype=f.real.dtype, device=f.device)
    for (p1, p2) in _PAIRS_4D:
        sign = 1.0
        if p2[0] > p2[1]:  # F_{31} = -F_{13}
            p2, sign = (p2[1], p2[0]), -1.0
        q = q + sign * _re_tr_prod(f[:, index[p1]], f[:, index[p2]])
    return -q / (4.0 * math.pi**2)


def clover_charge(u: torch.Tensor, *, traceless: bool = False) -> torch.Tensor:
    """``Q = sum_x q(x)`` with the clover density, shape ``[batch]`` (4D)."""
    return topological_charge_density(u, traceless=traceless).flatten(1).sum(1)


def geometric_charge_u1(u: torch.Tensor) -> torch.Tensor:
    """2D U(1) geometric charge ``Q = (1/2pi) sum_x arg P_{01}(x)``, ``arg`` in ``(-pi, pi]``,
    shape ``[batch]`` (real; an integer up to rounding)."""
    lat, _, nc = _gauge(u)
    if lat.nd != 2 or nc != 1:
        raise ValueError(
            f"U: the geometric charge needs a 2D U(1) field, got Nd = {lat.nd}, "
            f"{nc}x{nc} links"
        )
    theta = torch.angle(plaquette_field(u, 0, 1)[..., 0, 0])
    return theta.flatten(1).sum(1) / (2.0 * math.pi)


def topological_charge(
    u: torch.Tensor, *, definition: str | None = None, traceless: bool = False
) -> torch.Tensor:
    """Topological charge per configuration, ``[batch]``.

    ``definition=None`` picks ``"clover"`` for Nd = 4 and ``"geometric"`` for 2D U(1); other
    combinations raise ``ValueError``.  See the module docstring for sign and normalisation.
    """
    lat, _, nc = _gauge(u)
    if definition is None:
        definition = "geometric" if (lat.nd == 2 and nc == 1) else "clover"
    _check_definition(definition, _DEFINITIONS_Q)
    if definition == "geometric":
        return geometric_charge_u1(u)
    return clover_charge(u, traceless=traceless)
