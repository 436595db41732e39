"""Flow models: a Haar prior followed by gauge-equivariant coupling layers
(arXiv:2003.06413, eq. 5; arXiv:2101.08176, sec. 3).

With ``U = f(U_0)``, ``U_0 ~ r`` (Haar), the model density with respect to Haar measure is

    log q(U) = log r(U_0) - sum_l log J_l   (sampling, forward logdets),
             = log r(f^{-1}(U)) + sum_l log J_l^{-1}   (:meth:`GaugeFlow.log_prob`, reverse),

and ``log r = 0`` for the normalised Haar measure, so ``log q`` is the (negated) sum of the
layers' log-Jacobians.  Every layer is translation equivariant, so a model built (or trained) on
one lattice applies to every lattice the masks tile.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..gauge import random_gauge
from ..groups import Group, get_group
from ..lattice import Lattice
from .layers import GaugeCouplingLayer
from .masks import mask_cycle
from .plaquette import PlaquetteFlow
from .residual import ResidualStapleLayer, staple_mask_cycle

__all__ = ["GaugeFlow", "make_flow", "haar_log_prob", "ARCHITECTURES"]


def haar_log_prob(u: torch.Tensor) -> torch.Tensor:
    """Log density of the Haar prior with respect to (normalised) Haar measure: 0 for every
    configuration, shape ``[batch]``."""
    Lattice.of(u).check_gauge(u)
    return torch.zeros(u.shape[0], dtype=u.real.dtype, device=u.device)


class GaugeFlow(nn.Module):
    """Haar prior + layers (spectral coupling or residual staple layers).  ``config`` records the
    architecture (checkpoints compare it before loading weights)."""

    def __init__(self, group: Group | str | int, nd: int,
                 layers: Sequence[GaugeCouplingLayer | ResidualStapleLayer],
                 config: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.group = get_group(group)
        self.nd = int(nd)
        self.layers = nn.ModuleList(layers)
        self.config = dict(config or {})

    @property
    def differentiable_log_prob(self) -> bool:
        """Whether :meth:`log_prob` is differentiable with respect to the parameters (False
        when a layer inverts by fixed-point iteration, e.g. :class:`ResidualStapleLayer`; the
        score-function estimator needs it)."""
        return not any(isinstance(layer, ResidualStapleLayer) for layer in self.layers)

    def forward(self, u0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Push ``U_0`` through all layers: ``(U, sum_l log J_l)``."""
        logdet = torch.zeros(u0.shape[0], dtype=u0.real.dtype, device=u0.device)
        u = u0
        for layer in self.layers:
            u, ld = layer.forward(u)
            logdet = logdet + ld
        return u, logdet

    def reverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse: ``(U_0, sum_l log J_l^{-1})``."""
        logdet = torch.zeros(u.shape[0], dtype=u.real.dtype, device=u.device)
        for layer in reversed(self.layers):
            u, ld = layer.reverse(u)
            logdet = logdet + ld
        return u, logdet

    def sample(
        self,
        n: int,
        lattice: Lattice | Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` configurations ``U ~ q`` on ``lattice`` and their ``log q(U)`` (differentiable
        with respect to the parameters: reparameterisation)."""
        lat = lattice if isinstance(lattice, Lattice) else Lattice(lattice)
        if lat.nd != self.nd:
            raise ValueError(f"lattice: the model is {self.nd}-dimensional, got {lat}")
        u0 = random_gauge(lat, self.group, n, generator=generator, dtype=dtype, device=device)
        u, logdet = self.forward(u0)
        return u, haar_log_prob(u0) - logdet

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log q(U)`` through the exact inverse, shape ``[batch]``."""
        u0, logdet = self.reverse(u)
        return haar_log_prob(u0) + logdet


ARCHITECTURES = ("coupling", "residual", "plaquette")


def make_flow(
    group: Group | str | int,
    nd: int = 2,
    *,
    arch: str = "coupling",
    n_layers: int | None = None,
    k: int | None = None,
    hidden: Sequence[int] | None = None,
    kernel_size: int = 3,
    period: int | None = None,
    separable: bool | None = None,
    init_gain: float = 0.01,
    kappa: float | None = None,
    degree: int | None = None,
    harmonics: int | None = None,
    symmetric: bool | None = None,
    eps: float | None = None,
    grid: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> GaugeFlow | PlaquetteFlow:
    """A flow of one of the :data:`ARCHITECTURES`.

    ``coupling``: spectral coupling layers (:class:`~.layers.GaugeCouplingLayer`) cycling
    through :func:`~.masks.mask_cycle` (``Nd * period`` layers update every link once);
    ``n_layers`` defaults to two cycles (16 for 2D, as in arXiv:2101.08176).  Uses ``k``
    (default 8), ``hidden`` (default ``(8, 8)``), ``kernel_size``, ``period`` (default 4),
    ``separable``, ``init_gain``.

    ``residual``: residual staple layers (:class:`~.residual.ResidualStapleLayer`) cycling
    through :func:`~.residual.staple_mask_cycle` (``2 Nd`` layers update every link once);
    ``n_layers`` defaults to one cycle.  Uses ``kappa`` (default 0.9) and, for site-dependent
    coefficients from a context net, ``hidden`` (default ``None``: constant coefficients),
    ``kernel_size``, ``separable``, ``init_gain``; starts as the identity.

    ``plaquette`` (2D U(1) only): :class:`~.plaquette.PlaquetteFlow`, a learned plaquette
    density with the torus constraint built in; no layers.  Uses ``degree`` (default 24),
    ``harmonics`` (default 4), ``symmetric`` (default True), ``eps`` (default 1e-12), ``grid``
    (default 32, the bracketing points of the CDF inversion).

    An option that the chosen architecture does not use (``k`` or ``period`` for ``residual``,
    ``kappa`` for ``coupling``; ``degree``, ``harmonics``, ``symmetric``, ``eps``, ``grid`` for
    both; anything but these five for ``plaquette``) is an error, not silently ignored.
    """
    g = get_group(group)
    if arch not in ARCHITECTURES:
        raise ValueError(f"arch: expected one of {ARCHITECTURES}, got {arch!r}")
    if arch == "plaquette":
        unused = {"n_layers": n_layers, "k": k, "hidden": hidden, "period": period,
                  "separable": separable, "kappa": kappa,
                  "kernel_size": None if kernel_size == 3 else kernel_size,
                  "init_gain": None if init_gain == 0.01 else init_gain}
    elif arch == "residual":
        unused = {"k": k, "period": period, "degree": degree, "harmonics": harmonics,
                  "symmetric": symmetric, "eps": eps, "grid": grid}
    else:
        unused = {"kappa": kappa, "degree": degree, "harmonics": harmonics,
                  "symmetric": symmetric, "eps": eps, "grid": grid}
    given = sorted(name for name, v in unused.items() if v is not None)
    if given:
        raise ValueError(f"{', '.join(given)}: not an option of the {arch!r} architecture "
                         f"(got {', '.join(f'{n} = {unused[n]!r}' for n in given)})")
    if arch == "plaquette":
        if g.name != "U(1)" or int(nd) != 2:
            raise ValueError(f"arch: the 'plaquette' flow exists for 2D U(1) only (the plaquettes "
                             f"and holonomies are the only gauge invariants there), got "
                             f"{g.name} in {nd}D")
        return PlaquetteFlow(24 if degree is None else degree,
                             4 if harmonics is None else harmonics,
                             symmetric=True if symmetric is None else symmetric,
                             eps=1e-12 if eps is None else eps,
                             grid=32 if grid is None else grid, dtype=dtype)
    if arch == "residual":
        kappa = 0.9 if kappa is None else kappa
        rcycle = staple_mask_cycle(nd)
        n = len(rcycle) if n_layers is None else int(n_layers)
        if n < 1:
            raise ValueError(f"n_layers: expected a positive number of layers, got {n_layers!r}")
        rhidden = None if hidden is None else [int(h) for h in hidden]
        rlayers = [ResidualStapleLayer(g, nd, rcycle[i % len(rcycle)], kappa=kappa,
                                       hidden=rhidden, kernel_size=kernel_size,
                                       separable=separable, init_gain=init_gain, dtype=dtype)
                   for i in range(n)]
        rconfig = {"arch": arch, "group": g.name, "nd": int(nd), "n_layers": n,
                   "kappa": float(kappa), "hidden": rhidden, "kernel_size": int(kernel_size),
                   "separable": separable, "init_gain": float(init_gain), "dtype": str(dtype)}
        return GaugeFlow(g, nd, rlayers, rconfig)
    k = 8 if k is None else k
    period = 4 if period is None else period
    cycle = mask_cycle(nd, period)
    n = 2 * len(cycle) if n_layers is None else int(n_layers)
    if n < 1:
        raise ValueError(f"n_layers: expected a positive number of layers, got {n_layers!r}")
    hidden = (8, 8) if hidden is None else hidden
    layers = [GaugeCouplingLayer(g, nd, cycle[i % len(cycle)], k=k, hidden=hidden,
                                 kernel_size=kernel_size, separable=separable,
                                 init_gain=init_gain, dtype=dtype) for i in range(n)]
    config = {"arch": arch, "group": g.name, "nd": int(nd), "n_layers": n, "k": int(k),
              "hidden": [int(h) for h in hidden], "kernel_size": int(kernel_size),
              "period": int(period), "separable": separable, "init_gain": float(init_gain),
              "dtype": str(dtype)}
    return GaugeFlow(g, nd, layers, config)
