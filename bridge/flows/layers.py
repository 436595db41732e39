"""Gauge-equivariant coupling layers and their context networks (arXiv:2003.06413, sec. III;
arXiv:2008.05456, sec. IV; arXiv:2101.08176, sec. 4).

A :class:`GaugeCouplingLayer` with mask ``(mu, nu, ...)`` (:mod:`.masks`):

1. builds the gauge-invariant features ``Re Tr P / N``, ``Im Tr P / N`` of every *frozen*
   plaquette (all planes; zero elsewhere), ``[batch, 2 n_planes, *lattice]``;
2. a translation-equivariant convolutional network with periodic padding maps them to the
   spline parameters of every site;
3. at every active site the loop ``P = P_{mu nu}(x)`` (which starts with the active link
   ``U_mu(x)``) goes through the spectral map ``P -> P'`` (:mod:`.spectral`), and the link
   becomes ``U_mu(x)' = P' P^dag U_mu(x)`` (arXiv:2008.05456, eq. 9).

Under ``U_mu(x) -> Omega(x) U_mu(x) Omega(x+mu)^dag`` the loop is conjugated, ``P -> Omega(x) P
Omega(x)^dag``, the features are invariant and the spectral map is conjugation equivariant, so
the layer is gauge equivariant.  The frozen loops contain no active link, so the features (hence
the parameters) are the same before and after the layer: the inverse applies the inverse
spectral map to the new loop.  The Jacobian is block triangular; its log-determinant (with
respect to Haar measure) is the sum over active loops of the spectral map's ``log J``.

Context networks (:class:`ContextNet`): for Nd = 2 ordinary 2D convolutions with circular
padding (arXiv:2101.08176); for any Nd (default for Nd != 2) each convolution is the product of
1D circular convolutions along every lattice axis (separable, as in arXiv:2208.03832, sec. III),
so the cost grows with ``Nd k`` instead of ``k^Nd``.  Hidden layers have Xavier-normal weights
(gain 1), the last layer Xavier-normal with gain ``init_gain`` (small: a fresh layer is close to
the identity, the spline parameters are close to 0), all biases 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..gauge import plaquette_field
from ..groups import Group, get_group, mm, trace
from ..lattice import Lattice
from .masks import LinkMask
from .spectral import n_params, spectral_map

__all__ = ["PeriodicConv", "ContextNet", "GaugeCouplingLayer", "check_layer_input"]


def check_layer_input(u: torch.Tensor, group: Group, nd: int) -> Lattice:
    """The lattice of ``u``; ``ValueError`` unless ``u`` is a field of ``group`` in ``nd``
    dimensions (the input check of every flow layer)."""
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    if nc != group.nc or lat.nd != nd:
        raise ValueError(f"U: the layer acts on {group} fields in Nd = {nd}, got {nc}x{nc} "
                         f"links in Nd = {lat.nd}")
    return lat


class PeriodicConv(nn.Module):
    """Translation-equivariant convolution with periodic boundaries on ``x[B, C, *lattice]``.

    ``separable=False`` (Nd = 2 only): one ``Conv2d`` with circular padding.  ``separable=True``:
    a 1D circular convolution along each lattice axis in turn (first ``cin -> cout``, then
    ``cout -> cout``).
    """

    def __init__(self, nd: int, cin: int, cout: int, kernel_size: int = 3,
                 separable: bool = False, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if kernel_size % 2 != 1 or kernel_size < 1:
            raise ValueError(f"kernel_size: expected an odd positive integer, got {kernel_size}")
        if not separable and nd != 2:
            raise ValueError(f"separable: full convolutions exist only for Nd = 2, got Nd = {nd}")
        self.nd, self.k, self.separable = nd, kernel_size, separable
        if separable:
            self.convs = nn.ModuleList(
                nn.Conv1d(cin if i == 0 else cout, cout, kernel_size, bias=(i == nd - 1),
                          dtype=dtype) for i in range(nd))
        else:
            self.conv = nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2,
                                  padding_mode="circular", dtype=dtype)

    def weights(self) -> list[torch.Tensor]:
        return [c.weight for c in self.convs] if self.separable else [self.conv.weight]

    def biases(self) -> list[torch.Tensor]:
        mods = self.convs if self.separable else [self.conv]
        return [m.bias for m in mods if m.bias is not None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.separable:
            return self.conv(x)
        r = self.k // 2
        for i, conv in enumerate(self.convs):
            ax = 2 + i
            y = x.movedim(ax, -1).movedim(1, -2)  # [B, ..., C, L]
            shp = y.shape
            y = y.reshape(-1, shp[-2], shp[-1])
            if r:
                y = F.pad(y, (r, r), mode="circular")
            y = conv(y)
            y = y.reshape(*shp[:-2], y.shape[-2], shp[-1]).movedim(-2, 1).movedim(-1, ax)
            x = y
        return x


class ContextNet(nn.Module):
    """Stack of :class:`PeriodicConv` with LeakyReLU between them (none after the last)."""

    def __init__(self, nd: int, cin: int, cout: int, hidden: Sequence[int] = (8, 8),
                 kernel_size: int = 3, *, separable: bool | None = None,
                 init_gain: float = 0.01, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        sep = (nd != 2) if separable is None else bool(separable)
        chans = [cin, *[int(h) for h in hidden], cout]
        self.layers = nn.ModuleList(
            PeriodicConv(nd, a, b, kernel_size, sep, dtype) for a, b in zip(chans[:-1], chans[1:],
                                                                           strict=True))
        for i, layer in enumerate(self.layers):
            last = i == len(self.layers) - 1
            for w in layer.weights():
                nn.init.xavier_normal_(w, gain=init_gain if last else 1.0)
            for b in layer.biases():
                nn.init.zeros_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.leaky_relu(x)
        return x


class GaugeCouplingLayer(nn.Module):
    """One gauge-equivariant coupling layer (module docstring).

    ``forward(U) -> (U', logdet)`` and ``reverse(U') -> (U, logdet_reverse)``, ``logdet[batch]``
    the log-Jacobian with respect to Haar measure of the map applied.  Works on every lattice the
    mask tiles (the network is translation equivariant).
    """

    def __init__(self, group: Group | str | int, nd: int, mask: LinkMask, *, k: int = 8,
                 hidden: Sequence[int] = (8, 8), kernel_size: int = 3,
                 separable: bool | None = None, init_gain: float = 0.01,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.group = get_group(group)
        if max(mask.mu, mask.nu) >= nd:
            raise ValueError(f"mask: directions ({mask.mu}, {mask.nu}) exceed Nd = {nd}")
        self.nd, self.mask, self.k = int(nd), mask, int(k)
        n_planes = nd * (nd - 1) // 2
        self.net = ContextNet(nd, 2 * n_planes, n_params(self.group, k), hidden, kernel_size,
                              separable=separable, init_gain=init_gain, dtype=dtype)

    def _check(self, u: torch.Tensor) -> Lattice:
        return check_layer_input(u, self.group, self.nd)

    def _params(self, u: torch.Tensor, lat: Lattice) -> torch.Tensor:
        frozen = self.mask.frozen_loops(lat, u.device)
        nc = self.group.nc
        feats = []
        for p, (m, n) in enumerate(lat.planes()):
            tr = trace(plaquette_field(u, m, n)) / nc
            fz = frozen[p].to(tr.real.dtype)
            feats += [tr.real * fz, tr.imag * fz]
        wdt = self.net.layers[0].weights()[0].dtype
        x = torch.stack(feats, dim=1).to(wdt)
        return self.net(x).movedim(1, -1).to(u.real.dtype)  # [B, *lattice, n_params]

    def _couple(self, u: torch.Tensor, inverse: bool) -> tuple[torch.Tensor, torch.Tensor]:
        lat = self._check(u)
        mu, nu = self.mask.mu, self.mask.nu
        idx = self.mask.active_sites(lat, u.device).flatten().nonzero().squeeze(1)
        params = self._params(u, lat).flatten(1, lat.nd)[:, idx]
        loop = plaquette_field(u, mu, nu).flatten(1, lat.nd)[:, idx]
        w, logj = spectral_map(loop, params, self.group, inverse=inverse)
        umu = u[:, mu].flatten(1, lat.nd)
        new = umu.index_copy(1, idx, mm(w, umu[:, idx])).reshape(u[:, mu].shape)
        out = torch.stack([new if d == mu else u[:, d] for d in range(lat.nd)], dim=1)
        return out, logj.sum(-1)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(u, inverse=False)

    def reverse(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._couple(u, inverse=True)
