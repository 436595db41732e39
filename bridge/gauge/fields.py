"""Gauge fields: cold and hot starts, gauge transformations and field checks.

Fields follow the layout of :mod:`bridge.lattice`: ``U[batch, mu, t, ..., x, a, b]``, with
``U_mu(x)`` the parallel transporter from ``x + mu`` to ``x``.  Under a gauge transformation
``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dagger``.
"""

from __future__ import annotations

import torch

from ..groups import Group, complex_dtype, dagger, get_group, haar, mm
from ..lattice import Lattice, as_device

__all__ = ["unit_gauge", "random_gauge", "random_gauge_transformation", "gauge_transform"]


def _group_of(u: torch.Tensor, group: Group | str | None) -> Group:
    nc = int(u.shape[-1])
    if group is None:
        return get_group("U1") if nc == 1 else get_group(nc)
    g = get_group(group)
    if g.nc != nc:
        raise ValueError(
            f"group: {g} needs {g.nc}x{g.nc} links, but U has {nc}x{nc} matrices "
            f"(shape {tuple(u.shape)})"
        )
    return g


def _check_batch(batch: int) -> int:
    if int(batch) != batch or batch < 1:
        raise ValueError(f"batch: expected a positive integer, got {batch!r}")
    return int(batch)


# -- starts ---------------------------------------------------------------------------------------
def unit_gauge(
    lattice: Lattice,
    group: Group | str,
    batch: int = 1,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Cold start: every link the identity (Chroma's ``UNIT``)."""
    g = get_group(group)
    ct = complex_dtype(dtype)
    eye = torch.eye(g.nc, dtype=ct, device=as_device(device))
    return eye.expand(*lattice.gauge_shape(_check_batch(batch), g.nc)).clone()


def random_gauge(
    lattice: Lattice,
    group: Group | str,
    batch: int = 1,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Hot start: independent Haar-random links (the Haar prior of the flows)."""
    g = get_group(group)
    shape = lattice.gauge_shape(_check_batch(batch), g.nc)[:-2]
    return haar(g, shape, generator=generator, dtype=dtype, device=device)


def random_gauge_transformation(
    lattice: Lattice,
    group: Group | str,
    batch: int = 1,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Haar-random gauge transformation ``Omega[batch, t, ..., x, a, b]``."""
    return haar(group, (_check_batch(batch), *lattice.shape), generator=generator, dtype=dtype,
                device=device)


def gauge_transform(u: torch.Tensor, omega: torch.Tensor) -> torch.Tensor:
    """``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dagger``."""
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    expected = (b, *lat.shape, nc, nc)
    if tuple(omega.shape) != expected:
        raise ValueError(f"omega: expected shape {expected} to match U, got {tuple(omega.shape)}")
    return torch.stack(
        [mm(mm(omega, u[:, mu]), dagger(lat.shift(omega, mu))) for mu in range(lat.nd)], dim=1
    )
