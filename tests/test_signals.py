"""Calibration and validation against references: scikit-learn's calibration_curve, brier_score_loss and
IsotonicRegression, the authors' `betacal` package for Beta calibration, scipy's Beta posterior for the
shrinkage, Murphy's decomposition summing to the Brier score; the validator's layers with their reasons,
its statistics layer blind to unresolved calls (identical outcomes when the future is noise), and the
calibrated probability sizing trades through Kelly with at most 2% of equity at the stop."""
import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from ptrader.agents import AccountState, Decision, MarketData, run_agent, synthetic_bars
from ptrader.broker import PaperBroker, RiskLimits
from ptrader.signals import (BetaCalibrator, IsotonicCalibrator, ShrinkageCalibrator, SignalValidator, ValidatorPolicy,
                             brier_score, calibrated_kelly_size, ensemble_weights, murphy_decomposition, reliability_curve)
from ptrader.sizing import kelly_size

sklearn = pytest.importorskip("sklearn")
from sklearn.calibration import calibration_curve
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss


def _data(seed, n=3000, shape=1.7):
    rng = np.random.default_rng(seed)
    p = rng.beta(2, 2, n)
    y = (rng.uniform(size=n) < p ** shape).astype(float)
    return p, y


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_reliability_curve_matches_sklearn(strategy, seed):
    p, y = _data(seed)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy=strategy)
    c = reliability_curve(p, y, n_bins=10, strategy=strategy)
    np.testing.assert_allclose(c["fraction_positive"], prob_true, rtol=0, atol=1e-12)
    np.testing.assert_allclose(c["mean_predicted"], prob_pred, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_brier_and_murphy_decomposition(seed):
    p, y = _data(seed)
    assert brier_score(p, y) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    for bins in (None, 5, 10, 20):
        m = murphy_decomposition(p, y, bins=bins)
        assert m["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-15)
        assert m["reliability"] - m["resolution"] + m["uncertainty"] + m["wbv"] - m["wbc"] == pytest.approx(m["brier"], abs=1e-12)
    # discrete forecasts: the classical three-term identity is exact and the within-bin terms vanish
    q = np.round(p, 1)
    m = murphy_decomposition(q, y)
    assert m["wbv"] == pytest.approx(0, abs=1e-20) and m["wbc"] == pytest.approx(0, abs=1e-15)
    assert m["reliability"] - m["resolution"] + m["uncertainty"] == pytest.approx(brier_score(q, y), abs=1e-12)
    assert m["uncertainty"] == pytest.approx(y.mean() * (1 - y.mean()))


def test_murphy_perfectly_calibrated_has_small_reliability():
    rng = np.random.default_rng(5)
    q = rng.choice([0.1, 0.3, 0.5, 0.7, 0.9], 200_000)
    y = (rng.uniform(size=q.size) < q).astype(float)
    m = murphy_decomposition(q, y)
    assert m["reliability"] < 1e-4 and m["resolution"] == pytest.approx(np.var(q), rel=0.02)


def _beta_features(p):
    q = np.clip(p, np.finfo(float).eps, 1 - np.finfo(float).eps)
    return np.column_stack([np.log(q), -np.log(1 - q)])


def _logloss(cal, p, y):
    q = np.clip(cal(p), 1e-15, 1 - 1e-15)
    return -np.sum(y * np.log(q) + (1 - y) * np.log(1 - q))


@pytest.mark.parametrize("seed,shape", [(0, 1.7), (1, 0.5), (2, 1.0), (3, 3.0)])
def test_beta_calibration_matches_references(seed, shape):
    """Reference 1: Kull et al.'s model is a logistic regression on (ln p, -ln(1-p)); scikit-learn's unpenalized
    fit to tight tolerance gives the same (a, b, c). Reference 2: the authors' `betacal` (a C=1e11 lbfgs fit at
    scikit-learn's default tolerance, so it stops a little short of the optimum): same curve to 5e-3, and ours
    has a log loss no worse."""
    from sklearn.linear_model import LogisticRegression
    p, y = _data(seed, shape=shape)
    ours = BetaCalibrator().fit(p, y)
    lr = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(_beta_features(p), y)
    if min(lr.coef_[0]) >= 0:
        np.testing.assert_allclose([ours.a_, ours.b_, ours.c_], [*lr.coef_[0], lr.intercept_[0]], rtol=1e-5, atol=1e-6)
    betacal = pytest.importorskip("betacal")
    ref = betacal.BetaCalibration(parameters="abm").fit(p, y)
    grid = np.linspace(0.01, 0.99, 99)
    np.testing.assert_allclose(ours(grid), ref.predict(grid), atol=5e-3)
    assert _logloss(ours, p, y) <= _logloss(ref.predict, p, y) + 1e-9


def test_beta_calibration_drops_a_negative_parameter_like_betacal():
    from sklearn.linear_model import LogisticRegression
    rng = np.random.default_rng(9)
    p = rng.uniform(0.01, 0.99, 4000)
    y = (rng.uniform(size=p.size) < 1 - p * 0.8).astype(float)    # confidence anti-correlated with outcomes
    ours = BetaCalibrator().fit(p, y)
    full = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(_beta_features(p), y).coef_[0]
    keep = 1 if full[0] < 0 else 0                                  # betacal's rule: drop the negative one, refit
    one = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(_beta_features(p)[:, [keep]], y)
    got = (ours.b_ if keep == 1 else ours.a_, ours.a_ if keep == 1 else ours.b_)
    assert got[1] == 0.0 and got[0] == pytest.approx(one.coef_[0][0], rel=1e-5) and ours.c_ == pytest.approx(one.intercept_[0], rel=1e-5)
    betacal = pytest.importorskip("betacal")
    ref = betacal.BetaCalibration().fit(p, y)
    assert ref.calibrator_.map_[1 - keep] == 0


@pytest.mark.parametrize("seed", [0, 1])
def test_isotonic_matches_sklearn(seed):
    p, y = _data(seed, n=500)
    p = np.round(p, 2)                                              # ties
    ref = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    ours = IsotonicCalibrator().fit(p, y)
    grid = np.linspace(-0.1, 1.1, 241)
    np.testing.assert_allclose(ours(grid), ref.predict(grid), atol=1e-12)


def test_shrinkage_is_the_beta_posterior_mean():
    rng = np.random.default_rng(3)
    p = rng.uniform(size=37); y = (rng.uniform(size=37) < 0.6).astype(float)
    sh = ShrinkageCalibrator(bins=5).fit(p, y)
    for b in range(5):
        inb = (np.clip(np.floor(p * 5), 0, 4) == b)
        k, n = y[inb].sum(), inb.sum()
        assert sh((b + 0.5) / 5) == pytest.approx(st.beta(2 + k, 2 + n - k).mean())


# ---------------------------------------------------------------------------------------------- validator

GOOD = dict(action="BUY", confidence=0.6, stop_loss=0.02, take_profit=0.04, risk_level="low", risk_score=0.2,
            horizon=5, rationale="trend")


@pytest.fixture(scope="module")
def md():
    return MarketData(synthetic_bars(300, seed=4), "TEST", min_history=50)


@pytest.mark.parametrize("payload,layer,reason", [
    ('{"action": "BUY", "confidence": 0.6', "schema", "invalid_json"),
    ({**GOOD, "confidence": 1.5}, "schema", "out_of_range"),
    ({k: v for k, v in GOOD.items() if k != "horizon"}, "schema", "schema_violation"),
    (Decision(**GOOD, symbol="MSFT"), "sanity", "unknown symbol"),
    (Decision(**GOOD, target_fraction=-0.3), "sanity", "points the other way"),
    (Decision(**GOOD, flags=("bypass_risk_check",)), "policy", "forbidden request"),
    ({**GOOD, "rationale": "I will override_limits now"}, "policy", "forbidden"),
    (Decision(**{**GOOD, "action": "SELL"}, target_fraction=-0.5), "policy", "short sale"),
    ({**GOOD, "risk_level": "extreme"}, "risk", "blocked"),
    ({**GOOD, "risk_score": 0.9}, "risk", "risk score"),
    (Decision(**{**GOOD, "stop_loss": 0.1}, target_fraction=0.5), "risk", "risks 5.00%"),
])
def test_each_layer_refuses_with_its_reason(md, payload, layer, reason):
    out = SignalValidator(["TEST"])(payload, md.view(200))
    assert not out.accepted and out.layer == layer and reason in out.reason, out


def test_risk_state_blocks_entries_not_exits(md):
    sv = SignalValidator(["TEST"])
    for state in ("HALTED", "REDUCING"):
        flat = md.view(200, AccountState(cash=1e5, equity=1e5, risk_state=state))
        long = md.view(200, AccountState(cash=1e4, equity=1e5, position=100, position_frac=0.9, risk_state=state))
        assert sv(GOOD, flat).layer == "risk" and state in sv(GOOD, flat).reason
        assert sv({**GOOD, "action": "SELL"}, long).accepted                 # exits are always allowed
        assert sv(GOOD, long).accepted                                       # already long: BUY adds nothing
    assert sv(GOOD, md.view(200)).accepted and sv({**GOOD, "action": "HOLD"}, md.view(200)).accepted


class _AlwaysBuy:
    name = "always_buy"
    def decide(self, view):
        return Decision(action="BUY", confidence=0.8, horizon=4, stop_loss=0.02, take_profit=0.04)


def test_statistics_layer_sees_only_resolved_calls():
    bars = synthetic_bars(400, seed=8, drift=-0.002, vol=0.004)
    t = 200
    noised = bars.copy()
    noised.iloc[t + 1:] = synthetic_bars(400, seed=80, drift=0.01, vol=0.001, price=float(bars["close"].iloc[t])).iloc[t + 1:].to_numpy()
    outs = []
    for b in (bars, noised):
        sv = SignalValidator(["TEST"], ValidatorPolicy(min_resolved=15, window=15))
        run_agent(_AlwaysBuy(), MarketData(b, "TEST", min_history=60), end=t, validator=sv, execute=False)
        outs.append(sv.table())
        r = sv.ledger.resolved()
        assert (r["resolved_at"] <= b.index[t]).all()
        assert (r["resolved_at"] == r["ts"] + 4 * pd.offsets.BDay()).all()
    pd.testing.assert_frame_equal(outs[0], outs[1])
    assert (outs[0]["layer"] == "statistics").any()                           # the losing record was judged


def test_calibrated_confidence_sizes_through_kelly_with_2pct_cap():
    bars = synthetic_bars(500, seed=12, drift=0.0005, vol=0.01)
    md = MarketData(bars, "TEST", min_history=100)
    sv = SignalValidator(["TEST"], ValidatorPolicy(min_resolved=10_000), calibration="beta", min_calibration=30)

    class Flip:
        name = "flip"
        def decide(self, view):   # in and out every few bars so many entries get sized
            n = len(view)
            return Decision(action="BUY" if (n // 3) % 2 == 0 else "SELL", confidence=0.55 + 0.4 * ((n * 7) % 10) / 10,
                            horizon=3, stop_loss=0.03, take_profit=0.06)

    run = run_agent(Flip(), md, validator=sv, p_of=sv.calibrated,
                    broker=PaperBroker(["TEST"], 100_000.0, limits=RiskLimits.permissive()))
    d = run.decisions
    entries = d[(d["action"] == "BUY") & (d["position_before"] == 0) & (d["n_orders"] > 0)]
    assert len(entries) > 20
    assert (d["p"] != d["confidence"]).any()                                  # the calibrated p, not the stated one
    fills = run.broker.fills().set_index("order_id")
    eq = run.equity()
    checked = 0
    for _, row in entries.iterrows():
        oid = int(row["order_ids"].split(",")[0])
        qty = fills.loc[oid, "qty"]
        i = bars.index.get_loc(row["ts"])
        equity_t = eq.iloc[i]
        dd = 1 - equity_t / eq.iloc[: i + 1].max()                              # drawdown-aware: shrinks with the drawdown
        k = kelly_size(equity_t, row["close"], 0.03 * row["close"], row["p"], 2.0, drawdown=dd)
        assert qty == pytest.approx(k.qty, rel=1e-9)
        assert qty * 0.03 * row["close"] <= 0.02 * equity_t + 1e-6             # at most 2% of equity at the stop
        checked += 1
    assert checked == len(entries)
    with pytest.raises(ValueError, match="0.02"):
        calibrated_kelly_size(Decision(**GOOD), sv.calibrator(), 1e5, 10.0, risk_per_trade=0.03)


def test_ensemble_weights_ignore_unresolved_calls():
    ts = pd.bdate_range("2024-01-01", periods=40)
    rng = np.random.default_rng(0)
    rows = []
    for a, skill in (("good", 0.9), ("bad", 0.5)):
        for i in range(30):
            win = float(rng.uniform() < 0.7)
            rows.append(dict(agent=a, resolved_at=ts[i + 5], p=skill if win else 1 - skill, win=win))
    res = pd.DataFrame(rows)
    w = ensemble_weights(res, ts, window=10, min_periods=5)
    assert np.allclose(w.sum(axis=1), 1)
    assert (w.loc[ts[:10]] == 0.5).all().all()                                 # < 5 calls resolved before: prior
    assert (w.loc[ts[15:], "good"] > 0.5).all()
    # a call resolved at t does not inform the weight at t
    cut = res[res["resolved_at"] < ts[20]]
    pd.testing.assert_series_equal(ensemble_weights(cut, ts[20:21], window=10, min_periods=5).iloc[0],
                                   w.loc[ts[20]], check_names=False)
