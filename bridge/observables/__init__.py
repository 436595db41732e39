"""Observables: plaquette, Polyakov loop, clover field strength, energy density, topological
charge, Wilson (gradient) flow, the pion correlator and Chroma's meson and baryon
contractions, batched over configurations.

Every observable is a pure function of a gauge field ``U[batch, mu, t, ..., x, a, b]`` (device and
dtype taken from ``U``) returning a tensor with the batch axis first.  The registry
:data:`OBSERVABLES` maps a name to ``fn(U, **params) -> tensor[batch, ...]``; use
:func:`get_observable` to look one up by name.  Definitions, normalisations (Chroma's and
arXiv:2208.03832's) and the flow integrator: docs/observables.md.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..gauge import mesplq, polyakov_loop, seed_plaquette
from ..solvers import Solver
from .field_strength import (
    clover_charge,
    clover_field_strength,
    clover_planes,
    energy_density,
    energy_density_field,
    energy_density_split,
    geometric_charge_u1,
    topological_charge,
    topological_charge_density,
)
from .hadrons import baryon_correlators, meson_correlators
from .pion import (
    pion_correlator,
    point_propagator,
    point_source,
    point_source_propagator,
    slice_sum,
    timeslice_norm2,
)
from .qtop_naive import qtop_naive
from .wilson_flow import (
    ChromaWilsonFlow,
    FlowResult,
    chroma_wilson_flow,
    flow_generator,
    rk3_step,
    rk3_step_embedded,
    wilson_flow,
)

__all__ = [
    "OBSERVABLES",
    "get_observable",
    "plaquette",
    "polyakov",
    "flowed_topological_charge",
    "flowed_energy_density",
    "pion",
    "clover_planes",
    "clover_field_strength",
    "energy_density_field",
    "energy_density",
    "energy_density_split",
    "topological_charge_density",
    "clover_charge",
    "geometric_charge_u1",
    "topological_charge",
    "flow_generator",
    "rk3_step",
    "rk3_step_embedded",
    "FlowResult",
    "wilson_flow",
    "ChromaWilsonFlow",
    "chroma_wilson_flow",
    "point_source",
    "point_propagator",
    "pion_correlator",
    "point_source_propagator",
    "slice_sum",
    "timeslice_norm2",
    "meson_correlators",
    "baryon_correlators",
    "qtop_naive",
]


def plaquette(U: torch.Tensor, *, normalisation: str = "chroma") -> torch.Tensor:
    """Plaquette per configuration, ``[batch]``: ``"chroma"``: ``MesPlq``'s ``w_plaq`` (average
    of ``Re Tr P / Nc`` over sites and planes); ``"seed"``: arXiv:2208.03832's
    ``(1/(Nc V)) sum_x sum_{mu<nu} Re Tr P``, i.e. ``Nd (Nd-1)/2 * w_plaq``."""
    if normalisation == "chroma":
        return mesplq(U).w_plaq
    if normalisation == "seed":
        return seed_plaquette(U)
    raise ValueError(f"normalisation: expected 'chroma' or 'seed', got {normalisation!r}")


def polyakov(
    U: torch.Tensor, *, mu: int | None = None, normalisation: str = "chroma"
) -> torch.Tensor:
    """Polyakov loop (complex) per configuration, ``[batch]``; direction ``mu`` (default time);
    ``"chroma"``: ``sum_x Tr(line) / (Nc V)``, ``"seed"``: no ``1/Nc``
    (:func:`bridge.gauge.polyakov_loop`)."""
    return polyakov_loop(U, mu, normalisation)


def _flowed(U: torch.Tensor, flow_time: float, eps: float) -> torch.Tensor:
    if flow_time == 0:
        return U
    return wilson_flow(U, flow_time, eps=eps, charge=False).U


def flowed_topological_charge(
    U: torch.Tensor,
    *,
    flow_time: float = 0.0,
    eps: float = 0.01,
    definition: str | None = None,
    traceless: bool = False,
) -> torch.Tensor:
    """Topological charge ``[batch]`` after Wilson flow to ``flow_time`` (fixed-step RK3 with
    ``eps``; ``0``: no flow).  The seed paper (arXiv:2208.03832, sec. 3.2) measures at
    ``flow_time = 4``.  Clover charge in 4D, geometric charge for 2D U(1)
    (:func:`~bridge.observables.field_strength.topological_charge`)."""
    return topological_charge(_flowed(U, flow_time, eps), definition=definition,
                              traceless=traceless)


def flowed_energy_density(
    U: torch.Tensor,
    *,
    flow_time: float = 0.0,
    eps: float = 0.01,
    definition: str = "clover",
    traceless: bool = False,
) -> torch.Tensor:
    """Energy density ``E`` ``[batch]`` after Wilson flow to ``flow_time`` (``t^2 E`` is
    ``flow_time**2`` times it)."""
    return energy_density(_flowed(U, flow_time, eps), definition=definition, traceless=traceless)


def pion(
    U: torch.Tensor,
    *,
    kappa: float,
    source: Sequence[int] = (0, 0, 0, 0),
    c_sw: float = 0.0,
    boundary: Sequence[complex] = (1, 1, 1, -1),
    normalisation: str = "kappa",
    solver: Solver | None = None,
) -> torch.Tensor:
    """Pion correlator ``[batch, Lt]`` (:func:`~bridge.observables.pion.pion_correlator`)."""
    return pion_correlator(U, kappa, source=source, c_sw=c_sw, boundary=boundary,
                           normalisation=normalisation, solver=solver)


OBSERVABLES: dict[str, Callable[..., torch.Tensor]] = {
    "plaquette": plaquette,
    "polyakov": polyakov,
    "topological_charge": flowed_topological_charge,
    "energy_density": flowed_energy_density,
    "pion": pion,
}
"""Name -> ``fn(U, **params) -> tensor[batch, ...]``."""


def get_observable(name: str) -> Callable[..., torch.Tensor]:
    """The observable registered under ``name`` in :data:`OBSERVABLES`; an unknown name raises
    ``ValueError`` naming it and the known names."""
    try:
        return OBSERVABLES[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"observable: unknown name {name!r}; known observables: {sorted(OBSERVABLES)}"
        ) from None
