"""Integrators and the HMC kernel: reversibility, dH scaling, <exp(-dH)> = 1, exactness on 2D U(1),
checkpoint/resume, errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bridge import gauge as Gg
from bridge.errors import PhysicsError
from bridge.exact import u1_2d_plaquette
from bridge.groups import random_algebra, reunitarize
from bridge.lattice import Lattice
from bridge.mcmc.hmc import hmc_kernel, kinetic_energy
from bridge.mcmc.integrators import MIN_NORM_2_LAMBDA, Integrator, Level, Scheme, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.testing import assert_reversible

SCHEME_NAMES = ["LCM_STS_LEAPFROG", "LCM_TST_LEAPFROG", "LCM_STS_MIN_NORM_2",
                "LCM_TST_MIN_NORM_2"]


def _thermal_su3(lat, batch=1, seed=0, device="cpu"):
    g = torch.Generator(device=device).manual_seed(seed)
    hot = Gg.random_gauge(lat, "SU3", batch, generator=g, device=device)
    return reunitarize(Gg.unit_gauge(lat, "SU3", batch, device=device) + 0.8 * hot)


def _momenta(u, seed=1):
    g = torch.Generator(device=u.device).manual_seed(seed)
    return random_algebra(u.shape[-1], tuple(u.shape[:-2]), generator=g, device=u.device)


def _hamiltonian(mon, u, p):
    return kinetic_energy(p) + mon.action(u)


@pytest.mark.parametrize("name", SCHEME_NAMES)
def test_reversibility_su3(name, device):
    lat = Lattice((2, 2, 2, 4))
    u = _thermal_su3(lat, 2, device=device)
    p = _momenta(u)
    integ = Integrator([Level(scheme(name), 4, [GaugeMonomial(5.5)])])
    assert_reversible(lambda a, b: integ(a, b, 1.0)[:2], u, p, atol=1e-10)


def test_reversibility_nested_time_scales(device):
    lat = Lattice((2, 2, 2, 4))
    u = _thermal_su3(lat, device=device)
    p = _momenta(u)
    # the gauge action split into two monomials on two time scales (as Chroma nests a gauge
    # sub-integrator under the fermion level)
    outer = Level(scheme("LCM_STS_MIN_NORM_2"), 3, [GaugeMonomial(2.0, "g1")])
    inner = Level(scheme("LCM_STS_LEAPFROG"), 2, [GaugeMonomial(3.5, "g2")])
    integ = Integrator([outer, inner])
    assert_reversible(lambda a, b: integ(a, b, 1.0)[:2], u, p, atol=1e-10)
    _, _, counts = integ(u, p, 1.0)
    # 2MN: 3 fused momentum updates per step -> 2*3+1; inner leapfrog: n_steps+1 per outer Q
    assert counts == {"g1": 7, "g2": 6 * 3}


def _delta_h(name, nsteps, lam=None):
    lat = Lattice((2, 2, 2, 4))
    u = _thermal_su3(lat, seed=3)
    p = _momenta(u, seed=4)
    mon = GaugeMonomial(5.5)
    h0 = _hamiltonian(mon, u, p)
    dh = []
    for n in nsteps:
        sch = scheme(name) if lam is None else scheme(name, lam=lam)
        u1, p1, _ = Integrator([Level(sch, n, [mon])])(u, p, 1.0)
        dh.append(abs(float(_hamiltonian(mon, u1, p1) - h0)))
    return dh


@pytest.mark.parametrize("name", ["LCM_STS_LEAPFROG", "LCM_STS_MIN_NORM_2"])
def test_delta_h_scales_as_eps_squared(name):
    nsteps = [16, 24, 32, 48]
    dh = _delta_h(name, nsteps)
    slope = np.polyfit(np.log(1.0 / np.array(nsteps)), np.log(dh), 1)[0]
    assert abs(slope - 2.0) < 0.2, (slope, dh)


def test_min_norm_2_beats_leapfrog_at_equal_cost():
    # 2MN costs two force evaluations per step: compare at equal evaluations
    dh_lf = _delta_h("LCM_STS_LEAPFROG", [32])
    dh_mn = _delta_h("LCM_STS_MIN_NORM_2", [16])
    assert dh_mn[0] < dh_lf[0]


def test_min_norm_2_coefficients():
    s = scheme("LCM_STS_MIN_NORM_2")
    assert s.updates[0] == ("P", MIN_NORM_2_LAMBDA)
    assert s.updates[2] == ("P", 1 - 2 * MIN_NORM_2_LAMBDA)
    # lambda = 1/4 makes 2MN two leapfrog half steps: both integrate identically
    lat = Lattice((2, 2, 2, 2))
    u = _thermal_su3(lat)
    p = _momenta(u)
    mon = GaugeMonomial(5.0)
    a = Integrator([Level(scheme("LCM_STS_MIN_NORM_2", lam=0.25), 3, [mon])])(u, p, 0.6)
    b = Integrator([Level(scheme("LCM_STS_LEAPFROG"), 6, [mon])])(u, p, 0.6)
    assert torch.allclose(a[0], b[0], atol=1e-13) and torch.allclose(a[1], b[1], atol=1e-13)


def test_exp_minus_delta_h_is_one():
    """<exp(-dH)> = 1 in equilibrium (area preservation + reversibility), 4D SU(3), 64 chains
    thermalised first; coarse steps so that dH is O(1)."""
    lat = Lattice((2, 2, 2, 2))
    u = Gg.unit_gauge(lat, "SU3", 64)
    mon = GaugeMonomial(2.0)
    therm = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 8, [mon])]), 1.0)
    st = therm.init(u, seed=3)
    for _ in range(25):
        st, _ = therm.step(st)
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 3, [mon])]), 1.0)
    st = k.init(st.U, seed=4, trajectory=st.trajectory)
    vals = []
    for _ in range(25):
        st, info = k.step(st)
        vals.append(torch.exp(-info.delta_h))
    x = torch.cat(vals)
    # chains are independent; successive trajectories are nearly so at this coupling
    err = float(x.std()) / math.sqrt(x.numel())
    assert float(x.std()) > 0.1  # dH is not trivially small
    assert abs(float(x.mean()) - 1.0) < 3 * err


def _u1_chain(beta, L, batch, ntraj, seed, nsteps=10):
    lat = Lattice((L, L))
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), nsteps,
                                     [GaugeMonomial(beta)])]), 1.0)
    st = k.init(Gg.unit_gauge(lat, "U1", batch), seed=seed)
    plaq = []
    for _ in range(ntraj):
        st, info = k.step(st)
        plaq.append(info.w_plaq)
    return torch.stack(plaq), st


def test_u1_2d_plaquette_exact_smoke():
    """Fast version: 2D U(1), L = 4, beta = 1, 32 chains: exact plaquette within 3 sigma
    (chains are independent; the error is taken from the spread of the chain means)."""
    plaq, _ = _u1_chain(1.0, 4, 32, 60, seed=11, nsteps=6)
    means = plaq[10:].mean(0)
    err = float(means.std()) / math.sqrt(means.numel())
    assert abs(float(means.mean()) - u1_2d_plaquette(1.0, 4)) < 3 * err


@pytest.mark.slow
@pytest.mark.parametrize("beta", [2.0, 4.0])
def test_u1_2d_plaquette_exact(beta):
    plaq, _ = _u1_chain(beta, 8, 64, 400, seed=12)
    means = plaq[50:].mean(0)
    err = float(means.std()) / math.sqrt(means.numel())
    assert abs(float(means.mean()) - u1_2d_plaquette(beta, 8)) < 3 * err


def test_checkpoint_resume_bit_identical():
    """The state (U, seed, trajectory) is the complete random state: 6 trajectories in one go
    equal 3 + (restart from the saved state) + 3, bit for bit."""
    lat = Lattice((2, 2, 2, 4))
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 5, [GaugeMonomial(5.5)])]),
                   1.0, warmup=1)
    st = k.init(Gg.unit_gauge(lat, "SU3", 2), seed=99)
    ref = []
    for _ in range(6):
        st, info = k.step(st)
        ref.append(info.delta_h)
    final = st.U
    st = k.init(Gg.unit_gauge(lat, "SU3", 2), seed=99)
    for _ in range(3):
        st, _ = k.step(st)
    saved = (st.U.clone(), st.seed, st.trajectory)
    st = k.init(saved[0], seed=saved[1], trajectory=saved[2])
    for i in range(3, 6):
        st, info = k.step(st)
        assert torch.equal(info.delta_h, ref[i])
    assert torch.equal(st.U, final)


def test_warmup_always_accepts_and_chains_are_independent():
    lat = Lattice((2, 2, 2, 2))
    # large steps: Metropolis would reject; warm-up accepts regardless
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 1, [GaugeMonomial(5.5)])]),
                   2.0, warmup=2)
    st = k.init(_thermal_su3(lat, batch=4), seed=1)
    for _ in range(2):
        st, info = k.step(st)
        assert info.warmup and bool(info.accepted.all())
    st, info = k.step(st)
    assert not info.warmup
    # each chain has its own decision
    for i in range(4):
        exp = float(torch.exp(-info.delta_h[i]).clamp(max=1))
        assert abs(float(info.acc_prob[i]) - exp) < 1e-15


def test_non_finite_force_raises_and_keeps_state():
    lat = Lattice((2, 2))
    u = Gg.unit_gauge(lat, "U1", 1)
    k = hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 2, [GaugeMonomial(1.0)])]), 1.0)
    st = k.init(u, seed=0)
    bad = st._replace(U=st.U * float("nan"))
    with pytest.raises(PhysicsError, match="non-finite force from monomial"):
        k.step(bad)
    assert torch.equal(st.U, u)


def test_bad_parameters():
    with pytest.raises(ValueError, match="n_steps: expected a positive integer, got 0"):
        Level(scheme("LCM_STS_LEAPFROG"), 0, [])
    with pytest.raises(ValueError, match="integrator Name: expected one of"):
        scheme("LCM_OMELYAN")
    with pytest.raises(ValueError, match="P coefficients must sum to 1"):
        Scheme("bad", (("P", 0.3), ("Q", 1.0)), 2)
    with pytest.raises(ValueError, match="tau0: expected a positive trajectory length, got 0.0"):
        hmc_kernel(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 1, [GaugeMonomial(1.0)])]), 0.0)


def test_kinetic_energy_matches_trace_form(generator):
    """``sum |P_ab|^2`` equals the literal ``Re Tr P^dagger P`` to rounding."""
    from bridge.groups import random_algebra
    from bridge.mcmc.hmc import _kinetic_energy_reference

    p = random_algebra("SU3", (3, 4, 2, 2, 2, 2), generator=generator)
    assert torch.allclose(kinetic_energy(p), _kinetic_energy_reference(p), rtol=1e-14, atol=0)
