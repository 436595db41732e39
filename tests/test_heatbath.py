"""Cabibbo-Marinari heatbath and overrelaxation (bridge.mcmc.heatbath): the SU(2) draw's density,
exactness of overrelaxation, group membership, the checkerboard, bit-for-bit restarts, agreement
with HMC and (slow) with Chroma, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bridge import gauge as Gg
from bridge.errors import ConfigError
from bridge.groups import haar
from bridge.lattice import Lattice
from bridge.mcmc import heatbath as H
from bridge.mcmc.base import ChainState
from bridge.mcmc.hmc import hmc
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial

ALPHA_KS = 1e-4


def _hot(lat, group, batch=2, seed=0):
    return Gg.random_gauge(lat, group, batch, generator=torch.Generator().manual_seed(seed))


def _y0_cdf(alpha: float):
    """CDF of ``sqrt(1 - y^2) exp(alpha y)`` on [-1, 1], integrated numerically in
    ``y = cos(theta)`` (density ``sin^2(theta) exp(alpha (cos(theta) - 1))``, smooth)."""
    theta = np.linspace(math.pi, 0.0, 400001)
    dens = np.sin(theta) ** 2 * np.exp(alpha * (np.cos(theta) - 1.0))
    cum = np.concatenate([[0.0], np.cumsum(0.5 * (dens[1:] + dens[:-1]) * np.diff(-theta))])
    y, cum = np.cos(theta), cum / cum[-1]
    return lambda x: np.interp(x, y, cum)


@pytest.mark.parametrize("alpha", [0.0, 1e-14, 0.3, 1.99, 2.0, 6.0, 40.0])
def test_su2_link_heatbath_distribution(alpha):
    """A link with fixed staple sum ``A = k V0``: ``y = U' V0`` has ``y0 = Re Tr(U' A) / (2k)``
    distributed as ``sqrt(1 - y0^2) exp(2 beta k y0 / N)`` and an isotropic vector part."""
    n, beta = 20000, 2.0
    k = alpha * 2 / (2 * beta)  # alpha = 2 beta k / N with N = 2
    g = torch.Generator().manual_seed(7)
    v0 = haar("SU2", (), generator=g)
    a = (k * v0).expand(n, 2, 2)  # k = 0: A = 0, the draw is Haar
    u = haar("SU2", (n,), generator=g)
    w = u @ a
    H._subgroup_step(u, w, 0, 1, beta / 2, g)
    assert torch.allclose(w, u @ a, atol=1e-12)  # W = U A kept up to date
    y = u @ v0
    y0 = (y[:, 0, 0] + y[:, 1, 1]).real.numpy() / 2
    assert stats.kstest(y0, _y0_cdf(alpha)).pvalue > ALPHA_KS
    vec = torch.stack([(y[:, 0, 1] + y[:, 1, 0]).imag, (y[:, 0, 1] - y[:, 1, 0]).real,
                       (y[:, 0, 0] - y[:, 1, 1]).imag], -1) / 2
    unit = (vec / vec.norm(dim=-1, keepdim=True)).numpy()
    for c in range(3):  # each component of a uniform unit vector is uniform on [-1, 1]
        assert stats.kstest(unit[:, c], stats.uniform(-1, 2).cdf).pvalue > ALPHA_KS
    phi = np.arctan2(unit[:, 1], unit[:, 0])
    assert stats.kstest(phi, stats.uniform(-math.pi, 2 * math.pi).cdf).pvalue > ALPHA_KS


@pytest.mark.parametrize("group,nrow", [("SU2", (4, 2)), ("SU3", (2, 2, 2, 4)),
                                        ("SU3", (2, 4, 2))])
def test_overrelaxation_keeps_action(group, nrow):
    u = _hot(Lattice(nrow), group)
    s0 = Gg.wilson_action(u, 1.0)
    u1 = H.overrelaxation_sweep(u)
    assert (u1 - u).abs().max() > 0.1
    assert torch.allclose(Gg.wilson_action(u1, 1.0), s0, rtol=0, atol=1e-10)


def test_overrelaxation_involution_su2_link():
    """SU(2): the half-sweep's reflection, applied twice with the same staples, gives U back."""
    u = _hot(Lattice((4, 2, 2, 2)), "SU2")
    once = H.half_sweep(u, 1, 0)
    assert (once - u).abs().max() > 0.1
    assert torch.allclose(H.half_sweep(once, 1, 0), u, rtol=0, atol=1e-12)


def test_overrelaxation_su3_subgroup_involution():
    """SU(3): each subgroup reflection is an involution; the link update (three subgroups) is
    undone by the reflections in the reverse order, with the staple held fixed."""
    g = torch.Generator().manual_seed(3)
    u = haar("SU3", (50,), generator=g)
    a = haar("SU3", (50, 6), generator=g).sum(1)
    for i, j in H.SUBGROUPS[3]:
        x = u.clone()
        H._subgroup_step(x, x @ a, i, j, None, None)
        assert (x - u).abs().max() > 0.1
        H._subgroup_step(x, x @ a, i, j, None, None)
        assert torch.allclose(x, u, rtol=0, atol=1e-12)
    x = u.clone()
    w = x @ a
    for i, j in H.SUBGROUPS[3] + H.SUBGROUPS[3][::-1]:
        H._subgroup_step(x, w, i, j, None, None)
    assert torch.allclose(x, u, rtol=0, atol=1e-12)


@pytest.mark.parametrize("group,nrow", [("SU2", (2, 4, 2, 2)), ("SU3", (2, 2, 2, 4))])
def test_links_stay_in_group_and_staples_match(group, nrow):
    lat = Lattice(nrow)
    u = _hot(lat, group)
    nc = int(u.shape[-1])
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        u = H.heatbath_sweep(u, 2.5, g, n_or=1)
    eye = torch.eye(nc, dtype=u.dtype)
    assert (u @ u.mH - eye).abs().max() < 1e-12
    assert (torch.linalg.det(u) - 1).abs().max() < 1e-12
    flat = u.view(2, lat.nd * lat.volume, nc, nc)
    for (mu, _p), t in H._tables(lat, u.device).items():  # the gathered staples are staple()'s
        ref = Gg.staple(u, mu).reshape(2, lat.volume, nc, nc)[:, t["link"] - mu * lat.volume]
        assert torch.allclose(H._staples(flat, t), ref, rtol=0, atol=1e-12)


def test_half_sweep_touches_only_its_links():
    lat = Lattice((4, 2, 2, 4))
    u = _hot(lat, "SU3")
    parity = lat.parity()
    for mu in (0, 3):
        new = H.half_sweep(u, mu, 0, 3.0, torch.Generator().manual_seed(2))
        diff = (new - u).abs().amax((-1, -2))  # [batch, mu, sites]
        moved = torch.zeros_like(diff, dtype=torch.bool)
        moved[:, mu] = parity == 0
        assert torch.equal(diff[~moved], torch.zeros_like(diff[~moved]))
        assert bool((diff[moved] > 1e-3).all())


def test_kernel_restart_bit_for_bit_and_info():
    u0 = _hot(Lattice((2, 2, 2, 4)), "SU3", batch=3)
    k = H.heatbath(4.0, n_hb=1, n_or=2)
    s = k.init(u0, seed=11)
    for _ in range(4):
        s, info = k.step(s)
    assert info.step == 3 and info.kernel == "heatbath"
    assert bool(info.accepted.all()) and bool((info.acc_prob == 1).all())
    assert bool((info.delta == 0).all())
    assert bool(s.log_q.isnan().all() and s.log_w.isnan().all() and s.log_est.isnan().all())
    assert s.action.dtype == torch.float64
    assert torch.allclose(s.action, Gg.wilson_action(s.U, 4.0), rtol=1e-13)
    r = k.init(u0, seed=11)
    for _ in range(2):
        r, _ = k.step(r)
    ckpt = ChainState(*(x.clone() if isinstance(x, torch.Tensor) else x for x in r))
    k2 = H.heatbath(4.0, n_hb=1, n_or=2)
    r = k2.init(ckpt)
    for _ in range(2):
        r, _ = k2.step(r)
    assert r.step == s.step == 4
    assert torch.equal(r.U, s.U) and torch.equal(r.action, s.action)
    other = H.heatbath(4.0, n_hb=1, n_or=2, name="hb2").step(k.init(u0, seed=11))[0]
    assert not torch.equal(other.U, k.step(k.init(u0, seed=11))[0].U)  # own stream per name


def _mean_plaquette(kernel, u, n_therm, n_meas):
    s = kernel.init(u, seed=5)
    vals = []
    for i in range(n_therm + n_meas):
        s, _ = kernel.step(s)
        if i >= n_therm:
            vals.append(Gg.mesplq(s.U).w_plaq)
    means = torch.stack(vals).mean(0)  # per chain
    return float(means.mean()), float(means.std() / math.sqrt(means.numel()))


@pytest.mark.parametrize("group,beta", [("SU2", 1.0), ("SU3", 2.0)])
def test_plaquette_agrees_with_hmc(group, beta):
    """2^4: heatbath and HMC (exact, Metropolis) give the same mean plaquette (32 chains; a 10%
    error in beta would be a 10-sigma difference)."""
    lat, batch = Lattice((2, 2, 2, 2)), 32
    u = _hot(lat, group, batch)
    hb = H.heatbath(beta, n_hb=1, n_or=1)
    m_hb, e_hb = _mean_plaquette(hb, u, 10, 40)
    integ = Integrator([Level(scheme("LCM_STS_LEAPFROG"), 4, [GaugeMonomial(beta)])])
    m_hmc, e_hmc = _mean_plaquette(hmc(integ, 1.0), u, 20, 100)  # acceptance ~ 0.87
    assert abs(m_hb - m_hmc) < 4 * math.hypot(e_hb, e_hmc), (m_hb, e_hb, m_hmc, e_hmc)
    assert e_hb < 0.01 and e_hmc < 0.01


@pytest.mark.slow
def test_plaquette_agrees_with_chroma_su3_b55():
    """SU(3) 4^4, beta 5.5: Chroma's w_plaq 0.49866(69) (tests/data/PROVENANCE.md,
    chroma/pure_gauge_b5.5_4x4)."""
    u = Gg.unit_gauge(Lattice((4, 4, 4, 4)), "SU3", 16)
    m, e = _mean_plaquette(H.heatbath(5.5, n_hb=1, n_or=3), u, 50, 200)
    assert abs(m - 0.49866) < 4 * math.hypot(e, 0.00069), (m, e)


def test_errors():
    lat = Lattice((2, 2, 2, 2))
    u = _hot(lat, "SU3")
    g = torch.Generator().manual_seed(0)
    for bad in (-1.0, math.nan, math.inf):
        with pytest.raises(ValueError, match=f"beta: .*{bad}"):
            H.heatbath(bad)
        with pytest.raises(ValueError, match="beta: "):
            H.heatbath_sweep(u, bad, g)
    with pytest.raises(ConfigError, match=r"group: .*U\(1\)"):
        H.heatbath(1.0).init(_hot(lat, "U1"))
    with pytest.raises(ConfigError, match=r"SU\(2\) and SU\(3\)"):
        H.overrelaxation_sweep(_hot(lat, "SU4"))
    with pytest.raises(ValueError, match=r"nrow: .*even extents.*\(3, 2\)"):
        H.heatbath_sweep(_hot(Lattice((3, 2)), "SU2"), 1.0, g)
    with pytest.raises(ValueError, match="n_hb, n_or"):
        H.heatbath(1.0, n_hb=0, n_or=0)
    s = H.heatbath(1.0).init(u)
    with pytest.raises(ConfigError, match="target different"):
        H.heatbath(2.0).init(s)


def test_strided_fields_update_like_contiguous_ones():
    # fields read from files or sliced from a batch may be non-contiguous views
    u = _hot(Lattice((2, 2, 2, 4)), "SU3", batch=3)
    strided = u.transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous() and torch.equal(strided, u)
    a = H.heatbath_sweep(u, 5.5, torch.Generator().manual_seed(4))
    b = H.heatbath_sweep(strided, 5.5, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert torch.equal(H.overrelaxation_sweep(u), H.overrelaxation_sweep(strided))


@pytest.mark.parametrize("group,nrow", [("SU2", (4, 2)), ("SU3", (2, 2, 2, 4))])
def test_reversed_overrelaxation_is_the_inverse(group, nrow):
    # each subgroup reflection is an involution: the sweep in the opposite order undoes it
    u = _hot(Lattice(nrow), group)
    v = H.overrelaxation_sweep(u)
    assert (v - u).abs().max() > 0.1
    back = H.overrelaxation_sweep(v, reverse=True)
    assert torch.allclose(back, u, rtol=0, atol=1e-11)
    assert not torch.allclose(H.overrelaxation_sweep(v), u, rtol=0, atol=1e-6)  # order matters
