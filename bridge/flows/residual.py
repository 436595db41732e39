"""Residual staple layers: gauge-equivariant, invertible link updates ``U' = exp(Y(U)) U`` driven
by the staples of frozen links -- a masked, learnable discretisation of Luescher's trivialising
flow (arXiv:0907.5491, eqs. 2.3-2.5; residual gauge flows as in arXiv:2207.08945, sec. 2), with
the exact log-Jacobian.

Mask.  A :class:`StapleMask` ``(mu, parity)`` activates the links ``U_mu(x)`` with
``sum_{nu != mu} x_nu = parity (mod 2)``.  Every staple of an active link consists of inactive
links (the transverse links ``U_nu`` are never active, and ``U_mu(x +- nu)`` has the other
parity), so no plaquette holds two active links, the staples are frozen, and the Jacobian is block
diagonal with one ``dim G x dim G`` block per active link.  The pattern tiles the lattice when
every extent ``L_nu``, ``nu != mu``, is even; :func:`staple_mask_cycle` lists the ``2 Nd`` masks
that update every link once.

Map.  With the ``2(Nd - 1)`` staples ``S_k`` of ``U_mu(x)`` (``Re Tr[U S_k]`` the real trace of
the plaquettes through the link; ``k`` runs over the transverse direction ``nu`` and the side,
forward then backward) and learnable real coefficients ``c_k``,

    B = sum_k c_k S_k,     M = U B,     Y(U) = TA(M),     U' = exp(Y(U)) U,

``TA`` the (traceless) anti-Hermitian projection (:func:`bridge.groups.project_algebra`).  Under
``U_mu(x) -> Omega(x) U_mu(x) Omega(x + mu)^dag`` every staple goes to ``Omega(x + mu) S_k
Omega(x)^dag``, so ``M -> Omega(x) M Omega(x)^dag``, ``Y`` is conjugated and ``U'`` transforms
like ``U``: the layer is gauge equivariant.  ``Y = -grad Re Tr[U B]`` is the force of the action
``+Re Tr[U B]`` with respect to the active link (U(1): ``theta' = theta + b sin theta`` for the
angle ``theta`` of ``U B = b e^{i theta}``): at first order in ``c`` the layer multiplies the
density by ``exp(-(N^2 - 1)/N Re Tr[U B])`` (U(1): ``exp(-Re[U B])``; the fundamental
characters are eigenfunctions of the Laplacian on the group), i.e. it tilts every plaquette
through the link away from (``c > 0``) or towards (``c < 0``) the identity.  The Wilson weight
``exp(beta/N sum_p Re Tr P)`` asks for ``c < 0`` (Luescher's leading-order trivialising map:
each plaquette has four links, so ``c = -beta / (4 (N^2 - 1))``).

Invertibility.  ``U -> Y(U)`` is Lipschitz with constant ``||B||_op <= sum_k |c_k|`` (``TA`` is
an orthogonal projection and the exponential does not increase distances on a compact group with
bi-invariant metric), so ``sum_k |c_k| < 1`` makes ``U -> exp(Y(U)) U`` a bijection whose inverse
is the limit of the contraction ``U_{n+1} = exp(-Y(U_n)) U'`` (the residual-flow argument of
arXiv:1811.00995, sec. 2).  The coefficients are parameterised as ``c_k = kappa tanh(r_k) /
(2(Nd - 1))`` with ``kappa < 1`` (default 0.9).

Log-Jacobian (with respect to Haar measure).  In left-trivialised coordinates ``U -> exp(t w) U``
the differential of ``U -> U' U^{-1}``-coordinates is (``d/dt exp(Y + t X) exp(-Y) = phi(ad_Y) X``
with ``phi(z) = (e^z - 1) / z``, and ``exp(Y) w exp(-Y) = e^{ad_Y} w``)

    J w = e^{ad_Y} w + phi(ad_Y) L w = e^{ad_Y} (1 + psi(ad_Y) L) w,
    L w = TA(w M),     psi(z) = (1 - e^{-z}) / z,

and ``det e^{ad_Y} = exp(tr ad_Y) = 1``, so ``log J = log det(1 + psi(ad_Y) L)``, a
``dim G x dim G`` determinant per active link (``psi(ad_Y) L`` by its Taylor series in powers
0..22, whose remainder is below ``2^23 / 24! < 1e-16`` because ``||ad_Y|| < 2``: ``ad_Y`` is
normal with eigenvalues ``i (y_j - y_k)``, the differences of ``Y``'s eigenvalues, which removing
the trace does not change, so ``||ad_Y|| <= 2 ||(M - M^dag)/2||_op <= 2 ||M||_op <= 2 kappa``).
``psi(ad_Y)`` has norm ``<= 1`` (``ad_Y`` is antisymmetric, ``|psi(i r)| = |sinc(r / 2)| <= 1``)
and ``||L|| <= ||B||_op < 1``, so the determinant is positive. Tested against autograd in
Lie-algebra coordinates (:func:`bridge.testing.assert_logdet_matches_autograd`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConvergenceError
from ..groups import Group, algebra_basis, dagger, get_group, mm, project_algebra, trace
from ..lattice import Lattice, as_device
from .layers import ContextNet, check_layer_input
from .masks import MaskError

_PSI_TERMS = 22

__all__ = ["StapleMask", "staple_mask_cycle", "link_staples", "ResidualStapleLayer"]


@functools.lru_cache(maxsize=16)
def _basis(nc: int, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The algebra basis ``T[a]`` and the inverse of its Gram matrix ``Re Tr(T_a^dag T_b)``
    (built once per group, dtype and device; read-only; never inference tensors, so a first call
    under ``torch.inference_mode`` does not break later training)."""
    with torch.inference_mode(False), torch.no_grad():
        t = algebra_basis(nc, dtype=dtype, device=device)
        return t, torch.linalg.inv(torch.einsum("aij,bij->ab", t.conj(), t).real)


@dataclass(frozen=True)
class StapleMask:
    """Checkerboard mask of one residual staple layer: the active links are ``U_mu(x)`` with
    ``sum_{nu != mu} x_nu = parity (mod 2)``."""

    mu: int
    parity: int = 0

    def __post_init__(self) -> None:
        if self.mu < 0:
            raise MaskError(f"mu: expected a direction >= 0, got {self.mu}")
        if self.parity not in (0, 1):
            raise MaskError(f"parity: expected 0 or 1, got {self.parity}")

    def check_lattice(self, lattice: Lattice) -> None:
        """Raise :class:`MaskError` if the checkerboard cannot tile ``lattice`` periodically."""
        if self.mu >= lattice.nd:
            raise MaskError(f"mask: direction mu = {self.mu} does not exist on the "
                            f"{lattice.nd}-dimensional lattice {lattice}")
        odd = [(nu, n) for nu, n in enumerate(lattice.nrow) if nu != self.mu and n % 2]
        if odd:
            nu, n = odd[0]
            raise MaskError(f"lattice: extent L_{nu} = {n} of {lattice} is odd; the staple "
                            f"checkerboard of mu = {self.mu} needs even extents in every other "
                            f"direction")

    def active_sites(self, lattice: Lattice, device=None) -> torch.Tensor:
        """Boolean ``[*lattice.shape]``: the sites ``x`` of the active links ``U_mu(x)``."""
        self.check_lattice(lattice)
        c = lattice.coordinates(as_device(device))
        s = sum(c[nu] for nu in range(lattice.nd) if nu != self.mu)
        return (s % 2) == self.parity

    def active_links(self, lattice: Lattice, device=None) -> torch.Tensor:
        """Boolean ``[Nd, *lattice.shape]``: the links the layer updates."""
        sites = self.active_sites(lattice, device)
        out = torch.zeros((lattice.nd, *lattice.shape), dtype=torch.bool, device=sites.device)
        out[self.mu] = sites
        return out


def staple_mask_cycle(nd: int) -> list[StapleMask]:
    """The ``2 Nd`` masks ``(mu, parity)``, parity fastest, that update every link once."""
    if int(nd) != nd or nd < 2:
        raise MaskError(f"nd: expected an integer >= 2, got {nd!r}")
    return [StapleMask(mu, p) for mu in range(int(nd)) for p in (0, 1)]


def link_staples(u: torch.Tensor, mu: int) -> list[torch.Tensor]:
    """The ``2(Nd - 1)`` staples of every link ``U_mu(x)``, each shaped like ``u[:, mu]``, in the
    order ``nu = 0 .. Nd-1`` (``nu != mu``), forward then backward::

        forward:  U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag
        backward: U_nu(x+mu-nu)^dag U_mu(x-nu)^dag U_nu(x-nu)

    so that ``Re Tr[U_mu(x) S_k(x)]`` is the real trace of the k-th plaquette through the link
    (their sum is :func:`bridge.gauge.staple`)."""
    lat = Lattice.of(u)
    umu = u[:, mu]
    out = []
    for nu in range(lat.nd):
        if nu == mu:
            continue
        unu = u[:, nu]
        unu_xmu = lat.shift(unu, mu)
        out.append(mm(unu_xmu, dagger(mm(unu, lat.shift(umu, nu)))))
        low = mm(dagger(mm(umu, unu_xmu)), unu)  # built at y = x - nu
        out.append(lat.shift(low, nu, -1))
    return out


class ResidualStapleLayer(nn.Module):
    """One residual staple layer (module docstring): ``forward(U) -> (U', logdet)`` and
    ``reverse(U') -> (U, logdet_reverse)`` (fixed-point inverse to ``tol``), ``logdet[batch]``
    the log-Jacobian of the map applied with respect to Haar measure.

    Parameters
    ----------
    group, nd:
        Gauge group and dimension.
    mask:
        The :class:`StapleMask` ``(mu, parity)``.
    kappa:
        Lipschitz bound ``sum_k |c_k| <= kappa`` (``0 < kappa < 1``): the guarantee of
        invertibility and the contraction rate of the inverse.
    hidden:
        ``None`` (default): the ``c_k`` are ``2(Nd - 1)`` numbers.  A sequence of widths: the
        ``c_k(x)`` depend on the site through a :class:`~.layers.ContextNet` (``kernel_size``,
        ``separable``, last-layer gain ``init_gain``) over the gauge-invariant, frozen features
        ``Re/Im Tr[S_k S_l^dag] / N`` (``k < l``) of the active sites:
        ``c_k(x) = kappa tanh(r_k + net_k(x)) / (2(Nd - 1))``.  They do not depend on the active
        link, so the bound, the inverse and the log-Jacobian are unchanged.
    dtype:
        Real dtype of the coefficients.
    """

    def __init__(self, group: Group | str | int, nd: int, mask: StapleMask, *,
                 kappa: float = 0.9, hidden: Sequence[int] | None = None,
                 kernel_size: int = 3, separable: bool | None = None, init_gain: float = 0.01,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        self.group = get_group(group)
        if mask.mu >= nd:
            raise MaskError(f"mask: expected a direction 0 <= mu < Nd = {nd}, got mu = {mask.mu}")
        kappa = float(kappa)
        if not 0.0 < kappa < 1.0:
            raise ValueError(f"kappa: expected a Lipschitz bound in (0, 1), got {kappa}")
        self.nd, self.mask, self.kappa = int(nd), mask, kappa
        self.n_staples = 2 * (self.nd - 1)
        # c_k = kappa tanh(r_k) / n_staples: zero at initialisation (the identity map)
        self.raw = nn.Parameter(torch.zeros(self.n_staples, dtype=dtype))
        self.pairs = [(a, b) for a in range(self.n_staples) for b in range(a + 1,
                                                                           self.n_staples)]
        self.net = None if hidden is None else ContextNet(
            nd, 2 * len(self.pairs), self.n_staples, hidden, kernel_size, separable=separable,
            init_gain=init_gain, dtype=dtype)

    def coefficients(self) -> torch.Tensor:
        """The site-independent part of the staple coefficients, ``kappa tanh(r_k) / (2(Nd -
        1))`` (the coefficients themselves without a context net; ``sum |c_k| <= kappa``)."""
        return self.kappa * torch.tanh(self.raw) / self.n_staples

    def _check(self, u: torch.Tensor) -> Lattice:
        return check_layer_input(u, self.group, self.nd)

    def _frozen(self, u: torch.Tensor, lat: Lattice) -> tuple[torch.Tensor, torch.Tensor]:
        """Active site indices (flattened) and ``B = sum_k c_k S_k`` there ``[batch, n, N, N]``."""
        sites = self.mask.active_sites(lat, u.device)
        idx = sites.flatten().nonzero().squeeze(1)
        staples = link_staples(u, self.mask.mu)
        rdt = u.real.dtype
        if self.net is None:
            c = self.coefficients().to(rdt)[None, None, :]  # [1, 1, k]
        else:
            act = sites.to(rdt)
            nc = self.group.nc
            feats = []
            for a, b in self.pairs:
                t = trace(mm(staples[a], dagger(staples[b]))) / nc
                feats += [t.real * act, t.imag * act]
            wdt = self.net.layers[0].weights()[0].dtype
            z = self.net(torch.stack(feats, dim=1).to(wdt)).movedim(1, -1).to(rdt)
            z = z.flatten(1, lat.nd)[:, idx]  # [batch, n, k]
            c = self.kappa * torch.tanh(self.raw.to(rdt) + z) / self.n_staples
        b = 0
        for k, s in enumerate(staples):
            b = b + c[..., k, None, None] * s.flatten(1, lat.nd)[:, idx]
        return idx, b

    def _y(self, ua: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = mm(ua, b)
        return project_algebra(m, self.group), m

    def _logdet(self, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """``log det(1 + psi(ad_Y) L)`` per active link (module docstring), ``[batch, n]``."""
        nc = self.group.nc
        t, ginv = _basis(nc, m.dtype, m.device)  # [d, N, N], inverse Gram matrix [d, d]

        def coords(x: torch.Tensor) -> torch.Tensor:  # [..., d(b), N, N] -> [..., a, b]
            return ginv @ torch.einsum("cij,...bij->...cb", t.conj(), x).real

        tb = t.reshape((1,) * (m.dim() - 2) + t.shape)
        lmat = coords(project_algebra(mm(tb, m.unsqueeze(-3)), self.group))
        d = t.shape[0]
        eye = torch.eye(d, dtype=lmat.dtype, device=lmat.device)
        if nc == 1:  # abelian: ad_Y = 0, psi = 1
            return torch.log((eye + lmat)[..., 0, 0])
        yb = y.unsqueeze(-3)
        ad = coords(mm(yb, tb) - mm(tb, yb))
        # psi(ad_Y) L = sum_{j <= J} (-ad_Y)^j L / (j + 1)!  by Horner's rule; ||ad_Y|| <=
        # 2 kappa < 2 (module docstring), so the remainder is below 2^23 / 24! = 1.4e-17
        pl = lmat * (1.0 / math.factorial(_PSI_TERMS + 1))
        for j in range(_PSI_TERMS - 1, -1, -1):
            pl = lmat * (1.0 / math.factorial(j + 1)) - ad @ pl
        return torch.linalg.slogdet(eye + pl)[1]

    def _replace(self, u: torch.Tensor, lat: Lattice, idx: torch.Tensor, ua_new: torch.Tensor):
        mu = self.mask.mu
        umu = u[:, mu].flatten(1, lat.nd)
        new = umu.index_copy(1, idx, ua_new).reshape(u[:, mu].shape)
        return torch.stack([new if d == mu else u[:, d] for d in range(lat.nd)], dim=1)

    def forward(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lat = self._check(u)
        idx, b = self._frozen(u, lat)
        ua = u[:, self.mask.mu].flatten(1, lat.nd)[:, idx]
        y, m = self._y(ua, b)
        ua_new = mm(torch.linalg.matrix_exp(y), ua)
        return self._replace(u, lat, idx, ua_new), self._logdet(y, m).sum(-1)

    def reverse(self, u: torch.Tensor, *, tol: float | None = None,
                max_iter: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact inverse by the contraction ``U_{n+1} = exp(-Y(U_n)) U'`` until the largest
        change of a link element between successive iterates is below ``tol`` (default: 50
        machine epsilons; the error of the result is at most ``kappa / (1 - kappa)`` times the
        last change, 9 ``tol`` at the default ``kappa``); raises
        :class:`~bridge.errors.ConvergenceError` after ``max_iter`` iterations."""
        lat = self._check(u)
        idx, b = self._frozen(u, lat)
        target = u[:, self.mask.mu].flatten(1, lat.nd)[:, idx]
        tol = 50 * torch.finfo(u.real.dtype).eps if tol is None else float(tol)
        with torch.no_grad():
            bd = b.detach()
            cur = target.detach()
            n_iter, change = 0, math.inf
            while change > tol:
                if n_iter == max_iter:
                    raise ConvergenceError(
                        f"ResidualStapleLayer(mu={self.mask.mu}, parity={self.mask.parity})"
                        f".reverse: the fixed-point inverse did not converge in {max_iter} "
                        f"iterations (last change {change:.2e} > tol {tol:.1e}); sum |c_k| = "
                        f"{float(self.coefficients().abs().sum()):.3f} should be < 1")
                y, _ = self._y(cur, bd)
                nxt = mm(torch.linalg.matrix_exp(-y), target.detach())
                change = float((nxt - cur).abs().max()) if nxt.numel() else 0.0
                cur, n_iter = nxt, n_iter + 1
        # log-Jacobian of the inverse = -(log-Jacobian of the forward map at the preimage)
        y, m = self._y(cur, b)
        return self._replace(u, lat, idx, cur), -self._logdet(y, m).sum(-1)
