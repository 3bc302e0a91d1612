"""Point-in-time views and baseline agents: every way of peeking is refused with LookAheadError, honest
agents decide bit-identically when every bar after t is replaced by noise, and the forecast-driven and
volatility-targeting baselines follow their forecasters (fitted on data up to t only)."""
import numpy as np
import pandas as pd
import pytest

from ptrader.agents import (BuyAndHold, Decision, ForecastAgent, MACrossover, MarketData, Momentum, RandomAgent,
                            VolTargetAgent, run_agent, synthetic_bars)
from ptrader.broker import PaperBroker, RiskLimits
from ptrader.errors import LookAheadError
from ptrader.forecast import GARCHForecaster, NaiveForecaster, SAMoSSAForecaster, SARIMAXForecaster, SSAForecaster


def _noised_after(bars: pd.DataFrame, t: int, seed: int = 99) -> pd.DataFrame:
    "Same bars up to position t; afterwards an unrelated positive random walk (a different future)."
    other = synthetic_bars(len(bars), seed=seed, price=float(bars["close"].iloc[t]) * 3.0)
    out = bars.copy()
    out.iloc[t + 1:] = other.iloc[t + 1:].to_numpy()
    return out


class _Peek:
    "An agent that tries one way of reading the future through the view."
    def __init__(self, how, name):
        self.how, self.name = how, name
    def decide(self, view):
        self.how(view)
        return Decision.hold(None)


BARS = synthetic_bars(420, seed=5)
FULL_FIT = NaiveForecaster("drift").fit(np.log(BARS["close"]))
PEEKS = {
    "negative_index": lambda v: v.bars[-1],
    "iloc_last_row": lambda v: v.bars.iloc[-1],
    "loc": lambda v: v.bars.loc[v.t],
    "values": lambda v: v.close.values,
    "shift_minus_one": lambda v: v.close.shift(-1),
    "frame_shift_minus_one": lambda v: v.features.shift(-1),
    "negative_lag": lambda v: v.bars.lag(-1),
    "open_ended_slice": lambda v: v.close[v.t:],
    "positional_slice": lambda v: v.bars[0:10_000],
    "next_timestamp": lambda v: v.bars[v.t + pd.offsets.BDay(1)],
    "slice_past_t": lambda v: v.bars[v.t - pd.offsets.BDay(5): v.t + pd.offsets.BDay(5)],
    "private_storage": lambda v: v._data,
    "frame_storage": lambda v: v.bars._df,
    "series_storage": lambda v: v.close._s,
    "vars_of_view": lambda v: vars(v)["_data"],
    "dict_of_frame": lambda v: v.bars.__dict__,
    "iterate": lambda v: list(v.close),
    "full_series_forecaster": lambda v: v.forecast(FULL_FIT, 5),
}


@pytest.mark.parametrize("kind", sorted(PEEKS))
def test_peeking_agent_is_caught(kind):
    md = MarketData(BARS, "TEST", min_history=100)
    with pytest.raises(LookAheadError):
        run_agent(_Peek(PEEKS[kind], kind), md, start=150, end=160)


class _FutureReader:
    "Reads the future from OUTSIDE the view (a closure over the full bars): the noise test must expose it."
    name = "future_reader"
    def __init__(self, bars): self._bars = bars
    def decide(self, view):
        nxt = self._bars.index.get_loc(view.t) + 1
        up = nxt < len(self._bars) and self._bars["close"].iloc[nxt] > view.close.lag(0)
        return Decision(action="BUY" if up else "SELL", confidence=1.0)


def _decisions(agent_factory, bars, t, cadence=1, **md_kw):
    md = MarketData(bars, "TEST", **md_kw)
    run = run_agent(agent_factory(bars), md, start=md_kw.get("min_history", 252) - 1, end=t, cadence=cadence)
    return run.decisions, run.equity()


HONEST = {
    "buy_and_hold": lambda b: BuyAndHold(),
    "ma_crossover": lambda b: MACrossover(10, 40),
    "momentum": lambda b: Momentum(126, 10),
    "random": lambda b: RandomAgent({"BUY": 0.4, "SELL": 0.3, "HOLD": 0.3}, seed=3),
    "forecast_ssa": lambda b: ForecastAgent("ssa"),
}


@pytest.mark.parametrize("name", sorted(HONEST))
def test_honest_agent_bit_identical_under_future_noise(name):
    t = 330
    kw = dict(min_history=150, refit_every=40, forecasters={"ssa": SSAForecaster(L=30, rank=3, n_boot=20)})
    cadence = 6 if name.startswith("forecast") else 1          # SSA forecasts cost ~0.1 s each
    d1, e1 = _decisions(HONEST[name], BARS, t, cadence, **kw)
    d2, e2 = _decisions(HONEST[name], _noised_after(BARS, t), t, cadence, **kw)
    assert len(d1) == len(range(149, t + 1, cadence))
    pd.testing.assert_frame_equal(d1, d2, check_exact=True)
    pd.testing.assert_series_equal(e1, e2, check_exact=True)


def test_noise_test_exposes_an_agent_reading_the_future():
    "The same comparison has power: an agent fed the future from outside the view decides differently."
    t = 330
    d1, _ = _decisions(_FutureReader, BARS, t, min_history=150)
    d2, _ = _decisions(_FutureReader, _noised_after(BARS, t), t, min_history=150)
    assert not d1.equals(d2)


def test_features_at_t_ignore_the_future():
    t = 300
    md1, md2 = MarketData(BARS, "X"), MarketData(_noised_after(BARS, t), "X")
    pd.testing.assert_frame_equal(md1.view(t).features.window(), md2.view(t).features.window(), check_exact=True)


@pytest.fixture(scope="module")
def sp500():
    from ptrader.data import validate_bars, load_bundled
    raw, src, _ = load_bundled("SP500")
    bars = validate_bars(raw, source=src, symbol="SP500").bars
    return bars.loc["2005-01-01":"2007-12-31"]


@pytest.mark.parametrize("model,forecaster", [
    ("ssa", SSAForecaster(L=60, rank=4, n_boot=20)),
    ("samossa", SAMoSSAForecaster(L=20, rank=3)),
    ("sarimax", SARIMAXForecaster(order=(1, 1, 0))),
])
def test_forecast_agent_follows_its_forecaster(sp500, model, forecaster):
    md = MarketData(sp500, "SP500", forecasters={model: forecaster}, min_history=252, refit_every=63, horizon=5)
    run = run_agent(ForecastAgent(model), md, cadence=21)
    d = run.decisions
    assert len(d) > 10 and set(d["action"]) <= {"BUY", "SELL", "HOLD"} and (d["action"] != "HOLD").sum() > 10
    for _, row in d[d['rationale'] != 'no forecast yet'].sample(4, random_state=0).iterrows():
        i = sp500.index.get_loc(row["ts"])
        used = md.fitted(model, i)                            # last (converged) refit at or before i
        r = sp500.index.get_loc(used.index_[-1])
        assert r <= i and (i - r < 63 or md.fit_failures)
        ref = type(forecaster)(**{k: v for k, v in vars(forecaster).items() if not k.startswith("_") and not k.endswith("_")})
        ref.fit(np.log(sp500["close"].iloc[: r + 1]))
        fc = ref.forecast(5, y=np.log(sp500["close"].iloc[: i + 1]))
        change = fc["mean"].iloc[-1] - np.log(sp500["close"].iloc[i])
        assert row["action"] == ("BUY" if change > 0 else "SELL")
        assert 0.5 <= row["confidence"] <= 1.0


def test_vol_target_agent_scales_with_garch_vol(sp500):
    md = MarketData(sp500, "SP500", min_history=252)
    agent = VolTargetAgent(GARCHForecaster(), target_vol=0.10, refit_every=126)
    run = run_agent(agent, md, cadence=21, broker=PaperBroker(["SP500"], 100_000.0, limits=RiskLimits.permissive()))
    d = run.decisions
    assert (d["action"] == "BUY").all() and d["target_fraction"].between(0, 1).all()
    # reference: GARCH(1,1) fitted with arch on the same returns gives the same one-step volatility
    from arch import arch_model
    i = sp500.index.get_loc(d["ts"].iloc[0])
    y = np.log(sp500["close"].iloc[: i + 1]).diff().iloc[1:]
    res = arch_model(y * 100, mean="Constant", vol="GARCH", p=1, q=1, dist="normal", rescale=False).fit(disp="off")
    sig = np.sqrt(res.forecast(horizon=1, reindex=False).variance.to_numpy()[-1, 0] / 1e4 * 252)
    assert d["target_fraction"].iloc[0] == pytest.approx(min(1.0, 0.10 / sig), rel=1e-6)
    # position value follows the target fraction (rebalanced within the band)
    assert len(run.broker.fills()) >= 2


class _Approve:
    "A validator that accepts every decision."
    def __call__(self, d, view):
        from types import SimpleNamespace
        return SimpleNamespace(accepted=True, layer="all", reason=None)


class _AsksForbidden:
    "Buys at its first decision asking to override the limits, asks (on a HOLD) to bypass the risk check at its third."
    name = "asks_forbidden"
    def __init__(self): self.n = 0
    def decide(self, view):
        self.n += 1
        if self.n == 1: return Decision(action="BUY", confidence=0.6, target_fraction=0.2, symbol=view.symbol, flags=("override_limits",))
        return Decision(action="HOLD", confidence=0.5, symbol=view.symbol, flags=("bypass_risk_check",) if self.n == 3 else ())


def test_flags_column_feeds_the_compliance_forbidden_decision_check(tmp_path):
    from ptrader.audit import AuditTrail, agent_run_entries
    from ptrader.compliance import PRESETS, ComplianceMonitor
    policy = PRESETS["conservative"]
    data = MarketData(synthetic_bars(80, seed=3), "SYN", min_history=30)
    run = run_agent(_AsksForbidden(), data, start=40, end=50, validator=_Approve(),
                    broker=PaperBroker(["SYN"], 100_000.0, limits=policy.risk_limits()))
    d = run.decisions
    assert list(d["flags"].iloc[:3]) == [["override_limits"], [], ["bypass_risk_check"]] and len(run.broker.fills()) >= 1
    trail = AuditTrail(tmp_path / "a.duckdb"); trail.record_many(agent_run_entries(run, run_id="r"))
    issues = {(i.type, i.severity) for i in ComplianceMonitor(policy, trail).analyze_period().issues}
    assert ("forbidden_decision_executed", "CRITICAL") in issues          # the flagged BUY filled
    assert ("forbidden_decision_requested", "WARNING") in issues          # the flagged HOLD ordered nothing
    # without the flags the same decisions raise neither
    clean = run.decisions.assign(flags=[[] for _ in range(len(d))])
    from ptrader.agents import AgentRun
    trail2 = AuditTrail(tmp_path / "b.duckdb"); trail2.record_many(agent_run_entries(AgentRun(clean, run.broker, run.params, 0.0), run_id="r"))
    types = {i.type for i in ComplianceMonitor(policy, trail2).analyze_period().issues}
    assert not types & {"forbidden_decision_executed", "forbidden_decision_requested"}
