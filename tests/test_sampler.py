"""The hybrid sampler (bridge.mcmc: flow_mh, hmc, compose, reweighting): exactness on 2D U(1)
against the character expansion, exactness with a poor flow, known transition matrices on a
discrete toy (composition, mixture, pseudo-marginal), bookkeeping after rejection/acceptance,
bit-for-bit resume, bad input, log-space weights."""

from __future__ import annotations

import io
import math
import warnings

import pytest
import torch

from bridge.errors import ConfigError
from bridge.exact import u1_2d_plaquette, u1_2d_topological_susceptibility
from bridge.flows.models import make_flow
from bridge.gauge import mesplq, random_gauge, wilson_action
from bridge.groups import get_group
from bridge.lattice import Lattice
from bridge.mcmc.base import ChainState, Kernel, StepInfo
from bridge.mcmc.compose import compose, mixture, run_chain
from bridge.mcmc.flow_mh import flow_metropolis_kernel
from bridge.mcmc.hmc import hmc
from bridge.mcmc.integrators import Integrator, Level, scheme
from bridge.mcmc.monomials import GaugeMonomial
from bridge.mcmc.reweighting import ess, reweight_samples, reweighted_mean
from bridge.rng import generator, rng_key


def _plaq(u: torch.Tensor) -> torch.Tensor:
    return mesplq(u).w_plaq


def _hmc(beta: float, n_steps: int = 5, tau: float = 1.0, name: str = "hmc") -> Kernel:
    integ = Integrator([Level(scheme("LCM_STS_LEAPFROG"), n_steps, [GaugeMonomial(beta)])])
    return hmc(integ, tau, name=name)


def _hot(lat: Lattice, nb: int, seed: int = 0) -> torch.Tensor:
    return random_gauge(lat, "U1", nb, generator=torch.Generator().manual_seed(seed))


def _chain_mean(obs: torch.Tensor, burn: int) -> tuple[float, float]:
    """Mean over independent chains and its error from the spread of the chain means."""
    m = obs[burn:].mean(0)
    return float(m.mean()), float(m.std() / math.sqrt(m.numel()))


# ---------------------------------------------------------------- exactness on 2D U(1)
def test_hybrid_chain_reproduces_exact_plaquette():
    L, beta, nb = 4, 1.0, 32
    lat = Lattice((L, L))
    torch.manual_seed(0)
    flow = make_flow("U1", 2, n_layers=4)
    act = lambda u: wilson_action(u, beta)  # noqa: E731
    k = compose([(_hmc(beta), 1), (flow_metropolis_kernel(flow, act, batch_size=16), 1)])
    state = k.init(_hot(lat, nb), seed=11)
    state, infos, obs = run_chain(k, state, 150, _plaq)
    mean, err = _chain_mean(obs, 20)
    exact = u1_2d_plaquette(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    flow_infos = [i for i in infos if i.kernel == "flow"]
    assert len(flow_infos) == 150 and {i.kernel for i in infos} == {"hmc", "flow"}
    acc = torch.stack([i.accepted for i in flow_infos]).double().mean()
    assert 0 < acc < 1
    # log q was recomputed through the exact inverse after accepted HMC trajectories
    assert sum(i.refreshed for i in flow_infos) > 0


def test_poor_flow_is_still_exact():
    """A deliberately bad flow (large random weights): flow steps alone, from HMC-thermalised
    starts, keep the exact plaquette."""
    L, beta, nb = 4, 0.7, 64
    lat = Lattice((L, L))
    torch.manual_seed(3)
    flow = make_flow("U1", 2, n_layers=4, init_gain=1.0)
    act = lambda u: wilson_action(u, beta)  # noqa: E731
    h = _hmc(beta)
    state, _, _ = run_chain(h, h.init(_hot(lat, nb), seed=5), 20)
    fk = flow_metropolis_kernel(flow, act, batch_size=32)
    state, infos, obs = run_chain(fk, fk.init(state), 240, _plaq)
    mean, err = _chain_mean(obs, 0)
    exact = u1_2d_plaquette(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    acc = float(torch.stack([i.accepted for i in infos]).double().mean())
    assert 0.005 < acc < 0.9, acc


@pytest.mark.slow
def test_hybrid_chain_topological_susceptibility():
    from bridge.observables.field_strength import geometric_charge_u1

    L, beta, nb = 8, 2.0, 32
    lat = Lattice((L, L))
    torch.manual_seed(1)
    flow = make_flow("U1", 2, n_layers=8)
    act = lambda u: wilson_action(u, beta)  # noqa: E731
    k = compose([(_hmc(beta, 8), 2), (flow_metropolis_kernel(flow, act, batch_size=32), 2)])
    state = k.init(_hot(lat, nb), seed=2)
    state, _, q = run_chain(k, state, 600, geometric_charge_u1)
    mean, err = _chain_mean(q.round() ** 2 / lat.volume, 50)
    exact = u1_2d_topological_susceptibility(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)


# ---------------------------------------------------------------- discrete toy: known matrices
K = 3
Q_TOY = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
S_TOY = torch.tensor([0.0, 0.7, -0.4], dtype=torch.float64)
P_TOY = torch.softmax(-S_TOY, 0)
TOY_LAT = Lattice((1, 1))


def _encode(k: torch.Tensor) -> torch.Tensor:
    u = torch.ones(k.shape[0], 2, 1, 1, 1, 1, dtype=torch.complex128)
    u[:, 0, 0, 0, 0, 0] = torch.exp(2j * math.pi * k.double() / K)
    return u


def _decode(u: torch.Tensor) -> torch.Tensor:
    ang = torch.angle(u[:, 0, 0, 0, 0, 0])
    return torch.round(ang / (2 * math.pi / K)).long() % K


class ToyFlow:
    """A 'flow' on a 3-state space embedded in a 1x1 U(1) lattice: proposal probabilities Q_TOY
    (densities with respect to counting measure)."""

    group = get_group("U1")
    nd = 2

    def __init__(self, q: torch.Tensor = Q_TOY):
        self.q = q

    def sample(self, n, lattice, *, generator=None, dtype=None, device=None):
        k = torch.multinomial(self.q, n, replacement=True, generator=generator)
        return _encode(k), self.q.log()[k]

    def log_prob(self, u):
        return self.q.log()[_decode(u)]


def _toy_action(u: torch.Tensor) -> torch.Tensor:
    return S_TOY[_decode(u)]


def _walk_kernel(name: str = "walk") -> Kernel:
    """A local Metropolis kernel k -> k +- 1 (mod 3) for the toy, written only against ChainState
    (it knows nothing of flows: it invalidates log q where it moves)."""
    tag = 17

    def init(u, seed=0, step=0):
        return u

    def step(state: ChainState):
        gen = generator(rng_key(state.seed, state.step, tag), state.U.device)
        k = _decode(state.U)
        d = torch.where(torch.rand(k.shape, generator=gen, dtype=torch.float64) < 0.5, 1, -1)
        kn = (k + d) % K
        ds = S_TOY[kn] - state.action
        acc = torch.rand(k.shape, generator=gen, dtype=torch.float64) < torch.exp(-ds)
        sel = acc.reshape(-1, 1, 1, 1, 1, 1)
        nan = torch.full_like(state.log_q, math.nan)
        new = state._replace(U=torch.where(sel, _encode(kn), state.U),
                             action=torch.where(acc, S_TOY[kn], state.action),
                             log_q=torch.where(acc, nan, state.log_q),
                             log_w=torch.where(acc, nan, state.log_w),
                             log_est=torch.where(acc, nan, state.log_est), step=state.step + 1)
        return new, StepInfo(state.step, name, acc, ds, torch.exp(-ds).clamp(max=1), 0, 0, 0.0)

    return Kernel(init, step)


def _t_imh(p: torch.Tensor, q: torch.Tensor = Q_TOY) -> torch.Tensor:
    w = p / q
    ones = torch.ones(K, K, dtype=torch.float64)
    t = q[None, :] * torch.minimum(ones, w[None, :] / w[:, None])
    t.fill_diagonal_(0)
    return t + torch.diag(1 - t.sum(1))


def _t_walk() -> torch.Tensor:
    t = torch.zeros(K, K, dtype=torch.float64)
    for i in range(K):
        for j in ((i + 1) % K, (i - 1) % K):
            t[i, j] = 0.5 * min(1.0, float(P_TOY[j] / P_TOY[i]))
    return t + torch.diag(1 - t.sum(1))


def _transitions(kernel: Kernel, n_chains: int, n_steps: int, seed: int, t_of=None):
    """Pair counts N[i, j] of (x_t, x_{t+1}) over all chains and steps, started from P_TOY.
    With ``t_of`` (kernel name -> transition matrix) also the expected counts given the kernels
    that actually ran: a mixture picks one kernel per step for the whole batch, so over 40 steps
    the realised fractions scatter around the mixture's probabilities."""
    k0 = torch.multinomial(P_TOY, n_chains, replacement=True,
                           generator=torch.Generator().manual_seed(seed))
    state = kernel.init(_encode(k0), seed=seed)
    counts = torch.zeros(K, K, dtype=torch.float64)
    expected = torch.zeros(K, K, dtype=torch.float64)
    prev = _decode(state.U)
    for _ in range(n_steps):
        state, info = kernel.step(state)
        cur = _decode(state.U)
        counts.index_put_((prev, cur), torch.ones_like(prev, dtype=torch.float64), accumulate=True)
        if t_of is not None:
            (ran,) = {i.kernel for i in (info if isinstance(info, tuple) else (info,))}
            expected += torch.bincount(prev, minlength=K).double()[:, None] * t_of[ran]
        prev = cur
    if t_of is not None:
        return counts, expected
    return counts, prev, state


def _row_chi2(counts: torch.Tensor, t: torch.Tensor) -> float:
    """Sum over rows of the multinomial chi-square of transitions out of state i (K(K-1) dof
    where every T_ij > 0)."""
    expected = counts.sum(1, keepdim=True) * t
    m = expected > 0
    return float(((counts - expected)[m] ** 2 / expected[m]).sum())


CHI2_6DOF_999 = 22.46


def test_toy_mixture_matches_known_transition_matrix_and_detailed_balance():
    fk = flow_metropolis_kernel(ToyFlow(), _toy_action, batch_size=8)
    k = mixture([(fk, 0.6), (_walk_kernel(), 0.4)])
    counts, expected = _transitions(k, 2000, 40, seed=1,
                                    t_of={"flow": _t_imh(P_TOY), "walk": _t_walk()})
    t = 0.6 * _t_imh(P_TOY) + 0.4 * _t_walk()
    joint = P_TOY[:, None] * t
    torch.testing.assert_close(joint, joint.T, rtol=0, atol=1e-15)  # detailed balance of T
    m = expected > 0
    assert float(((counts - expected)[m] ** 2 / expected[m]).sum()) < CHI2_6DOF_999
    f = counts / counts.sum()  # empirical joint frequencies are symmetric: detailed balance
    assert float((f - f.T).abs().max()) < 0.01
    # the test has power: a flow kernel that always accepted would be detected
    wrong = 0.6 * (Q_TOY[None, :].expand(K, K)) + 0.4 * _t_walk()
    assert _row_chi2(counts, wrong) > 10 * CHI2_6DOF_999


def test_toy_composition_matches_product_matrix():
    fk = flow_metropolis_kernel(ToyFlow(), _toy_action, batch_size=4)
    k = compose([(fk, 2), (_walk_kernel(), 1)])
    counts, last, state = _transitions(k, 2000, 30, seed=2)
    t = _t_imh(P_TOY) @ _t_imh(P_TOY) @ _t_walk()
    assert _row_chi2(counts, t) < CHI2_6DOF_999
    torch.testing.assert_close(P_TOY @ t, P_TOY, rtol=0, atol=1e-14)  # stationary
    freq = torch.bincount(last, minlength=K).double()
    chi2 = float(((freq - 2000 * P_TOY) ** 2 / (2000 * P_TOY)).sum())
    assert chi2 < 13.8  # 2 dof, 99.9%
    assert state.step == 90


def test_toy_deliberately_poor_proposal_is_still_exact():
    """A 'flow' that puts 96% of its mass on the state the target likes least: from starts all
    in that state, flow steps alone relax to P_TOY and their transitions follow T_imh of that
    proposal; the acceptance is the known one (about 1/4)."""
    q_poor = torch.tensor([0.02, 0.96, 0.02], dtype=torch.float64)
    fk = flow_metropolis_kernel(ToyFlow(q_poor), _toy_action, batch_size=50)
    n = 4000
    state = fk.init(_encode(torch.ones(n, dtype=torch.long)), seed=6)
    counts = torch.zeros(K, K, dtype=torch.float64)
    n_acc = 0
    for t in range(400):
        prev = _decode(state.U)
        state, info = fk.step(state)
        if t >= 300:
            n_acc += int(info.accepted.sum())
            counts.index_put_((prev, _decode(state.U)), torch.ones(n, dtype=torch.float64),
                              accumulate=True)
    freq = torch.bincount(_decode(state.U), minlength=K).double()
    chi2 = float(((freq - n * P_TOY) ** 2 / (n * P_TOY)).sum())
    assert chi2 < 13.8, (freq / n, P_TOY)  # 2 dof, 99.9%
    w = P_TOY / q_poor
    expected = float((P_TOY[:, None] * q_poor[None, :]
                      * torch.minimum(torch.ones(K, K, dtype=torch.float64),
                                      w[None, :] / w[:, None])).sum())
    assert abs(n_acc / (100 * n) - expected) < 0.01, (n_acc / (100 * n), expected)
    assert _row_chi2(counts, _t_imh(P_TOY, q_poor)) < CHI2_6DOF_999
    # the proposal's own distribution is far from the target: the test would see a chain
    # that accepted everything
    assert float(((freq - n * q_poor) ** 2 / (n * q_poor)).sum()) > 1000


def _noisy_estimator(sigma: float, log_w_true: torch.Tensor):
    """Unbiased log-normal estimate of W_k = exp(log_w_true[k])."""

    def est(u: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        eps = torch.randn(u.shape[0], generator=gen, dtype=torch.float64)
        return log_w_true[_decode(u)] + sigma * eps - 0.5 * sigma**2

    return est


def test_pseudo_marginal_targets_the_marginal():
    """Andrieu & Roberts: accepting with a noisy unbiased weight estimate that stays attached to
    the state targets exp(-S) W exactly; a chain that ignored W would be far off."""
    log_wk = torch.tensor([0.8, -0.5, 0.3], dtype=torch.float64)
    target = torch.softmax(-S_TOY + log_wk, 0)
    noisy = _noisy_estimator(1.0, log_wk)
    rows = []

    def counting(u, gen):
        rows.append(u.shape[0])
        return noisy(u, gen)

    fk = flow_metropolis_kernel(ToyFlow(), _toy_action, batch_size=16,
                                log_weight_estimator=counting)
    n = 4000
    state = fk.init(_encode(torch.zeros(n, dtype=torch.long)), seed=4)
    for _ in range(80):
        state, _ = fk.step(state)
    # one estimate per initial state and per proposal: the current state's is never redrawn
    assert sum(rows) == n * 81
    freq = torch.bincount(_decode(state.U), minlength=K).double()
    chi2 = float(((freq - n * target) ** 2 / (n * target)).sum())
    assert chi2 < 13.8, (freq / n, target)
    chi2_wrong = float(((freq - n * P_TOY) ** 2 / (n * P_TOY)).sum())
    assert chi2_wrong > 100
    # the estimate stays attached: log w = -S - log q + log_est of the accepted draw
    torch.testing.assert_close(state.log_w, -state.action - state.log_q + state.log_est)


# ---------------------------------------------------------------- bookkeeping and resume
def _small_setup(nb: int = 8, beta: float = 0.5, batch_size: int = 4):
    lat = Lattice((4, 4))
    torch.manual_seed(7)
    flow = make_flow("U1", 2, n_layers=2)
    act = lambda u: wilson_action(u, beta)  # noqa: E731
    return lat, flow, act, flow_metropolis_kernel(flow, act, batch_size=batch_size)


def test_bookkeeping_after_rejection_and_acceptance():
    lat, flow, act, fk = _small_setup()
    state = fk.init(_hot(lat, 8), seed=3)
    n_acc = n_rej = 0
    for _ in range(12):
        buf = state.aux["flow"]
        new, info = fk.step(state)
        nbuf = new.aux["flow"]
        i = nbuf.index - 1
        for c in range(8):
            if bool(info.accepted[c]):
                n_acc += 1
                ref = (nbuf.U[i, c], nbuf.action[i, c], nbuf.log_q[i, c])
                assert torch.equal(new.U[c], ref[0])
                assert torch.equal(new.action[c], ref[1]) and torch.equal(new.log_q[c], ref[2])
                assert torch.equal(new.log_w[c], -ref[1] - ref[2] + 0.0)
            else:
                n_rej += 1
                for f in ("U", "action", "log_q", "log_w", "log_est"):
                    assert torch.equal(getattr(new, f)[c], getattr(state, f)[c]), f
        assert nbuf.block >= buf.block
        state = new
    assert n_acc > 0 and n_rej > 0
    # the cached log q and log w are those of the exact inverse at the current U
    torch.testing.assert_close(state.log_q, flow.log_prob(state.U).detach(), rtol=0, atol=1e-9)
    torch.testing.assert_close(state.action, act(state.U), rtol=0, atol=1e-12)
    # HMC: accepted chains get log q recomputed by the next flow step; rejected ones keep it
    h = _hmc(0.5, n_steps=2, tau=2.0)  # coarse: some trajectories rejected
    after, hinfo = h.step(state)
    acc = hinfo.accepted
    assert bool(torch.isnan(after.log_q[acc]).all())
    assert torch.equal(after.log_q[~acc], state.log_q[~acc])
    filled, finfo = fk.step(after)
    assert finfo.refreshed == int(acc.sum())
    kept = ~finfo.accepted
    torch.testing.assert_close(filled.log_q[kept], flow.log_prob(after.U[kept]).detach(),
                               rtol=0, atol=1e-9)


def test_resume_from_checkpoint_is_bit_identical():
    lat, flow, act, _ = _small_setup(batch_size=3)

    def build():
        fk = flow_metropolis_kernel(flow, act, batch_size=3)
        return mixture([(compose([(_hmc(0.5, 3), 1), (fk, 2)]), 0.5), (fk, 0.5)])

    k = build()
    s0 = k.init(_hot(lat, 4), seed=9)
    full, _, _ = run_chain(k, s0, 9)
    half, _, _ = run_chain(k, s0, 4)
    buf = io.BytesIO()
    torch.save(half, buf)
    buf.seek(0)
    restored = torch.load(buf, weights_only=False)
    resumed, _, _ = run_chain(build(), restored, 5)
    assert resumed.step == full.step
    for f in ("U", "action", "log_q", "log_w", "log_est"):
        assert torch.equal(getattr(resumed, f), getattr(full, f)), f
    # and a different seed gives a different chain
    other, _, _ = run_chain(k, k.init(_hot(lat, 4), seed=10), 9)
    assert not torch.equal(other.U, full.U)


def test_batched_chains_decide_independently():
    lat, flow, act, fk = _small_setup(nb=16)
    state = fk.init(_hot(lat, 16), seed=1)
    _, infos, _ = run_chain(fk, state, 10)
    acc = torch.stack([i.accepted for i in infos])
    assert any(0 < int(a.sum()) < 16 for a in acc)  # some steps accept on some chains only


# ---------------------------------------------------------------- bad input and log space
def test_flow_for_another_group_or_lattice_is_refused():
    lat = Lattice((4, 4))
    act = lambda u: wilson_action(u, 1.0)  # noqa: E731
    su2 = make_flow("SU2", 2, n_layers=1)
    with pytest.raises(ConfigError, match=r"SU\(2\).*U\(1\)"):
        flow_metropolis_kernel(su2, act).init(_hot(lat, 2))
    u1 = make_flow("U1", 2, n_layers=1)
    with pytest.raises(ConfigError, match=r"6, 6|\(6, 6\)|6x6|6 x 6|Lattice"):
        flow_metropolis_kernel(u1, act).init(_hot(Lattice((6, 6)), 2))
    u1_3d = make_flow("U1", 3, n_layers=1)
    with pytest.raises(ConfigError, match="3-dimensional.*2-dimensional"):
        flow_metropolis_kernel(u1_3d, act).init(_hot(lat, 2))
    # kernels for different actions in one chain
    with pytest.raises(ConfigError, match="different"):
        compose([(_hmc(2.0), 1), (flow_metropolis_kernel(u1, act), 1)]).init(_hot(lat, 2))
    with pytest.raises(ConfigError):
        mixture([(_hmc(1.0), -1.0)])
    with pytest.raises(ConfigError):
        compose([(_hmc(1.0), 0)])


@pytest.mark.parametrize("shift", [1e6, -1e6])
def test_overflowing_weights_stay_in_log_space(shift):
    lat, flow, act, fk = _small_setup()
    shifted = flow_metropolis_kernel(flow, lambda u: act(u) + shift, batch_size=4)
    u = _hot(lat, 8)
    _, ref, _ = run_chain(fk, fk.init(u, seed=2), 10)
    s, got, _ = run_chain(shifted, shifted.init(u, seed=2), 10)
    assert bool(torch.isfinite(s.log_w).all())
    for a, b in zip(ref, got, strict=True):
        assert torch.equal(a.accepted, b.accepted)
        assert bool(torch.isfinite(b.acc_prob).all())


def test_nonfinite_proposals_are_rejected_with_a_count():
    lat, flow, act, _ = _small_setup()

    def bad_action(u):
        s = act(u)
        return torch.where(_plaq(u) < 0.0, torch.full_like(s, math.nan), s)

    k = flow_metropolis_kernel(flow, bad_action, batch_size=4)
    u = torch.ones(8, 2, 4, 4, 1, 1, dtype=torch.complex128)  # cold start: finite weight
    state = k.init(u, seed=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state, infos, _ = run_chain(k, state, 12)
    n_bad = sum(i.nonfinite for i in infos)
    assert n_bad > 0 and any("non-finite" in str(w.message) for w in caught)
    for i in infos:
        assert not bool((i.accepted & ~torch.isfinite(i.delta)).any())
    assert bool(torch.isfinite(state.log_w).all()) and not bool(torch.isnan(state.U).any())


# ---------------------------------------------------------------- reweighting
def test_reweight_samples_exact_plaquette_and_ess():
    L, beta = 4, 0.5
    flow = make_flow("U1", 2, n_layers=2)
    act = lambda u: wilson_action(u, beta)  # noqa: E731
    r = reweight_samples(flow, act, 3000, (L, L), seed=1, batch_size=1000, observable=_plaq,
                         keep_fields=False)
    assert r.U is None and r.log_w.shape == (3000,)
    assert r.ess == pytest.approx(ess(r.log_w)) and 0 < r.ess <= 1
    mean, err = reweighted_mean(r.observable, r.log_w)
    exact = u1_2d_plaquette(beta, L)
    assert abs(mean - exact) < 3 * err, (mean, err, exact)
    # the same with an action shifted by 1e6: identical weights up to a constant, same estimate
    r2 = reweight_samples(flow, lambda u: act(u) + 1e6, 3000, (L, L), seed=1, batch_size=1000,
                          observable=_plaq, keep_fields=False)
    assert bool(torch.isfinite(r2.log_w).all()) and r2.ess == pytest.approx(r.ess, rel=1e-6)
