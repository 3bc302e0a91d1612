"""`ptrader ingest` on good and corrupt files: every validation rule gives a message naming the file,
row and rule, and leaves the warehouse unchanged; re-ingesting changes nothing; a SIGKILL mid-write
leaves the warehouse as it was."""
import hashlib
import os
import signal
import subprocess
import sys
import time

import duckdb
import numpy as np
import pandas as pd
import pytest

from ptrader.data import Warehouse, load_bundled

GOOD = """Date,Open,High,Low,Close,Adj Close,Volume
2021-01-04,100,102,99,101,101,1000
2021-01-05,101,103,100,102,102,1100
2021-01-06,102,104,101,103,103,1200
2021-01-07,103,105,102,104,104,1300
2021-01-08,104,106,103,105,105,1400
"""


def snapshot(db):
    "Row counts and a content hash of every table: what 'unchanged' means."
    con = duckdb.connect(str(db), read_only=True)
    try:
        out = {}
        for t in ("bars", "quarantine", "ingests"):
            rows = con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
            out[t] = (len(rows), hashlib.sha256(repr(rows).encode()).hexdigest())
        return out
    finally:
        con.close()


@pytest.fixture
def loaded(tmp_path, env, cli):
    "A warehouse holding one good file for symbol ABC; returns its path."
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    r = cli("ingest", f, "--symbol", "ABC")
    assert r.returncode == 0, r.stderr
    return tmp_path / "w.duckdb"


def corrupt(line_no, new_line):
    "GOOD with data line `line_no` (1-based, after the header) replaced."
    lines = GOOD.splitlines()
    lines[line_no] = new_line
    return "\n".join(lines) + "\n"


# (rule, file text, data row that breaks it)
CASES = [
    ("unparseable_date", corrupt(3, "2021-13-45,102,104,101,103,103,1200"), 3),
    ("unparseable_number", corrupt(2, "2021-01-05,abc,103,100,102,102,1100"), 2),
    ("nan", corrupt(4, "2021-01-07,103,105,102,,104,1300"), 4),
    ("nan", corrupt(4, "2021-01-07,103,105,102,NaN,104,1300"), 4),
    ("non_positive_price", corrupt(5, "2021-01-08,104,106,103,-105,105,1400"), 5),
    ("non_positive_price", corrupt(1, "2021-01-04,0,102,99,101,101,1000"), 1),
    ("negative_volume", corrupt(2, "2021-01-05,101,103,100,102,102,-1"), 2),
    ("high_below_open_close", corrupt(3, "2021-01-06,102,102.5,101,103,103,1200"), 3),
    ("low_above_open_close", corrupt(3, "2021-01-06,102,104,102.5,103,103,1200"), 3),
    ("duplicate_conflict", corrupt(3, "2021-01-05,101,103,100,102.5,102,1100"), 2),
]


@pytest.mark.parametrize("rule,text,row", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_corrupt_file_is_refused_and_warehouse_unchanged(loaded, tmp_path, cli, rule, text, row):
    before = snapshot(loaded)
    f = tmp_path / "bad.csv"
    f.write_text(text)
    r = cli("ingest", f, "--symbol", "ABC")
    assert r.returncode == 2
    assert str(f) in r.stderr and f"rule {rule}" in r.stderr and f"row {row} " in r.stderr, r.stderr
    assert "nothing was written" in r.stderr
    assert snapshot(loaded) == before


def test_missing_column_rejects_whole_file(loaded, tmp_path, cli):
    before = snapshot(loaded)
    f = tmp_path / "nolow.csv"
    f.write_text(GOOD.replace(",Low", ",Lo"))
    r = cli("ingest", f, "--symbol", "ABC")
    assert r.returncode == 2
    assert "missing required column(s) 'low'" in r.stderr and "rule=missing_column" in r.stderr and str(f) in r.stderr
    assert snapshot(loaded) == before


def test_quarantine_mode_keeps_good_rows_and_records_bad_ones(loaded, tmp_path, cli):
    f = tmp_path / "mixed.csv"
    f.write_text(corrupt(5, "2021-01-08,104,106,103,-105,105,1400").replace("2021-01-0", "2022-01-0"))
    r = cli("ingest", f, "--symbol", "ABC", "--quarantine")
    assert r.returncode == 0, r.stderr
    assert "4 accepted (4 new, 0 updated), 1 quarantined" in r.stdout
    with Warehouse(loaded, read_only=True) as wh:
        q = wh.quarantine("ABC")
        assert q["rule"].tolist() == ["non_positive_price"] and q["row"].tolist() == [5]
        assert len(wh.bars("ABC")) == 9


def test_reingest_same_file_changes_nothing(loaded, tmp_path, cli):
    before = snapshot(loaded)
    r = cli("ingest", tmp_path / "good.csv", "--symbol", "ABC")
    assert r.returncode == 0 and "nothing changed" in r.stdout
    assert snapshot(loaded) == before
    # the same rows from another file: the upsert rewrites nothing
    g = tmp_path / "copy.csv"
    g.write_text(GOOD.replace("Date,", "date,"))
    r = cli("ingest", g, "--symbol", "ABC")
    assert r.returncode == 0 and "(0 new, 0 updated)" in r.stdout
    assert snapshot(loaded)["bars"] == before["bars"]


def test_unsorted_gaps_and_extreme_returns_are_reported_not_rejected(tmp_path):
    lines = GOOD.splitlines()
    body = [lines[3], lines[1], lines[2], lines[5].replace("105,105,1400", "105,105,1400")]
    body[-1] = "2021-01-15,104,160,103,150,150,1400"  # a week missing and a +44% close
    f = tmp_path / "odd.csv"
    f.write_text("\n".join([lines[0], *body]) + "\n")
    with Warehouse(tmp_path / "w.duckdb") as wh:
        res = wh.ingest_file(f, symbol="ODD")
        rep = res.report
        assert (rep.was_sorted, rep.n_out_of_order) == (False, 1)
        assert rep.gaps == [("2021-01-07", "2021-01-14", 6)]
        assert [r[0] for r in rep.extreme_returns] == ["2021-01-15 00:00:00"]
        assert wh.bars("ODD").index.is_monotonic_increasing and len(wh.bars("ODD")) == 4


def test_parquet_and_bundled(tmp_path, cli):
    raw, _, _ = load_bundled("NASDAQ")
    raw.iloc[:300].to_parquet(tmp_path / "nq.parquet")
    assert cli("ingest", tmp_path / "nq.parquet", "--symbol", "NQ").returncode == 0
    r = cli("ingest", "--bundled")
    assert r.returncode == 0, r.stderr
    assert "SP500: 5031 rows read, 5031 accepted" in r.stdout and "WTI:" in r.stdout and "quarantined" in r.stdout
    with Warehouse(tmp_path / "w.duckdb", read_only=True) as wh:
        assert set(wh.symbols()) == {"NQ", "SP500", "NASDAQ", "VIX", "WTI"}
        np.testing.assert_array_equal(wh.bars("NQ")["close"].to_numpy(), raw["Close"].iloc[:300].to_numpy())
    assert cli("ingest").returncode != 0  # neither PATH nor --bundled


def test_sigkill_mid_ingest_leaves_warehouse_unchanged(loaded, tmp_path, env):
    n = 4_000_000
    ts = pd.date_range("2000-01-03", periods=n, freq="min")
    px = 100 + np.cumsum(np.random.default_rng(0).normal(0, 0.01, n))
    pd.DataFrame({"ts": ts, "open": px, "high": px + 0.05, "low": px - 0.05, "close": px, "volume": 1.0}).to_parquet(tmp_path / "big.parquet")
    before = snapshot(loaded)
    cmd = [sys.executable, "-c", "import sys; from ptrader.cli import main; sys.exit(main())",
           "-v", "ingest", str(tmp_path / "big.parquet"), "--symbol", "BIG"]
    p = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in p.stderr:  # wait until the transaction is writing
            if "writing 4000000 rows" in line:
                break
        else:
            pytest.fail("the ingest never reached its write")
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == -signal.SIGKILL
    assert snapshot(loaded) == before
    with Warehouse(loaded) as wh:  # and the warehouse is still usable
        assert "BIG" not in wh.symbols()
