"""The Wilson gauge action and its force.

Force convention (used by every action in the project): the force ``F_mu(x)`` is the algebra
element with ``d/de S(exp(e X) U) |_{e=0} = -2 sum_{x,mu} Re Tr[X_mu(x) F_mu(x)]`` for every
algebra-valued ``X``.  With the kinetic energy ``Tr P^dagger P`` the equations of motion are
``dU/dt = P U`` and ``dP/dt = -F`` (this conserves ``H = Tr P^dagger P + S`` since ``Tr(P F)`` is
real for anti-Hermitian P and F).  In components, ``F = sum_a (d_a S) T_a`` with
``T_a = i lambda_a / 2`` and ``d_a`` the left Lie derivative.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .. import _native_gauge
from ..groups import dagger, mm, project_algebra
from ..lattice import Lattice
from .fields import _group_of
from .loops import (
    _all_plane_traces,
    _all_plaquettes,
    _cache_traces,
    _daggered_soa,
    _from_soa,
    _mm_soa,
    _native_tables,
    _plane_plaquette_soa,
    _plane_tables,
    _plane_trace_soa,
    _to_soa,
    _use_all_planes,
    plaquette_loops,
    plaquette_traces,
)

__all__ = ["wilson_action", "wilson_force", "wilson_force_reference"]


def _native_coeff(u: torch.Tensor, beta: float | torch.Tensor, nc: int) -> torch.Tensor | None:
    """Per-configuration ``beta / (2 Nc)`` as float64 ``[batch]`` when the native kernel gives
    the torch path's result (a tensor ``beta`` must not need a gradient nor promote the dtype of
    the force), else None."""
    b = int(u.shape[0])
    if isinstance(beta, torch.Tensor):
        if beta.requires_grad or beta.numel() not in (1, b) or beta.is_complex():
            return None
        if torch.result_type(beta, u) != u.dtype:
            return None
        return (beta.detach().to("cpu", torch.float64).reshape(-1) / (2.0 * nc)).expand(b) \
            .contiguous()
    return torch.full((b,), float(beta) / (2.0 * nc), dtype=torch.float64)


def _wilson_force_soa(u: torch.Tensor, lat: Lattice, nc: int, special: bool, coeff):
    """:func:`wilson_force` for larger fields, plane by plane in the SoA layout (see
    :func:`wilson_force` for the algebra); the projection is elementwise on whole colour slabs."""
    us = _to_soa(u)
    uds = _daggered_soa(us)
    acc = torch.zeros_like(us)
    traces = []
    for mu, nu in lat.planes():
        ax_mu, ax_nu = 2 + lat.axis(mu), 2 + lat.axis(nu)  # axes of acc[:, :, :, d]
        p = _plane_plaquette_soa(lat, us, uds, mu, nu)
        traces.append(_plane_trace_soa(p, nc))
        amu, anu = acc[:, :, :, mu], acc[:, :, :, nu]
        x = _mm_soa(uds[:, :, :, nu], _mm_soa(p, us[:, :, :, nu]))
        y = _mm_soa(uds[:, :, :, mu], _mm_soa(p, us[:, :, :, mu]))
        _add_shifted_(amu, x, 1 + ax_nu, -1.0)
        _add_shifted_(anu, y, 1 + ax_mu, 1.0)
        amu.add_(p)
        anu.sub_(p)
    _cache_traces(u, torch.stack(traces, dim=1))
    out = _from_soa(_ta_soa_(acc, special, coeff))
    return out * coeff if isinstance(coeff, torch.Tensor) else out


def _ta_soa_(acc: torch.Tensor, special: bool, coeff) -> torch.Tensor:
    """``coeff * TA(M)`` of an SoA field ``[Nc, Nc, ...]`` (new tensor, SoA layout)."""
    nc = int(acc.shape[0])
    scale = 0.5 if isinstance(coeff, torch.Tensor) else 0.5 * float(coeff)
    out = torch.sub(acc, acc.transpose(0, 1).conj()).mul_(scale)
    if special and nc > 1:
        tr = out[0, 0].clone()
        for i in range(1, nc):
            tr.add_(out[i, i])
        tr.div_(nc)
        for i in range(nc):
            out[i, i].sub_(tr)
    return out


def _check_beta(beta: float | torch.Tensor) -> None:
    if isinstance(beta, torch.Tensor):
        if not torch.isfinite(beta).all():
            raise ValueError(f"beta: expected finite values, got {beta}")
    elif not math.isfinite(float(beta)):
        raise ValueError(f"beta: expected a finite number, got {beta!r}")


def wilson_action(u: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """``S = beta sum_x sum_{mu<nu} (1 - Re Tr P_{mu nu}(x) / Nc)`` per configuration, shape
    ``[batch]`` (real).  Chroma's ``WILSON_GAUGEACT`` drops the constant, which cancels in every
    accept/reject step.  ``beta`` may be a tensor of shape ``[batch]``."""
    _check_beta(beta)
    tr = plaquette_traces(u)
    return beta * (1.0 - tr).flatten(1).sum(1)


def _add_shifted_(acc: torch.Tensor, f: torch.Tensor, dim: int, alpha: float) -> None:
    """``acc(x) += alpha f(x - e)`` in place, ``e`` the unit step along tensor axis ``dim``
    (periodic): two slab additions, no rolled copy of ``f``."""
    n = f.shape[dim]
    if n == 1:
        acc.add_(f, alpha=alpha)
        return
    acc.narrow(dim, 1, n - 1).add_(f.narrow(dim, 0, n - 1), alpha=alpha)
    acc.narrow(dim, 0, 1).add_(f.narrow(dim, n - 1, 1), alpha=alpha)


_TA_MATRICES: dict[tuple[int, bool, torch.dtype, torch.device], torch.Tensor] = {}


def _ta_matrix(nc: int, special: bool, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The projection ``M -> TA(M)`` as a real ``(2 Nc^2) x (2 Nc^2)`` matrix acting on the
    interleaved (re, im) entries of ``M`` (row vector convention, ``t @ T``)."""
    key = (nc, special, dtype, device)
    if key not in _TA_MATRICES:
        n2 = nc * nc
        eye = torch.eye(n2, dtype=torch.complex128)
        basis = eye.reshape(n2, nc, nc)  # basis matrices E_k
        rows = []
        for k in range(n2):
            for part in (1.0, 1j):
                m = part * basis[k]
                a = 0.5 * (m - m.conj().transpose(-1, -2))
                if special and nc > 1:
                    a = a - torch.diagonal(a).sum() / nc * torch.eye(nc, dtype=a.dtype)
                rows.append(torch.view_as_real(a).reshape(2 * n2))
        _TA_MATRICES[key] = torch.stack(rows).to(dtype=dtype, device=device)
    return _TA_MATRICES[key]


def _project_algebra_gemm(m: torch.Tensor, special: bool, coeff) -> torch.Tensor:
    """``coeff * TA(m)`` (see :func:`bridge.groups.project_algebra`) as one real GEMM of the
    entries with a fixed ``18 x 18`` matrix for SU(3) (elementwise transposes of 3x3 blocks are
    much slower on the CPU)."""
    n = m.shape[-1]
    mr = torch.view_as_real(m.contiguous())
    real = mr.dtype
    t = _ta_matrix(n, special, real, m.device)
    if not isinstance(coeff, torch.Tensor):
        t = t * float(coeff)
    out = torch.view_as_complex(torch.matmul(mr.reshape(-1, 2 * n * n), t).view(mr.shape))
    # a tensor beta multiplies out of place: the dtype promotes as ``coeff * TA(m)`` did
    return out * coeff if isinstance(coeff, torch.Tensor) else out


def _force_setup(u: torch.Tensor, beta: float | torch.Tensor) -> tuple[Lattice, Any, Any]:
    """Checks of ``U`` and ``beta``; the lattice, the group and the force's ``beta / (2 Nc)``
    (shaped to broadcast against ``U`` when ``beta`` holds one value per configuration)."""
    _check_beta(beta)
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    coeff = beta / (2.0 * nc)
    if isinstance(beta, torch.Tensor) and beta.dim() > 0:
        coeff = coeff.reshape(-1, *([1] * (lat.nd + 3)))
    return lat, _group_of(u, None), coeff


def wilson_force(u: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Force of the Wilson action in the convention of this module's docstring::

        F_mu(x) = beta / (2 Nc) * TA[U_mu(x) A_mu(x)]

    Derivation: only the plaquettes containing ``U_mu(x)`` vary, ``S_link = -beta/Nc Re Tr(U A)``;
    ``d_a S = -beta/Nc Re Tr(T_a U A)`` and ``sum_a T_a Re Tr(T_a M) = -TA(M)/2`` for the
    generators normalised to ``Tr(T_a T_b) = -delta_ab/2``.  For U(1), TA is the plain
    anti-Hermitian part, ``F = i beta/2 Im(U A)``.

    Implementation (tested against :func:`wilson_force_reference`, which sums
    :func:`plaquette_loops`; the algebra and the measured kernel choice are in
    docs/architecture.md): plane by plane with 7 colour products, no loop ever daggered
    (``TA(M^dag) = -TA(M)``); the plaquette traces are left in a cache for
    :func:`wilson_action` / :func:`mesplq` on the same tensor.  CPU complex128/complex64 fields
    with ``Nc <= 3`` use the native C++ kernel of :mod:`bridge._native_gauge`
    (``QCD_BRIDGE_NATIVE=0`` or a failed build selects torch); the torch kernels build all planes
    at once up to :data:`_ALL_PLANES_MAX_SITES` sites, else plane by plane in the
    structure-of-arrays layout.
    """
    lat, group, coeff = _force_setup(u, beta)
    if u.requires_grad and torch.is_grad_enabled():
        return wilson_force_reference(u, beta)
    if _native_gauge.usable(u):
        c = _native_coeff(u, beta, group.nc)
        if c is not None:
            return _wilson_force_native(u, lat, group.nc, group.special, c)
    if _use_all_planes(u, lat):
        return _wilson_force_all_planes(u, lat, group.nc, group.special, coeff)
    return _wilson_force_soa(u, lat, group.nc, group.special, coeff)


def _wilson_force_native(u: torch.Tensor, lat: Lattice, nc: int, special: bool,
                         coeff: torch.Tensor) -> torch.Tensor:
    """:func:`wilson_force` by the native C++ kernel (one pass over the sites, staples and
    projection fused; the plaquette traces come with it and go to the cache)."""
    b = int(u.shape[0])
    f, tr = _native_gauge.force(u.contiguous().view(b, lat.nd, lat.volume, nc, nc),
                                *_native_tables(lat), coeff, special)
    _cache_traces(u, tr.view(b, -1, *lat.shape))
    return f.view(u.shape)


def _wilson_force_all_planes(u: torch.Tensor, lat: Lattice, nc: int, special: bool, coeff):
    """:func:`wilson_force` for small fields: every plane in one set of batched products, the
    backward shifts as one gather each, the accumulation as two ``index_add_``."""
    tab = _plane_tables(lat, u.device)
    b, v, nplanes = int(u.shape[0]), lat.volume, len(lat.planes())
    p, umu, unu = _all_plaquettes(u, lat, tab)
    _cache_traces(u, _all_plane_traces(p, lat, nc))
    x = mm(dagger(unu), mm(p, unu)).index_select(1, tab.back_nu)  # X(x - nu)
    y = mm(dagger(umu), mm(p, umu)).index_select(1, tab.back_mu)  # Y(x - mu)
    acc = torch.zeros(b, lat.nd, v * nc * nc, dtype=u.dtype, device=u.device)
    acc.index_add_(1, tab.mu, (p - x).view(b, nplanes, v * nc * nc))
    acc.index_add_(1, tab.nu, (y - p).view(b, nplanes, v * nc * nc))
    return _project_algebra_gemm(acc.view(u.shape), special, coeff)


def wilson_force_reference(u: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """Straightforward form of :func:`wilson_force`, ``beta/(2 Nc) TA[U A]`` with ``U A`` from
    :func:`plaquette_loops`: the fast kernels are tested against it, and it is the path when
    autograd needs the graph through ``U``."""
    lat, group, coeff = _force_setup(u, beta)
    return coeff * project_algebra(plaquette_loops(u), group)
