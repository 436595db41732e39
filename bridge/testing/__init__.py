"""Reusable physics checks, public so that users can test their own actions, forces and layers.

Each ``assert_*`` function raises :class:`AssertionError` with a message that says what was
compared, the worst deviation and the tolerance; it returns the measured deviation otherwise.
The project's own test suite uses these functions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..gauge import gauge_transform, random_gauge_transformation
from ..groups import (
    algebra_basis,
    expm_algebra,
    get_group,
    mm,
    random_algebra,
    trace,
    unitarity_violation,
)
from ..lattice import Lattice

__all__ = [
    "assert_in_group",
    "assert_gauge_invariant",
    "assert_gauge_covariant",
    "assert_force_matches_action",
    "directional_derivative",
    "assert_reversible",
    "assert_invertible",
    "assert_logdet_matches_autograd",
    "assert_gauge_equivariant",
    "assert_flow_density",
    "autograd_logdet",
    "algebra_basis",
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

    Returns the worst relative deviation over ``n_directions`` random directions.
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
        dev = float(((predicted - measured).abs() / measured.abs().clamp_min(1e-300)).max())
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


# -- normalizing-flow checks (bridge.flows) ------------------------------------------------------
# A "layer" is any object with ``forward(x) -> (y, logdet)`` and ``reverse(y) -> (x, logdet)``
# acting on group-valued fields ``x[batch, ..., N, N]`` (gauge fields or single matrices), with
# ``logdet[batch]`` the log-Jacobian with respect to Haar measure (of the map applied).


def assert_invertible(layer, x: torch.Tensor, atol: float = 1e-10) -> float:
    """``reverse(forward(x)) = x`` to ``atol`` and the two log-determinants cancel:
    ``logdet_forward(x) + logdet_reverse(forward(x)) = 0``.  Refuses a vacuous check (a layer
    that does not move ``x``).  Returns the largest deviation."""
    with torch.no_grad():
        y, ld = layer.forward(x)
        x2, ld2 = layer.reverse(y)
    moved = float((y - x).abs().max())
    if not moved > 10 * atol:
        raise AssertionError(f"invertibility: the layer hardly moved x ({moved:.1e}); the check "
                             f"would be vacuous")
    dev = max(float((x2 - x).abs().max()), float((ld + ld2).abs().max()))
    if not dev <= atol:
        _fail("invertibility (reverse(forward(x)) and logdet_f + logdet_r)", dev, atol)
    return dev


def autograd_logdet(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``log |det J|`` of a map ``fn`` of group-valued fields ``x[batch, ..., N, N]``, with respect
    to Haar measure, by autograd (one configuration at a time; tiny fields only).

    Construction: local coordinates ``w`` (one real number per link and generator) around ``x``,
    ``x(w) = (1 + sum_a w_a T_a) x`` (the same first derivative as ``exp(sum_a w_a T_a) x``), and
    around ``y = fn(x)`` the coordinates ``w'`` of ``fn(x(w)) y^dag = 1 + sum_a w'_a T_a + O(w^2)``,
    read off with the basis' Gram matrix ``G_ab = Re Tr(T_a^dag T_b)``:
    ``w' = G^{-1} Re Tr(T^dag fn(x(w)) y^dag)``.  Haar measure has the same (constant) density in
    both charts at ``w = 0`` (left invariance), so ``log |det dw'/dw|`` at ``w = 0`` is the
    log-Jacobian with respect to Haar measure.  The Jacobian is built with
    :func:`torch.autograd.functional.jacobian`.
    """
    n = int(x.shape[-1])
    basis = algebra_basis(n, dtype=x.dtype, device=x.device)
    gram = torch.einsum("aij,bij->ab", basis.conj(), basis).real
    ginv = torch.linalg.inv(gram)
    out = []
    for b in range(x.shape[0]):
        x0 = x[b : b + 1].detach()
        with torch.no_grad():
            y0 = fn(x0)
        sites = x0.shape[:-2]
        nd = basis.shape[0]

        def coords(w: torch.Tensor, x0=x0, y0=y0, sites=sites, nd=nd) -> torch.Tensor:
            xa = torch.einsum("...a,aij->...ij", w.reshape(*sites, nd).to(x.dtype), basis)
            eye = torch.eye(n, dtype=x.dtype, device=x.device)
            y = fn(mm(eye + xa, x0))
            m = mm(y, y0.conj().transpose(-1, -2))
            proj = torch.einsum("aij,...ij->...a", basis.conj(), m).real
            return (proj @ ginv.T).reshape(-1)

        w0 = torch.zeros(int(torch.tensor(sites).prod()) * nd, dtype=x.real.dtype,
                         device=x.device)
        jac = torch.autograd.functional.jacobian(coords, w0)
        out.append(torch.linalg.slogdet(jac)[1])
    return torch.stack(out)


def assert_logdet_matches_autograd(layer, x: torch.Tensor, atol: float = 1e-8) -> float:
    """The layer's ``logdet`` equals ``log |det J|`` of its forward map computed by autograd in
    Lie-algebra coordinates (:func:`autograd_logdet`); returns the largest deviation."""
    _, ld = layer.forward(x)
    ref = autograd_logdet(lambda z: layer.forward(z)[0], x)
    dev = float((ld.detach() - ref).abs().max())
    spread = float((ref - ref.mean()).abs().max()) + float(ref.abs().max())
    if not spread > 10 * atol:
        raise AssertionError(f"log-det: the layer's Jacobian is trivial (|log det| <= {spread:.1e}"
                             f"); the check would be vacuous")
    if not dev <= atol:
        _fail("log-det vs autograd Jacobian in Lie-algebra coordinates", dev, atol)
    return dev


def assert_gauge_equivariant(
    layer,
    x: torch.Tensor,
    omega: torch.Tensor | None = None,
    *,
    generator: torch.Generator | None = None,
    atol: float = 1e-10,
) -> float:
    """``layer(U^Omega) = layer(U)^Omega`` and the log-determinant is gauge invariant, for a
    random (Haar) gauge transformation Omega; the same for ``reverse``.  Returns the largest
    deviation."""
    omega = _transforms(x, omega, generator)
    with torch.no_grad():
        y, ld = layer.forward(x)
        yo, ldo = layer.forward(gauge_transform(x, omega))
        xr, ldr = layer.reverse(x)
        xro, ldro = layer.reverse(gauge_transform(x, omega))
    dev = max(float((yo - gauge_transform(y, omega)).abs().max()), float((ldo - ld).abs().max()),
              float((xro - gauge_transform(xr, omega)).abs().max()),
              float((ldro - ldr).abs().max()))
    if not dev <= atol:
        _fail("gauge equivariance (flow(U^Omega) vs flow(U)^Omega, log-det)", dev, atol)
    return dev


def assert_flow_density(model, nrow, n: int = 3, *, generator: torch.Generator | None = None,
                        atol: float = 1e-9) -> tuple[torch.Tensor, torch.Tensor]:
    """A flow model's density is consistent: ``n`` samples ``U ~ q`` on the lattice ``nrow`` lie
    in the group, ``log_prob(U)`` through the exact inverse equals the ``log q`` returned with the
    sample, and ``q`` is gauge invariant (``log_prob(U^Omega) = log q(U)`` for a random
    ``Omega``).  Returns ``(U, log q)``."""
    lat = Lattice(nrow)
    with torch.no_grad():
        u, logq = model.sample(n, nrow, generator=generator)
        assert_in_group(u, model.group, atol=100 * atol)
        dev = float((model.log_prob(u) - logq).abs().max())
        if not dev <= atol:
            _fail("log q of a sample vs log_prob through the inverse", dev, atol)
        omega = random_gauge_transformation(lat, model.group, n, generator=generator,
                                            dtype=u.dtype, device=u.device)
        dev = float((model.log_prob(gauge_transform(u, omega)) - logq).abs().max())
        if not dev <= atol:
            _fail("gauge invariance of the model density q(U^Omega) = q(U)", dev, atol)
    return u, logq
