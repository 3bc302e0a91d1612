"""The Papermill compliance template on a real paper run's trail: it executes, its JSON is the ComplianceReport
of the same trail and policy, and a violation shows up in it."""
import copy
import json
from pathlib import Path

import pytest

from ptrader.audit import AuditTrail, agent_run_entries
from ptrader.compliance import PRESETS, SCHEMA_VERSION, ComplianceMonitor

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_template_runs_and_matches_analyze_period(tmp_path):
    pm = pytest.importorskip("papermill")
    from ptrader.agents import MACrossover, MarketData, run_agent, synthetic_bars
    from ptrader.broker import PaperBroker
    pol = PRESETS["moderate"]
    run = run_agent(MACrossover(5, 20), MarketData(synthetic_bars(300, seed=2), "SYN", min_history=30),
                    broker=PaperBroker(["SYN"], 100_000.0, limits=pol.risk_limits()))
    ents = agent_run_entries(run, run_id="r")
    i = next(j for j, e in enumerate(ents) if e[0] == "fill")
    ents.insert(i, ("kill_switch", {"run_id": "r", "reason": "operator"}, ents[i][2]))   # every later fill is a violation
    t = AuditTrail(tmp_path / "audit.duckdb"); t.record_many(ents)
    out = tmp_path / "compliance.ipynb"
    pm.execute_notebook(str(ROOT / "nbs" / "reports" / "compliance.ipynb"), str(out), kernel_name="python3", progress_bar=False,
                        language="python", cwd=str(tmp_path),
                        parameters=dict(audit_db=str(t.path), policy="moderate", report_json=str(tmp_path / "c.json")))
    got = json.loads((tmp_path / "c.json").read_text())
    want = ComplianceMonitor(pol, t).analyze_period().to_dict()
    assert got["schema_version"] == SCHEMA_VERSION and got["counts"] == want["counts"] and got["issues"] == want["issues"]
    assert [i["type"] for i in got["issues"] if i["severity"] == "CRITICAL"] == ["traded_after_kill_switch"] * sum(e[0] == "fill" for e in ents)
    text = out.read_text()
    assert "traded_after_kill_switch" in text and "Tree head of the whole trail" in text
