"""Wilson flow: the generator's normalisation (Z = -g0^2 dS_w), monotonic decrease of the action,
RK3 convergence orders (local eps^4, global eps^3), the embedded error estimate and the adaptive
step, gauge covariance, group membership, float32, and Chroma's WILSON_FLOW on the reference
configurations (w_plaq, t^2 E at t = 1, 2, 4, the per-step gact4i/gactij, Q_clover at t = 4 and
QACTDEN site by site)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bridge.gauge import (
    gauge_transform,
    mesplq,
    random_gauge,
    random_gauge_transformation,
    wilson_action,
    wilson_force,
)
from bridge.groups import expm_algebra, random_algebra, trace
from bridge.lattice import Lattice
from bridge.observables import (
    chroma_wilson_flow,
    energy_density,
    flow_generator,
    polyakov,
    rk3_step,
    rk3_step_embedded,
    topological_charge_density,
    wilson_flow,
)
from bridge.testing import assert_force_matches_action, assert_gauge_invariant, assert_in_group

C128 = torch.complex128
CHROMA = "chroma/nf2_b1.0_k0.1_4x4"


def _smooth(nrow, batch: int, gen: torch.Generator, eps: float, nc: int = 3) -> torch.Tensor:
    lat = Lattice(nrow)
    x = random_algebra(nc, (batch, lat.nd, *lat.shape), generator=gen)
    return expm_algebra(eps * x)


def _dist(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------------
# the flow generator and its normalisation
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group, nc", [("SU3", 3), ("SU2", 2), ("U1", 1)])
def test_generator_is_minus_gradient_of_g0sq_wilson_action(cpu_generator, group, nc):
    """``Z = -g0^2 d S_w``: ``-Z`` is the project's force of ``g0^2 S_w = beta sum(1 - ReTrP/N)``
    at ``beta = 2 N`` (directional derivatives by autograd), i.e. ``Z = -TA(U A)``."""
    u = random_gauge(Lattice((2, 2, 2, 4)), group, 1, generator=cpu_generator)
    z = flow_generator(u)
    assert torch.allclose(z, -wilson_force(u, 2.0 * nc), atol=0)
    dev = assert_force_matches_action(lambda v: wilson_action(v, 2.0 * nc), lambda v: -z, u,
                                      generator=cpu_generator, rtol=1e-10)
    assert dev < 1e-10
    # traceless anti-Hermitian (for SU(N))
    assert torch.allclose(z, -z.conj().transpose(-1, -2), atol=1e-15)
    if nc > 1:
        assert float(trace(z).abs().max()) < 1e-14


def test_flow_time_normalisation_action_rate(cpu_generator):
    """Along the flow ``d/dt [g0^2 S_w] = -2 sum Tr[Z^dag Z]``: a wrong factor in ``Z`` (or in t)
    would change the rate.  Checked by a central difference of two tiny RK3 steps."""
    u = _smooth((2, 2, 2, 4), 2, cpu_generator, 0.8)
    h = 1e-4
    s = lambda v: wilson_action(v, 6.0)  # noqa: E731
    rate = (s(rk3_step(u, h)) - s(u)) / h
    z = flow_generator(u)
    predicted = -2 * (z.abs() ** 2).flatten(1).sum(1)
    assert torch.allclose(rate, predicted, rtol=1e-3)
    assert bool((predicted < 0).all())


def test_action_and_energy_decrease_monotonically(cpu_generator):
    """The Wilson action (plaquette energy density) decreases at every step, even on a hot start.
    The clover E is not a Lyapunov function of the Wilson flow: on rough fields it first grows
    (Chroma's own gact4i on the reference configuration rises until t ~ 0.25), then decreases;
    on a smooth field it decreases from the start."""
    hot = random_gauge(Lattice((4, 4, 4, 4)), "SU3", 1, generator=cpu_generator)
    times = [0.02 * k for k in range(26)]
    res = wilson_flow(hot, times, eps=0.02)
    ep = res.energy_plaquette[0]
    assert bool((ep[1:] < ep[:-1]).all()), ep
    assert bool((res.plaquette[0, 1:] > res.plaquette[0, :-1]).all())
    smooth = _smooth((4, 4, 4, 4), 1, cpu_generator, 0.15)
    ec = wilson_flow(smooth, times, eps=0.02).energy[0]
    assert bool((ec[1:] < ec[:-1]).all()), ec


# ------------------------------------------------------------------------------------------------
# integrator orders, embedded estimate, adaptive step
# ------------------------------------------------------------------------------------------------
def _flow_fixed(u: torch.Tensor, t: float, n: int) -> torch.Tensor:
    for _ in range(n):
        u = rk3_step(u, t / n)
    return u


def test_rk3_global_and_local_error_orders(cpu_generator):
    """Halving eps divides the global error at fixed t by ~8 (third order) and the error of a
    single step by ~16 (local error eps^4).  Errors in the L2 norm of the whole field (the max
    norm jumps between entries); over 30 random fields the ratios lie in 8.1-9.2 (global, eps
    0.05 -> 0.0125) and 15.7-17.0 (local, h 0.05 -> 0.0125); order 2 or 4 would give 4 or 16,
    8 or 32."""
    u = _smooth((2, 2, 2, 4), 1, cpu_generator, 0.9)
    t = 0.4
    ref = _flow_fixed(u, t, 512)
    errs = [_l2(_flow_fixed(u, t, n), ref) for n in (8, 16, 32)]
    ratios = [errs[0] / errs[1], errs[1] / errs[2]]
    assert all(7 < r < 10 for r in ratios), (errs, ratios)
    h = 0.05
    one = [_l2(rk3_step(u, hh), _flow_fixed(u, hh, 64)) for hh in (h, h / 2, h / 4)]
    lr = [one[0] / one[1], one[1] / one[2]]
    assert all(13 < r < 20 for r in lr), (one, lr)


def _l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().pow(2).sum().sqrt())


def test_embedded_error_estimate_scales_as_eps_cubed(cpu_generator):
    u = _smooth((2, 2, 2, 4), 2, cpu_generator, 0.9)
    d = [rk3_step_embedded(u, h)[1] for h in (0.1, 0.05, 0.025)]
    assert d[0].shape == (2,)
    r = [float((d[0] / d[1]).min()), float((d[1] / d[2]).max())]
    assert 6.5 < r[0] and r[1] < 9.5, r
    new, _ = rk3_step_embedded(u, 0.05)
    assert torch.equal(new, rk3_step(u, 0.05))


def test_adaptive_flow_hits_times_and_agrees_with_fixed(cpu_generator):
    u = _smooth((2, 2, 2, 4), 2, cpu_generator, 0.9)
    times = [0.3, 1.0, 1.7]
    fine = wilson_flow(u, times, eps=0.005)
    ada = wilson_flow(u, times, eps=0.01, adaptive=True, tol=1e-5)
    assert torch.equal(ada.t, torch.tensor(times, dtype=torch.float64))
    assert abs(sum(ada.step_sizes) - times[-1]) < 1e-12
    assert ada.n_steps == len(ada.step_sizes) < fine.n_steps  # the step grew on the smooth field
    assert max(ada.step_sizes) > 0.02
    # the adaptive path (local error target 1e-5 per step, ~75 steps) against eps = 0.005:
    # max relative deviation of the six energies over 40 seeds: mean 1.19e-5, sd 0.61e-5,
    # largest 2.63e-5; 6e-5 is mean + 8 sd
    assert torch.allclose(ada.energy, fine.energy, rtol=6e-5)
    assert not torch.allclose(ada.energy, fine.energy, rtol=1e-8)  # it is a different path
    # a looser tolerance takes fewer steps; an impossible one raises
    loose = wilson_flow(u, times, eps=0.01, adaptive=True, tol=1e-4)
    assert loose.n_steps < ada.n_steps
    from bridge.errors import PhysicsError

    with pytest.raises(PhysicsError, match="eps_min"):
        wilson_flow(u, 1.0, eps=0.01, adaptive=True, tol=1e-16, eps_min=1e-3)


def test_flow_input_validation(cpu_generator):
    u = _smooth((2, 2, 2, 4), 1, cpu_generator, 0.5)
    with pytest.raises(ValueError, match=r"flow time 0.25 is not a multiple of eps = 0.1"):
        wilson_flow(u, 0.25, eps=0.1)
    with pytest.raises(ValueError, match="strictly increasing"):
        wilson_flow(u, [1.0, 0.5])
    with pytest.raises(ValueError, match="flow times >= 0"):
        wilson_flow(u, [-1.0])
    with pytest.raises(ValueError, match="eps: expected a positive finite step size"):
        wilson_flow(u, 1.0, eps=0.0)
    with pytest.raises(ValueError, match="nstep: expected a positive integer"):
        chroma_wilson_flow(u, 0, 4.0)
    with pytest.raises(ValueError, match="charge: a topological charge is defined"):
        wilson_flow(random_gauge(Lattice((2, 2, 4)), "SU2", 1, generator=cpu_generator), 0.1,
                    eps=0.05, charge=True)
    res = wilson_flow(u, [0.0, 0.1], eps=0.05)
    assert torch.equal(res.energy[:, 0], energy_density(u))  # t = 0 measures the input
    with pytest.raises(ValueError, match="not a measured flow time"):
        res.at(0.3)


# ------------------------------------------------------------------------------------------------
# symmetries, group, dtype
# ------------------------------------------------------------------------------------------------
def test_flow_is_gauge_covariant_and_stays_in_group(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = random_gauge(lat, "SU3", 2, generator=cpu_generator)
    om = random_gauge_transformation(lat, "SU3", 2, generator=cpu_generator)
    flowed = _flow_fixed(u, 0.5, 10)
    assert torch.allclose(_flow_fixed(gauge_transform(u, om), 0.5, 10),
                          gauge_transform(flowed, om), atol=1e-12)
    assert_in_group(flowed, atol=1e-12)
    res_fn = lambda v: wilson_flow(v, [0.2, 0.5], eps=0.05).t2E  # noqa: E731
    assert_gauge_invariant(res_fn, u, om, atol=1e-12, rtol=1e-11)


def test_flow_float32_follows_input(cpu_generator):
    u = _smooth((2, 2, 2, 4), 1, cpu_generator, 0.7)
    r64 = wilson_flow(u, 0.5, eps=0.05)
    r32 = wilson_flow(u.to(torch.complex64), 0.5, eps=0.05)
    assert r32.U.dtype == torch.complex64 and r32.energy.dtype == torch.float32
    assert torch.allclose(r32.energy.double(), r64.energy, rtol=1e-4)


def test_flow_u1_2d_and_su2_3d(cpu_generator):
    u2 = random_gauge(Lattice((6, 6)), "U1", 2, generator=cpu_generator)
    r = wilson_flow(u2, [0.5, 1.0, 2.0, 4.0], eps=0.05)
    # The geometric charge of a hot start is not yet frozen at t = 0.5-1: it changes when a
    # plaquette angle passes through pi.  Measured on 100 random 6x6 configurations (50 seeds):
    # Q(0.5) != Q(1.0) in 16, Q changes after t = 1.0 in 2, after t = 1.5 in 0 (checked at 2,
    # 3, 4, 6, 10).  From t = 2 on, 86/100 meet the sufficient condition for freezing
    # sum_p (1 - cos theta_p) = 18 E_plaq < 2 (the flow never raises the action, and a change
    # needs one plaquette at 1 - cos = 2); the other 14 have |Q| >= 2 and did not change
    # either.  So compare Q at t = 2 and t = 4.
    assert r.charge is not None and torch.allclose(r.charge[:, 2], r.charge[:, 3], atol=1e-12)
    assert torch.allclose(r.charge, r.charge.round(), atol=1e-12)
    assert bool((r.energy_plaquette[:, 1:] < r.energy_plaquette[:, :-1]).all())
    u3 = random_gauge(Lattice((2, 2, 4)), "SU2", 1, generator=cpu_generator)
    r3 = wilson_flow(u3, 0.5, eps=0.05)
    assert r3.charge is None and r3.t2E.shape == (1, 1)
    assert_in_group(r3.U, atol=1e-12)


def test_flow_extra_observables(cpu_generator):
    u = _smooth((2, 2, 2, 4), 2, cpu_generator, 0.7)
    res = wilson_flow(u, [0.1, 0.2], eps=0.05, extra={"poly": lambda v: polyakov(v).abs()})
    assert res.extra["poly"].shape == (2, 2)
    at = res.at(0.2)
    assert set(at) >= {"energy", "t2E", "plaquette", "charge", "poly"}
    assert torch.allclose(at["t2E"], 0.04 * at["energy"])
    with pytest.raises(ValueError, match="extra: names \\['energy'\\] are reserved"):
        wilson_flow(u, 0.1, eps=0.05, extra={"energy": energy_density})


# ------------------------------------------------------------------------------------------------
# Chroma's WILSON_FLOW (nstep 400, wtime 4.0) on the reference configurations
# ------------------------------------------------------------------------------------------------
def _chroma(data_dir):
    folder = data_dir / CHROMA
    return folder, json.loads((folder / "measured_by_chroma.json").read_text())


def _read(folder, entries) -> torch.Tensor:
    from bridge.io.ildg import read_ildg

    return torch.cat([read_ildg(folder / e["file"])[0] for e in entries])


def _xml_floats(tree, tag: str) -> torch.Tensor:
    return torch.tensor([float(x) for x in tree.find(f".//{tag}").text.split()],
                        dtype=torch.float64)


def test_chroma_wilson_flow_cfg1500_every_step(data_dir):
    """Chroma's full ``wilson_flow_results`` of cfg 1500 (401 times), its flowed plaquette
    (all planes), flowed Polyakov loops (4 directions), ``t^2 E`` at t = 1, 2, 4, the clover
    charge at t = 4 and QACTDEN's charge density site by site at t = 4."""
    from lxml import etree

    folder, entries = _chroma(data_dir)
    entry = next(e for e in entries if e["file"].endswith("_1500.lime"))
    u = _read(folder, [entry])
    tree = etree.parse(str(folder / "chroma_measure_cfg_1500.out.xml"))
    res = chroma_wilson_flow(u, 400, 4.0)
    steps = _xml_floats(tree, "wflow_step")
    assert torch.allclose(res.wflow_step, steps, rtol=0, atol=1e-12)
    assert torch.allclose(res.wflow_gact4i[0], _xml_floats(tree, "wflow_gact4i"), rtol=1e-12)
    assert torch.allclose(res.wflow_gactij[0], _xml_floats(tree, "wflow_gactij"), rtol=1e-12)
    for t in ("1", "2", "4"):
        k = round(float(t) * 100)
        assert abs(float(res.t2E[0, k]) - entry["t2E"][t]) < 1e-12 * entry["t2E"][t]
    obs = tree.find(".//WilsonFlowGaugeObservables")
    plq = mesplq(res.U)
    assert abs(float(plq.w_plaq[0]) - entry["w_plaq_flow_t4"]) < 1e-13
    assert abs(float(plq.w_plaq[0]) - float(obs.findtext("w_plaq"))) < 1e-13
    for (mu, nu), val in plq.planes.items():
        assert abs(float(val[0]) - float(obs.findtext(f"plane_{mu}{nu}_plaq"))) < 1e-13
    ref_poly = [complex(float(e.findtext("re")), float(e.findtext("im")))
                for e in obs.findall("pollp/elem")]
    for mu in range(4):
        assert abs(complex(polyakov(res.U, mu=mu)[0]) - ref_poly[mu]) < 1e-13
    q = topological_charge_density(res.U)[0]
    assert abs(float(q.sum()) - entry["Q_clover_t4"]) < 1e-13
    node = list(tree.iter("QActDen"))[1]
    dens = torch.tensor([float(e.text) for e in node.find("naiveTopCharge/OLattice")],
                        dtype=torch.float64).reshape(4, 4, 4, 4)
    assert torch.allclose(q, dens, rtol=1e-10, atol=1e-15)


def _check_all_configurations(data_dir) -> None:
    folder, entries = _chroma(data_dir)
    u = _read(folder, entries)
    res = wilson_flow(u, [1.0, 2.0, 4.0], eps=4.0 / 400)
    w = torch.tensor([e["w_plaq_flow_t4"] for e in entries], dtype=torch.float64)
    t2e = torch.tensor([[e["t2E"][t] for t in ("1", "2", "4")] for e in entries],
                       dtype=torch.float64)
    q = torch.tensor([e["Q_clover_t4"] for e in entries], dtype=torch.float64)
    assert torch.allclose(res.plaquette[:, 2], w, rtol=1e-13, atol=0)
    assert torch.allclose(res.t2E, t2e, rtol=1e-12, atol=0)
    assert torch.allclose(res.charge[:, 2], q, rtol=0, atol=1e-13)
    # far from an integer on these 4^4, beta = 1 fields: the test is a precision test
    assert float((q - q.round()).abs().max()) > 0.3


@pytest.mark.slow
def test_chroma_wilson_flow_all_configurations(data_dir):
    _check_all_configurations(data_dir)


def test_chroma_semantics_eps_is_wtime_over_nstep(cpu_generator):
    u = _smooth((2, 2, 2, 4), 1, cpu_generator, 0.8)
    c = chroma_wilson_flow(u, 8, 0.4)
    assert torch.allclose(c.wflow_step, torch.arange(9, dtype=torch.float64) * 0.05)
    f = wilson_flow(u, [0.2, 0.4], eps=0.05)
    assert torch.equal(c.U, f.U)
    assert torch.allclose((c.wflow_gact4i + c.wflow_gactij)[:, [4, 8]], f.energy, rtol=1e-14)
    assert torch.allclose(c.t2E[:, [4, 8]], f.t2E, rtol=1e-14)
    assert math.isclose(float(c.wflow_step[-1]), 0.4)
