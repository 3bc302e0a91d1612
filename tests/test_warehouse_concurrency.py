"""Issue 10, concurrent use, with real processes: readers never wait for a writer and never create
anything; a second writer waits for the lock (with a message), then exits 75 having written nothing;
retried, both writes are present; a writer killed while holding the lock loses only its own write."""
import os
import signal
import subprocess
import sys
import time

import duckdb
import pytest

from ptrader.data import Warehouse

from test_ingest import GOOD, snapshot

HOLDER = """
import os, sys, time
from ptrader.data import Warehouse
wh = Warehouse(sys.argv[1])
with wh.transaction() as con:   # the write path every ingest takes
    con.execute("INSERT INTO ingests (ingest_id, symbol, source, source_kind, sha256) VALUES (?, 'HELD', 'holder', 'test', 'x')", [sys.argv[3]])
    print("holding", flush=True)
    deadline = time.monotonic() + float(sys.argv[2])   # hold until told (a file appears) or for at most argv[2] s
    while time.monotonic() < deadline and not (len(sys.argv) > 4 and os.path.exists(sys.argv[4])):
        time.sleep(0.05)
print("released", flush=True)
"""

FOREIGN = """
import os, sys, time, duckdb
con = duckdb.connect(sys.argv[1])   # e.g. the duckdb shell writing the file in place
print("holding", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline and not os.path.exists(sys.argv[3]):
    time.sleep(0.05)
con.close()
"""


def start(script, env, *args):
    p = subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    assert line.strip() == "holding", (line, p.stderr.read() if p.poll() is not None else "")
    return p


@pytest.fixture
def db(tmp_path):
    f = tmp_path / "good.csv"
    f.write_text(GOOD)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.ingest_file(f, symbol="ABC")
    return tmp_path / "w.duckdb"


def new_file(tmp_path, name):
    f = tmp_path / f"{name}.csv"
    f.write_text(GOOD.replace("2021-01", "2022-02"))
    return f


def test_second_writer_waits_then_exits_75_and_retry_keeps_both(cli, env, db, tmp_path):
    before = snapshot(db)
    release = tmp_path / "release"
    holder = start(HOLDER, env, db, 60, "held-1", release)
    try:
        t0 = time.monotonic()
        r = cli("ingest", new_file(tmp_path, "new"), "--symbol", "NEW", "--lock-timeout", "1.5")
        waited = time.monotonic() - t0
        assert r.returncode == 75, (r.returncode, r.stderr)
        assert f"warehouse {db} is being written by another process (pid {holder.pid})" in r.stderr
        assert "waiting up to 1.5 s" in r.stderr and "gave up after 1.5 s" in r.stderr and "Traceback" not in r.stderr
        assert waited >= 1.5
        assert snapshot(db) == before
        t0 = time.monotonic()
        s = cli("status")  # a reader: no wait, the last completed state
        assert s.returncode == 0 and time.monotonic() - t0 < 6, s.stderr
        assert "ABC" in s.stdout and "HELD" not in s.stdout and "waiting" not in s.stderr
        assert holder.poll() is None  # the status ran while the writer still held the lock
    finally:
        release.touch()
        out, err = holder.communicate(timeout=60)
    assert holder.returncode == 0 and "released" in out, err
    r = cli("ingest", new_file(tmp_path, "new"), "--symbol", "NEW")
    assert r.returncode == 0, r.stderr
    with Warehouse(db, read_only=True) as wh:
        assert set(wh.symbols()) == {"ABC", "NEW"}
        assert set(wh.ingests()["symbol"]) == {"ABC", "NEW", "HELD"}  # the holder's write and both ingests


def test_two_writers_waiting_at_once_both_land(cli, env, db, tmp_path):
    release = tmp_path / "release"
    holder = start(HOLDER, env, db, 60, "held-2", release)
    cmd = [sys.executable, "-c", "import sys; from ptrader.cli import main; sys.exit(main())"]
    procs = [subprocess.Popen([*cmd, "ingest", str(new_file(tmp_path, s)), "--symbol", s], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for s in ("ONE", "TWO")]
    firsts = [p.stderr.readline() for p in procs]  # both are now waiting for the lock
    assert all("waiting up to 30 s" in f for f in firsts), firsts
    assert all(p.poll() is None for p in procs)
    release.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    holder.communicate(timeout=60)
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
    with Warehouse(db, read_only=True) as wh:
        assert set(wh.symbols()) == {"ABC", "ONE", "TWO"}
        assert len(wh.bars("ONE")) == len(wh.bars("TWO")) == 5
        assert sorted(wh.ingests()["symbol"]) == ["ABC", "HELD", "ONE", "TWO"]


def test_foreign_in_place_writer_is_waited_for_then_busy(cli, env, db, tmp_path):
    before = snapshot(db)
    release = tmp_path / "release"
    p = start(FOREIGN, env, db, 60, release)
    try:
        for cmd in (["status"], ["ingest", new_file(tmp_path, "new"), "--symbol", "NEW"]):
            r = cli("-q", *cmd, "--lock-timeout", "1")
            assert r.returncode == 75 and "is being written by another process" in r.stderr, r.stderr
            lines = r.stderr.strip().splitlines()  # the wait, announced once, then the one-line failure
            assert len(lines) == 2 and "waiting up to 1 s" in lines[0] and lines[1].startswith("ptrader ") and "Traceback" not in r.stderr
    finally:
        release.touch()
        p.communicate(timeout=60)
    assert snapshot(db) == before


def test_writer_killed_holding_the_lock_loses_only_its_write(cli, env, db, tmp_path):
    before = snapshot(db)
    holder = start(HOLDER, env, db, 60, "killed")
    assert db.with_name(db.name + ".writing").exists()
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    assert snapshot(db) == before  # the half-done write never reached the warehouse file
    r = cli("ingest", new_file(tmp_path, "new"), "--symbol", "NEW", "--lock-timeout", "5")
    assert r.returncode == 0 and "waiting" not in r.stderr, r.stderr  # the kernel released the dead writer's lock
    assert not db.with_name(db.name + ".writing").exists()
    with Warehouse(db, read_only=True) as wh:
        assert set(wh.ingests()["symbol"]) == {"ABC", "NEW"}


def test_status_on_a_missing_warehouse_creates_nothing(cli, env, tmp_path):
    env["PTRADER_DB"] = str(tmp_path / "not" / "yet" / "w.duckdb")
    before = sorted(tmp_path.rglob("*"))
    r = cli("status")
    assert r.returncode == 2 and "does not exist; nothing has been ingested there" in r.stderr and "Traceback" not in r.stderr
    assert sorted(tmp_path.rglob("*")) == before
    with pytest.raises(FileNotFoundError):
        Warehouse(tmp_path / "not" / "yet" / "w.duckdb", read_only=True)
    assert sorted(tmp_path.rglob("*")) == before


def test_read_only_opens_do_not_block_a_writer(cli, env, db, tmp_path):
    "A reader held open in another process (the report's kernel, say) does not stop an ingest."
    reader = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom ptrader.data import Warehouse\nwh = Warehouse(sys.argv[1], read_only=True)\n"
                               "print(wh.row_counts()['bars'], flush=True)\nsys.stdin.readline()\nprint(wh.row_counts()['bars'], flush=True)", str(db)],
                              env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline().strip() == "5"
    r = cli("ingest", new_file(tmp_path, "new"), "--symbol", "NEW", "--lock-timeout", "2")
    assert r.returncode == 0 and "waiting" not in r.stderr, r.stderr
    assert reader.poll() is None  # the ingest finished while the reader was open
    assert reader.communicate("go\n", timeout=60)[0].strip() == "5"  # and the reader kept its consistent snapshot
    with Warehouse(db, read_only=True) as wh:
        assert wh.row_counts()["bars"] == 10
