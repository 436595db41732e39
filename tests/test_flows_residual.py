"""Residual staple layers (bridge.flows.residual): mask rules, invertibility, log-det against
autograd, gauge and translation equivariance, the leading-order (trivialising-map) tilt, the
model built from them, training, the CLI option and bad input."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bridge.cli import main
from bridge.errors import ConfigError, ConvergenceError
from bridge.flows import (
    MaskError,
    ResidualStapleLayer,
    StapleMask,
    link_staples,
    make_flow,
    staple_mask_cycle,
)
from bridge.flows.checkpoints import load_model
from bridge.flows.masks import loop_links_count
from bridge.flows.residual import active_staples
from bridge.flows.training import TrainConfig, Trainer, reverse_kl_loss
from bridge.gauge import (
    plaquette_traces,
    random_gauge,
    staple,
    wilson_action,
)
from bridge.groups import mm, trace
from bridge.io.chains import read_chain
from bridge.jobs.chain import chain_settings, resolve_model, run_chains
from bridge.lattice import Lattice
from bridge.testing import (
    assert_flow_density,
    assert_gauge_equivariant,
    assert_in_group,
    assert_invertible,
    assert_logdet_matches_autograd,
)

CASES = [("U1", (2, 2)), ("SU2", (2, 2)), ("SU3", (2, 2)), ("SU2", (2, 2, 2, 2)),
         ("U1", (4, 6)), ("SU3", (4, 4, 4, 4))]


def _layer(group, nd, mu=0, parity=0, scale=1.5, seed=0, hidden=None):
    """A layer far from the identity: raw coefficients of random sign and magnitude in
    ``scale * [1, 1 + |N(0, 1)|]`` (never near 0, whatever the seed); with ``hidden`` a context
    net with gain-1 output layer (site-dependent coefficients)."""
    torch.manual_seed(seed)
    layer = ResidualStapleLayer(group, nd, StapleMask(mu, parity), hidden=hidden,
                                init_gain=1.0)
    with torch.no_grad():
        z = torch.randn_like(layer.raw)
        layer.raw.copy_(scale * torch.sign(z) * (1 + torch.randn_like(z).abs()))
    return layer


def _field(group, nrow, batch=2, seed=1):
    return random_gauge(Lattice(nrow), group, batch,
                        generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("nrow", [(2, 2), (4, 6), (2, 4, 2, 2), (4, 4, 4, 4)],
                         ids=lambda v: str(v))
def test_mask_cycle_updates_every_link_once_and_no_loop_holds_two_active_links(nrow):
    lat = Lattice(nrow)
    cover = torch.zeros((lat.nd, *lat.shape), dtype=torch.int64)
    for mask in staple_mask_cycle(lat.nd):
        act = mask.active_links(lat)
        cover += act.to(torch.int64)
        # no plaquette contains two active links: the staples of the active links are frozen
        assert int(loop_links_count(lat, act).max()) == 1
    assert bool((cover == 1).all())
    assert len(staple_mask_cycle(lat.nd)) == 2 * lat.nd


def test_link_staples_sum_to_the_staple_and_give_the_plaquettes():
    u = _field("SU3", (4, 2, 2, 4), batch=1)
    lat = Lattice.of(u)
    for mu in range(4):
        st = link_staples(u, mu)
        assert len(st) == 6
        torch.testing.assert_close(sum(st), staple(u, mu), atol=1e-13, rtol=0)
    # sum over links and staples of Re Tr[U S_k] counts every plaquette four times
    total = sum(float(trace(mm(u[:, mu], s)).real.sum()) for mu in range(4)
                for s in link_staples(u, mu))
    ref = 4 * 3 * float(plaquette_traces(u).sum())
    assert abs(total - ref) < 1e-9 * max(1.0, abs(ref))
    assert lat.nd == 4


@pytest.mark.parametrize("group, nrow", [("SU3", (4, 2, 2, 4)), ("U1", (4, 6)),
                                         ("SU2", (2, 4, 2))])
def test_gathered_active_staples_are_the_link_staples(group, nrow):
    # the layer's gathered staples (active links only) against the full-lattice ones
    u = _field(group, nrow, batch=2)
    lat = Lattice.of(u)
    for mask in staple_mask_cycle(lat.nd):
        idx, up, low = active_staples(u, lat, mask)
        assert torch.equal(idx, mask.active_sites(lat).flatten().nonzero().squeeze(1))
        full = link_staples(u, mask.mu)
        for i in range(lat.nd - 1):
            for got, ref in ((up[:, i], full[2 * i]), (low[:, i], full[2 * i + 1])):
                torch.testing.assert_close(got, ref.flatten(1, lat.nd)[:, idx], atol=1e-14,
                                           rtol=0)


@pytest.mark.parametrize("tied", [True, False])
def test_forward_without_graph_equals_forward_with_graph(tied):
    # inference takes the Cayley-Hamilton exponential, training torch's matrix_exp
    u = _field("SU3", (4, 2, 2, 4), batch=2)
    layer = ResidualStapleLayer("SU3", 4, StapleMask(1, 1), tied=tied)
    with torch.no_grad():
        layer.raw.uniform_(-0.5, 0.5, generator=torch.Generator().manual_seed(4))
    y, ld = layer(u)
    assert y.requires_grad
    with torch.no_grad():
        y0, ld0 = layer(u)
    torch.testing.assert_close(y0, y.detach(), atol=1e-13, rtol=0)
    torch.testing.assert_close(ld0, ld.detach(), atol=1e-13, rtol=0)
    assert (y0 - u).abs().max() > 1e-3  # the layer moved the links


@pytest.mark.parametrize("hidden", [None, (4,)], ids=["constant", "context"])
@pytest.mark.parametrize("group, nrow", CASES, ids=lambda v: str(v))
def test_invertible_and_gauge_equivariant(group, nrow, hidden):
    nd = len(nrow)
    for mu, parity in ((0, 0), (nd - 1, 1)):
        layer = _layer(group, nd, mu, parity, hidden=hidden)
        u = _field(group, nrow)
        assert float(layer.coefficients().detach().abs().sum()) > 0.3  # far from the identity
        assert_invertible(layer, u, atol=1e-10)
        assert_gauge_equivariant(layer, u, generator=torch.Generator().manual_seed(2),
                                 atol=1e-10)
        y, _ = layer.forward(u)
        assert_in_group(y, group, atol=1e-12)


@pytest.mark.parametrize("hidden", [None, (4,)], ids=["constant", "context"])
@pytest.mark.parametrize("group, nrow", CASES[:4], ids=lambda v: str(v))
def test_logdet_matches_autograd(group, nrow, hidden):
    nd = len(nrow)
    for mu, parity in ((0, 1), (nd - 1, 0)):
        layer = _layer(group, nd, mu, parity, seed=mu + parity, hidden=hidden)
        assert_logdet_matches_autograd(layer, _field(group, nrow, batch=1), atol=1e-9)


@pytest.mark.parametrize("group", ["U1", "SU2", "SU3"])
def test_leading_order_tilt_is_the_trivialising_map(group):
    # for small c: log J = tr L + O(c^2) with tr L = (N^2 - 1)/N Re Tr[U B] (SU(N)) or
    # Re[U B] (U(1)), i.e. the layer tilts the density by exp(-const Re Tr[U B])
    layer = ResidualStapleLayer(group, 2, StapleMask(1, 0))
    with torch.no_grad():
        layer.raw.copy_(torch.tensor([1e-6, -2e-6], dtype=torch.float64))
    u = _field(group, (4, 4), batch=3)
    lat = Lattice.of(u)
    _, ld = layer.forward(u)
    c = layer.coefficients()
    b = sum(c[k] * s for k, s in enumerate(link_staples(u, 1)))
    act = StapleMask(1, 0).active_sites(lat)
    re = trace(mm(u[:, 1], b)).real[:, act].sum(-1)
    n = u.shape[-1]
    factor = 1.0 if n == 1 else (n * n - 1) / n
    # the O(c^2) remainder is ~1e-11 here; where Re Tr[U B] nearly cancels over the active links a
    # relative tolerance alone would ask for more than first order
    torch.testing.assert_close(ld.detach(), factor * re.detach(), rtol=1e-5, atol=1e-9)


def test_fresh_layer_is_the_identity_and_only_active_links_move():
    u = _field("SU3", (2, 2, 2, 4))
    for hidden in (None, (4,)):
        layer = ResidualStapleLayer("SU3", 4, StapleMask(2, 1), hidden=hidden)
        with torch.no_grad():
            y, ld = layer.forward(u)
        # constant coefficients start at 0; a context net's small output gain keeps it close
        assert float((y - u).abs().max()) < (1e-300 if hidden is None else 0.05)
        assert float(ld.abs().max()) < (1e-300 if hidden is None else 0.5)
    layer = _layer("SU3", 4, 2, 1)
    y, _ = layer.forward(u)
    moved = (y - u).abs().amax((-1, -2))[0] > 0
    act = StapleMask(2, 1).active_links(Lattice.of(u))
    assert bool((moved == act).all())


@pytest.mark.parametrize("hidden", [None, (4,)], ids=["constant", "context"])
def test_translation_equivariance_by_checkerboard_preserving_shifts(hidden):
    layer = _layer("SU2", 2, 0, 1, hidden=hidden)
    u = _field("SU2", (4, 6), batch=1)
    y, ld = layer.forward(u)
    # shift by 2 along t (keeps the parity of x_t) and by 1 along x (the direction mu)
    sh = torch.roll(u, shifts=(2, 1), dims=(2, 3))
    ys, lds = layer.forward(sh)
    torch.testing.assert_close(ys, torch.roll(y, shifts=(2, 1), dims=(2, 3)), atol=1e-12,
                               rtol=0)
    torch.testing.assert_close(lds, ld, atol=1e-11, rtol=0)


@pytest.mark.parametrize("group, nrow", [("U1", (4, 4)), ("SU3", (2, 2)),
                                         ("SU2", (2, 2, 2, 2)), ("SU3", (2, 2, 2, 2))],
                         ids=lambda v: str(v))
def test_residual_model_sample_log_prob_equivariance_and_autograd(group, nrow):
    torch.manual_seed(0)
    model = make_flow(group, len(nrow), arch="residual", n_layers=4 * len(nrow), hidden=(4,),
                      init_gain=1.0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
    u, logq = assert_flow_density(model, nrow, 3, generator=torch.Generator().manual_seed(3))
    assert float(logq.abs().min()) > 1e-3
    # 16 fixed-point inverses (each to 50 eps, error <= kappa/(1-kappa) of that) compound
    # through the later layers' inverses (Lipschitz up to 1/(1-kappa)) and the logdet sums:
    # on U1 (4, 4), 30 seed shifts gave max(|x' - x|, |ld + ld'|) median ~5e-12, max 4.0e-10
    # (|logdet| ~ 10-40); a wrong inverse or logdet is off by >> 1e-8
    assert_invertible(model, u, atol=1e-8)
    if Lattice(nrow).volume <= 4:
        assert_logdet_matches_autograd(model, u[:1], atol=1e-8)


def test_training_reduces_the_reverse_kl_and_learns_the_leading_order_coefficient():
    # 4D SU(3) 2^4 at beta = 1: the loss drops, and the coefficients come out negative and of
    # the size of the leading-order trivialising map, c ~ -beta / (4 (N^2 - 1)) = -1/32
    # The reverse KL (up to log Z) on 256 fresh samples falls 96.0(1) -> 93.25(2) over seeds; the
    # mean training-step loss of 5 batches of 16 is too noisy for a threshold.
    def kl(seed):
        with torch.no_grad():
            u, logq = model.sample(256, (2, 2, 2, 2), generator=torch.Generator().manual_seed(seed))
            logw = -wilson_action(u, 1.0) - logq
        return -float(logw.mean()), float(logw.std()) / 16

    torch.manual_seed(0)
    model = make_flow("SU3", 4, arch="residual")
    kl0, se0 = kl(7)
    tr = Trainer(model, TrainConfig(nrow=(2, 2, 2, 2), beta=1.0, batch=16, lr=0.02,
                                    adam_eps=1e-8, seed=1))
    for _ in range(40):
        tr.step()
    kl1, se1 = kl(8)
    assert kl1 < kl0 - max(1.5, 5 * math.hypot(se0, se1)), (kl0, se0, kl1, se1)
    c = torch.cat([layer.coefficients().detach() for layer in model.layers])
    assert -0.08 < float(c.mean()) < -0.01


def test_checkpoint_round_trip_and_cli_option(tmp_path, capsys):
    out = tmp_path / "res"
    rc = main(["train", "--group", "su2", "--nrow", "2", "2", "2", "2", "--beta", "1.0",
               "--arch", "residual", "--layers", "8", "--steps", "3", "--batch", "4",
               "--lr", "0.05", "--eval-samples", "32", "--eval-batch", "16", "--out", str(out)])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and 0.0 < summary["ess"] <= 1.0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"] == {"arch": "residual", "n_layers": 8}
    model, meta = load_model(out)
    assert meta["model"]["arch"] == "residual" and len(model.layers) == 8
    assert meta["model"]["hidden"] is None
    assert all(isinstance(layer, ResidualStapleLayer) for layer in model.layers)
    assert float(sum(p.detach().abs().sum() for p in model.parameters())) > 0  # trained


def test_bad_input():
    with pytest.raises(MaskError, match="L_0 = 3 .* is odd"):
        StapleMask(1, 0).active_sites(Lattice((3, 4)))
    with pytest.raises(MaskError, match="parity: expected 0 or 1"):
        StapleMask(0, 2)
    with pytest.raises(MaskError, match="expected a direction 0 <= mu < Nd = 2, got mu = 2"):
        ResidualStapleLayer("U1", 2, StapleMask(2, 0))
    with pytest.raises(ValueError, match="kappa: expected a Lipschitz bound in \\(0, 1\\)"):
        ResidualStapleLayer("U1", 2, StapleMask(0, 0), kappa=1.0)
    with pytest.raises(ValueError, match="acts on SU\\(2\\)"):
        ResidualStapleLayer("SU2", 2, StapleMask(0, 0)).forward(_field("SU3", (2, 2)))
    with pytest.raises(ValueError, match="arch: expected one of"):
        make_flow("U1", 2, arch="spline")
    with pytest.raises(MaskError, match="is odd"):
        make_flow("U1", 2, arch="residual").sample(1, (4, 5))
    with pytest.raises(ValueError, match="k, period: not an option of the 'residual' "
                                         "architecture \\(got k = 4, period = 2\\)"):
        make_flow("SU3", 4, arch="residual", k=4, period=2)
    with pytest.raises(ValueError, match="kappa: not an option of the 'coupling'"):
        make_flow("SU3", 4, kappa=0.5)
    # the score-function estimator needs a differentiable inverse
    with pytest.raises(ConfigError, match="fixed-point iteration"):
        Trainer(make_flow("U1", 2, arch="residual"),
                TrainConfig(nrow=(4, 4), beta=1.0, estimator="reinforce"))
    with pytest.raises(ConfigError, match="fixed-point iteration"):
        reverse_kl_loss(make_flow("U1", 2, arch="residual"), lambda u: u.real.sum((1, 2, 3, 4, 5)),
                        4, (4, 4), estimator="reinforce")
    # a fixed-point inverse that cannot converge in the iterations allowed: a clear error
    layer = _layer("SU3", 2, 0, 0, scale=3.0)
    y, _ = layer.forward(_field("SU3", (2, 2)))
    with pytest.raises(ConvergenceError, match="did not converge in 2 iterations"):
        layer.reverse(y, max_iter=2)


def test_residual_model_applies_to_every_even_lattice():
    # no parameter depends on the lattice: a model trained on one lattice samples on another
    torch.manual_seed(0)
    model = make_flow("SU2", 2, arch="residual", n_layers=8)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 1.0)
        for nrow in ((4, 4), (6, 8), (2, 10)):
            u, logq = model.sample(2, nrow, generator=torch.Generator().manual_seed(7))
            assert u.shape == (2, 2, nrow[1], nrow[0], 2, 2)
            torch.testing.assert_close(model.log_prob(u), logq, atol=1e-9, rtol=0)


def test_hybrid_chain_with_a_residual_model(tmp_path):
    # the chain recomputes log q of HMC states through the fixed-point inverse
    torch.manual_seed(0)
    model = make_flow("U1", 2, arch="residual", n_layers=8)
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-0.5)  # c_k = -0.2: a real deformation of the Haar prior
    Trainer(model, TrainConfig(nrow=(4, 4), beta=1.0, batch=4)).save(tmp_path / "m" /
                                                                       "checkpoint.pt")
    s, explicit = chain_settings(model=str(tmp_path / "m"), out=str(tmp_path / "run"),
                                 schedule="hmc:1,flow:8", chains=8, steps=8, seed=2)
    loaded = resolve_model(s, explicit)
    summary = run_chains(s, model=loaded, progress=False, rank=0, world=1)
    acc = summary["acceptance"]
    # the flow's acceptance is low (3.8(2.8)% over 40 seed shifts with 3 chains x 8 cycles of
    # flow:3, none accepted in 4 of 40): 8 chains x 8 cycles of flow:8 make 512 proposals, about
    # 20 accepted: over 25 shifts 3.9(0.8)%, the fewest 13 of 512; none accepted is a broken chain
    assert 0.0 < acc["flow"] <= 1.0 and 0.0 < acc["hmc"] <= 1.0
    data = read_chain(tmp_path / "run" / "chain.h5")
    assert bool(torch.isfinite(torch.as_tensor(data["records"]["delta"])).all())
    assert summary["cycles"] == 8


@pytest.mark.parametrize("group, nrow, beta, exact", [
    ("SU3", (2, 2, 2, 2), 0.3, 0.3 / 18 + 0.3**2 / 216),   # strong coupling, SU(3) Wilson
    ("U1", (8, 8), 0.2, 0.099501),                          # I_1(0.2) / I_0(0.2)
], ids=["SU3-4D", "U1-2D"])
def test_leading_order_trivialising_map_gives_the_strong_coupling_plaquette(group, nrow, beta,
                                                                            exact):
    # no training: one cycle with c_k = -beta / (4 (N^2 - 1)) (U(1): -beta / 4) samples, without
    # any reweighting, the plaquette of the Wilson action to first order in beta
    model = make_flow(group, len(nrow), arch="residual")
    nc = model.group.nc
    c = -beta / (4 * (nc * nc - 1)) if nc > 1 else -beta / 4
    layer = model.layers[0]
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(math.atanh(c * layer.n_staples / layer.kappa))
        u, _ = model.sample(2048, nrow, generator=torch.Generator().manual_seed(3))
    tr = plaquette_traces(u).flatten(1).mean(1)
    mean, err = float(tr.mean()), float(tr.std()) / math.sqrt(tr.numel())
    # 4 sigma plus the O(beta^2) difference between the first-order map and the target
    assert abs(mean - exact) < 4 * err + 0.1 * beta**2 / nc, (mean, err, exact)
    assert mean > 0.5 * exact  # a wrong sign or a missing factor would fail here
