"""Monitoring: CUSUM false-alarm rate and detection delay against Brook & Evans by simulation, the
rejection-rate chart over a real audit trail, robust-z anomalies and the KS drift family-wise error."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ptrader.audit import AuditTrail
from ptrader.monitoring import (arl_bernoulli, arl_normal, bernoulli_llr, cusum_threshold, daily_rates, ks_drift,
                                rate_anomalies, rate_cusum, rejection_outcomes, simulate_run_lengths)


def _delays(draw, h, tau, n_paths=3000, seed=0):
    rl = simulate_run_lengths(draw, h, n_paths=n_paths, max_t=20_000, seed=seed)
    return rl, rl[rl > tau] - tau


def test_normal_cusum_arl0_and_detection_delay():
    k, arl0 = 0.5, 500.0
    h = cusum_threshold(arl0, lambda x: arl_normal(k, x))
    rl = simulate_run_lengths(lambda g, n, t: g.standard_normal(n) - k, h, n_paths=3000, max_t=20_000, seed=11)
    assert abs(rl.mean() - arl0) < 3 * rl.std() / np.sqrt(len(rl)), rl.mean()          # false alarms as stated
    tau, delta = 100, 1.0
    rl, d = _delays(lambda g, n, t: g.standard_normal(n) + (delta if t >= tau else 0.0) - k, h, tau, seed=12)
    arl1 = arl_normal(k, h, mu=delta)
    # paths alive at tau start from the in-control steady state, not 0: their delay is at most the zero-state ARL
    assert 0.75 * arl1 < d.mean() <= arl1 + 3 * d.std() / np.sqrt(len(d)), (d.mean(), arl1)
    assert np.quantile(d, 0.95) < 2.5 * arl1
    # share of paths alarming before the shift: P(RL <= 100) of the in-control chart (~ geometric with mean 500)
    assert abs((rl <= tau).mean() - (1 - (1 - 1 / arl0) ** tau)) < 0.04


def test_bernoulli_rate_cusum_arl0_and_delay():
    p0, p1, arl0 = 0.05, 0.15, 400.0
    h = cusum_threshold(arl0, lambda x: arl_bernoulli(p0, p0, p1, x))
    rl = simulate_run_lengths(lambda g, n, t: bernoulli_llr(g.random(n) < p0, p0, p1), h, n_paths=3000, max_t=50_000, seed=21)
    se = rl.std() / np.sqrt(len(rl))
    assert abs(rl.mean() - arl0) < 3 * se + 0.05 * arl0, (rl.mean(), arl0)   # 5%: the Markov chain discretizes a lattice walk
    tau = 200
    rl, d = _delays(lambda g, n, t: bernoulli_llr(g.random(n) < (p1 if t >= tau else p0), p0, p1), h, tau, seed=22)
    arl1 = arl_bernoulli(p1, p0, p1, h)
    assert 0.7 * arl1 < d.mean() <= 1.05 * arl1 + 3 * d.std() / np.sqrt(len(d)), (d.mean(), arl1)


def test_rejection_rate_chart_over_a_trail(tmp_path):
    g = np.random.default_rng(5); t = AuditTrail(tmp_path / "a.duckdb")
    days = pd.bdate_range("2024-01-01", periods=120); ents = []; oid = 0
    for i, d in enumerate(days):
        for _ in range(5):
            oid += 1; p = 0.05 if i < 80 else 0.30
            ents.append(("order", {"run_id": "r", "order_id": oid}, d))
            ents.append(("rejection" if g.random() < p else "risk_check", {"run_id": "r", "order_id": oid, "rule": "x"}, d))
    t.record_many(ents)
    out = rejection_outcomes(t)
    assert len(out) == 600 and out.iloc[:400].mean() < 0.1 < out.iloc[400:].mean()
    res = rate_cusum(out.reset_index(drop=True), 0.05, 0.15, arl0=1000)
    assert res.first_alarm is not None and 400 <= res.first_alarm < 480, res.alarms
    rates = daily_rates(t)
    assert len(rates) == 120 and rates["orders"].eq(5).all()
    ev = t.events()
    # a day with 40 decisions among days of ~3 is an anomaly; the ordinary days are not
    extra = [("decision", {"run_id": "r", "risk_score": 0.5, "failure": None}, d) for d in days for _ in range(3)]
    extra += [("decision", {"run_id": "r", "risk_score": 0.5, "failure": None}, days[50])] * 37
    t.record_many(extra)
    an = rate_anomalies(daily_rates(t))
    assert list(an.loc[an["metric"] == "decisions", "day"]) == [days[50]]


def test_ks_drift_familywise_error_and_power():
    g = np.random.default_rng(9); reps = 300; fw = 0
    for _ in range(reps):
        ref = pd.DataFrame(g.normal(size=(200, 4)), columns=list("abcd"))
        cur = pd.DataFrame(g.normal(size=(150, 4)), columns=list("abcd"))
        fw += ks_drift(ref, cur)["drift"].any()
    assert fw / reps <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / reps)
    ref = pd.DataFrame(g.normal(size=(200, 4)), columns=list("abcd"))
    cur = pd.DataFrame(g.normal(size=(150, 4)), columns=list("abcd")); cur["c"] = cur["c"] * 2
    assert list(ks_drift(ref, cur)["drift"]) == [False, False, True, False]
