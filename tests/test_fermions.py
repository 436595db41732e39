"""Wilson(-clover) fermions: gamma matrices, the Dirac operator (free field, gamma_5-hermiticity,
gauge covariance, boundary phases, Chroma's meson correlators), even-odd preconditioning, clover
normalisation against Chroma's source, pseudofermion actions and forces, exact determinants."""

from __future__ import annotations

import json
import math

import pytest
import torch

from bridge.errors import ConfigError, ConvergenceError, PhysicsError
from bridge.fermions import (
    WilsonDirac,
    apply_gamma5,
    chroma_gamma,
    clover,
    clover_field_strength,
    clover_matrix,
    evenodd,
    exact_logdet,
    forces,
    gamma,
    gamma5,
    gamma_matrices,
    hopping,
    sigma,
    sigma_matrices,
)
from bridge.fermions.gamma import spin_projectors
from bridge.fermions.pseudofermion import (
    TwoFlavorEOPrecWilsonMonomial,
    TwoFlavorWilsonMonomial,
    gaussian_noise,
    monomial_from_chroma,
)
from bridge.gauge import gauge_transform, random_gauge, random_gauge_transformation, unit_gauge
from bridge.groups import expm_algebra, mm, random_algebra, trace
from bridge.lattice import Lattice
from bridge.solvers import CG, BiCGStab
from bridge.testing import (
    assert_force_matches_action,
    assert_gauge_covariant,
    directional_derivative,
)
from bridge.testing.reference import hop_gather_reference, schur5_reference

C128 = torch.complex128


def _inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a.conj() * b).sum()


def _rand_field(op: WilsonDirac, gen: torch.Generator, nrhs: int = 1, eo: bool = False):
    shape = op.eo_shape(nrhs) if eo else op.field_shape(nrhs)
    return torch.randn(shape, dtype=op.dtype, generator=gen, device=op.device)


def _smooth_su3(lat: Lattice, batch: int, gen: torch.Generator, eps: float = 0.4) -> torch.Tensor:
    """Links exp(eps X) with Gaussian X: a 'thermalised-like' field with non-trivial F."""
    x = random_algebra(3, (batch, 4, *lat.shape), generator=gen)
    return expm_algebra(eps * x)


@pytest.fixture
def u_small(cpu_generator) -> torch.Tensor:
    return random_gauge(Lattice((2, 2, 2, 4)), "SU3", 2, generator=cpu_generator)


@pytest.fixture
def u_mid(cpu_generator) -> torch.Tensor:
    return _smooth_su3(Lattice((4, 2, 2, 4)), 2, cpu_generator)


# ------------------------------------------------------------------------------------------------
# gamma matrices
# ------------------------------------------------------------------------------------------------
def test_clifford_algebra_and_hermiticity():
    g = gamma_matrices()
    eye = torch.eye(4, dtype=C128)
    for mu in range(4):
        assert torch.equal(g[mu], g[mu].conj().T)
        for nu in range(4):
            anti = g[mu] @ g[nu] + g[nu] @ g[mu]
            assert torch.allclose(anti, 2 * eye * (mu == nu), atol=0)
    g5 = gamma5()
    assert torch.equal(g5, torch.diag(torch.tensor([1, 1, -1, -1], dtype=C128)))
    for mu in range(4):
        assert torch.allclose(g5 @ g[mu] + g[mu] @ g5, torch.zeros(4, 4, dtype=C128), atol=0)


def test_degrand_rossi_entries():
    i = 1j
    assert torch.equal(gamma(0), torch.tensor(
        [[0, 0, 0, i], [0, 0, i, 0], [0, -i, 0, 0], [-i, 0, 0, 0]], dtype=C128))
    assert torch.equal(gamma(1), torch.tensor(
        [[0, 0, 0, -1], [0, 0, 1, 0], [0, 1, 0, 0], [-1, 0, 0, 0]], dtype=C128))
    assert torch.equal(gamma(2), torch.tensor(
        [[0, 0, i, 0], [0, 0, 0, -i], [-i, 0, 0, 0], [0, i, 0, 0]], dtype=C128))
    assert torch.equal(gamma(3), torch.tensor(
        [[0, 0, 1, 0], [0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0]], dtype=C128))


def test_chroma_gamma_numbering():
    g = gamma_matrices()
    assert torch.equal(chroma_gamma(0), torch.eye(4, dtype=C128))
    for k in range(4):
        assert torch.equal(chroma_gamma(1 << k), g[k])
    assert torch.equal(chroma_gamma(15), gamma5())
    # Chroma's clover code lists Gamma(3) = gamma_1 gamma_2 = diag(-i, i, -i, i)
    assert torch.equal(chroma_gamma(3), torch.diag(torch.tensor([-1j, 1j, -1j, 1j], dtype=C128)))
    assert torch.equal(chroma_gamma(13), g[0] @ g[2] @ g[3])
    with pytest.raises(ValueError, match="Gamma index 0..15"):
        chroma_gamma(16)
    with pytest.raises(ValueError, match="direction 0..3"):
        gamma(4)


def test_sigma_and_spin_projectors():
    g5 = gamma5()
    s = sigma_matrices()
    assert s.shape == (6, 4, 4)
    for k in range(6):
        assert torch.allclose(s[k], s[k].conj().T)
        assert torch.allclose(s[k] @ g5, g5 @ s[k])  # chirality blocks
    assert torch.allclose(sigma(0, 1), 1j * gamma(0) @ gamma(1))
    assert torch.allclose(sigma(1, 0), -sigma(0, 1))
    b, lower = spin_projectors()
    eye = torch.eye(4, dtype=C128)
    for si, sgn in ((0, 1), (1, -1)):
        for mu in range(4):
            assert torch.allclose(b[si, mu].conj().T @ b[si, mu], eye - sgn * gamma(mu))
            assert torch.allclose(b[si, mu][:, :2], torch.eye(2, dtype=C128))
            assert torch.allclose(lower[si, mu], b[si, mu][:, 2:].conj().T)


def test_gamma_dtype_device():
    g = gamma_matrices(torch.float32)
    assert g.dtype == torch.complex64 and g.device.type == "cpu"


# ------------------------------------------------------------------------------------------------
# the Wilson operator
# ------------------------------------------------------------------------------------------------
def _naive_hopping(u: torch.Tensor, psi: torch.Tensor, boundary) -> torch.Tensor:
    """Textbook H psi with full 4x4 (1 -/+ gamma) matrices and Lattice.shift's boundary phases on
    the fermion field (independent of the kernel's projections and link-folded phases)."""
    lat = Lattice.of(u)
    g = gamma_matrices(u.dtype)
    eye = torch.eye(4, dtype=u.dtype)
    out = torch.zeros_like(psi)
    for mu in range(4):
        fwd = lat.shift(psi, mu, 1, phase=boundary[mu])
        out = out + torch.einsum("st,b...ac,b...tc->b...sa", eye - g[mu], u[:, mu], fwd)
        ud = u[:, mu].conj().transpose(-1, -2)
        bwd = lat.shift(torch.einsum("b...ac,b...tc->b...ta", ud, psi), mu, -1,
                        phase=boundary[mu])
        out = out + torch.einsum("st,b...tc->b...sc", eye + g[mu], bwd)
    return out


@pytest.mark.parametrize("fused", [False, True], ids=["gather-kernel", "fused-kernel"])
@pytest.mark.parametrize("boundary", [(1, 1, 1, -1), (1j, -1, 1, 1)])
def test_hopping_matches_naive_formula(cpu_generator, monkeypatch, fused, boundary):
    monkeypatch.setattr(hopping, "_FUSED_MIN_SITES", 0 if fused else 10**15)
    u = _smooth_su3(Lattice((4, 2, 6, 4)), 2, cpu_generator, eps=1.0)
    op = WilsonDirac(u, 0.1, boundary=boundary)
    psi = _rand_field(op, cpu_generator)
    ref = _naive_hopping(u, psi, boundary)
    assert torch.allclose(op.hopping(psi), ref, atol=1e-13)
    e, o = op.split(psi)
    re, ro = op.split(ref)
    assert torch.allclose(op.hopping_eo(o), re, atol=1e-13)
    assert torch.allclose(op.hopping_oe(e), ro, atol=1e-13)
    # several right-hand sides and float32
    psi3 = _rand_field(op, cpu_generator, 3)
    ref3 = torch.cat([_naive_hopping(u[b : b + 1], psi3[3 * b : 3 * b + 3], boundary)
                      for b in range(2)])
    assert torch.allclose(op.hopping(psi3), ref3, atol=1e-13)
    op32 = op.to(torch.complex64)
    assert torch.allclose(op32.hopping(psi.to(torch.complex64)).to(C128), ref, atol=1e-4)


@pytest.mark.parametrize("c_sw", [0.0, 1.7])
@pytest.mark.parametrize("normalisation", ["kappa", "chroma"])
def test_gamma5_hermiticity(u_mid, device, c_sw, normalisation):
    op = WilsonDirac(u_mid.to(device), 0.124, c_sw=c_sw, normalisation=normalisation)
    assert op.device == device
    gen = torch.Generator(device=device).manual_seed(11)
    psi, chi = _rand_field(op, gen, 2), _rand_field(op, gen, 2)
    assert op.apply(psi).device == device
    lhs = _inner(chi, op.apply(psi))
    rhs = _inner(apply_gamma5(op.apply(apply_gamma5(chi))), psi)
    assert abs(lhs - rhs) <= 1e-12 * abs(lhs)
    # D^dag is the adjoint
    assert abs(_inner(op.apply_dagger(chi), psi) - lhs) <= 1e-12 * abs(lhs)
    # and D is *not* Hermitian (the test would be vacuous otherwise)
    assert abs(_inner(op.apply(chi), psi) - lhs) > 1e-3 * abs(lhs)


def test_normal_operator_hermitian_positive(u_mid, cpu_generator):
    op = WilsonDirac(u_mid, 0.124, c_sw=1.2)
    a, b = _rand_field(op, cpu_generator), _rand_field(op, cpu_generator)
    ab = _inner(a, op.apply_normal(b))
    ba = _inner(b, op.apply_normal(a))
    assert abs(ab - ba.conj()) <= 1e-12 * abs(ab)
    for _ in range(3):
        v = _rand_field(op, cpu_generator)
        q = _inner(v, op.apply_normal(v))
        assert abs(q.imag) <= 1e-12 * abs(q) and q.real > 0
        assert torch.allclose(q.real, (op.apply(v).abs() ** 2).sum())


def _plane_wave(lat: Lattice, p: list[float], spinor: torch.Tensor) -> torch.Tensor:
    coords = lat.coordinates().to(torch.float64)  # [mu, t, z, y, x]
    phase = sum(p[mu] * coords[mu] for mu in range(4))
    wave = torch.polar(torch.ones_like(phase), phase)
    return wave[..., None, None] * spinor  # [t, z, y, x, 4, Nc]


def _free_symbol(p: list[float], kappa: float) -> torch.Tensor:
    """``D(p) = 1 - 2 kappa sum cos p_mu + 2 i kappa sum gamma_mu sin p_mu``: ``H`` on a plane
    wave gives ``sum [(1 - g) e^{ip} + (1 + g) e^{-ip}] = sum [2 cos p - 2 i g sin p]``."""
    g = gamma_matrices()
    out = (1 - 2 * kappa * sum(math.cos(q) for q in p)) * torch.eye(4, dtype=C128)
    for mu in range(4):
        out = out + 2j * kappa * math.sin(p[mu]) * g[mu]
    return out


@pytest.mark.parametrize(
    "boundary, twist",
    [((1, 1, 1, -1), (0, 0, 0, math.pi)),
     ((1, 1j, 1, -1), (0, math.pi / 2, 0, math.pi)),
     ((1, 1, 1, 1), (0, 0, 0, 0))],
)
def test_free_field_momentum_space(cpu_generator, boundary, twist):
    """Unit gauge field: plane waves with the momenta allowed by the boundary phases,
    ``p_mu = (2 pi n_mu + theta_mu) / L_mu`` (antiperiodic time: ``(2n + 1) pi / L_t``), are
    eigenfunctions with the momentum-space Wilson operator as symbol."""
    lat = Lattice((4, 2, 2, 6))
    kappa = 0.13
    u = unit_gauge(lat, "SU3")
    op = WilsonDirac(u, kappa, boundary=boundary)
    for n in ([0, 0, 0, 0], [1, 1, 0, 2], [3, 0, 1, 5]):
        p = [(2 * math.pi * n[mu] + twist[mu]) / lat.nrow[mu] for mu in range(4)]
        spinor = torch.randn(4, 3, dtype=C128, generator=cpu_generator)
        psi = _plane_wave(lat, p, spinor).unsqueeze(0)
        expected = _plane_wave(lat, p, _free_symbol(p, kappa) @ spinor).unsqueeze(0)
        assert torch.allclose(op.apply(psi), expected, atol=1e-13)
    if boundary == (1, 1, 1, -1):
        # a periodic momentum violates the antiperiodic boundary: not an eigenfunction
        p = [0.0, 0.0, 0.0, 2 * math.pi / lat.nrow[3]]
        spinor = torch.randn(4, 3, dtype=C128, generator=cpu_generator)
        psi = _plane_wave(lat, p, spinor).unsqueeze(0)
        expected = _plane_wave(lat, p, _free_symbol(p, kappa) @ spinor).unsqueeze(0)
        assert not torch.allclose(op.apply(psi), expected, atol=1e-3)


def test_free_field_spectrum_dense():
    """All 4 Nc V eigenvalues of the free operator are those of the symbol over the allowed
    momenta (antiperiodic in time)."""
    lat = Lattice((2, 2, 2, 4))
    kappa = 0.11
    op = WilsonDirac(unit_gauge(lat, "U1"), kappa)
    ev = torch.linalg.eigvals(op.dense("D")[0])
    expected = []
    for nx in range(2):
        for ny in range(2):
            for nz in range(2):
                for nt in range(4):
                    p = [math.pi * nx, math.pi * ny, math.pi * nz, (2 * nt + 1) * math.pi / 4]
                    expected.append(torch.linalg.eigvals(_free_symbol(p, kappa)))
    expected = torch.cat(expected)
    assert ev.shape == expected.shape
    # greedy matching of the two multisets
    remaining = ev.clone()
    for z in expected:
        k = int(torch.argmin((remaining - z).abs()))
        assert abs(complex(remaining[k] - z)) < 1e-10
        remaining = torch.cat([remaining[:k], remaining[k + 1 :]])


@pytest.mark.parametrize("c_sw", [0.0, 1.3])
def test_gauge_covariance(u_mid, cpu_generator, c_sw):
    lat = Lattice.of(u_mid)
    om = random_gauge_transformation(lat, "SU3", 2, generator=cpu_generator)
    op = WilsonDirac(u_mid, 0.12, c_sw=c_sw)
    op_t = WilsonDirac(gauge_transform(u_mid, om), 0.12, c_sw=c_sw)
    psi = _rand_field(op, cpu_generator, 3)
    om_r = om.repeat_interleave(3, dim=0)  # config-major right-hand sides
    rot = lambda f: torch.einsum("b...ac,b...sc->b...sa", om_r, f)  # noqa: E731
    assert torch.allclose(op_t.apply(rot(psi)), rot(op.apply(psi)), atol=1e-12)
    assert torch.allclose(op_t.schur(op_t.split(rot(psi))[1]),
                          op.split(rot(op.merge(torch.zeros_like(op.split(psi)[0]),
                                                op.schur(op.split(psi)[1]))))[1],
                          atol=1e-12)


def test_multiple_rhs_fold_into_batch(u_mid, cpu_generator):
    op = WilsonDirac(u_mid, 0.12, c_sw=1.0)
    psi = _rand_field(op, cpu_generator, 3)  # [2 configs * 3 rhs, ...]
    out = op.apply(psi)
    for b in range(2):
        single = WilsonDirac(u_mid[b : b + 1], 0.12, c_sw=1.0)
        for r in range(3):
            k = 3 * b + r
            assert torch.allclose(out[k : k + 1], single.apply(psi[k : k + 1]), atol=1e-14)


def test_chroma_normalisation(u_mid, cpu_generator):
    kappa = 0.115
    d = WilsonDirac(u_mid, kappa, c_sw=0.9)
    m = WilsonDirac(u_mid, kappa, c_sw=0.9, normalisation="chroma")
    psi = _rand_field(d, cpu_generator)
    assert torch.allclose(m.apply(psi), d.apply(psi) / (2 * kappa), atol=1e-13)
    assert math.isclose(d.mass, 1 / (2 * kappa) - 4)
    # Chroma's propagator M^{-1} is 2 kappa D^{-1}
    xd, _ = d.solve(psi, solver=CG(tol=1e-12))
    xm, _ = m.solve(psi, solver=CG(tol=1e-12))
    assert torch.allclose(xm, 2 * kappa * xd, atol=1e-10)


def test_boundary_phase_only_on_wrapping_links(cpu_generator):
    """Antiperiodic time = the links U_t(x, t = Lt - 1) flipped, periodic operator."""
    lat = Lattice((2, 2, 2, 4))
    u = random_gauge(lat, "SU3", 1, generator=cpu_generator)
    flipped = u.clone()
    flipped[:, 3, -1] *= -1
    a = WilsonDirac(u, 0.12)
    b = WilsonDirac(flipped, 0.12, boundary=(1, 1, 1, 1))
    psi = _rand_field(a, cpu_generator)
    assert torch.allclose(a.apply(psi), b.apply(psi), atol=1e-14)
    assert not torch.allclose(a.apply(psi), WilsonDirac(u, 0.12, boundary=(1, 1, 1, 1))(psi))


def test_float32_operator(u_mid, cpu_generator):
    op = WilsonDirac(u_mid, 0.12, c_sw=1.0)
    op32 = op.to(torch.float32)
    assert op32.dtype == torch.complex64 and op.to(torch.complex128) is op
    psi = _rand_field(op, cpu_generator)
    out32 = op32.apply(psi.to(torch.complex64))
    assert out32.dtype == torch.complex64
    assert torch.allclose(out32.to(C128), op.apply(psi), atol=1e-5)


@pytest.mark.parametrize("group, nc", [("SU2", 2), ("U1", 1)])
def test_other_groups(cpu_generator, group, nc):
    u = random_gauge(Lattice((2, 2, 2, 4)), group, 1, generator=cpu_generator)
    op = WilsonDirac(u, 0.12, c_sw=1.0)
    psi, chi = _rand_field(op, cpu_generator), _rand_field(op, cpu_generator)
    assert psi.shape[-1] == nc
    lhs = _inner(chi, op.apply(psi))
    assert abs(lhs - _inner(op.apply_dagger(chi), psi)) <= 1e-12 * abs(lhs)
    x, st = op.solve(psi, solver=CG(tol=1e-11))
    assert torch.allclose(op.apply(x), psi, atol=1e-9)


def test_input_validation(u_small):
    with pytest.raises(PhysicsError, match="kappa: expected a positive finite"):
        WilsonDirac(u_small, -0.1)
    with pytest.raises(PhysicsError, match="kappa"):
        WilsonDirac(u_small, float("inf"))
    with pytest.raises(ValueError, match="boundary: expected 4 phases"):
        WilsonDirac(u_small, 0.1, boundary=(1, 1, -1))
    with pytest.raises(ValueError, match="modulus 1"):
        WilsonDirac(u_small, 0.1, boundary=(1, 1, 1, 2))
    with pytest.raises(ValueError, match="normalisation: expected one of"):
        WilsonDirac(u_small, 0.1, normalisation="mass")
    with pytest.raises(ValueError, match="Nd = 4"):
        WilsonDirac(unit_gauge(Lattice((4, 4)), "U1"), 0.1)
    op = WilsonDirac(u_small, 0.1)
    with pytest.raises(ValueError, match=r"psi: expected a \[batch\*R"):
        op.apply(torch.zeros(2, 2, 2, 2, 4, 4, 3, dtype=C128))
    with pytest.raises(ValueError, match="multiple of the gauge batch 2"):
        op.apply(torch.zeros(3, 4, 2, 2, 2, 4, 3, dtype=C128))
    with pytest.raises(ValueError, match="dtype torch.complex64 does not match"):
        op.apply(torch.zeros(op.field_shape(), dtype=torch.complex64))
    odd = WilsonDirac(unit_gauge(Lattice((3, 2, 2, 4)), "U1"), 0.1)
    odd.apply(torch.ones(odd.field_shape(), dtype=C128))  # full operator: odd extents fine
    with pytest.raises(ValueError, match="even extents"):
        odd.split(torch.ones(odd.field_shape(), dtype=C128))


# ------------------------------------------------------------------------------------------------
# Chroma reference: meson correlators on a Chroma configuration
# ------------------------------------------------------------------------------------------------
def _chroma_mesons(xml_path) -> dict[int, list[complex]]:
    from lxml import etree

    tree = etree.parse(str(xml_path))
    out = {}
    for e in tree.findall(".//Point_Point_Wilson_Mesons/elem"):
        n = int(e.findtext("gamma_value"))
        out[n] = [complex(float(x.findtext("re")), float(x.findtext("im")))
                  for x in e.findall("momenta/elem/mesprop/elem")]
    return out


def test_chroma_meson_correlators(data_dir):
    """Chroma's ``Point_Point_Wilson_Mesons`` (all 16 Gamma(n), point source at the origin,
    kappa 0.1, antiperiodic time) reproduced from our propagator: checks the kappa and Chroma
    normalisations, the time boundary, the link convention and Chroma's Gamma(n) numbering.
    Chroma (mesons_w.cc): ``C_n(t) = sum_x Tr[(g5 S g5)^dag Gamma(n) S Gamma(n)]``."""
    from bridge.io.ildg import read_ildg

    folder = data_dir / "chroma" / "nf2_b1.0_k0.1_4x4"
    meas = json.loads((folder / "measured_by_chroma.json").read_text())
    entry = next(m for m in meas if m["file"].endswith("_1500.lime"))
    u, _ = read_ildg(folder / entry["file"])
    kappa = 0.1
    op = WilsonDirac(u, kappa)
    src = torch.zeros(op.field_shape(12), dtype=C128)
    for s in range(4):
        for c in range(3):
            src[3 * s + c, 0, 0, 0, 0, s, c] = 1
    x, st = op.solve(src, solver=CG(tol=1e-12))
    assert st.iterations == 20  # Chroma's n_count for these solves (same eo-CG, same RsdCG)
    prop = 2 * kappa * x  # Chroma's M^{-1}
    s12 = prop.reshape(4, 3, 4, 4, 4, 4, 4, 3).permute(2, 3, 4, 5, 6, 7, 0, 1).reshape(
        4, 4, 4, 4, 12, 12)
    cpi = (s12.abs() ** 2).sum(dim=(1, 2, 3, 4, 5))
    assert torch.allclose(cpi, torch.tensor(entry["C_pi"], dtype=torch.float64), rtol=1e-10)
    chroma = _chroma_mesons(folder / "chroma_measure_cfg_1500.out.xml")
    assert sorted(chroma) == list(range(16))
    eye3 = torch.eye(3, dtype=C128)
    g5 = torch.kron(gamma5(), eye3)
    anti = g5 @ s12 @ g5
    for n in range(16):
        gn = torch.kron(chroma_gamma(n), eye3)
        corr = torch.einsum("...ji,jk,...kl,li->...", anti.conj(), gn, s12, gn).sum((1, 2, 3))
        ref = torch.tensor(chroma[n], dtype=C128)
        assert torch.allclose(corr, ref, rtol=1e-10, atol=1e-13), (n, corr, ref)


# ------------------------------------------------------------------------------------------------
# clover term
# ------------------------------------------------------------------------------------------------
def _chroma_makeclov(f: torch.Tensor, c_sw: float, diag_mass: float) -> torch.Tensor:
    """Chroma's ``QDPCloverTermT::makeClov`` (lib/actions/ferm/linop/clover_term_qdp_w.h),
    re-expressed element by element: ``f`` the six ``mesField`` planes (01,02,03,12,13,23) times
    ``clovCoeff / 2``; returns the two Hermitian 6x6 blocks (index ``spin_local * Nc + colour``)."""
    f = f * (c_sw / 2)
    nc = f.shape[-1]
    shp = f.shape[1:-2]
    blocks = torch.zeros(*shp, 2, 2 * nc, 2 * nc, dtype=f.dtype)
    low = torch.zeros_like(blocks)
    for i in range(nc):
        r0 = (f[5][..., i, i] - f[0][..., i, i]).imag
        r1 = (f[5][..., i, i] + f[0][..., i, i]).imag
        blocks[..., 0, i, i] = diag_mass + r0
        blocks[..., 0, i + nc, i + nc] = diag_mass - r0
        blocks[..., 1, i, i] = diag_mass - r1
        blocks[..., 1, i + nc, i + nc] = diag_mass + r1
    for i in range(1, nc):
        for j in range(i):
            low[..., 0, i, j] = 1j * (f[0][..., i, j] - f[5][..., i, j])
            low[..., 0, i + nc, j + nc] = -low[..., 0, i, j]
            low[..., 1, i, j] = 1j * (f[5][..., i, j] + f[0][..., i, j])
            low[..., 1, i + nc, j + nc] = -low[..., 1, i, j]
    for i in range(nc):
        for j in range(nc):
            e_minus = 1j * f[2][..., i, j] + f[4][..., i, j]
            b_minus = 1j * f[3][..., i, j] - f[1][..., i, j]
            low[..., 0, i + nc, j] = b_minus - e_minus
            low[..., 1, i + nc, j] = e_minus + b_minus
    return blocks + low + low.conj().transpose(-1, -2)


def test_clover_matches_chroma_makeclov(u_mid):
    kappa, c_sw = 0.13, 1.7
    m = WilsonDirac(u_mid, kappa, c_sw=c_sw, normalisation="chroma")
    ref = _chroma_makeclov(clover_field_strength(u_mid)[0], c_sw, 1 / (2 * kappa))
    # M's site-diagonal part, in Chroma's block layout
    mine = m._a[0, 0] * m.scale
    assert torch.allclose(mine, ref, atol=1e-14)
    # and applied to a field: M = (diagonal blocks) - (1/2) H
    psi = torch.randn(m.field_shape(), dtype=C128, generator=torch.Generator().manual_seed(1))
    diag = (m.apply(psi) + 0.5 * m.hopping(psi))[0]
    v = psi[0].reshape(*psi.shape[1:5], 2, 6, 1)
    assert torch.allclose(diag, (ref @ v).reshape(diag.shape), atol=1e-13)


def test_clover_term_properties(u_mid, cpu_generator):
    lat = Lattice.of(u_mid)
    c = clover_matrix(u_mid)  # [B, t, z, y, x, 2, 6, 6]
    assert torch.allclose(c, c.conj().transpose(-1, -2), atol=1e-15)  # Hermitian
    assert float(c.abs().max()) > 0.05
    # off-chiral blocks vanish: build the full 12x12 and check
    f = clover_field_strength(u_mid)
    full = torch.einsum("pst,bp...ac->b...satc", 1j * sigma_matrices(), f).reshape(
        *f.shape[:1], *f.shape[2:6], 12, 12)
    assert float(full[..., :6, 6:].abs().max()) < 1e-15
    # vanishes on the unit field; Fhat is anti-Hermitian and gauge covariant
    assert float(clover_matrix(unit_gauge(lat, "SU3")).abs().max()) == 0.0
    assert torch.allclose(f, -f.conj().transpose(-1, -2))
    assert_gauge_covariant(clover_field_strength, u_mid, generator=cpu_generator, atol=1e-13)
    # the clover term's contribution to D is kappa c_sw C
    op = WilsonDirac(u_mid, 0.12, c_sw=1.5)
    plain = WilsonDirac(u_mid, 0.12)
    psi = _rand_field(op, cpu_generator)
    assert torch.allclose(op.apply(psi) - plain.apply(psi), 0.12 * 1.5 * op.clover(psi))
    # a constant abelian field in the xy plane, U_y(x) = exp(i B x) with B L_x = 2 pi: every
    # plaquette is exp(i B), so Fhat_{01} = (4 e^{iB} - 4 e^{-iB}) / 8 = i sin B everywhere
    lat2 = Lattice((6, 6, 2, 2))
    bval = 2 * math.pi / 6
    u1 = unit_gauge(lat2, "U1").clone()
    xs = lat2.coordinates()[0].to(torch.float64)
    u1[0, 1, ..., 0, 0] = torch.polar(torch.ones_like(xs), bval * xs)
    fh = clover_field_strength(u1)[0]
    assert torch.allclose(fh[0, ..., 0, 0], torch.full_like(fh[0, ..., 0, 0],
                                                            1j * math.sin(bval)), atol=1e-12)
    assert float(fh[1:].abs().max()) < 1e-15


# ------------------------------------------------------------------------------------------------
# even-odd preconditioning
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("c_sw", [0.0, 1.4])
def test_even_odd_blocks(u_mid, cpu_generator, c_sw):
    op = WilsonDirac(u_mid, 0.12, c_sw=c_sw)
    psi = _rand_field(op, cpu_generator, 2)
    e, o = op.split(psi)
    assert torch.equal(op.merge(e, o), psi)
    par = Lattice.of(u_mid).parity()
    assert torch.equal(op.merge(e, torch.zeros_like(o)), psi * (par == 0)[..., None, None])
    de, do = op.split(op.apply(psi))
    # D = [[A_ee, -k H_eo], [-k H_oe, A_oo]] with A_pp read off D on one-parity fields
    a_e = op.split(op.apply(op.merge(e, torch.zeros_like(o))))[0]
    a_o = op.split(op.apply(op.merge(torch.zeros_like(e), o)))[1]
    assert torch.allclose(de, a_e - 0.12 * op.hopping_eo(o), atol=1e-13)
    assert torch.allclose(do, a_o - 0.12 * op.hopping_oe(e), atol=1e-13)
    if c_sw == 0.0:
        assert torch.allclose(a_e, e) and torch.allclose(a_o, o)
    # the eo hopping pieces are the full hopping term restricted
    he, ho = op.split(op.hopping(psi))
    assert torch.allclose(he, op.hopping_eo(o), atol=1e-13)
    assert torch.allclose(ho, op.hopping_oe(e), atol=1e-13)


@pytest.mark.parametrize("c_sw", [0.0, 1.4])
@pytest.mark.parametrize("normalisation", ["kappa", "chroma"])
def test_schur_solve_equals_full_solve(u_mid, device, c_sw, normalisation):
    op = WilsonDirac(u_mid.to(device), 0.125, c_sw=c_sw, normalisation=normalisation)
    cpu_generator = torch.Generator(device=device).manual_seed(12)
    b = _rand_field(op, cpu_generator, 2)
    x_eo, st = op.solve(b, solver=CG(tol=1e-12))
    x_bi, _ = op.solve(b, solver=BiCGStab(tol=1e-12), method="direct")
    x_ne, st_ne = op.solve(b, solver=CG(tol=1e-12), method="normal")
    assert torch.allclose(op.apply(x_eo), b, atol=1e-9)
    assert torch.allclose(x_eo, x_bi, atol=1e-9) and torch.allclose(x_eo, x_ne, atol=1e-9)
    assert st.iterations < st_ne.iterations  # preconditioning pays
    # Schur operator is gamma_5-Hermitian
    a, c = _rand_field(op, cpu_generator, eo=True), _rand_field(op, cpu_generator, eo=True)
    lhs = _inner(c, op.schur(a))
    assert abs(lhs - _inner(op.schur_dagger(c), a)) <= 1e-12 * abs(lhs)


@pytest.mark.parametrize("c_sw", [0.0, 1.4])
def test_determinant_factorises(u_small, c_sw):
    """``det D = det A_ee det K``: dense log-determinants of D and of the Schur operator."""
    op = WilsonDirac(u_small, 0.13, c_sw=c_sw)
    full = exact_logdet(u_small, 0.13, c_sw=c_sw)
    schur = exact_logdet(u_small, 0.13, c_sw=c_sw, kind="schur")
    assert torch.allclose(full, schur + 2 * op.clover_logdet(0), rtol=1e-11)
    if c_sw == 0.0:
        assert float(op.clover_logdet(0).abs().max()) == 0.0
    # chroma normalisation shifts log det by the constant -2 * 12 V log(2 kappa)
    chroma = exact_logdet(u_small, 0.13, c_sw=c_sw, normalisation="chroma")
    v = Lattice.of(u_small).volume
    assert torch.allclose(chroma, full - 2 * 12 * v * math.log(2 * 0.13), rtol=1e-11)


# ------------------------------------------------------------------------------------------------
# pseudofermion monomials
# ------------------------------------------------------------------------------------------------
_MONOMIALS = [
    (TwoFlavorWilsonMonomial, 0.0, "chroma"),
    (TwoFlavorWilsonMonomial, 1.6, "kappa"),
    (TwoFlavorEOPrecWilsonMonomial, 0.0, "chroma"),
    (TwoFlavorEOPrecWilsonMonomial, 1.6, "chroma"),
]


@pytest.mark.parametrize("cls, c_sw, normalisation", _MONOMIALS)
def test_force_matches_action(u_small, cpu_generator, cls, c_sw, normalisation):
    """4D SU(3), 2x2x2x4: the force equals the directional derivative of the action (4th-order
    central differences, eps 1e-3, CG to 1e-13) along random algebra directions.

    The deviation is measured against ``2 |X| |F|``, the Cauchy-Schwarz bound of the derivative
    along X, not against the derivative itself: along a random X the derivative is a sum of ~10^3
    terms of both signs and can come out arbitrarily close to zero (seed shift 13: 3e-3 where
    ``2 |X| |F|`` ~ 1e3), and then the finite-difference error O(eps^4), ~1e-8 in absolute terms,
    is a large fraction of it.  Measured over 13 seeds x 2 configurations x 2 directions per
    monomial: the absolute deviation equals the truncation error estimated from eps and 2 eps
    (ratio 1.0), deviation / (2 |X| |F|) <= 7.3e-12 (mean 2e-12, c_sw = 1.6; 9e-13 at c_sw = 0);
    the derivative itself is typically 2.5e-2 of the bound (smallest seen 5.5e-4), so a force
    wrong by 1 % shows up at ~2.5e-4, six orders above the tolerance 1e-10."""
    mon = cls(0.13, c_sw=c_sw, normalisation=normalisation, solver=CG(tol=1e-13))
    mon.refresh(u_small, cpu_generator)
    f = mon.force(u_small)
    worst = 0.0
    for _ in range(2):
        x = random_algebra(3, tuple(u_small.shape[:-2]), generator=cpu_generator,
                           dtype=u_small.dtype)
        predicted = -2.0 * trace(mm(x, f)).real.flatten(1).sum(1)
        measured = directional_derivative(mon.action, u_small, x, method="fd", eps=1e-3)
        bound = 2.0 * x.flatten(1).norm(dim=1) * f.flatten(1).norm(dim=1)
        assert bool((predicted.abs() <= bound * (1 + 1e-12)).all())
        worst = max(worst, float(((predicted - measured).abs() / bound).max()))
    assert worst < 1e-10, worst


@pytest.mark.parametrize("cls", [TwoFlavorWilsonMonomial, TwoFlavorEOPrecWilsonMonomial])
def test_heat_bath_gives_eta_norm(u_small, cls):
    """Right after the heat bath ``S = eta^dag eta`` (phi = D^dag eta)."""
    mon = cls(0.12, c_sw=0.0, solver=CG(tol=1e-12))
    gen = torch.Generator().manual_seed(77)
    mon.refresh(u_small, gen)
    op = mon.operator(u_small)
    shape = op.eo_shape() if cls is TwoFlavorEOPrecWilsonMonomial else op.field_shape()
    eta = gaussian_noise(shape, generator=torch.Generator().manual_seed(77))
    s = mon.action(u_small)
    assert torch.allclose(s, (eta.abs() ** 2).flatten(1).sum(1), rtol=1e-9)


def test_gaussian_noise_density():
    eta = gaussian_noise((20000,), generator=torch.Generator().manual_seed(3))
    # density exp(-|eta|^2): E|eta|^2 = 1, Re and Im variance 1/2, uncorrelated
    assert abs(float((eta.abs() ** 2).mean()) - 1) < 0.03
    assert abs(float(eta.real.var()) - 0.5) < 0.02 and abs(float(eta.imag.var()) - 0.5) < 0.02
    assert abs(float((eta.real * eta.imag).mean())) < 0.02


@pytest.mark.parametrize("c_sw", [0.0, 1.3])
def test_exact_determinant_force(u_small, cpu_generator, c_sw):
    """Averaging the pseudofermion force over the heat bath gives the force of the exact
    effective action ``-log det(D^dag D)``: with ``eta`` running over a complete orthonormal basis,
    ``sum_i F(phi = D^dag e_i) = F_exact``; its prediction must match finite differences of the
    dense ``exact_logdet``.  Done for the full operator and for the Schur form plus the clover
    ``-2 log det A_ee`` (both must give the same, since ``det D = det A_ee det K``)."""
    u = u_small[:1]
    kappa = 0.13
    op = WilsonDirac(u, kappa, c_sw=c_sw)
    n = 12 * Lattice.of(u).volume
    basis = torch.eye(n, dtype=C128).reshape(n, *op.field_shape()[1:])
    dinv = torch.linalg.inv(op.dense("D")[0])
    x = (dinv @ torch.eye(n, dtype=C128)).T.reshape(basis.shape)  # x_i = D^{-1} e_i
    f_full = op.force_bilinear(x, basis)
    ne = n // 2
    basis_o = torch.eye(ne, dtype=C128).reshape(ne, *op.eo_shape()[1:])
    kinv = torch.linalg.inv(op.dense("schur")[0])
    xo = (kinv @ torch.eye(ne, dtype=C128)).T.reshape(basis_o.shape)
    f_eo = op.schur_force_bilinear(xo, basis_o) + op.clover_logdet_force(0)
    assert torch.allclose(f_full, f_eo, atol=1e-10)

    def s_eff(v):
        return -exact_logdet(v, kappa, c_sw=c_sw)

    dev = assert_force_matches_action(s_eff, lambda v: f_full, u, generator=cpu_generator,
                                      n_directions=2, rtol=1e-7, method="fd", eps=1e-3)
    assert dev < 1e-7


def test_predictor_and_counters(u_small, cpu_generator):
    mon = TwoFlavorEOPrecWilsonMonomial(0.13, solver=CG(tol=1e-11))
    mon.refresh(u_small, cpu_generator)
    f1 = mon.force(u_small)
    first = mon.last_stats.iterations
    assert first > 5 and mon.iterations == first and mon.n_solves == 1
    f2 = mon.force(u_small)  # same U: the last solution is (nearly) exact
    assert mon.last_stats.iterations <= 1
    assert torch.allclose(f1, f2, atol=1e-9)
    mon.action(u_small)  # action solves start from zero
    assert mon.last_stats.iterations >= first - 1
    mon.refresh(u_small, cpu_generator)
    mon.force(u_small)
    assert mon.last_stats.iterations >= first - 2  # predictor reset by the heat bath
    mon.reset_counters()
    assert mon.iterations == 0 and mon.n_solves == 0
    zero = TwoFlavorEOPrecWilsonMonomial(0.13, solver=CG(tol=1e-11), predictor="zero")
    zero.refresh(u_small, cpu_generator)
    zero.force(u_small)
    zero.force(u_small)
    assert zero.last_stats.iterations > 5


def test_monomial_errors(u_small, cpu_generator):
    mon = TwoFlavorWilsonMonomial(0.12)
    with pytest.raises(RuntimeError, match="call refresh"):
        mon.action(u_small)
    mon.refresh(u_small, cpu_generator)
    with pytest.raises(ValueError, match="does not match U"):
        mon.action(u_small[:1])
    with pytest.raises(ConfigError, match="LOGDET"):
        TwoFlavorEOPrecWilsonMonomial(0.12, c_sw=1.0, clover_logdet=False)
    with pytest.raises(ValueError, match="predictor"):
        TwoFlavorWilsonMonomial(0.12, predictor="chrono")
    with pytest.raises(PhysicsError, match="kappa"):
        TwoFlavorWilsonMonomial(0.0)


def test_monomial_from_chroma():
    params = {"kappa": 0.1, "fermact": "WILSON", "boundary": (1, 1, 1, -1), "rsd_cg": 1e-10,
              "max_cg": 2000, "predictor": "LAST_SOLUTION_4D_PREDICTOR"}
    m = monomial_from_chroma("TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL", params, name="w")
    assert isinstance(m, TwoFlavorEOPrecWilsonMonomial) and m.name == "w"
    assert m.solver.tol == 1e-10 and m.solver.max_iter == 2000
    assert m.predictor == "last_solution" and m.normalisation == "chroma" and m.stochastic
    u = monomial_from_chroma("TWO_FLAVOR_UNPREC_FERM_MONOMIAL", params)
    assert isinstance(u, TwoFlavorWilsonMonomial)
    clover = dict(params, fermact="CLOVER", c_sw=1.2)
    with pytest.raises(ConfigError, match="TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL"):
        monomial_from_chroma("TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL", clover)
    lg = monomial_from_chroma("TWO_FLAVOR_EOPREC_LOGDET_FERM_MONOMIAL", clover)
    assert lg.clover_logdet and lg.c_sw == 1.2
    with pytest.raises(ConfigError, match="unsupported fermion monomial"):
        monomial_from_chroma("ONE_FLAVOR_RAT", params)


def test_pseudofermion_action_mean(cpu_generator):
    """E[S] over heat baths = number of complex pseudofermion components (chi^2 mean)."""
    lat = Lattice((2, 2, 2, 4))
    u = _smooth_su3(lat, 8, cpu_generator)
    mon = TwoFlavorEOPrecWilsonMonomial(0.12, solver=CG(tol=1e-10))
    mon.refresh(u, cpu_generator)
    s = mon.action(u)
    ncomp = 12 * lat.volume // 2
    # sum of ncomp unit exponentials: mean ncomp, sd sqrt(ncomp) per config
    assert abs(float(s.mean()) - ncomp) < 5 * math.sqrt(ncomp / 8)


def test_critical_kappa_behaviour():
    """At the free critical point with periodic boundaries (kappa = 1/8) D has exact zero modes
    (constant spinors).  A source with a component along them has no solution: CG on D^dag D and
    BiCGStab on D stall and raise ConvergenceError (documented behaviour).  Pseudofermion sources
    ``phi = D^dag eta`` are orthogonal to the null space, so the normal equations stay consistent
    and CG converges (to the solution orthogonal to the zero modes)."""
    lat = Lattice((2, 2, 2, 4))
    u = unit_gauge(lat, "SU3")
    op = WilsonDirac(u, 0.125, boundary=(1, 1, 1, 1))
    zero_mode = torch.ones(op.field_shape(), dtype=C128)
    assert float(op.apply(zero_mode).abs().max()) < 1e-14
    gen = torch.Generator().manual_seed(2)
    b = torch.randn(op.field_shape(), dtype=C128, generator=gen) + zero_mode
    with pytest.raises(ConvergenceError, match=r"CG did not converge.*max_iter=300"):
        CG(tol=1e-10, max_iter=300).solve(op.linear_operator("DdagD"), b)
    with pytest.raises(ConvergenceError, match="BiCGStab"):
        BiCGStab(tol=1e-10, max_iter=300).solve(op.linear_operator("D"), b)
    phi = op.apply_dagger(torch.randn(op.field_shape(), dtype=C128, generator=gen))
    x, st = CG(tol=1e-10, max_iter=300).solve(op.linear_operator("DdagD"), phi)
    assert st.converged and abs(complex(_inner(zero_mode, x))) < 1e-8
    # with the antiperiodic time boundary there is no zero mode and the solve converges
    x, st = WilsonDirac(u, 0.125).solve(b, solver=CG(tol=1e-10))
    assert st.converged


def test_iterations_grow_towards_critical_kappa(cpu_generator):
    """CG iterations grow as kappa approaches the (finite-volume) critical region (~0.14 for this
    smooth field on 4^4 with antiperiodic time; beyond it the count falls again: D is not
    singular there, the theory just has a negative quark mass)."""
    u = _smooth_su3(Lattice((4, 4, 4, 4)), 1, cpu_generator, eps=0.3)
    b = torch.randn(WilsonDirac(u, 0.1).field_shape(), dtype=C128, generator=cpu_generator)
    its = [WilsonDirac(u, k).solve(b, solver=CG(tol=1e-8))[1].iterations
           for k in (0.10, 0.12, 0.14)]
    assert its[0] < its[1] < its[2], its


def test_chroma_reference_cg_iterations(data_dir):
    """Chroma's reference run reports 17.0 CG iterations per action solve (zero guess, RsdCG
    1e-10) for the even-odd Wilson monomial at kappa 0.1; our heat bath + action solve on its
    saved configurations takes the same number (a check of the Schur operator's spectrum, the
    heat bath's normalisation and the stopping criterion)."""
    from bridge.io.ildg import read_ildg

    folder = data_dir / "chroma" / "nf2_b1.0_k0.1_4x4"
    u, _ = read_ildg(folder / "nf2_b1.0_k0.1_4x4_cfg_1500.lime")
    params = {"kappa": 0.1, "fermact": "WILSON", "boundary": (1, 1, 1, -1), "rsd_cg": 1e-10,
              "max_cg": 2000, "predictor": "LAST_SOLUTION_4D_PREDICTOR"}
    mon = monomial_from_chroma("TWO_FLAVOR_EOPREC_CONSTDET_FERM_MONOMIAL", params)
    gen = torch.Generator().manual_seed(5)
    its = []
    for _ in range(4):
        mon.refresh(u, gen)
        mon.action(u)
        its.append(mon.last_stats.iterations)
    assert all(16 <= i <= 18 for i in its), its


def test_monomial_with_mixed_precision_solver(u_small, cpu_generator):
    """A mixed-precision solver (float32 inner CG) gives the float64 action and force."""
    from bridge.solvers import MixedPrecision

    ref = TwoFlavorEOPrecWilsonMonomial(0.13, solver=CG(tol=1e-12))
    mixed = TwoFlavorEOPrecWilsonMonomial(0.13, solver=MixedPrecision(CG(tol=1e-5), tol=1e-12))
    ref.refresh(u_small, cpu_generator)
    mixed.phi = ref.phi.clone()
    assert torch.allclose(mixed.action(u_small), ref.action(u_small), rtol=1e-10)
    assert torch.allclose(mixed.force(u_small), ref.force(u_small), atol=1e-9)
    assert mixed.last_stats.solver == "MixedPrecision(CG)"


@pytest.mark.slow
@pytest.mark.parametrize("cls, c_sw", [(TwoFlavorWilsonMonomial, 0.0),
                                       (TwoFlavorEOPrecWilsonMonomial, 1.5)])
def test_heat_bath_reproduces_determinant_ratio(cpu_generator, cls, c_sw):
    """With phi from the heat bath at U, ``E[exp(-(S(U') - S(U)))] = det(D'^dag D') /
    det(D^dag D)`` (Gaussian integral: phi has covariance D^dag D).  Checked against the dense
    ``exact_logdet`` for a nearby U' = exp(eps X) U, over 2000 heat-bath draws (5 sigma);
    for the even-odd clover monomial the -2 log det A_ee term is part of S."""
    lat = Lattice((2, 2, 2, 4))
    u = _smooth_su3(lat, 1, cpu_generator, eps=0.5)
    x = random_algebra(3, tuple(u.shape[:-2]), generator=cpu_generator)
    u2 = mm(expm_algebra(0.03 * x), u)
    kappa = 0.12
    expected = torch.exp(exact_logdet(u2, kappa, c_sw=c_sw) - exact_logdet(u, kappa, c_sw=c_sw))
    n = 2000
    ub, ub2 = u.expand(n, *u.shape[1:]).contiguous(), u2.expand(n, *u.shape[1:]).contiguous()
    mon = cls(kappa, c_sw=c_sw, solver=CG(tol=1e-11))
    mon.refresh(ub, cpu_generator)
    w = torch.exp(-(mon.action(ub2) - mon.action(ub)))
    mean, err = float(w.mean()), float(w.std()) / math.sqrt(n)
    assert abs(mean - float(expected)) < 5 * err, (mean, err, float(expected))
    assert abs(float(expected) - 1) > 3 * err  # the ratio is resolved, not trivially 1


@pytest.mark.parametrize("kernel", ["gather", "fused"])
@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["f64", "f32"])
@pytest.mark.parametrize("c_sw", [0.0, 1.7])
@pytest.mark.parametrize("nrow, batch, nrhs", [((4, 4, 4, 4), 1, 1), ((4, 4, 2, 4), 2, 3),
                                                ((8, 4, 4, 8), 1, 2)])
def test_fast_kernels_match_reference(kernel, dtype, c_sw, nrow, batch, nrhs, cpu_generator,
                                      monkeypatch):
    """The optimised hopping kernels (gather with spin matrices, dagger and scale folded in;
    the fused kernel for large fields) and the Schur operator built from them, against the
    reference kernels with explicit gamma_5 and scalar multiplications: float64 to 1e-13,
    complex64 to 1e-5 (relative to the field size, entries are O(1))."""
    monkeypatch.setattr(hopping, "_FUSED_MIN_SITES", 10**9 if kernel == "gather" else 0)
    lat = Lattice(nrow)
    u = random_gauge(lat, "SU3", batch, generator=cpu_generator).to(dtype)
    op = WilsonDirac(u, 0.12, c_sw=c_sw, normalisation="chroma")
    tol = 1e-13 if dtype == torch.complex128 else 1e-5
    g = torch.Generator().manual_seed(7)

    def rnd(shape):
        z = torch.randn(*shape, 2, generator=g, dtype=torch.float64)
        return torch.complex(z[..., 0], z[..., 1]).to(dtype)

    xo = rnd(op.eo_shape(nrhs))
    x5 = op._in(xo, True)
    g5 = apply_gamma5
    assert float((evenodd.schur5(op, x5) - schur5_reference(op, x5)).abs().max()) < tol
    assert float((evenodd.schur5(op, x5, True) - g5(schur5_reference(op, g5(x5)))).abs().max()) \
        < tol
    assert float((op.schur_normal(xo) - op.schur_dagger(op.schur(xo))).abs().max()) < tol * 10
    xf = rnd(op.field_shape(nrhs))
    p5 = op._in(xf)
    for dagger in (False, True):
        ref = hop_gather_reference(g5(p5) if dagger else p5, op._links, op._geo)
        ref = 0.37 * (g5(ref) if dagger else ref)
        got = hopping.hop_gather(p5, op._links, op._geo, dagger, 0.37)
        assert float((got - ref).abs().max()) < tol
        got = hopping.hop(p5, op._links, op._geo, dagger, 0.37)
        assert float((got - ref).abs().max()) < tol
    # D and D^dag against their definitions through the reference hop
    hop = hop_gather_reference(p5, op._links, op._geo)
    diag = p5 if op._a is None else clover.clover_apply(op._a, p5)
    d_ref = op.scale * (diag - op.kappa * hop)
    assert float((op._in(op.apply(xf)) - d_ref).abs().max()) < tol
    dd = op._in(op.apply_dagger(xf))
    dd_ref = g5(op._in(op.apply(op._out(g5(p5)))))
    assert float((dd - dd_ref).abs().max()) < tol


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["f64", "f32"])
@pytest.mark.parametrize("nrow, batch, nrhs", [((4, 4, 4, 4), 1, 1), ((4, 4, 2, 4), 2, 3)])
def test_hop_bilinear_fast_matches_reference(dtype, nrow, batch, nrhs, cpu_generator):
    """The all-directions gather form of the hopping-force bilinear against the
    direction-by-direction reference (float64 1e-13, complex64 1e-5 relative to max |G|)."""
    u = random_gauge(Lattice(nrow), "SU3", batch, generator=cpu_generator).to(dtype)
    op = WilsonDirac(u, 0.13, normalisation="chroma")
    g = torch.Generator().manual_seed(11)
    x5 = op._in(torch.randn(op.field_shape(nrhs), generator=g, dtype=torch.complex128).to(dtype))
    y5 = op._in(torch.randn(op.field_shape(nrhs), generator=g, dtype=torch.complex128).to(dtype))
    ref = forces.hop_bilinear_directional(op._links, op._geo, x5, y5)
    tol = (1e-13 if dtype == torch.complex128 else 1e-6) * float(ref.abs().max())
    assert float((forces.hop_bilinear(op._links, op._geo, x5, y5) - ref).abs().max()) < tol


def test_exact_logdet_is_right_on_several_threads(u_small):
    """The dense log det agrees with numpy's LAPACK on 2 threads too (torch's batched complex
    LU went wrong there for matrices of ~200 rows and more)."""
    import numpy as np

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        got = exact_logdet(u_small, 0.13, c_sw=1.4)
    finally:
        torch.set_num_threads(threads)
    m = WilsonDirac(u_small, 0.13, c_sw=1.4).dense("D").numpy()
    want = 2 * np.linalg.slogdet(m)[1]
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-11)
