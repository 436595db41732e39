"""Rational-quadratic splines: invertibility, derivative vs autograd, identity at zero
parameters, periodicity of the circular spline."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.flows.splines import circular_rqs, interval_rqs, n_params

TWO_PI = 2 * math.pi


def _params(shape, k, scale=2.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(*shape, n_params(k), generator=g, dtype=torch.float64)


def _assert_inverse(back, x, logd):
    """Round-trip error within the conditioning: a rounding error ~1e-16 in y becomes
    1e-16 / f'(x) in x (random parameters give derivatives down to 1e-6)."""
    tol = 1e-12 * (1.0 + x.abs()) + 1e-14 * torch.exp(-logd)
    worst = float(((back - x).abs() / tol).max())
    assert worst <= 1.0, worst


@pytest.mark.parametrize("k", [1, 4, 8])
def test_interval_inverse_and_derivative(k):
    g = torch.Generator().manual_seed(1)
    x = (-1 + 3 * torch.rand(500, generator=g, dtype=torch.float64)).requires_grad_()
    p = _params((500,), k)
    y, logd = interval_rqs(x, p, -1.0, 2.0)
    grad = torch.autograd.grad(y.sum(), x)[0]
    torch.testing.assert_close(logd, grad.log(), atol=1e-10, rtol=0)
    x2, logi = interval_rqs(y.detach(), p, -1.0, 2.0, inverse=True)
    _assert_inverse(x2, x.detach(), logd.detach())
    torch.testing.assert_close(logi, -logd.detach(), atol=1e-9, rtol=1e-9)
    # end points fixed
    ends, _ = interval_rqs(torch.tensor([-1.0, 2.0], dtype=torch.float64), p[:2], -1.0, 2.0)
    torch.testing.assert_close(ends, torch.tensor([-1.0, 2.0], dtype=torch.float64))


@pytest.mark.parametrize("k", [1, 3, 8])
def test_circular_inverse_derivative_periodicity(k):
    g = torch.Generator().manual_seed(2)
    theta = (-3 * math.pi + 6 * math.pi * torch.rand(400, generator=g, dtype=torch.float64))
    theta.requires_grad_()
    p = _params((400,), k)
    y, logd = circular_rqs(theta, p)
    grad = torch.autograd.grad(y.sum(), theta)[0]
    torch.testing.assert_close(logd, grad.log(), atol=1e-10, rtol=0)
    x2, logi = circular_rqs(y.detach(), p, inverse=True)
    _assert_inverse(x2, theta.detach(), logd.detach())
    torch.testing.assert_close(logi, -logd.detach(), atol=1e-9, rtol=1e-9)
    y2, logd2 = circular_rqs(theta.detach() + TWO_PI, p)
    torch.testing.assert_close(y2, y.detach() + TWO_PI, atol=1e-11, rtol=0)
    torch.testing.assert_close(logd2, logd.detach(), atol=1e-9, rtol=0)


def test_circular_derivative_continuous_at_zero():
    """log F' just right of 0 equals log F' just left of 2 pi up to the change of log F' over
    such a step inside either end bin (random parameters make bins narrow and log F' steep
    there); a spline without a shared end derivative jumps by O(1)."""
    p = _params((1,), 5).expand(4, -1)
    d = 1e-9
    t = torch.tensor([d, 2 * d, TWO_PI - d, TWO_PI - 2 * d], dtype=torch.float64)
    _, logd = circular_rqs(t, p)
    slope = abs(float(logd[1] - logd[0])) + abs(float(logd[3] - logd[2]))
    assert abs(float(logd[0] - logd[2])) <= 2 * slope + 1e-12


def test_zero_parameters_give_identity():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    y, logd = circular_rqs(x, torch.zeros(101, n_params(6), dtype=torch.float64))
    torch.testing.assert_close(y, x, atol=1e-12, rtol=0)
    torch.testing.assert_close(logd, torch.zeros_like(x), atol=1e-12, rtol=0)
    u = torch.linspace(0, 1, 101, dtype=torch.float64)
    y, logd = interval_rqs(u, torch.zeros(101, n_params(6), dtype=torch.float64))
    torch.testing.assert_close(y, u, atol=1e-12, rtol=0)
    torch.testing.assert_close(logd, torch.zeros_like(u), atol=1e-12, rtol=0)


@settings(max_examples=40, deadline=None)
@given(theta=st.floats(-20.0, 20.0), seed=st.integers(0, 2**16), k=st.integers(1, 10))
def test_circular_roundtrip_property(theta, seed, k):
    p = _params((1,), k, scale=3.0, seed=seed)
    t = torch.tensor([theta], dtype=torch.float64)
    y, logd = circular_rqs(t, p)
    back, _ = circular_rqs(y, p, inverse=True)
    _assert_inverse(back, t, logd)


def test_monotone_and_bad_input():
    p = _params((1,), 6, scale=4.0).expand(1000, -1)
    x = torch.linspace(0, TWO_PI, 1000, dtype=torch.float64)
    y, _ = circular_rqs(x, p)
    assert bool((y.diff() > 0).all())
    with pytest.raises(ValueError, match="3K \\+ 1"):
        circular_rqs(x, torch.zeros(1000, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match="params: expected shape"):
        circular_rqs(x, torch.zeros(10, 7, dtype=torch.float64))
    with pytest.raises(ValueError, match="k: expected"):
        n_params(0)
