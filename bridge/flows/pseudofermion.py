"""Conditional pseudofermion flows ``q(phi | U)`` for Nf = 2 Wilson(-clover) fermions: linear,
gauge-covariant coupling layers built from parallel transports (PTCN, arXiv:2207.08945, sec. III;
used for QCD in arXiv:2208.03832, sec. 3.1).

Field.  ``phi`` lives where the even-odd HMC puts it (Chroma's
``TWO_FLAVOR_EOPREC_*_FERM_MONOMIAL``): on the odd sites, compact layout
``phi[B, N, t, z, y, x/2, 4, Nc]`` (:mod:`bridge.fermions.evenodd`), ``N`` draws per gauge field
in the right-hand-side axis.  The target is ``p(phi | U) ~ exp(-phi^dag (K^dag K)^{-1} phi)``
with ``K`` the Schur operator in Chroma's normalisation (DeGrand-Rossi gammas, the boundary phases
of the fermion action), the density the HMC's heat bath ``phi = K^dag eta`` samples.

Prior and map.  ``chi ~ exp(-chi^dag chi)``; ``phi = f(chi | U)`` is a global scale ``sigma``
(initialised to Chroma's ``1/(2 kappa)``) followed by coupling layers.  A layer splits the field
with a mask into active and frozen parts, ``x = P_a x + P_f x``, and maps

    P_f y = P_f x,      P_a y = e^{s(x)} P_a x + P_a T(P_f x),

``s`` a real, gauge-invariant site field and ``T`` a gauge-covariant linear map: on-site spin
matrices ``sum_g a_g(x) P_a Gamma_g P_f`` (``Gamma_g`` in ``gamma_0..3, gamma_5``) and the two-hop
parallel transports ``H_oe b(e) H_eo`` and ``gamma_5 H_oe gamma_5 b(e) gamma_5 H_eo gamma_5``
through the even sites (``b`` complex, per even site).  Masks: the spin projectors
``(1 +- gamma_mu)/2``, ``mu`` in ``0..3, 5``, and sublattices of the odd sites (coordinate parity
along ``t``, ``z`` or ``y``).  The Jacobian is triangular, so
``log |det| = 2 n_a sum_x s(x)`` (real coordinates; ``n_a`` complex components per active site).
The coefficients ``s, a, b`` come from a context network on the plaquette traces (Re and Im of
``Tr P_{mu nu}``, all planes; shared trunk, one linear head per layer): gauge invariant, so each
layer is covariant, ``f(Omega chi | U^Omega) = Omega f(chi | U)``; translation equivariant, so a
model applies to every lattice with even extents.  The map is linear in ``chi`` at fixed ``U``
(the exact conditional is Gaussian: ``phi = K^dag eta``), so ``log |det|`` depends on ``U`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..fermions import _native
from ..fermions.evenodd import EvenOdd
from ..fermions.gamma import gamma5, gamma_matrices
from ..fermions.hopping import hop_gather, hop_native
from ..fermions.wilson import WilsonDirac, _check_boundary, _check_c_sw, _check_kappa
from ..gauge import plaquette_field
from ..groups import trace
from ..lattice import Lattice
from .layers import ContextNet

__all__ = ["PFMask", "pf_mask_cycle", "PseudofermionCoupling", "PseudofermionFlow",
           "SPIN_DIRECTIONS"]

SPIN_DIRECTIONS = (0, 1, 2, 3, 5)
_N_COEFF = 1 + 2 * len(SPIN_DIRECTIONS) + 4  # s, complex a_g, complex b_0 and b_1
_AXES = ("t", "z", "y")


@dataclass(frozen=True)
class PFMask:
    """``kind = "spin"``: the active part is ``(1 + (-1)^parity gamma_index) / 2`` of every odd
    site; ``kind = "site"``: the odd sites whose coordinate along compact axis ``index``
    (0 = t, 1 = z, 2 = y) has the given ``parity`` are active, all their spin components."""

    kind: str
    index: int
    parity: int

    def __post_init__(self) -> None:
        if self.kind not in ("spin", "site"):
            raise ConfigError(f"mask kind: expected 'spin' or 'site', got {self.kind!r}")
        ok = SPIN_DIRECTIONS if self.kind == "spin" else (0, 1, 2)
        if self.index not in ok:
            raise ConfigError(f"{self.kind} mask index: expected one of {ok}, got {self.index}")
        if self.parity not in (0, 1):
            raise ConfigError(f"mask parity: expected 0 or 1, got {self.parity}")

    def __str__(self) -> str:
        if self.kind == "spin":
            return f"(1 {'+-'[self.parity]} gamma_{self.index})/2"
        return f"odd sites with {_AXES[self.index]} % 2 == {self.parity}"


def pf_mask_cycle() -> list[PFMask]:
    """The mask rotation: for each ``mu`` in ``0..3, 5`` both spin projectors, then both
    sublattices of one axis (20 layers; every component is active several times)."""
    out = []
    for i, mu in enumerate(SPIN_DIRECTIONS):
        out += [PFMask("spin", mu, 0), PFMask("spin", mu, 1),
                PFMask("site", i % 3, 0), PFMask("site", i % 3, 1)]
    return out


def _hop(eo: EvenOdd, f: torch.Tensor, target: int, dagger: bool) -> torch.Tensor:
    """``H_{target, 1-target} f``: the native kernel when no gradient is needed, else the
    differentiable torch path (same numbers)."""
    links = eo.links[target]
    grad = torch.is_grad_enabled() and (f.requires_grad or links.stacked().requires_grad)
    if not grad and _native.usable(f):
        return hop_native(f, links, eo.geo[target], dagger)
    return hop_gather(f, links, eo.geo[target], dagger)


def _site(c: torch.Tensor) -> torch.Tensor:
    """``[B, t, z, y, x/2]`` -> broadcastable over draws, spin and colour."""
    return c[:, None, ..., None, None]


class PseudofermionCoupling(nn.Module):
    """One linear coupling layer (module docstring): ``forward(x, coeff, eo)`` and ``reverse``
    return the field and ``log |det|`` per configuration (real coordinates)."""

    def __init__(self, mask: PFMask, channels: int, *, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.mask = mask
        self.head = nn.Linear(channels, _N_COEFF, dtype=dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        if mask.kind == "spin":
            g = gamma_matrices(dtype=torch.complex128)
            gs = [g[mu] if mu < 4 else gamma5(dtype=torch.complex128) for mu in SPIN_DIRECTIONS]
            sign = 1.0 if mask.parity == 0 else -1.0
            p = 0.5 * (torch.eye(4, dtype=torch.complex128) + sign * gs[SPIN_DIRECTIONS.index(
                mask.index)])
            self.register_buffer("proj", p, persistent=False)
            q = torch.eye(4, dtype=torch.complex128) - p
            self.register_buffer("onsite", torch.stack([p @ gm @ q for gm in gs]),
                                 persistent=False)

    def coefficients(self, ctx: torch.Tensor | None, eo: EvenOdd, like: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """``s`` (odd sites), ``a`` (``[B, 5, ...]`` complex, odd) and ``b0, b1`` (even sites)
        from the context ``[B, C, t, z, y, x]`` (or constants when ``ctx`` is None)."""
        if ctx is None:
            full = self.head.bias.view(1, -1, 1, 1, 1, 1).expand(like.shape[0], -1,
                                                                 *like.shape[2:5],
                                                                 2 * like.shape[5])
        else:
            full = torch.einsum("bc...,kc->bk...", ctx, self.head.weight) + self.head.bias.view(
                1, -1, 1, 1, 1, 1)
        ce, co = eo.split(full)
        n = len(SPIN_DIRECTIONS)
        a = torch.complex(co[:, 1:1 + n], co[:, 1 + n:1 + 2 * n])
        return {"s": co[:, 0], "a": a,
                "b0": torch.complex(ce[:, 1 + 2 * n], ce[:, 2 + 2 * n]),
                "b1": torch.complex(ce[:, 3 + 2 * n], ce[:, 4 + 2 * n])}

    def _active(self, v: torch.Tensor, active: bool, eo: EvenOdd) -> torch.Tensor:
        if self.mask.kind == "spin":
            p = self.proj.to(v.dtype) if active else (torch.eye(4, dtype=v.dtype) -
                                                      self.proj.to(v.dtype))
            return torch.einsum("st,...tc->...sc", p, v)
        m = self._site_mask(v, eo)
        return v * (m if active else ~m)

    def _site_mask(self, v: torch.Tensor, eo: EvenOdd) -> torch.Tensor:
        shape = v.shape[2:6]
        c = torch.arange(shape[self.mask.index], device=v.device) % 2 == self.mask.parity
        view = [1] * 4
        view[self.mask.index] = -1
        return c.view(1, 1, *view, 1, 1)

    def _transport(self, f: torch.Tensor, c: dict[str, torch.Tensor], eo: EvenOdd
                   ) -> torch.Tensor:
        """``P_a T(f)`` for the frozen part ``f``."""
        out = _site(c["b0"]).to(f.dtype) * _hop(eo, f, 0, False)
        out = _hop(eo, out, 1, False)
        tmp = _site(c["b1"]).to(f.dtype) * _hop(eo, f, 0, True)
        out = self._active(out + _hop(eo, tmp, 1, True), True, eo)
        if self.mask.kind == "spin":
            onsite = torch.einsum("bg...,gst->b...st", c["a"].to(f.dtype), self.onsite.to(f.dtype))
            out = out + torch.einsum("b...st,bn...tc->bn...sc", onsite, f)
        return out

    def _logdet(self, s: torch.Tensor, eo: EvenOdd, nc: int, like: torch.Tensor) -> torch.Tensor:
        if self.mask.kind == "spin":
            return (2 * 2 * nc) * s.flatten(1).sum(1)
        m = self._site_mask(like, eo)[:, 0, ..., 0, 0]
        return (2 * 4 * nc) * (s * m).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, c: dict[str, torch.Tensor], eo: EvenOdd
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._active(x, False, eo)
        es = _site(c["s"].exp()).to(x.dtype)
        y = f + es * self._active(x, True, eo) + self._transport(f, c, eo)
        return y, self._logdet(c["s"], eo, x.shape[-1], x)

    def reverse(self, y: torch.Tensor, c: dict[str, torch.Tensor], eo: EvenOdd
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._active(y, False, eo)
        ems = _site((-c["s"]).exp()).to(y.dtype)
        x = f + ems * (self._active(y, True, eo) - self._transport(f, c, eo))
        return x, -self._logdet(c["s"], eo, y.shape[-1], y)


class PseudofermionFlow(nn.Module):
    """``q(phi | U)``: Gaussian prior, global scale, :class:`PseudofermionCoupling` layers cycling
    through :func:`pf_mask_cycle`; the fermion action's ``kappa``, ``c_sw`` and ``boundary``
    define the operator whose heat bath it models (module docstring).

    ``context_hidden`` (default ``(8,)``) and ``context_channels`` (8) shape the shared context
    trunk (:class:`~.layers.ContextNet`, tanh output); ``context_hidden=None``: constant
    coefficients per layer.  Every layer starts as the identity, the scale at ``1/(2 kappa)``.
    """

    def __init__(self, kappa: float, *, nc: int = 3, c_sw: float = 0.0,
                 boundary: Sequence[complex] = (1, 1, 1, -1), n_layers: int | None = None,
                 context_hidden: Sequence[int] | None = (8,), context_channels: int = 8,
                 kernel_size: int = 3, init_gain: float = 0.3,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        cycle = pf_mask_cycle()
        n = len(cycle) if n_layers is None else int(n_layers)
        if n < 0:
            raise ConfigError(f"n_layers: expected a number of layers >= 0, got {n_layers!r}")
        self.kappa, self.c_sw, self.nc = _check_kappa(kappa), _check_c_sw(c_sw), int(nc)
        self.boundary = _check_boundary(boundary)
        chans = int(context_channels) if context_hidden is not None else 0
        self.trunk = None
        if context_hidden is not None:
            self.trunk = ContextNet(4, 12, chans, [int(h) for h in context_hidden], kernel_size,
                                    separable=True, init_gain=init_gain, dtype=dtype)
        self.log_scale = nn.Parameter(torch.tensor(-math.log(2 * self.kappa),
                                                   dtype=dtype))
        self.layers = nn.ModuleList(PseudofermionCoupling(cycle[i % len(cycle)], max(chans, 1),
                                                          dtype=dtype) for i in range(n))
        self.config: dict[str, Any] = {
            "kappa": self.kappa, "nc": self.nc, "c_sw": self.c_sw,
            "boundary": [[b.real, b.imag] for b in self.boundary], "n_layers": n,
            "context_hidden": None if context_hidden is None else [int(h) for h in
                                                                  context_hidden],
            "context_channels": int(context_channels), "kernel_size": int(kernel_size),
            "init_gain": float(init_gain), "dtype": str(dtype)}

    # -- the gauge side ---------------------------------------------------------------------
    def operator(self, u: torch.Tensor) -> WilsonDirac:
        """The Dirac operator of the target (Chroma's normalisation)."""
        nc = Lattice.of(u).check_gauge(u)[1]
        if nc != self.nc:
            raise ConfigError(f"U: the pseudofermion flow is for SU({self.nc}), got {nc}x{nc} "
                              f"links")
        return WilsonDirac(u, self.kappa, c_sw=self.c_sw, boundary=self.boundary,
                           normalisation="chroma")

    def context(self, u: torch.Tensor) -> torch.Tensor | None:
        """The shared, gauge-invariant context ``[B, C, t, z, y, x]`` (None without a trunk)."""
        if self.trunk is None:
            return None
        lat = Lattice.of(u)
        feats = []
        for m, n in lat.planes():
            tr = trace(plaquette_field(u, m, n)) / self.nc
            feats += [tr.real, tr.imag]
        wdt = self.log_scale.dtype
        return torch.tanh(self.trunk(torch.stack(feats, dim=1).to(wdt)))

    def setup(self, u: torch.Tensor) -> tuple[WilsonDirac, list[dict[str, torch.Tensor]]]:
        """The operator and every layer's coefficients for ``U`` (reuse them across draws)."""
        op = self.operator(u)
        eo = op._eo_setup()
        ctx = self.context(u)
        like = torch.empty(op.eo_shape(), dtype=u.dtype, device=u.device)
        return op, [layer.coefficients(ctx, eo, like) for layer in self.layers]

    def _dof(self, x: torch.Tensor) -> int:
        return int(x[0, 0].numel())  # complex components of one field

    # -- the map ----------------------------------------------------------------------------
    def forward(self, chi: torch.Tensor, u: torch.Tensor,
                setup: tuple[WilsonDirac, list] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi = f(chi | U)`` and ``log |det df/dchi|`` per configuration ``[B]``."""
        op, coeffs = setup if setup is not None else self.setup(u)
        eo = op._eo_setup()
        scale = self.log_scale.exp()
        x = chi * scale.to(chi.dtype)
        logdet = (2 * self._dof(chi)) * self.log_scale.expand(chi.shape[0]).to(torch.float64)
        for layer, c in zip(self.layers, coeffs, strict=True):
            x, ld = layer.forward(x, c, eo)
            logdet = logdet + ld.to(torch.float64)
        return x, logdet

    def reverse(self, phi: torch.Tensor, u: torch.Tensor,
                setup: tuple[WilsonDirac, list] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``chi = f^{-1}(phi | U)`` and ``log |det df^{-1}/dphi|`` ``[B]``."""
        op, coeffs = setup if setup is not None else self.setup(u)
        eo = op._eo_setup()
        logdet = torch.zeros(phi.shape[0], dtype=torch.float64, device=phi.device)
        x = phi
        for layer, c in zip(reversed(self.layers), reversed(coeffs), strict=True):
            x, ld = layer.reverse(x, c, eo)
            logdet = logdet + ld.to(torch.float64)
        logdet = logdet - (2 * self._dof(phi)) * self.log_scale.to(torch.float64)
        return x * (-self.log_scale).exp().to(x.dtype), logdet
