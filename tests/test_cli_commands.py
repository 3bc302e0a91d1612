"""The command line's own contract (issues 10 and 11): `validate --help` says what the report holds,
the MA grid and every numeric parameter are checked before any run, `status` prints a per-symbol
table without writing anything, and each failure class has its exit code."""
import time

import pandas as pd

from ptrader.data import Warehouse, file_sha256

from test_ingest import GOOD


def test_validate_help_describes_sections_and_bundled_ingest(cli):
    r = cli("validate", "--help")
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    for words in ["provenance and quality", "prices, returns and drawdowns", "walk-forward baselines", "live risk policy",
                  "statistical evidence and the verdict", "forecasting", "agentic validation", "--agent none skips it", "(SP500, NASDAQ, VIX, WTI) are ingested into it automatically",
                  "--fast-windows N [N ...]", "--slow-windows N [N ...]", "75 the warehouse is being written by another process"]:
        assert words in text, words


def test_numeric_parameters_are_refused_before_any_run(cli):
    for args, needle in [(["--initial-cash", "inf"], "argument --initial-cash: must be a finite number, got 'inf'"),
                         (["--fees-bps", "nan"], "argument --fees-bps: must be a finite number, got 'nan'"),
                         (["--slippage-bps=-inf"], "argument --slippage-bps: must be a finite number"),
                         (["--lock-timeout", "inf"], "argument --lock-timeout: must be a finite number"),
                         (["--train-bars", "1e3"], "argument --train-bars: not a whole number"),
                         (["--fast-windows", "0"], "argument --fast-windows: must be >= 1"),
                         (["--initial-cash=-5"], "initial_cash"),
                         (["--fast-windows", "60", "--slow-windows", "50"], "no valid (fast, slow) pair")]:
        t0 = time.monotonic()
        r = cli("validate", *args)
        assert r.returncode == 2 and needle in r.stderr, (args, r.stderr)
        assert time.monotonic() - t0 < 20 and "Traceback" not in r.stderr  # refused at once, not inside the notebook


def test_status_table_and_read_only(cli, env, tmp_path):
    a = tmp_path / "a.csv"
    a.write_text(GOOD)
    b = tmp_path / "b.csv"
    b.write_text("Date,Open,High,Low,Close\n2020-03-02,10,11,9,10\n2020-03-03,10,11,9,-1\n2020-03-04,10,11,9,10.5\n")
    assert cli("ingest", a, "--symbol", "AAA").returncode == 0
    assert cli("ingest", b, "--symbol", "BBB", "--quarantine").returncode == 0
    db = tmp_path / "w.duckdb"
    sha = file_sha256(db)
    r = cli("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == f"warehouse {db}: 7 bars, 1 quarantined rows, 2 ingests"
    assert lines[1].split() == ["symbol", "bars", "first", "bar", "last", "bar", "quarantined", "ingests", "last", "ingest", "(UTC)"]
    with Warehouse(db, read_only=True) as wh:
        last = {s: str(t)[:19] for s, t in wh.ingests().set_index("symbol")["finished_at"].items()}
    assert lines[2].split() == ["AAA", "5", "2021-01-04", "2021-01-08", "0", "1", *last["AAA"].split()]
    assert lines[3].split() == ["BBB", "2", "2020-03-02", "2020-03-04", "1", "1", *last["BBB"].split()]
    assert file_sha256(db) == sha and not db.with_name(db.name + ".writing").exists()


def test_exit_codes_are_distinct(cli, tmp_path):
    f = tmp_path / "bad.csv"
    f.write_text(GOOD.replace("2021-01-05", "2021-13-45"))
    assert cli("ingest", f, "--symbol", "X").returncode == 2             # bad input
    assert cli("ingest", f).returncode == 2                               # usage: --symbol missing
    assert cli("ingest", f, "--symbol", "X", "--decimal", ";").returncode == 2   # argparse choice
    assert cli("status").returncode == 2                                  # no warehouse yet


def test_delegated_commands_reach_their_modules(cli, tmp_path):
    "`ptrader agent|report|scheduler|dashboard` run their modules' entry points; global options may come first."
    for args, code, needle in [(["agent", "evaluate", "--cadence", "0"], 2, "ptrader agent evaluate: --cadence"),
                               (["dashboard", "--port", "99999"], 2, "ptrader dashboard: --port"),
                               (["report", "run", "no_such_template"], 2, "no_such_template"),
                               (["scheduler", "--help"], 0, "ptrader scheduler")]:
        r = cli("--db", tmp_path / "w.duckdb", *args)
        assert r.returncode == code and needle in (r.stderr + r.stdout), (args, r.returncode, r.stderr[-500:])
        assert "Traceback" not in r.stderr
    r = cli("--db", tmp_path / "w.duckdb", "report", "list")
    assert r.returncode == 0, r.stderr
