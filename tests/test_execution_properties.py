"""Property tests (hypothesis) for the backtester and the paper broker.

* cash + positions reconcile with the fills and fees;
* no fill at a price outside its bar's range widened by the slippage;
* no fill ever breaks a risk limit (position fraction, short ban, cash >= 0).
"""
import math

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, event, given, settings, strategies as st

from ptrader.broker import (EventKind, FixedBpsSlippage, Order, OrderType, PaperBroker, PercentCommission,
                            PerShareCommission, RiskLimits, TimeInForce, VolumeShareSlippage)
from ptrader.execution import backtest_signals

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _bars(seed, n, gap):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.015, n)))
    o = np.r_[100.0, c[:-1]] * np.exp(rng.normal(0, 0.002 + gap, n))
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.008, n)))
    l = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.008, n)))
    v = rng.integers(0, 5_000, n).astype(float)
    return pd.DataFrame({"open": o, "high": h, "low": l, "close": c, "volume": v},
                        index=pd.date_range("2020-01-01", periods=n, freq="B", name="ts"))


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(5, 300), gap=st.sampled_from([0.0, 0.02]),
       fees=st.floats(0, 50), slip=st.floats(0, 30), sl=st.one_of(st.none(), st.floats(0.005, 0.2)),
       tp=st.one_of(st.none(), st.floats(0.005, 0.3)), size=st.floats(0.05, 1.0), p=st.floats(0.01, 0.5),
       seb=st.booleans())
def test_backtest_reconciles(seed, n, gap, fees, slip, sl, tp, size, p, seb):
    bars = _bars(seed, n, gap)
    rng = np.random.default_rng(seed + 1)
    en = pd.Series(rng.random(n) < p, index=bars.index); ex = pd.Series(rng.random(n) < p, index=bars.index)
    r = backtest_signals(bars, en, ex, fees_bps=fees, slippage_bps=slip, sl_stop=sl, tp_stop=tp, size=size,
                         stop_on_entry_bar=seb)
    assert (r.cash >= -1e-9).all()
    np.testing.assert_allclose(r.equity, r.cash + r.position * bars.close, rtol=1e-12)
    # replay the orders: cash follows fills and fees exactly
    cash = 100_000.0
    for _, o in r.orders.iterrows():
        cash += -o.value - o.fees if o.side == "buy" else o.value - o.fees
    np.testing.assert_allclose(r.cash.iloc[-1], cash, rtol=1e-10, atol=1e-6)
    np.testing.assert_allclose(r.equity.iloc[-1], 100_000 + r.trades.pnl.sum(), rtol=1e-10, atol=1e-6)
    if len(r.orders):
        b = bars.loc[r.orders.time]
        s = slip / 1e4
        assert (r.orders.price.to_numpy() >= b.low.to_numpy() * (1 - s) * (1 - 1e-12)).all()
        assert (r.orders.price.to_numpy() <= b.high.to_numpy() * (1 + s) * (1 + 1e-12)).all()
        # entries only at an open (no look-ahead within the bar)
        buys = r.orders[r.orders.side == "buy"]
        np.testing.assert_allclose(buys.price.to_numpy(), bars.open.loc[buys.time].to_numpy() * (1 + s), rtol=1e-12)


_order = st.tuples(st.sampled_from(["A", "B", "C"]), st.sampled_from([1, -1]),
                   st.one_of(st.floats(-5, 400), st.just(float("nan"))),
                   st.sampled_from(list(OrderType)), st.floats(0.85, 1.15), st.floats(0.8, 1.2),
                   st.sampled_from(list(TimeInForce)), st.floats(0.01, 0.2))


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(3, 40), gap=st.sampled_from([0.0, 0.03]),
       script=st.lists(st.lists(_order, max_size=4), min_size=3, max_size=40),
       slip_kind=st.sampled_from(["fixed", "volume"]), comm_kind=st.sampled_from(["pct", "share"]),
       max_pos=st.floats(0.1, 1.0), brackets=st.booleans())
def test_broker_invariants(seed, n, gap, script, slip_kind, comm_kind, max_pos, brackets):
    syms = ["A", "B"]
    data = {s: _bars(seed + i, n, gap) for i, s in enumerate(syms)}
    slip = FixedBpsSlippage(7.0) if slip_kind == "fixed" else VolumeShareSlippage(0.1, 0.1)
    comm = PercentCommission(5.0, 1.0) if comm_kind == "pct" else PerShareCommission(0.01, 1.0)
    limits = RiskLimits(max_position_frac=max_pos, max_gross_exposure_frac=1.0, price_collar=0.2)
    b = PaperBroker(syms, 100_000.0, slippage=slip, commission=comm, limits=limits)
    idx = data["A"].index
    fills_checked = 0
    for t in range(n):
        ts = idx[t]
        before_cash, before_qty = b.portfolio.cash, {s: b.portfolio.qty(s) for s in syms}
        before_eq = b.portfolio.equity if t else 100_000.0
        n_ev = len(b.log)
        b.process_bar(ts, {s: data[s].iloc[t].to_dict() for s in syms})
        fills = [e for e in list(b.log)[n_ev:] if e.kind == EventKind.FILL]
        cash = before_cash; qty = dict(before_qty)
        for f in fills:
            bar = data[f.symbol].iloc[t]
            worst = 7e-4 if slip_kind == "fixed" else 0.1 * 0.1 ** 2
            assert bar.low * (1 - worst) * (1 - 1e-12) <= f.price <= bar.high * (1 + worst) * (1 + 1e-12)
            cash -= f.side * f.qty * f.price + f.fees
            qty[f.symbol] += f.side * f.qty
            assert cash >= -1e-6                                   # no margin: cash never negative
            assert qty[f.symbol] >= -1e-9                          # no short without allow_short
            grows = abs(qty[f.symbol]) > abs(qty[f.symbol] - f.side * f.qty) + 1e-12
            if grows:                                              # limits judged at the fill price
                assert abs(qty[f.symbol]) * f.price <= max_pos * before_eq * (1 + 1e-9) + 1e-6 or t == 0
            fills_checked += 1
        assert math.isclose(b.portfolio.cash, cash, rel_tol=1e-10, abs_tol=1e-6)
        for s in syms: assert math.isclose(b.portfolio.qty(s), qty[s], rel_tol=1e-10, abs_tol=1e-9)
        mark = sum(b.portfolio.qty(s) * data[s].close.iloc[t] for s in syms)
        assert math.isclose(b.portfolio.equity, b.portfolio.cash + mark, rel_tol=1e-12, abs_tol=1e-6)
        for (sym, side, q, typ, lf, sf, tif, trail) in (script[t] if t < len(script) else []):
            last = data["A" if sym == "C" else sym].close.iloc[t]
            if brackets and typ == OrderType.MARKET and side == 1:
                b.submit_bracket(sym, side, q, ts, stop_loss=last * 0.95, take_profit=last * 1.08)
            else:
                b.submit(Order(sym, side, q, typ, limit_price=last * lf, stop_price=last * sf, trail=trail, tif=tif), ts)
    event(f"broker fills: {'some' if fills_checked else 'none'}")
    # total reconciliation: cash = init - sum(side * qty * price) - fees
    allf = b.log.of(EventKind.FILL)
    assert math.isclose(b.portfolio.cash, 100_000 - sum(f.side * f.qty * f.price + f.fees for f in allf),
                        rel_tol=1e-10, abs_tol=1e-6)
    assert math.isclose(b.portfolio.fees, sum(f.fees for f in allf), rel_tol=1e-12, abs_tol=1e-9)
    # every rejection names its rule; rejected orders never fill
    rejected = {e.order_id for e in b.log.of(EventKind.REJECTED)}
    assert all(e.rule for e in b.log.of(EventKind.REJECTED))
    pre_rejected = {e.order_id for e in b.log.of(EventKind.REJECTED) if not (e.reason or "").startswith("at fill")}
    assert not pre_rejected & {f.order_id for f in allf}
