"""A trained flow for 2D U(1) that models the plaquettes with the exact torus constraint: a
learned single-plaquette density ``g`` (band-limited and non-negative by construction), sampled
autoregressively with the global constraint ``prod_p P_p = 1`` built in.

Why.  On the periodic torus the Wilson weight ``prod_p exp(beta cos theta_p)`` would make the
plaquettes independent but for one constraint, ``sum_p theta_p = 0 mod 2 pi`` (every link enters
two plaquettes, once conjugated); the topological charge lives in how the angles wrap around that
constraint.  Local coupling layers see it only through their receptive field (our 8x8, beta = 2
models stop at ESS ~0.3), and a proposal with independent plaquettes and the last one fixed by the
constraint (:class:`~bridge.flows.analytic.U1PlaquetteProposal`) is capped at ESS ``I_0(beta)^2 /
I_0(2 beta)`` (0.46 at beta = 2).  This model conditions every plaquette on the constraint
exactly, and learns the plaquette density itself.

Model.  With the plaquette angles ``theta_p`` of ``U`` (all ``V`` of them, in ``(-pi, pi]``), the
uniform holonomies and the uniform measure on each gauge orbit (the decomposition of Haar measure
derived in :mod:`bridge.flows.analytic`), the model density with respect to normalised Haar
measure on the links is

    q(U) = prod_{p=1}^{V} 2 pi g(theta_p) / (2 pi f_V(0)),                                (1)

where ``f_j`` is the density of the sum (mod 2 pi) of ``j`` independent draws of ``g``: (1) is
``prod_p g`` restricted to the constraint surface and normalised there (the ``V - 1`` free angles
have density ``prod_{p} g(theta_p) / f_V(0)`` with respect to ``d theta_1 .. d theta_{V-1}``,
``theta_V = -sum`` of the others, and each normalised Haar factor is ``d theta / 2 pi``).  (1) is
translation and gauge invariant and depends on no ordering of the plaquettes.  For ``g ~
exp(beta cos theta)`` it *is* the Wilson weight (module :mod:`bridge.flows.analytic`), so the
family contains the target; so does it for any plaquette action ``s(theta)`` that is a
trigonometric polynomial of degree ``<= K`` (``harmonics``), up to the truncation below.

The plaquette density (Fejer-Riesz).  ``H(theta) = sum_{k=0}^{N} h_k e^{i k theta}`` with complex
``h`` normalised to ``sum_k |h_k|^2 = 1``, and

    g(theta) = [(1 - eps) |H(theta)|^2 + eps] / (2 pi),                                  (2)

a trigonometric polynomial of degree ``N`` that is non-negative for every ``h`` (every
non-negative trigonometric polynomial is ``|H|^2`` for some ``H``, Fejer-Riesz theorem; the
parameterisation below reaches a subset of them), normalised (Parseval), and bounded below by
``eps / 2 pi`` (``eps = 1e-12``: log densities stay finite).  Its Fourier coefficients,
``g(theta) = (1 / 2 pi) sum_{|n| <= N} c_n e^{i n theta}``, are ``c_0 = 1`` and ``c_n = (1 - eps)
sum_k h_{k+n} conj(h_k)`` (``c_{-n} = conj(c_n)``), and ``f_j`` has coefficients ``c_n^j``
(``c_n = E[e^{-i n theta}]``; characteristic functions of independent summands multiply).  The
Wilson weight is ``|exp(beta e^{i theta} / 2)|^2 = exp(beta cos theta)``, so ``h_k ~ (beta /
2)^k / k!`` truncated at ``N`` (:meth:`PlaquetteFlow.set_wilson`) reproduces it to a relative
``~2 e^{beta / 2} (beta / 2)^{N+1} / (N+1)!`` (worst at ``theta = pi``; measured: 3e-14 for
``N = 16`` at beta = 2, 4e-12 for ``N = 24`` at beta = 6), on top of which the floor changes
``log g`` by ``eps / (2 pi g)`` at the minimum of ``g`` (2e-11 at beta = 2, 3e-8 at beta = 6).
``eps >= 1e-13`` is required: the normalisations ``sum_n c_n^j = 2 pi f_j`` carry rounding
errors of ~``(2N + 1) 1e-16``, which the floor keeps relatively small.

Sequential view.  Drawn in the order ``p = t L_x + x``, the free angles would have the exact
conditionals (``s`` the sum of the angles drawn so far, ``j = V - p`` angles still to come, the
last one fixed by the constraint)

    q(theta | s) = g(theta) f_j(-s - theta) / f_{j+1}(-s),                                (3)

whose product over ``p`` telescopes to (1) (``f_1 = g``).  The sampler uses the same idea on a
binary tree, which needs ``ceil(log2 V)`` sequential rounds instead of ``V - 1``.

Sampling (the flow): the split tree.  A node is a block of ``m`` consecutive plaquettes (in the
order ``p = t L_x + x``) whose angles must sum to ``sigma`` (mod 2 pi); the root is all ``V``
with ``sigma = 0``.  A node splits into its first ``m1 = floor(m / 2)`` and last ``m2 = m - m1``
plaquettes; the left sum ``x`` is drawn from

    q(x | sigma) = f_{m1}(x) f_{m2}(sigma - x) / f_m(sigma),                              (5)

the children get the sums ``x`` and ``sigma - x``, and a leaf's sum is its angle.  The product
of (5) over the ``V - 1`` splits telescopes to ``prod_p g(theta_p) / f_V(0)``, i.e. (1) (the map
from the split sums to the free angles is an integer matrix of determinant 1), so samples and
:meth:`log_prob` agree exactly; (3) is the special case ``m1 = 1`` of (5).  All nodes of one
level are drawn in one batched call.  (5) is a trigonometric polynomial of degree ``2 N`` with
coefficients ``C_k = sum_b c_{b+k}^{m1} c_b^{m2} e^{i b sigma}`` (times ``1 / 4 pi^2``), so its
CDF is analytic:

    F(x) = (x + pi) / (2 pi) + (1 / pi) Re sum_{k=1}^{2N} (C_k / C_0)
           (e^{i k x} - (-1)^k) / (i k),                                                  (4)

inverted to machine precision by a grid bracket and safeguarded Newton steps (whose derivative
is (5) itself) from one uniform variable per split.  Reparameterisation gradients go through the
implicit function theorem: ``dx = -(dF at fixed x) / q(x | sigma)`` (with respect to the
parameters and ``sigma``).  Links are then built in a fixed gauge
(:func:`~bridge.flows.analytic.plaquette_links`) with uniform holonomies, and a Haar-random gauge
transformation is applied; the reported ``log q`` is (1), the same formula as :meth:`log_prob`.

This is a specialist: 2D, U(1), periodic boundaries (where the plaquettes are the only gauge
invariants besides the holonomies); :func:`~bridge.flows.models.make_flow` refuses anything else.
Cost per sample: ``O(V N^2)`` in ``ceil(log2 V)`` sequential rounds (sampling), ``O(V N)`` and
fully parallel for :meth:`log_prob`.  Trained from the uniform density (``a = 0``: the Haar prior),
with any gradient estimator of :class:`~bridge.flows.training.Trainer` (``path`` recommended: zero
variance at the solution).
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


class PlaquetteFlow(nn.Module):
    """The constrained plaquette model of the module docstring for 2D U(1).

    ``degree``: ``N``, the degree of the plaquette density (2); ``harmonics``: ``K``, the number
    of learnable ``a_k``; ``symmetric``: real ``a_k`` (an even ``g``, charge-conjugation
    invariant ``q``); ``eps``: the floor of ``g``; ``grid``: bracketing points of the CDF
    inversion; ``dtype``: of the parameters (the density is evaluated in float64).
    ``sample(n, lattice, generator=, dtype=, device=) -> (U, log q)`` (reparameterised) and
    ``log_prob(U)`` (closed form (1), differentiable in the parameters); any 2D lattice (the
    density is per plaquette)."""

    def __init__(self, degree: int = 24, harmonics: int = 4, *, symmetric: bool = True,
                 eps: float = 1e-12, grid: int = 32,
                 dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        degree, harmonics, grid = int(degree), int(harmonics), int(grid)
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

    differentiable_log_prob = True
    supports_path_gradient = True

    def extra_repr(self) -> str:
        return f"degree={self.degree}, harmonics={self.harmonics}, eps={self.eps:g}"

    # -- the plaquette density ----------------------------------------------------------------
    def coefficients(self) -> torch.Tensor:
        """The normalised complex ``h_k``, ``k = 0 .. N``, of (2): the Taylor coefficients of
        ``exp(A(z))``, ``A(z) = sum_{k=1}^{K} a_k z^k``, by the recurrence ``n e_n = sum_k k a_k
        e_{n-k}`` (from ``E' = A' E``), truncated at ``N`` and normalised (complex128)."""
        re = self.alpha[0].double()
        a = torch.complex(re, torch.zeros_like(re) if self.symmetric else self.alpha[1].double())
        e = [torch.ones((), dtype=a.dtype, device=a.device)]
        for n in range(1, self.degree + 1):
            terms = [k * a[k - 1] * e[n - k] for k in range(1, min(n, self.harmonics) + 1)]
            e.append(torch.stack(terms).sum() / n)
        h = torch.stack(e)
        return h / torch.linalg.vector_norm(h)

    def fourier(self) -> torch.Tensor:
        """``c_n``, ``n = -N .. N`` (index ``n + N``), of ``g = (1 / 2 pi) sum c_n e^{i n
        theta}``; ``c_0 = 1``."""
        h = self.coefficients()
        n = self.degree
        pos = torch.stack([(h[k:] * h[: n + 1 - k].conj()).sum() for k in range(1, n + 1)])
        pos = (1 - self.eps) * pos
        one = torch.ones(1, dtype=pos.dtype, device=pos.device)
        return torch.cat([pos.flip(0).conj(), one, pos])

    def log_density(self, theta: torch.Tensor, h: torch.Tensor | None = None) -> torch.Tensor:
        """``log g(theta)`` of (2), elementwise (with the coefficients ``h``, default
        :meth:`coefficients`)."""
        h = (self.coefficients() if h is None else h).to(theta.device)
        k = torch.arange(self.degree + 1, device=theta.device, dtype=torch.float64)
        z = torch.polar(torch.ones_like(theta, dtype=torch.float64)[..., None],
                        theta.double()[..., None] * k)
        big_h = (z * h).sum(-1)
        return torch.log((1 - self.eps) * big_h.abs() ** 2 + self.eps) - math.log(_TWO_PI)

    @torch.no_grad()
    def set_wilson(self, beta: float) -> PlaquetteFlow:
        """``a_1 = beta / 2``, the other ``a_k = 0``: ``|exp(beta z / 2)|^2 = exp(beta cos
        theta)`` on ``|z| = 1``, the Wilson weight to the truncation error (module docstring).
        The exact solution that training should find, for tests and comparisons."""
        beta = float(beta)
        if not (math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta: expected a finite non-negative coupling, got {beta}")
        self.alpha.zero_()
        self.alpha[0, 0] = beta / 2
        return self

    def _powers(self, c: torch.Tensor, v: int) -> torch.Tensor:
        """``c_n^j`` for ``j = 1 .. v``: shape ``[v, 2N + 1]`` (row ``j - 1``)."""
        return c.expand(v, -1).cumprod(0)

    def _log_norm(self, cpow: torch.Tensor) -> torch.Tensor:
        """``log(2 pi f_V(0)) = log sum_n c_n^V`` (last row of ``cpow``)."""
        return torch.log(cpow[-1].sum().real)

    def _log_q(self, theta: torch.Tensor, cpow: torch.Tensor,
               h: torch.Tensor | None = None) -> torch.Tensor:
        """(1) for all-plaquette angles ``theta[b, V]``."""
        v = theta.shape[1]
        return (self.log_density(theta, h).sum(1) + v * math.log(_TWO_PI)
                - self._log_norm(cpow).to(theta.device))

    # -- (1): the density ------------------------------------------------------------------------
    def _lattice(self, lattice: Lattice | Sequence[int]) -> Lattice:
        lat = lattice if isinstance(lattice, Lattice) else Lattice(lattice)
        if lat.nd != 2:
            raise ValueError(f"lattice: the plaquette flow is 2-dimensional, got {lat}")
        return lat

    def log_prob(self, u: torch.Tensor) -> torch.Tensor:
        """``log q(U)`` by (1), shape ``[batch]``, for any 2D U(1) field (gauge invariant;
        differentiable in the parameters)."""
        lat = Lattice.of(u)
        _, nc = lat.check_gauge(u)
        if lat.nd != 2 or nc != 1:
            raise ValueError(f"U: the plaquette flow needs a 2D U(1) field, got {lat} with "
                             f"{nc}x{nc} links")
        theta = torch.angle(plaquette_field(u, 0, 1)[..., 0, 0]).flatten(1).double()
        cpow = self._powers(self.fourier().to(theta.device), lat.volume)
        return self._log_q(theta, cpow).to(u.real.dtype)

    # -- (3)-(5): sampling --------------------------------------------------------------------
    @staticmethod
    def _phases(x: torch.Tensor, n: int) -> torch.Tensor:
        """``e^{i k x}``, ``k = 1 .. n``, shape ``[b, n]``: one sine/cosine and a cumulative
        product (rounding grows like ``k`` ulps; 3x cheaper than ``n`` sines and cosines)."""
        z = torch.polar(torch.ones_like(x), x)
        return z[:, None].expand(-1, n).cumprod(1)

    def _cdf_and_density(self, cn: torch.Tensor, x: torch.Tensor, ks: torch.Tensor,
                         cn_ik: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(4) and its derivative at ``x[b]`` for normalised coefficients ``cn[b, k]``,
        ``k = 1 .. 2N``; ``cn_ik = cn / (i k)`` may be passed precomputed."""
        if cn_ik is None:
            cn_ik = cn / (1j * ks)
        sign = 1.0 - 2.0 * torch.remainder(ks, 2)  # (-1)^k
        e = self._phases(x, ks.numel())
        cdf = (x + math.pi) / _TWO_PI + ((cn_ik * (e - sign)).sum(1)).real / math.pi
        dens = (1.0 + 2.0 * (cn * e).sum(1).real) / _TWO_PI
        return cdf, dens

    def _conditional(self, cpow_j: torch.Tensor, toeplitz: torch.Tensor, s: torch.Tensor,
                     bs: torch.Tensor) -> torch.Tensor:
        """Normalised coefficients ``C_k / C_0``, ``k = 1 .. 2N``, shape ``[b, 2N]``, of the
        density ``prop. to f_left(x) f_j(-s - x)`` (``cpow_j`` the coefficients of ``f_j``,
        ``toeplitz`` that of ``f_left``): (3) for ``f_left = g``, (5) with ``s = -sigma``."""
        nn_ = (bs.numel() - 1) // 2
        pos = self._phases(-s, nn_)  # e^{-i b s}, b = 1 .. N
        one = torch.ones_like(pos[:, :1])
        w = cpow_j * torch.cat([pos.conj().flip(1), one, pos], 1)
        if self.symmetric:  # real c_n: two real products instead of a complex one
            t = toeplitz.real
            big_c = torch.complex(w.real @ t, w.imag @ t)  # [b, 2N + 1], k = 0 .. 2N
        else:
            big_c = w @ toeplitz
        return big_c[:, 1:] / big_c[:, :1].real

    def _invert(self, cn: torch.Tensor, u: torch.Tensor, ks: torch.Tensor,
                grid_e: torch.Tensor, grid_x: torch.Tensor, tol: float = 1e-14,
                max_iter: int = 60) -> tuple[torch.Tensor, int]:
        """``F^{-1}(u)`` of (4): bracket on the grid, then Newton steps kept inside the bracket,
        with a bisection instead when a step would leave it or when the residual did not at
        least halve (so the bracket shrinks geometrically whatever the density).  Converged
        when the residual is ``<= tol`` or the bracket is at the rounding level; after
        ``max_iter`` iterations a residual up to 1e-10 is accepted, a larger one raises."""
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
            fx, px = self._cdf_and_density(cn, x, ks, cn_ik)
            r = fx - u
            lo = torch.where(r < 0, x, lo)
            hi = torch.where(r > 0, x, hi)
            step = r / px.clamp_min(1e-300)
            xn = x - step
            bad = ((xn <= lo) | (xn >= hi) | ~torch.isfinite(xn)
                   | (r.abs() > 0.5 * r_prev.abs()))
            xn = torch.where(bad, 0.5 * (lo + hi), xn)
            done = (r.abs() <= tol) | ((hi - lo) <= 4e-16 * math.pi)
            x = torch.where(done, x, xn)
            r_prev = torch.where(bad, torch.full_like(r, math.inf), r)
            if bool(done.all()):
                return x, it
        if float(r.abs().max()) <= 1e-10:
            return x, max_iter
        raise ArithmeticError(f"plaquette flow: the conditional CDF inversion did not converge "
                              f"in {max_iter} iterations (largest residual "
                              f"{float(r.abs().max()):.3g}); expected <= {tol:g}")

    def _tables(self, dev: torch.device) -> tuple[torch.Tensor, ...]:
        """What every conditional of (3)-(5) uses: ``c_n`` (differentiable), the frequencies
        ``b = -N .. N`` and ``k = 1 .. 2N``, the bracketing grid on ``[-pi, pi]`` and the CDF
        terms ``(e^{ik x} - (-1)^k) / (ik)`` on it."""
        nn_ = self.degree
        c = self.fourier().to(dev)
        bs = torch.arange(-nn_, nn_ + 1, device=dev, dtype=torch.float64)
        ks = torch.arange(1, 2 * nn_ + 1, device=dev, dtype=torch.float64)
        grid_x = torch.linspace(-math.pi, math.pi, self.grid + 1, dtype=torch.float64,
                                device=dev)
        sign = 1.0 - 2.0 * torch.remainder(ks, 2)
        grid_e = ((torch.polar(torch.ones_like(grid_x)[None, :], ks[:, None] * grid_x[None, :])
                   - sign[:, None]) / (1j * ks[:, None]))
        return c, bs, ks, grid_x, grid_e

    def _toeplitz(self, c: torch.Tensor) -> torch.Tensor:
        """``T[b, k] = c_{b+k}`` for ``b = -N .. N``, ``k = 0 .. 2N`` (zero where ``|b + k| >
        N``) of coefficients ``c[2N + 1]``: ``w @ T`` is the correlation in (3) and (5)."""
        nn_ = self.degree
        idx = (torch.arange(2 * nn_ + 1, device=c.device)[:, None]
               + torch.arange(2 * nn_ + 1, device=c.device)[None, :])
        return torch.cat([c, torch.zeros(2 * nn_, dtype=c.dtype, device=c.device)])[idx]

    def sample(
        self,
        n: int,
        lattice: Lattice | Sequence[int],
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        return_angles: bool = False,
        path_gradient: bool = False,
    ):
        """``n`` fields ``U ~ q`` on ``lattice`` and ``log q(U)`` by (1) (differentiable in the
        parameters through the samples: reparameterisation); with ``return_angles`` also the
        plaquette angles ``theta[n, t, x]`` drawn (``theta_V`` the wrapped constraint).

        ``path_gradient``: ``log q`` is evaluated with the parameters held fixed (only its
        dependence through the sample stays differentiable): the path-derivative ("sticking the
        landing") estimator of the reverse-KL gradient, arXiv:1703.09194, eq. 8, which drops
        the score term ``grad log q_psi(U)|_U`` (mean zero) and so has zero variance where
        ``q = p``."""
        lat = self._lattice(lattice)
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
        c, bs, ks, grid_x, grid_e = self._tables(dev)
        cpow = self._powers(c, v)  # [v, 2N + 1]
        grad = torch.is_grad_enabled() and self.alpha.requires_grad
        self.last_iterations = 0

        def draw(sig: torch.Tensor, u: torch.Tensor, m1: int, m2: int) -> torch.Tensor:
            """The left sums ``x`` of nodes of size ``m1 + m2`` with sums ``sig`` (5), from the
            uniforms ``u`` (flat tensors), in chunks that bound the memory."""
            tp = self._toeplitz(cpow[m1 - 1])
            out = []
            for a in range(0, sig.numel(), _CHUNK):
                sg, uu = sig[a:a + _CHUNK], u[a:a + _CHUNK]
                with torch.no_grad():
                    cn0 = self._conditional(cpow[m2 - 1].detach(), tp.detach(), -sg.detach(), bs)
                    x, iters = self._invert(cn0, uu, ks, grid_e, grid_x)
                self.last_iterations = max(self.last_iterations, iters)
                if grad:
                    # implicit function theorem: F(x; psi, sig) = u => dx = -dF|_x / density
                    cn = self._conditional(cpow[m2 - 1], tp, -sg, bs)
                    fx, px = self._cdf_and_density(cn, x, ks)
                    x = x - (fx - fx.detach()) / px.detach()
                out.append(x)
            return torch.cat(out)

        # the split tree (module docstring): nodes (start, size) of one level, their sums
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
                x = draw(sg.reshape(-1), uni[k_u:k_u + g].T.reshape(-1), m1, m - m1).reshape(n, g)
                k_u += g
                new_sig.append(torch.stack([x, _wrap(sg - x)], 2).reshape(n, 2 * g))
                for i in idx:
                    st = nodes[i][0]
                    new_nodes += [(st, m1), (st + m1, m - m1)]
            nodes = new_nodes
            sig = torch.cat(new_sig, 1) if new_sig else sig
        order = torch.as_tensor(leaf_at, device=dev)
        theta = torch.cat(leaf_val, 1)[:, torch.argsort(order)]  # [n, V] in site order
        theta = _wrap(theta)
        if path_gradient:
            log_q = self._log_q(theta, cpow.detach(), self.coefficients().detach())
        else:
            log_q = self._log_q(theta, cpow)
        theta = theta.reshape(n, lt, lx)
        u = plaquette_field_from_angles(theta, phi, lat, generator=generator, dtype=cdt)
        if return_angles:
            return u, log_q.to(rdt), theta
        return u, log_q.to(rdt)
