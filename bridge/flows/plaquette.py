"""A trained flow for 2D U(1) that models the plaquettes with the exact torus constraint.

A learned single-plaquette density ``g`` (band-limited and non-negative by construction,
Fejer-Riesz) and ``q(U) = prod_p 2 pi g(theta_p) / (2 pi f_V(0))`` over all ``V`` plaquette
angles (``f_V`` the density of the sum of ``V`` draws of ``g``): the product restricted to
``sum_p theta_p = 0 mod 2 pi`` and normalised there, sampled exactly on a binary split tree of
conditionals with analytic CDFs.  For ``g ~ exp(beta cos theta)`` it is the Wilson weight.
Equations (1)-(5) cited below, their derivation and the measured truncation errors:
docs/flows.md, "Constrained plaquette flow" (flows for lattice gauge theory: arXiv:2003.06413,
arXiv:2101.08176; the path-gradient estimator: arXiv:1703.09194).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..gauge import plaquette_field
from ..groups import complex_dtype, get_group
from ..lattice import Lattice, as_device
from .analytic import plaquette_field_from_angles

__all__ = ["PlaquetteFlow"]

_TWO_PI = 2 * math.pi
_CHUNK = 1 << 16  # conditional draws per batched inversion (bounds the memory of a level)


def _wrap(a: torch.Tensor) -> torch.Tensor:
    """Angles to ``(-pi, pi]``."""
    return math.pi - torch.remainder(math.pi - a, _TWO_PI)


# -- the plaquette density (2) ---------------------------------------------------------------
def taylor_coefficients(alpha: torch.Tensor, degree: int, symmetric: bool) -> torch.Tensor:
    """The normalised complex ``h_k``, ``k = 0 .. N``, of (2): the Taylor coefficients of
    ``exp(A(z))``, ``A(z) = sum_{k=1}^{K} a_k z^k`` (``alpha = [Re a, Im a]``, only ``Re`` when
    ``symmetric``), by the recurrence ``n e_n = sum_k k a_k e_{n-k}`` (from ``E' = A' E``),
    truncated at ``N`` and normalised (complex128)."""
    re = alpha[0].double()
    a = torch.complex(re, torch.zeros_like(re) if symmetric else alpha[1].double())
    harmonics = a.numel()
    e = [torch.ones((), dtype=a.dtype, device=a.device)]
    for n in range(1, degree + 1):
        terms = [k * a[k - 1] * e[n - k] for k in range(1, min(n, harmonics) + 1)]
        e.append(torch.stack(terms).sum() / n)
    h = torch.stack(e)
    return h / torch.linalg.vector_norm(h)


def fourier_coefficients(h: torch.Tensor, eps: float) -> torch.Tensor:
    """``c_n``, ``n = -N .. N`` (index ``n + N``), of ``g = (1 / 2 pi) sum c_n e^{i n theta}``
    for the coefficients ``h`` and floor ``eps`` of (2); ``c_0 = 1``."""
    n = h.numel() - 1
    pos = torch.stack([(h[k:] * h[: n + 1 - k].conj()).sum() for k in range(1, n + 1)])
    pos = (1 - eps) * pos
    one = torch.ones(1, dtype=pos.dtype, device=pos.device)
    return torch.cat([pos.flip(0).conj(), one, pos])


def log_plaquette_density(theta: torch.Tensor, h: torch.Tensor, eps: float) -> torch.Tensor:
    """``log g(theta)`` of (2), elementwise."""
    h = h.to(theta.device)
    k = torch.arange(h.numel(), device=theta.device, dtype=torch.float64)
    z = torch.polar(torch.ones_like(theta, dtype=torch.float64)[..., None],
                    theta.double()[..., None] * k)
    big_h = (z * h).sum(-1)
    return torch.log((1 - eps) * big_h.abs() ** 2 + eps) - math.log(_TWO_PI)


def powers(c: torch.Tensor, v: int) -> torch.Tensor:
    """``c_n^j`` for ``j = 1 .. v`` (the coefficients of ``f_j``): shape ``[v, 2N + 1]``, row
    ``j - 1``."""
    return c.expand(v, -1).cumprod(0)


def log_q_of_angles(theta: torch.Tensor, cpow: torch.Tensor, h: torch.Tensor,
                    eps: float) -> torch.Tensor:
    """(1) for all-plaquette angles ``theta[b, V]`` (``cpow`` from :func:`powers` up to ``V``):
    ``sum_p log g + V log 2 pi - log(2 pi f_V(0))``, ``2 pi f_V(0) = sum_n c_n^V``."""
    v = theta.shape[1]
    log_norm = torch.log(cpow[-1].sum().real).to(theta.device)
    return log_plaquette_density(theta, h, eps).sum(1) + v * math.log(_TWO_PI) - log_norm


# -- the conditionals (3)-(5) and their CDF ---------------------------------------------------
def phases(x: torch.Tensor, n: int) -> torch.Tensor:
    """``e^{i k x}``, ``k = 1 .. n``, shape ``[b, n]``: one sine/cosine and a cumulative product
    (rounding grows like ``k`` ulps; 3x cheaper than ``n`` sines and cosines)."""
    z = torch.polar(torch.ones_like(x), x)
    return z[:, None].expand(-1, n).cumprod(1)


def cdf_and_density(cn: torch.Tensor, x: torch.Tensor, ks: torch.Tensor,
                    cn_ik: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(4) and its derivative at ``x[b]`` for normalised coefficients ``cn[b, k]``,
    ``k = 1 .. 2N``; ``cn_ik = cn / (i k)`` may be passed precomputed."""
    if cn_ik is None:
        cn_ik = cn / (1j * ks)
    sign = 1.0 - 2.0 * torch.remainder(ks, 2)  # (-1)^k
    e = phases(x, ks.numel())
    cdf = (x + math.pi) / _TWO_PI + ((cn_ik * (e - sign)).sum(1)).real / math.pi
    dens = (1.0 + 2.0 * (cn * e).sum(1).real) / _TWO_PI
    return cdf, dens


def toeplitz(c: torch.Tensor) -> torch.Tensor:
    """``T[b, k] = c_{b+k}`` for ``b = -N .. N``, ``k = 0 .. 2N`` (zero where ``|b + k| > N``) of
    coefficients ``c[2N + 1]``: ``w @ T`` is the correlation in (3) and (5)."""
    m = c.numel()
    idx = torch.arange(m, device=c.device)[:, None] + torch.arange(m, device=c.device)[None, :]
    return torch.cat([c, torch.zeros(m - 1, dtype=c.dtype, device=c.device)])[idx]


def conditional(cpow_j: torch.Tensor, tp: torch.Tensor, s: torch.Tensor, bs: torch.Tensor,
                symmetric: bool) -> torch.Tensor:
    """Normalised coefficients ``C_k / C_0``, ``k = 1 .. 2N``, shape ``[b, 2N]``, of the density
    ``prop. to f_left(x) f_j(-s - x)`` (``cpow_j`` the coefficients of ``f_j``, ``tp`` the
    :func:`toeplitz` matrix of ``f_left``): (3) for ``f_left = g``, (5) with ``s = -sigma``.
    ``symmetric``: real ``c_n`` (two real products instead of a complex one)."""
    nn_ = (bs.numel() - 1) // 2
    pos = phases(-s, nn_)  # e^{-i b s}, b = 1 .. N
    one = torch.ones_like(pos[:, :1])
    w = cpow_j * torch.cat([pos.conj().flip(1), one, pos], 1)
    if symmetric:
        t = tp.real
        big_c = torch.complex(w.real @ t, w.imag @ t)  # [b, 2N + 1], k = 0 .. 2N
    else:
        big_c = w @ tp
    return big_c[:, 1:] / big_c[:, :1].real


def cdf_tables(c: torch.Tensor, grid: int) -> tuple[torch.Tensor, ...]:
    """What every conditional of (3)-(5) uses besides ``c_n``: the frequencies ``b = -N .. N``
    and ``k = 1 .. 2N``, the bracketing grid of ``grid + 1`` points on ``[-pi, pi]`` and the CDF
    terms ``(e^{ik x} - (-1)^k) / (ik)`` on it."""
    nn_, dev = (c.numel() - 1) // 2, c.device
    bs = torch.arange(-nn_, nn_ + 1, device=dev, dtype=torch.float64)
    ks = torch.arange(1, 2 * nn_ + 1, device=dev, dtype=torch.float64)
    grid_x = torch.linspace(-math.pi, math.pi, grid + 1, dtype=torch.float64, device=dev)
    sign = 1.0 - 2.0 * torch.remainder(ks, 2)
    grid_e = ((torch.polar(torch.ones_like(grid_x)[None, :], ks[:, None] * grid_x[None, :])
               - sign[:, None]) / (1j * ks[:, None]))
    return bs, ks, grid_x, grid_e


def invert_cdf(cn: torch.Tensor, u: torch.Tensor, ks: torch.Tensor, grid_e: torch.Tensor,
               grid_x: torch.Tensor, tol: float = 1e-14,
               max_iter: int = 60) -> tuple[torch.Tensor, int]:
    """``F^{-1}(u)`` of (4): bracket on the grid, then Newton steps kept inside the bracket, with
    a bisection instead when a step would leave it or when the residual did not at least halve
    (so the bracket shrinks geometrically whatever the density).  Converged when the residual is
    ``<= tol`` or the bracket is at the rounding level; after ``max_iter`` iterations a residual
    up to 1e-10 is accepted, a larger one raises.  Returns ``(x, iterations)``."""
    re_part = cn.real @ grid_e.real - cn.imag @ grid_e.imag  # Re(cn @ grid_e)
    f_grid = (grid_x + math.pi) / _TWO_PI + re_part / math.pi  # [b, M + 1], non-decreasing
    f_grid = torch.cummax(f_grid, dim=1).values
    i = torch.searchsorted(f_grid, u[:, None]).squeeze(1).clamp(1, grid_x.numel() - 1)
    lo, hi = grid_x[i - 1], grid_x[i]
    flo = f_grid.gather(1, (i - 1)[:, None]).squeeze(1)
    fhi = f_grid.gather(1, i[:, None]).squeeze(1)
    x = lo + (u - flo) / (fhi - flo).clamp_min(1e-300) * (hi - lo)
    x = torch.minimum(torch.maximum(x, lo), hi)
    cn_ik = cn / (1j * ks)
    r_prev = torch.full_like(u, math.inf)
    for it in range(1, max_iter + 1):
        fx, px = cdf_and_density(cn, x, ks, cn_ik)
        r = fx - u
        lo = torch.where(r < 0, x, lo)
        hi = torch.where(r > 0, x, hi)
        xn = x - r / px.clamp_min(1e-300)
        bad = (xn <= lo) | (xn >= hi) | ~torch.isfinite(xn) | (r.abs() > 0.5 * r_prev.abs())
        xn = torch.where(bad, 0.5 * (lo + hi), xn)
        done = (r.abs() <= tol) | ((hi - lo) <= 4e-16 * math.pi)
        x = torch.where(done, x, xn)
        r_prev = torch.where(bad, torch.full_like(r, math.inf), r)
        if bool(done.all()):
            return x, it
    if float(r.abs().max()) <= 1e-10:
        return x, max_iter
    raise ArithmeticError(f"plaquette flow: the conditional CDF inversion did not converge in "
                          f"{max_iter} iterations (largest residual {float(r.abs().max()):.3g}); "
                          f"expected <= {tol:g}")


class _SplitTree:
    """The sampler of (5) on a binary split tree (docs/flows.md): a node is a block of ``m``
    consecutive plaquettes (order ``p = t L_x + x``) whose angles sum to ``sigma``; it splits
    into its first ``m // 2`` and the rest, the left sum drawn from (5).  All nodes of one size
    on one level are drawn in one batched call; gradients by the implicit function theorem."""

    def __init__(self, cpow: torch.Tensor, grid: int, symmetric: bool, grad: bool) -> None:
        self.cpow, self.symmetric, self.grad = cpow, symmetric, grad
        self.bs, self.ks, self.grid_x, self.grid_e = cdf_tables(cpow[0].detach(), grid)
        self.iterations = 0

    def draw(self, sig: torch.Tensor, u: torch.Tensor, m1: int, m2: int) -> torch.Tensor:
        """The left sums ``x`` of nodes of size ``m1 + m2`` with sums ``sig`` (5), from the
        uniforms ``u`` (flat tensors), in chunks that bound the memory."""
        tp, cj, out = toeplitz(self.cpow[m1 - 1]), self.cpow[m2 - 1], []
        for a in range(0, sig.numel(), _CHUNK):
            sg, uu = sig[a:a + _CHUNK], u[a:a + _CHUNK]
            with torch.no_grad():
                cn0 = conditional(cj.detach(), tp.detach(), -sg.detach(), self.bs, self.symmetric)
                x, iters = invert_cdf(cn0, uu, self.ks, self.grid_e, self.grid_x)
            self.iterations = max(self.iterations, iters)
            if self.grad:  # F(x; psi, sig) = u => dx = -dF|_x / density
                cn = conditional(cj, tp, -sg, self.bs, self.symmetric)
                fx, px = cdf_and_density(cn, x, self.ks)
                x = x - (fx - fx.detach()) / px.detach()
            out.append(x)
        return torch.cat(out)

    def angles(self, uni: torch.Tensor) -> torch.Tensor:
        """All ``V`` plaquette angles ``[n, V]`` in site order from ``V - 1`` uniforms per
        sample (``uni[V - 1, n]``); the root is all ``V`` plaquettes with sum 0."""
        n, v, dev = uni.shape[1], uni.shape[0] + 1, uni.device
        nodes, sig = [(0, v)], torch.zeros((n, 1), dtype=torch.float64, device=dev)
        leaf_at, leaf_val, k_u = [], [], 0
        while nodes:
            leaves = [i for i, (_, m) in enumerate(nodes) if m == 1]
            if leaves:
                leaf_at += [nodes[i][0] for i in leaves]
                leaf_val.append(sig[:, leaves])
            groups: dict[int, list[int]] = {}
            for i, (_, m) in enumerate(nodes):
                if m > 1:
                    groups.setdefault(m, []).append(i)
            new_nodes, new_sig = [], []
            for m, idx in groups.items():
                m1, g = m // 2, len(idx)
                sg = sig[:, idx]  # [n, g]
                x = self.draw(sg.reshape(-1), uni[k_u:k_u + g].T.reshape(-1), m1, m - m1)
                x = x.reshape(n, g)
                k_u += g
                new_sig.append(torch.stack([x, _wrap(sg - x)], 2).reshape(n, 2 * g))
                for i in idx:
                    new_nodes += [(nodes[i][0], m1), (nodes[i][0] + m1, m - m1)]
            nodes = new_nodes
            sig = torch.cat(new_sig, 1) if new_sig else sig
        order = torch.as_tensor(leaf_at, device=dev)
        return _wrap(torch.cat(leaf_val, 1)[:, torch.argsort(order)])


def _check_settings(degree: int, harmonics: int, eps: float, grid: int,
                    dtype: torch.dtype) -> None:
    if degree < 1:
        raise ValueError(f"degree: expected a positive degree of the plaquette density, got "
                         f"{degree}")
    if not 1 <= harmonics <= degree:
        raise ValueError(f"harmonics: expected 1 <= harmonics <= degree = {degree}, got "
                         f"{harmonics}")
    if not (1e-13 <= float(eps) < 1):
        raise ValueError(f"eps: expected a floor in [1e-13, 1) (smaller floors let rounding "
                         f"errors of the normalisations dominate), got {eps}")
    if grid < 4:
        raise ValueError(f"grid: expected at least 4 bracketing points, got {grid}")
    if dtype not in (torch.float64, torch.float32):
        raise ValueError(f"dtype: expected torch.float64 or torch.float32, got {dtype}")


class PlaquetteFlow(nn.Module):
    """The constrained plaquette model (1) for 2D U(1) (module docstring).

    ``degree``: ``N``, the degree of the plaquette density (2); ``harmonics``: ``K``, the number
    of learnable ``a_k``; ``symmetric``: real ``a_k`` (an even ``g``, charge-conjugation
    invariant ``q``); ``eps``: the floor of ``g``; ``grid``: bracketing points of the CDF
    inversion; ``dtype``: of the parameters (the density is evaluated in float64).
    ``sample(n, lattice, generator=, dtype=, device=) -> (U, log q)`` (reparameterised) and
    ``log_prob(U)`` (closed form (1), differentiable in the parameters); any 2D lattice (the
    density is per plaquette)."""

    differentiable_log_prob = True
    supports_path_gradient = True

    def __init__(self, degree: int = 24, harmonics: int = 4, *, symmetric: bool = True,
                 eps: float = 1e-12, grid: int = 32,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        degree, harmonics, grid = int(degree), int(harmonics), int(grid)
        _check_settings(degree, harmonics, eps, grid, dtype)
        self.group = get_group("U1")
        self.nd = 2
        self.degree, self.harmonics, self.eps, self.grid = degree, harmonics, float(eps), grid
        self.symmetric = bool(symmetric)
        # [Re, Im] of a_1 .. a_K (only Re when symmetric); zero: the uniform density, so the
        # flow starts as the Haar prior
        self.alpha = nn.Parameter(torch.zeros(1 if self.symmetric else 2, harmonics,
                                              dtype=dtype))
        self.config: dict[str, Any] = {"arch": "plaquette", "group": self.group.name, "nd": 2,
                                       "degree": degree, "harmonics": harmonics,
                                       "symmetric": self.symmetric, "eps": self.eps,
                                       "grid": grid, "dtype": str(dtype)}
        #: Newton iterations of the last :meth:`sample` (worst step), for diagnostics
        self.last_iterations = 0

    def extra_repr(self) -> str:
        return f"degree={self.degree}, harmonics={self.harmonics}, eps={self.eps:g}"

    def coefficients(self) -> torch.Tensor:
        """The normalised ``h_k`` of (2) (:func:`taylor_coefficients`)."""
        return taylor_coefficients(self.alpha, self.degree, self.symmetric)

    def fourier(self) -> torch.Tensor:
        """``c_n``, ``n = -N .. N``, of ``g`` (:func:`fourier_coefficients`)."""
        return fourier_coefficients(self.coefficients(), self.eps)

    def log_density(self, theta: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """``log g(theta)`` of (2), elementwise (with the coefficients ``h``, default
        :meth:`coefficients`)."""
        return log_plaquette_density(theta, self.coefficients() if h is None else h, self.eps)

    @torch.no_grad()
    def set_wilson(self, beta: float) -> PlaquetteFlow:
        """``a_1 = beta / 2``, the other ``a_k = 0``: ``|exp(beta z / 2)|^2 = exp(beta cos
        theta)`` on ``|z| = 1``, the Wilson weight to the truncation error (docs/flows.md).
        The exact solution that training should find, for tests and comparisons."""
        beta = float(beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a finite non-negative coupling, got {beta}")
        self.alpha.zero_()
        self.alpha[0, 0] = beta / 2
        return self

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log q(U)`` by (1), shape ``[batch]``, for any 2D U(1) field (gauge invariant;
        differentiable in the parameters)."""
        lat = Lattice.of(u)
        _, nc = lat.check_gauge(u)
        if lat.nd != 2 or nc != 1:
            raise ValueError(f"U: the plaquette flow needs a 2D U(1) field, got {lat} with "
                             f"{nc}x{nc} links")
        theta = torch.angle(plaquette_field(u, 0, 1)[..., 0, 0]).flatten(1).double()
        cpow = powers(self.fourier().to(theta.device), lat.volume)
        return log_q_of_angles(theta, cpow, self.coefficients(), self.eps).to(u.real.dtype)

    def sample(self, n: int, lattice: Lattice | Sequence[int], *,
               generator: torch.Generator | None = None, dtype: torch.dtype | None = None,
               device: torch.device | str | None = None, return_angles: bool = False,
               path_gradient: bool = False):
        """``n`` fields ``U ~ q`` on ``lattice`` and ``log q(U)`` by (1) (differentiable in the
        parameters through the samples: reparameterisation); with ``return_angles`` also the
        plaquette angles ``theta[n, t, x]`` drawn (``theta_V`` the wrapped constraint).

        ``path_gradient``: ``log q`` is evaluated with the parameters held fixed (only its
        dependence through the sample stays differentiable): the path-derivative ("sticking the
        landing") estimator of the reverse-KL gradient, arXiv:1703.09194, eq. 8, which drops
        the score term (mean zero) and so has zero variance where ``q = p``."""
        lat = lattice if isinstance(lattice, Lattice) else Lattice(lattice)
        if lat.nd != 2:
            raise ValueError(f"lattice: the plaquette flow is 2-dimensional, got {lat}")
        n = int(n)
        if n < 1:
            raise ValueError(f"n: expected a positive number of samples, got {n}")
        cdt = complex_dtype(dtype)
        rdt = torch.float64 if cdt == torch.complex128 else torch.float32
        # default: where the parameters live (a model moved to a GPU samples there)
        dev = self.alpha.device if device is None else as_device(device)
        lx, lt = lat.nrow
        v = lat.volume
        uni = torch.rand((v - 1, n), generator=generator, dtype=torch.float64, device=dev)
        phi = math.pi * (2 * torch.rand((2, n), generator=generator, dtype=torch.float64,
                                        device=dev) - 1)
        h = self.coefficients().to(dev)
        cpow = powers(fourier_coefficients(h, self.eps), v)  # [v, 2N + 1]
        tree = _SplitTree(cpow, self.grid, self.symmetric,
                          torch.is_grad_enabled() and self.alpha.requires_grad)
        theta = tree.angles(uni)
        self.last_iterations = tree.iterations
        if path_gradient:
            log_q = log_q_of_angles(theta, cpow.detach(), h.detach(), self.eps)
        else:
            log_q = log_q_of_angles(theta, cpow, h, self.eps)
        theta = theta.reshape(n, lt, lx)
        u = plaquette_field_from_angles(theta, phi, lat, generator=generator, dtype=cdt)
        if return_angles:
            return u, log_q.to(rdt), theta
        return u, log_q.to(rdt)
