"""Non-equilibrium protocols and NE-MCMC (bridge.mcmc.nonequilibrium): Jarzynski's equality on the
exactly solvable 2D U(1) torus (with and without flow layers), SU(3) heatbath protocols
(reproducibility, gradients), the NE-MCMC kernel's exactness and bookkeeping, and errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bridge import gauge as Gg
from bridge.errors import ConfigError, PhysicsError
from bridge.exact import bessel_i, u1_2d_plaquette
from bridge.flows.residual import ResidualStapleLayer, StapleMask, staple_mask_cycle
from bridge.gauge import mesplq
from bridge.groups import reunitarize
from bridge.lattice import Lattice
from bridge.mcmc.base import stream_tag
from bridge.mcmc.heatbath import heatbath_sweep
from bridge.mcmc.hmc import hmc, hmc_kernel
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.mcmc.nonequilibrium import (
    Protocol,
    jarzynski,
    nemcmc,
    reverse_protocol,
    run_protocol,
)
from bridge.mcmc.reweighting import reweighted_mean
from bridge.rng import generator, rng_key

L, BETA0, BETA = 4, 1.0, 2.0


def _integrator(beta: float, md_steps: int = 8) -> Integrator:
    return Integrator([Level(scheme("LCM_STS_LEAPFROG"), md_steps, [GaugeMonomial(beta)])])


def _log_z(beta: float, volume: int) -> float:
    """log Z of 2D U(1) with S = beta sum (1 - cos P), normalised Haar measure: the character
    expansion Z = sum_n (e^{-beta} I_n(beta))^V."""
    n = np.arange(-60, 61)
    return float(math.log(np.sum(bessel_i(n, beta) ** volume)))


@pytest.fixture(scope="module")
def u1_prior() -> torch.Tensor:
    """4096 independent equilibrium configurations of 2D U(1), 4x4, beta0 = 1: one HMC chain per
    batch entry, 30 trajectories from the cold start (acceptance ~0.99; the plaquette is checked
    against the exact value in test_u1_prior_is_equilibrated)."""
    k = hmc_kernel(_integrator(BETA0), 1.0)
    st = k.init(Gg.unit_gauge(Lattice((L, L)), "U1", 4096), seed=101)
    for _ in range(30):
        st, _ = k.step(st)
    return st.U


def _check_jarzynski(u, w, label: str) -> float:
    j = jarzynski(w)
    m, e = reweighted_mean(mesplq(u).w_plaq, j.log_w)
    exact = u1_2d_plaquette(BETA, L)
    assert abs(m - exact) < 4 * e, f"{label}: reweighted plaquette {m} +- {e} vs exact {exact}"
    ratio = _log_z(BETA, L * L) - _log_z(BETA0, L * L)
    assert abs(j.log_ratio - ratio) < 4 * j.log_ratio_err + 1e-3, (
        f"{label}: log Z/Z0 = {j.log_ratio} +- {j.log_ratio_err} vs exact {ratio}")
    assert j.ess > 0.01
    return j.ess


def test_u1_prior_is_equilibrated(u1_prior):
    p = mesplq(u1_prior).w_plaq
    err = float(p.std()) / math.sqrt(p.numel())
    assert abs(float(p.mean()) - u1_2d_plaquette(BETA0, L)) < 4 * err


@pytest.mark.parametrize("n_blocks", [1, 2, 16])
def test_jarzynski_u1_exact(u1_prior, n_blocks):
    """Poor (1, 2 blocks) and good (16) protocols reweight to the exact plaquette at beta and
    estimate the exact log Z/Z0; more blocks give a larger ESS."""
    pr = Protocol(BETA0, BETA, n_blocks, update="hmc", tau=1.0, md_steps=8)
    u, w, info = run_protocol(u1_prior, pr, seed=7)
    assert w.dtype == torch.float64 and w.shape == (u1_prior.shape[0],)
    assert info.work.shape == (n_blocks, u1_prior.shape[0])
    torch.testing.assert_close(info.work.sum(0), w, rtol=0, atol=1e-10)
    assert info.betas[0] == BETA0 and info.betas[-1] == BETA
    ess = _check_jarzynski(u, w, f"n = {n_blocks}")
    if n_blocks == 16:
        assert ess > 0.4
    else:
        assert ess < 0.3  # a genuinely poor protocol


def _u1_layers(n: int, seed: int) -> list[ResidualStapleLayer]:
    g = torch.Generator().manual_seed(seed)
    masks = staple_mask_cycle(2)
    out = []
    for k in range(n):
        lay = ResidualStapleLayer("U1", 2, masks[k % len(masks)])
        with torch.no_grad():
            # random signs, fixed size 0.3: c_k = +-0.13
            lay.raw.copy_(0.3 * torch.randn(lay.raw.shape, generator=g, dtype=torch.float64).sign())
        out.append(lay)
    return out


def test_jarzynski_u1_with_layers_exact(u1_prior):
    """A randomly initialised residual staple layer in every block: the log-Jacobian enters the
    work, and the reweighting stays exact (with the sign of the log-Jacobian flipped, log Z/Z0
    comes out 2.2 off, about 60 sigma, on this set-up)."""
    layers = _u1_layers(8, seed=5)
    with torch.no_grad():
        u_moved, logdet = layers[0](u1_prior[:64])
    assert float((u_moved - u1_prior[:64]).abs().amax()) > 0.05  # the layer moves U noticeably
    assert float(logdet.abs().max()) > 0.05
    pr = Protocol(BETA0, BETA, 8, update="hmc", md_steps=8, layers=layers)
    with torch.no_grad():
        u, w, info = run_protocol(u1_prior, pr, seed=8)
    assert float(info.logdet.abs().max()) > 0.1
    _check_jarzynski(u, w, "layers")


def _su3_prior(batch: int = 4) -> torch.Tensor:
    lat = Lattice((2, 2, 2, 2))
    g = generator(3)
    u = Gg.random_gauge(lat, "SU3", batch, generator=g)
    for _ in range(3):
        u = heatbath_sweep(u, 0.5, g)
    return reunitarize(u)


def test_su3_heatbath_protocol_reproducible_and_differentiable():
    u0 = _su3_prior()
    layer = ResidualStapleLayer("SU3", 4, StapleMask(1, 0))
    with torch.no_grad():
        layer.raw.fill_(0.3)
    pr = Protocol(0.5, 1.0, 3, update="heatbath", n_hb=1, n_or=1, layers=[None, layer, None])
    u1, w1, info = run_protocol(u0, pr, seed=11, index=2)
    assert bool(torch.isfinite(w1).all()) and w1.dtype == torch.float64
    assert float(info.logdet[1].abs().max()) > 0
    (w1.mean()).backward()
    g = layer.raw.grad
    assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0
    u2, w2, _ = run_protocol(u0, pr, seed=11, index=2)
    assert torch.equal(u1, u2) and torch.equal(w1.detach(), w2.detach())
    u3, w3, _ = run_protocol(u0, pr, seed=11, index=3)
    assert not torch.equal(u1, u3)
    assert pr.parameters() == [layer.raw]


def test_nemcmc_u1_exact():
    """NE-MCMC on 2D U(1): 64 independent chains, the plaquette agrees with the exact value."""
    n_chains, n_steps, burn = 64, 70, 10
    pr = Protocol(BETA0, BETA, 4, update="hmc", md_steps=6)
    kern = nemcmc(pr, hmc(_integrator(BETA0, 6), 1.0), prior_steps=2)
    st = kern.init(Gg.unit_gauge(Lattice((L, L)), "U1", n_chains), seed=21)
    plaq, acc = [], []
    for _ in range(n_steps):
        st, info = kern.step(st)
        plaq.append(mesplq(st.U).w_plaq)
        acc.append(info.accepted.double().mean())
    means = torch.stack(plaq[burn:]).mean(0)
    err = float(means.std()) / math.sqrt(n_chains)
    exact = u1_2d_plaquette(BETA, L)
    assert abs(float(means.mean()) - exact) < 4 * err, (float(means.mean()), err, exact)
    assert 0.1 < float(torch.stack(acc).mean()) < 1.0


def test_nemcmc_bookkeeping():
    pr = Protocol(BETA0, BETA, 2, update="hmc", md_steps=6)
    kern = nemcmc(pr, hmc(_integrator(BETA0, 6), 1.0), name="ne")
    st = kern.init(Gg.unit_gauge(Lattice((L, L)), "U1", 32), seed=4)
    seen_rej = seen_acc = False
    for _ in range(6):
        old = st.aux["ne"]
        new, info = kern.step(st)
        ne = new.aux["ne"]
        acc = info.accepted
        rej = ~acc
        seen_acc |= bool(acc.any())
        seen_rej |= bool(rej.any())
        # rejected: U, W and the path start are kept bit for bit
        assert torch.equal(new.U[rej], st.U[rej]) and torch.equal(ne.work[rej], old.work[rej])
        assert torch.equal(ne.x0[rej], old.x0[rej])
        # accepted: the proposal's work; the old path start moves into the prior replica (swap)
        assert torch.equal(ne.prior.U[acc], old.x0[acc])
        torch.testing.assert_close(ne.work[acc], info.detail.work.sum(0)[acc], rtol=0,
                                   atol=1e-10)
        assert torch.equal(new.log_est, -ne.work) and torch.equal(ne.u_end, new.U)
        torch.testing.assert_close(info.delta[acc | rej], -(info.detail.work.sum(0) - old.work),
                                   rtol=0, atol=1e-10)
        torch.testing.assert_close(new.action, BETA * Gg.wilson_action(new.U, 1.0).double())
        assert new.step == st.step + 1
        st = new
    assert seen_acc and seen_rej
    # another kernel moved U of some chains: their paths are redrawn backwards from the new U
    # (reverse_protocol), the others keep theirs
    flip = torch.arange(32) % 2 == 0
    u_new = torch.where(flip.reshape(-1, 1, 1, 1, 1, 1), st.U.conj(), st.U)
    moved = (u_new != st.U).flatten(1).any(1)  # (a real field is its own conjugate)
    old = st.aux["ne"]
    new, _ = kern.step(st._replace(U=u_new))
    x0_ref, w_ref = reverse_protocol(u_new, pr, seed=rng_key(st.seed, stream_tag("ne"), 3),
                                     index=st.step)
    ne = new.aux["ne"]
    kept = ~new_acc_mask(new, u_new)
    # chains that rejected the NE proposal keep the (redrawn or old) path
    # (to rounding: cached plaquette traces of the state may come from the force kernel)
    assert torch.allclose(ne.x0[kept & moved], x0_ref[kept & moved], rtol=0, atol=1e-10)
    assert torch.allclose(ne.work[kept & moved], w_ref[kept & moved], rtol=0, atol=1e-8)
    assert bool((kept & moved).any()) and bool((kept & ~moved).any())
    assert torch.equal(ne.x0[kept & ~moved], old.x0[kept & ~moved])
    assert torch.equal(ne.work[kept & ~moved], old.work[kept & ~moved])


def new_acc_mask(new, u_before):
    """Chains whose NE-MCMC step accepted (their U changed)."""
    return (new.U != u_before).flatten(1).any(1)


def test_reverse_protocol_retraces_a_deterministic_path():
    # without MC updates the path is the layers alone: the reverse process from the end point
    # returns the start and the same work
    u = Gg.random_gauge(Lattice((4, 4)), "SU2", 3, generator=generator(2))
    layers = []
    for k, m in enumerate(staple_mask_cycle(2)[:3]):
        lay = ResidualStapleLayer("SU2", 2, m)
        lay.set_coefficients(0.05 * (k + 1))
        layers.append(lay)
    pr = Protocol(1.0, 2.0, 3, update="heatbath", n_hb=0, n_or=0, layers=layers)
    with torch.no_grad():
        u_n, w, _ = run_protocol(u, pr, seed=1)
    x0, w_rev = reverse_protocol(u_n, pr, seed=5)
    assert torch.allclose(x0, u, rtol=0, atol=1e-12)
    assert torch.allclose(w_rev, w, rtol=0, atol=1e-10)


def test_nemcmc_alternating_with_hmc_is_exact():
    """HMC at beta moves U between NE-MCMC steps (paths redrawn backwards): 2D U(1) exact."""
    from bridge.mcmc.compose import compose

    n_chains, n_steps, burn = 64, 60, 10
    pr = Protocol(BETA0, BETA, 2, update="hmc", md_steps=6)
    ne = nemcmc(pr, hmc(_integrator(BETA0, 6), 1.0), prior_steps=1)
    kern = compose([(hmc(_integrator(BETA, 6), 1.0, name="hmc"), 1), (ne, 1)])
    st = kern.init(Gg.unit_gauge(Lattice((L, L)), "U1", n_chains), seed=31)
    plaq = []
    for _ in range(n_steps):
        st, _ = kern.step(st)
        plaq.append(mesplq(st.U).w_plaq)
    means = torch.stack(plaq[burn:]).mean(0)
    err = float(means.std()) / math.sqrt(n_chains)
    exact = u1_2d_plaquette(BETA, L)
    assert abs(float(means.mean()) - exact) < 4 * err, (float(means.mean()), err, exact)


def test_jarzynski_log_space():
    r = jarzynski(torch.tensor([1.0, math.inf, 2.0], dtype=torch.float64))
    assert r.log_w[1] == -math.inf and 0 < r.ess <= 1
    expect = math.log((math.exp(-1) + math.exp(-2)) / 3)
    assert abs(r.log_ratio - expect) < 1e-12
    r = jarzynski(torch.full((3,), math.inf))
    assert r.ess == 0.0 and r.log_ratio == -math.inf and r.log_ratio_err == math.inf
    r = jarzynski(torch.tensor([1e5, 1e5 + 1]))  # no underflow to NaN
    assert math.isfinite(r.log_ratio)
    with pytest.raises(PhysicsError, match="NaN"):
        jarzynski(torch.tensor([1.0, math.nan]))


@pytest.mark.parametrize("kwargs, match", [
    ({"beta0": math.nan}, "beta0: expected a finite number, got nan"),
    ({"beta": "x"}, "beta: expected a finite number, got 'x'"),
    ({"n_blocks": 0}, "n_blocks: expected an integer >= 1, got 0"),
    ({"n_blocks": 2.5}, "n_blocks: expected an integer >= 1, got 2.5"),
    ({"update": "metropolis"}, "update: expected one of .*got 'metropolis'"),
    ({"tau": -1.0}, "tau: expected a positive trajectory length, got -1.0"),
    ({"md_steps": 0}, "md_steps: expected an integer >= 1, got 0"),
    ({"integrator": "RK4"}, "integrator: expected one of .*got 'RK4'"),
    ({"update": "heatbath", "beta0": -1.0}, "heatbath needs couplings >= 0, got -1.0"),
    ({"layers": [None]}, r"layers: expected None or 2 entries \(one per block\), got 1"),
    ({"layers": [None, 3]}, r"layers\[1\]: expected None or an object with forward"),
])
def test_protocol_errors(kwargs, match):
    args = {"beta0": 1.0, "beta": 2.0, "n_blocks": 2, **kwargs}
    with pytest.raises(ConfigError, match=match):
        Protocol(**args)


def test_run_errors():
    u = Gg.unit_gauge(Lattice((4, 4)), "U1", 2)
    with pytest.raises(ConfigError, match=r"heatbath supports SU\(2\) and SU\(3\), got U\(1\)"):
        run_protocol(u, Protocol(1.0, 2.0, 1, update="heatbath"), seed=0)
    with pytest.raises(ConfigError, match="protocol: expected a Protocol"):
        run_protocol(u, (1.0, 2.0, 1), seed=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="prior_steps: expected an integer >= 1, got 0"):
        nemcmc(Protocol(1.0, 2.0, 1), hmc(_integrator(1.0), 1.0), prior_steps=0)


def test_protocol_betas_linear():
    pr = Protocol(0.5, 1.5, 4)
    assert pr.betas == (0.5, 0.75, 1.0, 1.25, 1.5)
    assert pr.layer(1) is None and pr.parameters() == []
