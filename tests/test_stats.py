"""ptrader.stats checks that need more than a notebook cell: the bootstrap coverage experiment (slow)
and property tests of the performance metrics."""
from __future__ import annotations

import math

import numpy as np
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
