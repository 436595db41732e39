"""The analytic plaquette-variable proposal of 2D U(1) (bridge/flows/analytic.py): its density is
checked numerically (sample vs log_prob, gauge invariance, von Mises moments, the exact
normalisation through Z), and a hybrid chain with it reproduces the exact plaquette and, in a slow
test, the exact topological susceptibility."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bridge.exact import bessel_i, u1_2d_plaquette, u1_2d_topological_susceptibility
from bridge.flows import U1PlaquetteProposal
from bridge.flows.analytic import log_i0, plaquette_links, von_mises
from bridge.gauge import (
    gauge_transform,
    plaquette_field,
    random_gauge,
    random_gauge_transformation,
    wilson_action,
)
from bridge.lattice import Lattice
from bridge.mcmc.compose import compose, run_chain
from bridge.mcmc.flow_mh import check_flow, flow_metropolis_kernel
from bridge.mcmc.hmc import hmc
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.observables.field_strength import geometric_charge_u1


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _plaq(u: torch.Tensor) -> torch.Tensor:
    return plaquette_field(u, 0, 1)[..., 0, 0].real.flatten(1).mean(1)


def _hmc(beta: float, n_steps: int = 5) -> object:
    integ = Integrator([Level(scheme("LCM_STS_MIN_NORM_2"), n_steps, [GaugeMonomial(beta)])])
    return hmc(integ, 1.0)


def _wrapped(a: torch.Tensor) -> torch.Tensor:
    return torch.remainder(a + math.pi, 2 * math.pi) - math.pi


@pytest.mark.parametrize("nrow", [(4, 4), (3, 5), (1, 3), (6, 2)])
def test_sample_log_q_equals_log_prob_and_angles_reproduced(nrow):
    f = U1PlaquetteProposal(2.5)
    u, lq, theta = f.sample(16, nrow, generator=_gen(1), return_angles=True)
    lat = Lattice(nrow)
    assert u.shape == lat.gauge_shape(16, 1) and u.dtype == torch.complex128
    assert bool(((u.abs() - 1).abs() < 1e-14).all())
    assert (lq - f.log_prob(u)).abs().max() < 1e-10
    p = torch.angle(plaquette_field(u, 0, 1)[..., 0, 0])
    assert _wrapped(p - theta).abs().max() < 1e-12  # every drawn angle, p0 included
    check_flow(f, u)


def test_plaquette_links_holonomies_and_linearity():
    g = _gen(2)
    b, lt, lx = 3, 4, 5
    th = von_mises(1.0, (b, lt * lx - 1), generator=g)
    theta = torch.cat([th, _wrapped(-th.sum(1, keepdim=True))], 1).reshape(b, lt, lx)
    phi = 2 * math.pi * torch.rand(2, b, generator=g, dtype=torch.float64) - math.pi
    a = plaquette_links(theta, phi[0], phi[1])
    assert _wrapped(a[:, 0, 0].sum(-1) - phi[0]).abs().max() < 1e-12  # W_x at t = 0
    assert _wrapped(a[:, 1, :, 0].sum(-1) - phi[1]).abs().max() < 1e-12  # W_t at x = 0
    a2 = plaquette_links(2 * theta, 2 * phi[0], 2 * phi[1])
    assert torch.allclose(a2, 2 * a, atol=1e-12)


def test_log_prob_gauge_invariant_and_on_arbitrary_fields():
    lat = Lattice((4, 6))
    f = U1PlaquetteProposal(3.0)
    u = random_gauge(lat, "U1", 8, generator=_gen(3))  # not a proposal: an arbitrary field
    om = random_gauge_transformation(lat, "U1", 8, generator=_gen(4))
    assert (f.log_prob(u) - f.log_prob(gauge_transform(u, om))).abs().max() < 1e-10
    re = plaquette_field(u, 0, 1)[..., 0, 0].real
    expect = 3.0 * (re.sum((1, 2)) - re[:, -1, -1]) - (lat.volume - 1) * log_i0(3.0)
    assert torch.allclose(f.log_prob(u), expect, atol=1e-10, rtol=0)
    with pytest.raises(ValueError, match="2D U"):
        f.log_prob(random_gauge(Lattice((2, 2, 2)), "U1", 1))


def test_log_i0():
    for b in (0.0, 0.5, 6.0, 40.0):
        assert log_i0(b) == pytest.approx(math.log(bessel_i(0, b, scaled=False)[0]), rel=1e-12)


@pytest.mark.parametrize("kappa", [0.0, 1e-6, 0.7, 6.0])
def test_von_mises_moments(kappa):
    x = von_mises(kappa, (200000,), generator=_gen(5))
    assert bool(((x > -math.pi) & (x <= math.pi)).all())
    r1 = float(bessel_i(1, kappa)[0] / bessel_i(0, kappa)[0])
    r2 = float(bessel_i(2, kappa)[0] / bessel_i(0, kappa)[0])
    for k, ref in ((1, r1), (2, r2)):
        c = torch.cos(k * x)
        assert abs(float(c.mean()) - ref) < 4 * float(c.std()) / math.sqrt(x.numel()) + 1e-12
    s = torch.sin(x)
    assert abs(float(s.mean())) < 4 / math.sqrt(x.numel())


def test_proposal_plaquettes_are_von_mises():
    beta = 4.0
    f = U1PlaquetteProposal(beta)
    u, _ = f.sample(2000, (6, 6), generator=_gen(6))
    re = plaquette_field(u, 0, 1)[..., 0, 0].real.flatten(1)
    c = re[:, :-1]  # p != p0: iid von Mises
    ref = float(bessel_i(1, beta)[0] / bessel_i(0, beta)[0])
    assert abs(float(c.mean()) - ref) < 4 * float(c.std()) / math.sqrt(c.numel())
    # p0 is the wrapped sum of 35 angles: nearly uniform, <cos> far below I1/I0
    assert float(re[:, -1].mean()) < 0.5 * ref


def test_normalisation_and_importance_sampled_plaquette():
    """E_q[exp(-S)/q] = Z = exp(-beta V) sum_n I_n(beta)^V (no constant left out), and the
    self-normalised importance estimate of <cos P> matches the exact value."""
    beta, nrow, n = 1.5, (2, 2), 20000
    v = 4
    f = U1PlaquetteProposal(beta)
    u, lq = f.sample(n, nrow, generator=_gen(7))
    lw = (-wilson_action(u, beta) - lq).double()
    ns = np.arange(-40, 41)
    z = math.exp(-beta * v) * float(np.sum(bessel_i(ns, beta, scaled=False) ** v))
    w = torch.exp(lw)
    mean, err = float(w.mean()), float(w.std()) / math.sqrt(n)
    assert abs(mean - z) < 4 * err and err < 0.02 * z, (mean, err, z)
    o = _plaq(u)
    est = float((w * o).sum() / w.sum())
    var = float((w**2 * (o - est) ** 2).sum() / w.sum() ** 2)
    assert abs(est - u1_2d_plaquette(beta, nrow)) < 4 * math.sqrt(var)


def test_topological_charge_of_proposals_varies():
    f = U1PlaquetteProposal(2.0)
    u, _ = f.sample(256, (8, 8), generator=_gen(8))
    q = geometric_charge_u1(u)
    assert torch.allclose(q, q.round(), atol=1e-9)
    assert len(set(q.round().long().tolist())) >= 3


def test_hybrid_chain_reproduces_exact_plaquette():
    L, beta, nb = 3, 2.0, 16
    lat = Lattice((L, L))
    f = U1PlaquetteProposal(beta)
    act = GaugeMonomial(beta).action
    k = compose([(_hmc(beta), 1), (flow_metropolis_kernel(f, act, batch_size=16), 2)])
    state = k.init(random_gauge(lat, "U1", nb, generator=_gen(9)), seed=3)
    state, infos, obs = run_chain(k, state, 300, _plaq)
    m = obs[10:].mean(0)
    mean, err = float(m.mean()), float(m.std() / math.sqrt(nb))
    exact = u1_2d_plaquette(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    acc = float(torch.stack([i.accepted for i in infos if i.kernel == "flow"]).double().mean())
    assert 0.2 < acc < 1.0, acc


def test_flow_kernel_acceptance_is_p0_plaquette_ratio():
    """log w(U') - log w(U) = beta (cos theta'_p0 - cos theta_p0) exactly."""
    beta, lat = 3.0, Lattice((4, 4))
    f = U1PlaquetteProposal(beta)
    fk = flow_metropolis_kernel(f, GaugeMonomial(beta).action, batch_size=4)
    state = fk.init(random_gauge(lat, "U1", 6, generator=_gen(10)), seed=1)
    p0 = plaquette_field(state.U, 0, 1)[:, -1, -1, 0, 0].real
    new, info = fk.step(state)
    buf = new.aux["flow"]
    p0n = plaquette_field(buf.U[0], 0, 1)[:, -1, -1, 0, 0].real
    assert torch.allclose(info.delta, beta * (p0n - p0), atol=1e-10, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta"):
        U1PlaquetteProposal(-1.0)
    with pytest.raises(ValueError, match="2-dimensional"):
        U1PlaquetteProposal(1.0).sample(1, (2, 2, 2))
    with pytest.raises(ValueError, match="kappa"):
        von_mises(float("nan"), (3,))


@pytest.mark.slow
def test_hybrid_chain_topological_susceptibility():
    L, beta, nb = 8, 4.0, 16
    lat = Lattice((L, L))
    f = U1PlaquetteProposal(beta)
    act = GaugeMonomial(beta).action
    k = compose([(_hmc(beta, 6), 1), (flow_metropolis_kernel(f, act, batch_size=32), 2)])
    state = k.init(random_gauge(lat, "U1", nb, generator=_gen(11)), seed=5)
    state, _, q = run_chain(k, state, 1500, geometric_charge_u1)
    m = (q[50:].round() ** 2 / lat.volume).mean(0)
    mean, err = float(m.mean()), float(m.std() / math.sqrt(nb))
    exact = u1_2d_topological_susceptibility(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
