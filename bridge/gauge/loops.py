"""Closed loops of a gauge field: plaquettes (with the kernels shared with the Wilson force),
staples, the clover field strength, Chroma's ``MesPlq`` and the Polyakov loop.

The plaquette traces have three kernels (native C++, all planes at once for small fields,
structure-of-arrays for large ones; docs/architecture.md) and a small cache that the Wilson force
fills as a by-product, so that the action and ``mesplq`` after a force evaluation cost nothing.
"""

from __future__ import annotations

import weakref
from typing import NamedTuple, cast

import torch

from .. import _native_gauge
from ..groups import dagger, mm, trace
from ..lattice import Lattice

__all__ = [
    "plaquette_field",
    "plaquette_traces",
    "staple",
    "plaquette_loops",
    "clover_planes",
    "clover_field_strength",
    "MesPlq",
    "mesplq",
    "seed_plaquette",
    "polyakov_loop",
    "link_trace",
]


def plaquette_field(u: torch.Tensor, mu: int, nu: int) -> torch.Tensor:
    """``P_{mu nu}(x) = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dagger U_nu(x)^dagger``, shape
    ``[batch, t, ..., x, Nc, Nc]``."""
    lat = Lattice.of(u)
    lat.check_gauge(u)
    if mu == nu:
        raise ValueError(f"nu: a plaquette needs two different directions, got mu = nu = {mu}")
    umu, unu = u[:, mu], u[:, nu]
    return mm(mm(umu, lat.shift(unu, mu)), dagger(mm(unu, lat.shift(umu, nu))))


def _plane_trace(p: torch.Tensor, nc: int) -> torch.Tensor:
    """``Re Tr P / Nc`` per site of a plaquette field ``[batch, *L, Nc, Nc]``."""
    return torch.diagonal(p, dim1=-2, dim2=-1).real.sum(-1) / nc


class _PlaneTables(NamedTuple):
    """Index tables of the all-planes-at-once plaquette kernel for one lattice and device
    (sites flattened to ``V``, planes ``p`` in :meth:`Lattice.planes` order)."""

    mu: torch.Tensor  # [P] first direction of each plane
    nu: torch.Tensor  # [P] second direction
    umu: torch.Tensor  # [P*V] into links [nd*V]: U_mu(x)
    unu: torch.Tensor  # U_nu(x)
    unu_fwd: torch.Tensor  # U_nu(x + mu)
    umu_fwd: torch.Tensor  # U_mu(x + nu)
    back_nu: torch.Tensor  # [P*V] into [P*V]: f_p(x - nu)
    back_mu: torch.Tensor  # f_p(x - mu)


_PLANE_TABLES: dict[tuple[tuple[int, ...], torch.device], _PlaneTables] = {}


def _plane_tables(lat: Lattice, device: torch.device) -> _PlaneTables:
    key = (lat.nrow, device)
    if key not in _PLANE_TABLES:
        v = lat.volume
        site = torch.arange(v, device=device).reshape(1, *lat.shape)
        fwd = [lat.shift(site, d).reshape(v) for d in range(lat.nd)]
        bwd = [lat.shift(site, d, -1).reshape(v) for d in range(lat.nd)]
        planes = lat.planes()
        mus = [m for m, _ in planes]
        nus = [n for _, n in planes]
        ar = torch.arange(v, device=device)

        def cat(parts):
            return torch.cat(parts).contiguous()

        _PLANE_TABLES[key] = _PlaneTables(
            mu=torch.tensor(mus, device=device),
            nu=torch.tensor(nus, device=device),
            umu=cat([m * v + ar for m in mus]),
            unu=cat([n * v + ar for n in nus]),
            unu_fwd=cat([n * v + fwd[m] for m, n in planes]),
            umu_fwd=cat([m * v + fwd[n] for m, n in planes]),
            back_nu=cat([p * v + bwd[n] for p, (_, n) in enumerate(planes)]),
            back_mu=cat([p * v + bwd[m] for p, (m, _) in enumerate(planes)]),
        )
    return _PLANE_TABLES[key]


_ALL_PLANES_MAX_SITES = 512
"""Fields with at most this many sites (times the batch) build all planes in one set of batched
products (small fields are bound by the fixed cost per call); larger ones go plane by plane in
the structure-of-arrays layout (measured crossover: docs/architecture.md)."""


def _use_all_planes(u: torch.Tensor, lat: Lattice) -> bool:
    return int(u.shape[0]) * lat.volume <= _ALL_PLANES_MAX_SITES


def _all_plaquettes(u: torch.Tensor, lat: Lattice, tab: _PlaneTables):
    """``(P, U_mu, U_nu)`` for all planes at once, each ``[batch, n_planes * V, Nc, Nc]``
    (``P = U_mu(x) U_nu(x+mu) [U_nu(x) U_mu(x+nu)]^dagger``)."""
    b, n = int(u.shape[0]), int(u.shape[-1])
    links = u.reshape(b, lat.nd * lat.volume, n, n)
    umu = links.index_select(1, tab.umu)
    unu = links.index_select(1, tab.unu)
    a = mm(umu, links.index_select(1, tab.unu_fwd))
    bm = mm(unu, links.index_select(1, tab.umu_fwd))
    return mm(a, dagger(bm)), umu, unu


def _all_plane_traces(p: torch.Tensor, lat: Lattice, nc: int) -> torch.Tensor:
    b = int(p.shape[0])
    return _plane_trace(p, nc).reshape(b, len(lat.planes()), *lat.shape)


# -- native kernel (bridge/_native_gauge.py) ------------------------------------------------------
_NATIVE_TABLES: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}


def _native_tables(lat: Lattice) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(fwd, bwd, plane)`` of the native kernel: ``fwd[d, x]`` / ``bwd[d, x]`` the flattened
    site ``x +/- d`` (int64 ``[Nd, V]``), ``plane[mu * Nd + nu]`` the index of the plane
    ``(mu, nu)`` in :meth:`Lattice.planes` order (-1 elsewhere)."""
    key = lat.nrow
    if key not in _NATIVE_TABLES:
        v = lat.volume
        site = torch.arange(v).reshape(1, *lat.shape)
        fwd = torch.stack([lat.shift(site, d).reshape(v) for d in range(lat.nd)]).contiguous()
        bwd = torch.stack([lat.shift(site, d, -1).reshape(v) for d in range(lat.nd)]).contiguous()
        plane = torch.full((lat.nd * lat.nd,), -1, dtype=torch.int64)
        for i, (mu, nu) in enumerate(lat.planes()):
            plane[mu * lat.nd + nu] = i
        _NATIVE_TABLES[key] = (fwd, bwd, plane)
    return _NATIVE_TABLES[key]


# -- structure-of-arrays kernels (larger fields) ---------------------------------------------------
# Colour matrices with the colour indices first, ``f[a, b, batch, ...sites]``: a product is Nc
# whole-field multiply(-adds) over contiguous site vectors (vectorised, faster on the CPU than
# ``matmul`` on batches of 3x3 blocks, which runs a small loop per block).
def _to_soa(u: torch.Tensor) -> torch.Tensor:
    """``[batch, ..., Nc, Nc] -> [Nc, Nc, batch, ...]`` (contiguous copy)."""
    d = u.dim()
    return u.permute(d - 2, d - 1, *range(d - 2)).contiguous()


def _from_soa(f: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_to_soa` (contiguous copy)."""
    d = f.dim()
    return f.permute(*range(2, d), 0, 1).contiguous()


def _mm_soa(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``C[i, k] = sum_j A[i, j] B[j, k]`` for fields ``[Nc, Nc, ...]`` (broadcasting)."""
    c = a[:, 0:1] * b[0:1]
    for j in range(1, int(a.shape[1])):
        c.addcmul_(a[:, j:j + 1], b[j:j + 1])
    return c


def _plane_plaquette_soa(lat: Lattice, us: torch.Tensor, uds: torch.Tensor, mu: int,
                         nu: int) -> torch.Tensor:
    """:func:`_plane_plaquette` in the SoA layout: ``us[a, b, batch, mu, *L]`` and its daggered
    copy ``uds``; lattice axis ``d`` of a one-direction field is tensor axis ``3 + axis(d)``."""
    ax_mu, ax_nu = 3 + lat.axis(mu), 3 + lat.axis(nu)
    umu, unu = us[:, :, :, mu], us[:, :, :, nu]
    a = _mm_soa(umu, torch.roll(unu, -1, ax_mu))
    bd = _mm_soa(torch.roll(uds[:, :, :, mu], -1, ax_nu), uds[:, :, :, nu])
    return _mm_soa(a, bd)


def _plane_trace_soa(p: torch.Tensor, nc: int) -> torch.Tensor:
    tr = p[0, 0].real.clone()
    for i in range(1, nc):
        tr.add_(p[i, i].real)
    return tr / nc


def _daggered_soa(us: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(us).copy_(us.transpose(0, 1).conj())


def _plane_traces_soa(u: torch.Tensor, lat: Lattice, nc: int) -> torch.Tensor:
    us = _to_soa(u)
    uds = _daggered_soa(us)
    return torch.stack([_plane_trace_soa(_plane_plaquette_soa(lat, us, uds, mu, nu), nc)
                        for mu, nu in lat.planes()], dim=1)


# A few plaquette-trace fields [batch, n_planes, *L] of recently seen gauge fields, keyed by the
# tensor's identity (weak reference) and version counter, so that an in-place change or a new
# tensor never hits a stale entry.  The Wilson force fills it as a by-product (the plaquettes it
# builds anyway), so the action and ``mesplq`` at the end of an MD trajectory cost nothing.
_TRACE_CACHE: list[tuple[weakref.ref, int, torch.Tensor]] = []
_TRACE_CACHE_SIZE = 4


def _cached_traces(u: torch.Tensor) -> torch.Tensor | None:
    if u.requires_grad:
        return None
    for ref, version, tr in _TRACE_CACHE:
        if ref() is u and version == u._version:
            return tr
    return None


def _cache_traces(u: torch.Tensor, tr: torch.Tensor) -> None:
    if u.requires_grad or tr.requires_grad:
        return
    _TRACE_CACHE[:] = [e for e in _TRACE_CACHE if e[0]() is not None and e[0]() is not u]
    _TRACE_CACHE.append((weakref.ref(u), u._version, tr))
    del _TRACE_CACHE[:-_TRACE_CACHE_SIZE]


def plaquette_traces(u: torch.Tensor) -> torch.Tensor:
    """``Re Tr P_{mu nu}(x) / Nc`` for every plane in :meth:`Lattice.planes` order, shape
    ``[batch, n_planes, t, ..., x]``.  Three products per plane (``P = A B^dagger``), with
    exactly the arithmetic of :func:`wilson_force`'s kernels, whose traces are reused (no product
    at all) when the force has just been evaluated on the same, unmodified tensor.  On the CPU
    the native kernel computes them when it is available (see :func:`wilson_force`)."""
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    cached = _cached_traces(u)
    if cached is not None:
        return cached.clone()
    if _native_gauge.usable(u):
        b = int(u.shape[0])
        tr = _native_gauge.traces(u.contiguous().view(b, lat.nd, lat.volume, nc, nc),
                                  *_native_tables(lat)).view(b, -1, *lat.shape)
    elif _use_all_planes(u, lat):
        p, _, _ = _all_plaquettes(u, lat, _plane_tables(lat, u.device))
        tr = _all_plane_traces(p, lat, nc)
    else:
        tr = _plane_traces_soa(u, lat, nc)
    _cache_traces(u, tr)
    return tr.clone()


def staple(u: torch.Tensor, mu: int) -> torch.Tensor:
    """Sum of the ``2(Nd-1)`` staples ``A_mu(x)`` such that ``Re Tr[U_mu(x) A_mu(x)]`` is the sum
    of the real traces of all plaquettes containing ``U_mu(x)``::

        A_mu(x) = sum_{nu != mu} U_nu(x+mu) U_mu(x+nu)^dagger U_nu(x)^dagger
                               + U_nu(x+mu-nu)^dagger U_mu(x-nu)^dagger U_nu(x-nu)
    """
    lat = Lattice.of(u)
    lat.check_gauge(u)
    umu = u[:, mu]
    total = torch.zeros_like(umu)
    for nu in range(lat.nd):
        if nu == mu:
            continue
        unu = u[:, nu]
        unu_xmu = lat.shift(unu, mu)
        total = total + mm(unu_xmu, dagger(mm(unu, lat.shift(umu, nu))))
        # lower staple, built at x - nu and shifted back: U_nu(y+mu)^dag U_mu(y)^dag U_nu(y), y=x-nu
        low = mm(dagger(mm(umu, unu_xmu)), unu)
        total = total + lat.shift(low, nu, -1)
    return total


def plaquette_loops(u: torch.Tensor) -> torch.Tensor:
    """For every link ``U_mu(x)``, the sum ``U_mu(x) A_mu(x)`` of the ``2(Nd-1)`` plaquette loops
    that start with that link, shape like ``U``.

    Built plane by plane from ``P = P_{mu nu}(x)`` with 7 colour products per plane instead of the
    12 of four staples: the loops starting with ``U_mu(x)`` are ``P(x)`` and
    ``U_nu(y)^dag P(y)^dag U_nu(y)`` at ``y = x - nu``; those starting with ``U_nu(x)`` are
    ``P(x)^dag`` and ``U_mu(z)^dag P(z) U_mu(z)`` at ``z = x - mu``.
    """
    lat = Lattice.of(u)
    lat.check_gauge(u)
    loops = [torch.zeros_like(u[:, mu]) for mu in range(lat.nd)]
    for mu, nu in lat.planes():
        umu, unu = u[:, mu], u[:, nu]
        p = mm(mm(umu, lat.shift(unu, mu)), dagger(mm(unu, lat.shift(umu, nu))))
        pd = dagger(p)
        loops[mu] = loops[mu] + p + lat.shift(mm(dagger(unu), mm(pd, unu)), nu, -1)
        loops[nu] = loops[nu] + pd + lat.shift(mm(dagger(umu), mm(p, umu)), mu, -1)
    return torch.stack(loops, dim=1)


# -- clover field strength ------------------------------------------------------------------------
def clover_planes(nd: int) -> list[tuple[int, int]]:
    """Planes ``(mu, nu)``, ``mu < nu``, in the order of :func:`clover_field_strength`
    (Chroma's ``mesField`` order for Nd = 4: 01, 02, 03, 12, 13, 23)."""
    if int(nd) != nd or nd < 2:
        raise ValueError(f"nd: expected an integer number of dimensions >= 2, got {nd!r}")
    return [(mu, nu) for mu in range(nd) for nu in range(mu + 1, nd)]


def _clover_leaves(u: torch.Tensor, lat: Lattice, mu: int, nu: int) -> torch.Tensor:
    """``Q_{mu nu}(x) = L_1 + L_2 + L_3 + L_4`` (see :func:`clover_field_strength`),
    ``[batch, *L, N, N]``.

    Built from two products per plane: ``a = U_mu(x) U_nu(x+mu)``, ``b = U_nu(x) U_mu(x+nu)``
    (``L_1 = a b^dag``, ``L_3(x + mu + nu) = b^dag a``) and ``c = U_nu(x)^dag U_mu(x)``,
    ``d = U_mu(x+nu) U_nu(x+mu)^dag`` (``L_4(x + nu) = c d^dag``, ``L_2(x + mu) = d^dag c``).
    """
    umu, unu = u[:, mu], u[:, nu]
    unu_xmu = lat.shift(unu, mu)
    umu_xnu = lat.shift(umu, nu)
    a = mm(umu, unu_xmu)
    b = mm(unu, umu_xnu)
    q = mm(a, dagger(b))
    q = q + lat.shift(lat.shift(mm(dagger(b), a), nu, -1), mu, -1)
    c = mm(dagger(unu), umu)
    d = mm(umu_xnu, dagger(unu_xmu))
    q = q + lat.shift(mm(c, dagger(d)), nu, -1)
    q = q + lat.shift(mm(dagger(d), c), mu, -1)
    return q


def clover_field_strength(u: torch.Tensor, *, traceless: bool = False) -> torch.Tensor:
    """Clover field strength ``F_{mu nu}(x) = (Q - Q^dag)/8`` for all planes of
    :func:`clover_planes`, shape ``[batch, n_planes, *lattice, N, N]`` (any Nd >= 2).

    ``Q_{mu nu}(x)`` is the sum of the four plaquettes ("leaves") with corner ``x`` in the
    ``mu nu`` plane, each a closed loop from ``x`` running mu-then-nu (counter-clockwise)::

        L_1 = U_mu(x) U_nu(x+mu) U_mu(x+nu)^dag U_nu(x)^dag
        L_2 = U_nu(x) U_mu(x-mu+nu)^dag U_nu(x-mu)^dag U_mu(x-mu)
        L_3 = U_mu(x-mu)^dag U_nu(x-mu-nu)^dag U_mu(x-mu-nu) U_nu(x-nu)
        L_4 = U_nu(x-nu)^dag U_mu(x-nu) U_nu(x-nu+mu) U_mu(x)^dag

    ``F`` is anti-Hermitian and ``a^2 g F_{mu nu}`` to leading order.  ``traceless=False`` is
    exactly Chroma's ``mesField`` (used by its clover term, ``QACTDEN`` and ``WILSON_FLOW``);
    ``True`` removes ``Tr F / N`` for SU(N).  Differentiable (the clover force uses autograd).
    """
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    out = []
    for mu, nu in clover_planes(lat.nd):
        q = _clover_leaves(u, lat, mu, nu)
        out.append((q - dagger(q)) * 0.125)
    f = torch.stack(out, dim=1)
    if traceless and nc > 1:
        eye = torch.eye(nc, dtype=f.dtype, device=f.device)
        f = f - (trace(f) / nc)[..., None, None] * eye
    return f


# -- Chroma's MesPlq and the Polyakov loop ---------------------------------------------------------
class MesPlq(NamedTuple):
    """Chroma's ``MesPlq`` (``lib/meas/glue/mesplq.cc``), per configuration (tensors ``[batch]``).

    ``w_plaq``: average over all planes of ``Re Tr P / Nc``; ``s_plaq``: over the space-space
    planes (``None`` in 2D, which has none); ``t_plaq``: over the planes containing time;
    ``planes``: ``{(mu, nu): value}`` for ``mu < nu`` (Chroma's ``plane_{mu}{nu}_plaq``);
    ``link``: ``sum Re Tr U / (V Nd Nc)``.
    """

    w_plaq: torch.Tensor
    s_plaq: torch.Tensor | None
    t_plaq: torch.Tensor
    planes: dict[tuple[int, int], torch.Tensor]
    link: torch.Tensor


def link_trace(u: torch.Tensor) -> torch.Tensor:
    """``sum_{x,mu} Re Tr U_mu(x) / (V Nd Nc)`` per configuration."""
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    return trace(u).real.reshape(b, -1).mean(1) / nc


def mesplq(u: torch.Tensor) -> MesPlq:
    """Chroma's plaquette observables (see :class:`MesPlq`).  Unit field: all equal to 1."""
    lat = Lattice.of(u)
    tr = plaquette_traces(u).flatten(2).mean(2)  # [batch, n_planes]
    planes = {p: tr[:, i] for i, p in enumerate(lat.planes())}
    tdir = lat.nd - 1
    t_idx = [i for i, (_, nu) in enumerate(lat.planes()) if nu == tdir]
    s_idx = [i for i, (_, nu) in enumerate(lat.planes()) if nu != tdir]
    return MesPlq(
        w_plaq=tr.mean(1),
        s_plaq=tr[:, s_idx].mean(1) if s_idx else None,
        t_plaq=tr[:, t_idx].mean(1),
        planes=planes,
        link=link_trace(u),
    )


def seed_plaquette(u: torch.Tensor) -> torch.Tensor:
    """The plaquette of arXiv:2208.03832: ``(1/(Nc V)) sum_x sum_{mu<nu} Re Tr P_{mu nu}(x)``,
    i.e. ``Nd (Nd-1)/2 * w_plaq`` (6 w_plaq in 4D)."""
    return plaquette_traces(u).flatten(2).mean(2).sum(1)


def _line_product(link: torch.Tensor, lat: Lattice, mu: int, n: int) -> torch.Tensor:
    """``prod_{k<n} U_mu(x + k mu)`` at every ``x``, in order, by doubling: blocks of length
    ``2^j`` (``B_{j+1}(x) = B_j(x) B_j(x + 2^j mu)``) combined along the binary digits of ``n``,
    ~``2 log2 n`` products and shifts instead of ``n - 1`` each."""
    if n < 1:
        raise ValueError(f"n: expected a number of links >= 1, got {n}")
    out: torch.Tensor | None = None
    block, length, offset = link, 1, 0
    while n:
        if n & 1:
            piece = lat.shift(block, mu, offset) if offset else block
            out = piece if out is None else mm(out, piece)
            offset += length
        n >>= 1
        if n:
            block = mm(block, lat.shift(block, mu, length))
            length *= 2
    return cast(torch.Tensor, out)  # set at the lowest binary digit of n >= 1


def polyakov_loop(
    u: torch.Tensor, mu: int | None = None, normalisation: str = "chroma"
) -> torch.Tensor:
    """Polyakov loop in direction ``mu`` (default: time, ``Nd - 1``), complex, shape ``[batch]``.

    ``normalisation="chroma"``: ``sum_x Tr(prod_k U_mu(x + k mu)) / (Nc V)`` as Chroma's
    ``polylp``; ``normalisation="seed"``: ``(1/V_perp) sum_{x_perp} Tr prod U_mu``, no ``1/Nc``
    (arXiv:2208.03832).  They differ by the factor Nc.
    """
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    mu = lat.nd - 1 if mu is None else mu
    lat._check_mu(mu)
    if normalisation not in ("chroma", "seed"):
        raise ValueError(
            f"normalisation: expected 'chroma' or 'seed', got {normalisation!r}"
        )
    line = _line_product(u[:, mu], lat, mu, lat.nrow[mu])
    mean_tr = trace(line).reshape(b, -1).mean(1)  # = (1/V) sum_x Tr = (1/V_perp) sum_perp Tr
    return mean_tr / nc if normalisation == "chroma" else mean_tr
