"""Observables: registry, clover field strength, energy density, topological charge (exactly known
constant-flux configurations, parity, 2D U(1) winding, Chroma's QACTDEN site by site), the pion
correlator (free-field momentum sum, time reflection, translations, Chroma's mesprop) and gauge
invariance of every observable."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from bridge.errors import PhysicsError
from bridge.fermions import WilsonDirac
from bridge.gauge import mesplq, random_gauge, random_gauge_transformation, unit_gauge
from bridge.groups import expm_algebra, mm, random_algebra, trace
from bridge.lattice import Lattice
from bridge.observables import (
    OBSERVABLES,
    clover_charge,
    clover_field_strength,
    clover_planes,
    energy_density,
    energy_density_split,
    geometric_charge_u1,
    get_observable,
    pion_correlator,
    point_propagator,
    point_source,
    polyakov,
    topological_charge,
    topological_charge_density,
    wilson_flow,
)
from bridge.observables import plaquette as plaquette_obs
from bridge.solvers import CG
from bridge.testing import assert_gauge_covariant, assert_gauge_invariant

C128 = torch.complex128
CHROMA = "chroma/nf2_b1.0_k0.1_4x4"


# ------------------------------------------------------------------------------------------------
# helpers: exactly known configurations and reflections
# ------------------------------------------------------------------------------------------------
def _winding_angles(l0: int, l1: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Link angles ``phi_0[a, b], phi_1[a, b]`` (a: coordinate along 0, b along 1) of a U(1)
    field on the ``l0 x l1`` torus whose every plaquette angle is ``2 pi n / (l0 l1)`` mod 2 pi:
    ``phi_1 = 2 pi n a / V2`` and a transition function ``phi_0(l0 - 1, b) = -2 pi n b / l1``."""
    v2 = l0 * l1
    a = np.arange(l0)[:, None] * np.ones((1, l1))
    b = np.ones((l0, 1)) * np.arange(l1)[None, :]
    phi1 = 2 * math.pi * n * a / v2
    phi0 = np.zeros((l0, l1))
    phi0[l0 - 1, :] = -2 * math.pi * n * b[l0 - 1, :] / l1
    return phi0, phi1


def _u1_winding_2d(lx: int, lt: int, n: int) -> torch.Tensor:
    """2D U(1) field ``U[1, 2, t, x, 1, 1]`` with winding ``n`` (plaquette angle 2 pi n / V)."""
    phi0, phi1 = _winding_angles(lx, lt, n)  # indexed [x, t]
    ang = torch.tensor(np.stack([phi0.T, phi1.T]), dtype=torch.float64)  # [mu, t, x]
    return torch.polar(torch.ones_like(ang), ang).to(C128)[None, ..., None, None]


def _flux_su3(nrow: tuple[int, int, int, int], n01: int, n23: int) -> torch.Tensor:
    """Constant abelian field in SU(3): ``diag(e^{i phi}, e^{-i phi}, 1)`` with ``n01`` flux
    quanta in the 01 plane and ``n23`` in the 23 plane.  Its topological charge is
    ``2 n01 n23`` and its clover charge exactly ``2 n01 n23 sinc-factors`` (see
    bridge/observables/field_strength.py)."""
    lx, ly, lz, lt = nrow
    lat = Lattice(nrow)
    p0, p1 = _winding_angles(lx, ly, n01)  # [x, y]
    p2, p3 = _winding_angles(lz, lt, n23)  # [z, t]
    phi = torch.zeros(4, lt, lz, ly, lx, dtype=torch.float64)
    phi[0] = torch.tensor(p0.T)[None, None]  # [y, x] broadcast over t, z
    phi[1] = torch.tensor(p1.T)[None, None]
    phi[2] = torch.tensor(p2.T)[:, :, None, None]  # [t, z] broadcast over y, x
    phi[3] = torch.tensor(p3.T)[:, :, None, None]
    u = torch.zeros(1, 4, *lat.shape, 3, 3, dtype=C128)
    u[..., 0, 0] = torch.polar(torch.ones_like(phi), phi)
    u[..., 1, 1] = torch.polar(torch.ones_like(phi), -phi)
    u[..., 2, 2] = 1
    return u


def _flux_charge(nrow, n01, n23) -> float:
    th01 = 2 * math.pi * n01 / (nrow[0] * nrow[1])
    th23 = 2 * math.pi * n23 / (nrow[2] * nrow[3])
    return 2 * n01 * n23 * math.sin(th01) * math.sin(th23) / (th01 * th23)


def _reflect(u: torch.Tensor, mu: int) -> torch.Tensor:
    """Reflection ``x_mu -> -x_mu`` (mod L): ``U'_nu(x) = U_nu(Rx)`` for ``nu != mu`` and
    ``U'_mu(x) = U_mu(Rx - mu)^dag``."""
    lat = Lattice.of(u)
    ax = 1 + lat.axis(mu)  # axis in U[:, nu] (batch first)
    out = []
    for nu in range(lat.nd):
        f = u[:, nu]
        if nu == mu:
            out.append(torch.flip(f, [ax]).conj().transpose(-1, -2))
        else:
            out.append(torch.roll(torch.flip(f, [ax]), 1, ax))
    return torch.stack(out, dim=1)


def _smooth(lat: Lattice, batch: int, gen: torch.Generator, eps: float, nc: int = 3):
    x = random_algebra(nc, (batch, lat.nd, *lat.shape), generator=gen)
    return expm_algebra(eps * x)


def _chroma_entries(data_dir):
    folder = data_dir / CHROMA
    return folder, json.loads((folder / "measured_by_chroma.json").read_text())


def _read(folder, entries):
    from bridge.io.ildg import read_ildg

    return torch.cat([read_ildg(folder / e["file"])[0] for e in entries])


# ------------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------------
def test_registry_names_and_lookup():
    assert set(OBSERVABLES) == {"plaquette", "polyakov", "topological_charge",
                                "energy_density", "pion"}
    for name, fn in OBSERVABLES.items():
        assert get_observable(name) is fn
    with pytest.raises(ValueError, match=r"unknown name 'wilson_loop'.*energy_density.*pion"):
        get_observable("wilson_loop")


def test_registry_shapes(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = _smooth(lat, 2, cpu_generator, 0.5)
    assert get_observable("plaquette")(u).shape == (2,)
    poly = get_observable("polyakov")(u)
    assert poly.shape == (2,) and poly.is_complex()
    assert get_observable("topological_charge")(u, flow_time=0.1, eps=0.05).shape == (2,)
    assert get_observable("energy_density")(u).shape == (2,)
    c = get_observable("pion")(u, kappa=0.1)
    assert c.shape == (2, 4) and c.dtype == torch.float64
    # seed normalisations
    assert torch.allclose(plaquette_obs(u, normalisation="seed"), 6 * plaquette_obs(u))
    assert torch.allclose(polyakov(u, normalisation="seed"), 3 * polyakov(u))
    with pytest.raises(ValueError, match="normalisation: expected 'chroma' or 'seed'"):
        plaquette_obs(u, normalisation="milc")


# ------------------------------------------------------------------------------------------------
# clover field strength and energy density
# ------------------------------------------------------------------------------------------------
def test_clover_matches_fermion_mesfield_and_properties(cpu_generator):
    lat = Lattice((4, 2, 2, 4))
    u = random_gauge(lat, "SU3", 2, generator=cpu_generator)
    f = clover_field_strength(u)
    assert clover_planes(4) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert torch.allclose(f, -f.conj().transpose(-1, -2), atol=0)
    ft = clover_field_strength(u, traceless=True)
    assert float(trace(ft).abs().max()) < 1e-15
    assert float(trace(f).abs().max()) > 1e-3  # Chroma's mesField is not traceless
    assert torch.allclose(ft, f - trace(f)[..., None, None] / 3 * torch.eye(3, dtype=C128))
    assert_gauge_covariant(clover_field_strength, u, generator=cpu_generator, atol=1e-13)
    # 2D and 3D work too (one and three planes)
    u2 = random_gauge(Lattice((4, 4)), "U1", 1, generator=cpu_generator)
    assert clover_field_strength(u2).shape == (1, 1, 4, 4, 1, 1)
    u3 = random_gauge(Lattice((2, 2, 4)), "SU2", 1, generator=cpu_generator)
    assert clover_field_strength(u3).shape == (1, 3, 4, 2, 2, 2, 2)


def test_unit_field_and_definitions(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = unit_gauge(lat, "SU3", 2)
    for d in ("clover", "plaquette"):
        assert float(energy_density(u, definition=d).abs().max()) == 0
    assert float(clover_charge(u).abs().max()) == 0
    with pytest.raises(ValueError, match="definition: expected one of"):
        energy_density(u, definition="wilson")
    with pytest.raises(ValueError, match="definition: expected one of"):
        topological_charge(u, definition="naive")


def test_constant_flux_exact_values():
    """Constant abelian field: plaquette angles th01 = 2 pi n01/(Lx Ly), th23 = 2 pi n23/(Lz Lt);
    ``F_01 = i sin(th01) diag(1, -1, 0)``, so ``E = 2 sin^2 th01 + 2 sin^2 th23`` and
    ``Q = 2 n01 n23 sin th01 sin th23 / (th01 th23)`` exactly; sign positive for positive fluxes
    (eps_0123 = +1 with 0..3 = x, y, z, t)."""
    nrow = (4, 4, 6, 4)
    for n01, n23 in ((1, 1), (1, -1), (2, 1)):
        u = _flux_su3(nrow, n01, n23)
        th01 = 2 * math.pi * n01 / 16
        th23 = 2 * math.pi * n23 / 24
        f = clover_field_strength(u)
        assert torch.allclose(f[0, 0, ..., 0, 0], torch.full((), 1j * math.sin(th01), dtype=C128)
                              .expand(f.shape[2:-2]), atol=1e-14)
        e = float(energy_density(u))
        assert abs(e - 2 * (math.sin(th01) ** 2 + math.sin(th23) ** 2)) < 1e-13
        # plaquette definition: 2 sum Re Tr(1 - P) = 4 (2 - cos th01 - cos th23); both -> 2 th^2
        ep = float(energy_density(u, definition="plaquette"))
        assert abs(ep - 4 * (2 - math.cos(th01) - math.cos(th23))) < 1e-13
        q = float(clover_charge(u))
        assert abs(q - _flux_charge(nrow, n01, n23)) < 1e-12, (n01, n23, q)
        assert round(q) == 2 * n01 * n23
        # traceless projection changes nothing here (F is traceless already)
        assert abs(float(clover_charge(u, traceless=True)) - q) < 1e-12


def test_charge_sign_flips_under_reflections(cpu_generator, data_dir):
    folder, entries = _chroma_entries(data_dir)
    u = torch.cat([_flux_su3((4, 4, 4, 4), 1, 1), _read(folder, entries[:1])])
    q = clover_charge(u)
    e = energy_density(u)
    assert abs(float(q[1])) > 1e-3  # not vacuous on the rough configuration
    parity = _reflect(_reflect(_reflect(u, 0), 1), 2)
    assert torch.allclose(clover_charge(parity), -q, atol=1e-13)
    assert torch.allclose(energy_density(parity), e, rtol=1e-13)
    for mu in range(4):
        assert torch.allclose(clover_charge(_reflect(u, mu)), -q, atol=1e-13)
    # two reflections = a rotation by pi: charge unchanged
    assert torch.allclose(clover_charge(_reflect(_reflect(u, 1), 3)), q, atol=1e-13)
    # and the plaquette is parity invariant
    assert torch.allclose(mesplq(parity).w_plaq, mesplq(u).w_plaq, rtol=1e-14)


def test_flux_configuration_is_stationary_and_charge_survives_flow(cpu_generator):
    """The self-dual constant-flux field (Q = 2) is a stationary point of the flow; a random
    perturbation moves its clover charge by ~0.2, and the flow brings it back: at t = 2 the charge
    is within 2e-3 of the exact value of the unperturbed field (and 0.03 of the integer)."""
    from bridge.observables import flow_generator

    nrow = (6, 6, 6, 6)
    u = _flux_su3(nrow, 1, 1)
    assert float(flow_generator(u).abs().max()) < 1e-13
    exact = _flux_charge(nrow, 1, 1)
    assert abs(exact - 2) < 0.025
    x = random_algebra(3, tuple(u.shape[:-2]), generator=cpu_generator)
    noisy = mm(expm_algebra(0.15 * x), u)
    q0 = float(clover_charge(noisy))
    assert abs(q0 - exact) > 0.05
    res = wilson_flow(noisy, [1.0, 2.0], eps=0.1)
    dev = (res.charge[0] - exact).abs()
    assert float(dev[1]) < 2e-3 and float(dev[1]) < float(dev[0]), dev
    assert abs(float(res.charge[0, -1]) - 2) < 0.03  # close to the integer


def test_u1_2d_geometric_charge(cpu_generator):
    lx, lt = 8, 6
    for n in (-2, 0, 1, 3):
        u = _u1_winding_2d(lx, lt, n)
        q = geometric_charge_u1(u)
        assert abs(float(q) - n) < 1e-12
        assert torch.allclose(topological_charge(u), q)  # default definition in 2D U(1)
        ang = torch.angle(plaquette_obs_field(u))
        assert torch.allclose(ang, torch.full_like(ang, 2 * math.pi * n / (lx * lt)), atol=1e-12)
        # reflection flips the sign
        assert abs(float(geometric_charge_u1(_reflect(u, 0))) + n) < 1e-12
        assert abs(float(geometric_charge_u1(_reflect(u, 1))) + n) < 1e-12
    # random fields: always an integer
    r = random_gauge(Lattice((lx, lt)), "U1", 16, generator=cpu_generator)
    q = geometric_charge_u1(r)
    assert torch.allclose(q, q.round(), atol=1e-10) and float(q.abs().max()) >= 1
    with pytest.raises(ValueError, match="2D U\\(1\\) field"):
        geometric_charge_u1(random_gauge(Lattice((2, 2, 2, 2)), "SU2", 1, generator=cpu_generator))
    with pytest.raises(ValueError, match="needs Nd = 4"):
        clover_charge(r)


def plaquette_obs_field(u: torch.Tensor) -> torch.Tensor:
    from bridge.gauge import plaquette_field

    return plaquette_field(u, 0, 1)[..., 0, 0]


def test_u1_2d_flow_to_constant_field(cpu_generator):
    """A noisy winding-2 field (link noise < (pi - 2 pi Q / V) / 4 cannot change the winding)
    flows to the minimal-action field of its sector: all plaquette angles -> 2 pi Q / V."""
    lx, lt, n = 8, 8, 2
    u = _u1_winding_2d(lx, lt, n)
    noise = (torch.rand(u.shape[:-2], generator=cpu_generator, dtype=torch.float64) - 0.5)
    u = u * torch.polar(torch.ones_like(noise), noise)[..., None, None]
    assert abs(float(geometric_charge_u1(u)) - n) < 1e-12
    target = 2 * math.pi * n / (lx * lt)
    dev0 = float((torch.angle(plaquette_obs_field(u)) - target).abs().max())
    res = wilson_flow(u, [2.0, 12.0], eps=0.1)
    assert torch.allclose(res.charge, torch.full_like(res.charge, float(n)), atol=1e-12)
    dev = float((torch.angle(plaquette_obs_field(res.U)) - target).abs().max())
    assert dev0 > 0.5 and dev < 1e-3 * dev0, (dev0, dev)


# ------------------------------------------------------------------------------------------------
# gauge invariance of every observable
# ------------------------------------------------------------------------------------------------
def test_gauge_invariance_of_every_observable(cpu_generator):
    lat = Lattice((2, 2, 2, 4))
    u = random_gauge(lat, "SU3", 2, generator=cpu_generator)
    om = random_gauge_transformation(lat, "SU3", 2, generator=cpu_generator)
    checks = {
        "plaquette": lambda v: plaquette_obs(v),
        "plaquette_seed": lambda v: plaquette_obs(v, normalisation="seed"),
        "polyakov": lambda v: torch.stack([polyakov(v, mu=m) for m in range(4)], 1),
        "energy_clover": energy_density,
        "energy_plaquette": lambda v: energy_density(v, definition="plaquette"),
        "energy_split": lambda v: torch.stack(energy_density_split(v), 1),
        "charge_density": topological_charge_density,
        "charge_traceless": lambda v: clover_charge(v, traceless=True),
        "flowed_charge": lambda v: get_observable("topological_charge")(v, flow_time=0.2,
                                                                        eps=0.05),
        "flowed_energy": lambda v: get_observable("energy_density")(v, flow_time=0.2, eps=0.05),
    }
    for fn in checks.values():
        assert_gauge_invariant(fn, u, om, atol=1e-12, rtol=1e-11)
    # the pion correlator (12 solves to 1e-14; the solution error sets the tolerance)
    pi = lambda v: pion_correlator(v, 0.11, solver=CG(tol=1e-14))  # noqa: E731
    assert_gauge_invariant(pi, u, om, atol=0, rtol=1e-10)
    # 2D U(1) geometric charge
    u2 = random_gauge(Lattice((6, 4)), "U1", 3, generator=cpu_generator)
    assert_gauge_invariant(geometric_charge_u1, u2, generator=cpu_generator, atol=1e-12)
    # the checks are not vacuous: a non-invariant function fails
    with pytest.raises(AssertionError, match="gauge invariance"):
        assert_gauge_invariant(lambda v: trace(v[:, 0]).real.flatten(1).sum(1), u, om)


# ------------------------------------------------------------------------------------------------
# pion correlator
# ------------------------------------------------------------------------------------------------
def _dirac_basis() -> list[np.ndarray]:
    """Euclidean gamma matrices in the Dirac basis (independent of bridge.fermions.gamma)."""
    s = [np.array([[0, 1], [1, 0]]), np.array([[0, -1j], [1j, 0]]), np.array([[1, 0], [0, -1]])]
    z = np.zeros((2, 2))
    g = [np.block([[z, -1j * sk], [1j * sk, z]]) for sk in s]
    g.append(np.diag([1.0, 1.0, -1.0, -1.0]).astype(complex))
    return g


def _free_pion(nrow: tuple[int, int, int, int], kappa: float, nc: int) -> np.ndarray:
    """``C(t) = sum_x Tr |S(x, t)|^2`` of the free Wilson propagator from the momentum sum
    ``S(x) = (1/V) sum_p e^{i p x} D(p)^{-1}``, ``D(p) = 1 - 2 kappa sum cos p + 2 i kappa
    sum gamma sin p``, spatial momenta ``2 pi n / L``, temporal ``(2 n + 1) pi / Lt``."""
    g = _dirac_basis()
    lx, ly, lz, lt = nrow
    v = lx * ly * lz * lt
    moms = [2 * np.pi * np.arange(n) / n for n in (lx, ly, lz)]
    moms.append((2 * np.arange(lt) + 1) * np.pi / lt)
    grids = np.meshgrid(*moms, indexing="ij")
    p = np.stack([gr.ravel() for gr in grids], 1)  # [V, 4]
    dp = np.eye(4) * (1 - 2 * kappa * np.cos(p).sum(1))[:, None, None]
    for mu in range(4):
        dp = dp + 2j * kappa * np.sin(p[:, mu])[:, None, None] * g[mu]
    sp = np.linalg.inv(dp)  # [V, 4, 4]
    coords = np.stack([c.ravel() for c in np.meshgrid(*[np.arange(n) for n in nrow],
                                                       indexing="ij")], 1)  # [V, 4]
    phase = np.exp(1j * coords @ p.T) / v  # [x, p]
    sx = np.einsum("xp,pab->xab", phase, sp)
    per_site = nc * (np.abs(sx) ** 2).sum((1, 2))
    return np.array([per_site[coords[:, 3] == t].sum() for t in range(lt)])


@pytest.mark.parametrize("nc, group", [(3, "SU3"), (1, "U1")])
def test_free_pion_matches_momentum_sum(nc, group):
    nrow = (4, 2, 2, 8)
    kappa = 0.12
    u = unit_gauge(Lattice(nrow), group, 1)
    c = pion_correlator(u, kappa)
    expected = torch.tensor(_free_pion(nrow, kappa, nc))
    assert torch.allclose(c[0], expected, rtol=1e-10), (c, expected)
    # symmetric and positive for the free field
    assert torch.allclose(c[0, 1:], c[0, 1:].flip(0), rtol=1e-10) and bool((c > 0).all())
    # a periodic-in-time momentum sum gives something else (the boundary matters)
    cp = pion_correlator(u, kappa, boundary=(1, 1, 1, 1))
    assert not torch.allclose(c, cp, rtol=1e-3)


def test_pion_time_reflection_translation_and_normalisation(cpu_generator):
    """On a random configuration: C(t) > 0; exactly ``C[U^T](t) = C[U](Lt - t)`` for the
    time-reflected configuration (antiperiodic boundary and spin rotation drop out of Tr|S|^2);
    moving the source and translating the field gives the same correlator; Chroma's
    normalisation is (2 kappa)^2 times the kappa one."""
    lat = Lattice((2, 2, 2, 6))
    kappa = 0.115
    u = _smooth(lat, 2, cpu_generator, 0.7)
    solver = CG(tol=1e-13)
    c = pion_correlator(u, kappa, solver=solver)
    assert bool((c > 0).all())
    cr = pion_correlator(_reflect(u, 3), kappa, solver=solver)
    assert torch.allclose(cr[:, 1:], c[:, 1:].flip(1), rtol=1e-10)
    assert torch.allclose(cr[:, 0], c[:, 0], rtol=1e-10)
    # not symmetric configuration by configuration (the reflection test is not vacuous)
    assert not torch.allclose(c[:, 1:], c[:, 1:].flip(1), rtol=1e-3)
    # translation by (1, 0, 1, 4): U'(x) = U(x - a), source at a
    shifted = torch.roll(u, shifts=(4, 1, 1), dims=(2, 3, 5))
    cs = pion_correlator(shifted, kappa, source=(1, 0, 1, 4), solver=solver)
    assert torch.allclose(cs, c, rtol=1e-10)
    cc = pion_correlator(u, kappa, solver=solver, normalisation="chroma")
    assert torch.allclose(cc, (2 * kappa) ** 2 * c, rtol=1e-12)
    s, st = point_propagator(u, kappa, solver=solver)
    assert s.shape == (2, 6, 2, 2, 2, 4, 3, 4, 3) and st.converged
    # the propagator solves D S = delta: apply D to the columns
    op = WilsonDirac(u, kappa)
    cols = s.permute(0, 7, 8, 1, 2, 3, 4, 5, 6).reshape(op.field_shape(12))
    assert torch.allclose(op.apply(cols), point_source(op), atol=1e-10)
    assert float(point_source(op).sum()) == 2 * 12


def test_pion_input_validation(cpu_generator):
    u = unit_gauge(Lattice((2, 2, 2, 4)), "SU3", 1)
    with pytest.raises(ValueError, match="source: expected 4 coordinates"):
        pion_correlator(u, 0.1, source=(0, 0, 4, 0))
    with pytest.raises(ValueError, match="source: expected integer coordinates"):
        pion_correlator(u, 0.1, source=("a", 0, 0, 0))
    with pytest.raises(ValueError, match="normalisation: expected one of"):
        pion_correlator(u, 0.1, normalisation="milc")
    with pytest.raises(PhysicsError, match="kappa"):
        pion_correlator(u, -0.1)


# ------------------------------------------------------------------------------------------------
# Chroma reference: plaquette, Polyakov loop, pion, QACTDEN on the unflowed field
# ------------------------------------------------------------------------------------------------
def test_chroma_plaquette_and_polyakov(data_dir):
    folder, entries = _chroma_entries(data_dir)
    u = _read(folder, entries)
    w = torch.tensor([e["w_plaq"] for e in entries], dtype=torch.float64)
    assert torch.allclose(plaquette_obs(u), w, rtol=1e-13, atol=0)
    p = torch.tensor([complex(*e["poly_t"]) for e in entries], dtype=C128)
    assert torch.allclose(polyakov(u), p, rtol=0, atol=1e-14)


def _check_chroma_pion(folder, entries) -> None:
    u = _read(folder, entries)
    c, st = pion_correlator(u, 0.1, normalisation="chroma", return_stats=True)
    ref = torch.tensor([e["C_pi"] for e in entries], dtype=torch.float64)
    assert torch.allclose(c, ref, rtol=1e-10, atol=0), (c, ref)
    assert st.converged


def test_chroma_pion_all_configurations(data_dir):
    """Chroma's ``mesprop`` (gamma_value 15) on all five configurations, 12 solves each."""
    folder, entries = _chroma_entries(data_dir)
    _check_chroma_pion(folder, entries)


def _qactden(xml_path, which: int, what: str = "naiveTopCharge") -> torch.Tensor:
    """Chroma's QACTDEN densities site by site (``which``: 0 unflowed, 1 flowed; ``what``:
    ``naiveTopCharge`` or ``actionDensity``) in the project layout ``[t, z, y, x]`` (Chroma prints
    sites lexicographically, x fastest)."""
    from lxml import etree

    tree = etree.parse(str(xml_path))
    node = list(tree.iter("QActDen"))[which]
    vals = [float(e.text) for e in node.find(f"{what}/OLattice")]
    return torch.tensor(vals, dtype=torch.float64).reshape(4, 4, 4, 4)


def test_chroma_qactden_density_unflowed(data_dir):
    """Chroma's QACTDEN on the rough (unflowed) cfg 1500, site by site: the charge density is our
    clover density with Chroma's non-traceless ``mesField`` (the traceless variant differs at the
    30% level on this field); the mean ``actionDensity`` is ``E_plaq / (8 pi^2)`` (qactden.cc:
    ``sum_{planes, 4 leaves} Re Tr(1 - L) / (16 pi^2)``, each plaquette is a leaf at 4 sites)."""
    folder, entries = _chroma_entries(data_dir)
    entry = next(e for e in entries if e["file"].endswith("_1500.lime"))
    u = _read(folder, [entry])
    xml = folder / "chroma_measure_cfg_1500.out.xml"
    ref = _qactden(xml, 0)
    q = topological_charge_density(u)[0]
    assert torch.allclose(q, ref, rtol=1e-11, atol=1e-16)
    qt = topological_charge_density(u, traceless=True)[0]
    assert not torch.allclose(qt, ref, rtol=1e-2, atol=1e-4)
    act = _qactden(xml, 0, "actionDensity")
    e_plaq = energy_density(u, definition="plaquette")
    assert abs(float(act.mean()) - float(e_plaq) / (8 * math.pi**2)) < 1e-13


def test_pion_is_the_gamma5_meson_and_the_point_source_is_a_unit_propagator():
    """observables.hadrons next to the pion: the gamma_5 channel of Chroma's mesons is the pion
    correlator (Chroma normalisation), counted from the source time; the point source in the
    propagator layout has norm 12 on its time slice only."""
    from bridge.observables import (
        meson_correlators,
        point_source_propagator,
        timeslice_norm2,
    )

    lat = Lattice((2, 2, 2, 4))
    u = random_gauge(lat, "SU3", 1, generator=torch.Generator().manual_seed(5))
    src = (1, 0, 1, 2)
    s, _ = point_propagator(u, 0.1, source=src, normalisation="chroma", solver=CG(tol=1e-13))
    pion = pion_correlator(u, 0.1, source=src, normalisation="chroma", solver=CG(tol=1e-13))
    mes = meson_correlators(s, s, src[3])
    torch.testing.assert_close(mes[:, 15].real, pion, rtol=1e-10, atol=0)
    assert float(mes[:, 15].imag.abs().max()) < 1e-12
    p = point_source_propagator(lat.nrow, src)
    assert timeslice_norm2(p)[0].tolist() == [0.0, 0.0, 12.0, 0.0]
    assert float(p[0, 2, 1, 0, 1].reshape(12, 12).diagonal().sum().real) == 12.0
