"""Prediction intervals of `ptrader.forecast` against known truth: Monte Carlo coverage on simulated
series (a sinusoid plus AR(1) noise), closed-form AR forecast variances against statsmodels, and the
conformal ensemble intervals on a stationary process, the out-of-sample calibrated intervals of every model
(no look-ahead; coverage on a misspecified case). SARIMAX: d by unit-root tests, then the order against statsmodels.

Tolerances. With R independent Monte Carlo replications the coverage estimate at one horizon has standard
error se = sqrt(p (1 - p) / R) (p the nominal level); averaging over horizons does not increase it. Each
check allows 3 se (a 0.3% two-sided false-alarm rate per check under correct coverage) plus, where stated,
a documented finite-sample shortfall of the method itself (the tests then also assert the shortfall is not
larger, so a regression still fails).
"""
import math

import numpy as np
import pandas as pd
import pytest
from statsmodels.tsa.arima_process import ArmaProcess
from statsmodels.tsa.ar_model import AutoReg

from statsmodels.tsa.statespace.sarimax import SARIMAX

from ptrader.forecast import (NaiveForecaster, SAMoSSAForecaster, SARIMAXForecaster, SSAForecaster, _ar_psi,
                              calibrate_intervals, ensemble_forecasts, forecast_metrics, ndiffs, rolling_origin)


def sine_ar1(T, h, *, seed, phi=0.5, sigma=0.3, period=20):
    "A unit sinusoid with random phase plus stationary AR(1) noise; returns (history Series, next h true values)."
    rng = np.random.default_rng(seed)
    z = sigma * rng.standard_normal(T + h)
    e = np.empty(T + h)
    x = rng.standard_normal() * sigma / math.sqrt(1 - phi ** 2)   # start in the stationary distribution
    for i in range(T + h):
        x = phi * x + z[i]
        e[i] = x
    t = np.arange(T + h)
    y = np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)) + e
    return pd.Series(y[:T], pd.bdate_range("2000-01-03", periods=T), name="y"), y[T:]


def mc_coverage(make, R, T, h, levels=(0.9, 0.95), seed0=1000):
    "Empirical coverage per level, averaged over horizons 1..h and R replications."
    hits = {lv: np.zeros((R, h)) for lv in levels}
    for r in range(R):
        y, fut = sine_ar1(T, h, seed=seed0 + r)
        m = make(r).fit(y)
        for lv in levels:
            f = m.forecast(h, level=lv)
            hits[lv][r] = (f["lower"].to_numpy() <= fut) & (fut <= f["upper"].to_numpy())
    return {lv: float(v.mean()) for lv, v in hits.items()}


def se(p, R):
    return math.sqrt(p * (1 - p) / R)


# --- closed forms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(5))
def test_ar_psi_weights_match_statsmodels(seed):
    rng = np.random.default_rng(seed)
    p = int(rng.integers(1, 5))
    while True:  # a random stationary AR(p)
        phi = rng.uniform(-0.9, 0.9, p)
        if ArmaProcess(np.r_[1, -phi], [1]).isstationary:
            break
    np.testing.assert_allclose(_ar_psi(phi, 20), ArmaProcess(np.r_[1, -phi], [1]).arma2ma(20), rtol=0, atol=1e-12)


def test_samossa_ar_interval_is_the_autoreg_forecast_variance():
    y, _ = sine_ar1(1500, 1, seed=7)
    m = SAMoSSAForecaster(L=40, rank=2, ar_order=2, interval="ar").fit(y)
    phi, sigma, p = m.ar_["y"]
    ref = AutoReg(m.fitted_[:, 0], lags=2, trend="n").fit()
    np.testing.assert_allclose(phi, ref.params, rtol=0, atol=1e-10)
    n = len(m.fitted_)
    pred = ref.get_prediction(start=n, end=n + 9)
    f = m.forecast(10, level=0.95)
    z = 1.959963984540054
    np.testing.assert_allclose((f["upper"] - f["mean"]).to_numpy(), z * np.sqrt(pred.var_pred_mean), rtol=1e-8)


# --- Monte Carlo coverage -----------------------------------------------------------------------------------

def test_ssa_bootstrap_interval_coverage():
    # SSA (L=40, rank 2 = the sinusoid) on 300 points; 100 replications x 100 bootstrap refits (batched kernel).
    # Measured (R=1000, L=60, B=200, block resampling): 0.865 at 90% and 0.924 at 95%; the residual bootstrap
    # under-covers by about 0.03 because in-sample residuals are shrunk by the rank-2 fit. Allowed: 3 se + 0.03.
    R = 100
    cov = mc_coverage(lambda r: SSAForecaster(L=40, rank=2, n_boot=100, seed=r), R, 300, 5)
    for lv, c in cov.items():
        assert abs(c - lv) <= 3 * se(lv, R) + 0.03, (lv, c)


def test_samossa_intervals_coverage_and_the_sieve_beats_the_closed_form():
    # T=1000, L=32 (default), rank 2, AR(1) fixed. Both intervals under-cover because the residual is shrunk
    # (phi_hat ~ 0.43 vs 0.5, sigma_hat ~ 0.28 vs 0.3 at this T); measured with R=200: "ar" ~ 0.82 / 0.89,
    # "sieve" ~ 0.84 / 0.90 at 90% / 95%. Allowed shortfall: 0.08 for the sieve, 0.10 for the closed form, plus 3 se.
    R = 80
    ar = mc_coverage(lambda r: SAMoSSAForecaster(rank=2, ar_order=1, interval="ar"), R, 1000, 5)
    sv = mc_coverage(lambda r: SAMoSSAForecaster(rank=2, ar_order=1, interval="sieve", n_boot=150, seed=r), R, 1000, 5)
    for lv in (0.9, 0.95):
        assert lv - 0.08 - 3 * se(lv, R) <= sv[lv] <= lv + 3 * se(lv, R), ("sieve", lv, sv[lv])
        assert lv - 0.10 - 3 * se(lv, R) <= ar[lv] <= lv + 3 * se(lv, R), ("ar", lv, ar[lv])
    # same replications for both, so the comparison is paired; the sieve adds estimation error, never removes it
    assert sv[0.9] + sv[0.95] >= ar[0.9] + ar[0.95] - 0.02


def test_samossa_sieve_interval_is_reproducible_and_nested():
    y, _ = sine_ar1(600, 1, seed=3)
    a = SAMoSSAForecaster(rank=2, ar_order=1, n_boot=50, seed=9).fit(y).forecast(6, level=0.9)
    b = SAMoSSAForecaster(rank=2, ar_order=1, n_boot=50, seed=9).fit(y).forecast(3, level=0.9)
    np.testing.assert_array_equal(a[["lower", "upper"]].to_numpy()[:3], b[["lower", "upper"]].to_numpy())
    c = SAMoSSAForecaster(rank=2, ar_order=1, n_boot=50, seed=10).fit(y).forecast(6, level=0.9)
    assert not np.allclose(a["upper"], c["upper"])


def test_ensemble_conformal_interval_coverage():
    # Stationary AR(1) (phi 0.6) levels, naive and drift models, 1-step ensemble over 700 origins. The conformal
    # interval covers with probability >= level under exchangeable errors; one-step errors of this process are
    # close to that. Origins after the first 100 (enough history) are scored; lag-1 correlation of the hit
    # indicators is small at h=1, so se is computed as for independent draws and 3.5 se allowed.
    rng = np.random.default_rng(11)
    n = 900
    x = np.zeros(n)
    for i in range(1, n):
        x[i] = 0.6 * x[i - 1] + rng.standard_normal()
    y = pd.Series(100 + x, pd.bdate_range("2001-01-01", periods=n), name="Z")
    tab = rolling_origin({"naive": NaiveForecaster(), "drift": NaiveForecaster("drift")}, y, h=1, initial=200)
    for lv in (0.9, 0.95):
        ens = ensemble_forecasts(tab, method="equal", level=lv, min_history=30)
        scored = ens.sort_values("origin").iloc[100:]
        m = forecast_metrics(scored)
        cov = float(m["coverage"].iloc[0])
        R = int(m["n"].iloc[0])
        assert abs(cov - lv) <= 3.5 * se(lv, R), (lv, cov, R)
        # the interval is wider at the higher level
        if lv == 0.95:
            assert m["width"].iloc[0] > w90
        w90 = float(m["width"].iloc[0])


@pytest.mark.slow
def test_ssa_bootstrap_interval_coverage_large():
    # R=1000: se = 0.0095 at 90%, 0.0069 at 95%. Measured with these seeds (python /tmp/slow_cov.py ssa 1000, see the
    # issue note): block 0.865 / 0.924, i.i.d. 0.860 / 0.918 at 90% / 95%, a shortfall of 0.026-0.040 that is the
    # method's own (in-sample residuals are shrunk by the rank-2 fit, so the resampled noise is too small; Rssa's
    # interval has the same bias). Allowed: 3 se + 0.03, i.e. coverage >= 0.842 / 0.899. About 2 x 55 s on 2 cores.
    R = 1000
    for boot in ("block", "iid"):
        cov = mc_coverage(lambda r: SSAForecaster(L=60, rank=2, bootstrap=boot, seed=r), R, 300, 5, seed0=50_000)
        for lv, c in cov.items():
            assert abs(c - lv) <= 3 * se(lv, R) + 0.03, (boot, lv, c)


@pytest.mark.slow
def test_samossa_sieve_coverage_improves_with_T():
    # The residual shrinkage behind the shortfall fades as T (and L = sqrt(T)) grow. R=300: se = 0.017 / 0.013.
    # Measured with these seeds (python /tmp/slow_cov.py samossa 300, see the issue note): T=500 0.823 / 0.894,
    # T=4000 0.869 / 0.928 at 90% / 95%, i.e. a shortfall of 0.031 / 0.022 left at T=4000. Allowed: 0.05 + 3 se
    # below nominal at T=4000 (>= 0.798 / 0.862), and no loss against T=500 beyond 2 se. About 90 s on 2 cores.
    R = 300
    small = mc_coverage(lambda r: SAMoSSAForecaster(rank=2, ar_order=1, seed=r), R, 500, 5, seed0=70_000)
    large = mc_coverage(lambda r: SAMoSSAForecaster(rank=2, ar_order=1, seed=r), R, 4000, 5, seed0=80_000)
    for lv in (0.9, 0.95):
        assert large[lv] >= lv - 0.05 - 3 * se(lv, R), (lv, large[lv])
        assert large[lv] >= small[lv] - 2 * se(lv, R), (lv, small[lv], large[lv])


# --- SARIMAX: d by unit-root tests, then (p, q) by AIC -------------------------------------------------------

def ar1(n, phi, rng, burn=200):
    e = rng.standard_normal(n + burn)
    x = np.zeros(n + burn)
    for i in range(1, n + burn):
        x[i] = phi * x[i - 1] + e[i]
    return x[burn:]


def integrated(d, n, seed):
    "d = 0: stationary AR(1) (phi 0.5); 1: random walk; 2: integrated random walk; n points, seeded."
    x = ar1(n, 0.5, np.random.default_rng(seed)) if d == 0 else np.random.default_rng(seed).standard_normal(n)
    for _ in range(d):
        x = np.cumsum(x)
    return x


@pytest.mark.parametrize("d", [0, 1, 2])
def test_ndiffs_picks_the_order_of_integration(d):
    # KPSS (5%) with the ADF veto at 1%: a stationary AR(1) is differenced only if KPSS falsely rejects (5%) AND
    # ADF fails to reject a unit root (p ~ 1e-20 here), a random walk is under-differenced only on an ADF 1% error.
    # 10 seeded series of 1000 points each; all must come out right (40 of 40 did with seeds 100..139).
    for seed in range(100, 110):
        got, steps = ndiffs(integrated(d, 1000, seed))
        assert got == d, (seed, steps)
        assert list(steps.difference) == [True] * d + [False]
        assert steps.kpss_pvalue.iloc[-1] >= 0.05 or (steps.adf_pvalue.iloc[-1] < 0.01) or d == 2


@pytest.mark.parametrize("d", [0, 1, 2])
def test_sarimax_chooses_d_by_tests_then_matches_statsmodels(d):
    y = pd.Series(integrated(d, 800, 7), pd.bdate_range("2005-01-03", periods=800))
    m = SARIMAXForecaster(max_p=1, max_q=1).fit(y)
    dg = m.diagnostics_
    assert dg["d"] == d and m.order_[1] == d and dg["d_test"] == "kpss+adf"
    assert {o[1] for o in m.grid_.order} == {d}          # the AIC search never compares across d
    np.testing.assert_allclose([dg["kpss_stat"], dg["kpss_pvalue"], dg["adf_pvalue"]],
                               dg["unit_root"].iloc[0][["kpss_stat", "kpss_pvalue", "adf_pvalue"]].to_numpy(float))
    # the chosen (p, q) is the AIC minimum of the grid at that d, and its fit is statsmodels' own
    assert m.order_ == tuple(m.grid_.loc[m.grid_.aic.idxmin(), "order"])
    direct = SARIMAX(y.to_numpy(), order=m.order_, trend="c" if d == 0 else None).fit(disp=False)
    np.testing.assert_allclose(m.params_.to_numpy(), direct.params, rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(m.forecast(5, level=0.9)["upper"].to_numpy(), direct.get_forecast(5).conf_int(alpha=0.1)[:, 1],
                               rtol=1e-8, atol=1e-8)


def test_sarimax_fixed_d_and_errors():
    y = pd.Series(integrated(1, 300, 3), pd.bdate_range("2005-01-03", periods=300))
    m = SARIMAXForecaster(max_p=1, max_q=0, d=2).fit(y)
    assert m.order_[1] == 2 and m.diagnostics_["d_test"] == "fixed" and np.isnan(m.diagnostics_["kpss_pvalue"])
    with pytest.raises(ValueError, match="d:"):
        SARIMAXForecaster(d="kpss")
    with pytest.raises(ValueError, match="max_d"):
        ndiffs(y.to_numpy(), max_d=-1)


# --- out-of-sample calibrated intervals ---------------------------------------------------------------------

def test_calibrated_intervals_see_no_future():
    rng = np.random.default_rng(5)
    y = pd.Series(100 + np.cumsum(rng.standard_normal(400)), pd.bdate_range("2003-01-01", periods=400), name="X")
    models = {"naive": NaiveForecaster(), "ssa": SSAForecaster(L=30, rank=2, n_boot=40)}
    kw = dict(h=3, initial=200, refit_every=25, calibrate=True, min_history=25)
    a = rolling_origin(models, y, **kw)
    cut = 320
    y2 = y.copy()
    y2.iloc[cut + 1:] = -50 + rng.standard_normal(len(y) - cut - 1)
    b = rolling_origin(models, y2, **kw)
    k = (a.origin <= y.index[cut]).to_numpy()
    cols = ["lower_cal", "upper_cal"]
    np.testing.assert_array_equal(a.loc[k, cols].to_numpy(), b.loc[k, cols].to_numpy())
    assert np.isfinite(a.loc[k, "lower_cal"]).sum() > 100          # the check covers real intervals, not NaNs
    assert not np.allclose(a.loc[~k, "upper_cal"].dropna(), b.loc[~k, "upper_cal"].dropna())
    # NaN exactly until min_history errors are realized: at horizon h the first interval is at origin index 25 + h - 1
    # (at level 0.9 the order statistics also need n >= 19, which min_history=25 exceeds)
    for hz in (1, 3):
        g = a[(a.model == "naive") & (a.horizon == hz)].sort_values("origin")
        first = int(np.flatnonzero(np.isfinite(g.lower_cal.to_numpy()))[0])
        assert first == 25 + hz - 1
    # calibrate_intervals on the plain table is the same computation
    plain = rolling_origin(models, y, **{**kw, "calibrate": False})
    np.testing.assert_array_equal(calibrate_intervals(plain, min_history=25)[cols].to_numpy(), a[cols].to_numpy())
    with pytest.raises(ValueError, match="min_history"):
        calibrate_intervals(plain, min_history=0)


def test_calibration_repairs_a_misspecified_interval():
    # Momentum returns (AR(1), phi 0.5) in the differences, forecast 5 days ahead by the naive model, whose
    # interval sigma sqrt(h) assumes independent increments: the true 5-day error variance is 11.1/5 = 2.2 times
    # larger (gamma0 (5 + 2 sum_k (5-k) phi^k)), so the raw 90% interval covers ~0.73. The conformal interval
    # built on the model's own realized 5-day errors must cover 0.90 within Monte Carlo error.
    # R = 10 independent paths x 300 origins (overlapping 5-day errors are dependent within a path, so the
    # standard error is taken across paths: sd / sqrt(R)); 3 se allowed, and the raw coverage must be > 3 se off.
    R, n_or, init = 10, 300, 100
    rng = np.random.default_rng(21)
    N = init + n_or + 5
    paths = {f"p{r}": pd.Series(np.cumsum(ar1(N, 0.5, rng)), pd.bdate_range("2001-01-01", periods=N)) for r in range(R)}
    tab = rolling_origin({"naive": NaiveForecaster()}, paths, h=5, initial=init, window="sliding",
                         calibrate=True, min_history=50)
    m = forecast_metrics(tab, by=("symbol", "horizon")).xs(5, level="horizon")
    assert (m.n_cal == n_or + 1 - 50 - 4).all()
    raw, cal = m["coverage"], m["coverage_cal"]
    se_raw, se_cal = raw.std() / math.sqrt(R), cal.std() / math.sqrt(R)
    assert abs(cal.mean() - 0.9) <= 3 * se_cal, (cal.mean(), se_cal)
    assert 0.9 - raw.mean() > 3 * se_raw, (raw.mean(), se_raw)


@pytest.mark.parametrize("seed", [0, 1])
def test_volatility_comparison_on_a_plain_random_walk(seed):
    """The report's volatility run (GARCH-n, GJR-t, EGARCH-skew-t; 749-bar sliding windows, refit every 50, last 250
    origins) on a 1,100-bar geometric random walk with 1.2% daily vol: every variance forecast is within a factor 2 of
    the true 1.44e-4 and the DM/MCS comparison runs (seed 1 once died in `optimal_block_length` on inf losses: EGARCH
    forecasts of 1e+69 from a non-invertible fit)."""
    from ptrader.forecast import GARCHForecaster, compare_forecasts
    rng = np.random.default_rng(seed)
    lr = pd.Series(rng.normal(0, 0.012, 1100), index=pd.bdate_range("2020-01-02", periods=1100), name="ACME").iloc[1:]
    models = {"garch_n": GARCHForecaster("GARCH", "normal"), "gjr_t": GARCHForecaster("GJR", "t"),
              "egarch_skewt": GARCHForecaster("EGARCH", "skewt")}
    vt = rolling_origin(models, {"ACME": lr}, h=1, initial=749, window="sliding", window_size=749, refit_every=50, max_origins=250)
    v = vt.pivot_table(index="origin", columns="model", values="variance")
    assert v.shape == (250, 3) and np.isfinite(v.to_numpy()).all()
    ratio = v.to_numpy() / 0.012 ** 2
    assert (ratio > 0.5).all() and (ratio < 2).all(), (ratio.min(), ratio.max())
    c = compare_forecasts(vt.assign(forecast=vt["variance"], actual=vt["actual"] ** 2), horizon=1, reps=200, seed=seed)
    assert len(c.losses) == 250 and c.mcs.included.any()
