"""Self-training: reverse KL reduces, ESS grows, reweighted plaquette matches the exact 2D U(1)
result; checkpoints are atomic and resume bit for bit; NaN losses and mismatched checkpoints
give clear errors."""

from __future__ import annotations

import math

import pytest
import torch

from bridge.errors import ConfigError, PhysicsError
from bridge.exact import u1_2d_plaquette
from bridge.flows import make_flow
from bridge.flows.training import TrainConfig, Trainer
from bridge.gauge import plaquette_traces, wilson_action
from bridge.mcmc.reweighting import ess, imh_acceptance, reweighted_mean


def _trainer(nrow=(4, 4), seed=0, **kw):
    torch.manual_seed(seed)
    model = make_flow("U1", 2, n_layers=kw.pop("n_layers", 4), k=4, hidden=(4,))
    cfg = TrainConfig(nrow=nrow, beta=kw.pop("beta", 2.0), batch=kw.pop("batch", 8),
                      lr=kw.pop("lr", 1e-2), **kw)
    return Trainer(model, cfg)


def _measure(model, nrow, beta, n, seed):
    with torch.no_grad():
        u, logq = model.sample(n, nrow, generator=torch.Generator().manual_seed(seed))
        logw = -wilson_action(u, beta) - logq
        plaq = plaquette_traces(u).flatten(1).mean(1)
    return u, logw, plaq


def test_ess_and_acceptance_estimators():
    assert ess(torch.zeros(100)) == pytest.approx(1.0)
    lw = torch.tensor([0.0] + [-1e3] * 99)
    assert ess(lw) == pytest.approx(0.01)
    assert imh_acceptance(torch.zeros(50)) == 1.0
    assert imh_acceptance(lw) == 0.0
    m, e = reweighted_mean(torch.tensor([1.0, 3.0]), torch.log(torch.tensor([1.0, 3.0])))
    assert m == pytest.approx(2.5) and e > 0


def _run_u1_8x8(steps, batch, n_layers, lr, n_eval):
    beta, nrow = 2.0, (8, 8)
    torch.manual_seed(1)
    model = make_flow("U1", 2, n_layers=n_layers, k=6, hidden=(8, 8))
    _, logw0, _ = _measure(model, nrow, beta, n_eval, 11)
    tr = Trainer(model, TrainConfig(nrow=nrow, beta=beta, batch=batch, lr=lr,
                                    total_steps=steps, schedule="cosine", lr_min=lr / 10))
    hist = tr.train(steps)
    _, logw, plaq = _measure(model, nrow, beta, n_eval, 12)
    return hist, logw0, logw, plaq


def test_training_u1_8x8_beta2_fast():
    """Short run: the loss falls; on fresh samples the reverse-KL estimate -<log w> falls by
    far more than its standard error and the spread of log w shrinks; the reweighted plaquette
    agrees with the exact torus result within 4 sigma.

    Such a short run ends at ESS ~0.01, where an ESS estimated from 1024 samples rests on a few
    weights and varies 5x between seeds and CPU kernel sets: the slow test asserts on ESS.
    Measured over seeds: -<log w> 128 -> 79, Var log w 125 -> 8."""
    hist, logw0, logw, plaq = _run_u1_8x8(steps=250, batch=32, n_layers=8, lr=1e-2, n_eval=1024)
    first = sum(h["loss"] for h in hist[:10]) / 10
    last = sum(h["loss"] for h in hist[-10:]) / 10
    assert last < first - 10, (first, last)
    kl0, kl1 = -float(logw0.mean()), -float(logw.mean())
    se = math.sqrt((float(logw0.var()) + float(logw.var())) / len(logw))
    assert kl1 < kl0 - max(20.0, 20 * se), (kl0, kl1, se)
    assert float(logw.var()) < float(logw0.var()) / 4, (float(logw0.var()), float(logw.var()))
    mean, err = reweighted_mean(plaq, logw)
    exact = u1_2d_plaquette(2.0, 8)
    assert abs(mean - exact) < 4 * err + 1e-3, (mean, err, exact)


@pytest.mark.slow
def test_training_u1_8x8_beta2_slow():
    """Longer run: ESS well above the untrained model, independence-Metropolis chain on fresh
    proposals reproduces the exact plaquette."""
    hist, logw0, logw, plaq = _run_u1_8x8(steps=600, batch=64, n_layers=16, lr=3e-3, n_eval=4096)
    ess0, ess1 = ess(logw0), ess(logw)
    assert ess1 > 0.1 and ess1 > 50 * ess0, (ess0, ess1)
    mean, err = reweighted_mean(plaq, logw)
    exact = u1_2d_plaquette(2.0, 8)
    assert abs(mean - exact) < 4 * err, (mean, err, exact)
    assert imh_acceptance(logw) > 0.1


def test_reinforce_reduces_loss():
    tr = _trainer(estimator="reinforce", batch=32, lr=5e-3)
    hist = tr.train(40)
    first = sum(h["loss"] for h in hist[:5]) / 5
    last = sum(h["loss"] for h in hist[-5:]) / 5
    assert last < first - 2, (first, last)
    assert all(math.isfinite(h["loss_var"]) for h in hist)


def test_checkpoint_resume_is_bit_for_bit(tmp_path):
    a = _trainer(clip_value=1.0, schedule="cosine", total_steps=6, warmup=2)
    a.train(6)
    b = _trainer(clip_value=1.0, schedule="cosine", total_steps=6, warmup=2)
    b.train(3, checkpoint=tmp_path / "ck.pt")
    c = _trainer(seed=99, clip_value=1.0, schedule="cosine", total_steps=6, warmup=2)
    c.load(tmp_path / "ck.pt")
    assert c.step_count == 3
    c.train(3)
    for pa, pc in zip(a.model.parameters(), c.model.parameters(), strict=True):
        assert torch.equal(pa, pc)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in c.history]
    assert not list(tmp_path.glob(".*tmp*"))


def test_checkpoint_mismatch_raises(tmp_path):
    a = _trainer()
    a.save(tmp_path / "ck.pt")
    torch.manual_seed(0)
    other = Trainer(make_flow("U1", 2, n_layers=4, k=5, hidden=(4,)),
                    TrainConfig(nrow=(4, 4), beta=2.0, batch=8))
    with pytest.raises(ConfigError, match="model"):
        other.load(tmp_path / "ck.pt")
    bigger = _trainer(nrow=(8, 8))
    with pytest.raises(ConfigError, match="lattice"):
        bigger.load(tmp_path / "ck.pt")
    su2 = Trainer(make_flow("SU2", 2, n_layers=4, k=4, hidden=(4,)),
                  TrainConfig(nrow=(4, 4), beta=2.0, batch=8))
    with pytest.raises(ConfigError, match="group"):
        su2.load(tmp_path / "ck.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        a.load(tmp_path / "junk.pt")


def test_nan_loss_stops_and_keeps_last_checkpoint(tmp_path):
    tr = _trainer()
    tr.train(2, checkpoint=tmp_path / "ck.pt")
    before = (tmp_path / "ck.pt").read_bytes()
    tr.action = lambda u: torch.full((u.shape[0],), float("nan"), dtype=torch.float64)
    with pytest.raises(PhysicsError, match="not finite.*checkpoint is kept"):
        tr.train(3, checkpoint=tmp_path / "ck.pt", checkpoint_every=1)
    assert (tmp_path / "ck.pt").read_bytes() == before


def test_bad_config():
    with pytest.raises(ConfigError, match="estimator"):
        TrainConfig(nrow=(4, 4), beta=1.0, estimator="score")
    with pytest.raises(ConfigError, match="batch"):
        TrainConfig(nrow=(4, 4), beta=1.0, batch=1)
    with pytest.raises(ConfigError, match="nrow"):
        Trainer(make_flow("U1", 2, n_layers=1), TrainConfig(nrow=(4, 4, 4, 4), beta=1.0))


def test_rank_device(monkeypatch):
    from bridge.flows.distributed import rank_device

    assert rank_device("cpu") == torch.device("cpu")
    assert rank_device("cpu", 4) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: expected a torch device"):
        rank_device("gpu0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device("cuda", 4) == torch.device("cuda", 3)  # one GPU per rank
    assert rank_device("cuda", 1) == torch.device("cuda")
    assert rank_device("cuda:1", 4) == torch.device("cuda", 1)  # an explicit index is kept
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="has no CUDA device; use --device cpu"):
        rank_device("cuda")


def test_trainer_draws_batches_on_the_model_device():
    """The trainer passes the model's device to ``sample`` and seeds a generator there (so a
    model moved to a GPU trains on it)."""
    from bridge.flows import PlaquetteFlow

    seen = []

    class Recording(PlaquetteFlow):
        def sample(self, n, lattice, *, generator=None, device=None, **kw):
            seen.append((device, generator.device))
            return super().sample(n, lattice, generator=generator, device=device, **kw)

    tr = Trainer(Recording(8), TrainConfig(nrow=(4, 4), beta=1.0, batch=4))
    tr.step()
    assert seen == [(torch.device("cpu"), torch.device("cpu"))]
