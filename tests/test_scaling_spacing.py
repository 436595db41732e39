"""The scale of the 2D U(1) scaling study (bridge.jobs.scaling_spacing): the exact infinite-volume
chi_t a^2 against independent computations, lines of constant physics, the fits of costs against
xi_t = (chi_t a^2)^(-1/2) on synthetic data, a tiny study on a line of constant physics, and the
refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from bridge.cli import main
from bridge.errors import ConfigError
from bridge.exact import u1_2d_topological_susceptibility, u1_2d_topological_susceptibility_infinite
from bridge.jobs.scaling_spacing import (
    beta_at_physical_volume,
    merge_points,
    physical_volume,
    points_of,
    spacing_fits,
    spacing_study,
    xi_t,
)


@pytest.mark.parametrize("beta", [0.7, 2.0, 6.0])
def test_infinite_volume_chi_t_is_the_limit_of_the_exact_torus(beta):
    # the finite-volume character sum converges to it exponentially in V
    assert u1_2d_topological_susceptibility_infinite(beta) == pytest.approx(
        u1_2d_topological_susceptibility(beta, (128, 128)), rel=1e-12)
    small = u1_2d_topological_susceptibility(beta, (4, 4))
    assert abs(small / u1_2d_topological_susceptibility_infinite(beta) - 1) > 1e-6


@pytest.mark.parametrize("beta", [0.5, 3.0, 10.0])
def test_infinite_volume_chi_t_against_a_direct_integral(beta):
    # the trapezoidal rule on a uniform grid: spectrally accurate for the periodic weight,
    # independent of the Gauss-Legendre nodes of bridge.exact
    phi = np.linspace(-math.pi, math.pi, 20001)
    w = np.exp(beta * (np.cos(phi) - 1))
    direct = np.trapezoid(phi**2 * w, phi) / np.trapezoid(w, phi) / (4 * math.pi**2)
    assert u1_2d_topological_susceptibility_infinite(beta) == pytest.approx(direct, rel=1e-7)


def test_infinite_volume_chi_t_weak_coupling_limit():
    # <phi^2> = 1/beta + 1/(2 beta^2) + O(beta^-3) for phi ~ exp(beta cos phi): the continuum
    # chi_t = e^2 / (4 pi^2) with beta = 1 / (e^2 a^2)
    for beta in (100.0, 400.0):
        chi = u1_2d_topological_susceptibility_infinite(beta)
        assert 4 * math.pi**2 * beta * chi == pytest.approx(1 + 0.5 / beta, abs=1 / beta**2)
    assert xi_t(400.0) / xi_t(100.0) == pytest.approx(2.0, rel=2e-3)  # 1/a ~ sqrt(beta)
    with pytest.raises(ValueError, match="beta: expected a finite positive coupling, got 0"):
        u1_2d_topological_susceptibility_infinite(0.0)


def test_line_of_constant_physics():
    betas = [beta_at_physical_volume(L, 1.0) for L in (8, 12, 16, 24)]
    assert betas == sorted(betas)
    for L, b in zip((8, 12, 16, 24), betas, strict=True):
        assert physical_volume(L, b) == pytest.approx(1.0, rel=1e-10)
        assert L / xi_t(b) == pytest.approx(1.0, rel=1e-10)  # fixed V chi_t: L ~ 1/a
    with pytest.raises(ConfigError, match=r"--physical-volume 1e\+06 with --L 8: expected V "
                                          r"chi_t between 0.000251 and 5.17 \(beta 10000 \.\. "
                                          r"0.05\) for this L"):
        beta_at_physical_volume(8, 1e6)
    with pytest.raises(ConfigError, match="--physical-volume -1: expected a positive V chi_t"):
        beta_at_physical_volume(8, -1)


def _synthetic(L: int, beta: float, *, z_flow: float, z_hmc: float, bound: bool) -> dict:
    x = xi_t(beta)
    return {"L": L, "beta": beta, "volume": L * L,
            "transfer": {"cost_per_effective_sample": 1e-4 * L**2 * x**z_flow},
            "hmc": {"cost_per_independent_q": 3e-3 * x**z_hmc, "is_lower_bound": bound}}


def test_spacing_fits_recover_known_exponents():
    fixed = [_synthetic(16, b, z_flow=0.5, z_hmc=4.0, bound=b > 5) for b in (2.0, 4.0, 6.0, 8.0)]
    lcp = [_synthetic(L, beta_at_physical_volume(L, 1.0), z_flow=0.5, z_hmc=4.0, bound=False)
           for L in (8, 12, 24)]
    sf = spacing_fits(merge_points(fixed, lcp))
    at16 = sf["fixed_L"]["16"]
    assert at16["betas"] == [2.0, 4.0, 6.0, 8.0]
    assert at16["cost_per_effective_sample"]["z"] == pytest.approx(0.5)
    hmc = at16["hmc_cost_per_independent_q"]
    assert hmc["z"] == pytest.approx(4.0) and hmc["includes_lower_bounds"]
    assert hmc["z_error"] == pytest.approx(0, abs=1e-9) and hmc["points"] == 4
    assert at16["hmc_cost_per_independent_q_resolved"]["points"] == 2
    assert "8" not in sf["fixed_L"]  # one beta at L = 8: no line
    (key, line), = sf["fixed_physical_volume"].items()
    assert key == "1" and [p[0] for p in line["points"]] == [8, 12, 24]
    # V ~ xi_t^2 on the line: the flow's cost goes like xi_t^(2 + 0.5)
    assert line["cost_per_effective_sample"]["z"] == pytest.approx(2.5)
    assert not line["hmc_cost_per_independent_q"]["includes_lower_bounds"]


def test_merge_points_keeps_one_point_per_lattice_and_coupling():
    a = [{"L": 8, "beta": 2.0, "tag": "a"}, {"L": 16, "beta": 2.0, "tag": "a"}]
    b = [{"L": 8, "beta": 2.0, "tag": "b"}, {"L": 8, "beta": 1.0, "tag": "b"}]
    m = merge_points(a, b)
    assert [(p["L"], p["beta"], p["tag"]) for p in m] == [(8, 1.0, "b"), (8, 2.0, "b"),
                                                          (16, 2.0, "a")]


def test_tiny_line_of_constant_physics_and_combine(tmp_path, capsys):
    out = tmp_path / "lcp"
    assert main(["scaling", "--physical-volume", "0.5", "--L", "4", "6", "--train-L", "4",
                 "--train-steps", "10", "--batch", "8", "--target-max-steps", "3",
                 "--eval-samples", "16", "--cycles", "20", "--hmc-trajectories", "20",
                 "--therm", "4", "--chains", "2", "--hmc-chains", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    res = json.loads((out / "scaling.json").read_text())
    assert [p["L"] for p in res["points"]] == [4, 6]
    for p in res["points"]:  # one beta per L, set by the exact chi_t
        assert p["beta"] == pytest.approx(beta_at_physical_volume(p["L"], 0.5))
        assert physical_volume(p["L"], p["beta"]) == pytest.approx(0.5)
    line = res["spacing_fits"]["fixed_physical_volume"]["0.5"]
    c = [p["transfer"]["cost_per_effective_sample"] for p in res["points"]]
    x = [xi_t(p["beta"]) for p in res["points"]]
    assert line["cost_per_effective_sample"]["z"] == pytest.approx(
        math.log(c[1] / c[0]) / math.log(x[1] / x[0]))
    assert "V chi_t = 0.5: cost_per_effective_sample ~ xi_t^" in text
    png = (out / "scaling_spacing.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) < 200_000
    # combining with another study adds a fixed-L line at L = 4
    other = {"points": [{**res["points"][0], "beta": 3.0}], "settings": {"family": "plaquette"}}
    st = spacing_study({"a": res, "b": other}, tmp_path / "comb")
    assert st["spacing_fits"]["fixed_L"]["4"]["betas"] == sorted([3.0,
                                                                   res["points"][0]["beta"]])
    assert (tmp_path / "comb" / "scaling_spacing.png").exists()


@pytest.mark.parametrize("args,message", [
    (["--betas", "2", "--physical-volume", "1"],
     "--betas [2.0] and --physical-volume 1.0: give one of them"),
    (["--family", "residual", "--physical-volume", "1", "--L", "4"],
     "--physical-volume with --family residual: the exact scale (chi_t a^2) exists for 2D "
     "U(1) only"),
    (["--L", "8", "16", "--target-L", "12"], "--target-L [12]: expected some of --L [8, 16]"),
])
def test_refusals_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "never"
    assert main(["scaling", *args, "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_combine_refuses_other_files():
    with pytest.raises(ConfigError, match="x.json: expected the JSON of qcd-bridge scaling"):
        points_of({"rows": [{"L": 4}]}, "x.json")
    with pytest.raises(ConfigError, match="su3.json: a study of the 'residual' family; the "
                                          "exact scale xi_t is that of 2D U\\(1\\)"):
        points_of({"points": [{"L": 4, "beta": 1.0, "transfer": {}}],
                   "settings": {"family": "residual"}}, "su3.json")
