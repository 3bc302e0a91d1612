"""Issue 10, "nothing lost, nothing silently wrong": every bad input or fault is refused with a message
naming the file (or warehouse path), the row and the rule, exits non-zero without a traceback, and
leaves the warehouse's row counts and content hashes (bars, quarantine, ingests) unchanged.

Each case class has a representative run as a real `ptrader` subprocess (the `cli` fixture); the
other members of the class (other dates, encodings, file types, sizes) run through the same entry
point, `ptrader.cli.main`, in-process, which checks the same exit code, message and warehouse
without paying a Python start-up per variant."""
import bz2
import contextlib
import datetime as dt
import gzip
import io
import lzma
import os
import shutil
import sqlite3
import subprocess

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ptrader.cli import main
from ptrader.data import DATE_MAX, DATE_MIN, SYMBOL_RULE, Warehouse, file_sha256

from test_ingest import GOOD, snapshot

H = "Date,Open,High,Low,Close\n"
ROW = "2021-01-04,100,102,99,101\n"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    "A warehouse with bars, a quarantined row and two ingests, built once; each test gets a copy."
    d = tmp_path_factory.mktemp("template")
    (d / "good.csv").write_text(GOOD)
    (d / "mixed.csv").write_text(H + "2022-01-03,10,11,9,10\n2022-01-04,10,11,9,-1\n")
    with Warehouse(d / "w.duckdb") as wh:
        wh.ingest_file(d / "good.csv", symbol="ABC")
        wh.ingest_file(d / "mixed.csv", symbol="MIX", on_bad_rows="quarantine")
        assert wh.row_counts() == {"bars": 6, "quarantine": 1, "ingests": 2}
    return d / "w.duckdb"


@pytest.fixture
def db(template, tmp_path):
    "This test's warehouse (the path `env` points PTRADER_DB at)."
    p = tmp_path / "w.duckdb"
    shutil.copyfile(template, p)
    return p


def run_main(*args):
    "Run the CLI entry point in-process: (exit code, stdout, stderr)."
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in args])
        except SystemExit as e:  # argparse errors
            code = e.code
    return code, out.getvalue(), err.getvalue()


def check_refused(db, code, out, err, *needles, want=2, one_line=True):
    "The common assertions: exit code, no traceback, one line (for faults), the needles, nothing left behind."
    assert code == want, (code, out, err)
    assert "Traceback" not in err, err
    if one_line:
        assert len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert str(n) in err, (n, err)
    assert not db.with_name(db.name + ".writing").exists()


def refused_sub(cli, db, *args, needles=(), want=2, one_line=True):
    before = snapshot(db)
    r = cli("-q", *args)
    check_refused(db, r.returncode, r.stdout, r.stderr, *needles, want=want, one_line=one_line)
    assert snapshot(db) == before
    return r


def refused_main(db, *args, needles=(), want=2, one_line=True):
    before = snapshot(db)
    code, out, err = run_main("-q", *args, "--db", db)
    check_refused(db, code, out, err, *needles, want=want, one_line=one_line)
    assert snapshot(db) == before
    return err


def ok_main(db, *args):
    code, out, err = run_main("-q", *args, "--db", db)
    assert code == 0, (code, out, err)
    return out


def closes(db, symbol):
    with Warehouse(db, read_only=True) as wh:
        return wh.bars(symbol)


# ---------------------------------------------------------------------------------------------
# 1. dates outside the range pandas holds: a row rule of their own, never a wrapped date

BAD_DATES = ["9999-12-31", "1600-01-03", "2262-04-12", "1677-09-21", "1677-09-21 00:12:43", "0001-01-01",
             "2261-12-31T23:00:00-05:00", "3000-06-15", "1200-02-29"]


def test_out_of_range_date_subprocess(cli, db, tmp_path):
    f = tmp_path / "far.csv"
    f.write_text(H + ROW + "9999-12-31,100,102,99,101\n")
    r = refused_sub(cli, db, "ingest", f, "--symbol", "FAR", needles=[f, "rule date_out_of_range", "row 2 ",
                                                                       "outside 1678-01-01..2261-12-31"], one_line=False)
    assert r.stderr.splitlines()[0].count(str(f)) == 1  # the first line names the file, the row and the rule
    assert "row 2 (rule date_out_of_range)" in r.stderr.splitlines()[0]


@pytest.mark.parametrize("bad", BAD_DATES)
def test_out_of_range_dates_csv(db, tmp_path, bad):
    f = tmp_path / "far.csv"
    f.write_text(H + ROW + f"{bad},100,102,99,101\n")
    refused_main(db, "ingest", f, "--symbol", "FAR", needles=[f, "rule date_out_of_range", "row 2 "], one_line=False)


PARQUET_DATES = [
    pa.array([dt.datetime(2021, 1, 4), dt.datetime(9999, 12, 31)], pa.timestamp("us")),
    pa.array([dt.datetime(2021, 1, 4), dt.datetime(1600, 1, 3)], pa.timestamp("ms")),
    pa.array([dt.datetime(2021, 1, 4), dt.datetime(2262, 4, 12)], pa.timestamp("s", tz="UTC")),
    pa.array([dt.date(2021, 1, 4), dt.date(2300, 1, 1)], pa.date32()),
]


@pytest.mark.parametrize("dates", PARQUET_DATES, ids=["us-9999", "ms-1600", "s-utc-2262", "date32-2300"])
def test_out_of_range_dates_parquet(db, tmp_path, dates):
    f = tmp_path / "far.parquet"
    pq.write_table(pa.table({"Date": dates, "Open": [100.0] * 2, "High": [102.0] * 2, "Low": [99.0] * 2, "Close": [101.0] * 2}), f)
    refused_main(db, "ingest", f, "--symbol", "FAR", needles=[f, "rule date_out_of_range", "row 2 "], one_line=False)


def test_out_of_range_dates_quarantined_and_bounds_kept(db, tmp_path):
    f = tmp_path / "far.csv"
    f.write_text(H + "1678-01-01,100,102,99,101\n" + "".join(f"{b},100,102,99,101\n" for b in BAD_DATES) + "2261-12-31,100,102,99,101\n")
    ok_main(db, "ingest", f, "--symbol", "FAR", "--quarantine")
    with Warehouse(db, read_only=True) as wh:
        q = wh.quarantine("FAR")
        assert q["rule"].tolist() == ["date_out_of_range"] * len(BAD_DATES)
        assert q["row"].tolist() == list(range(2, 2 + len(BAD_DATES)))
        assert wh.bars("FAR").index.tolist() == [pd.Timestamp("1678-01-01"), pd.Timestamp("2261-12-31")]
    assert DATE_MIN == pd.Timestamp("1678-01-01") and DATE_MAX.date() == dt.date(2261, 12, 31)


# ---------------------------------------------------------------------------------------------
# 2. a comma in a number is never guessed

COMMA_CASES = [  # (file name, text or parquet columns, row that breaks the rule)
    ("quoted.csv", H + ROW + '2021-01-05,"100,5",102,99,101\n', 2),
    ("semi.csv", "Date;Open;High;Low;Close\n2021-01-04;100,5;102;99;101\n", 1),
    ("vol.csv", "Date,Open,High,Low,Close,Volume\n2021-01-04,100,102,99,101,\"1,000\"\n", 1),
    ("tab.tsv", "Date\tOpen\tHigh\tLow\tClose\n2021-01-04\t100\t102\t99\t101,25\n", 1),
    ("pipe.txt", "Date|Open|High|Low|Close\n2021-01-04|100|102|99|101\n2021-01-05|1.000,5|1.002|999|1.001\n", 2),
]


def test_decimal_comma_subprocess(cli, db, tmp_path):
    f = tmp_path / "semi.csv"
    f.write_text("Date;Open;High;Low;Close\n2021-01-04;100,5;102;99;101\n")
    refused_sub(cli, db, "ingest", f, "--symbol", "EU", needles=[f, "rule comma_in_number", "row 1 ", "--decimal ,"], one_line=False)
    r = cli("-q", "ingest", f, "--symbol", "EU", "--decimal", ",")
    assert r.returncode == 0, r.stderr
    assert closes(db, "EU")["open"].tolist() == [100.5]  # not 1005.0


@pytest.mark.parametrize("name,text,row", COMMA_CASES, ids=[c[0] for c in COMMA_CASES])
def test_comma_refused_in_every_form(db, tmp_path, name, text, row):
    f = tmp_path / name
    f.write_text(text)
    refused_main(db, "ingest", f, "--symbol", "EU", needles=[f, "rule comma_in_number", f"row {row} "], one_line=False)


def test_comma_in_parquet_text_column(db, tmp_path):
    f = tmp_path / "text.parquet"
    pd.DataFrame({"Date": ["2021-01-04"], "Open": ["100,5"], "High": ["102"], "Low": ["99"], "Close": ["101"]}).to_parquet(f)
    refused_main(db, "ingest", f, "--symbol", "EU", needles=[f, "rule comma_in_number", "row 1 "], one_line=False)
    ok_main(db, "ingest", f, "--symbol", "EU", "--decimal", ",")
    assert closes(db, "EU")["open"].tolist() == [100.5]


@pytest.mark.parametrize("text,opts,open_", [
    ("Date;Open;High;Low;Close\n2021-01-04;100,5;102;99;101\n", ["--decimal", ","], 100.5),
    ("Date;Open;High;Low;Close\n2021-01-04;100,5;102;99;101\n", ["--sep", ";", "--decimal", ","], 100.5),
    ('Date,Open,High,Low,Close\n2021-01-04,"1,234.5","1,240","1,230","1,235"\n', ["--thousands", ","], 1234.5),
    ("Date;Open;High;Low;Close\n2021-01-04;1.234,5;1.240;1.230;1.235\n", ["--decimal", ",", "--thousands", "."], 1234.5),
])
def test_comma_with_its_meaning_given(db, tmp_path, text, opts, open_):
    f = tmp_path / "given.csv"
    f.write_text(text)
    ok_main(db, "ingest", f, "--symbol", "EU", *opts)
    assert closes(db, "EU")["open"].tolist() == [open_]


def test_decimal_comma_read_as_thousands_is_refused(db, tmp_path):
    f = tmp_path / "semi.csv"
    f.write_text('Date,Open,High,Low,Close\n2021-01-04,"100,5",102,99,101\n')
    refused_main(db, "ingest", f, "--symbol", "EU", "--thousands", ",", needles=[f, "rule unparseable_number", "row 1 "], one_line=False)


# ---------------------------------------------------------------------------------------------
# 3. --db naming something that is not a DuckDB database file

def _not_duckdb(kind, p):
    if kind == "csv": p.write_text(GOOD)
    elif kind == "parquet": pd.DataFrame({"a": [1, 2]}).to_parquet(p)
    elif kind == "empty": p.write_bytes(b"")
    elif kind == "text": p.write_text("hello\n")
    elif kind == "random": p.write_bytes(np.random.default_rng(0).bytes(100_000))
    elif kind == "sqlite":
        con = sqlite3.connect(p); con.execute("CREATE TABLE t (a)"); con.commit(); con.close()
    return p


NOT_DUCKDB = ["csv", "parquet", "empty", "text", "random", "sqlite"]


def test_db_not_duckdb_subprocess(cli, tmp_path):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    x = _not_duckdb("csv", tmp_path / "x.csv")
    sha = file_sha256(x)
    for cmd in (["ingest", f, "--symbol", "X"], ["status"], ["validate", "--symbols", "SP500"]):
        r = cli("-q", *cmd, "--db", x)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and f"{x} exists and is not a DuckDB database file" in r.stderr
    assert file_sha256(x) == sha and sorted(p.name for p in tmp_path.iterdir()) == ["good.csv", "x.csv"]


@pytest.mark.parametrize("kind", NOT_DUCKDB)
def test_db_not_duckdb_every_kind(tmp_path, kind):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    x = _not_duckdb(kind, tmp_path / f"x.{kind}")
    sha = file_sha256(x)
    for cmd in (["ingest", f, "--symbol", "X"], ["status"]):
        code, out, err = run_main("-q", *cmd, "--db", x)
        assert code == 2 and len(err.strip().splitlines()) == 1 and f"{x} exists and is not a DuckDB database file" in err, err
    assert file_sha256(x) == sha and not (tmp_path / f"x.{kind}.lock").exists()


# ---------------------------------------------------------------------------------------------
# 4. integer dates need a format

def _int_dates(kind, p):
    if kind == "parquet-int64": pd.DataFrame({"Date": [20210201, 20210202], "Open": [1.0, 1.0], "High": [2.0, 2.0], "Low": [0.5, 0.5], "Close": [1.5, 1.5]}).to_parquet(p)
    elif kind == "parquet-int32": pq.write_table(pa.table({"Date": pa.array([20210201, 20210202], pa.int32()), "Open": [1.0, 1.0], "High": [2.0, 2.0], "Low": [0.5, 0.5], "Close": [1.5, 1.5]}), p)
    elif kind == "parquet-float": pd.DataFrame({"Date": [20210201.0, 20210202.0], "Open": [1.0, 1.0], "High": [2.0, 2.0], "Low": [0.5, 0.5], "Close": [1.5, 1.5]}).to_parquet(p)
    elif kind == "csv-yyyymmdd": p.write_text(H + "20210201,1,2,0.5,1.5\n20210202,1,2,0.5,1.5\n")
    elif kind == "csv-epoch": p.write_text(H + "1612137600,1,2,0.5,1.5\n1612224000,1,2,0.5,1.5\n")
    return p


INT_KINDS = ["parquet-int64", "parquet-int32", "parquet-float", "csv-yyyymmdd", "csv-epoch"]


def test_integer_dates_subprocess(cli, db, tmp_path):
    f = _int_dates("parquet-int64", tmp_path / "ints.parquet")
    refused_sub(cli, db, "ingest", f, "--symbol", "INT", needles=[f, "rule=integer_date", "--date-format %Y%m%d"])
    r = cli("-q", "ingest", f, "--symbol", "INT", "--date-format", "%Y%m%d")
    assert r.returncode == 0, r.stderr
    assert closes(db, "INT").index.tolist() == [pd.Timestamp("2021-02-01"), pd.Timestamp("2021-02-02")]  # not 1970-01-01 00:00:00.020


@pytest.mark.parametrize("kind", INT_KINDS)
def test_integer_dates_every_kind(db, tmp_path, kind):
    f = _int_dates(kind, tmp_path / ("ints.parquet" if kind.startswith("parquet") else "ints.csv"))
    refused_main(db, "ingest", f, "--symbol", "INT", needles=[f, "rule=integer_date"])
    if kind == "csv-epoch":  # seconds since 1970 do not match %Y%m%d: refused, not misread
        refused_main(db, "ingest", f, "--symbol", "INT", "--date-format", "%Y%m%d", needles=[f, "rule unparseable_date"], one_line=False)
    else:
        ok_main(db, "ingest", f, "--symbol", "INT", "--date-format", "%Y%m%d")
        assert closes(db, "INT").index.tolist() == [pd.Timestamp("2021-02-01"), pd.Timestamp("2021-02-02")]


# ---------------------------------------------------------------------------------------------
# 5. duplicated columns, also through case and aliases

DUPES = [("Date,Open,High,Low,Close,Close", "'Close' and 'Close'"), ("Date,Open,High,Low,Close,close", "'Close' and 'close'"),
         ("Date,Datetime,Open,High,Low,Close", "'Date' and 'Datetime'"), ("Date,Open,High,Low,Close,Adj Close,adj_close", "'Adj Close' and 'adj_close'"),
         ("Date,Open,High,Low,Close,Volume,Vol", "'Volume' and 'Vol'"), ("Date,Open,High,Low,Close,Last", "'Close' and 'Last'")]


def test_duplicate_column_subprocess(cli, db, tmp_path):
    f = tmp_path / "dup.csv"
    f.write_text("Date,Open,High,Low,Close,Close\n2021-01-04,100,102,99,101,50\n")
    refused_sub(cli, db, "ingest", f, "--symbol", "DUP", needles=[f, "rule=duplicate_column", "'Close' and 'Close'"])


@pytest.mark.parametrize("header,names", DUPES, ids=[d[0].split(",", 5)[-1] for d in DUPES])
def test_duplicate_columns_every_form(db, tmp_path, header, names):
    f = tmp_path / "dup.csv"
    n = header.count(",") + 1
    f.write_text(header + "\n" + ",".join(["2021-01-04", *["100"] * (n - 1)]) + "\n")
    refused_main(db, "ingest", f, "--symbol", "DUP", needles=[f, "rule=duplicate_column", names])


def test_duplicate_column_parquet(db, tmp_path):
    f = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["2021-01-04"]), *[pa.array([100.0])] * 5], names=["Date", "Open", "High", "Low", "Close", "Close"]), f)
    refused_main(db, "ingest", f, "--symbol", "DUP", needles=[f, "rule=duplicate_column", "'Close' and 'Close'"])


# ---------------------------------------------------------------------------------------------
# bad input and faults: one line, never a traceback

def _truncated(kind, p):
    body = (H + "".join(f"2021-01-{d:02d},100,102,99,101\n" for d in range(4, 29)) * 400).encode()
    comp = {"gz": gzip.compress, "bz2": bz2.compress, "xz": lzma.compress}
    if kind == "garbage.gz": p.write_bytes(b"this is not gzip at all\n" * 10)
    else: z = comp[kind](body); p.write_bytes(z[: len(z) // 2])
    return p


def test_truncated_gzip_subprocess(cli, db, tmp_path):
    f = _truncated("gz", tmp_path / "cut.csv.gz")
    refused_sub(cli, db, "ingest", f, "--symbol", "CUT", needles=[f, "rule=file", "Compressed file ended"])


@pytest.mark.parametrize("kind", ["gz", "bz2", "xz", "garbage.gz"])
def test_truncated_compressed_every_kind(db, tmp_path, kind):
    f = _truncated(kind, tmp_path / f"cut.csv.{kind.split('.')[-1]}")
    refused_main(db, "ingest", f, "--symbol", "CUT", needles=[f, "rule=file"])


def _bad_parquet(kind, p):
    base = {"Date": pa.array(["2021-01-04", "2021-01-05"]), "Open": pa.array([100.0, 101.0]), "High": pa.array([102.0, 103.0]), "Low": pa.array([99.0, 100.0])}
    close = {"bool": pa.array([True, False]), "binary": pa.array([b"101", b"102"]), "timestamp": pa.array([dt.datetime(2021, 1, 4)] * 2, pa.timestamp("us")),
             "list": pa.array([[1.0], [2.0]]), "struct": pa.array([{"x": 1.0}, {"x": 2.0}]), "duration": pa.array([1, 2], pa.duration("s"))}
    if kind == "truncated":
        pq.write_table(pa.table({**base, "Close": pa.array([101.0, 102.0])}), p); b = p.read_bytes(); p.write_bytes(b[: len(b) // 2])
    elif kind == "garbage": p.write_bytes(b"PAR1 not really\n")
    else: pq.write_table(pa.table({**base, "Close": close[kind]}), p)
    return p


def test_boolean_price_parquet_subprocess(cli, db, tmp_path):
    f = _bad_parquet("bool", tmp_path / "bool.parquet")
    refused_sub(cli, db, "ingest", f, "--symbol", "BOO", needles=[f, "rule=non_numeric_column", "'close' holds bool"])


@pytest.mark.parametrize("kind", ["bool", "binary", "timestamp", "list", "struct", "duration", "truncated", "garbage"])
def test_bad_parquet_every_kind(db, tmp_path, kind):
    f = _bad_parquet(kind, tmp_path / f"{kind}.parquet")
    err = refused_main(db, "ingest", f, "--symbol", "BOO", needles=[f])
    assert ("rule=non_numeric_column" in err) if kind not in ("truncated", "garbage") else ("rule=file" in err), err


def test_db_directory_and_corrupt_subprocess(cli, tmp_path, template):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    d = tmp_path / "dir.duckdb"
    d.mkdir()
    r = cli("-q", "ingest", f, "--symbol", "X", "--db", d)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and f"warehouse {d} is a directory" in r.stderr, r.stderr
    assert list(d.iterdir()) == []
    c = tmp_path / "corrupt.duckdb"
    good = template.read_bytes()
    c.write_bytes(good[:12] + np.random.default_rng(1).bytes(len(good) - 12))
    sha = file_sha256(c)
    for cmd in (["ingest", f, "--symbol", "X"], ["status"]):
        r = cli("-q", *cmd, "--db", c)
        assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
        assert f"warehouse {c}: cannot open it" in r.stderr
    assert file_sha256(c) == sha


@pytest.mark.parametrize("kind", ["truncated", "zeroed-blocks", "under-a-file"])
def test_db_corrupt_every_kind(tmp_path, template, kind):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    good = template.read_bytes()
    c = tmp_path / "w.duckdb"
    if kind == "truncated": c.write_bytes(good[:5000])
    elif kind == "zeroed-blocks": c.write_bytes(good[:4096 * 3] + bytes(len(good) - 4096 * 3))
    else: c = tmp_path / "good.csv" / "w.duckdb"
    for cmd in (["ingest", f, "--symbol", "X"], ["status"]):
        code, out, err = run_main("-q", *cmd, "--db", c)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and str(c) in err, err


BAD_SYMBOLS = ["A\x1bB", "A\nB", "A\tB", "A\x7fB", "A/B", "../../ETC/PASSWD", "'X'", '"X"', "A B", " ABC", "ABC ", "ÉTAT", "A..B", ".X", ""]


def test_control_characters_in_symbol_subprocess(cli, db, tmp_path):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    for bad in ["A\x1b[31mB", "A\nB"]:
        r = refused_sub(cli, db, "ingest", f, f"--symbol={bad}", needles=[SYMBOL_RULE, repr(bad)])
        assert "\x1b" not in r.stderr


@pytest.mark.parametrize("bad", BAD_SYMBOLS, ids=[ascii(s) for s in BAD_SYMBOLS])
def test_one_symbol_rule_for_every_command(db, tmp_path, bad):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    refused_main(db, "ingest", f, f"--symbol={bad}", needles=[SYMBOL_RULE, repr(bad)])
    refused_main(db, "validate", f"--symbols={bad}", needles=[SYMBOL_RULE, repr(bad)])
    with Warehouse(db, read_only=True) as wh, pytest.raises(ValueError, match="a symbol is 1 to 64 characters"):
        wh.bars(bad)


def test_status_escapes_symbols_stored_by_older_versions(cli, db):
    con = duckdb.connect(str(db))  # a warehouse written before the rule, holding a symbol with an ESC
    con.execute("INSERT INTO ingests (ingest_id, symbol, source, source_kind, sha256) VALUES ('old', 'A\x1b[2JB', 'old\x1b.csv', 'csv', 'x')")
    con.close()
    r = cli("status")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "'A\\x1b[2JB'" in r.stdout, r.stdout


ENCODED = [  # (name, bytes, extra options, accepted?)
    ("latin1.csv", (H.strip() + ",Note\n2021-01-04,100,102,99,101,caf\xe9\n").encode("latin-1"), [], False),
    ("latin1-given.csv", (H.strip() + ",Note\n2021-01-04,100,102,99,101,caf\xe9\n").encode("latin-1"), ["--encoding", "latin-1"], True),
    ("cp1252.csv", (H.strip() + ",Note\n2021-01-04,100,102,99,101,5\u20ac\n").encode("cp1252"), [], False),
    ("utf16-bom.csv", (H + ROW).encode("utf-16"), [], True),
    ("utf8-bom.csv", b"\xef\xbb\xbf" + (H + ROW).encode(), [], True),
    ("utf32-bom.csv", (H + ROW).encode("utf-32"), [], True),
    ("utf16le-nobom.csv", (H + ROW).encode("utf-16-le"), [], False),
    ("binary.csv", np.random.default_rng(2).bytes(5000), [], False),
]


def test_latin1_file_subprocess(cli, db, tmp_path):
    f = tmp_path / "latin1.csv"
    f.write_bytes(ENCODED[0][1])
    refused_sub(cli, db, "ingest", f, "--symbol", "ENC", needles=[f, "rule=encoding", "--encoding"])


@pytest.mark.parametrize("name,data,opts,accepted", ENCODED, ids=[e[0] for e in ENCODED])
def test_encodings(db, tmp_path, name, data, opts, accepted):
    f = tmp_path / name
    f.write_bytes(data)
    if accepted:
        ok_main(db, "ingest", f, "--symbol", "ENC", *opts)
        assert closes(db, "ENC")["close"].tolist() == [101.0]
    else:
        refused_main(db, "ingest", f, "--symbol", "ENC", *opts, needles=[f, "rule=encoding", "--encoding"])


@pytest.mark.parametrize("name,text,needle", [
    ("ragged.csv", H + ROW + "2021-01-05,100,102,99,101,7\n", "rule=file"),
    ("empty.csv", "", "rule=file"),
    ("header-only.csv", H, "rule=empty"),
    ("no-ohlc.csv", "a,b\n1,2\n", "rule=missing_column"),
    ("dir.csv", None, "is a directory"),
    ("missing.csv", "MISSING", "file not found"),
    ("prices.xlsx", "x", "unsupported file type"),
])
def test_other_unreadable_files(db, tmp_path, name, text, needle):
    f = tmp_path / name
    if text is None: f.mkdir()
    elif text != "MISSING": f.write_text(text)
    refused_main(db, "ingest", f, "--symbol", "BAD", needles=[f, needle])


# ---------------------------------------------------------------------------------------------
# a full disk during an ingest: the real cause, the warehouse unchanged

@pytest.fixture
def small_fs(tmp_path):
    "A 3 MiB tmpfs (root only; skipped where mounting is not allowed)."
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _big_parquet(p, n):
    rng = np.random.default_rng(3)
    px = np.abs(100 + np.cumsum(rng.normal(0, 0.5, n))) + 1
    ts = pd.date_range("1990-01-01", periods=n, freq="min")
    pd.DataFrame({"Date": ts, "Open": px, "High": px + 0.5, "Low": px - 0.5, "Close": px, "Volume": rng.integers(1, 10**6, n)}).to_parquet(p)
    return p


@pytest.mark.parametrize("where", ["writing", "copying"])
def test_full_disk_reports_the_real_cause(cli, small_fs, template, tmp_path, where):
    db = small_fs / "w.duckdb"
    shutil.copyfile(template, db)
    if where == "writing":  # room for the copy, not for 300,000 new rows
        f = _big_parquet(tmp_path / "big.parquet", 300_000)
    else:  # not even room for the copy of the warehouse
        f = tmp_path / "small.csv"
        f.write_text(H + ROW)
        free = shutil.disk_usage(small_fs).free
        (small_fs / "filler").write_bytes(b"\0" * max(free - db.stat().st_size // 2, 0))
    before = snapshot(db)
    r = cli("-q", "ingest", f, "--symbol", "BIG", "--db", db)
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "No space left on device" in r.stderr and str(db) in r.stderr and "the warehouse is unchanged" in r.stderr
    assert "rollback" not in r.stderr.lower()
    assert snapshot(db) == before
    assert sorted(p.name for p in small_fs.iterdir()) == sorted(["w.duckdb", "w.duckdb.lock"] + (["filler"] if where == "copying" else []))
