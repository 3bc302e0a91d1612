"""Reports on a schedule (`ptrader report ...`, `ptrader scheduler run`): parameters checked against a template's
parameters cell before any run, every run a row of the run table (`runs.duckdb`) with its provenance, the index
rebuilt from it, retention, concurrent writers, cron read as cron, the missed-run rule across restarts, and the
scheduler surviving a failing run (recorded, alerted, next fire still runs). The tiny template is
tests/templates/hello.ipynb (found through $PTRADER_TEMPLATES); the one-minute-cron run is `slow`, and its
seconds-level twin goes through the same code path in the default suite."""
import datetime as dt
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from ptrader.audit import AuditTrail
from ptrader.compliance import PRESETS, record_policy
from ptrader.data import Warehouse
from ptrader.reports import (ReportScheduler, report_parser, add_schedule, apply_retention, cli_main, cron_trigger, parse_params,
                             record_run, run_table, runs, runs_path, scheduler_main, schedules)

from conftest import ROOT

TEMPLATES = ROOT / "tests" / "templates"
UTC = dt.timezone.utc


@pytest.fixture
def home(tmp_path, monkeypatch):
    "Warehouse, reports, alerts and templates of this test, for in-process calls and subprocesses alike."
    e = {"PTRADER_DB": tmp_path / "w.duckdb", "PTRADER_REPORTS": tmp_path / "reports", "PTRADER_TEMPLATES": TEMPLATES,
         "PTRADER_ALERTS_FILE": tmp_path / "alerts.jsonl", "PTRADER_ALERTS_DEAD_LETTER": tmp_path / "dead.jsonl"}
    for k, v in e.items(): monkeypatch.setenv(k, str(v))
    monkeypatch.delenv("PTRADER_AUDIT_DB", raising=False)
    monkeypatch.delenv("PTRADER_REPORTS_KEEP", raising=False)
    return tmp_path


def call(main, *args):
    "In-process `main(args)` with its output captured: (exit code, stdout, stderr)."
    import contextlib, io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err): code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


def alerts(home):
    f = home / "alerts.jsonl"
    return [json.loads(line) for line in f.read_text().splitlines()] if f.exists() else []


@pytest.mark.parametrize("template,params,message", [
    ("hello", ["nope=1"], "unknown parameter 'nope' for template 'hello'; its parameters: greeting, n, scale, shout, symbols, counter_file, fail_on_run, db_path"),
    ("hello", ["n=three"], "parameter 'n': Input should be a valid integer (got 'three')"),
    ("hello", ["n=2.5"], "parameter 'n': Input should be a valid integer (got 2.5)"),
    ("hello", ["shout=1"], "parameter 'shout': Input should be a valid boolean (got 1)"),
    ("hello", ["scale=inf"], "parameter 'scale'"),
    ("hello", ["symbols={}"], "parameter 'symbols': Input should be a valid list"),
    ("hello", ["n"], "expected KEY=VALUE"),
    ("validation", ["seed=x"], "parameter 'seed': Input should be a valid integer"),
    ("validation", ["fees_bps=2000"], "parameter 'fees_bps': Input should be less than or equal to 1000"),
    ("validation", ["symbols=../x"], "parameter 'symbols'"),
    ("validation", ["compliance_reprot=x"], "unknown parameter 'compliance_reprot' for template 'validation'"),
    ("compliance", ["policy=reckless"], "parameter 'policy'"),
    ("compliance", ["start=2024-02-30"], "parameter 'start'"),
    ("nope", [], "report template 'nope.ipynb' not found"),
])
def test_bad_parameters_are_refused_in_one_line_before_any_run(home, template, params, message):
    code, _, err = call(cli_main, "run", template, *[x for p in params for x in ("-p", p)])
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (home / "reports").exists() or not list((home / "reports").iterdir())   # nothing ran, nothing was written
    code, _, err = call(cli_main, "schedule", template, "--cron", "0 6 * * 1-5", *[x for p in params for x in ("-p", p)])
    assert code == 2 and message in err and not len(schedules())                          # nor stored as a schedule


def test_a_run_is_a_row_with_its_provenance_and_the_index_lists_it(home):
    csv = home / "acme.csv"
    csv.write_text("Date,Open,High,Low,Close\n" + "".join(f"2024-01-0{d},10,11,9,10.5\n" for d in range(2, 7)))
    with Warehouse(home / "w.duckdb") as wh: ing = wh.ingest_file(csv, symbol="ACME")
    code, out, err = call(cli_main, "run", "hello", "-p", "symbols=ACME", "-p", "n=2", "-q")
    assert code == 0, err
    (row,) = runs().itertuples(index=False)
    assert (row.template, row.status, row.trigger, row.error) == ("hello", "ok", "manual", None)
    assert row.parameters["n"] == 2 and row.parameters["symbols"] == ["ACME"] and row.parameters["db_path"] == str(home / "w.duckdb")
    assert row.provenance == {"warehouse": str(home / "w.duckdb"), "ingests": {"ACME": [ing.ingest_id]}}
    assert row.versions["papermill"] == version("papermill") and row.versions["duckdb"] == version("duckdb")
    assert 0 < row.seconds < 300 and f"report: {home / 'reports' / row.html}" in out
    rec = json.loads((home / "reports" / row.record).read_text())         # the JSON record says the same
    assert rec["provenance"] == row.provenance and rec["name"] == row.name
    outputs = "".join(o.get("text", "") for c in nbformat.read(home / "reports" / row.ipynb, 4).cells if c.cell_type == "code"
                      for o in c.get("outputs", []))
    assert "{'ACME': 5}" in outputs and "hello!! 3.0" in outputs            # 5 bars read; "!" * 2 and 1.5 * 2

    code, _, err = call(cli_main, "run", "hello", "-p", f"counter_file={home / 'count'}", "-p", "fail_on_run=1", "-q")
    assert code == 1 and "failing on purpose: run 1" in err and len(err.strip().splitlines()) == 1, err
    failed = runs(status="failed").iloc[0]
    assert failed.error.startswith("code cell [") and "RuntimeError: failing on purpose: run 1" in failed.error
    assert (home / "reports" / failed.html).is_file() and (home / "reports" / failed.ipynb).is_file()
    page = (home / "reports" / "index.html").read_text()
    assert "2 run(s)" in page and f"href='{row.html}'" in page and f"href='{failed.html}'" in page
    assert re.findall(r"data-template='(\w+)' data-status='(\w+)'", page) == [("hello", "failed"), ("hello", "ok")]
    assert f"ACME: {ing.ingest_id}" in page
    code, out, _ = call(cli_main, "list")
    assert code == 0 and out.index(failed["name"]) < out.index(row.name) and "error: code cell" in out
    code, out, _ = call(cli_main, "list", "--status", "ok")
    assert row.name in out and failed["name"] not in out


@pytest.mark.slow  # the default suite's test_validate runs the compliance template through run_report (index from the table)
def test_a_compliance_run_records_the_trail_it_read(home):
    trail = AuditTrail(home / "audit.duckdb")
    record_policy(trail, PRESETS["moderate"], reason="test")
    head = trail.digest()
    code, _, err = call(cli_main, "run", "compliance", "-p", f"audit_db={trail.path}", "-q")
    assert code == 0, err
    row = runs(template="compliance").iloc[0]
    assert row.status == "ok" and row.provenance["audit_trail"] == {"path": str(trail.path), "head": head}
    assert (home / "reports" / row.result).is_file() and row["name"].startswith("compliance-moderate-all-all-")
    code, _, err = call(cli_main, "run", "compliance", "-p", f"audit_db={home / 'none.duckdb'}")
    assert code == 2 and "parameter 'audit_db': no audit trail at" in err


def _fake_run(out, name, template, minute, status="ok"):
    "A run's record and files as run_report leaves them (no kernel): for the retention and concurrency tests."
    files = {k: f"{name}{ext}" for k, ext in (("html", ".html"), ("ipynb", ".ipynb"), ("result", ".result.json"))}
    for f in files.values(): (out / f).write_text("x")
    rec = {"name": name, "template": template, "started_utc": f"2026-11-30T06:{minute:02d}:00+00:00", "seconds": 1.0, "status": status,
           "error": None if status == "ok" else "code cell [2]: RuntimeError: boom", "parameters": {"i": minute}, **files}
    (out / f"{name}.json").write_text(json.dumps(rec))
    return rec


def test_retention_keeps_the_newest_n_per_template_and_the_newest_failure(home, monkeypatch):
    out = home / "reports"; out.mkdir()
    history = [("a", 0, "failed"), ("a", 1, "ok"), ("b", 2, "failed"), ("a", 3, "failed"), ("a", 4, "ok"), ("b", 5, "ok"),
               ("a", 6, "ok"), ("b", 7, "ok"), ("a", 8, "ok")]
    for t, m, st in history: record_run(_fake_run(out, f"{t}-{m}", t, m, st), out, keep=1000, index=False)
    outside = home / "outside.html"; outside.write_text("keep me")
    record_run({**_fake_run(out, "c-0", "c", 0), "html": "../outside.html"}, out, keep=1000, index=False)
    monkeypatch.setenv("PTRADER_REPORTS_KEEP", "2")
    pruned = apply_retention(out)
    # independent reference: per template, sort by time, keep the newest 2 and the newest failure
    want = set()
    for t in "abc":
        rows = sorted([h for h in history if h[0] == t] + ([("c", 0, "ok")] if t == "c" else []), key=lambda h: -h[1])
        want |= {f"{t}-{m}" for _, m, _ in rows[:2]} | set([f"{t}-{m}" for _, m, st in rows if st == "failed"][:1])
    assert set(runs(out).name) == want == {"a-8", "a-6", "a-3", "b-7", "b-5", "b-2", "c-0"}
    assert sorted(pruned) == sorted(f"{t}-{m}" for t, m, _ in history if f"{t}-{m}" not in want)
    for name in pruned: assert not list(out.glob(f"{name}.*"))                # .html .ipynb .json .result.json gone
    for name in want - {"c-0"}: assert len(list(out.glob(f"{name}.*"))) == 4
    assert outside.read_text() == "keep me"                                    # only bare names inside the folder are deleted
    page = (out / "index.html").read_text()
    assert "7 run(s)" in page and "a-4.html" not in page
    monkeypatch.setenv("PTRADER_REPORTS_KEEP", "0")
    with pytest.raises(ValueError, match="must be >= 1"): apply_retention(out)


_WRITER = """
import json, sys
from pathlib import Path
from ptrader.reports import record_run
out, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    rec = {"name": f"{tag}-{i:03d}", "template": tag, "started_utc": "2026-11-30T06:00:00+00:00", "seconds": 0.1, "status": "ok",
           "error": None, "parameters": {"writer": tag, "i": i, "text": "x" * 500}}
    record_run(rec, out, keep=1000)
print("done", tag)
"""


def test_concurrent_writers_wait_for_each_other_and_lose_nothing(home):
    out = home / "reports"; out.mkdir()
    n, tags = 6, ["p1", "p2", "p3"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with run_table(out) as con:                   # this process holds the table while the writers start: they must wait
        procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(out), t, str(n)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for t in tags]
        time.sleep(2)
        assert all(p.poll() is None for p in procs)
        con.execute("SELECT 1")
    with ThreadPoolExecutor(4) as pool:           # and threads of this process at the same time
        list(pool.map(lambda i: record_run({"name": f"t-{i:03d}", "template": "t", "started_utc": "2026-11-30T06:00:00+00:00",
                                            "status": "ok", "parameters": {"i": i}}, out, keep=1000), range(n)))
    for p in procs:
        so, se = p.communicate(timeout=300)
        assert p.returncode == 0, se
    df = runs(out)
    want = {f"{t}-{i:03d}" for t in tags + ["t"] for i in range(n)}
    assert set(df.name) == want and len(df) == len(want)
    assert all(r.parameters["i"] == int(r.name[-3:]) and (r.template == "t" or r.parameters["text"] == "x" * 500)
               for r in df.itertuples(index=False))
    assert f"{len(want)} run(s)" in (out / "index.html").read_text()


def test_cron_is_read_as_cron_weekdays_included():
    t = cron_trigger("0 6 * * 1-5")
    fires, nxt = [], t.get_next_fire_time(None, dt.datetime(2026, 12, 1, tzinfo=UTC))
    while nxt < dt.datetime(2027, 1, 1, tzinfo=UTC):
        fires.append(nxt); nxt = t.get_next_fire_time(None, nxt + dt.timedelta(seconds=1))
    days = pd.bdate_range("2026-12-01", "2026-12-31")                      # the calendar's Monday-to-Friday days
    assert [f.date() for f in fires] == list(days.date) and {(f.hour, f.minute) for f in fires} == {(6, 0)}
    sunday = cron_trigger("15 9 * * 0").get_next_fire_time(None, dt.datetime(2026, 12, 1, tzinfo=UTC))
    assert sunday == dt.datetime(2026, 12, 6, 9, 15, tzinfo=UTC) and sunday.weekday() == 6


def test_schedule_list_unschedule_and_the_equivalent_crontab(home):
    code, out, err = call(cli_main, "schedule", "hello", "--cron", "0 6 * * 1-5", "-p", "n=2", "-p", "greeting=100% sure",
                          "-p", "symbols=SP500,WTI")
    assert code == 0, err
    sid = int(re.match(r"schedule (\d+):", out).group(1))
    code, out, _ = call(cli_main, "schedule", "hello", "--cron", "30 22 * * *", "--tz", "America/New_York")
    sid2 = int(re.match(r"schedule (\d+):", out).group(1))
    for bad, why in [(["--cron", "0 6 * *"], "expected 5 fields"), (["--cron", "0 25 * * *"], "25"),
                     (["--cron", "0 6 1 * 1"], "not both"), (["--cron", "0 6 * * *", "--tz", "Mars/Olympus"], "time zone"), ([], "--cron")]:
        code, _, err = call(cli_main, "schedule", "hello", *bad)
        assert code == 2 and why in err, err
    code, out, _ = call(cli_main, "schedule", "--list")
    assert f"{sid}  hello  '0 6 * * 1-5'" in out and f"{sid2}  hello  '30 22 * * *' (America/New_York)" in out and "never" in out
    code, out, _ = call(cli_main, "schedule", "--print-crontab")
    lines = [l for l in out.splitlines() if l and not l.startswith("#")]
    assert lines[0] == "CRON_TZ=UTC" and lines[2] == "CRON_TZ=America/New_York"
    assert lines[1].startswith("0 6 * * 1-5 ") and lines[1].endswith(f"# schedule {sid}")
    words = shlex.split(lines[1][len("0 6 * * 1-5 "):].split("  # ")[0].replace("\\%", "%"))   # cron's % escaped
    assert words[0] == f"PTRADER_TEMPLATES={TEMPLATES}"                    # hello is not in nbs/reports; cron lacks the env
    exe, args = Path(words[1]), words[2:]
    assert exe.is_absolute() and exe.is_file() and os.access(exe, os.X_OK) and exe.name == "ptrader"
    assert args[0] == "report"
    a = report_parser().parse_args(args[1:])                               # the line parses as `ptrader report run ...`
    assert (a.cmd, a.name, a.db, a.out, a.quiet) == ("run", "hello", home / "w.duckdb", home / "reports", True)
    assert parse_params(a.name, a.param).model_dump(exclude_unset=True) == {"n": 2, "greeting": "100% sure", "symbols": ["SP500", "WTI"]}
    assert call(cli_main, "unschedule", sid)[0] == 0 and list(schedules().id) == [sid2]
    code, _, err = call(cli_main, "unschedule", sid)
    assert code == 2 and f"no schedule {sid}" in err


def _set_last_fire(sid, when):
    "Pretend the schedule was made, and last ran, at `when` (the scheduler was down since)."
    w = when.astimezone(UTC).replace(tzinfo=None)
    with run_table() as con: con.execute("UPDATE schedules SET last_fire_utc = ?, created_utc = ? WHERE id = ?", [w, w, sid])


def test_missed_runs_after_downtime_run_once_within_the_grace_period(home):
    "Yearly cron, last run two years ago: two fires missed; within the grace period they coalesce into one run at start."
    sid = add_schedule("hello", "0 0 1 1 *", parse_params("hello", ["n=1"]))
    now = dt.datetime.now(UTC)
    _set_last_fire(sid, now - dt.timedelta(days=800))
    done = ReportScheduler(grace=400 * 86400, until=now + dt.timedelta(seconds=20), reload_s=3600).run()
    assert len(done) == 1 and done[0][2] == "ok"                                           # once, not once per missed fire
    row = runs().iloc[0]
    assert row.trigger == f"schedule:{sid}" and row["name"] == done[0][1]
    last = schedules().last_fire_utc.iloc[0]
    assert abs((last - pd.Timestamp(now).tz_localize(None)).total_seconds()) < 30            # the start of that run, persisted
    # a restart: nothing was missed since the stored start, so nothing runs
    assert ReportScheduler(grace=400 * 86400, until=dt.datetime.now(UTC) + dt.timedelta(seconds=3), reload_s=3600).run() == []
    # missed fires older than the grace period are skipped, and the stored time is left alone
    _set_last_fire(sid, now - dt.timedelta(days=800))
    assert ReportScheduler(grace=86400, until=dt.datetime.now(UTC) + dt.timedelta(seconds=3), reload_s=3600).run() == []
    assert schedules().last_fire_utc.iloc[0] == pd.Timestamp(now - dt.timedelta(days=800)).tz_localize(None)
    assert len(runs()) == 1 and alerts(home) == []


def test_a_run_that_cannot_start_is_recorded_and_alerted(home, tmp_path, monkeypatch):
    extra = tmp_path / "mine"; extra.mkdir()
    (extra / "gone.ipynb").write_bytes((TEMPLATES / "hello.ipynb").read_bytes())
    monkeypatch.setenv("PTRADER_TEMPLATES", os.pathsep.join([str(TEMPLATES), str(extra)]))
    sid = add_schedule("gone", "* * * * * *", parse_params("gone", ["n=1"]))
    (extra / "gone.ipynb").unlink()                                         # the researcher removed the template
    code, out, err = call(scheduler_main, "run", "--max-runs", "1", "--until", (dt.datetime.now(UTC) + dt.timedelta(seconds=60)).isoformat())
    assert code == 0 and "1 run(s), 0 ok, 1 failed" in out, err
    row = runs().iloc[0]
    assert (row.status, row.trigger, row.html) == ("failed", f"schedule:{sid}", None) and "FileNotFoundError" in row.error
    (a,) = alerts(home)
    assert (a["severity"], a["type"], a["source"]) == ("WARNING", "report_run_failed", "ptrader.reports") and row["name"] in a["message"]


def _check_two_scheduled_runs(home, sid, done_line):
    "The must-show: two runs of one schedule, the first failing on purpose, both recorded, alerted once, both in the index."
    assert "2 run(s), 1 ok, 1 failed" in done_line
    df = runs()
    assert list(df.status) == ["ok", "failed"] and set(df.trigger) == {f"schedule:{sid}"}
    assert "RuntimeError: failing on purpose: run 1" in df.error.iloc[1]
    page = (home / "reports" / "index.html").read_text()
    assert "2 run(s)" in page and all(f"href='{h}'" in page and (home / "reports" / h).is_file() for h in df.html)
    (a,) = alerts(home)
    assert a["type"] == "report_run_failed" and df.name.iloc[1] in a["message"] and f"schedule {sid}" in a["message"]
    return df


def test_scheduler_survives_a_failing_run_seconds_trigger(home):
    "The same path as the one-minute cron below, on a seconds field so that it takes seconds."
    sid = add_schedule("hello", "*/2 * * * * *", parse_params("hello", [f"counter_file={home / 'count'}", "fail_on_run=1"]))
    until = (dt.datetime.now(UTC) + dt.timedelta(seconds=150)).isoformat()
    code, out, err = call(scheduler_main, "run", "--max-runs", "2", "--until", until, "--alerts-file", home / "alerts.jsonl")
    assert code == 0, err
    _check_two_scheduled_runs(home, sid, out)
    assert (home / "count").read_text() == "2"


@pytest.mark.slow
def test_one_minute_cron_runs_twice_one_failing_on_purpose(home):
    "The must-show, as a user runs it: `ptrader report schedule` then `ptrader scheduler run`, in subprocesses (up to ~2.5 min)."
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    py = lambda *args, **kw: subprocess.run([sys.executable, "-c", "import sys; from ptrader.cli import main; sys.exit(main())",
                                             *map(str, args)], env=env, capture_output=True, text=True, **kw)
    s = py("report", "schedule", "hello", "--cron", "* * * * *", "-p", f"counter_file={home / 'count'}", "-p", "fail_on_run=1")
    assert s.returncode == 0, s.stderr
    sid = int(re.match(r"schedule (\d+):", s.stdout).group(1))
    until = (dt.datetime.now(UTC) + dt.timedelta(seconds=190)).isoformat()
    # --grace 0: no catch-up run at start for a fire missed between `schedule` and `run`; both runs are cron fires
    r = py("scheduler", "run", "--max-runs", "2", "--until", until, "--grace", "0", timeout=300)
    assert r.returncode == 0, r.stderr
    df = _check_two_scheduled_runs(home, sid, r.stdout)
    starts = sorted(pd.to_datetime(df.started_utc))
    # a minute apart, each within seconds of its minute (a run's start is stamped after its imports: seconds on a busy machine)
    assert 45 <= (starts[1] - starts[0]).total_seconds() <= 75 and all(t.second <= 15 for t in starts), starts
    print(s.stdout + r.stdout + py("report", "list").stdout)


def test_index_filters_by_template_and_status_in_chromium(home):
    "The index's two menus, in Debian's Chromium through Playwright: the rows shown are those of the chosen template and status."
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path("/usr/bin/chromium").is_file(): pytest.skip("no /usr/bin/chromium (apt-get install chromium)")
    out = home / "reports"; out.mkdir()
    history = [("a", 0, "failed"), ("a", 1, "ok"), ("b", 2, "failed"), ("b", 3, "ok"), ("a", 4, "ok"), ("c", 5, "ok")]
    for t, m, st in history: record_run(_fake_run(out, f"{t}-{m}", t, m, st), out, keep=1000, index=m == 5)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium",
                                    args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            page = browser.new_page()
            page.goto((out / "index.html").as_uri())
            shown = lambda: sorted(page.eval_on_selector_all("tr.run", "rs => rs.filter(r => r.offsetParent !== null)"
                                                                           ".map(r => r.querySelector('a').getAttribute('href'))"))
            assert shown() == sorted(f"{t}-{m}.html" for t, m, _ in history) and page.inner_text("#shown") == "6 shown"
            page.select_option("#f-template", "a")
            assert shown() == ["a-0.html", "a-1.html", "a-4.html"] and page.inner_text("#shown") == "3 shown"
            page.select_option("#f-status", "failed")
            assert shown() == ["a-0.html"]
            page.select_option("#f-template", "")
            assert shown() == ["a-0.html", "b-2.html"] and page.inner_text("#shown") == "2 shown"
        finally: browser.close()
