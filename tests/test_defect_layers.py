"""Defect-localised stout layers (bridge.flows.defect_layers): the region and staple flags by
hand, the flow-layer checks of bridge.testing (invertibility, log-det against autograd, gauge
equivariance), locality, the native kernel against torch, and an exact defect SNF (2D SU(2),
Jarzynski against bridge.exact)."""

from __future__ import annotations

import pytest
import torch
from test_defect import BETA, L, _open_chains, assert_reweights_to_the_torus

from bridge import _native_stout
from bridge.errors import ConfigError
from bridge.exact import su2_2d_plaquette
from bridge.flows.checkpoints import flow_from_config
from bridge.flows.defect_layers import (
    DefectCycle,
    DefectMask,
    DefectStapleLayer,
    defect_region,
    defect_staple_flags,
)
from bridge.flows.masks import MaskError
from bridge.flows.snf import SNFModel
from bridge.gauge import random_gauge
from bridge.gauge.defect import defect_mask
from bridge.lattice import Lattice
from bridge.mcmc.nonequilibrium import run_protocol
from bridge.rng import generator
from bridge.testing import (
    assert_gauge_equivariant,
    assert_invertible,
    assert_logdet_matches_autograd,
)


def test_region_by_hand():
    # 4^4, defect 1x1x1: S_0 is x_t in {3, 0}, x_i in {0, 1}: 2 x 8 sites; radius 0 holds the
    # 12 spatial links of each 2x2x2 cube and the 8 time links from x_t = 3 to 0
    lat = Lattice((4, 4, 4, 4))
    r = defect_region(lat, (1, 1, 1), 0)
    assert [int(r[mu].sum()) for mu in range(4)] == [8, 8, 8, 8]
    # fields are [t, z, y, x]
    assert bool(r[3][3, 0, 0, 0]) and not bool(r[3][0, 0, 0, 0])  # x + t at t = 1: outside
    assert bool(r[0][0, 1, 1, 0]) and not bool(r[0][0, 0, 0, 1])  # x + mu leaves the cube
    # radius 1 reaches one site further in every direction (periodically): 4^3 x 4 sites
    r1 = defect_region(lat, (1, 1, 1), 1)
    assert bool(r1.all())  # on 4^4 the dilated box is the whole lattice
    r1 = defect_region(Lattice((8, 8, 8, 8)), (1, 1, 1), 1)
    assert int(r1[3].sum()) == 4**3 * 3  # time links between the 4 slices 6, 7, 0, 1


def test_every_link_of_a_defect_plaquette_sees_it_once():
    # summed over the 2 Nd masks, the staple flags count each defect plaquette 4 times
    lat = Lattice((4, 4, 6, 6))
    ext = (2, 3, 1)
    n_plaq = int(defect_mask(lat, ext).sum())
    assert n_plaq == 2 * 3 * 1 * 3
    total = 0
    for radius in (0, 1):
        total = sum(int(defect_staple_flags(lat, DefectMask(mu, p, ext, radius), torch.device(
            "cpu")).sum()) for mu in range(4) for p in (0, 1))
        assert total == 4 * n_plaq


def test_mask_and_model_errors():
    with pytest.raises(MaskError, match="extent: a defect mask needs"):
        DefectMask(0, 0)
    with pytest.raises(MaskError, match="radius: expected an integer >= 0, got -1"):
        DefectMask(0, 0, (1, 1, 1), -1)
    with pytest.raises(MaskError, match="mask: expected a DefectMask, got StapleMask"):
        from bridge.flows.residual import StapleMask
        DefectStapleLayer("SU3", 4, StapleMask(0, 0))
    lay = DefectStapleLayer("SU3", 4, DefectMask(0, 0, (1, 1, 1)))
    with pytest.raises(ValueError, match=r"c_near: expected \|c_near\| < kappa / 6"):
        lay.set_coefficients(0.0, 0.2)
    with pytest.raises(ConfigError, match="layer: 'defect' layers act around a defect"):
        SNFModel("SU3", 4, beta0=6.0, beta=6.0, n_blocks=2, layer="defect")
    with pytest.raises(ConfigError, match="radius: expected an integer >= 0"):
        SNFModel("SU3", 4, beta0=6.0, beta=6.0, n_blocks=2, layer="defect", defect=(1, 1, 1),
                 radius=-2)


def _layer(group: str, nd: int, ext, radius: int, mu: int = 0, parity: int = 0):
    lay = DefectStapleLayer(group, nd, DefectMask(mu, parity, tuple(ext), radius))
    lay.set_coefficients(-0.09, 0.05)
    return lay


@pytest.mark.parametrize("group,nrow,ext,mu", [("SU3", (2, 2, 2, 2), (1, 1, 1), 3),
                                               ("SU2", (4, 4, 4, 4), (2, 1, 1), 1),
                                               ("SU2", (4, 4), (2,), 0)])
def test_flow_layer_checks(group, nrow, ext, mu):
    lat = Lattice(nrow)
    u = random_gauge(lat, group, 2, generator=generator(3))
    lay = _layer(group, lat.nd, ext, 1, mu=mu)
    assert_invertible(lay, u)
    assert_logdet_matches_autograd(lay, u, atol=1e-9)
    assert_gauge_equivariant(lay, u, generator=generator(4))


def test_links_outside_the_region_do_not_move():
    lat = Lattice((6, 6, 6, 6))
    u = random_gauge(lat, "SU3", 2, generator=generator(5))
    cyc = DefectCycle("SU3", 4, (2, 2, 2), radius=0, c=-0.05, c_near=0.04)
    with torch.no_grad():
        y, _ = cyc.forward(u)
    moved = (y - u).abs().flatten(-2).amax(-1).amax(0) > 0  # [Nd, *shape]
    region = defect_region(lat, (2, 2, 2), 0)
    assert bool(moved.any())
    assert not bool((moved & ~region).any())
    assert bool(moved[:, :2, :2, :2].any())


@pytest.mark.skipif(not _native_stout.available(), reason="native stout kernel not built")
def test_native_per_site_coefficients_equal_torch():
    lat = Lattice((6, 4, 4, 6))
    u = random_gauge(lat, "SU3", 3, generator=generator(6))
    for mask in (DefectMask(3, 1, (3, 2, 2), 1), DefectMask(1, 0, (3, 2, 2), 0)):
        lay = DefectStapleLayer("SU3", 4, mask)
        lay.set_coefficients(-0.07, 0.03)
        with torch.no_grad():
            y, ld = lay.forward(u)  # native
            idx, b = lay._frozen(u, lat)
            y2, ld2 = lay._move(u, lat, idx, b)  # torch
        assert float((y - y2).abs().max()) < 1e-12
        assert float((ld - ld2).abs().max()) < 1e-10
        assert float(ld.abs().max()) > 1e-3


def test_luscher_start_and_checkpoint_round_trip():
    m = SNFModel("SU3", 4, beta0=6.0, beta=6.0, n_blocks=8, defect=(2, 2, 2), layer="defect",
                 radius=1, init_scale=0.5)
    c = m.blocks[0].coefficients().detach()
    # c_D = -scale beta dc / (4 dim G) with dc = 1/8; c_N = 0 at fixed beta
    assert torch.allclose(c[:, 0], torch.full((8,), -0.5 * 6.0 / 8 / 32, dtype=c.dtype))
    assert float(c[:, 1].abs().max()) < 1e-15
    m2 = flow_from_config(m.config)
    m2.load_state_dict(m.state_dict())
    assert m2.config == m.config and m2.config["radius"] == 1
    assert isinstance(m2.blocks[3], DefectCycle)


def test_defect_snf_is_exact_and_better_than_no_layers():
    # 2D SU(2) 4x4, the whole time boundary open -> periodic in 2 blocks: with defect layers
    # at Luescher's start, Jarzynski gives log Z_torus / Z_open and the torus plaquette
    # (exactness for any layer), and the layers lower the mean dissipated work on the same
    # prior configurations and MC random numbers
    x0 = _open_chains(1024, 15, 21)
    model = SNFModel("SU2", 2, beta0=BETA, beta=BETA, n_blocks=2, defect=(L,), layer="defect",
                     radius=1)
    with torch.no_grad():
        u, work, _ = run_protocol(x0, model.protocol(), seed=5)
        _, work0, _ = run_protocol(x0, model.protocol(layers=False), seed=5)
    assert_reweights_to_the_torus(u, work)
    diff = work0 - work  # paired: the same x0 and random numbers
    assert float(diff.mean()) > 4 * float(diff.std()) / len(diff) ** 0.5


def test_defect_layers_from_the_command_line_sample_the_torus(tmp_path):
    # train --arch snf with {"layer": "defect"} in the settings file, then an NE-MCMC chain
    # with the trained model: the torus plaquette of 2D SU(2) 4x4 (exact)
    import json

    from bridge.cli import main
    from bridge.flows.checkpoints import load_model

    cfg = tmp_path / "snf.json"
    cfg.write_text(json.dumps({"model": {"arch": "snf", "layer": "defect", "radius": 0}}))
    assert main(["train", str(cfg), "--group", "su2", "--nrow", "4", "4", "--beta0", "2",
                 "--beta", "2", "--blocks", "3", "--defect", "2", "--steps", "2", "--batch",
                 "4", "--therm", "5", "--eval-samples", "8", "--eval-batch", "8", "--out",
                 str(tmp_path / "m")]) == 0
    model, _ = load_model(tmp_path / "m")
    assert model.config["layer"] == "defect" and model.config["radius"] == 0
    assert isinstance(model.blocks[0], DefectCycle)
    assert main(["chain", "--model", str(tmp_path / "m"), "--chains", "16", "--steps", "60",
                 "--therm", "10", "--out", str(tmp_path / "c"), "--no-progress"]) == 0
    s = json.loads((tmp_path / "c" / "summary.json").read_text())
    p = s["plaquette"]
    assert abs(p["mean"] - su2_2d_plaquette(BETA, L)) < 4 * p["error"], p
    assert s["acceptance"]["nemcmc"] > 0.1


def test_radius_and_extent_inputs():
    m = DefectMask(1, 0, [2, 2, 2], 0)  # a list becomes a (hashable) tuple
    assert m.extent == (2, 2, 2) and hash(m)
    with pytest.raises(MaskError, match="radius: expected an integer >= 0, got None"):
        DefectMask(1, 0, (2, 2, 2), None)
    with pytest.raises(MaskError, match="radius: expected an integer >= 0, got 1.5"):
        defect_region(Lattice((4, 4, 4, 4)), (1, 1, 1), 1.5)
    with pytest.raises(ConfigError, match="radius 2: the reach of layer 'defect'; the layer "
                                          "is 'stout'"):
        SNFModel("SU3", 4, beta0=6.0, beta=6.2, n_blocks=2, radius=2)
