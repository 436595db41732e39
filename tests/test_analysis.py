"""bridge.analysis.stats: pyerrors glue (tau_int of AR(1), replicas, trajectory gaps), reweighting,
ESS, bootstrap histograms against binomial errors, bin edges, error messages."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bridge.analysis import stats as A


def _ar1(n: int, rho: float, seed: int) -> np.ndarray:
    """AR(1) x_t = rho x_{t-1} + e_t, started in equilibrium: tau_int = (1+rho)/(2(1-rho)),
    Var(x) = 1/(1-rho^2)."""
    rng = np.random.default_rng(seed)
    e = rng.normal(size=n)
    x = np.empty(n)
    x[0] = e[0] / math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[t] = rho * x[t - 1] + e[t]
    return x


# -- Gamma method through pyerrors ----------------------------------------------------------------
@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_tau_int_of_ar1(rho):
    x = _ar1(20000, rho, seed=3)
    g = A.gamma(x)
    exact = (1 + rho) / (2 * (1 - rho))
    # 4 sigma: (tau_int - exact) / error has mean 0.3, sd 0.5-0.8 over 150 chains (windowing bias)
    assert abs(g.tau_int - exact) < 4 * g.tau_int_error + 0.02
    # the error of the mean: sigma^2 2 tau / N with sigma^2 = 1/(1-rho^2)
    want = math.sqrt(2 * exact / (1 - rho**2) / x.size)
    assert abs(g.error / want - 1) < 0.15
    assert abs(g.value) < 4 * want
    assert g.n == x.size and g.ess is None


def test_tau_int_detects_wrong_model():
    """Able to fail: the AR(1) tau_int at rho = 0.7 (2.83) is not the one of rho = 0.5 (1.5)."""
    g = A.gamma(_ar1(20000, 0.7, seed=4))
    assert abs(g.tau_int - 1.5) > 5 * g.tau_int_error


def test_replicas_and_trajectory_spacing():
    """Two chains as replicas "ens|r0", "ens|r1"; trajectory numbers 10, 20, ...: tau_int in units
    of the spacing, the same as for the concatenated labels 0, 1, ..."""
    x = _ar1(8000, 0.6, seed=5)
    y = _ar1(8000, 0.6, seed=6)
    traj = 10 * np.arange(1, 8001)
    g = A.gamma([x, y], [traj, traj], ensemble="hmc", replicas=["c0", "c1"])
    assert sorted(g.obs.names) == ["hmc|c0", "hmc|c1"]
    assert abs(g.tau_int - 2.0) < 4 * g.tau_int_error + 0.02
    assert g.value == pytest.approx(np.concatenate([x, y]).mean(), abs=1e-14)
    # a 2-D array is one replica per row
    g2 = A.gamma(np.stack([x, y]), ensemble="hmc")
    assert g2.tau_int == pytest.approx(g.tau_int, rel=1e-12)


def test_make_obs_is_a_pyerrors_obs_with_idl():
    import pyerrors as pe

    o = A.make_obs(np.arange(30.0), np.arange(100, 130), ensemble="e", replicas=["a"])
    assert isinstance(o, pe.Obs)
    assert o.idl["e|a"] == range(100, 130)
    o = A.make_obs(np.arange(30.0), np.r_[0:20, 25:35])  # irregular: a list
    assert list(o.idl["ens|r0"])[-1] == 34


# -- reweighting and ESS --------------------------------------------------------------------------
def test_reweighted_mean_of_gaussian_toy():
    """Sample q = N(0, 1), target p = N(mu, 1), w = p/q = exp(mu x - mu^2/2): <x>_p = mu,
    <x^2>_p = 1 + mu^2; the ratio estimator's error is sqrt(E_q[w^2 (x-mu)^2] / N)
    = sqrt(e^{mu^2} (1 + mu^2) / N) (delta method)."""
    mu, n = 0.5, 20000
    rng = np.random.default_rng(11)
    x = rng.normal(size=n)
    w = np.exp(mu * x - mu**2 / 2)
    g = A.gamma(x, weights=w)
    assert abs(g.value - mu) < 3 * g.error
    assert g.error == pytest.approx(math.sqrt(math.exp(mu**2) * (1 + mu**2) / n), rel=0.1)
    g2 = A.gamma(x**2, weights=3.7 * w)  # the normalisation of the weights does not matter
    assert abs(g2.value - (1 + mu**2)) < 3 * g2.error
    assert g.ess == pytest.approx(math.exp(-mu**2), rel=0.05)  # ESS of this toy: e^{-mu^2}
    # able to fail: the unweighted mean is far from mu
    assert abs(A.gamma(x).value - mu) > 10 * g.error


def test_reweighted_obs_is_the_ratio_of_two_obs():
    rng = np.random.default_rng(12)
    x, w = rng.normal(size=200), rng.uniform(0.5, 1.5, size=200)
    o = A.reweighted_obs(x, w)
    o.gamma_method()
    assert o.value == pytest.approx(np.sum(w * x) / np.sum(w), rel=1e-12)
    num, den = A.make_obs(w * x), A.make_obs(w)
    ratio = num / den
    ratio.gamma_method()
    assert o.dvalue == pytest.approx(ratio.dvalue, rel=1e-10)


def test_ess_limits():
    assert A.ess(np.ones(50)) == pytest.approx(1.0)
    assert A.ess(7.0 * np.ones(50)) == pytest.approx(1.0)
    w = np.zeros(50)
    w[17] = 3.0
    assert A.ess(w) == pytest.approx(1 / 50)
    assert A.ess([np.ones(10), np.zeros(10)]) == pytest.approx(0.5)
    assert A.ess(np.array([1e300, 1e300])) == pytest.approx(1.0)  # no overflow


# -- bootstrap histograms -------------------------------------------------------------------------
def test_bootstrap_errors_match_binomial_for_iid_data():
    n = 4000
    x = np.random.default_rng(21).normal(size=n)
    edges = np.linspace(-2.5, 2.5, 11)
    h = A.bootstrap_histogram(x, edges, n_boot=1000, seed=5)
    p = h.fraction
    binom = np.sqrt(p * (1 - p) / n) / np.diff(edges)
    # 1000 resamples: the relative error of a standard deviation is 1/sqrt(2000) = 2.2 %
    np.testing.assert_allclose(h.error, binom, rtol=0.1)
    assert h.density.sum() * 0.5 == pytest.approx(np.mean(np.abs(x) <= 2.5))
    assert h.boot.shape == (1000, 10) and h.counts.sum() == np.sum(np.abs(x) <= 2.5)
    # able to fail: errors for a sample half the size are sqrt(2) larger
    h2 = A.bootstrap_histogram(x[: n // 2], edges, n_boot=1000, seed=5)
    assert np.all(np.abs(h2.error / binom - 1) > 0.2)


def test_bootstrap_is_reproducible_and_weights_are_resampled():
    x = np.random.default_rng(22).normal(size=500)
    edges = np.linspace(-3, 3, 7)
    h1 = A.bootstrap_histogram(x, edges, seed=9, n_boot=200)
    h2 = A.bootstrap_histogram(x, edges, seed=np.random.default_rng(9), n_boot=200)
    h3 = A.bootstrap_histogram(x, edges, weights=np.full(500, 2.5), seed=9, n_boot=200)
    np.testing.assert_array_equal(h1.error, h2.error)
    np.testing.assert_allclose(h3.error, h1.error, rtol=1e-12)  # constant weights: no change
    w = np.where(x > 0, 2.0, 1.0)  # weighted: fraction of x > 0 is 2/3
    hw = A.bootstrap_histogram(x, [-10, 0, 10], weights=w, seed=1, n_boot=500)
    frac = 2 * np.mean(x > 0) / (2 * np.mean(x > 0) + np.mean(x <= 0))
    assert hw.fraction[1] == pytest.approx(frac)
    assert hw.fraction_error[1] > 0


def test_block_bootstrap_sees_autocorrelation():
    x = _ar1(5000, 0.8, seed=23)
    tau = A.gamma(x).tau_int
    edges = np.array([-20.0, 0.0, 20.0])
    naive = A.bootstrap_histogram(x, edges, seed=1, n_boot=500).fraction_error[0]
    blocked = A.bootstrap_histogram(x, edges, seed=1, n_boot=500,
                                    block=A.block_length(tau)).fraction_error[0]
    # expected ratio ~ sqrt(2 tau_int) of the sign indicator: 2.23(13) over 40 chains and seeds
    assert blocked > 1.6 * naive
    assert A.block_length(0.5) == 1 and A.block_length(4.5) == 17
    assert A.blocked_variance(x, 1) == pytest.approx(np.var(x, ddof=1) / x.size, rel=1e-3)


def test_histogram_edges():
    rng = np.random.default_rng(24)
    x, y = rng.normal(size=300), rng.normal(1.0, 1, size=300)
    e = A.histogram_edges([x, y], 30, min_count=20)
    assert e[0] == min(x.min(), y.min()) and e[-1] == max(x.max(), y.max())
    for s in (x, y):  # every bin has >= 20 samples of each set
        counts, _ = np.histogram(s, e)
        assert counts.min() >= 20 and counts.sum() == 300
    assert len(e) > 6
    # weighted: Kish's effective count per bin; one replica list per set
    w = np.exp(y)  # Kish's count of all 300 samples ~ 300/e: room for several bins of 20
    ew = A.histogram_edges([[x[:150], x[150:]], y], 30, weights=[None, w], min_count=20)
    sw, _ = np.histogram(y, ew, weights=w)
    sw2, _ = np.histogram(y, ew, weights=w**2)
    assert np.all(sw**2 / sw2 >= 20 - 1e-9) and len(ew) >= 4
    q = rng.integers(-3, 4, size=500).astype(float)
    np.testing.assert_array_equal(A.histogram_edges([q], 30, min_count=1),
                                  np.arange(-3.5, 4.0, 1.0))
    assert len(A.histogram_edges([np.ones(10)], 5)) == 2


# -- error messages -------------------------------------------------------------------------------
def test_error_too_few_configurations():
    with pytest.raises(ValueError, match=r"too few configurations .* 12 in 1 replica.*need at "
                                         r"least 20 in total and 5 per replica"):
        A.gamma(np.arange(12.0))
    with pytest.raises(ValueError, match=r"\(30, 4\); need at least 20 in total and 5 per"):
        A.gamma([np.arange(30.0), np.arange(4.0)])
    assert A.gamma(np.arange(12.0), min_configs=10).n == 12


def test_error_weights_zero_nan_negative():
    x = np.arange(30.0)
    with pytest.raises(ValueError, match="all 30 weights are zero"):
        A.gamma(x, weights=np.zeros(30))
    with pytest.raises(ValueError, match="all 30 weights are NaN"):
        A.gamma(x, weights=np.full(30, np.nan))
    w = np.ones(30)
    w[4] = np.nan
    with pytest.raises(ValueError, match=r"1 of 30 weights are NaN \(first at position 4\)"):
        A.ess(w)
    with pytest.raises(ValueError, match="negative weight -1.0"):
        A.bootstrap_histogram(x, [0, 30], weights=-np.ones(30))


def test_error_mismatched_lengths():
    x = np.arange(30.0)
    with pytest.raises(ValueError, match=r"29 weights for 30 samples \(mismatched lengths\)"):
        A.gamma(x, weights=np.ones(29))
    with pytest.raises(ValueError, match=r"30 samples but 31 trajectory numbers"):
        A.gamma(x, np.arange(31))
    with pytest.raises(ValueError, match=r"2 weight series for 1 replicas"):
        A.reweighted_obs(x, [np.ones(30), np.ones(30)])
    with pytest.raises(ValueError, match=r"must increase strictly, got 5 then 5"):
        A.gamma(x, np.r_[0:6, 5:29])
    with pytest.raises(ValueError, match="non-finite"):
        A.gamma(np.r_[x, np.nan])


def test_error_seed_and_bins():
    with pytest.raises(ValueError, match="explicit integer seed"):
        A.bootstrap_histogram(np.ones(10), [0, 2], seed=None)
    with pytest.raises(ValueError, match="increasing bin edges"):
        A.bootstrap_histogram(np.ones(10), [2, 0])
    with pytest.raises(ValueError, match="at least one bin"):
        A.histogram_edges([np.ones(10)], 0)


# -- value(error) ---------------------------------------------------------------------------------
def test_value_error_two_significant_digits():
    from bridge.analysis.format import value_error

    assert value_error(0.49961, 0.00132) == "0.4996(13)"
    assert value_error(0.69712, 0.0016) == "0.6971(16)"
    assert value_error(1.0, 0.0996) == "1.00(10)"  # rounding carries: not 1.000(100)
    assert value_error(123.4, 5.6) == "123.4(56)" and value_error(9.0, 9.96) == "9(10)"
    assert value_error(12.5, 1e-14) == "12.5+-1e-14"  # beyond 12 decimals: plain
    assert value_error(0.5, None) == "0.5" and value_error(0.5, 0.0) == "0.5"
    assert value_error(0.5, math.nan, plain=".5f") == "0.50000"
    assert value_error(None, 0.1) == "n/a" and value_error(None, 0.1, missing="-") == "-"
    assert value_error(0.01940, 0.0005, style="pm") == "0.01940 +- 0.00050"
    assert value_error(2.0, 0.5, style="pm") == "2.00 +- 0.50"
    assert value_error(1234.0, 56.0, style="pm") == "1234 +- 56"
    with pytest.raises(ValueError, match="style: expected 'paren' or 'pm', got 'tex'"):
        value_error(1.0, 0.1, style="tex")
