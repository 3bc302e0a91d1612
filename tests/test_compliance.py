"""Compliance over a real paper run's audit trail: the clean run has no CRITICAL issue, and a violation of
every rule injected into a copy of its trail is flagged with the rule's severity and the injected event as evidence."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import duckdb
import pandas as pd
import pytest

from ptrader.agents import Decision, MarketData, run_agent, synthetic_bars
from ptrader.audit import AuditTrail, agent_run_entries, decision_entries
from ptrader.broker import PaperBroker
from ptrader.compliance import PRESETS, SCHEMA_VERSION, ComplianceMonitor, CompliancePolicy

ROOT = Path(__file__).resolve().parents[1]
POLICY = PRESETS["conservative"]


class ScriptedLLM:
    "Stands in for an LLM agent (it names a model in `last_info`): long for 15 bars, flat for 15, risk score 0.3."
    name = "ollama:scripted"
    def __init__(self): self.last_info = {}
    def decide(self, view):
        self.last_info = {"model": "scripted:1", "prompt_id": f"p{len(view)}", "latency_s": 0.01, "flags": []}
        buy = (len(view) // 15) % 2 == 0
        return Decision(action="BUY" if buy else "SELL", confidence=0.6, target_fraction=0.3 if buy else None,
                        risk_score=0.3, symbol=view.symbol, rationale="scripted")


class Approve:
    "A validator that accepts every decision (layer 'all')."
    def __call__(self, d, view): return SimpleNamespace(accepted=True, layer="all", reason=None)


@pytest.fixture(scope="module")
def base():
    data = MarketData(synthetic_bars(260, seed=5), "SYN", min_history=30)
    run = run_agent(ScriptedLLM(), data, validator=Approve(),
                    broker=PaperBroker(["SYN"], 100_000.0, limits=POLICY.risk_limits()))
    ents = agent_run_entries(run, run_id="r")
    assert sum(e[0] == "fill" for e in ents) >= 4 and sum(e[0] == "validation" for e in ents) > 0
    return ents


def _trail(tmp_path, ents, name="t"):
    t = AuditTrail(tmp_path / f"{name}.duckdb"); seqs = t.record_many(ents); return t, seqs


def _idx(ents, kind, pred=lambda p: True, which=0):
    return [i for i, e in enumerate(ents) if e[0] == kind and pred(e[1])][which]


def _executed(ents):
    "Index of the first decision whose order filled."
    filled = {e[1]["order_id"] for e in ents if e[0] == "fill"}
    return _idx(ents, "decision", lambda p: bool(set(p["order_ids"]) & filled))


def _opening_fill(ents):
    "Index of a buy fill (the agent is long only, so a buy grows the position)."
    return _idx(ents, "fill", lambda p: p["side"] == 1, which=1)


def _set(ents, i, **kw):
    e = list(ents[i]); e[1] = {**e[1], **kw}; ents[i] = tuple(e)


def _crit(rep): return {i.type for i in rep.critical}


_CLEAN = {}
def _clean(tmp_path, base):
    if "t" not in _CLEAN: _CLEAN["t"] = _trail(tmp_path, base, "clean")[0]
    return _CLEAN["t"]


def test_clean_run_has_no_critical(tmp_path, base):
    t, _ = _trail(tmp_path, base)
    rep = ComplianceMonitor(POLICY, t).analyze_period()
    assert rep.counts()["CRITICAL"] == 0, rep.issues_frame()
    d = json.loads(rep.to_json())
    assert d["schema_version"] == SCHEMA_VERSION and d["summary"]["llm_decisions"] == d["summary"]["decisions"] > 0
    assert d["summary"]["fills"] == sum(e[0] == "fill" for e in base) and d["trail"]["ok"]


# each case: (name, change the entries -> index of the injected/changed event, policy, severity, type)
def _no_check(ents):
    oid = ents[_idx(ents, "fill")][1]["order_id"]
    ents[:] = [e for e in ents if not (e[0] in ("risk_check", "rejection") and e[1].get("order_id") == oid)]
    return _idx(ents, "order", lambda p: p["order_id"] == oid)

def _no_review(ents):
    i = _executed(ents); did = ents[i][1]["decision_id"]
    ents[:] = [e for e in ents if not (e[0] == "validation" and e[1]["decision_id"] == did)]
    return _idx(ents, "decision", lambda p: p["decision_id"] == did)

def _refused(ents):
    did = ents[_executed(ents)][1]["decision_id"]; j = _idx(ents, "validation", lambda p: p["decision_id"] == did)
    _set(ents, j, accepted=False, layer="risk", reason="too risky"); return j

def _risky(ents): i = _executed(ents); _set(ents, i, risk_score=0.8); return i
def _forbidden(ents): i = _executed(ents); _set(ents, i, flags=["override_limits"]); return i
def _forbidden_asked(ents): i = _idx(ents, "decision", lambda p: not p["order_ids"]); _set(ents, i, flags=["bypass_risk_check"]); return i
def _big(ents):
    "An order sent 100 times too large, and filled so."
    i = _idx(ents, "fill"); oid = ents[i][1]["order_id"]; j = _idx(ents, "order", lambda p: p["order_id"] == oid)
    _set(ents, i, qty=ents[i][1]["qty"] * 100); _set(ents, j, qty=ents[j][1]["qty"] * 100); return i

def _overfill(ents): i = _idx(ents, "fill"); _set(ents, i, qty=ents[i][1]["qty"] * 1.5); return i

def _gap_over_cap(ents):
    "Sent within the cap at the decision's close, filled above it (fill price moved)."
    i = _executed(ents); oid = ents[i][1]["order_ids"][0]; f = _idx(ents, "fill", lambda p: p["order_id"] == oid)
    qty = ents[f][1]["qty"]; _set(ents, f, price=1.01 * POLICY.max_order_notional / qty)
    assert qty * ents[i][1]["close"] <= POLICY.max_order_notional
    return f
def _off_collar_fill(ents): i = _idx(ents, "fill"); _set(ents, i, price=ents[i][1]["price"] * 1.25); return i

def _off_collar_order(ents):
    i = _executed(ents); oid = ents[i][1]["order_ids"][0]; j = _idx(ents, "order", lambda p: p["order_id"] == oid)
    _set(ents, j, price=ents[i][1]["close"] * 1.5); return j

def _after_kill(ents):
    j = max(i for i, e in enumerate(ents) if e[0] == "fill")
    ents.insert(j, ("kill_switch", {"run_id": "r", "reason": "operator"}, ents[j][2])); return j + 1

def _while_halted(ents):
    j = _opening_fill(ents)
    ents.insert(j, ("circuit_breaker", {"run_id": "r", "rule": "drawdown", "state_from": "ACTIVE", "state_to": "HALTED",
                                        "reason": "injected"}, ents[j][2])); return j + 1

def _shadow(ents):
    d = pd.DataFrame([{"ts": pd.Timestamp("2011-01-03"), "agent": "challenger", "action": "BUY", "order_ids": "1"}])
    ents += decision_entries(d, run_id="r", shadow=True); return len(ents) - 1

def _position(ents): i = _executed(ents); _set(ents, i, target_fraction=2.0); return i

def _rate(ents):
    j = _idx(ents, "order"); e = ents[j]
    for k in range(3): ents.insert(j + 1, ("order", {**e[1], "order_id": 10_000 + k}, e[2]))
    for k in range(3): ents.insert(j + 4, ("risk_check", {"run_id": "r", "order_id": 10_000 + k}, e[2]))
    return j

def _hours(ents): j = _idx(ents, "order"); e = ents[j]; ents[j] = (e[0], e[1], pd.Timestamp(e[2]) + pd.Timedelta(hours=20)); return j
def _restricted(ents):
    i = _idx(ents, "fill"); oid = ents[i][1]["order_id"]
    for j, e in enumerate(ents):
        if e[1].get("order_id") == oid: _set(ents, j, symbol="XYZ")
    return i


CASES = [
    ("no_risk_check", _no_check, POLICY, "CRITICAL", "order_without_risk_check"),
    ("no_risk_check_optional", _no_check, POLICY.model_copy(update=dict(require_risk_check=False)), "WARNING", "order_without_risk_check"),
    ("no_review", _no_review, POLICY, "CRITICAL", "llm_order_without_review"),
    ("no_review_optional", _no_review, PRESETS["moderate"], "INFO", "llm_order_without_review"),
    ("executed_despite_reject", _refused, POLICY, "CRITICAL", "executed_despite_reject"),
    ("risk_score", _risky, POLICY, "CRITICAL", "risk_score_exceeded"),
    ("forbidden_executed", _forbidden, POLICY, "CRITICAL", "forbidden_decision_executed"),
    ("forbidden_asked", _forbidden_asked, POLICY, "WARNING", "forbidden_decision_requested"),
    ("notional", _big, POLICY, "CRITICAL", "notional_exceeded"),
    ("overfill", _overfill, POLICY, "CRITICAL", "overfill"),
    ("notional_gap", _gap_over_cap, POLICY, "WARNING", "fill_notional_over_cap"),
    ("collar_fill", _off_collar_fill, POLICY, "WARNING", "fill_outside_collar"),
    ("collar_order", _off_collar_order, POLICY, "CRITICAL", "order_price_outside_collar"),
    ("after_kill", _after_kill, POLICY, "CRITICAL", "traded_after_kill_switch"),
    ("kill_engaged", lambda e: _after_kill(e) - 1, POLICY, "WARNING", "kill_switch_engaged"),
    ("while_halted", _while_halted, POLICY, "CRITICAL", "traded_while_halted"),
    ("halted", lambda e: _while_halted(e) - 1, POLICY, "WARNING", "circuit_breaker_halted"),
    ("shadow_executed", _shadow, POLICY, "CRITICAL", "shadow_decision_executed"),
    ("position_fraction", _position, POLICY, "WARNING", "position_fraction_exceeded"),
    ("order_rate", _rate, POLICY.model_copy(update=dict(max_orders_per_minute=2)), "WARNING", "order_rate_exceeded"),
    ("hours", _hours, POLICY.model_copy(update=dict(allowed_hours=("09:30", "16:00"))), "WARNING", "outside_allowed_hours"),
    ("restricted", _restricted, POLICY.model_copy(update=dict(restricted=("XYZ",))), "CRITICAL", "restricted_symbol"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_injected_violation_is_flagged(tmp_path, base, case):
    name, inject, policy, severity, typ = case
    ents = copy.deepcopy(list(base)); i = inject(ents)
    t, seqs = _trail(tmp_path, ents)
    rep = ComplianceMonitor(policy, t).analyze_period()
    hits = [x for x in rep.issues if x.type == typ]
    assert hits and {x.severity for x in hits} == {severity}, (name, rep.issues_frame())
    assert any(seqs[i] in x.evidence for x in hits), (name, seqs[i], hits)
    if severity == "CRITICAL": assert _crit(rep) == {typ}, (name, _crit(rep))   # nothing else became CRITICAL
    # the clean trail under the same policy does not have it
    clean = ComplianceMonitor(policy, _clean(tmp_path, base)).analyze_period()
    assert typ not in {x.type for x in clean.issues}, (name, clean.issues_frame())


def test_broken_trail_is_critical_and_period_filters(tmp_path, base):
    t, seqs = _trail(tmp_path, base)
    con = duckdb.connect(str(t.path)); con.execute("UPDATE audit_events SET payload = '{}' WHERE seq = 5"); con.close()
    rep = ComplianceMonitor(POLICY, t).analyze_period()
    assert [i.type for i in rep.critical] == ["audit_trail_broken"] and rep.critical[0].evidence == (5,)
    assert rep.summary["events"] == 4
    # a kill switch before the period still forbids the fills inside it
    ents = copy.deepcopy(list(base)); j = _idx(ents, "fill", which=-1)
    ents.insert(_idx(ents, "fill"), ("kill_switch", {"run_id": "r", "reason": "op"}, ents[_idx(ents, "fill")][2]))
    t2, _ = _trail(tmp_path, ents, "k")
    late = pd.Timestamp(ents[-1][2] if ents[-1][2] is not None else ents[j + 1][2])
    start = pd.Timestamp(ents[_idx(ents, "fill", which=-1)][2]).normalize()
    rep2 = ComplianceMonitor(POLICY, t2).analyze_period(start=start)
    kinds = {i.type for i in rep2.issues}
    assert "traded_after_kill_switch" in kinds and "kill_switch_engaged" not in kinds, rep2.issues_frame()
    assert late >= start


def test_cli_exit_codes(tmp_path, base):
    t, _ = _trail(tmp_path, base)
    env = {**os.environ, "PTRADER_AUDIT_DB": str(t.path)}
    run = lambda *a: subprocess.run([sys.executable, "-m", "ptrader.compliance", *map(str, a)], cwd=ROOT, env=env,
                                    capture_output=True, text=True, timeout=120)
    r = run("--policy", "conservative", "--json", tmp_path / "r.json"); assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "r.json").read_text())["counts"]["CRITICAL"] == 0
    ents = copy.deepcopy(list(base)); _big(ents); bad, _ = _trail(tmp_path, ents, "bad")
    r = run("--db", bad.path, "--policy", "conservative"); assert r.returncode == 1 and "notional_exceeded" in r.stdout, r.stdout
    (tmp_path / "p.toml").write_text("max_risk_score = 7\n")
    r = run("--policy", tmp_path / "p.toml"); assert r.returncode == 2 and "p.toml" in r.stderr and "Traceback" not in r.stderr


def test_real_signal_validator_reviews_and_clean_under_conservative(tmp_path):
    signals = pytest.importorskip("ptrader.signals")
    from ptrader.audit import validator_entries
    data = MarketData(synthetic_bars(260, seed=5), "SYN", min_history=30)
    v = signals.SignalValidator(["SYN"])
    run = run_agent(ScriptedLLM(), data, validator=v, broker=PaperBroker(["SYN"], 100_000.0, limits=POLICY.risk_limits()))
    ents = agent_run_entries(run, run_id="sv") + validator_entries(v.table(), run_id="sv-table", layers=signals.LAYERS)
    t, _ = _trail(tmp_path, ents)
    rep = ComplianceMonitor(POLICY, t).analyze_period()
    assert rep.counts()["CRITICAL"] == 0, rep.issues_frame()
    assert rep.summary["validations"] == 2 * len(v.table()) and rep.summary["fills"] > 0
    # without the review records, every LLM order is flagged under the conservative policy
    bare = [e for e in ents if e[0] != "validation"]
    rep2 = ComplianceMonitor(POLICY, _trail(tmp_path, bare, "bare")[0]).analyze_period()
    assert {i.type for i in rep2.critical} == {"llm_order_without_review"}


@pytest.mark.parametrize("sql", [
    "CREATE TABLE audit_events AS SELECT * REPLACE (length(payload) AS payload) FROM src",
    "CREATE TABLE audit_events AS SELECT * REPLACE (CASE WHEN seq = 40 THEN 'not json' ELSE payload END AS payload) FROM src",
    "CREATE TABLE audit_events AS SELECT *, 'hidden' AS note FROM src",
    "CREATE TABLE audit_events AS SELECT CAST(seq AS VARCHAR) || 'x' AS seq, * EXCLUDE (seq) FROM src",
    "CREATE TABLE audit_events AS SELECT * REPLACE (CASE WHEN seq = 30 THEN NULL ELSE event_ts END AS event_ts, "
    "CASE WHEN seq = 30 THEN 12345 ELSE batch END AS batch) FROM src",
], ids=["payload_int", "bad_json", "extra_col", "seq_text", "nulls_and_numbers"])
def test_hostile_trail_gives_a_broken_trail_finding(tmp_path, base, sql, capsys):
    from ptrader.compliance import cli_main
    t, _ = _trail(tmp_path, base)
    p = tmp_path / "hostile.duckdb"
    con = duckdb.connect(str(p)); con.execute(f"ATTACH '{t.path}' AS s (READ_ONLY)")
    con.execute("CREATE TABLE src AS SELECT * FROM s.audit_events"); con.execute("DETACH s")
    con.execute(sql); con.execute("DROP TABLE src"); con.close()
    rep = ComplianceMonitor(POLICY, AuditTrail(p)).analyze_period()
    assert [i.type for i in rep.critical] == ["audit_trail_broken"], rep.issues_frame()
    assert cli_main(["--db", str(p), "--policy", "conservative"]) == 1 and "audit_trail_broken" in capsys.readouterr().out


def test_backtest_fills_without_order_ids_are_checked_one_by_one(tmp_path):
    "A backtest's fills carry no order id: each is judged against the notional cap alone, never summed with the others."
    from ptrader.audit import broker_entries
    from ptrader.broker import RiskLimits
    from ptrader.execution import backtest_signals, ma_crossover_signals
    bars = synthetic_bars(800, seed=3)
    en, ex = ma_crossover_signals(bars["close"], 10, 40)
    r = backtest_signals(bars, en, ex, symbol="SYN", init_cash=100_000.0, size=0.5, risk=RiskLimits.permissive())
    ev = r.events(); fills = ev[ev.kind == "fill"]
    notional = (fills["qty"].abs() * fills["price"]).to_numpy()
    assert len(fills) >= 6 and notional.sum() > 3 * notional.max()
    t, _ = _trail(tmp_path, broker_entries(ev, run_id="bt", source="backtest"))
    def over(cap):
        pol = CompliancePolicy(**{**PRESETS["aggressive"].model_dump(), "name": "cap", "max_order_notional": cap})
        return [i for i in ComplianceMonitor(pol, t).analyze_period(None, None).issues if i.type == "notional_exceeded"]
    assert over(notional.max() * 1.001) == []                       # every single fill is within the cap
    hits = over(notional.max() * 0.999)                              # only the largest fill is over it
    assert len(hits) == 1 and hits[0].severity == "CRITICAL" and "no order id" in hits[0].message
