"""An analytic, exactly normalised proposal for 2D U(1) Wilson theory on a periodic torus: a change
of variables to plaquette angles (a "flow" with exactly known density; nothing is trained).

Angles.  Write the links as ``U_mu(x) = exp(i a_mu(x))`` (layout ``U[batch, mu, t, x, 1, 1]``,
``mu = 0`` is x, ``mu = 1`` is t) and the plaquette (:func:`bridge.gauge.plaquette_field`)

    P(x, t) = U_0(x, t) U_1(x+1, t) U_0(x, t+1)^* U_1(x, t)^*,
    theta(x, t) = a_0(x, t) + a_1(x+1, t) - a_0(x, t+1) - a_1(x, t)      (mod 2 pi).

The Wilson weight is ``exp(-S) = exp(-beta V) prod_p exp(beta cos theta_p)`` (``S = beta sum_p
(1 - Re P_p)``, :func:`bridge.gauge.wilson_action`), so the plaquettes would be independent von
Mises variables but for one constraint: the product of all plaquettes is 1 (every link appears
once and once conjugated), ``sum_p theta_p = 0 mod 2 pi``.

Gauge orbits.  On the ``L_x x L_t`` torus the map ``pi: U -> (P_p for p != p0, W_x, W_t)`` with
the Polyakov loops ``W_x = prod_x U_0(x, 0)`` and ``W_t = prod_t U_1(0, t)`` is a surjective
homomorphism ``T^{2V} -> T^{V+1}`` whose kernel is the pure-gauge fields (a flat U(1) field with
trivial holonomies is pure gauge), and the gauge group modulo constant transformations,
``T^V / U(1)``, acts freely and transitively on each fibre.  Hence Haar measure on the links
disintegrates into Haar measure on ``T^{V+1}`` (orbits) times the uniform measure on each orbit.

Proposal.  Draw ``phi_x, phi_t`` uniform on ``(-pi, pi]``, the ``V - 1`` angles ``theta_p``,
``p != p0``, iid from ``exp(beta cos theta) / (2 pi I_0(beta))`` (Best-Fisher rejection, exact),
set ``theta_p0 = -sum_{p != p0} theta_p`` (wrapped to ``(-pi, pi]``; ``p0 = (x, t) = (L_x - 1,
L_t - 1)``), build one representative ``s(theta, phi)`` in a fixed gauge (below) with ``pi(s) =
(theta, phi)``, then apply a Haar-random gauge transformation, which makes ``U`` uniform on its
orbit.  The density of ``U`` with respect to the *normalised* Haar measure on the links (the
reference measure of :class:`~bridge.flows.models.GaugeFlow`, whose Haar prior has ``log r = 0``)
is therefore exactly the density of ``(theta, phi)`` with respect to normalised Haar measure on
``T^{V+1}``, i.e. ``prod_{p != p0} exp(beta cos theta_p) / I_0(beta)`` (the uniform holonomies
have density 1):

    log q(U) = beta sum_{p != p0} Re P_p(U) - (V - 1) log I_0(beta),

computable from *any* ``U`` (an HMC state) because ``cos theta_p = Re P_p`` needs no branch.  No
constant is left out: ``E_q[exp(-S)/q] = Z = exp(-beta V) sum_n I_n(beta)^V`` exactly (tested).
The importance weight is ``log w = -S - log q = beta cos theta_p0 - beta V + (V - 1) log I_0``,
so independence Metropolis accepts with ``min(1, exp(beta (cos theta'_p0 - cos theta_p0)))``.

Gauge-fixed representative (the derivation of :func:`plaquette_links`).  Temporal gauge
``a_1(x, t) = 0`` for ``t < L_t - 1``.  Then for ``t < L_t - 1``: ``theta(x, t) = a_0(x, t) -
a_0(x, t+1)``, so ``a_0(x, t) = a_0(x, 0) - sum_{s < t} theta(x, s)``.  The residual gauge
freedom (time-independent transformations) sets ``a_0(x, 0) = 0`` for ``x < L_x - 1`` and
``a_0(L_x - 1, 0) = phi_x`` (so ``W_x = exp(i phi_x)``).  On the last time slice
``theta(x, L_t - 1) = a_0(x, L_t - 1) - a_0(x, 0) + a_1(x+1, L_t - 1) - a_1(x, L_t - 1)``, i.e.
``a_1(x+1, L_t - 1) - a_1(x, L_t - 1) = sum_{t} theta(x, t) =: Theta(x)`` (column sums); with
``a_1(0, L_t - 1) = phi_t`` (so ``W_t = exp(i phi_t)``), ``a_1(x, L_t - 1) = phi_t + sum_{y < x}
Theta(y)``; the step from ``x = L_x - 1`` back to 0 closes because ``sum_y Theta(y) = sum_p
theta_p = 0 mod 2 pi``.  Every ``theta_p`` (``p0`` included) is reproduced exactly mod 2 pi.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..gauge import gauge_transform, plaquette_field, random_gauge_transformation
from ..groups import complex_dtype, get_group
from ..lattice import Lattice, as_device

__all__ = ["U1PlaquetteProposal", "von_mises", "plaquette_links", "plaquette_field_from_angles",
           "log_i0"]


def log_i0(beta: float) -> float:
    """``log I_0(beta)`` (scaled Bessel function: no overflow at large beta)."""
    b = torch.tensor(float(beta), dtype=torch.float64)
    return float(torch.log(torch.special.i0e(b)) + b.abs())


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to ``(-pi, pi]``."""
    return math.pi - torch.remainder(math.pi - a, 2 * math.pi)


def von_mises(kappa: float, shape: Sequence[int], *, generator: torch.Generator | None = None,
              dtype: torch.dtype = torch.float64,
              device: torch.device | str | None = None) -> torch.Tensor:
    """Exact samples of ``exp(kappa cos theta) / (2 pi I_0(kappa))`` on ``(-pi, pi]``: the
    Best-Fisher wrapped-Cauchy envelope rejection (Appl. Stat. 28 (1979) 152; the constants as in
    numpy's ``vonmises``), vectorised: rejected entries are redrawn until all are accepted."""
    kappa = float(kappa)
    if not (math.isfinite(kappa) and kappa >= 0):
        raise ValueError(f"kappa: expected a finite non-negative concentration, got {kappa}")
    dev = as_device(device)
    shape = tuple(int(s) for s in shape)
    if kappa < 1e-8:
        return math.pi * (2 * torch.rand(shape, generator=generator, dtype=dtype, device=dev) - 1)
    if kappa < 1e-5:
        s = 1.0 / kappa + kappa
    else:
        r = 1.0 + math.sqrt(1.0 + 4.0 * kappa * kappa)
        rho = (r - math.sqrt(2.0 * r)) / (2.0 * kappa)
        s = (1.0 + rho * rho) / (2.0 * rho)
    n = math.prod(shape)
    out = torch.empty(n, dtype=dtype, device=dev)
    todo = torch.arange(n, device=dev)
    while todo.numel():
        m = todo.numel()
        u = torch.rand((3, m), generator=generator, dtype=dtype, device=dev)
        z = torch.cos(math.pi * u[0])
        w = (1.0 + s * z) / (s + z)
        y = kappa * (s - w)
        v = u[1]
        ok = (y * (2.0 - y) - v >= 0) | (torch.log(y / v) + 1.0 - y >= 0)
        th = torch.acos(w.clamp(-1.0, 1.0))
        th = torch.where(u[2] < 0.5, -th, th)
        out[todo[ok]] = th[ok]
        todo = todo[~ok]
    return out.reshape(shape)


def plaquette_links(theta: torch.Tensor, phi_x: torch.Tensor, phi_t: torch.Tensor) -> torch.Tensor:
    """The gauge-fixed link angles ``a[batch, mu, t, x]`` whose plaquette angles are ``theta[batch,
    t, x]`` (mod 2 pi; ``theta`` must sum to 0 mod 2 pi over the lattice) and whose Polyakov
    loops are ``exp(i phi_x)`` (x direction at t = 0) and ``exp(i phi_t)`` (t direction at x = 0):
    the temporal-gauge construction of the module docstring.  Linear in its arguments."""
    b, lt, lx = theta.shape
    a = theta.new_zeros((b, 2, lt, lx))
    # a_0(x, t) = a_0(x, 0) - sum_{s < t} theta(x, s)
    a0 = torch.zeros_like(theta)
    if lt > 1:
        a0[:, 1:] = -torch.cumsum(theta[:, :-1], dim=1)
    a0[:, :, lx - 1] = a0[:, :, lx - 1] + phi_x[:, None]
    a[:, 0] = a0
    # a_1(x, L_t - 1) = phi_t + sum_{y < x} Theta(y), Theta(y) = sum_t theta(y, t)
    col = theta.sum(dim=1)  # [b, lx]
    a1 = torch.zeros_like(col)
    if lx > 1:
        a1[:, 1:] = torch.cumsum(col[:, :-1], dim=1)
    a[:, 1, lt - 1] = a1 + phi_t[:, None]
    return a


def plaquette_field_from_angles(theta: torch.Tensor, phi: torch.Tensor, lattice: Lattice, *,
                                generator: torch.Generator | None = None,
                                dtype: torch.dtype = torch.complex128) -> torch.Tensor:
    """A U(1) field ``U[n, 2, t, x, 1, 1]`` uniform on the gauge orbit with plaquette angles
    ``theta[n, t, x]`` and Polyakov loops ``exp(i phi[0])``, ``exp(i phi[1])``: the fixed-gauge
    links of :func:`plaquette_links` and a Haar-random gauge transformation (drawn from
    ``generator``).  Differentiable in ``theta`` and ``phi``."""
    a = plaquette_links(theta, phi[0], phi[1])
    u = torch.polar(torch.ones_like(a), a).to(dtype)[..., None, None]
    omega = random_gauge_transformation(lattice, get_group("U1"), theta.shape[0],
                                        generator=generator, dtype=dtype, device=theta.device)
    return gauge_transform(u, omega)


class U1PlaquetteProposal:
    """The plaquette-variable proposal for 2D U(1) Wilson theory at coupling ``beta`` (module
    docstring): ``sample(n, lattice, generator=, dtype=, device=) -> (U, log q)`` and
    ``log_prob(U)``, with ``log q`` exactly normalised with respect to normalised Haar measure;
    usable wherever a :class:`~bridge.flows.models.GaugeFlow` is (``group``, ``nd``, no layers),
    e.g. :func:`bridge.mcmc.flow_mh.flow_metropolis_kernel`.  ``p0`` (the constrained plaquette) is
    the site ``(x, t) = (L_x - 1, L_t - 1)``."""

    def __init__(self, beta: float) -> None:
        beta = float(beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a finite non-negative coupling, got {beta}")
        self.beta = beta
        self.group = get_group("U1")
        self.nd = 2
        self.log_i0 = log_i0(beta)
        self.config = {"kind": "u1_plaquette", "beta": beta}

    def __repr__(self) -> str:
        return f"U1PlaquetteProposal(beta={self.beta:g})"

    def _lattice(self, lattice: Lattice | Sequence[int]) -> Lattice:
        lat = lattice if isinstance(lattice, Lattice) else Lattice(lattice)
        if lat.nd != 2:
            raise ValueError(f"lattice: the plaquette proposal is 2-dimensional, got {lat}")
        return lat

    def sample(
        self,
        n: int,
        lattice: Lattice | Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        return_angles: bool = False,
    ):
        """``n`` fields ``U ~ q`` and ``log q(U)``; with ``return_angles`` also the plaquette
        angles ``theta[n, t, x]`` used (``theta_p0`` the wrapped constraint)."""
        lat = self._lattice(lattice)
        n = int(n)
        if n < 1:
            raise ValueError(f"n: expected a positive number of samples, got {n}")
        cdt = complex_dtype(dtype)
        rdt = torch.float64 if cdt == torch.complex128 else torch.float32
        dev = as_device(device)
        lx, lt = lat.nrow
        v = lat.volume
        # float64 angles whatever the output precision (cast at the end)
        th = von_mises(self.beta, (n, v - 1), generator=generator, device=dev)
        p0 = _wrap(-th.sum(dim=1, keepdim=True))
        theta = torch.cat([th, p0], dim=1).reshape(n, lt, lx)  # p0: the last site
        phi = math.pi * (2 * torch.rand((2, n), generator=generator, dtype=torch.float64,
                                        device=dev) - 1)
        u = plaquette_field_from_angles(theta, phi, lat, generator=generator, dtype=cdt)
        log_q = (self.beta * torch.cos(th).sum(dim=1) - (v - 1) * self.log_i0).to(rdt)
        if return_angles:
            return u, log_q, theta
        return u, log_q

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log q(U) = beta sum_{p != p0} Re P_p - (V - 1) log I_0(beta)``, shape ``[batch]``,
        for any 2D U(1) field (gauge invariant)."""
        lat = Lattice.of(u)
        _, nc = lat.check_gauge(u)
        if lat.nd != 2 or nc != 1:
            raise ValueError(f"U: the plaquette proposal needs a 2D U(1) field, got {lat} with "
                             f"{nc}x{nc} links")
        re = plaquette_field(u, 0, 1)[..., 0, 0].real.flatten(1)  # [b, t * Lx + x]
        return self.beta * re[:, :-1].sum(dim=1) - (lat.volume - 1) * self.log_i0
