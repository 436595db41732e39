"""Exact results used to validate samplers: 2D U(1) and SU(2) Wilson gauge theory on a periodic
torus (SU(2): the functions ``su2_*`` at the end).

With V = L_x L_t plaquettes on a periodic torus, the partition function is the character expansion
``Z = sum_n I_n(beta)^V`` (e.g. Kovacs & Zeitlin / Bonati & Rossi, arXiv:1901.09830, eq. 2.4), so

    <cos P> = sum_n I_n^{V-1} I_n' / sum_n I_n^V,       I_n' = (I_{n-1} + I_{n+1}) / 2.

With the geometric charge ``Q = sum_p arg(P_p) / (2 pi)`` and a theta term,
``Z(theta) = sum_n F(n + theta/(2 pi))^V`` with ``F(nu) = int_{-pi}^{pi} dphi e^{beta cos phi}
cos(nu phi)``, and ``chi_t = <Q^2>/V = -(1/V) d^2 ln Z / d theta^2 |_0``.
Infinite volume: ``<cos P> = I_1(beta)/I_0(beta)`` and ``chi_t = <phi^2>/(4 pi^2)`` with
``phi ~ exp(beta cos phi)``.  Values are checked against ``../shared/reference/README.md``.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["u1_2d_plaquette", "u1_2d_topological_susceptibility",
           "u1_2d_topological_susceptibility_infinite", "bessel_i",
           "su2_plaquette_log_z", "su2_2d_log_z", "su2_2d_plaquette"]

_NODES, _WEIGHTS = np.polynomial.legendre.leggauss(400)
_PHI = math.pi * _NODES  # Gauss-Legendre on (-pi, pi): exponentially convergent, analytic integrand
_W = math.pi * _WEIGHTS


def bessel_i(n: np.ndarray | int, beta: float, scaled: bool = True) -> np.ndarray:
    """Modified Bessel ``I_n(beta)`` (times ``exp(-beta)`` when ``scaled``), integer n, by the
    integral ``(1/pi) int_0^pi exp(beta cos t) cos(n t) dt``."""
    n = np.atleast_1d(np.asarray(n, dtype=float))
    w = np.exp(beta * (np.cos(_PHI) - (1.0 if scaled else 0.0)))
    return (w[None, :] * np.cos(n[:, None] * _PHI[None, :])) @ _W / (2 * math.pi)


def _check(beta: float, nrow) -> int:
    if not (math.isfinite(beta) and beta >= 0):
        raise ValueError(f"beta: expected a finite non-negative coupling, got {beta}")
    if isinstance(nrow, int):
        nrow = (nrow, nrow)
    if len(nrow) != 2 or any(int(n) < 1 for n in nrow):
        raise ValueError(f"nrow: expected two positive extents (Lx, Lt), got {nrow}")
    return int(nrow[0]) * int(nrow[1])


def u1_2d_plaquette(beta: float, nrow: int | tuple[int, int], nmax: int = 60) -> float:
    """Exact ``<cos P> = <Re P>`` of 2D U(1) Wilson theory on a periodic ``Lx x Lt`` torus
    (``nrow`` may be a single L for L x L)."""
    v = _check(beta, nrow)
    n = np.arange(-nmax, nmax + 1)
    i = bessel_i(n, beta)
    ip = 0.5 * (bessel_i(n - 1, beta) + bessel_i(n + 1, beta))
    r = i / i[nmax]  # I_n / I_0 <= 1: no overflow in the V-th power
    rp = ip / i[nmax]
    return float(np.sum(r ** (v - 1) * rp) / np.sum(r**v))


def u1_2d_topological_susceptibility(
    beta: float, nrow: int | tuple[int, int], nmax: int = 60
) -> float:
    """Exact ``chi_t = <Q^2>/V`` of 2D U(1) with the geometric charge, on a periodic torus."""
    v = _check(beta, nrow)
    n = np.arange(-nmax, nmax + 1, dtype=float)
    w = np.exp(beta * (np.cos(_PHI) - 1.0)) * _W
    cos_, sin_ = np.cos(n[:, None] * _PHI), np.sin(n[:, None] * _PHI)
    f = cos_ @ w
    f2 = -(cos_ * _PHI**2) @ w  # d^2 F / d nu^2
    f1 = -(sin_ * _PHI) @ w  # d F / d nu
    r = f / f[nmax]
    # Z'' / Z with d/dtheta = (1/2pi) d/dnu; Z'(0) = 0 by n -> -n symmetry
    zpp = np.sum(v * (v - 1) * r ** (v - 2) * (f1 / f[nmax]) ** 2 + v * r ** (v - 1) * f2 / f[nmax])
    z = np.sum(r**v)
    return float(-(zpp / z) / (2 * math.pi) ** 2 / v)


def u1_2d_topological_susceptibility_infinite(beta: float) -> float:
    """Exact ``chi_t a^2`` of 2D U(1) Wilson theory in infinite volume (geometric charge):
    ``<phi^2> / (4 pi^2)`` with ``phi ~ exp(beta cos phi)`` on ``(-pi, pi]`` (the ``V -> oo``
    limit of :func:`u1_2d_topological_susceptibility`, where the ``n = 0`` character dominates).
    Its continuum limit ``1 / (4 pi^2 beta)`` (``beta = 1 / (e^2 a^2)``, ``chi_t = e^2 / (4
    pi^2)``) makes ``(chi_t a^2)^(-1/2)`` the inverse lattice spacing in units of
    ``sqrt(chi_t)``."""
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite positive coupling, got {beta}")
    w = np.exp(beta * (np.cos(_PHI) - 1.0)) * _W
    return float((w @ _PHI**2) / w.sum() / (2 * math.pi) ** 2)


# -- 2D SU(2) -------------------------------------------------------------------------------------
# With S = beta sum_p (1 - Re Tr P / 2), one plaquette's character coefficients are
# a_n = int dU exp(-beta (1 - Tr U / 2)) chi_j(U) / d_j = (2 / beta) e^{-beta} I_n(beta), n = 2j + 1
# (Haar measure (2/pi) sin^2 t dt, chi_j = sin(n t) / sin t, and I_{n-1} - I_{n+1} = 2n I_n / beta),
# and a closed surface of Euler characteristic 0 (the torus) has Z = sum_j a_{2j+1}^V (Drouffe &
# Zuber, Phys. Rep. 102 (1983) 1, sec. 3).  <Re Tr P / 2> = sum_j a_n^(V-1) b_n / sum_j a_n^V with
# b_n = int dU (Tr U / 2) e^{-beta (1 - Tr U / 2)} chi_j / d_j = e^{-beta} d/dbeta[(2/beta) I_n]
#     = (2 / beta) e^{-beta} ((I_{n-1} + I_{n+1}) / 2 - I_n / beta).
def _su2_coefficients(beta: float, jmax: int) -> tuple[np.ndarray, np.ndarray]:
    if not (math.isfinite(beta) and beta > 0):
        raise ValueError(f"beta: expected a finite positive coupling, got {beta}")
    n = np.arange(1, 2 * jmax + 2, 2)
    i, im, ip = bessel_i(n, beta), bessel_i(n - 1, beta), bessel_i(n + 1, beta)
    a = 2.0 / beta * i
    da = 2.0 / beta * (0.5 * (im + ip) - i / beta)  # b_n (comment above)
    return a, da


def su2_plaquette_log_z(beta: float) -> float:
    """``ln int dU exp(-beta (1 - Re Tr U / 2))`` (one free plaquette, Haar measure)."""
    a, _ = _su2_coefficients(beta, 0)
    return float(np.log(a[0]))


def su2_2d_log_z(beta: float, nrow: int | tuple[int, int], jmax: int = 40) -> float:
    """Exact ``ln Z`` of 2D SU(2) Wilson theory (``S = beta sum_p (1 - Re Tr P / 2)``) on a
    periodic ``Lx x Lt`` torus."""
    v = _check(beta, nrow)
    a, _ = _su2_coefficients(beta, jmax)
    return float(v * np.log(a[0]) + np.log(np.sum((a / a[0]) ** v)))


def su2_2d_plaquette(beta: float, nrow: int | tuple[int, int], jmax: int = 40) -> float:
    """Exact ``<Re Tr P / 2>`` of 2D SU(2) Wilson theory on a periodic ``Lx x Lt`` torus."""
    v = _check(beta, nrow)
    a, da = _su2_coefficients(beta, jmax)
    r, dr = a / a[0], da / a[0]
    return float(np.sum(r ** (v - 1) * dr) / np.sum(r**v))
