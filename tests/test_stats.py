"""ptrader.stats checks that need more than a notebook cell: the bootstrap coverage experiment (slow)
and property tests of the performance metrics."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ptrader.stats import (block_bootstrap, drawdown, max_drawdown, max_drawdown_duration, sharpe_ratio,
                           total_return, probability_of_backtest_overfitting)

finite_returns = st.lists(st.floats(-0.5, 0.5, allow_nan=False, allow_infinity=False), min_size=2, max_size=200)


@settings(max_examples=200, deadline=None)
@given(finite_returns)
def test_drawdown_properties(r):
    dd = drawdown(r).to_numpy()
    assert (dd <= 0).all() and (dd >= -1).all()
    assert math.isclose(max_drawdown(r), -dd.min(), abs_tol=1e-15)
    assert 0 <= max_drawdown_duration(r) <= len(r)
    eq = np.cumprod(1 + np.asarray(r))
    assert math.isclose(total_return(r), eq[-1] - 1, rel_tol=1e-9, abs_tol=1e-12)


@settings(max_examples=100, deadline=None)
@given(finite_returns, st.floats(0.1, 1.9), st.floats(-0.01, 0.01))
def test_sharpe_scale_invariance(r, c, rf):
    x = np.asarray(r)
    if np.std(x) < 1e-6: return
    # Sharpe of c * excess returns is the Sharpe of the excess returns (c > 0)
    assert math.isclose(sharpe_ratio(c * (x - rf) + rf, rf, 1), sharpe_ratio(x, rf, 1), rel_tol=1e-7, abs_tol=1e-9)


def _ar1_garch(n, rng, mu=0.0005, phi=0.1, w=2e-6, a=0.08, b=0.9):
    "AR(1)-GARCH(1,1) simple returns and their true per-period Sharpe mu / sd(r)."
    e = np.empty(n + 500); s2 = w / (1 - a - b); prev = 0.0
    for t in range(n + 500):
        s2 = w + a * prev ** 2 + b * s2; prev = math.sqrt(s2) * rng.standard_normal(); e[t] = prev
    r = np.empty_like(e); r[0] = mu
    for t in range(1, e.size): r[t] = mu + phi * (r[t - 1] - mu) + e[t]
    sd = math.sqrt(w / (1 - a - b) / (1 - phi ** 2))
    return r[500:], mu / sd


@pytest.mark.slow
@pytest.mark.parametrize("process", ["iid", "ar1_garch"])
def test_bootstrap_sharpe_coverage(process, capsys):
    "Share of 95% stationary-bootstrap BCa intervals covering the true annualized Sharpe (reported)."
    rng = np.random.default_rng(2024)
    n_sim, n, hits, widths = 300, 1000, 0, []
    for i in range(n_sim):
        if process == "iid":
            x = rng.normal(0.0005, 0.01, n); true = 0.05 * math.sqrt(252)
        else:
            x, sr = _ar1_garch(n, rng); true = sr * math.sqrt(252)
        ci = block_bootstrap(x, reps=999, seed=i).conf_int(0.95).loc["Sharpe ratio"]
        hits += ci.ci_low <= true <= ci.ci_high; widths.append(ci.ci_high - ci.ci_low)
    cov = hits / n_sim
    with capsys.disabled():
        print(f"\n[coverage] {process}: {cov:.3f} of {n_sim} nominal-95% BCa intervals cover the true Sharpe "
              f"(MC s.e. {math.sqrt(0.95 * 0.05 / n_sim):.3f}); mean width {np.mean(widths):.3f}")
    assert 0.85 <= cov <= 0.995   # loose: a gross error in the interval, not Monte Carlo noise


@pytest.mark.slow
def test_pbo_noise_and_dominant():
    rng = np.random.default_rng(7)
    pbos = [probability_of_backtest_overfitting(rng.normal(0, 0.01, (1000, 30)), n_blocks=10).pbo for _ in range(10)]
    assert np.mean(pbos) > 0.4
    R = rng.normal(0, 0.01, (1000, 30)); R[:, 3] += 0.004
    assert probability_of_backtest_overfitting(R, n_blocks=10).pbo < 0.05


def _bench_case(seed, T=1500, M=16, mu=0.0004):
    rng = np.random.default_rng(seed)
    bh = rng.normal(mu, 0.012, T)
    grid = pd.DataFrame({f"c{j}": bh * rng.uniform(0.3, 1.0) + rng.normal(0, 0.004, T) for j in range(M)})
    return rng, bh, grid


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_benchmark_verdict_planted_edge_noise_and_a_loser(seed):
    "A planted 0.06%/day edge passes after 16 trials; benchmark + noise fails; Sharpe > 0 but below the benchmark fails."
    from ptrader.stats import benchmark_verdict
    rng, bh, grid = _bench_case(seed)
    edge = bh + 0.0006 + rng.normal(0, 0.004, len(bh))
    v = benchmark_verdict(edge, bh, n_trials=16, trial_returns=grid, reps=300, seed=seed)
    assert v.passed and (v.table.p_holm < 0.05).all() and "Every test rejects" in v.evidence
    noise = bh + rng.normal(0, 0.004, len(bh))
    v2 = benchmark_verdict(noise, bh, n_trials=16, trial_returns=grid, reps=300, seed=seed)
    assert not v2.passed and v2.evidence.startswith("Decided by the ")
    rng, bh, grid = _bench_case(seed, mu=0.0012)   # a strong benchmark (30% a year): half of it still has Sharpe > 0
    lag = 0.5 * bh + rng.normal(0, 0.002, len(bh))
    v3 = benchmark_verdict(lag, bh, n_trials=16, trial_returns=grid, reps=300, seed=seed)
    assert v3.figures["Sharpe (annualized)"] > 0 and not v3.passed


def test_benchmark_verdict_single_strategy_against_references():
    "n_trials=1: the deflated information ratio is PSR(0) of the excess returns; the bootstrap row is arch's SPA itself."
    from arch.bootstrap import SPA
    from ptrader.stats import benchmark_verdict, probabilistic_sharpe_ratio, sharpe_moments
    rng, bh, grid = _bench_case(7, T=800)
    s = bh + 0.0003 + rng.normal(0, 0.005, len(bh))
    v = benchmark_verdict(s, bh, reps=400, block_size=4, seed=3)
    assert list(v.table.test) == ["deflated information ratio", "bootstrap mean excess (SPA on the strategy alone)"]
    m = sharpe_moments(s - bh)
    assert v.figures["deflated information ratio"] == pytest.approx(probabilistic_sharpe_ratio(m["sr"], 0.0, m["n_obs"], m["skew"], m["kurtosis"]), abs=1e-12)
    spa = SPA(-bh, -s[:, None], block_size=4, reps=400, bootstrap="stationary", studentize=True, seed=3); spa.compute()
    assert v.table.p_value.iloc[1] == pytest.approx(float(spa.pvalues["consistent"]), abs=1e-12)
    # more trials raise the bar: the deflated information ratio falls
    v16 = benchmark_verdict(s, bh, n_trials=16, trial_returns=grid.iloc[:800], reps=400, block_size=4, seed=3)
    assert v16.figures["deflated information ratio"] < v.figures["deflated information ratio"]
    with pytest.raises(ValueError, match="needs `trial_returns`"):
        benchmark_verdict(s, bh, n_trials=5)
