"""Cabibbo-Marinari pseudo-heatbath and overrelaxation for SU(2) and SU(3) Wilson gauge theory.

The local action of a link is ``S(U) = -(beta/N) Re Tr[U A] + const`` with ``A`` the sum of the
``2(Nd-1)`` staples (:func:`bridge.gauge.staple`).  A link update multiplies ``U`` from the left
by an element ``x`` of an SU(2) subgroup (rows/columns ``(i, j)``); only the quaternion
projection ``w = k V`` (``k >= 0``, ``V`` in SU(2)) of the ``(i, j)`` block of ``W = U A``
matters, ``Re Tr[x W] = k Re Tr[x V] + const``.

* Heatbath (Creutz, Phys. Rev. D21 (1980) 2308; SU(N) by Cabibbo & Marinari, Phys. Lett. B119
  (1982) 387): draw ``y = x V`` from ``dHaar(y) exp(alpha y_0)``, ``alpha = 2 beta k / N``
  (``Re Tr y = 2 y_0``), i.e. ``y_0`` from ``sqrt(1 - y_0^2) exp(alpha y_0)`` on ``[-1, 1]`` and
  ``(y_1, y_2, y_3)`` uniform on the sphere of radius ``sqrt(1 - y_0^2)``; then ``x = y V^dag``.
  ``y_0`` comes from Kennedy & Pendleton, Phys. Lett. B156 (1985) 393, where
  ``alpha >= 2`` (``y_0 = 1 - 2 lambda^2``, ``lambda^2 = -(ln r_1 + cos^2(2 pi r_2) ln r_3) /
  (2 alpha)``, accepted when ``r_4^2 <= 1 - lambda^2``), else from Creutz's inversion of
  ``exp(alpha y_0)`` accepted with probability ``sqrt(1 - y_0^2)`` (uniform for ``alpha -> 0``).
  Both are exact; the choice depends only on ``alpha``, a function of the neighbours.
* Overrelaxation (Brown & Woch, Phys. Rev. Lett. 58 (1987) 2394; Creutz, Phys. Rev. D36 (1987)
  515): ``x = (V^dag)^2`` reflects ``U`` about the action's maximum in the subgroup; it keeps
  ``Re Tr[U A]`` (hence ``S``) exactly and is an involution per subgroup, so it is a
  microcanonical update that leaves ``exp(-S)`` invariant.

SU(3) visits the subgroups ``(0, 1), (0, 2), (1, 2)`` in turn (Cabibbo-Marinari).  A sweep updates
every link once: for each direction ``mu`` and each site parity, all ``U_mu(x)`` of that parity
at once (they share no plaquette, so the updates are independent; every extent must be even),
vectorised over sites and batch (on CPUs one native C++ pass per half sweep,
:mod:`bridge._native_heatbath`: the same algebra, its own random stream from the same
generator; ``QCD_BRIDGE_NATIVE=0`` keeps the torch path).  :func:`heatbath` is the kernel on
:class:`~bridge.mcmc.base.ChainState`; step ``n`` draws from ``rng_key(rng_key(seed, tag), n)``.

Plaquette coefficients.  ``weights`` (``[n_planes, *lattice.shape]``, e.g. the defect of
:func:`bridge.gauge.defect.defect_weights`) give the action ``beta sum_p c_p (1 - Re Tr P / N)``;
the staple of plaquette ``p`` then enters ``A`` with the factor ``c_p >= 0`` and everything else
is unchanged.
"""

from __future__ import annotations

import math
import time

import torch

from .. import _native_heatbath as _native
from ..errors import ConfigError, PhysicsError
from ..gauge.defect import defect_weights, weighted_wilson_action
from ..groups import dagger, mm, reunitarize
from ..lattice import Lattice
from ..rng import generator as make_generator
from ..rng import rng_key
from .base import ChainState, Kernel, StepInfo, chain_state, check_action, nan_like, stream_tag

__all__ = [
    "SUBGROUPS",
    "su2_heatbath_quaternion",
    "half_sweep",
    "heatbath_sweep",
    "overrelaxation_sweep",
    "heatbath",
]

SUBGROUPS = {2: ((0, 1),), 3: ((0, 1), (0, 2), (1, 2))}
KP_MIN_ALPHA = 2.0  # Kennedy-Pendleton for alpha >= this, Creutz's method below
_MAX_TRIES = 10000


# -- checks ---------------------------------------------------------------------------------------
def check_beta(beta: float) -> float:
    """``beta`` as a float; ``ValueError`` naming it unless finite and ``>= 0``."""
    try:
        b = float(beta)
    except (TypeError, ValueError):
        raise ValueError(f"beta: expected a finite number >= 0, got {beta!r}") from None
    if not (math.isfinite(b) and b >= 0):
        raise ValueError(f"beta: the heatbath needs a finite beta >= 0, got {beta!r}")
    return b


def check_field(u: torch.Tensor) -> tuple[Lattice, int]:
    """The lattice and ``N`` of ``U``; ``ConfigError`` for a group other than SU(2)/SU(3),
    ``ValueError`` for an odd extent (the checkerboard needs even ones)."""
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    if nc not in SUBGROUPS:
        name = "U(1)" if nc == 1 else f"{nc}x{nc} links"
        raise ConfigError(f"group: the heatbath supports SU(2) and SU(3), got {name}")
    if any(e % 2 for e in lat.nrow):
        raise ValueError(f"nrow: the heatbath checkerboard needs even extents, got {lat.nrow}")
    return lat, nc


# -- SU(2) algebra as quaternions -----------------------------------------------------------------
def _quat_matrix(q: torch.Tensor, ctype: torch.dtype) -> torch.Tensor:
    """``[[q0 + i q3, q2 + i q1], [-q2 + i q1, q0 - i q3]]`` of ``q[..., 4]``."""
    q0, q1, q2, q3 = q.unbind(-1)
    row0 = torch.stack([torch.complex(q0, q3), torch.complex(q2, q1)], -1)
    row1 = torch.stack([torch.complex(-q2, q1), torch.complex(q0, -q3)], -1)
    return torch.stack([row0, row1], -2).to(ctype)


def _quat_project(w00, w01, w10, w11) -> torch.Tensor:
    """Quaternion coefficients of the projection of a 2x2 block onto ``R * SU(2)``."""
    return torch.stack([(w00 + w11).real, (w01 + w10).imag, (w01 - w10).real,
                        (w00 - w11).imag], -1) * 0.5


def _draw_y0(alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``y0`` with density ``sqrt(1 - y0^2) exp(alpha y0)`` on ``[-1, 1]`` for every entry of the
    flat tensor ``alpha >= 0`` (Kennedy-Pendleton for ``alpha >= 2``, Creutz below); the rejection
    loops run over the entries still pending only."""
    out = torch.empty_like(alpha)
    todo = torch.arange(alpha.numel(), device=alpha.device)
    for _ in range(_MAX_TRIES):
        if todo.numel() == 0:
            return out
        a = alpha[todo]
        r = torch.rand((4, todo.numel()), generator=gen, dtype=alpha.dtype, device=alpha.device)
        use_kp = a >= KP_MIN_ALPHA
        all_kp, any_kp = bool(use_kp.all()), bool(use_kp.any())
        if any_kp:  # Kennedy-Pendleton: lambda^2 ~ Gamma(3/2) / (2 alpha), y0 = 1 - 2 lambda^2
            lam2 = -(torch.log1p(-r[0]) + torch.cos(2 * math.pi * r[1]).square()
                     * torch.log1p(-r[2])) / (2 * a.clamp(min=KP_MIN_ALPHA))
            y0, ok = 1.0 - 2.0 * lam2, r[3].square() <= 1.0 - lam2
        if not all_kp:  # Creutz: y0 from exp(alpha y0) by inversion, accepted w.p. sqrt(1 - y0^2)
            small = a < 1e-12
            a_safe = torch.where(small, torch.ones_like(a), a)
            s = 1.0 - r[0]  # in (0, 1]
            cr_y0 = torch.where(small, 1.0 - 2.0 * s,
                                1.0 + torch.log1p(s * torch.expm1(-2.0 * a_safe)) / a_safe)
            cr_y0 = cr_y0.clamp(-1.0, 1.0)
            cr_ok = r[3] <= torch.sqrt(1.0 - cr_y0.square())
            y0 = torch.where(use_kp, y0, cr_y0) if any_kp else cr_y0
            ok = torch.where(use_kp, ok, cr_ok) if any_kp else cr_ok
        out[todo[ok]] = y0[ok]
        todo = todo[~ok]
    raise PhysicsError(f"heatbath: {todo.numel()} SU(2) draws not accepted after {_MAX_TRIES} "
                       f"tries (alpha = {alpha[todo][:4].tolist()} ...)")


def su2_heatbath_quaternion(alpha: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """SU(2) elements ``y`` (quaternions ``[..., 4]``) distributed as ``dHaar(y) exp(alpha y_0)``
    (``alpha >= 0``, any shape): ``y_0`` by :func:`_draw_y0`, the vector part uniform on the
    sphere of radius ``sqrt(1 - y_0^2)`` (Creutz, Phys. Rev. D21 (1980) 2308)."""
    a = alpha.reshape(-1)
    if not bool(torch.isfinite(a).all()) or bool((a < 0).any()):
        raise PhysicsError(f"heatbath: the SU(2) weights alpha must be finite and >= 0, got "
                           f"{a[~torch.isfinite(a) | (a < 0)][:4].tolist()}")
    y0 = _draw_y0(a, gen)
    r = torch.rand((2, a.numel()), generator=gen, dtype=a.dtype, device=a.device)
    cos_t = 1.0 - 2.0 * r[0]
    sin_t = torch.sqrt((1.0 - cos_t.square()).clamp(min=0))
    phi = 2 * math.pi * r[1]
    rad = torch.sqrt((1.0 - y0.square()).clamp(min=0))
    y = torch.stack([y0, rad * sin_t * torch.cos(phi), rad * sin_t * torch.sin(phi),
                     rad * cos_t], -1)
    return y.reshape(*alpha.shape, 4)


# -- link updates ---------------------------------------------------------------------------------
def _subgroup_step(u: torch.Tensor, w: torch.Tensor, i: int, j: int, coeff: float | None,
                   gen: torch.Generator | None) -> None:
    """Left-multiply the rows ``(i, j)`` of ``u`` and ``w = u A`` (``[..., N, N]``, in place) by
    the heatbath draw (``coeff = beta / N``) or, for ``coeff`` None, the overrelaxation step."""
    q = _quat_project(w[..., i, i], w[..., i, j], w[..., j, i], w[..., j, j])
    k = torch.linalg.vector_norm(q, dim=-1)
    unit = torch.zeros_like(q)
    unit[..., 0] = 1.0
    pos = (k > 0).unsqueeze(-1)
    v = _quat_matrix(torch.where(pos, q / torch.where(pos, k.unsqueeze(-1), 1.0), unit), u.dtype)
    vd = dagger(v)
    if coeff is None:
        x = mm(vd, vd)
    else:
        y = su2_heatbath_quaternion(2.0 * coeff * k, gen)
        x = mm(_quat_matrix(y, u.dtype), vd)
    for m in (u, w):
        ri, rj = m[..., i, :], m[..., j, :]
        new_i = x[..., 0, 0, None] * ri + x[..., 0, 1, None] * rj
        new_j = x[..., 1, 0, None] * ri + x[..., 1, 1, None] * rj
        m[..., i, :] = new_i
        m[..., j, :] = new_j


_TABLES: dict[tuple[tuple[int, ...], torch.device], dict] = {}


def _tables(lat: Lattice, device: torch.device) -> dict:
    """Per ``(mu, parity)``: the flat link indices (into ``[Nd * V]``) of the updated links and
    of the six links of each of their ``2(Nd-1)`` staples, stacked over ``nu != mu``."""
    key = (lat.nrow, device)
    if key not in _TABLES:
        v = lat.volume
        site = torch.arange(v, device=device).reshape(1, *lat.shape)
        fwd = [lat.shift(site, d).reshape(v) for d in range(lat.nd)]
        bwd = [lat.shift(site, d, -1).reshape(v) for d in range(lat.nd)]
        par = lat.parity(device).reshape(v)
        tab = {}
        for mu in range(lat.nd):
            for p in (0, 1):
                x = torch.nonzero(par == p).reshape(-1)
                nus = [nu for nu in range(lat.nd) if nu != mu]

                def cat(parts):
                    return torch.cat(parts)

                xm = fwd[mu][x]
                planes = [lat.planes().index((min(mu, nu), max(mu, nu))) for nu in nus]
                tab[mu, p] = dict(
                    w_up=cat([pl * v + x for pl in planes]),  # P_{mu nu}(x)
                    w_lo=cat([pl * v + bwd[nu][x] for pl, nu in zip(planes, nus,
                                                                     strict=True)]),
                    link=mu * v + x,
                    up_a=cat([nu * v + xm for nu in nus]),  # U_nu(x+mu)
                    up_b=cat([mu * v + fwd[nu][x] for nu in nus]),  # U_mu(x+nu)
                    up_c=cat([nu * v + x for nu in nus]),  # U_nu(x)
                    lo_a=cat([nu * v + bwd[nu][xm] for nu in nus]),  # U_nu(x+mu-nu)
                    lo_b=cat([mu * v + bwd[nu][x] for nu in nus]),  # U_mu(x-nu)
                    lo_c=cat([nu * v + bwd[nu][x] for nu in nus]),  # U_nu(x-nu)
                    n=len(nus), half=int(x.numel()))
        _TABLES[key] = tab
    return _TABLES[key]


def _staples(flat: torch.Tensor, t: dict, wflat: torch.Tensor | None = None) -> torch.Tensor:
    """Staple sums ``A_mu(x)`` (as :func:`bridge.gauge.staple`) of the links of one table entry,
    ``[batch, V/2, N, N]``, from the links ``flat[batch, Nd * V, N, N]``; with ``wflat``
    (``[n_planes * V]``) each staple times its plaquette's coefficient."""
    b, nc = int(flat.shape[0]), int(flat.shape[-1])

    def g(name: str) -> torch.Tensor:
        return flat.index_select(1, t[name]).view(b, t["n"], t["half"], nc, nc)

    up = mm(g("up_a"), dagger(mm(g("up_c"), g("up_b"))))
    lo = mm(dagger(mm(g("lo_b"), g("lo_a"))), g("lo_c"))
    if wflat is not None:
        shape = (1, t["n"], t["half"], 1, 1)
        up = up * wflat.index_select(0, t["w_up"]).view(shape).to(up.dtype)
        lo = lo * wflat.index_select(0, t["w_lo"]).view(shape).to(lo.dtype)
    return (up + lo).sum(1)


def _flat_weights(weights: torch.Tensor | None, lat: Lattice, u: torch.Tensor
                  ) -> torch.Tensor | None:
    if weights is None:
        return None
    want = (len(lat.planes()), *lat.shape)
    if tuple(weights.shape) != want:
        raise ConfigError(f"weights: expected plaquette coefficients of shape {list(want)}, got "
                          f"{list(weights.shape)}")
    if bool((weights < 0).any()):
        raise ConfigError("weights: the heatbath needs plaquette coefficients >= 0")
    return weights.to(device=u.device, dtype=u.real.dtype).reshape(-1)


def half_sweep(u: torch.Tensor, mu: int, parity: int, beta: float | None = None,
               gen: torch.Generator | None = None, *, weights: torch.Tensor | None = None
               ) -> torch.Tensor:
    """A new field with the links ``U_mu(x)`` of sites of the given parity (``sum_i x_i mod 2``)
    updated at once: heatbath with ``beta`` and ``gen``, or overrelaxation when ``beta`` is None;
    every other link is copied unchanged (``weights``: plaquette coefficients, module
    docstring)."""
    lat, nc = check_field(u)
    coeff = None if beta is None else check_beta(beta) / nc
    if coeff is not None and gen is None:
        raise ValueError("gen: the heatbath needs a torch.Generator")
    out = u.clone(memory_format=torch.contiguous_format)  # a file read may be strided
    _half_sweep_(out.view(u.shape[0], lat.nd * lat.volume, nc, nc),
                 _tables(lat, u.device)[int(mu), int(parity)], nc, coeff, gen,
                 _flat_weights(weights, lat, u))
    return out


def _half_sweep_(flat: torch.Tensor, t: dict, nc: int, coeff: float | None,
                 gen: torch.Generator | None, wflat: torch.Tensor | None = None,
                 reverse: bool = False) -> None:
    if _native.usable(flat):
        if _native.half_sweep(flat, t, coeff, gen, wflat, reverse):
            raise PhysicsError(f"heatbath: SU(2) draws not accepted (beta / N = {coeff}; "
                               f"the links or plaquette coefficients are not finite)")
        return
    links = flat.index_select(1, t["link"])
    w = mm(links, _staples(flat, t, wflat))
    for i, j in (reversed(SUBGROUPS[nc]) if reverse else SUBGROUPS[nc]):
        _subgroup_step(links, w, i, j, coeff, gen)
    flat.index_copy_(1, t["link"], links)


def _sweep(u: torch.Tensor, coeff: float | None, gen: torch.Generator | None,
           weights: torch.Tensor | None = None, reverse: bool = False) -> torch.Tensor:
    lat, nc = check_field(u)
    tab = _tables(lat, u.device)
    wflat = _flat_weights(weights, lat, u)
    out = u.clone(memory_format=torch.contiguous_format)  # a file read may be strided
    flat = out.view(u.shape[0], lat.nd * lat.volume, nc, nc)
    order = [(mu, p) for mu in range(lat.nd) for p in (0, 1)]
    for mu, p in (reversed(order) if reverse else order):
        _half_sweep_(flat, tab[mu, p], nc, coeff, gen, wflat, reverse)
    return out


def heatbath_sweep(u: torch.Tensor, beta: float, gen: torch.Generator, *,
                   n_or: int = 0, weights: torch.Tensor | None = None,
                   reverse: bool = False) -> torch.Tensor:
    """One Cabibbo-Marinari heatbath sweep of ``exp(-S_W)`` (every link once, SU(2) subgroups
    in the order of :data:`SUBGROUPS`), then ``n_or`` :func:`overrelaxation_sweep`; a new
    tensor.  ``gen`` supplies all random numbers (the order of draws is fixed).  ``weights``:
    plaquette coefficients (module docstring).  ``reverse``: the links and subgroups in the
    opposite order, the time reversal of the sweep (each subgroup update satisfies detailed
    balance, so the reversed product is the reverse kernel of the sweep; the ``n_or`` sweeps
    then come first)."""
    check_field(u)
    coeff = check_beta(beta) / int(u.shape[-1])
    out = u
    if reverse:
        for _ in range(int(n_or)):
            out = _sweep(out, None, None, weights, reverse=True)
    out = _sweep(out, coeff, gen, weights, reverse)
    if not reverse:
        for _ in range(int(n_or)):
            out = _sweep(out, None, None, weights)
    return out


def overrelaxation_sweep(u: torch.Tensor, *, weights: torch.Tensor | None = None,
                         reverse: bool = False) -> torch.Tensor:
    """One overrelaxation sweep (``x = (V^dag)^2`` in every SU(2) subgroup of every link): keeps
    the Wilson action (with ``weights``: the weighted one) exactly for any ``beta``;
    deterministic.  A new tensor.  Each subgroup step is an involution, so the ``reverse``
    sweep (opposite order) is the inverse map."""
    return _sweep(u, None, None, weights, reverse)


# -- the kernel -----------------------------------------------------------------------------------
def heatbath(beta: float, *, n_hb: int = 1, n_or: int = 0, name: str = "heatbath",
             defect: tuple[int, ...] | None = None, c: float = 1.0) -> Kernel:
    """Heatbath + overrelaxation kernel on :class:`~bridge.mcmc.base.ChainState` (Wilson action
    at ``beta``): one step is ``n_hb`` :func:`heatbath_sweep` followed by ``n_or``
    :func:`overrelaxation_sweep` and a re-unitarisation (rounding only).

    Every chain moves: ``accepted`` is all True, ``delta`` 0, ``acc_prob`` 1, and ``log q``,
    ``log w`` and the estimate become unknown (NaN).  Step ``n`` (the state's step) draws from
    ``rng_key(rng_key(seed, stream_tag(name)), n)``, so a restarted chain continues bit for bit.
    ``defect`` (extents) and ``c``: the action with the defect's plaquettes at coefficient ``c``
    (:mod:`bridge.gauge.defect`)."""
    beta = check_beta(beta)
    n_hb, n_or = int(n_hb), int(n_or)
    if n_hb < 0 or n_or < 0 or n_hb + n_or == 0:
        raise ValueError(f"n_hb, n_or: expected counts >= 0, not both 0, got {n_hb}, {n_or}")
    tag = stream_tag(name)
    cache: dict[tuple, torch.Tensor] = {}

    def weights(u: torch.Tensor) -> torch.Tensor | None:
        if defect is None:
            return None
        lat = Lattice.of(u)
        key = (lat.nrow, u.device)
        if key not in cache:
            cache[key] = defect_weights(lat, defect, c, device=u.device)
        return cache[key]

    def action(u: torch.Tensor) -> torch.Tensor:
        return weighted_wilson_action(u, beta, weights(u))

    def init(u: torch.Tensor | ChainState, seed: int = 0, step: int = 0) -> ChainState:
        if isinstance(u, ChainState):
            check_field(u.U)
            check_action(name, u, action(u.U).to(u.action.dtype))
            return u
        check_field(u)
        return chain_state(u, action(u), seed, step)

    def step(state: ChainState) -> tuple[ChainState, StepInfo]:
        t0 = time.perf_counter()
        u = state.U
        gen = make_generator(rng_key(rng_key(state.seed, tag), state.step), u.device)
        w = weights(u)
        for _ in range(n_hb):
            u = heatbath_sweep(u, beta, gen, weights=w)
        for _ in range(n_or):
            u = overrelaxation_sweep(u, weights=w)
        u = reunitarize(u)
        ones = torch.ones_like(state.action, dtype=torch.bool)
        new = state._replace(U=u, action=action(u), log_q=nan_like(state.log_q),
                             log_w=nan_like(state.log_w), log_est=nan_like(state.log_est),
                             step=state.step + 1)
        info = StepInfo(state.step, name, ones, torch.zeros_like(state.action),
                        torch.ones_like(state.action), 0, 0, time.perf_counter() - t0)
        return new, info

    return Kernel(init, step)
