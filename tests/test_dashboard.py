"""`ptrader.dashboard` without a browser: `recompute` against references computed here from the raw audit trail,
a fresh `ComplianceMonitor` read of the file, closed forms (capped Kelly) and the risk rules' own statements; the
risk score against a direct percentile-rank loop; settings through TOML and back; the widgets against `recompute`;
the recompute time; `ptrader dashboard`'s refusals."""
import math
import statistics
import time

import numpy as np
import pandas as pd
import pytest

from ptrader.audit import AuditTrail
from ptrader.broker import RiskAction, RiskLimits
from ptrader.compliance import PRESETS, ComplianceMonitor, load_policy
from ptrader.dashboard import (Dashboard, cli_main, DashboardData, DashboardSettings, TrailSnapshot, load_settings, recompute,
                               record_example_run, risk_path, save_settings, vol_risk_score)
from ptrader.data import Warehouse
from ptrader.execution import backtest_signals


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dash")
    wh = Warehouse(tmp / "w.duckdb"); wh.ingest_bundled(["SP500"]); wh.close()
    bars = Warehouse(tmp / "w.duckdb", read_only=True).bars("SP500")
    record_example_run(bars.loc["2007":"2010"], tmp / "audit.duckdb")
    data = DashboardData.from_paths(tmp / "w.duckdb", tmp / "audit.duckdb")
    ev = AuditTrail(tmp / "audit.duckdb").events()
    return dict(tmp=tmp, bars=bars, data=data, ev=ev)


def _payloads(ev, kind):
    return pd.DataFrame(list(ev.loc[ev["kind"] == kind, "payload"]))


def test_risk_score_is_a_trailing_percentile_rank(world):
    c = world["bars"]["close"]
    rs = vol_risk_score(c)
    vol = c.pct_change().rolling(20).std().to_numpy()
    for t in (80, 300, 2000, len(c) - 1):   # pandas' average-tie percentile rank, written out
        w = vol[max(0, t - 251): t + 1]; w = w[~np.isnan(w)]
        ref = (np.sum(w < vol[t]) + (np.sum(w == vol[t]) + 1) / 2) / len(w)
        assert rs.iloc[t] == pytest.approx(ref, rel=1e-12)
    assert rs.iloc[:20 + 59].isna().all()


def test_compliance_counts_match_a_fresh_read_of_the_trail(world):
    path = world["tmp"] / "audit.duckdb"
    for cap in (0.3, 0.75, 0.95):
        s = DashboardSettings().with_values(max_risk_score=cap, max_order_notional=60_000.0)
        o = recompute(world["data"], s)
        ref = ComplianceMonitor(s.policy, AuditTrail(path)).analyze_period()
        assert o.counts == ref.counts() and o.counts["CRITICAL"] > 0


def test_risk_score_issues_and_rejected_orders_from_the_raw_events(world):
    ev = world["ev"]
    dec, fills, orders = _payloads(ev, "decision"), _payloads(ev, "fill"), _payloads(ev, "order")
    filled = set(fills["order_id"])
    executed = dec[dec["order_ids"].map(lambda ids: bool(set(ids) & filled))]
    for cap in (0.4, 0.8):
        o = recompute(world["data"], DashboardSettings().with_values(max_risk_score=cap))
        risky = executed[executed["risk_score"] > cap]
        assert sum(i.type == "risk_score_exceeded" for i in o.report.critical) == len(risky) > 0
        want = sorted(i for ids in risky["order_ids"] for i in ids if i in set(orders["order_id"]))
        got = o.rejected.loc[o.rejected["rule"] == "risk_score_exceeded", "order_id"]
        assert sorted(got) == want


def test_a_lower_notional_cap_rejects_the_orders_that_were_sent_over_it(world):
    ev = world["ev"]
    dec, fills, orders = _payloads(ev, "decision"), _payloads(ev, "fill"), _payloads(ev, "order")
    close = {o: c for ids, c in zip(dec["order_ids"], dec["close"]) for o in ids}
    cap = 70_000.0
    fill_value = fills.assign(v=fills["qty"].abs() * fills["price"]).groupby("order_id")["v"].sum()
    sent = orders.set_index("order_id")["qty"].abs() * pd.Series(close)
    want = sorted(o for o in fill_value.index if fill_value[o] > cap and sent.get(o, math.nan) > cap)
    o = recompute(world["data"], DashboardSettings().with_values(max_order_notional=cap, max_risk_score=1.0))
    assert sorted(o.rejected.loc[o.rejected["rule"] == "notional_exceeded", "order_id"]) == want and want


def test_entry_fraction_is_capped_fractional_kelly(world):
    d = world["data"]
    full = d.p - (1 - d.p) / d.b
    for k, rpt in ((0.5, 0.02), (1.0, 0.005), (0.1, 0.02)):
        o = recompute(d, DashboardSettings().with_values(kelly_multiplier=k, risk_per_trade=rpt))
        assert o.fraction == pytest.approx(min(max(k * full, 0.0), rpt / d.params["sl_stop"], 1.0), rel=1e-12)
    assert recompute(d, DashboardSettings().with_values(kelly_multiplier=0.0)).backtest.trades.empty   # no edge used: no trade


def test_backtest_is_the_engine_under_the_merged_limits(world):
    d = world["data"]
    s = DashboardSettings().with_values(max_risk_score=0.6, dd_warn=0.02, dd_halt=0.03, daily_loss=0.01,
                                        weekly_loss=0.02, review_bars=10, price_collar=0.2, max_order_notional=15_000.0)
    o = recompute(d, s)
    limits = RiskLimits(dd_warn=0.02, dd_halt=0.03, daily_loss=0.01, weekly_loss=0.02, review_bars=10,
                        max_order_notional=15_000.0, price_collar=0.10)   # the policy's 0.2 collar cannot loosen the broker's 0.10
    entries = d.entries & ~(d.risk_score > 0.6)
    ref = backtest_signals(d.bars, entries, d.exits, sl_stop=0.05, fees_bps=1.0, slippage_bps=1.0, size=o.fraction,
                           risk=limits, symbol="SP500")
    pd.testing.assert_series_equal(o.backtest.equity, ref.equity)
    rej = ref.risk_events.loc[ref.risk_events["kind"] == "rejected", "rule"].value_counts()
    assert o.rejections.drop("max_risk_score").to_dict() == rej.to_dict()
    assert o.rejections["max_risk_score"] == int((d.entries & (d.risk_score > 0.6)).sum())


def test_a_drawdown_halt_without_review_ends_trading(world):
    "HALTED with no review lasts to the end: after the halt's close-all fill the book stays flat (RiskLimits' rule)."
    o = recompute(world["data"], DashboardSettings().with_values(dd_warn=0.01, dd_halt=0.015, review_bars=0,
                                                                  daily_loss=0.2, weekly_loss=0.3, kelly_multiplier=1.0))
    bt = o.backtest
    st = bt.risk_events[(bt.risk_events["kind"] == "state_change") & (bt.risk_events["state_to"] == "HALTED")]
    assert len(st) == 1 and bt.params["risk"]["on_halt"] == RiskAction.CLOSE_ALL_POSITIONS.value
    after = bt.position.loc[bt.position.index > st["ts"].iloc[0]]
    assert (after.iloc[1:] == 0).all() and (bt.orders["time"] > after.index[0]).sum() == 0
    assert o.max_drawdown < recompute(world["data"], DashboardSettings().with_values(kelly_multiplier=1.0,
                                                                                     dd_halt=0.5, dd_warn=0.5)).max_drawdown


def test_snapshot_is_the_file_when_it_was_read(world, tmp_path):
    t = AuditTrail(tmp_path / "a.duckdb")
    record_example_run(world["bars"].loc["2009":"2010"], t, run_id="one")
    snap = TrailSnapshot(t.path)
    n = len(snap.events())
    t.record("policy_change", {"name": "later"})
    assert len(snap.events()) == n and len(AuditTrail(t.path).events()) == n + 1 and snap.verify().rows == n


def test_settings_round_trip_through_toml(world, tmp_path):
    s = DashboardSettings(policy=PRESETS["conservative"], risk=RiskLimits.permissive(dd_warn=0.1, dd_halt=0.2, daily_loss=0.03),
                          kelly_multiplier=0.3, risk_per_trade=0.01).with_values(max_risk_score=0.42, forbidden_llm_decisions=["override_limits"])
    p, r = save_settings(s, tmp_path / "sub" / "tuned.toml")
    assert r == risk_path(p) and r.name == "tuned.risk.toml"
    assert load_settings(p) == s and load_policy(p) == s.policy
    assert "inf" in r.read_text()                       # limits turned off are written as TOML's inf
    r.write_text("[risk]\ndd_warn = 0.3\ndd_halt = 0.2\n")
    with pytest.raises(ValueError, match="dd_warn"): load_settings(p)
    r.unlink(); assert load_settings(p) == DashboardSettings(policy=s.policy)


def test_recompute_is_well_under_a_second(world):
    d = world["data"]
    recompute(d, DashboardSettings())                  # warm (Numba's compiled kernels are cached on disk)
    times = []
    for cap in np.linspace(0.3, 0.9, 7):
        t0 = time.perf_counter(); recompute(d, DashboardSettings().with_values(max_risk_score=float(cap))); times.append(time.perf_counter() - t0)
    print(f"recompute: median {statistics.median(times) * 1e3:.0f} ms, max {max(times) * 1e3:.0f} ms over {len(d.bars)} bars "
          f"and {len(d.trail.events())} audit events")
    assert statistics.median(times) < 1.0


def test_widgets_show_what_recompute_computes(world, tmp_path):
    d = world["data"]
    dash = Dashboard(d, policy_path=tmp_path / "p.toml")
    num = lambda k: dash.out[k].value.split("'ptrader-num'>")[1].split("<")[0]
    dash.controls["max_risk_score"].value = 0.45
    dash.controls["dd_warn"].value = 0.02; dash.controls["dd_halt"].value = 0.03
    ref = recompute(d, DashboardSettings().with_values(max_risk_score=0.45, dd_warn=0.02, dd_halt=0.03))
    assert num("critical-count") == str(ref.counts["CRITICAL"]) and num("backtest-rejections-count") == str(ref.n_rejections)
    assert num("final-equity") == f"{ref.final_equity:,.0f}" and dash.figure.layout.title.text.endswith(f"{ref.max_drawdown:.1%}")
    assert dash.chart.outputs[0]["data"]["application/vnd.plotly.v1+json"]["layout"]["title"]["text"] == dash.figure.layout.title.text
    dash.controls["dd_halt"].value = 0.01                # below the warning: refused, the last outcome stays
    assert "dd_warn" in dash.out["status"].value and dash.outcome.settings.risk.dd_halt == 0.03
    dash.controls["dd_halt"].value = 0.03
    assert dash.save() is not None and load_settings(tmp_path / "p.toml") == dash.settings


def test_cli_refuses_missing_inputs(cli, world, tmp_path, capsys):
    r = cli("dashboard", "--db", tmp_path / "none.duckdb", "--no-browser")      # through `ptrader dashboard`
    assert r.returncode == 2 and "no warehouse" in r.stderr and "Traceback" not in r.stderr
    w, a = str(world["tmp"] / "w.duckdb"), str(world["tmp"] / "audit.duckdb")
    for argv, said in ((["--db", w, "--audit-db", str(tmp_path / "none.duckdb")], "no audit trail"),
                       (["--db", w, "--audit-db", a, "--symbol", "NOPE"], "NOPE"),
                       (["--db", w, "--audit-db", a, "--port", "0"], "--port")):
        assert cli_main([*argv, "--no-browser"]) == 2 and said in capsys.readouterr().err
