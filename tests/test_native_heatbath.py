"""The native heatbath/overrelaxation half sweep (bridge/_native_heatbath.py) against the torch
path and against the exact SU(2) link distribution: overrelaxation (deterministic) equal to
rounding, with and without plaquette coefficients and in reverse; the heatbath draw's density
per link; results independent of the thread count; a non-finite field refused.  Skipped, with
the reason, where the extension cannot be built."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bridge import _native_heatbath
from bridge import gauge as Gg
from bridge.errors import PhysicsError
from bridge.gauge.defect import defect_weights, weighted_wilson_action
from bridge.groups import expm_algebra, random_algebra
from bridge.lattice import Lattice
from bridge.mcmc import heatbath as H

ALPHA_KS = 1e-4


@pytest.fixture
def native(monkeypatch):
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "1")
    if not _native_heatbath.available():
        pytest.skip(f"native heatbath not available: {_native_heatbath._state['error']}")
    return _native_heatbath


def _hot(nrow, group, batch=2, seed=0):
    return Gg.random_gauge(Lattice(nrow), group, batch,
                           generator=torch.Generator().manual_seed(seed))


def _warm(nrow, group, batch=2, seed=0, scale=0.4):
    """Links ``exp(scale X)`` with random algebra elements ``X``: away from the identity, but
    the subgroup reflections stay well conditioned, so rounding does not grow."""
    lat = Lattice(nrow)
    g = torch.Generator().manual_seed(seed)
    x = random_algebra(group, (batch, lat.nd, *lat.shape), generator=g)
    return expm_algebra(scale * x)


def _both(monkeypatch, fn):
    """``fn()`` with the native kernel, then on the torch path."""
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "1")
    a = fn()
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "0")
    b = fn()
    monkeypatch.setenv("QCD_BRIDGE_NATIVE", "1")
    return a, b


@pytest.mark.parametrize("group,nrow", [("SU2", (4, 2)), ("SU3", (2, 2, 2, 4)),
                                        ("SU3", (4, 4, 4, 4))])
@pytest.mark.parametrize("reverse", [False, True])
def test_overrelaxation_equals_torch(native, monkeypatch, group, nrow, reverse):
    u = _warm(nrow, group, seed=3)
    a, b = _both(monkeypatch, lambda: H.overrelaxation_sweep(u, reverse=reverse))
    assert (a - u).abs().max() > 0.05
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def test_weighted_overrelaxation_equals_torch(native, monkeypatch):
    lat = Lattice((4, 4, 4, 4))
    u = _warm((4, 4, 4, 4), "SU3", seed=5)
    w = defect_weights(lat, (2, 2, 2), 0.3)
    a, b = _both(monkeypatch, lambda: H.overrelaxation_sweep(u, weights=w))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)
    s0 = weighted_wilson_action(u, 6.0, w)
    assert torch.allclose(weighted_wilson_action(a, 6.0, w), s0, rtol=1e-12)


@pytest.mark.parametrize("beta", [0.3, 1.5, 6.0])
def test_native_su2_link_distribution(native, beta):
    """Many copies of one SU(2) field, one half sweep: each updated link ``U'`` with staple sum
    ``A = k V0`` has ``y0 = Re Tr(U' A) / (2k)`` distributed as ``sqrt(1 - y0^2) exp(beta k
    y0)`` (alpha = 2 beta k / N below and above Kennedy-Pendleton's threshold 2) and
    ``U' V0`` has an isotropic vector part."""
    n, mu, parity = 6000, 1, 0
    lat = Lattice((2, 2, 2, 2))
    u = _hot((2, 2, 2, 2), "SU2", 1, seed=11).expand(n, -1, -1, -1, -1, -1, -1, -1).clone()
    out = H.half_sweep(u, mu, parity, beta, torch.Generator().manual_seed(2))
    a = Gg.staple(u, mu)  # the neighbours did not move
    par = lat.parity().reshape(lat.shape).bool() == bool(parity)
    k = torch.sqrt(torch.linalg.det(a[0]).real)  # A = k V0 for SU(2)
    tested, theta = 0, np.linspace(math.pi, 0.0, 200001)
    cos_theta = np.cos(theta)
    for site in torch.nonzero(par.reshape(-1)).reshape(-1)[:4].tolist():
        idx = np.unravel_index(site, lat.shape)
        ks = float(k[idx])
        v0 = a[0][idx] / ks
        y = out[(slice(None), mu, *idx)] @ v0
        y0 = (y[:, 0, 0] + y[:, 1, 1]).real.numpy() / 2
        alpha = beta * ks
        dens = np.sin(theta) ** 2 * np.exp(alpha * (np.cos(theta) - 1.0))
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(-theta))])
        cdf = cum / cum[-1]
        assert stats.kstest(y0, lambda x, c=cdf: np.interp(x, cos_theta, c)).pvalue > ALPHA_KS
        vec = torch.stack([(y[:, 0, 1] + y[:, 1, 0]).imag, (y[:, 0, 1] - y[:, 1, 0]).real,
                           (y[:, 0, 0] - y[:, 1, 1]).imag], -1)
        unit = (vec / vec.norm(dim=-1, keepdim=True)).numpy()
        assert stats.kstest(unit[:, 2], stats.uniform(-1, 2).cdf).pvalue > ALPHA_KS
        tested += 1
    assert tested == 4
    other = ~par  # links of the other parity and other directions are untouched
    assert torch.equal(out[:, mu][:, other], u[:, mu][:, other])
    assert torch.equal(out[:, 0], u[:, 0])


def test_heatbath_independent_of_threads_and_reproducible(native):
    u = _hot((4, 4, 4, 4), "SU3", 3, seed=4)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        a = H.heatbath_sweep(u, 5.5, torch.Generator().manual_seed(9), n_or=1)
        torch.set_num_threads(2)
        b = H.heatbath_sweep(u, 5.5, torch.Generator().manual_seed(9), n_or=1)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(a, b)
    c = H.heatbath_sweep(u, 5.5, torch.Generator().manual_seed(10), n_or=1)
    assert (a - c).abs().max() > 0.1  # another generator state, other draws
    unit = torch.eye(3, dtype=a.dtype).expand_as(a)
    assert torch.allclose(a @ a.conj().transpose(-1, -2), unit, atol=1e-12)


def test_non_finite_field_refused(native):
    u = _hot((2, 2, 2, 2), "SU3", 1)
    u[0, 1, 0, 0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(PhysicsError, match="SU\\(2\\) draws not accepted"):
        H.heatbath_sweep(u, 5.5, torch.Generator().manual_seed(1))
