"""The Ollama client layer against a loopback HTTP server this test starts (the Ollama REST protocol,
misbehaving on purpose): invalid JSON, schema violations, out-of-range confidence, HTTP 500, replies slower
than the timeout, a body that is not JSON, and a closed port all become HOLD with the reason recorded and
nothing reaches the broker; the cache replays bit-identically with the server stopped; replay mode never
calls the server; the latency guard fails over to the fallback model; health reports version, digest and
load time apart from decode time."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

pytest.importorskip("ollama")

from ptrader.agents import MarketData, OllamaAgent, run_agent, synthetic_bars, Decision
from ptrader.llm import OllamaClient, ResponseCache, free_port

pytestmark = pytest.mark.llm

GOOD = dict(action="BUY", confidence=0.66, stop_loss=0.02, take_profit=0.05, risk_level="medium", risk_score=0.4,
            horizon=5, rationale="trend up")
CONTENT = {
    "ok": json.dumps(GOOD),
    "invalid_json": '{"action": "BUY", "confidence": 0.6, "stop_lo',
    "schema_violation": json.dumps({k: v for k, v in GOOD.items() if k != "horizon"}),
    "bad_enum": json.dumps({**GOOD, "action": "YOLO"}),
    "out_of_range": json.dumps({**GOOD, "confidence": 1.7}),
    "negative_stop": json.dumps({**GOOD, "stop_loss": -0.02}),
}


class FakeOllama:
    """Loopback server speaking the Ollama REST subset; `mode` picks the misbehaviour. `hits` counts
    requests per path; `models` the names /api/tags lists; `delay` seconds before a chat answer."""
    def __init__(self, mode="ok", models=("fake:1",), delay=0.0):
        self.mode, self.models, self.delay = mode, list(models), delay
        self.hits: dict[str, int] = {}; self.chat_models: list[str] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            def log_message(self, *a): pass
            def _send(self, code, body: bytes, ctype="application/json"):
                self.send_response(code); self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            def do_GET(self):
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                if self.path == "/api/version": return self._send(200, b'{"version": "0.9.9-fake"}')
                if self.path == "/api/tags":
                    return self._send(200, json.dumps({"models": [{"name": m, "model": m, "digest": f"sha256:{m}", "size": 1,
                                                                   "modified_at": "2026-01-01T00:00:00Z"} for m in fake.models]}).encode())
                self._send(200, b"Ollama is running", "text/plain")
            def do_POST(self):
                fake.hits[self.path] = fake.hits.get(self.path, 0) + 1
                req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.chat_models.append(req.get("model"))
                if fake.delay: time.sleep(fake.delay)
                if fake.mode == "http_500": return self._send(500, b'{"error": "model runner crashed"}')
                if fake.mode == "slow": time.sleep(1.5)
                if fake.mode == "not_json": return self._send(200, b"<html>proxy error</html>", "text/html")
                content = CONTENT.get(fake.mode, CONTENT["ok"])
                stats = dict(total_duration=9_000_000, load_duration=123_000, prompt_eval_count=200,
                             prompt_eval_duration=4_000_000, eval_count=60, eval_duration=5_000_000)
                head = {"model": req["model"], "created_at": "2026-01-01T00:00:00Z"}
                if req.get("stream", True):
                    lines = [{**head, "message": {"role": "assistant", "content": content[i:i + 7]}, "done": False}
                             for i in range(0, len(content), 7)]
                    lines.append({**head, "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop", **stats})
                    return self._send(200, "".join(json.dumps(x) + "\n" for x in lines).encode(), "application/x-ndjson")
                self._send(200, json.dumps({**head, "message": {"role": "assistant", "content": content}, "done": True,
                                            "done_reason": "stop", **stats}).encode())

        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), H); self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self): self.thread.start(); return self
    def __exit__(self, *a): self.stop()
    def stop(self):
        self.httpd.shutdown(); self.httpd.server_close()


@pytest.fixture(scope="module")
def data():
    return MarketData(synthetic_bars(320, seed=11), "TEST", min_history=200)


def _run(client, data, n=4):
    agent = OllamaAgent(client)
    run = run_agent(agent, data, start=250, end=250 + n - 1)
    return agent, run


EXPECTED = {"invalid_json": "invalid_json", "schema_violation": "schema_violation", "bad_enum": "schema_violation",
            "out_of_range": "out_of_range", "negative_stop": "out_of_range", "http_500": "http_5xx", "slow": "timeout",
            "not_json": "bad_response"}


@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_every_failure_becomes_hold_and_nothing_reaches_the_broker(mode, data, tmp_path):
    with FakeOllama(mode) as srv:
        client = OllamaClient("fake:1", srv.url, timeout=0.5, retries=1, backoff=0.01, cache=tmp_path / "c.duckdb")
        agent, run = _run(client, data)
    d = run.decisions
    assert (d["action"] == "HOLD").all() and (d["confidence"] == 0).all()
    assert (d["failure_kind"] == EXPECTED[mode]).all(), d[["failure_kind", "failure"]]
    assert d["failure"].str.startswith(EXPECTED[mode] + ": ").all()
    assert (~d["accepted"]).all() and (d["layer"] == "agent").all() and (d["n_orders"] == 0).all()
    assert len(run.broker.orders) == 0 and len(run.broker.log) == 0          # no order ever submitted
    st = agent.stats()
    assert st["failure_rate"] == 1.0 and st["failures"] == {EXPECTED[mode]: 4}
    if EXPECTED[mode] in ("invalid_json", "schema_violation", "out_of_range"):
        assert st["parse_failure_rate"] == 1.0 and st["answers"] == 4
    if mode in ("http_500", "slow"):
        assert srv.hits["/api/chat"] == 4 * 2                                   # one retry each, bounded
    else:
        assert srv.hits["/api/chat"] == 4                                       # a bad answer is not retried
    if EXPECTED[mode] not in ("invalid_json", "schema_violation", "out_of_range"):
        assert len(ResponseCache(tmp_path / "c.duckdb")) == 0                    # failures are never cached


def test_closed_port_is_hold(data):
    client = OllamaClient("fake:1", f"http://127.0.0.1:{free_port()}", timeout=1, retries=2, backoff=0.01)
    t0 = time.perf_counter()
    agent, run = _run(client, data)
    assert time.perf_counter() - t0 < 10
    assert (run.decisions["failure_kind"] == "connection").all() and len(run.broker.orders) == 0
    h = client.health()
    assert not h.reachable and h.error.startswith("connection")


def test_good_answers_trade_and_replay_identically_without_server(data, tmp_path):
    cache = tmp_path / "c.duckdb"
    with FakeOllama("ok") as srv:
        agent, live = _run(OllamaClient("fake:1", srv.url, timeout=5, cache=cache), data, n=6)
        n_chat = srv.hits["/api/chat"]
    assert n_chat == 6 and live.decisions["accepted"].all() and (live.decisions["action"] == "BUY").all()
    assert len(live.broker.fills()) >= 1                                          # the first BUY filled at the next open
    assert live.broker.fills()["ts"].iloc[0] == data.bars.index[251]
    # the server is gone: replay from the cache gives the same decisions and the same fills
    t0 = time.perf_counter()
    agent2, replay = _run(OllamaClient("fake:1", srv.url, timeout=5, cache=cache, mode="replay"), data, n=6)
    replay_s = time.perf_counter() - t0
    cols = ["ts", "action", "confidence", "stop_loss", "take_profit", "risk_level", "risk_score", "horizon", "rationale",
            "failure", "accepted", "n_orders", "prompt_id", "raw", "llm_key"]
    pd.testing.assert_frame_equal(live.decisions[cols], replay.decisions[cols], check_exact=True)
    pd.testing.assert_frame_equal(live.broker.fills(), replay.broker.fills(), check_exact=True)
    assert replay.decisions["cached"].all() and not live.decisions["cached"].any()
    assert replay_s < 5


def test_replay_mode_never_calls_the_server(data, tmp_path):
    cache = tmp_path / "c.duckdb"
    with FakeOllama("ok") as srv:
        _run(OllamaClient("fake:1", srv.url, timeout=5, cache=cache), data, n=2)     # records bars 250, 251
        before = dict(srv.hits)
        agent, run = _run(OllamaClient("fake:1", srv.url, timeout=5, cache=cache, mode="replay"), data, n=4)
        assert srv.hits == before                                                    # not one request in replay
    d = run.decisions
    assert list(d["cached"]) == [True, True, False, False]
    assert list(d["failure_kind"].iloc[2:]) == ["replay_miss", "replay_miss"]
    assert (d["action"].iloc[2:] == "HOLD").all()


def test_cache_key_covers_model_digest_template_and_options(tmp_path):
    cache = ResponseCache(tmp_path / "c.duckdb")
    msgs = [{"role": "user", "content": "x"}]
    with FakeOllama("ok", models=("fake:1", "fake:2")) as srv:
        a = OllamaClient("fake:1", srv.url, cache=cache)
        assert not a.chat(msgs, Decision.llm_schema(), "v1").cached and a.chat(msgs, Decision.llm_schema(), "v1").cached
        assert not a.chat(msgs, Decision.llm_schema(), "v2").cached                    # template version
        assert not OllamaClient("fake:1", srv.url, cache=cache, seed=1).chat(msgs, Decision.llm_schema(), "v1").cached
        assert not OllamaClient("fake:2", srv.url, cache=cache).chat(msgs, Decision.llm_schema(), "v1").cached
        assert not a.chat(msgs, {"type": "object"}, "v1").cached                      # schema
        assert srv.hits["/api/chat"] == 5
    assert cache.identity("fake:1") == ("0.9.9-fake", "sha256:fake:1")


def test_streaming_ndjson(tmp_path):
    with FakeOllama("ok") as srv:
        r = OllamaClient("fake:1", srv.url, stream=True, mode="off").chat([{"role": "user", "content": "x"}], Decision.llm_schema())
    assert r.ok and json.loads(r.content) == GOOD and r.eval_count == 60 and r.eval_duration_ns == 5_000_000


def test_latency_guard_fails_over_to_fallback_model(tmp_path):
    msgs = [{"role": "user", "content": "x"}]
    with FakeOllama("ok", models=("big:1", "small:1"), delay=0.25) as srv:
        c = OllamaClient("big:1", srv.url, timeout=5, fallback_model="small:1", max_latency_s=0.1, guard_breaches=2, mode="off")
        for i in range(4):
            c.chat(msgs + [{"role": "user", "content": str(i)}], Decision.llm_schema())
    assert srv.chat_models == ["big:1", "big:1", "small:1", "small:1"]
    assert len(c.failovers) == 1 and c.failovers[0]["reason"] == "latency" and c.failovers[0]["to_model"] == "small:1"
    assert c.active_model == "small:1" and c.stats()["failovers"] == 1
    with FakeOllama("ok", models=("big:1", "small:1")) as srv:       # tokens/s guard: 60 tokens in 5 ms = 12000 tok/s
        c = OllamaClient("big:1", srv.url, fallback_model="small:1", min_tokens_per_s=20_000, guard_breaches=1, mode="off")
        c.chat(msgs, None); c.chat(msgs, None)
    assert srv.chat_models == ["big:1", "small:1"] and c.failovers[0]["reason"] == "tokens_per_s"


def test_health_reports_version_digest_and_load_apart_from_decode():
    with FakeOllama("ok") as srv:
        h = OllamaClient("fake:1", srv.url).health()
        missing = OllamaClient("nope:1", srv.url).health()
    assert h.ok and h.version == "0.9.9-fake" and h.digest == "sha256:fake:1" and h.models == ("fake:1",)
    assert h.load_duration_ns == 123_000 and h.prewarm_eval_ns == 4_000_000 + 5_000_000
    assert not missing.ok and missing.reachable and not missing.model_present and missing.error.startswith("model_missing")


def test_stats_latency_percentiles(data, tmp_path):
    with FakeOllama("ok", delay=0.05) as srv:
        agent, run = _run(OllamaClient("fake:1", srv.url, mode="off"), data, n=5)
    st = agent.stats()["client"]
    assert st["live"] == 5 and 0.05 <= st["latency_p50_s"] <= st["latency_p95_s"] < 2
    assert st["prompt_tokens"] == 200 and st["eval_tokens"] == 60 and st["tokens_per_s"] == pytest.approx(12_000)
    assert run.decisions["latency_s"].between(0.05, 2).all()


class Starter:
    "An `ensure_server` hook that starts a FakeOllama on first use and counts its calls (what `LocalServer.ensure` does)."
    def __init__(self, srv, fail=False): self.srv, self.fail, self.calls = srv, fail, 0
    def __call__(self):
        self.calls += 1
        if self.fail: raise RuntimeError("no model here")
        if not self.srv.thread.is_alive(): self.srv.thread.start()


def test_fully_cached_rerun_never_starts_or_asks_the_server(data, tmp_path):
    cache = tmp_path / "c.duckdb"
    with FakeOllama("ok") as srv:
        _, live = _run(OllamaClient("fake:1", srv.url, timeout=5, cache=cache), data, n=3)
    # reruns: the server is gone; mode auto with the identity given (as LocalServer.identity() gives it) or remembered
    for k, ident in enumerate((("0.9.9-fake", "sha256:fake:1"), None)):
        late = FakeOllama("ok"); hook = Starter(late)
        client = OllamaClient("fake:1", late.url, timeout=5, cache=cache, mode="auto", identity=ident, ensure_server=hook)
        agent, again = _run(client, data, n=3)
        assert hook.calls == 0 and late.hits == {} and again.decisions["cached"].all()
        assert list(again.decisions["raw"]) == list(live.decisions["raw"])
        st = client.stats()
        assert st["load_s"] == 0 and st["live"] == 0
        # the recorded latency travels with the cached answer, model load excluded
        rec = [c.recorded_latency_s for c in client.calls]
        assert all(r is not None and r > 0 for r in rec)
        assert st["request_latency_p50_s"] == pytest.approx(float(pd.Series(rec).median()) - 123e-6, rel=1e-6)
        assert st["tokens_per_call"] == 260 and (again.decisions["total_tokens"] == 260).all()
        # one decision more is a miss: the hook starts the server once, the identity is confirmed, the answer stored
        agent2, more = _run(client, data, n=4 + k)
        assert hook.calls == 1 and late.hits["/api/chat"] == 1 and late.hits["/api/version"] == 1
        assert list(more.decisions["cached"]) == [True] * (3 + k) + [False]
        late.stop()


def test_wrong_assumed_identity_is_corrected_by_the_server(tmp_path):
    msgs = [{"role": "user", "content": "x"}]
    with FakeOllama("ok") as srv:
        c = OllamaClient("fake:1", srv.url, cache=tmp_path / "c.duckdb", mode="auto", identity=("1.0", "sha256:other"))
        r = c.chat(msgs, None, "v1")
        assert r.ok and not r.cached and c.identity() == ("0.9.9-fake", "sha256:fake:1")
        from ptrader.llm import cache_key
        assert r.key == cache_key("0.9.9-fake", "sha256:fake:1", "v1", msgs, None, c.options)
        assert c.chat(msgs, None, "v1").cached and srv.hits["/api/chat"] == 1


def test_a_server_that_does_not_start_is_tried_once(data, tmp_path):
    dead = FakeOllama("ok"); hook = Starter(dead, fail=True)
    client = OllamaClient("fake:1", dead.url, timeout=1, retries=1, backoff=0.01, cache=tmp_path / "c.duckdb", mode="auto",
                          identity=("0.9.9-fake", "sha256:fake:1"), ensure_server=hook)
    agent, run = _run(client, data, n=3)
    assert hook.calls == 1 and (run.decisions["failure_kind"] == "connection").all() and len(run.broker.orders) == 0
    assert run.decisions["failure"].str.contains("starting the server failed").all()
    assert not client.health().reachable and hook.calls == 1
    with pytest.raises(ValueError): OllamaClient("fake:1", dead.url, mode="auto")             # auto needs a cache
    with pytest.raises(ValueError): OllamaClient("fake:1", dead.url, identity=("only-one",))
    dead.httpd.server_close()
