"""A time-boundary defect (bridge.gauge.defect): its geometry, the heatbath with plaquette
coefficients, and the defect protocol open -> periodic (bridge.mcmc.nonequilibrium) against the
exact 2D SU(2) partition functions (bridge.exact)."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.errors import ConfigError
from bridge.exact import su2_2d_log_z, su2_2d_plaquette, su2_plaquette_log_z
from bridge.gauge import plaquette_traces, random_gauge
from bridge.gauge.defect import defect_mask, defect_weights, weighted_wilson_action
from bridge.groups import haar
from bridge.lattice import Lattice
from bridge.mcmc import heatbath as H
from bridge.mcmc.heatbath import heatbath
from bridge.mcmc.nonequilibrium import Protocol, jarzynski, nemcmc, run_protocol
from bridge.mcmc.reweighting import reweighted_mean
from bridge.rng import generator

L = 4
BETA = 2.0


def test_defect_geometry_by_hand():
    lat = Lattice((4, 6))  # x, t; the only plane is (0, 1)
    m = defect_mask(lat, (2,))
    assert m.shape == (1, 6, 4)  # [planes, t, x]
    on = m[0].nonzero().tolist()
    assert on == [[5, 0], [5, 1]]  # x_t = L_t - 1 and x_0 < 2
    lat4 = Lattice((4, 4, 4, 6))
    m4 = defect_mask(lat4, (2, 1, 3))
    planes = lat4.planes()
    assert int(m4.sum()) == 3 * 2 * 1 * 3  # three planes (i, t), 6 sites each
    for k, (_mu, nu) in enumerate(planes):
        assert (nu == 3) == bool(m4[k].any())
    w = defect_weights(lat4, (2, 1, 3), 0.25)
    assert float(w[m4].max()) == 0.25 and float(w[~m4].min()) == 1.0


@pytest.mark.parametrize("extent, message", [
    ((2, 2), r"defect: expected 1 integer extents \(the directions other than time of"),
    ((5,), r"defect: extent 5 in direction 0 is outside 1 \.\. L_0 = 4"),
    ((0,), r"defect: extent 0 in direction 0 is outside"),
])
def test_defect_errors(extent, message):
    with pytest.raises(ConfigError, match=message):
        defect_mask(Lattice((4, 4)), extent)


def test_coefficient_and_protocol_errors():
    with pytest.raises(ConfigError, match=r"defect coefficient: expected a finite c >= 0, got "
                                          r"-0.5"):
        defect_weights(Lattice((4, 4)), (2,), -0.5)
    with pytest.raises(ConfigError, match=r"defect: the defect protocol's MC updates are the "
                                          r"heatbath"):
        Protocol(beta0=1.0, beta=1.0, n_blocks=2, update="hmc", defect=(2,))
    with pytest.raises(ConfigError, match=r"c0: expected a defect coefficient >= 0, got -1"):
        Protocol(beta0=1.0, beta=1.0, n_blocks=2, update="heatbath", defect=(2,), c0=-1)
    with pytest.raises(ConfigError, match=r"defect: expected positive integer extents"):
        Protocol(beta0=1.0, beta=1.0, n_blocks=2, update="heatbath", defect=(0,))
    u = random_gauge(Lattice((4, 4, 4, 4)), "SU2", 1, generator=generator(1))
    pr = Protocol(beta0=1.0, beta=1.0, n_blocks=1, update="heatbath", defect=(2,))
    with pytest.raises(ConfigError, match=r"defect: expected 3 integer extents"):
        run_protocol(u, pr, seed=0)
    with pytest.raises(ConfigError, match=r"weights: the heatbath needs plaquette coefficients"):
        H.heatbath_sweep(u, 1.0, generator(2), weights=-torch.ones(6, 4, 4, 4, 4))


@pytest.mark.parametrize("group, nrow", [("SU2", (4, 4)), ("SU3", (2, 4, 2, 4))])
def test_weighted_staples_are_the_local_action(group, nrow):
    # S_c(U') - S_c(U) = -(beta/N) Re Tr[(U'_l - U_l) A_l] summed over the links of one
    # (mu, parity) set (no plaquette holds two of them), A_l the weighted staple sum
    lat = Lattice(nrow)
    nc = int(group[-1])
    u = random_gauge(lat, group, 2, generator=generator(3))
    w = torch.rand(len(lat.planes()), *lat.shape, generator=generator(4), dtype=torch.float64)
    tab = H._tables(lat, u.device)
    for mu, parity in ((0, 1), (lat.nd - 1, 0)):
        t = tab[mu, parity]
        flat = u.reshape(2, lat.nd * lat.volume, nc, nc)
        a = H._staples(flat, t, w.reshape(-1))
        new = flat.clone()
        links = flat.index_select(1, t["link"])
        g = haar(group, tuple(links.shape[:2]), generator=generator(5), dtype=u.dtype)
        new.index_copy_(1, t["link"], g @ links)
        u2 = new.reshape(u.shape)
        lhs = weighted_wilson_action(u2, BETA, w) - weighted_wilson_action(u, BETA, w)
        diff = new.index_select(1, t["link"]) - links
        rhs = -(BETA / nc) * torch.einsum("bsij,bsji->b", diff, a).real
        assert torch.allclose(lhs, rhs, rtol=0, atol=1e-10)


def test_uniform_weights_equal_a_rescaled_beta():
    u = random_gauge(Lattice((4, 4)), "SU2", 3, generator=generator(6))
    w = torch.full((1, 4, 4), 0.5, dtype=torch.float64)
    a = H.heatbath_sweep(u, 3.0, generator(7), weights=w)
    b = H.heatbath_sweep(u, 1.5, generator(7))
    assert torch.allclose(a, b, rtol=0, atol=1e-12)


def _open_chains(batch: int, sweeps: int, seed: int) -> torch.Tensor:
    """2D SU(2) L x L at BETA with the whole time boundary open (c = 0): heatbath chains."""
    kern = heatbath(BETA, n_hb=1, n_or=1, defect=(L,), c=0.0)
    st = kern.init(random_gauge(Lattice((L, L)), "SU2", batch, generator=generator(seed)),
                   seed=seed)
    for _ in range(sweeps):
        st, _ = kern.step(st)
    return st.U


def test_open_boundary_plaquettes_are_free():
    # with the boundary open (axial gauge on the cylinder) the V - L remaining plaquettes are
    # independent: <Re Tr P / 2> = I_2(beta) / I_1(beta) for each, and the defect ones are Haar
    u = _open_chains(256, 15, 11)
    tr = plaquette_traces(u)[:, 0]  # [batch, t, x]
    mask = defect_mask(Lattice((L, L)), (L,))[0]
    bulk = tr[:, ~mask].mean(1)
    h = 1e-5  # <Re Tr P / 2> = 1 + d ln z / d beta of one free plaquette
    want = 1 + (su2_plaquette_log_z(BETA + h) - su2_plaquette_log_z(BETA - h)) / (2 * h)
    assert abs(want - 0.4331274267) < 1e-8  # I_2(2) / I_1(2)
    err = float(bulk.std()) / math.sqrt(bulk.numel())
    assert abs(float(bulk.mean()) - want) < 4 * err, (float(bulk.mean()), want, err)
    on = tr[:, mask].mean(1)
    assert abs(float(on.mean())) < 4 * float(on.std()) / math.sqrt(on.numel())  # Haar: 0


@pytest.mark.parametrize("n_blocks", [2, 8])
def test_defect_protocol_jarzynski_is_exact(n_blocks):
    # open -> periodic at fixed beta: <e^-W> = Z_periodic / Z_open and the reweighted plaquette
    # is the torus value, for a poor (2 blocks) and a better (8 blocks) protocol
    x0 = _open_chains(1024, 15, 21)
    pr = Protocol(beta0=BETA, beta=BETA, n_blocks=n_blocks, update="heatbath", n_hb=1, n_or=1,
                  defect=(L,))
    u, work, _ = run_protocol(x0, pr, seed=5)
    assert_reweights_to_the_torus(u, work)


def assert_reweights_to_the_torus(u: torch.Tensor, work: torch.Tensor) -> None:
    """Open -> periodic runs (end points ``u``, works ``work``) of 2D SU(2) L x L at BETA:
    Jarzynski's ``log Z_periodic / Z_open`` and the reweighted plaquette are the exact ones."""
    jz = jarzynski(work)
    v = L * L
    exact = su2_2d_log_z(BETA, L) - ((v - L) * su2_plaquette_log_z(BETA))
    assert abs(jz.log_ratio - exact) < 4 * jz.log_ratio_err, (jz.log_ratio, exact, jz)
    plaq = plaquette_traces(u).flatten(1).mean(1)
    mean, err = reweighted_mean(plaq, jz.log_w)
    assert abs(mean - su2_2d_plaquette(BETA, L)) < 4 * err, (mean, err)


def test_defect_nemcmc_chain_samples_the_torus():
    pr = Protocol(beta0=BETA, beta=BETA, n_blocks=4, update="heatbath", n_hb=1, n_or=1,
                  defect=(L,))
    prior = heatbath(BETA, n_hb=1, n_or=1, defect=(L,), c=0.0, name="prior")
    kern = nemcmc(pr, prior)
    st = kern.init(_open_chains(64, 10, 31), seed=7)
    vals, acc = [], []
    for i in range(60):
        st, info = kern.step(st)
        acc.append(float(info.accepted.double().mean()))
        if i >= 10:
            vals.append(plaquette_traces(st.U).flatten(1).mean(1))
    per_chain = torch.stack(vals).mean(0)  # 64 independent chains
    err = float(per_chain.std()) / math.sqrt(per_chain.numel())
    assert abs(float(per_chain.mean()) - su2_2d_plaquette(BETA, L)) < 4 * err
    assert 0.1 < sum(acc) / len(acc) < 1.0


def test_defect_nemcmc_alternating_with_hmc_samples_the_torus():
    # HMC at the periodic target moves U between NE-MCMC steps: the path is redrawn backwards
    # (reversed heatbath sweeps, reverse_protocol); the composition stays exact
    from bridge.mcmc.compose import compose
    from bridge.mcmc.hmc import hmc
    from bridge.mcmc.integrators import Integrator, Level, scheme
    from bridge.mcmc.monomials import GaugeMonomial

    pr = Protocol(beta0=BETA, beta=BETA, n_blocks=3, update="heatbath", n_hb=1, n_or=1,
                  defect=(L,))
    prior = heatbath(BETA, n_hb=1, n_or=1, defect=(L,), c=0.0, name="prior")
    integ = Integrator([Level(scheme("LCM_STS_LEAPFROG"), 6, [GaugeMonomial(BETA)])])
    kern = compose([(hmc(integ, 0.5, name="hmc"), 1), (nemcmc(pr, prior), 1)])
    st = kern.init(_open_chains(64, 5, 41), seed=9)
    vals = []
    for i in range(50):
        st, _ = kern.step(st)
        if i >= 10:
            vals.append(plaquette_traces(st.U).flatten(1).mean(1))
    per_chain = torch.stack(vals).mean(0)
    err = float(per_chain.std()) / math.sqrt(per_chain.numel())
    assert abs(float(per_chain.mean()) - su2_2d_plaquette(BETA, L)) < 4 * err
