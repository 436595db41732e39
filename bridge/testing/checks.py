"""Physics checks for actions, forces and molecular dynamics: group membership, gauge invariance
and covariance, force = derivative of the action, reversibility.

Each ``assert_*`` function raises :class:`AssertionError` with a message that says what was
compared, the worst deviation and the tolerance; it returns the measured deviation otherwise.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..gauge import gauge_transform, random_gauge_transformation
from ..groups import expm_algebra, get_group, mm, random_algebra, trace, unitarity_violation
from ..lattice import Lattice

__all__ = [
    "assert_in_group",
    "assert_gauge_invariant",
    "assert_gauge_covariant",
    "assert_force_matches_action",
    "directional_derivative",
    "assert_reversible",
]


def _fail(what: str, dev: float, tol: float) -> None:
    raise AssertionError(f"{what}: deviation {dev:.3e} exceeds tolerance {tol:.1e}")


def assert_in_group(u: torch.Tensor, group=None, atol: float = 1e-12) -> float:
    """Unitarity ``|U U^dagger - 1|`` (and ``|det U - 1|`` for SU(N)) below ``atol``."""
    n = int(u.shape[-1])
    special = get_group(group).special if group is not None else n > 1
    dev = float(unitarity_violation(u.detach(), special=special))
    if not dev <= atol:
        _fail(f"group membership ({'SU' if special else 'U'}({n}))", dev, atol)
    return dev


def _transforms(u: torch.Tensor, omega, generator):
    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    if omega is None:
        group = "U1" if nc == 1 else nc
        omega = random_gauge_transformation(lat, group, b, generator=generator, dtype=u.dtype,
                                            device=u.device)
    return omega


def assert_gauge_invariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    omega: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    atol: float = 1e-12,
    rtol: float = 1e-12,
) -> float:
    """``fn(U)`` equals ``fn(U^Omega)`` for a (random, Haar) gauge transformation Omega.

    The tolerance is ``atol + rtol * max|fn(U)|`` (sums over the lattice grow with the volume).
    """
    omega = _transforms(u, omega, generator)
    a, b = fn(u), fn(gauge_transform(u, omega))
    dev = float((a - b).abs().max())
    tol = atol + rtol * float(a.abs().max())
    if not dev <= tol:
        _fail(f"gauge invariance of {getattr(fn, '__name__', fn)}", dev, tol)
    return dev


def assert_gauge_covariant(
    fn: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    omega: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    atol: float = 1e-12,
) -> float:
    """A site-matrix field ``X(x) = fn(U)`` (shape ``[batch, t, ..., x, N, N]`` or with a
    direction axis after batch) transforms as ``X(x) -> Omega(x) X(x) Omega(x)^dagger``."""
    omega = _transforms(u, omega, generator)
    x, y = fn(u), fn(gauge_transform(u, omega))
    om = omega if x.dim() == omega.dim() else omega.unsqueeze(1)
    expected = mm(mm(om, x), om.conj().transpose(-1, -2))
    dev = float((expected - y).abs().max())
    if not dev <= atol:
        _fail(f"gauge covariance of {getattr(fn, '__name__', fn)}", dev, atol)
    return dev


def directional_derivative(
    action: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    x: torch.Tensor,
    method: str = "autograd",
    eps: float = 1e-3,
) -> torch.Tensor:
    """``d/de action(exp(e X) U)`` at ``e = 0``, per configuration.

    ``autograd``: exact, through ``U(e) = (1 + e X) U`` (same first derivative as the
    exponential); needs an action written in differentiable torch operations.
    ``fd``: the fourth-order central difference
    ``[8(S(e) - S(-e)) - (S(2e) - S(-2e))] / (12 e)`` along ``exp(e X) U`` (error O(e^4)), for
    actions that are not differentiable (e.g. with iterative solvers).
    """
    if method == "autograd":
        e = torch.zeros((), dtype=u.real.dtype, device=u.device, requires_grad=True)
        eye = torch.eye(u.shape[-1], dtype=u.dtype, device=u.device)
        s = action(mm(eye + e * x, u))
        grads = [torch.autograd.grad(s[i], e, retain_graph=True)[0] for i in range(s.shape[0])]
        return torch.stack(grads).detach()
    if method == "fd":
        def s(h: float) -> torch.Tensor:
            return action(mm(expm_algebra(h * x), u))

        return (8 * (s(eps) - s(-eps)) - (s(2 * eps) - s(-2 * eps))) / (12 * eps)
    raise ValueError(f"method: expected 'autograd' or 'fd', got {method!r}")


def assert_force_matches_action(
    action: Callable[[torch.Tensor], torch.Tensor],
    force: Callable[[torch.Tensor], torch.Tensor],
    u: torch.Tensor,
    *,
    generator: torch.Generator | None = None,
    n_directions: int = 3,
    rtol: float = 1e-8,
    method: str = "autograd",
    eps: float = 1e-3,
) -> float:
    """The force is the derivative of the action along random algebra directions X::

        d/de S(exp(e X) U) = -2 sum_{x,mu} Re Tr[X_mu(x) F_mu(x)]   (project force convention)

    Returns the worst relative deviation over ``n_directions`` random directions, relative to
    ``max(|measured|, 0.01 * 2 |X| |F|)``: the Cauchy-Schwarz bound ``2 |X| |F|`` of the
    derivative keeps a direction in which the derivative happens to nearly vanish from turning
    the finite-difference error into a large ratio.
    """
    lat = Lattice.of(u)
    _, nc = lat.check_gauge(u)
    group = "U1" if nc == 1 else nc
    f = force(u)
    worst = 0.0
    for _ in range(n_directions):
        x = random_algebra(group, tuple(u.shape[:-2]), generator=generator, dtype=u.dtype,
                           device=u.device)
        predicted = -2.0 * trace(mm(x, f)).real.flatten(1).sum(1)
        measured = directional_derivative(action, u, x, method=method, eps=eps)
        norm_x, norm_f = (t.abs().pow(2).flatten(1).sum(1).sqrt() for t in (x, f))
        bound = 2.0 * norm_x * norm_f
        scale = torch.maximum(measured.abs(), 0.01 * bound).clamp_min(1e-300)
        dev = float(((predicted - measured).abs() / scale).max())
        worst = max(worst, dev)
    if not worst <= rtol:
        _fail("force vs directional derivative of the action (relative)", worst, rtol)
    return worst


def assert_reversible(
    integrate: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    u: torch.Tensor,
    p: torch.Tensor,
    atol: float = 1e-10,
) -> float:
    """Molecular dynamics is reversible: ``integrate(U', -P')`` returns ``(U, -P)`` where
    ``(U', P') = integrate(U, P)``.  Returns the largest deviation in links and momenta."""
    u1, p1 = integrate(u, p)
    u2, p2 = integrate(u1, -p1)
    dev = max(float((u2 - u).abs().max()), float((p2 + p).abs().max()))
    moved = float((u1 - u).abs().max())
    if not moved > 10 * atol:
        raise AssertionError(
            f"reversibility: the trajectory hardly moved the links ({moved:.1e}); the check "
            f"would be vacuous"
        )
    if not dev <= atol:
        _fail("reversibility (forward, momentum flip, forward)", dev, atol)
    return dev
