"""Joint Nf = 2 models: the conditional pseudofermion flow, the multi-draw determinant estimator,
its normalisation against the HMC's pseudofermion action and the exact determinant, the
stochastic log-det gradient, and the exactness of pseudo-marginal chains."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.errors import ConfigError
from bridge.fermions import exact_logdet
from bridge.fermions.pseudofermion import TwoFlavorEOPrecWilsonMonomial
from bridge.flows.joint import MultiDrawEstimator, logdet_surrogate, pf_log_weights
from bridge.flows.joint_training import make_joint_flow
from bridge.flows.pseudofermion import PFMask, PseudofermionFlow, pf_mask_cycle
from bridge.gauge import random_gauge
from bridge.groups import expm_algebra, random_algebra
from bridge.lattice import Lattice
from bridge.mcmc.reweighting import ess
from bridge.solvers import CG
from bridge.testing import assert_conditional_flow, assert_conditional_flow_covariant

L2 = Lattice((2, 2, 2, 2))


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fields(n: int, seed: int = 1, lat: Lattice = L2) -> torch.Tensor:
    return random_gauge(lat, "SU3", n, generator=_gen(seed), dtype=torch.complex128)


def _perturbed_flow(kappa: float, n_layers: int, scale: float, seed: int = 0,
                    **kw) -> PseudofermionFlow:
    torch.manual_seed(seed)
    flow = PseudofermionFlow(kappa, n_layers=n_layers, **kw)
    with torch.no_grad():
        for name, p in flow.named_parameters():
            if name != "log_scale":
                p.add_(scale * torch.randn_like(p))
    return flow


def _chi(flow: PseudofermionFlow, u: torch.Tensor, draws: int, seed: int) -> torch.Tensor:
    shape = flow.operator(u).eo_shape()
    return torch.randn(u.shape[0], draws, *shape[1:], dtype=torch.complex128,
                       generator=_gen(seed))


# -- the flow --------------------------------------------------------------------------------
def test_mask_cycle_covers_every_spin_projector_and_sublattice():
    cycle = pf_mask_cycle()
    spins = {(m.index, m.parity) for m in cycle if m.kind == "spin"}
    sites = {(m.index, m.parity) for m in cycle if m.kind == "site"}
    assert spins == {(mu, p) for mu in (0, 1, 2, 3, 5) for p in (0, 1)}
    assert sites == {(a, p) for a in (0, 1, 2) for p in (0, 1)}
    with pytest.raises(ConfigError, match="spin mask index"):
        PFMask("spin", 4, 0)


@pytest.mark.parametrize("layers", [1, 3, 20])
def test_flow_invertible_and_logdet_matches_autograd(layers):
    """Spin-projector (first layer) and sublattice (third) masks, with non-trivial context."""
    u = _fields(2)
    flow = _perturbed_flow(0.12, layers, 0.02)
    chi = _chi(flow, u, 2, 3)
    assert_conditional_flow(flow, u, chi, atol=1e-8)
    phi, _ = flow(chi, u)
    assert float((phi.detach() - chi / (2 * 0.12)).abs().max()) > 1e-3  # the layers act


def test_flow_gauge_covariant():
    u = _fields(2)
    flow = _perturbed_flow(0.12, 8, 0.05)
    assert_conditional_flow_covariant(flow, u, _chi(flow, u, 2, 4), generator=_gen(9),
                                      atol=1e-10)


def test_flow_linear_in_chi_and_native_matches_autograd_path():
    """The map is linear at fixed U (the exact conditional is Gaussian), and the native hopping
    kernel (no gradient) gives the differentiable path's numbers."""
    u = _fields(1)
    flow = _perturbed_flow(0.1, 6, 0.03)
    a, b = _chi(flow, u, 1, 5), _chi(flow, u, 1, 6)
    with torch.no_grad():
        fa, _ = flow(a, u)
        fb, _ = flow(b, u)
        fab, _ = flow(2.0 * a - b, u)
    assert torch.allclose(fab, 2.0 * fa - fb, atol=1e-11)
    phi_grad, _ = flow(a.clone().requires_grad_(True), u)
    assert torch.allclose(phi_grad.detach(), fa, atol=1e-12)


# -- weights and normalisation ---------------------------------------------------------------
def test_pseudofermion_action_equals_hmc_monomial():
    """Same phi, same number: the estimator's bilinear and heat bath are the HMC's."""
    u = _fields(2)
    kappa = 0.13
    mono = TwoFlavorEOPrecWilsonMonomial(kappa)
    mono.refresh(u, _gen(11))
    s_hmc = mono.action(u)
    flow = PseudofermionFlow(kappa, n_layers=0)
    op = flow.operator(u)
    phi = mono.phi.reshape(2, 1, *mono.phi.shape[1:])
    x, _ = CG(tol=1e-12).solve(lambda v: op.schur_normal(v), mono.phi)
    s_ours = (phi.conj() * x.view_as(phi)).real.flatten(1).sum(1)
    assert torch.allclose(s_ours, s_hmc, rtol=1e-10)
    # the heat bath phi = K^dag eta has phi^dag (K^dag K)^{-1} phi = eta^dag eta: the exact
    # draws of the estimator use it; with the same noise they see the monomial's action
    lw_exact, ok, _ = pf_log_weights(flow, u, 1, _gen(11), exact_draws=1)
    assert bool(ok.all())
    chi_norm = (mono.phi.abs() ** 2).flatten(1).sum(1) * (2 * kappa) ** 2
    dof = math.prod(op.eo_shape()[1:])
    assert torch.allclose(lw_exact[:, 0], chi_norm - s_hmc - 2 * dof * math.log(2 * kappa),
                          rtol=1e-9, atol=1e-8)


@pytest.mark.parametrize("layers", [0, 4])
def test_multi_draw_weight_is_unbiased_for_the_determinant(layers):
    """E_q[W] = det(K^dag K) (model draws) and E_p[1/W] = 1/det (exact draws), within 4 sigma,
    on two 2^4 fields; a missing log|det| or a wrong normalisation shifts W by e^{O(100)}."""
    u = _fields(2, seed=4)
    kappa = 0.05
    flow = _perturbed_flow(kappa, layers, 0.001, seed=2)  # Var log W ~ 0.5
    ex = exact_logdet(u, kappa, kind="schur", normalisation="chroma")
    n = 2500
    lw, ok, _ = pf_log_weights(flow, u, n, _gen(21))
    assert bool(ok.all())
    r = (lw - ex[:, None]).exp()
    err = r.std(1) / math.sqrt(n)
    assert bool(((r.mean(1) - 1).abs() < 4 * err + 1e-3).all()), (r.mean(1), err)
    lwe, _, _ = pf_log_weights(flow, u, n, _gen(22), exact_draws=n)
    inv = (ex[:, None] - lwe).exp()
    err = inv.std(1) / math.sqrt(n)
    assert bool(((inv.mean(1) - 1).abs() < 4 * err + 1e-3).all()), (inv.mean(1), err)


def test_multi_draw_ess_approaches_exact_determinant_ess():
    """ESS of the estimated marginal weights grows with N_pf towards the exact-determinant ESS
    (beta = 0, Haar fields: w = det(K^dag K)); per-draw Var log W ~ 1.4 at kappa = 0.07."""
    u = _fields(256, seed=6)
    kappa = 0.07
    flow = PseudofermionFlow(kappa, n_layers=0)
    exact = ess(exact_logdet(u, kappa, kind="schur", normalisation="chroma"))
    got = {n: ess(MultiDrawEstimator(flow, n)(u, _gen(30 + n))) for n in (1, 8, 64)}
    # measured over seeds: exact ~0.73, N=1 ~0.33, N=8 ~0.6, N=64 ~0.71 (ESS of 256 fields
    # fluctuates by ~0.05, so only the well-separated ends are compared)
    assert got[1] < got[64] and got[1] < got[8]
    assert abs(got[64] - exact) < 0.3 * abs(got[1] - exact)
    assert abs(got[64] - exact) < 0.1


def test_unconverged_solves_give_weight_zero_and_are_counted():
    u = _fields(3)
    est = MultiDrawEstimator(PseudofermionFlow(0.12, n_layers=0), 4,
                             solver=CG(tol=1e-12, max_iter=1, raise_on_failure=False))
    lw = est(u, _gen(1))
    assert bool((lw == -math.inf).all()) and not bool(torch.isnan(lw).any())
    assert est.failed == 3 and est.evaluated == 3
    with pytest.raises(ConfigError, match="at least one pseudofermion draw"):
        MultiDrawEstimator(PseudofermionFlow(0.12, n_layers=0), 0)


def test_logdet_surrogate_gradient_is_the_derivative_of_log_det():
    """d/de log det(K^dag K)(exp(e Z) U) by finite differences of the dense determinant vs the
    mean of the stochastic estimate (16 independent estimates of 128 noise vectors: 4 sigma)."""
    u = _fields(2, seed=8)
    kappa = 0.12
    flow = PseudofermionFlow(kappa, n_layers=0)
    z = random_algebra(3, tuple(u.shape[:-2]), generator=_gen(3), dtype=u.dtype)
    eps = 1e-5

    def ld(e: float) -> torch.Tensor:
        return exact_logdet(expm_algebra(e * z) @ u, kappa, kind="schur",
                            normalisation="chroma").sum()

    want = float((ld(eps) - ld(-eps)) / (2 * eps))
    grads = []
    for seed in range(16):
        t = torch.zeros((), dtype=torch.float64, requires_grad=True)
        s = logdet_surrogate(expm_algebra(t * z) @ u, flow, _gen(100 + seed), draws=128)
        grads.append(float(torch.autograd.grad(s.sum(), t)[0]))
    g = torch.tensor(grads)
    err = float(g.std() / math.sqrt(len(grads)))
    assert abs(float(g.mean()) - want) < 4 * err, (float(g.mean()), want, err)
    assert err < 0.3  # the check has power (measured 0.06-0.18 over seeds; |want| ~ 0.1-3)


def test_joint_model_refuses_a_non_4d_marginal():
    from bridge.flows.joint import JointFlow
    from bridge.flows.models import make_flow

    with pytest.raises(ConfigError, match="4D SU"):
        JointFlow(make_flow("SU3", 2), PseudofermionFlow(0.1))


def test_joint_model_round_trip_through_its_config():
    from bridge.flows.checkpoints import flow_from_config

    m = make_joint_flow(0.11, conditional={"n_layers": 3, "context_hidden": [4]})
    m2 = flow_from_config(m.config)
    m2.load_state_dict(m.state_dict())
    assert m2.config == m.config and m2.kappa == 0.11
    u = _fields(1)
    chi = _chi(m.conditional, u, 1, 2)
    with torch.no_grad():
        assert torch.equal(m.conditional(chi, u)[0], m2.conditional(chi, u)[0])


def test_transports_are_the_direction_resolved_hops_of_k_dagger():
    """``first`` splits ``gamma_5 H_eo gamma_5 f`` by direction (each part equals a hop with
    the other directions' links zeroed); ``second`` sums per-direction inputs."""
    from bridge.fermions.hopping import _TERMS, HopLinks, hop_gather
    from bridge.fermions.wilson import WilsonDirac
    from bridge.flows.pseudofermion import Transports

    u = _fields(2, lat=Lattice((4, 2, 2, 4)))
    op = WilsonDirac(u, 0.1, normalisation="chroma")
    eo = op._eo_setup()
    tr = Transports(eo)
    f = torch.randn(2, 3, *op.eo_shape()[1:], dtype=torch.complex128, generator=_gen(1))
    g = torch.randn(2, 3, 4, *op.eo_shape()[1:], dtype=torch.complex128, generator=_gen(2))
    first, second = tr.first(f), tr.second(g)
    want2 = torch.zeros_like(second)
    def masked(target: int, mu: int) -> HopLinks:
        return HopLinks([t if m == mu else torch.zeros_like(t)
                         for t, (m, _) in zip(eo.links[target].terms, _TERMS, strict=True)])

    for mu in range(4):
        want = hop_gather(f, masked(0, mu), eo.geo[0], True)
        assert torch.allclose(first[:, :, mu], want, atol=1e-12)
        want2 += hop_gather(g[:, :, mu], masked(1, mu), eo.geo[1], True)
    assert torch.allclose(second, want2, atol=1e-12)


def test_first_order_initialisation_is_the_heat_bath_to_order_kappa_squared():
    """With the first-order initialisation the per-draw Var log W at fixed U is far below that
    of the bare scale (measured on 4^4, kappa 0.1: ~1 vs ~85), and the layers' initial
    ``-kappa^2`` cover every two-hop path exactly once."""
    from bridge.flows.pseudofermion import first_order_paths

    owned = [p for m in pf_mask_cycle()[:14] for p in first_order_paths(m)]
    assert sorted(owned) == sorted(2 * [(m, n) for m in range(4) for n in range(4)])  # pairs
    u = _fields(2, seed=3, lat=Lattice((4, 4, 4, 4)))
    var = {}
    for init in (False, True):
        flow = PseudofermionFlow(0.1, n_layers=14, first_order_init=init)
        lw, ok, _ = pf_log_weights(flow, u, 24, _gen(5))
        assert bool(ok.all())
        var[init] = float(lw.var(1).mean())
    assert var[True] < 3.0 < 30.0 < var[False], var


class _Marked:
    """A fake estimator: 2.0 for proposals, 1.0 for the exact refresh of a current state."""

    n_draws = 1

    def __init__(self) -> None:
        self.calls = {"proposal": 0, "conditional": 0}

    def __call__(self, u, gen):
        self.calls["proposal"] += 1
        return torch.full((u.shape[0],), 2.0, dtype=torch.float64)

    def conditional(self, u, gen):
        self.calls["conditional"] += 1
        return torch.full((u.shape[0],), 1.0, dtype=torch.float64)


def test_pseudo_marginal_bookkeeping_with_hmc():
    """The current state keeps its estimate after a flow rejection and after an HMC rejection;
    after an HMC acceptance the flow kernel redraws it with ``conditional`` (never with the
    proposal draws)."""
    from bridge.flows.models import make_flow
    from bridge.gauge import wilson_action
    from bridge.mcmc.flow_mh import flow_metropolis_kernel
    from bridge.mcmc.hmc import hmc
    from bridge.mcmc.integrators import Integrator, Level, scheme
    from bridge.mcmc.monomials import GaugeMonomial

    beta = 0.5
    est = _Marked()
    fk = flow_metropolis_kernel(make_flow("SU3", 4, arch="residual", n_layers=1),
                                lambda x: wilson_action(x, beta), batch_size=2,
                                log_weight_estimator=est, name="flow")
    hk = hmc(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 3, [GaugeMonomial(beta)])]), 0.3,
             name="hmc")
    state = fk.init(_fields(4, seed=2), seed=5)
    assert bool((state.log_est == 1.0).all()) and est.calls["proposal"] == 0
    seen = {"hmc_acc": 0, "flow_rej": 0}
    for _ in range(6):
        before = state.log_est.clone()
        state, hinfo = hk.step(state)
        acc = hinfo.accepted
        assert bool(torch.isnan(state.log_est[acc]).all())
        assert torch.equal(state.log_est[~acc], before[~acc])
        seen["hmc_acc"] += int(acc.sum())
        state, finfo = fk.step(state)
        # chains HMC moved were refilled by `conditional` (1.0) unless the flow then accepted
        # its proposal (2.0); untouched rejected chains keep their estimate
        moved_rej = acc & ~finfo.accepted
        assert bool((state.log_est[moved_rej] == 1.0).all())
        assert bool((state.log_est[finfo.accepted] == 2.0).all())
        seen["flow_rej"] += int((~finfo.accepted).sum())
    assert seen["hmc_acc"] > 0 and seen["flow_rej"] > 0 and est.calls["conditional"] > 1


def _exact_reference(kappa: float, beta: float, n: int, seed: int) -> dict[str, tuple]:
    from bridge.gauge import mesplq, wilson_action
    from bridge.mcmc.reweighting import reweighted_mean

    u = _fields(n, seed=seed)
    ld = exact_logdet(u, kappa, kind="schur", normalisation="chroma")
    lw = -wilson_action(u, beta) + ld
    return {"plaquette": reweighted_mean(mesplq(u).w_plaq, lw),
            "logdet": reweighted_mean(ld, lw)}


def _pseudo_marginal_chain(kappa: float, beta: float, draws: int, chains: int, cycles: int,
                           therm: int) -> dict[str, tuple[float, float]]:
    """HMC (gauge + even-odd Nf=2 monomial) then two pseudo-marginal flow steps per cycle, with
    an untrained (poor) joint model; means and errors from the spread of the chain means."""
    from bridge.gauge import mesplq, wilson_action
    from bridge.mcmc.compose import compose
    from bridge.mcmc.flow_mh import flow_metropolis_kernel
    from bridge.mcmc.hmc import hmc
    from bridge.mcmc.integrators import Integrator, Level, scheme
    from bridge.mcmc.monomials import GaugeMonomial

    model = make_joint_flow(kappa, marginal={"n_layers": 1}, conditional={"n_layers": 0})
    fk = flow_metropolis_kernel(model, lambda x: wilson_action(x, beta), batch_size=8,
                                log_weight_estimator=model.estimator(draws), name="flow")
    mons = [GaugeMonomial(beta), TwoFlavorEOPrecWilsonMonomial(kappa)]
    hk = hmc(Integrator([Level(scheme("LCM_STS_LEAPFROG"), 5, mons)]), 0.5, name="hmc")
    kernel = compose([(hk, 1), (fk, 2)])
    state = kernel.init(_fields(chains, seed=2), seed=3)
    obs = {"plaquette": [], "logdet": []}
    for c in range(cycles):
        state, _ = kernel.step(state)
        if c >= therm:
            obs["plaquette"].append(mesplq(state.U).w_plaq)
            obs["logdet"].append(exact_logdet(state.U, kappa, kind="schur",
                                              normalisation="chroma"))
    out = {}
    for k, v in obs.items():
        cm = torch.stack(v).mean(0)
        out[k] = (float(cm.mean()), float(cm.std() / math.sqrt(chains)))
    return out


def _assert_agree(chain: dict, ref: dict, nsigma: float) -> None:
    for k, (m, e) in chain.items():
        rm, re = ref[k]
        sigma = math.hypot(e, re)
        assert abs(m - rm) < nsigma * sigma, (k, m, e, rm, re)


def test_pseudo_marginal_hybrid_chain_matches_exact_determinant_small():
    """2^4, beta 0.5, kappa 0.12, N_pf 4, an untrained model (flow acceptance ~4 %): the chain's
    plaquette and log det(K^dag K) agree with importance sampling from Haar with the exact
    determinant.  4 sigma: false alarms below 1e-4 per observable (a 64-chain, 150-cycle run
    against 48k reference samples gave 1.2 sigma)."""
    ref = _exact_reference(0.12, 0.5, 4000, seed=100)
    chain = _pseudo_marginal_chain(0.12, 0.5, 4, chains=16, cycles=60, therm=25)
    _assert_agree(chain, ref, 4.0)


@pytest.mark.slow
def test_pseudo_marginal_hybrid_chain_matches_exact_determinant():
    """As the small test, with the statistics to resolve ~0.1 in log det."""
    ref = _exact_reference(0.12, 0.5, 36000, seed=200)
    chain = _pseudo_marginal_chain(0.12, 0.5, 4, chains=64, cycles=200, therm=50)
    _assert_agree(chain, ref, 4.0)
