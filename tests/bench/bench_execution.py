"""Speed of ptrader.execution against vectorbt and backtrader, measured in the same run.

Run:  python tests/bench/bench_execution.py [--bars 1000000] [--bt-bars 20000] [--repeat 3]

1. One symbol, N bars, random entries/exits with a 2% stop-loss, 4% take-profit and 1 bp fees:
   ptrader `backtest_signals` (full result object) and its kernel `simulate_signals_nb` vs vectorbt
   `Portfolio.from_signals` (equivalent fill mapping, see tests/test_execution_vectorbt.py), both warmed
   (compiled) first; best of `--repeat`. backtrader runs the same kind of rules (next-open market
   entries, bracket stop/limit exits, exit signals, percent commission) on `--bt-bars` bars (it is a
   pure-Python event loop); its levels are set from the signal bar's close and it sizes at 99% of cash,
   so its trades are comparable in workload, not identical. Its time is scaled per bar for the ratio.
2. 100 configurations over 10,000 bars: ptrader `backtest_signals_grid` vs one vectorbt call with
   100 columns.

ptrader's times include its risk layer (every order through the `RiskManager` rules, circuit breakers
updated at every close); the limits are `RiskLimits.permissive()` so they never bind and both engines
make the same trades.
"""
import argparse
import time

import numpy as np
import pandas as pd

from ptrader.broker import RiskLimits, risk_calendar, risk_limits_array
from ptrader.execution import backtest_signals, backtest_signals_grid, simulate_signals_nb


def bars_(n, seed=0):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.r_[100.0, c[:-1]] * np.exp(rng.normal(0, 0.002, n))
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.005, n)))
    l = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.005, n)))
    idx = pd.date_range("1990-01-01", periods=n, freq="min", name="ts")
    return pd.DataFrame({"open": o, "high": h, "low": l, "close": c, "volume": 1e6}, index=idx)


def best(f, repeat):
    ts = []
    for _ in range(repeat):
        t = time.perf_counter(); out = f(); ts.append(time.perf_counter() - t)
    return min(ts), out


def vbt_run(vbt, b, en, ex, sl, tp, fees):
    return vbt.Portfolio.from_signals(close=b.close, open=b.open, high=b.high, low=b.low, price=b.open,
                                      entries=en.shift(1, fill_value=False), exits=ex.shift(1, fill_value=False),
                                      size=1.0, size_type="percent", fees=fees, sl_stop=sl, tp_stop=tp,
                                      stop_entry_price="fillprice", stop_exit_price="stopmarket", init_cash=100_000.0)


def bt_run(b, en, ex, sl, tp, fees):
    import backtrader as bt

    class Sig(bt.Strategy):
        def __init__(self): self.i = 0; self.o = None
        def next(self):
            i = len(self) - 1
            if not self.position and en.iloc[i] and not ex.iloc[i]:
                px = self.data.close[0]  # sizing reference; fills at the next open
                size = 0.99 * self.broker.getcash() / px
                self.buy_bracket(size=size, exectype=bt.Order.Market, stopprice=px * (1 - sl), limitprice=px * (1 + tp))
            elif self.position and ex.iloc[i] and not en.iloc[i]:
                for o in list(self.broker.get_orders_open()): self.cancel(o)
                self.close()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(bt.feeds.PandasData(dataname=b))
    cerebro.addstrategy(Sig)
    cerebro.broker.setcash(100_000.0); cerebro.broker.setcommission(commission=fees)
    return cerebro.run()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bars", type=int, default=1_000_000)
    ap.add_argument("--bt-bars", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    try:
        import vectorbt as vbt
    except ImportError:
        vbt = None
    b = bars_(a.bars)
    rng = np.random.default_rng(1)
    en = pd.Series(rng.random(a.bars) < 0.01, index=b.index); ex = pd.Series(rng.random(a.bars) < 0.01, index=b.index)
    sl, tp, fees = 0.02, 0.04, 1e-4
    # the risk rules run on every order; permissive limits keep them from binding so that both engines
    # make the same trades (with live limits a random walk soon sits in REDUCING and trades less)
    kw = dict(fees_bps=1.0, sl_stop=sl, tp_stop=tp, risk=RiskLimits.permissive())
    backtest_signals(b.iloc[:1000], en.iloc[:1000], ex.iloc[:1000], **kw)  # warm
    t_api, r = best(lambda: backtest_signals(b, en, ex, **kw), a.repeat)
    arrs = [np.ascontiguousarray(b[c].to_numpy()) for c in ("open", "high", "low", "close")]
    e_, x_ = en.to_numpy(), ex.to_numpy()
    ts_ns, day, week = risk_calendar(b.index); none = np.zeros(a.bars, dtype=bool)
    lim = risk_limits_array(RiskLimits.permissive())
    t_nb, _ = best(lambda: simulate_signals_nb(*arrs, e_, x_, 1e5, fees, 0.0, sl, tp, 1.0, True,
                                               ts_ns, day, week, none, none, lim, False), a.repeat)
    print(f"[1] one symbol, {a.bars:,} bars, SL/TP + fees; trades={len(r.trades)}")
    print(f"    ptrader backtest_signals (result object): {t_api * 1e3:9.1f} ms")
    print(f"    ptrader simulate_signals_nb (kernel):     {t_nb * 1e3:9.1f} ms")
    if vbt is not None:
        vbt_run(vbt, b.iloc[:1000], en.iloc[:1000], ex.iloc[:1000], sl, tp, fees).value()  # warm
        t_v, pf = best(lambda: vbt_run(vbt, b, en, ex, sl, tp, fees), a.repeat)
        print(f"    vectorbt from_signals (simulation only):  {t_v * 1e3:9.1f} ms   ratio vectorbt/ptrader = {t_v / t_api:.2f}x (API), {t_v / t_nb:.2f}x (kernel)")
        print(f"    trades: ptrader {len(r.trades)}, vectorbt {len(pf.trades.records)}")
        t_v2, _ = best(lambda: vbt_run(vbt, b, en, ex, sl, tp, fees).value(), 1)
        print(f"    vectorbt from_signals + value():          {t_v2 * 1e3:9.1f} ms")
    else:
        print("    vectorbt not importable: skipped")
    try:
        n = a.bt_bars
        t_bt, _ = best(lambda: bt_run(b.iloc[:n], en.iloc[:n], ex.iloc[:n], sl, tp, fees), 1)
        per_bar = t_bt / n
        print(f"    backtrader, {n:,} bars: {t_bt:.2f} s -> {per_bar * 1e6:.1f} us/bar; scaled to {a.bars:,} bars: "
              f"{per_bar * a.bars:.1f} s; ratio backtrader/ptrader = {per_bar * a.bars / t_api:.0f}x (API)")
    except ImportError:
        print("    backtrader not importable: skipped")

    # [2] grid
    K, T = 100, 10_000
    g = bars_(T, seed=2)
    E = pd.DataFrame(rng.random((T, K)) < 0.02, index=g.index); X = pd.DataFrame(rng.random((T, K)) < 0.02, index=g.index)
    sls = np.linspace(0.01, 0.05, K); tps = np.linspace(0.02, 0.10, K)
    free = RiskLimits.permissive()
    backtest_signals_grid(g.iloc[:100], E.iloc[:100], X.iloc[:100], fees_bps=1.0, sl_stop=sls, tp_stop=tps, risk=free)  # warm
    t_g, gr = best(lambda: backtest_signals_grid(g, E, X, fees_bps=1.0, sl_stop=sls, tp_stop=tps, risk=free), a.repeat)
    print(f"[2] grid: {K} configurations x {T:,} bars")
    print(f"    ptrader backtest_signals_grid:            {t_g * 1e3:9.1f} ms")
    if vbt is not None:
        def vg():
            return vbt.Portfolio.from_signals(close=g.close, open=g.open, high=g.high, low=g.low, price=g.open,
                                              entries=E.shift(1, fill_value=False), exits=X.shift(1, fill_value=False),
                                              size=1.0, size_type="percent", fees=1e-4, sl_stop=sls, tp_stop=tps,
                                              stop_entry_price="fillprice", stop_exit_price="stopmarket", init_cash=100_000.0)
        vbt.Portfolio.from_signals(close=g.close.iloc[:100], entries=E.iloc[:100], exits=X.iloc[:100], sl_stop=sls, tp_stop=tps,
                                   open=g.open.iloc[:100], high=g.high.iloc[:100], low=g.low.iloc[:100], price=g.open.iloc[:100],
                                   size=1.0, size_type="percent", fees=1e-4, stop_entry_price="fillprice")  # warm
        t_vg, pf = best(vg, a.repeat)
        print(f"    vectorbt from_signals, {K} columns:       {t_vg * 1e3:9.1f} ms   ratio vectorbt/ptrader = {t_vg / t_g:.2f}x")


if __name__ == "__main__":
    main()
