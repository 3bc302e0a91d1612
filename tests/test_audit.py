"""The audit trail against tampering, hostile databases and an independent RFC 6962 implementation; its
command line through `python -m ptrader.audit` subprocesses."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from ptrader.audit import (AUDIT_COLUMNS, AuditTrail, broker_entries, chain_hash, consistency_path, decision_entries,
                           inclusion_path, merkle_root, report_entries, row_bytes, verify_consistency, verify_inclusion)

ROOT = Path(__file__).resolve().parents[1]


def _audit(*args, env=None):
    return subprocess.run([sys.executable, "-m", "ptrader.audit", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env=env or dict(os.environ))


def _sql(path, sql, params=None):
    con = duckdb.connect(str(path))
    try: con.execute(sql, params or [])
    finally: con.close()


def _all_kinds_trail(path) -> AuditTrail:
    "A trail with every kind of row the writers produce: broker events, decisions, validations, runs, a report."
    t = AuditTrail(path)
    ev = pd.DataFrame({"seq": range(9), "ts": pd.to_datetime(["2024-01-02"] * 5 + ["2024-01-03"] * 4),
                       "kind": ["submitted", "accepted", "fill", "submitted", "rejected", "state_change", "kill_switch",
                                "risk_action", "cancelled"],
                       "order_id": [1, 1, 1, 2, 2, None, None, 3, 3], "symbol": ["X"] * 9,
                       "side": [1, None, 1, 1, None, None, None, -1, None], "qty": [5.0, None, 5.0, 3.0, None, None, None, 5.0, None],
                       "price": [None, None, 10.0, None, None, None, None, None, None],
                       "rule": [None, None, None, None, "max_notional", "drawdown", None, "close_all", None],
                       "reason": [None, None, None, None, "notional", "dd", "kill switch", "HALTED", "kill switch"],
                       "state_from": [None] * 5 + ["ACTIVE"] + [None] * 3, "state_to": [None] * 5 + ["HALTED"] + [None] * 3})
    dec = pd.DataFrame({"ts": pd.to_datetime(["2024-01-02", "2024-01-03"]), "agent": ["ollama:m"] * 2, "action": ["BUY", "HOLD"],
                        "confidence": [0.7, 0.0], "risk_score": [0.3, 0.5], "failure": [None, "invalid_json: x"],
                        "accepted": [True, False], "layer": [None, "agent"], "reason": [None, "x"], "order_ids": ["1", ""],
                        "model": ["m", "m"], "prompt_id": ["ab", "cd"], "latency_s": [0.2, 0.3], "raw": ['{"a":1}', "zz"]})
    t.record_many(broker_entries(ev, run_id="r1"))
    t.record_many(decision_entries(dec, run_id="r1", validator="V") + decision_entries(dec, run_id="c1", shadow=True))
    t.record_many(report_entries({"name": "validation-X", "status": "ok", "started_utc": "2024-01-04T00:00:00+00:00"}))
    t.record("policy_change", {"preset": "moderate", "max_risk_score": 0.75})
    t.record("signal", {"symbol": "X", "value": 1.0}, event_ts=pd.Timestamp("2024-01-02"))
    return t


@pytest.fixture
def trail(tmp_path):
    return _all_kinds_trail(tmp_path / "audit.duckdb")


def _rows(path):
    con = duckdb.connect(str(path), read_only=True)
    try: return con.execute("SELECT * FROM audit_events ORDER BY seq").fetchall()
    finally: con.close()


def test_trail_has_every_kind_and_verifies(trail):
    kinds = set(trail.events()["kind"])
    assert {"order", "risk_check", "fill", "rejection", "circuit_breaker", "kill_switch", "risk_action", "cancel",
            "decision", "validation", "shadow_decision", "report_run", "policy_change", "signal"} <= kinds
    r = trail.verify(); assert r.ok and r.rows == len(_rows(trail.path))


_TAMPER = {"recorded_at": lambda v: v.replace("Z", "1Z")[:-2] + "Z" if False else v[:-8] + "9" + v[-7:],
           "batch": lambda v: v + 1, "kind": lambda v: "fill" if v != "fill" else "order",
           "event_ts": lambda v: "2030-01-01T00:00:00" if v is None else v[:-1] + "1",
           "payload": lambda v: v.replace("}", ',"x":1}', 1) if v != "{}" else '{"x":1}',
           "prev_hash": lambda v: ("1" if v[0] != "1" else "2") + v[1:], "hash": lambda v: ("1" if v[0] != "1" else "2") + v[1:]}


def test_changing_any_field_of_any_row_names_that_row(tmp_path, trail):
    rows = _rows(trail.path)
    con = duckdb.connect(str(trail.path))
    try:
        for col, change in _TAMPER.items():
            j = AUDIT_COLUMNS.index(col)
            for i, row in enumerate(rows):
                con.execute(f'UPDATE audit_events SET "{col}" = ? WHERE seq = ?', [change(row[j]), row[0]])
                r = trail.verify()
                assert not r.ok and r.bad_seq == row[0] and r.bad_position == i + 1 and r.head_seq == i, (col, row[3], str(r))
                con.execute(f'UPDATE audit_events SET "{col}" = ? WHERE seq = ?', [row[j], row[0]])
                assert trail.verify().ok
    finally: con.close()


def test_seq_change_delete_insert_reorder_are_named(tmp_path, trail):
    rows = _rows(trail.path); n = len(rows)
    cases = {}
    p = tmp_path / "seq.duckdb"; p.write_bytes(trail.path.read_bytes())
    _sql(p, "UPDATE audit_events SET seq = 100 WHERE seq = 5"); cases["seq"] = (p, 5)
    p = tmp_path / "del.duckdb"; p.write_bytes(trail.path.read_bytes())
    _sql(p, "DELETE FROM audit_events WHERE seq = 7"); cases["delete"] = (p, 7)
    # insert: a well-formed row spliced in after seq 3, later rows renumbered (their old hashes kept)
    p = tmp_path / "ins.duckdb"
    con = duckdb.connect(str(p)); con.execute(open_ddl := "CREATE TABLE audit_events (seq BIGINT, recorded_at VARCHAR, batch BIGINT, kind VARCHAR, event_ts VARCHAR, payload VARCHAR, prev_hash VARCHAR, hash VARCHAR)")
    fake = list(rows[3]); fake[5] = '{"forged":true}'; fake[6] = rows[2][7]
    fake[7] = chain_hash(fake[6], row_bytes(4, fake[1], fake[2], fake[3], fake[4], fake[5]))
    new = rows[:3] + [tuple(fake)] + [(r[0] + 1, *r[1:]) for r in rows[3:]]
    con.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", new); con.close(); cases["insert"] = (p, 5)
    # reorder: two rows swapped in storage order (and a variant with their seq numbers swapped too)
    for name, swap_seq in (("reorder", False), ("swap_seq", True)):
        p = tmp_path / f"{name}.duckdb"; con = duckdb.connect(str(p)); con.execute(open_ddl)
        rr = list(rows); a, b = rr[5], rr[6]
        if swap_seq: a, b = (b[0], *a[1:]), (a[0], *b[1:])
        rr[5], rr[6] = b, a
        con.executemany("INSERT INTO audit_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rr); con.close(); cases[name] = (p, 6)
    for name, (p, pos) in cases.items():
        r = AuditTrail(p).verify()
        assert not r.ok and r.bad_position == pos, (name, str(r))
    assert n > 7


def test_truncation_and_tail_rewrite_caught_only_by_digest(tmp_path, trail):
    d = trail.digest(); n = int(d.split(":")[0])
    p = tmp_path / "trunc.duckdb"; p.write_bytes(trail.path.read_bytes())
    _sql(p, f"DELETE FROM audit_events WHERE seq >= {n - 2}")
    assert AuditTrail(p).verify().ok                    # a shorter chain is still a chain
    assert not AuditTrail(p).verify(d).ok               # the digest names a row that is gone
    # rewrite the whole tail from seq 4 with recomputed hashes
    p = tmp_path / "rewrite.duckdb"; p.write_bytes(trail.path.read_bytes())
    con = duckdb.connect(str(p)); rows = con.execute("SELECT * FROM audit_events ORDER BY seq").fetchall(); prev = rows[2][7]
    for seq, rec, batch, kind, ets, payload, _, _ in rows[3:]:
        if seq == 4: payload = '{"forged":true}'
        h = chain_hash(prev, row_bytes(seq, rec, batch, kind, ets, payload))
        con.execute("UPDATE audit_events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?", [payload, prev, h, seq]); prev = h
    con.close()
    t = AuditTrail(p); assert t.verify().ok
    assert not t.verify(d).ok and not t.verify(d.split(":")[1]).ok
    # appending after the digest is fine: the digest's row is still there
    trail.record("signal", {"later": True}); assert trail.verify(d).ok


def test_cli_verify_digest_and_exit_codes(tmp_path, trail, capsys):
    from ptrader.audit import cli_main
    r = _audit("digest", "--db", trail.path); assert r.returncode == 0, r.stderr
    d = r.stdout.strip(); assert d == trail.digest()
    env = {**os.environ, "PTRADER_AUDIT_DB": str(trail.path)}
    r = _audit("verify", "--digest", d, env=env); assert r.returncode == 0 and "ok:" in r.stdout, r.stderr
    p = tmp_path / "bad.duckdb"; p.write_bytes(trail.path.read_bytes())
    _sql(p, "UPDATE audit_events SET payload = '{\"qty\":1}' WHERE seq = 6")
    r = _audit("verify", "--db", p); assert r.returncode == 1 and "row 6 (seq 6)" in r.stderr, r.stderr
    (tmp_path / "junk.duckdb").write_text("not a database")
    r = _audit("verify", "--db", tmp_path / "junk.duckdb"); assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    # the rest in-process: the same cli_main
    assert cli_main(["verify", "--db", str(tmp_path / "missing.duckdb")]) == 2 and "no audit trail" in capsys.readouterr().err
    assert cli_main(["verify", "--db", str(trail.path), "--digest", "zz"]) == 2
    assert cli_main(["digest", "--db", str(p)]) == 1 and "fails verification" in capsys.readouterr().err


_HOSTILE = {
    "seq_text": "CREATE TABLE audit_events AS SELECT CAST(seq AS VARCHAR) || 'x' AS seq, * EXCLUDE (seq) FROM src",
    "payload_int": "CREATE TABLE audit_events AS SELECT * REPLACE (length(payload) AS payload) FROM src",
    "nulls": "CREATE TABLE audit_events AS SELECT * REPLACE (CASE WHEN seq = 3 THEN NULL ELSE hash END AS hash) FROM src",
    "huge_seq": "CREATE TABLE audit_events AS SELECT * REPLACE (CASE WHEN seq = 2 THEN CAST(10 AS HUGEINT) ** 30 ELSE seq END AS seq) FROM src",
    "huge_payload": "CREATE TABLE audit_events AS SELECT * REPLACE (CASE WHEN seq = 2 THEN repeat('[', 200000) ELSE payload END AS payload) FROM src",
    "extra_col": "CREATE TABLE audit_events AS SELECT *, 'hidden' AS note FROM src",
    "missing_col": "CREATE TABLE audit_events AS SELECT * EXCLUDE (batch) FROM src",
    "blob_hash": "CREATE TABLE audit_events AS SELECT * REPLACE (CAST(hash AS BLOB) AS hash) FROM src",
    "no_table": "CREATE TABLE other AS SELECT * FROM src",
}


def test_hostile_databases_fail_cleanly(tmp_path, trail, capsys):
    from ptrader.audit import cli_main
    n, root = trail.tree_head()
    for case, sql in _HOSTILE.items():
        p = tmp_path / f"{case}.duckdb"
        con = duckdb.connect(str(p)); con.execute(f"ATTACH '{trail.path}' AS s (READ_ONLY)")
        con.execute("CREATE TABLE src AS SELECT * FROM s.audit_events"); con.execute("DETACH s")
        con.execute(sql); con.execute("DROP TABLE src"); con.close()
        assert cli_main(["verify", "--db", str(p)]) in (1, 2), case     # never raises
        err = capsys.readouterr().err; assert err.strip(), case
        with pytest.raises(Exception) as e: AuditTrail(p).prove_inclusion(2)   # no proof from a broken trail
        assert type(e.value).__name__ == "WarehouseError", (case, e.value)
    r = _audit("verify", "--db", tmp_path / "huge_payload.duckdb")      # the same through the real command
    assert r.returncode == 1 and "Traceback" not in r.stderr and "row 2" in r.stderr, r.stderr


def test_forged_proofs_from_a_crafted_trail_do_not_pass(tmp_path, trail):
    n, root = trail.tree_head(); old = trail.tree_head(5)
    p = tmp_path / "forged.duckdb"; p.write_bytes(trail.path.read_bytes())
    con = duckdb.connect(str(p)); rows = con.execute("SELECT * FROM audit_events ORDER BY seq").fetchall(); prev = rows[1][7]
    for seq, rec, batch, kind, ets, payload, _, _ in rows[2:]:
        if seq == 3: payload = '{"forged":true}'
        h = chain_hash(prev, row_bytes(seq, rec, batch, kind, ets, payload))
        con.execute("UPDATE audit_events SET payload = ?, prev_hash = ?, hash = ? WHERE seq = ?", [payload, prev, h, seq]); prev = h
    con.close()
    f = AuditTrail(p); assert f.verify().ok
    assert not f.prove_inclusion(3).verify(root)
    assert f.prove_inclusion(3).verify()        # self-consistent, but not against the head an auditor kept
    assert not f.prove_consistency(5).verify(old[1], root)
    assert not f.prove_consistency(2, n).verify(trail.tree_head(2)[1], root)   # the prefix is honest, the extension is not
    honest = trail.prove_inclusion(3)
    assert honest.verify(root) and not f.prove_inclusion(3).leaf == honest.leaf


def test_roots_match_pymerkle():
    pymerkle = pytest.importorskip("pymerkle", reason="pymerkle (dev extra) is the independent RFC 6962 implementation")
    rng = random.Random(7); leaves = [rng.randbytes(rng.randrange(0, 40)) for _ in range(300)]
    t = pymerkle.InmemoryTree(algorithm="sha256")
    for x in leaves: t.append_entry(x)
    for n in list(range(0, 40)) + [64, 65, 127, 128, 129, 255, 300]:
        assert t.get_root(n) == merkle_root(leaves[:n]), n


def test_trail_heads_match_pymerkle(trail):
    pymerkle = pytest.importorskip("pymerkle")
    leaves, _ = trail._leaves()
    t = pymerkle.InmemoryTree(algorithm="sha256")
    for x in leaves: t.append_entry(x)
    for d in trail.daily_roots().itertuples():
        sub = pymerkle.InmemoryTree(algorithm="sha256")
        for x in leaves[d.first_seq - 1:d.last_seq]: sub.append_entry(x)
        assert sub.get_root().hex() == d.root
    assert t.get_root().hex() == trail.tree_head()[1]


_leaves = st.lists(st.binary(max_size=8), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(_leaves, st.data())
def test_proofs_verify_and_junk_never_passes(leaves, data):
    n = len(leaves); root = merkle_root(leaves)
    m = data.draw(st.integers(0, n - 1))
    path = inclusion_path(leaves, m)
    assert verify_inclusion(leaves[m], m, n, path, root)
    junk = data.draw(st.lists(st.binary(min_size=0, max_size=40), max_size=8))
    idx = data.draw(st.integers(-3, n + 3)); size = data.draw(st.integers(-3, n + 3))
    ok = verify_inclusion(leaves[m], idx, size, junk, root)
    if ok: assert size == n and leaves[idx] == leaves[m] and list(junk) == inclusion_path(leaves, idx)
    k = data.draw(st.integers(1, n))
    cp = consistency_path(leaves, k)
    assert verify_consistency(k, n, merkle_root(leaves[:k]), root, cp)
    assert verify_consistency(k, n, merkle_root(leaves[:k]), root, junk) in (False, junk == cp)


_WRITER = """
import sys
from ptrader.audit import AuditTrail
t = AuditTrail(sys.argv[1], lock_timeout=60)
for b in range(int(sys.argv[3])): t.record_many([("signal", {"writer": sys.argv[2], "batch": b, "i": i}) for i in range(4)])
"""


def test_concurrent_writers_keep_one_chain_and_whole_batches(tmp_path):
    db = tmp_path / "c.duckdb"
    procs = [subprocess.Popen([sys.executable, "-c", _WRITER, str(db), w, "8"], cwd=ROOT) for w in ("a", "b")]
    assert all(p.wait(timeout=180) == 0 for p in procs)
    t = AuditTrail(db); r = t.verify(); assert r.ok and r.rows == 2 * 8 * 4, r
    ev = t.events()
    for _, g in ev.groupby("batch"):   # a batch is contiguous and from one writer: one transaction each
        assert (g["seq"].diff().dropna() == 1).all() and len({p["writer"] for p in g["payload"]}) == 1 and len(g) == 4


def test_daily_roots_and_day_proofs_over_several_days(tmp_path):
    "A trail written over three UTC days (write times set back, chain recomputed so it is valid): one head per day."
    t = AuditTrail(tmp_path / "days.duckdb"); t.record_many([("signal", {"i": i}) for i in range(10)])
    con = duckdb.connect(str(t.path)); rows = con.execute("SELECT * FROM audit_events ORDER BY seq").fetchall(); prev = "0" * 64
    for seq, rec, batch, kind, ets, payload, _, _ in rows:
        rec = ("2024-03-01" if seq <= 3 else "2024-03-02" if seq <= 8 else "2024-03-04") + rec[10:]
        h = chain_hash(prev, row_bytes(seq, rec, batch, kind, ets, payload))
        con.execute("UPDATE audit_events SET recorded_at = ?, prev_hash = ?, hash = ? WHERE seq = ?", [rec, prev, h, seq]); prev = h
    con.close()
    assert t.verify().ok
    days = t.daily_roots()
    assert list(days["day"]) == ["2024-03-01", "2024-03-02", "2024-03-04"] and list(days["size"]) == [3, 5, 2]
    leaves, _ = t._leaves()
    for d in days.itertuples():
        assert d.root == merkle_root(leaves[d.first_seq - 1:d.last_seq]).hex()
    for seq in range(1, 11):
        p = t.prove_inclusion(seq, scope="day"); root = days.set_index("day").loc[p.scope, "root"]
        assert p.verify(root) and not p.verify(days.set_index("day").drop(p.scope)["root"].iloc[0])
