"""Wilson (gradient) flow with Luescher's third-order Runge-Kutta integrator (arXiv:1006.4518,
appendix C), fixed or adaptive step (embedded second-order step, arXiv:1301.4388), and
measurements (E, t^2 E, plaquette, topological charge) at requested flow times.

The flow generator is ``Z(V) = -wilson_force(V, beta = 2 Nc) = -TA[V_mu A_mu]``, the same as
Chroma's ``wilson_flow_one_step``; :func:`chroma_wilson_flow` reproduces Chroma's
``WILSON_FLOW`` (``eps = wtime / nstep``).  Derivation, integrator coefficients, the adaptive
step-size rule and the tests: docs/observables.md, section 6.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .. import _native_gauge
from ..errors import PhysicsError
from ..gauge import mesplq, wilson_force
from ..gauge.loops import _native_tables
from ..groups import expm_algebra_mul
from ..lattice import Lattice
from .field_strength import energy_density, energy_density_split, topological_charge

__all__ = [
    "flow_generator",
    "rk3_step",
    "rk3_step_embedded",
    "FlowResult",
    "wilson_flow",
    "ChromaWilsonFlow",
    "chroma_wilson_flow",
]


def _check_gauge(u: torch.Tensor) -> tuple[Lattice, int, int]:
    if not isinstance(u, torch.Tensor):
        raise ValueError(f"U: expected a torch.Tensor gauge field, got {type(u).__name__}")
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    return lat, b, nc


def _check_eps(eps: float, name: str = "eps") -> float:
    try:
        e = float(eps)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a positive step size, got {eps!r}") from exc
    if not math.isfinite(e) or e <= 0:
        raise ValueError(f"{name}: expected a positive finite step size, got {eps!r}")
    return e


def flow_generator(u: torch.Tensor) -> torch.Tensor:
    """``Z(V) = -g0^2 d S_w(V) = -TA[V_mu(x) A_mu(x)]`` (module docstring), shape of ``U``,
    algebra-valued: the project's Wilson force at ``beta = 2 N``, negated."""
    _, _, nc = _check_gauge(u)
    return -wilson_force(u, 2.0 * nc)


def _update(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``exp(Z) W`` (for SU(3) one Cayley-Hamilton pass, native on the CPU)."""
    return expm_algebra_mul(z, w)


def _stages(u: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First two RK3 stages: ``(Z_0, Z_1, W_1)``."""
    z0 = eps * flow_generator(u)
    w1 = _update(0.25 * z0, u)
    z1 = eps * flow_generator(w1)
    return z0, z1, w1


def _finish(z0: torch.Tensor, z1: torch.Tensor, w1: torch.Tensor, eps: float) -> torch.Tensor:
    a = (8.0 / 9.0) * z1 - (17.0 / 36.0) * z0
    w2 = _update(a, w1)
    z2 = eps * flow_generator(w2)
    return _update(0.75 * z2 - a, w2)  # 3/4 Z2 - 8/9 Z1 + 17/36 Z0


def rk3_step(u: torch.Tensor, eps: float) -> torch.Tensor:
    """One step of Luescher's RK3 (arXiv:1006.4518, eq. (C.1)): ``V(t) -> V(t + eps)``.
    Three evaluations of the flow generator; works for U(1) and SU(N), any Nd."""
    eps = _check_eps(eps)
    native = _native_step(u, eps, False)
    if native is not None:
        return native[0]
    z0, z1, w1 = _stages(u, eps)
    return _finish(z0, z1, w1, eps)


def _native_step(u: torch.Tensor, eps: float,
                 embedded: bool) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The RK3 step (and the embedded second-order one) by the native kernel for SU(3) on the
    CPU (bridge/_native_gauge.py: the same stages, forces and exponentials); None elsewhere."""
    lat, b, nc = _check_gauge(u)
    if nc != 3 or not _native_gauge.usable(u):
        return None
    v = u.contiguous().view(b, lat.nd, lat.volume, 3, 3)
    high, low = _native_gauge.flow_step(v, *_native_tables(lat), eps, embedded)
    return high.view(u.shape), (low.view(u.shape) if embedded else low)


def rk3_step_embedded(u: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """RK3 step plus the error estimate of the embedded second-order step
    ``W_2' = exp(2 Z_1 - Z_0) W_0`` (arXiv:1301.4388): returns ``(V(t + eps), d)`` with
    ``d[batch] = max_{x,mu} ||W_3 - W_2'||_F / N^2``."""
    eps = _check_eps(eps)
    _, b, nc = _check_gauge(u)
    native = _native_step(u, eps, True)
    if native is not None:
        high, low = native
    else:
        z0, z1, w1 = _stages(u, eps)
        low = _update(2.0 * z1 - z0, u)
        high = _finish(z0, z1, w1, eps)
    dist = torch.linalg.matrix_norm(high - low).reshape(b, -1).amax(1) / (nc * nc)
    return high, dist


# ------------------------------------------------------------------------------------------------
# measurements
# ------------------------------------------------------------------------------------------------
@dataclass
class FlowResult:
    """Measurements along a Wilson flow, each ``[batch, n_times]`` (real unless noted).

    ``t``: the flow times (``[n_times]``, float64, in lattice units ``t/a^2``);
    ``energy``: clover ``E(t)`` (:func:`~bridge.observables.field_strength.energy_density`);
    ``t2E``: ``t^2 E(t)``; ``energy_plaquette``: plaquette ``E(t)``;
    ``plaquette``: Chroma's ``w_plaq``; ``charge``: topological charge (clover in 4D, geometric
    for 2D U(1); ``None`` otherwise); ``extra``: the caller's observables by name;
    ``U``: the field at the last time; ``n_steps``: accepted steps; ``n_rejected``: rejected
    adaptive steps; ``step_sizes``: every accepted step size (float).
    """

    t: torch.Tensor
    energy: torch.Tensor
    t2E: torch.Tensor
    energy_plaquette: torch.Tensor
    plaquette: torch.Tensor
    charge: torch.Tensor | None
    U: torch.Tensor
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    n_steps: int = 0
    n_rejected: int = 0
    step_sizes: list[float] = field(default_factory=list)

    def at(self, t: float) -> dict[str, torch.Tensor]:
        """All measurements at flow time ``t`` (one of :attr:`t`), each ``[batch]``."""
        hits = (self.t - float(t)).abs() <= 1e-9 * max(1.0, abs(float(t)))
        if not bool(hits.any()):
            raise ValueError(f"t: {t} is not a measured flow time; measured: {self.t.tolist()}")
        i = int(hits.nonzero()[0, 0])
        out = {
            "energy": self.energy[:, i],
            "t2E": self.t2E[:, i],
            "energy_plaquette": self.energy_plaquette[:, i],
            "plaquette": self.plaquette[:, i],
        }
        if self.charge is not None:
            out["charge"] = self.charge[:, i]
        out.update({k: v[:, i] for k, v in self.extra.items()})
        return out


def _charge_supported(lat: Lattice, nc: int) -> bool:
    return lat.nd == 4 or (lat.nd == 2 and nc == 1)


def _measure(
    u: torch.Tensor,
    t: float,
    traceless: bool,
    with_charge: bool,
    extra: Mapping[str, Callable[[torch.Tensor], torch.Tensor]],
) -> dict[str, torch.Tensor]:
    e = energy_density(u, traceless=traceless)
    out = {
        "energy": e,
        "t2E": (t * t) * e,
        "energy_plaquette": energy_density(u, definition="plaquette"),
        "plaquette": mesplq(u).w_plaq,
    }
    if with_charge:
        out["charge"] = topological_charge(u, traceless=traceless)
    for name, fn in extra.items():
        out[name] = fn(u)
    return out


def _check_times(times: float | Sequence[float]) -> list[float]:
    if isinstance(times, (int, float)):
        times = [times]
    try:
        ts = [float(x) for x in times]
    except (TypeError, ValueError) as exc:
        raise ValueError(f"times: expected flow times >= 0, got {times!r}") from exc
    if not ts:
        raise ValueError("times: expected at least one flow time, got none")
    if any(not math.isfinite(x) or x < 0 for x in ts):
        raise ValueError(f"times: expected finite flow times >= 0, got {ts}")
    if any(b <= a for a, b in zip(ts, ts[1:], strict=False)):
        raise ValueError(f"times: expected strictly increasing flow times, got {ts}")
    return ts


def _check_finite(u: torch.Tensor, t: float) -> None:
    if not bool(torch.isfinite(torch.view_as_real(u)).all()):
        raise PhysicsError(f"U: the flowed field became NaN/Inf at flow time t = {t:g}")


def wilson_flow(
    U: torch.Tensor,
    times: float | Sequence[float] = 4.0,
    *,
    eps: float = 0.01,
    adaptive: bool = False,
    tol: float = 1e-6,
    eps_max: float = 0.2,
    eps_min: float = 1e-6,
    traceless: bool = False,
    charge: bool | None = None,
    extra: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
) -> FlowResult:
    """Flow ``U`` with RK3 and measure at each of ``times`` (default ``t = 4``, the flow time of
    arXiv:2208.03832, sec. 3.2; ``0`` measures the input field).

    Fixed step (``adaptive=False``): every time must be a multiple of ``eps`` (to ``1e-9``
    relative; Chroma's ``eps = wtime / nstep``), otherwise ``ValueError``.  Adaptive
    (``adaptive=True``): ``eps`` is the first trial step, ``tol`` the target local error ``d``
    of the embedded second-order step (module docstring); steps are truncated to land on the
    requested times.  ``traceless`` is passed to the clover ``F`` (``False``: Chroma's
    ``mesField``).  ``charge`` (default: where defined, 4D or 2D U(1)) switches the topological
    charge on or off.  ``extra``: further observables ``name -> fn(U) -> [batch]``.
    Returns a :class:`FlowResult`.  The input is not modified.
    """
    lat, _, nc = _check_gauge(U)
    ts = _check_times(times)
    eps = _check_eps(eps)
    extra = dict(extra or {})
    reserved = {"energy", "t2E", "energy_plaquette", "plaquette", "charge"}
    if reserved & set(extra):
        raise ValueError(
            f"extra: names {sorted(reserved & set(extra))} are reserved for the built-in "
            f"measurements {sorted(reserved)}"
        )
    if charge is None:
        charge = _charge_supported(lat, nc)
    elif charge and not _charge_supported(lat, nc):
        raise ValueError(
            f"charge: a topological charge is defined for Nd = 4 or 2D U(1), got Nd = {lat.nd} "
            f"with {nc}x{nc} links"
        )
    rows: list[dict[str, torch.Tensor]] = []
    u = U
    t_now = 0.0
    n_steps = 0
    n_rejected = 0
    sizes: list[float] = []
    if not adaptive:
        targets = []
        for t in ts:
            n = round(t / eps)
            if abs(n * eps - t) > 1e-9 * max(1.0, t):
                raise ValueError(
                    f"times: flow time {t} is not a multiple of eps = {eps} (fixed step); use "
                    "adaptive=True or a step that divides every time"
                )
            targets.append(n)
        for t, n in zip(ts, targets, strict=True):
            while n_steps < n:
                u = rk3_step(u, eps)
                n_steps += 1
            sizes.extend([eps] * (n - len(sizes)))
            _check_finite(u, t)
            rows.append(_measure(u, t, traceless, charge, extra))
    else:
        tol = _check_eps(tol, "tol")
        eps_max = _check_eps(eps_max, "eps_max")
        eps_min = _check_eps(eps_min, "eps_min")
        step = min(eps, eps_max)
        for t in ts:
            while t - t_now > 1e-12 * max(1.0, t):
                h = min(step, t - t_now)
                new, dist = rk3_step_embedded(u, h)
                d = float(dist.max())
                if not math.isfinite(d):
                    raise PhysicsError(
                        f"U: the flow step at t = {t_now:g} with eps = {h:g} gave NaN/Inf"
                    )
                if d <= tol:
                    u, t_now = new, t_now + h
                    n_steps += 1
                    sizes.append(h)
                else:
                    n_rejected += 1
                grow = 0.95 * (tol / d) ** (1.0 / 3.0) if d > 0 else math.inf
                step = min(h * grow, eps_max)
                if step < eps_min:
                    raise PhysicsError(
                        f"eps_min: the adaptive step fell to {step:.3g} < eps_min = {eps_min:g} at "
                        f"t = {t_now:g} (tol = {tol:g}); the field is too rough for this tolerance"
                    )
            t_now = t
            _check_finite(u, t)
            rows.append(_measure(u, t, traceless, charge, extra))
    stacked = {k: torch.stack([r[k] for r in rows], dim=1) for k in rows[0]}
    return FlowResult(
        t=torch.tensor(ts, dtype=torch.float64),
        energy=stacked.pop("energy"),
        t2E=stacked.pop("t2E"),
        energy_plaquette=stacked.pop("energy_plaquette"),
        plaquette=stacked.pop("plaquette"),
        charge=stacked.pop("charge", None),
        U=u,
        extra={k: stacked[k] for k in extra},
        n_steps=n_steps,
        n_rejected=n_rejected,
        step_sizes=sizes,
    )


# ------------------------------------------------------------------------------------------------
# Chroma's WILSON_FLOW
# ------------------------------------------------------------------------------------------------
@dataclass
class ChromaWilsonFlow:
    """The output of Chroma's ``WILSON_FLOW`` (``wilson_flow_results``): ``wflow_step``
    (``[nstep + 1]``, the flow times ``k * eps``), ``wflow_gact4i`` and ``wflow_gactij``
    (``[batch, nstep + 1]``), and the flowed field ``U`` (Chroma's ``gauge_out``)."""

    wflow_step: torch.Tensor
    wflow_gact4i: torch.Tensor
    wflow_gactij: torch.Tensor
    U: torch.Tensor

    @property
    def t2E(self) -> torch.Tensor:
        """``t^2 (gact4i + gactij)``, ``[batch, nstep + 1]``."""
        return self.wflow_step**2 * (self.wflow_gact4i + self.wflow_gactij)


def chroma_wilson_flow(
    U: torch.Tensor, nstep: int, wtime: float, *, t_dir: int | None = None
) -> ChromaWilsonFlow:
    """Chroma's ``WILSON_FLOW`` with ``nstep`` and ``wtime`` (``smear_dirs 1 1 1 1``):
    ``eps = wtime / nstep``, ``nstep`` RK3 steps, and after every step (and before the first)
    Chroma's ``measure_wilson_gauge``: ``gact4i`` / ``gactij`` = clover energy density over the
    planes with / without ``t_dir`` (default ``Nd - 1``), non-traceless ``mesField``
    (:func:`~bridge.observables.field_strength.energy_density_split`).
    """
    lat, _, _ = _check_gauge(U)
    if isinstance(nstep, bool) or int(nstep) != nstep or nstep < 1:
        raise ValueError(f"nstep: expected a positive integer number of steps, got {nstep!r}")
    nstep = int(nstep)
    wtime = _check_eps(wtime, "wtime")
    eps = wtime / nstep
    g4, gs = [], []
    u = U
    for k in range(nstep + 1):
        if k:
            u = rk3_step(u, eps)
        a, b = energy_density_split(u, t_dir=t_dir, traceless=False)
        g4.append(a)
        gs.append(b)
    _check_finite(u, wtime)
    steps = torch.arange(nstep + 1, dtype=torch.float64, device=U.device) * eps
    return ChromaWilsonFlow(
        wflow_step=steps,
        wflow_gact4i=torch.stack(g4, dim=1),
        wflow_gactij=torch.stack(gs, dim=1),
        U=u,
    )
