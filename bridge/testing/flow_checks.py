"""Checks of normalizing-flow layers and models (:mod:`bridge.flows`): invertibility, the
log-determinant against autograd in Lie-algebra coordinates, gauge equivariance, and the
consistency of a model's density.

A "layer" is any object with ``forward(x) -> (y, logdet)`` and ``reverse(y) -> (x, logdet)``
acting on group-valued fields ``x[batch, ..., N, N]`` (gauge fields or single matrices), with
``logdet[batch]`` the log-Jacobian with respect to Haar measure (of the map applied).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..gauge import gauge_transform, random_gauge_transformation
from ..groups import algebra_basis, mm
from ..lattice import Lattice
from .checks import _fail, _transforms, assert_in_group

__all__ = [
    "assert_invertible",
    "assert_logdet_matches_autograd",
    "assert_gauge_equivariant",
    "assert_flow_density",
    "autograd_logdet",
]


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


def field_autograd_logdet(fn: Callable[[torch.Tensor], torch.Tensor],
                          x: torch.Tensor) -> torch.Tensor:
    """``log |det J|`` of a map of one complex field ``x`` (any shape) in real coordinates
    (real and imaginary parts of every component), by autograd; for tiny fields."""
    shape = x.shape

    def real_fn(v: torch.Tensor) -> torch.Tensor:
        y = fn(torch.view_as_complex(v.reshape(*shape, 2)))
        return torch.view_as_real(y).reshape(-1)

    j = torch.autograd.functional.jacobian(real_fn, torch.view_as_real(x).reshape(-1).detach())
    return torch.linalg.slogdet(j)[1]


def assert_conditional_flow(flow, u: torch.Tensor, chi: torch.Tensor,
                            atol: float = 1e-8) -> float:
    """A conditional field flow ``phi = flow(chi, U) -> (phi, logdet[B])`` with ``reverse``
    (e.g. :class:`bridge.flows.pseudofermion.PseudofermionFlow`): invertible, the two
    log-determinants cancel, and the log-determinant of the first configuration and draw equals
    autograd's in real coordinates.  Returns the largest deviation."""
    with torch.no_grad():
        phi, ld = flow(chi, u)
        chi2, ld2 = flow.reverse(phi, u)
    scale = 1.0 + float(phi.abs().max())
    dev = max(float((chi2 - chi).abs().max()), float((ld + ld2).abs().max()) / scale)
    x0, u0 = chi[:1, :1], u[:1]
    auto = field_autograd_logdet(lambda x: flow(x, u0)[0], x0)
    dev = max(dev, abs(float(auto) - float(ld[0])))
    if not dev <= atol:
        _fail("conditional flow (invertibility, logdet vs autograd)", dev, atol)
    return dev


def assert_conditional_flow_covariant(flow, u: torch.Tensor, chi: torch.Tensor, *,
                                      generator: torch.Generator | None = None,
                                      atol: float = 1e-9) -> float:
    """``flow(Omega chi | U^Omega) = Omega flow(chi | U)`` for a random gauge transformation
    on the flow's sites (the odd sites of the even-odd layout), with the same log-determinant.
    Returns the largest deviation."""
    from ..gauge import gauge_transform, random_gauge_transformation
    from ..lattice import Lattice

    lat = Lattice.of(u)
    b, nc = lat.check_gauge(u)
    omega = random_gauge_transformation(lat, nc, b, generator=generator, dtype=u.dtype)
    eo = flow.operator(u)._eo_setup()
    om = eo.split(omega.unsqueeze(1))[1]  # odd sites, [B, 1, t, z, y, x/2, Nc, Nc]

    def rot(f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bntzyxac,bntzyxsc->bntzyxsa", om, f)

    with torch.no_grad():
        phi, ld = flow(chi, u)
        phi_g, ld_g = flow(rot(chi), gauge_transform(u, omega))
    dev = max(float((phi_g - rot(phi)).abs().max()) / (1.0 + float(phi.abs().max())),
              float((ld_g - ld).abs().max()))
    if not dev <= atol:
        _fail("gauge covariance of the conditional flow", dev, atol)
    return dev
