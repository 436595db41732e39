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
matrices ``sum_g a_g(x) P_a Gamma_g P_f`` (``Gamma_g`` in ``gamma_0..3, gamma_5``) and the
direction-resolved two-hop parallel transports of ``K^dag``,
``sum_{mu nu} H^(nu)_oe b_{mu nu}(e) H^(mu)_eo`` (``H^(mu)`` the ``gamma_5``-conjugated hopping
term along ``+-mu``; ``b_{mu nu}(e) = beta_{mu nu} (1 + rho(e))``, a learned complex 4 x 4
matrix per layer times a complex site field on the even sites).  Masks: the spin projectors
``(1 +- gamma_mu)/2``, ``mu`` in ``0..3, 5``, the sublattices of the odd sites by the parity of
``t``, ``z`` or ``y``, and by the parity of ``x_mu // 2`` (``mu = 0..3``).  Initialisation: since
``K^dag = (1 - kappa^2 H_oe H_eo)^dag / (2 kappa)`` and every two-hop path changes exactly one of
these parities or is ``+-2 mu``, the coefficients ``b_{mu nu} = -kappa^2`` on the paths each
sublattice pair owns (:func:`first_order_paths`; in ``beta``, with ``rho = 0``) make the initial
flow equal the heat bath ``phi = K^dag chi`` to first order in ``kappa^2`` (Wilson fermions; with
clover the initialisation leaves out ``A``); training learns the rest.  The Jacobian is
triangular, so
``log |det| = 2 n_a sum_x s(x)`` (real coordinates; ``n_a`` complex components per active site).
The coefficients ``s, a, rho`` come from a context network on the plaquette traces (Re and Im of
``Tr P_{mu nu}``, all planes; shared trunk, one linear head per layer): gauge invariant, so each
layer is covariant, ``f(Omega chi | U^Omega) = Omega f(chi | U)``; translation equivariant (by
two sites; the ``x_mu // 2`` masks tile periodically when the extents are multiples of 4), so a
model applies to every lattice with even extents.  The map is linear in ``chi`` at fixed ``U``
(the exact conditional is Gaussian: ``phi = K^dag eta``), so ``log |det|`` depends on ``U`` only.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import nn

from ..errors import ConfigError
from ..fermions.evenodd import EvenOdd
from ..fermions.gamma import gamma5, gamma_matrices
from ..fermions.hopping import _TERMS, coefficients, gather_colour
from ..fermions.wilson import WilsonDirac, _check_boundary, _check_c_sw, _check_kappa
from ..gauge import plaquette_field
from ..groups import trace
from ..lattice import Lattice
from .layers import ContextNet

__all__ = ["PFMask", "pf_mask_cycle", "PseudofermionCoupling", "PseudofermionFlow",
           "SPIN_DIRECTIONS"]

SPIN_DIRECTIONS = (0, 1, 2, 3, 5)
_N_COEFF = 1 + 2 * len(SPIN_DIRECTIONS) + 2  # s, complex a_g, complex rho
_AXES = ("t", "z", "y")
_B0 = 1 + 2 * len(SPIN_DIRECTIONS)  # channels of Re rho, Im rho
_AXIS_DIRECTION = (3, 2, 1)  # compact axis 0, 1, 2 = t, z, y = direction 3, 2, 1
_FIRST_ORDER_LAYERS = 14  # the sublattice layers of pf_mask_cycle() (the default n_layers)


@dataclass(frozen=True)
class PFMask:
    """``kind = "spin"``: the active part is ``(1 + (-1)^parity gamma_index) / 2`` of every odd
    site; ``kind = "site"``: the odd sites whose coordinate along compact axis ``index``
    (0 = t, 1 = z, 2 = y) has the given ``parity`` are active, all their spin components;
    ``kind = "site2"``: those with ``(x_index // 2) % 2 == parity`` (direction ``index`` in
    0..3 = x, y, z, t)."""

    kind: str
    index: int
    parity: int

    def __post_init__(self) -> None:
        if self.kind not in ("spin", "site", "site2"):
            raise ConfigError(f"mask kind: expected 'spin', 'site' or 'site2', got "
                              f"{self.kind!r}")
        ok = {"spin": SPIN_DIRECTIONS, "site": (0, 1, 2), "site2": (0, 1, 2, 3)}[self.kind]
        if self.index not in ok:
            raise ConfigError(f"{self.kind} mask index: expected one of {ok}, got {self.index}")
        if self.parity not in (0, 1):
            raise ConfigError(f"mask parity: expected 0 or 1, got {self.parity}")

    def __str__(self) -> str:
        if self.kind == "spin":
            return f"(1 {'+-'[self.parity]} gamma_{self.index})/2"
        if self.kind == "site2":
            return f"odd sites with (x_{self.index} // 2) % 2 == {self.parity}"
        return f"odd sites with {_AXES[self.index]} % 2 == {self.parity}"

    def coordinate_mask(self, shape: Sequence[int], device: torch.device) -> torch.Tensor:
        """Boolean active sites ``[1, 1, t, z, y, x/2, 1, 1]`` of a site mask (compact layout;
        for odd sites ``x // 2`` is the compact index)."""
        if self.kind == "site":
            axis, c = self.index, torch.arange(shape[self.index], device=device)
        else:
            axis = 3 - self.index  # direction x, y, z, t = compact axis 3, 2, 1, 0
            c = torch.arange(shape[axis], device=device)
            c = c if axis == 3 else c // 2
        view = [1] * 4
        view[axis] = -1
        return (c % 2 == self.parity).view(1, 1, *view, 1, 1)


def first_order_paths(mask: PFMask) -> list[tuple[int, int]]:
    """The two-hop paths ``(mu, nu)`` (first ``+-mu``, then ``+-nu``) whose ``-kappa^2`` a layer
    pair of this mask takes at initialisation: site masks along ``t``, ``z``, ``y`` the paths
    with exactly one hop along that direction and none along an earlier one (each flips the
    parity), ``site2`` masks the path ``+-2 mu`` (it flips ``x_mu // 2``); spin masks none."""
    if mask.kind == "site2":
        return [(mask.index, mask.index)]
    if mask.kind != "site":
        return []
    d = _AXIS_DIRECTION[mask.index]
    earlier = _AXIS_DIRECTION[:mask.index]
    return [(m, n) for m in range(4) for n in range(4)
            if m != n and (m == d) != (n == d) and m not in earlier and n not in earlier]


def pf_mask_cycle() -> list[PFMask]:
    """The mask rotation (24 layers): the sublattice pairs along ``t``, ``z``, ``y`` and of
    ``x_mu // 2`` (which carry the first-order initialisation), then both spin projectors of
    each ``mu`` in ``0..3, 5``."""
    out = []
    for a in range(3):
        out += [PFMask("site", a, 0), PFMask("site", a, 1)]
    for mu in range(4):
        out += [PFMask("site2", mu, 0), PFMask("site2", mu, 1)]
    for mu in SPIN_DIRECTIONS:
        out += [PFMask("spin", mu, 0), PFMask("spin", mu, 1)]
    return out


class Transports:
    """The direction-resolved hopping ``H^(mu)`` (``gamma_5``-conjugated, the hops of ``K^dag``)
    of one operator, in the gather form of :func:`bridge.fermions.hopping.hop_gather`: all four
    first hops ``H^(mu)_eo f`` come from one gather, and ``sum_nu H^(nu)_oe g_nu`` of four
    fields from one more (differentiable; tested against the full hop)."""

    def __init__(self, eo: EvenOdd) -> None:
        self.eo = eo
        c = coefficients(eo.links[0][0].dtype, eo.links[0][0].device)
        direction = torch.tensor([_TERMS[k // 2][0] for k in range(16)],
                                 device=eo.links[0][0].device)
        sel = (direction[None, :] == torch.arange(4, device=direction.device)[:, None])
        self.p = c["P1"]  # [16, 4]: half spinors of the 8 terms
        self.p_dir = c["P1"][:, None, :] * sel.T[:, :, None]  # [16, 4 dir, 4 spin]
        self.r_dir = c["R1"][None, :, :] * sel[:, None, :]  # [4 dir, 4 spin, 16]
        self.r = c["R1"]

    def first(self, f: torch.Tensor, beta: torch.Tensor | None = None) -> torch.Tensor:
        """``g_nu = sum_mu beta_{mu nu} H^(mu)_eo f`` (``beta`` default the identity: the
        direction-resolved hops) for an odd field ``f[B, N, t, z, y, x/2, 4, Nc]``: shape
        ``[B, N, 4, t, z, y, x/2, 4, Nc]`` (even sites)."""
        b, r = f.shape[:2]
        v = f.shape[2] * f.shape[3] * f.shape[4] * f.shape[5]
        nc = f.shape[-1]
        h = torch.einsum("ks,brvsc->brvkc", self.p.to(f.dtype), f.reshape(b, r, v, 4, nc))
        w = gather_colour(h, self.eo.links[0].stacked(), self.eo.geo[0])
        r_dir = self.r_dir.to(f.dtype)
        if beta is not None:
            r_dir = torch.einsum("mn,msk->nsk", beta, r_dir)
        out = torch.einsum("msk,brvkc->brmvsc", r_dir, w)
        return out.reshape(b, r, 4, *f.shape[2:])

    def second(self, g: torch.Tensor) -> torch.Tensor:
        """``sum_nu H^(nu)_oe g_nu`` for even fields ``g[B, N, 4, t, z, y, x/2, 4, Nc]``."""
        b, r = g.shape[:2]
        v = g.shape[3] * g.shape[4] * g.shape[5] * g.shape[6]
        nc = g.shape[-1]
        h = torch.einsum("kms,brmvsc->brvkc", self.p_dir.to(g.dtype),
                         g.reshape(b, r, 4, v, 4, nc))
        w = gather_colour(h, self.eo.links[1].stacked(), self.eo.geo[1])
        out = torch.einsum("sk,brvkc->brvsc", self.r.to(g.dtype), w)
        return out.reshape(b, r, *g.shape[3:])


def _site(c: torch.Tensor) -> torch.Tensor:
    """``[B, t, z, y, x/2]`` -> broadcastable over draws, spin and colour."""
    return c[:, None, ..., None, None]


class PseudofermionCoupling(nn.Module):
    """One linear coupling layer (module docstring): ``forward(x, coeff, transports)`` and
    ``reverse`` return the field and ``log |det|`` per configuration (real coordinates)."""

    def __init__(self, mask: PFMask, channels: int, *, unit: float = 1.0,
                 first_order: bool = False, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.mask = mask
        self.head = nn.Linear(channels, _N_COEFF, dtype=dtype)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        # parameters in units of kappa^2, the size of the hopping terms (so that one optimiser
        # step changes every coefficient by a similar fraction of its natural size)
        self.unit = unit
        beta = torch.zeros(2, 4, 4, dtype=dtype)  # Re, Im of beta_{mu nu} / unit
        if first_order:  # the first-order initialisation (module docstring)
            for mu, nu in first_order_paths(mask):
                beta[0, mu, nu] = -1.0
        self.beta = nn.Parameter(beta)
        if mask.kind == "spin":
            g = gamma_matrices(dtype=torch.complex128)
            gs = [g[mu] if mu < 4 else gamma5(dtype=torch.complex128) for mu in SPIN_DIRECTIONS]
            sign = 1.0 if mask.parity == 0 else -1.0
            p = 0.5 * (torch.eye(4, dtype=torch.complex128) + sign * gs[SPIN_DIRECTIONS.index(
                mask.index)])
            q = torch.eye(4, dtype=torch.complex128) - p
            self.register_buffer("proj", p, persistent=False)
            self.register_buffer("proj_frozen", q, persistent=False)
            self.register_buffer("onsite", torch.stack([p @ gm @ q for gm in gs]),
                                 persistent=False)

    def coefficients(self, ctx: torch.Tensor | None, eo: EvenOdd, like: torch.Tensor
                     ) -> dict[str, torch.Tensor]:
        """``s`` (odd sites), ``a`` (``[B, 5, ...]`` complex, odd) and ``rho`` (complex, even
        sites) from the context ``[B, C, t, z, y, x]`` (or constants when ``ctx`` is None)."""
        if ctx is None:
            full = self.head.bias.view(1, -1, 1, 1, 1, 1).expand(like.shape[0], -1,
                                                                 *like.shape[2:5],
                                                                 2 * like.shape[5])
        else:
            full = torch.einsum("bc...,kc->bk...", ctx, self.head.weight) + self.head.bias.view(
                1, -1, 1, 1, 1, 1)
        ce, co = eo.split(full)
        n = len(SPIN_DIRECTIONS)
        a = torch.complex(co[:, 1:1 + n], co[:, 1 + n:1 + 2 * n]) * self.unit
        return {"s": co[:, 0] * self.unit, "a": a,
                "rho": torch.complex(ce[:, _B0], ce[:, _B0 + 1])}

    def _active(self, v: torch.Tensor, active: bool) -> torch.Tensor:
        if self.mask.kind == "spin":
            p = self.proj if active else self.proj_frozen
            return torch.einsum("st,...tc->...sc", p.to(v.dtype), v)
        m = self.mask.coordinate_mask(v.shape[2:6], v.device)
        return v * (m if active else ~m)

    def _transport(self, f: torch.Tensor, c: dict[str, torch.Tensor], tr: Transports
                   ) -> torch.Tensor:
        """``P_a T(f)`` for the frozen part ``f``."""
        beta = torch.complex(self.beta[0], self.beta[1]).to(f.dtype) * self.unit
        mid = tr.first(f, beta)  # [B, N, nu, t, z, y, x/2, 4, Nc]
        mid = mid * (1 + c["rho"].to(f.dtype))[:, None, None, ..., None, None]
        out = self._active(tr.second(mid), True)
        if self.mask.kind == "spin":
            onsite = torch.einsum("bg...,gst->b...st", c["a"].to(f.dtype), self.onsite.to(f.dtype))
            out = out + torch.einsum("b...st,bn...tc->bn...sc", onsite, f)
        return out

    def _logdet(self, s: torch.Tensor, nc: int, like: torch.Tensor) -> torch.Tensor:
        if self.mask.kind == "spin":
            return (2 * 2 * nc) * s.flatten(1).sum(1)
        m = self.mask.coordinate_mask(like.shape[2:6], like.device)[:, 0, ..., 0, 0]
        return (2 * 4 * nc) * (s * m).flatten(1).sum(1)

    def forward(self, x: torch.Tensor, c: dict[str, torch.Tensor], tr: Transports
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._active(x, False)
        es = _site(c["s"].exp()).to(x.dtype)
        y = f + es * self._active(x, True) + self._transport(f, c, tr)
        return y, self._logdet(c["s"], x.shape[-1], x)

    def reverse(self, y: torch.Tensor, c: dict[str, torch.Tensor], tr: Transports
                ) -> tuple[torch.Tensor, torch.Tensor]:
        f = self._active(y, False)
        ems = _site((-c["s"]).exp()).to(y.dtype)
        x = f + ems * (self._active(y, True) - self._transport(f, c, tr))
        return x, -self._logdet(c["s"], y.shape[-1], y)


class FlowSetup(NamedTuple):
    """What a flow needs of one gauge field (:meth:`PseudofermionFlow.setup`)."""

    op: WilsonDirac
    coeffs: list[dict[str, torch.Tensor]]
    transports: Transports


class PseudofermionFlow(nn.Module):
    """``q(phi | U)``: Gaussian prior, global scale, :class:`PseudofermionCoupling` layers cycling
    through :func:`pf_mask_cycle`; the fermion action's ``kappa``, ``c_sw`` and ``boundary``
    define the operator whose heat bath it models (module docstring).  ``first_order_init``
    (default True): start at the heat bath to first order in ``kappa^2`` (needs the 14
    sublattice layers that open the cycle), otherwise at ``phi = chi / (2 kappa)``;
    ``n_layers`` (default 14) beyond 14 adds the spin-projector layers (identity at start).
    Coefficients are learned in units of ``kappa^2``.

    ``context_hidden`` (default ``(8,)``) and ``context_channels`` (8) shape the shared context
    trunk (:class:`~.layers.ContextNet`, tanh output); ``context_hidden=None``: constant
    coefficients per layer.  The scale starts at ``1/(2 kappa)``.
    """

    def __init__(self, kappa: float, *, nc: int = 3, c_sw: float = 0.0,
                 boundary: Sequence[complex] = (1, 1, 1, -1), n_layers: int | None = None,
                 context_hidden: Sequence[int] | None = (8,), context_channels: int = 8,
                 kernel_size: int = 3, init_gain: float = 0.3, first_order_init: bool = True,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        cycle = pf_mask_cycle()
        n = _FIRST_ORDER_LAYERS if n_layers is None else int(n_layers)
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
        self.layers = nn.ModuleList(PseudofermionCoupling(
            cycle[i % len(cycle)], max(chans, 1), unit=self.kappa**2,
            first_order=bool(first_order_init), dtype=dtype) for i in range(n))
        self.config: dict[str, Any] = {
            "kappa": self.kappa, "nc": self.nc, "c_sw": self.c_sw,
            "boundary": [[b.real, b.imag] for b in self.boundary], "n_layers": n,
            "context_hidden": None if context_hidden is None else [int(h) for h in
                                                                  context_hidden],
            "context_channels": int(context_channels), "kernel_size": int(kernel_size),
            "init_gain": float(init_gain), "first_order_init": bool(first_order_init),
            "dtype": str(dtype)}

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

    def setup(self, u: torch.Tensor) -> FlowSetup:
        """The operator, every layer's coefficients and the transports for ``U`` (reuse them
        across draws)."""
        op = self.operator(u)
        eo = op._eo_setup()
        ctx = self.context(u)
        t, z, y, x2 = op.eo_shape()[1:5]
        like = torch.empty((u.shape[0], 1, t, z, y, x2), dtype=u.dtype, device=u.device)
        return FlowSetup(op, [layer.coefficients(ctx, eo, like) for layer in self.layers],
                         Transports(eo))

    def _dof(self, x: torch.Tensor) -> int:
        return int(x[0, 0].numel())  # complex components of one field

    # -- the map ----------------------------------------------------------------------------
    def forward(self, chi: torch.Tensor, u: torch.Tensor, setup: FlowSetup | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``phi = f(chi | U)`` and ``log |det df/dchi|`` per configuration ``[B]``."""
        _, coeffs, tr = setup if setup is not None else self.setup(u)
        scale = self.log_scale.exp()
        x = chi * scale.to(chi.dtype)
        logdet = (2 * self._dof(chi)) * self.log_scale.expand(chi.shape[0]).to(torch.float64)
        for layer, c in zip(self.layers, coeffs, strict=True):
            x, ld = layer.forward(x, c, tr)
            logdet = logdet + ld.to(torch.float64)
        return x, logdet

    def reverse(self, phi: torch.Tensor, u: torch.Tensor, setup: FlowSetup | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``chi = f^{-1}(phi | U)`` and ``log |det df^{-1}/dphi|`` ``[B]``."""
        _, coeffs, tr = setup if setup is not None else self.setup(u)
        logdet = torch.zeros(phi.shape[0], dtype=torch.float64, device=phi.device)
        x = phi
        for layer, c in zip(reversed(self.layers), reversed(coeffs), strict=True):
            x, ld = layer.reverse(x, c, tr)
            logdet = logdet + ld.to(torch.float64)
        logdet = logdet - (2 * self._dof(phi)) * self.log_scale.to(torch.float64)
        return x * (-self.log_scale).exp().to(x.dtype), logdet
