"""`ptrader validate` end to end: the report, its HTML (code hidden), the run index, parameter
checks before any run, a failing template, and the template shipped inside the package."""
import json
import re
import subprocess
import sys
import zipfile

import nbformat
import pytest

from ptrader.audit import AuditTrail
from ptrader.data import Warehouse
from ptrader.execution import backtest_signals, buy_and_hold_signals
from ptrader.errors import ReportError
from ptrader.reports import ValidationParams, run_report

from conftest import ROOT


@pytest.mark.llm  # section 6 judges the bundled model (6 decisions), started by the harness through `ptrader llm serve`
def test_validate_writes_report_html_and_index(tmp_path, cli):
    r = cli("validate", "--symbols", "SP500", "--start", "2009-01-01", "--end", "2014-12-31", "--quiet",
            "--agent-splits", "2", "--agent-cadence", "10")
    assert r.returncode == 0, r.stderr
    rep = tmp_path / "reports"
    htmls = sorted(rep.glob("validation-SP500-*.html"))
    assert len(htmls) == 1
    page = htmls[0].read_text()
    for text in ("Validation report: SP500", "Data provenance and quality", "Buy and hold" , "Sharpe Ratio",
                 "Max Drawdown Duration", "walk-forward folds", "plotly"):
        assert text.lower() in page.lower(), text
    assert "import numpy" not in page  # code is hidden
    assert "deciding evidence" in page and "beat the benchmark" in page          # section 0: the verdicts
    # section 6: the agent's gates first, then the evidence; a 135M model over 6 decisions earns nothing
    assert "Agentic validation" in page and "Go / no-go gates" in page and "Capital ladder" in page and "Paper-trading alignment" in page
    assert page.count("NO-GO: ollama:smollm2:135m") >= 2 and "model answers: <strong>live</strong>" in page
    assert htmls[0].stat().st_size < 5e6 and page.count("DecompressionStream") == 1   # plotly.js once, compressed
    # no WebGL trace: every "type":"scattergl" is the default entry of a figure's template, none is a trace
    assert page.count('"type":"scattergl"') == page.count('"scattergl":[{') and not re.search(r">\s*(NaN|nan)\s*<", page)
    assert "without encryption" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr   # --quiet
    record = json.loads(htmls[0].with_suffix(".json").read_text())
    assert record["status"] == "ok" and record["parameters"]["symbols"] == ["SP500"]
    index = (rep / "index.html").read_text()
    comp = sorted(rep.glob("compliance-moderate-all-all-*.html"))   # the compliance report of the trail follows the run
    assert len(comp) == 1 and htmls[0].name in index and comp[0].name in index and "2 run(s)" in index
    assert re.search(rf"href=[\"']{re.escape(comp[0].name)}[\"']", page)            # section 6 links it

    # section 6: the live-policy replays and both report runs are in the audit trail beside the warehouse, intact
    trail = AuditTrail(tmp_path / "audit.duckdb")
    assert trail.verify().ok
    ev = trail.events()
    runs = {p["run_id"] for p in ev.payload if isinstance(p, dict) and "run_id" in p}
    assert {f"{htmls[0].stem}:SP500:buy and hold", f"{htmls[0].stem}:SP500:MA crossover (walk-forward)"} <= runs
    assert {"fill", "report_run"} <= set(ev["kind"]) and (ev["kind"] == "report_run").sum() == 2
    # ... and the harness run: every agent's decisions under `<run>:agent/...`, the LLM's among them, and its summary
    agent_runs = {p["run_id"] for p in ev.payload if isinstance(p, dict) and str(p.get("run_id", "")).startswith(f"{htmls[0].stem}:agent")}
    assert any("/ollama:smollm2:135m/SP500/" in x for x in agent_runs) and any("/buy_and_hold/SP500/" in x for x in agent_runs)
    assert (ev["kind"] == "harness_run").sum() == 1 and (ev["kind"] == "decision").sum() >= 6
    result = json.loads((rep / f"{comp[0].stem}.result.json").read_text())
    assert json.loads(comp[0].with_suffix(".json").read_text())["result"] == f"{comp[0].stem}.result.json"
    # `ptrader compliance` on the same trail: exit 1 exactly when a CRITICAL issue is found; global options before `audit`
    c = cli("compliance", "--quiet")
    assert c.returncode == (1 if result["counts"]["CRITICAL"] else 0), c.stderr
    a = cli("-q", "--db", tmp_path / "w.duckdb", "audit", "verify")
    assert a.returncode == 0 and a.stdout.startswith("ok:"), a.stderr

    # the buy-and-hold row of the executed notebook equals a backtest run here on the same bars
    nb = nbformat.read(htmls[0].with_suffix(".ipynb"), as_version=4)
    text = "\n".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    with Warehouse(tmp_path / "w.duckdb", read_only=True) as wh:
        bars = wh.bars("SP500", "2009-01-01", "2014-12-31")
    oos = bars.iloc[756:]
    bh = backtest_signals(oos, *buy_and_hold_signals(oos), init_cash=100_000, fees_bps=1, slippage_bps=1)
    assert f"{bh.stats()['Total Return']:.2%}" in text


@pytest.mark.parametrize("args,message", [
    (["--symbols", "NOPE"], "['NOPE'] not in warehouse"),
    (["--initial-cash", "-5"], "initial_cash: Input should be greater than 0"),
    (["--start", "2015-01-01", "--end", "2010-01-01"], "must be before end"),
    (["--start", "2010-02-30"], "start:"),
    (["--fees-bps", "-1"], "fees_bps"),
    (["--symbols", "SP500", "--start", "2030-01-01", "--end", "2031-01-01"], "needs at least 3"),
    (["--initial-cash", "inf"], "--initial-cash"),
    (["--initial-cash", "nan"], "--initial-cash"),
    (["--fees-bps", "1001"], "fees_bps"),
    (["--slippage-bps", "-inf"], "--slippage-bps"),
    (["--train-bars", "150"], "train_bars"),
])
def test_bad_parameters_fail_before_any_run(tmp_path, cli, args, message):
    r = cli("validate", *args, "--quiet", "--agent", "none")
    assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not list((tmp_path / "reports").glob("*.ipynb"))


def test_failing_template_leaves_files_and_names_cell(tmp_path, monkeypatch):
    home = tmp_path / "home"
    (home / "nbs" / "reports").mkdir(parents=True)
    (home / "settings.ini").write_text("[DEFAULT]\n")
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell("symbols = []\ndb_path = None"); p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell("x = 1"), nbformat.v4.new_code_cell("raise RuntimeError('boom in cell two')")]
    nbformat.write(nb, home / "nbs" / "reports" / "failing.ipynb")
    monkeypatch.setenv("PTRADER_HOME", str(home))
    out = tmp_path / "out"
    with pytest.raises(ReportError, match=r"code cell \[4\] .*starting \"raise RuntimeError.*RuntimeError: boom in cell two"):
        run_report("failing", ValidationParams(), db_path=tmp_path / "w.duckdb", out_dir=out, progress=False)
    assert len(list(out.glob("failing-*.ipynb"))) == 1 and len(list(out.glob("failing-*.html"))) == 1
    rec = json.loads(next(out.glob("failing-*.json")).read_text())
    assert rec["status"] == "failed" and "boom" in rec["error"]
    assert "failed" in (out / "index.html").read_text()
    ev = AuditTrail(tmp_path / "audit.duckdb").events()      # the failed run is in the audit trail too, with its error
    assert list(ev["kind"]) == ["report_run"] and ev.payload.iloc[0]["status"] == "failed" and "boom" in ev.payload.iloc[0]["error"]


@pytest.mark.slow
def test_wheel_ships_the_template(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    whl = next(tmp_path.glob("ptrader-*.whl"))
    names = zipfile.ZipFile(whl).namelist()
    assert "ptrader/templates/validation.ipynb" in names and "ptrader/cli.py" in names


@pytest.mark.parametrize("name,value", [("initial_cash", float("inf")), ("initial_cash", float("nan")), ("initial_cash", 0.0),
                                        ("fees_bps", float("nan")), ("fees_bps", 1000.5), ("slippage_bps", float("inf")),
                                        ("slippage_bps", -0.1), ("seed", -1), ("train_bars", 99), ("test_bars", 19),
                                        ("periods_per_year", 0), ("fast_windows", [0]), ("slow_windows", [-5])])
def test_every_numeric_parameter_is_checked_before_any_run(name, value):
    "check_params refuses NaN, infinities and out-of-range numbers at once, naming the parameter."
    from ptrader.reports import check_params
    with pytest.raises(ValueError, match=name):
        check_params(**{name: value})


def test_a_short_range_runs_with_the_long_sections_skipped(tmp_path, cli):
    "SP500 in 2018 (251 bars): the pre-run check names the minimums and the report runs the rest (no longer exit 2)."
    r = cli("validate", "--symbols", "SP500", "--start", "2018-01-01", "--quiet", "--agent", "none")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "walk-forward and statistical evidence needs 1009" in r.stderr and "forecasting needs 765" in r.stderr
    page = next((tmp_path / "reports").glob("validation-SP500-*.html")).read_text()
    assert "Forecasting (section 5): SP500 needs 765 bars, the range holds 251" in page
