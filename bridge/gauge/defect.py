"""A defect in the time boundary: plaquette coefficients that switch the boundary of a small
region between open (``c = 0``) and periodic (``c = 1``), the device of parallel tempering on
boundary conditions (Hasenbusch, arXiv:1706.04443; Bonanno, Bonati & D'Elia, arXiv:2012.14000)
and of non-equilibrium Monte Carlo out of a defect for topological unfreezing (Bonanno et al.,
arXiv:2510.25704).

Defect.  With ``t = Nd - 1`` the time direction and ``extent = (d_0, ..., d_{Nd-2})`` the
defect's size in the other directions, the defect plaquettes are the ``P_{mu t}(x)`` with
``x_t = L_t - 1`` (the plaquettes crossing the time boundary) and ``0 <= x_i < d_i`` for every
``i != t``.  The action is

    S_c(U) = beta sum_p c_p (1 - Re Tr P / N),     c_p = c on the defect, 1 elsewhere,

so ``c = 1`` is the periodic Wilson action and ``c = 0`` leaves the boundary open on the defect
(a region through which topological charge moves freely).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..errors import ConfigError
from ..lattice import Lattice, as_device
from .loops import plaquette_traces

__all__ = ["check_defect", "defect_mask", "defect_weights", "plaquette_terms",
           "weighted_action", "weighted_wilson_action"]


def check_defect(lattice: Lattice, extent: Sequence[int]) -> tuple[int, ...]:
    """The defect's extents as a tuple; :class:`~bridge.errors.ConfigError` naming the value
    unless there are ``Nd - 1`` of them, each ``1 <= d_i <= L_i``."""
    ext = tuple(extent)
    if len(ext) != lattice.nd - 1 or any(isinstance(d, bool) or int(d) != d for d in ext):
        raise ConfigError(f"defect: expected {lattice.nd - 1} integer extents (the directions "
                          f"other than time of {lattice}), got {list(ext)}")
    for i, d in enumerate(ext):
        if not 1 <= int(d) <= lattice.nrow[i]:
            raise ConfigError(f"defect: extent {int(d)} in direction {i} is outside 1 .. "
                              f"L_{i} = {lattice.nrow[i]} of {lattice}")
    return tuple(int(d) for d in ext)


def defect_mask(lattice: Lattice, extent: Sequence[int], device=None) -> torch.Tensor:
    """Boolean ``[n_planes, *lattice.shape]`` (planes in :meth:`Lattice.planes` order): the
    defect plaquettes (module docstring)."""
    ext = check_defect(lattice, extent)
    dev = as_device(device)
    c = lattice.coordinates(dev)
    t = lattice.nd - 1
    on = c[t] == lattice.nrow[t] - 1
    for i, d in enumerate(ext):
        on = on & (c[i] < d)
    planes = lattice.planes()
    return torch.stack([on if nu == t else torch.zeros_like(on) for _, nu in planes])


def defect_weights(lattice: Lattice, extent: Sequence[int], c: float, *,
                   dtype: torch.dtype = torch.float64, device=None) -> torch.Tensor:
    """The plaquette coefficients ``c_p`` ``[n_planes, *lattice.shape]``: ``c`` on the defect,
    1 elsewhere (``c >= 0``, finite)."""
    c = float(c)
    if not (math.isfinite(c) and c >= 0):
        raise ConfigError(f"defect coefficient: expected a finite c >= 0, got {c}")
    mask = defect_mask(lattice, extent, device)
    w = torch.ones(mask.shape, dtype=dtype, device=mask.device)
    return w.masked_fill(mask, c)


def plaquette_terms(u: torch.Tensor) -> torch.Tensor:
    """``1 - Re Tr P / N`` per plaquette, ``[batch, n_planes, *shape]`` in float64."""
    return 1.0 - plaquette_traces(u).to(torch.float64)


def weighted_action(terms: torch.Tensor, beta: float, weights: torch.Tensor | None
                    ) -> torch.Tensor:
    """``beta sum_p c_p terms_p`` per configuration from :func:`plaquette_terms` (reusable
    for several couplings and coefficients); ``weights`` the ``c_p`` (None: all 1)."""
    if weights is not None:
        if tuple(weights.shape) != tuple(terms.shape[1:]):
            raise ConfigError(f"weights: expected the shape {list(terms.shape[1:])} of the "
                              f"plaquettes, got {list(weights.shape)}")
        terms = terms * weights.to(device=terms.device, dtype=torch.float64)
    return float(beta) * terms.flatten(1).sum(-1)


def weighted_wilson_action(u: torch.Tensor, beta: float, weights: torch.Tensor | None
                           ) -> torch.Tensor:
    """``beta sum_p c_p (1 - Re Tr P / N)`` per configuration in float64; ``weights`` the
    ``c_p`` of :func:`defect_weights` (None: all 1, the Wilson action)."""
    return weighted_action(plaquette_terms(u), beta, weights)
