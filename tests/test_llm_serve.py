"""`ptrader llm serve` with the real SmolLM2-135M-Instruct model, spoken to with the official `ollama`
client: the REST subset (/, /api/version, /api/tags, /api/show, /api/chat streaming and not), the shape of
the answers (never their content), identical answers to identical requests, and the cache: a run recorded
against the server replays to identical decisions after the server is stopped. Needs the [llm] extra."""
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

pytest.importorskip("ollama")
pytest.importorskip("llama_cpp")

import ollama

from ptrader.agents import LLM_FIELDS, PARSE_FAILURES, Decision, MarketData, OllamaAgent, run_agent, synthetic_bars
from ptrader.llm import DEFAULT_MODEL, LocalServer, OllamaClient, ResponseCache, bundled_model_path, file_digest, free_port

pytestmark = pytest.mark.llm

try:
    bundled_model_path()
except Exception as e:  # the bundled model is part of the [llm] extra
    pytest.skip(f"bundled model missing: {e}", allow_module_level=True)


class Served:
    "`python -m ptrader.llm serve` on a free loopback port, started and stopped by the test."
    def __init__(self):
        self.port = free_port(); self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "ptrader.llm", "serve", "--port", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read()
            try:
                if httpx.get(self.url + "/api/version", timeout=1).status_code == 200: return
            except httpx.HTTPError:
                time.sleep(0.2)
        self.stop(); raise AssertionError("server did not start")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate(); self.proc.wait(20)


@pytest.fixture(scope="module")
def server():
    s = Served()
    yield s
    s.stop()


def test_rest_subset(server):
    assert httpx.get(server.url + "/").text == "Ollama is running"
    version = httpx.get(server.url + "/api/version").json()["version"]
    assert "llama-cpp-python.0.3.36" in version
    c = ollama.Client(host=server.url, timeout=120)
    tags = c.list().models
    assert [m.model for m in tags] == [DEFAULT_MODEL] and tags[0].digest == file_digest(bundled_model_path())
    assert c.show(DEFAULT_MODEL).details.format == "gguf"
    with pytest.raises(ollama.ResponseError) as e:
        c.chat(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    assert e.value.status_code == 404
    bad = httpx.post(server.url + "/api/chat", content=b"{not json", timeout=10)
    assert bad.status_code == 400


def test_chat_structured_stream_and_limits(server):
    c = ollama.Client(host=server.url, timeout=120)
    schema = {"type": "object", "properties": {"word": {"type": "string"}, "n": {"type": "integer"}}, "required": ["word", "n"]}
    msgs = [{"role": "user", "content": "Give a word and a number as JSON."}]
    opts = {"temperature": 0, "seed": 1, "num_predict": 40}
    r1 = c.chat(model=DEFAULT_MODEL, messages=msgs, format=schema, options=opts)
    parts = list(c.chat(model=DEFAULT_MODEL, messages=msgs, format=schema, options=opts, stream=True))
    streamed = "".join(p.message.content for p in parts)
    assert parts[-1].done and not any(p.done for p in parts[:-1])
    assert streamed == r1.message.content                            # same request, same answer, either transport
    if r1.done_reason == "stop":                                      # the grammar forces the schema's shape
        obj = json.loads(r1.message.content)
        assert set(obj) == {"word", "n"} and isinstance(obj["word"], str) and isinstance(obj["n"], int)
    assert r1.prompt_eval_count > 5 and 0 < r1.eval_count <= 40 and r1.eval_duration > 0 and r1.prompt_eval_duration > 0
    short = c.chat(model=DEFAULT_MODEL, messages=msgs, options={"temperature": 0, "num_predict": 3})
    assert short.done_reason == "length" and short.eval_count <= 3


def test_agent_shape_cache_and_replay_without_server(tmp_path):
    cache = tmp_path / "llm.duckdb"
    md = MarketData(synthetic_bars(300, seed=7), "TEST", min_history=200)
    srv = Served()
    try:
        client = OllamaClient(DEFAULT_MODEL, srv.url, timeout=300, retries=0, cache=cache)
        assert client.health().ok
        agent = OllamaAgent(client)
        live = run_agent(agent, md, start=250, end=251)
        again = run_agent(OllamaAgent(OllamaClient(DEFAULT_MODEL, srv.url, timeout=300, cache=cache)), md, start=250, end=251)
    finally:
        srv.stop()
    d = live.decisions
    assert len(d) == 2 and not d["cached"].any() and again.decisions["cached"].all()
    for _, row in d.iterrows():                                       # shape, never content
        assert row["failure_kind"] in (None, *PARSE_FAILURES)
        if row["failure_kind"] != "invalid_json":                     # the grammar gives exactly the schema's keys
            assert set(json.loads(row["raw"])) == set(LLM_FIELDS)
        if row["failure"] is None:
            assert row["action"] in ("BUY", "SELL", "HOLD") and 0 <= row["confidence"] <= 1
        else:
            assert row["action"] == "HOLD" and not row["accepted"] and row["n_orders"] == 0
        assert row["prompt_tokens"] > 100 and row["eval_tokens"] > 0
    # server stopped: replay from the cache, identical decisions, and replay never needs the server
    t0 = time.perf_counter()
    replay = run_agent(OllamaAgent(OllamaClient(DEFAULT_MODEL, srv.url, cache=cache, mode="replay")), md, start=250, end=251)
    assert time.perf_counter() - t0 < 5
    cols = ["ts", "action", "confidence", "stop_loss", "take_profit", "risk_level", "risk_score", "horizon", "rationale",
            "failure", "accepted", "raw", "llm_key"]
    assert replay.decisions[cols].equals(live.decisions[cols]) and replay.decisions["cached"].all()
    assert again.decisions[cols].equals(live.decisions[cols])


def test_prompt_prefix_reuse_keeps_answers_identical(server):
    """The server keeps the KV cache of the longest shared prefix: a second prompt with the same system message
    evaluates only its own tail, and a request answers the same whatever was evaluated before it."""
    sys_msg = {"role": "system", "content": "You are a terse assistant. Answer with one JSON object holding a word and a digit."}
    schema = {"type": "object", "properties": {"word": {"type": "string", "maxLength": 20}, "n": {"type": "integer", "minimum": 0,
              "maximum": 9}}, "required": ["word", "n"]}
    def ask(q):
        r = httpx.post(server.url + "/api/chat", timeout=300, json={"model": DEFAULT_MODEL, "stream": False, "format": schema,
                       "options": {"temperature": 0, "num_predict": 40}, "messages": [sys_msg, {"role": "user", "content": q}]})
        assert r.status_code == 200; return r.json()
    x1, y, x2 = ask("The colour of the sky?"), ask("How many legs has a cat?"), ask("The colour of the sky?")
    assert x2["message"]["content"] == x1["message"]["content"]
    assert y["prompt_cache_count"] >= 20 and x2["prompt_cache_count"] >= 20          # the system message, not evaluated again
    assert x2["prompt_eval_count"] == x1["prompt_eval_count"] > x2["prompt_cache_count"]   # the whole prompt is counted
    for r in (y, x2):
        assert r["load_duration"] == 0 and r["total_duration"] >= r["prompt_eval_duration"] + r["eval_duration"]
    obj = json.loads(x1["message"]["content"]); assert set(obj) == {"word", "n"} and 0 <= obj["n"] <= 9


def test_lazy_local_server_and_a_fully_cached_rerun_without_model_load(tmp_path):
    """`LocalServer(lazy=True).client(cache=...)`: the first run starts the server at its first miss (once) and
    every decision of the bundled model is valid; a rerun answered wholly from the cache starts no server and
    gives the same decisions, with the recorded latencies (model load excluded)."""
    cache = tmp_path / "llm.duckdb"
    md = MarketData(synthetic_bars(300, seed=7), "TEST", min_history=200)
    with LocalServer(lazy=True) as srv:
        assert srv.starts == 0 and not srv.running
        agent = OllamaAgent(srv.client(cache=cache, timeout=300, retries=0))
        live = run_agent(agent, md, start=250, end=252)
        assert srv.starts == 1
        ident = srv.identity()
    st = agent.stats()
    assert st["failures"] == {} and st["parse_failure_rate"] == 0 and live.decisions["failure"].isna().all()
    assert st["client"]["load_s"] > 0 and st["client"]["live"] == 3                  # the load is reported once, apart
    assert (live.decisions["load_duration_ns"].fillna(0) > 0).sum() == 1
    with ResponseCache(cache) as c: assert c.identity(DEFAULT_MODEL) == ident           # the server confirmed the identity
    t0 = time.perf_counter()
    with LocalServer(lazy=True) as srv2:
        agent2 = OllamaAgent(srv2.client(cache=cache, timeout=300, retries=0))
        again = run_agent(agent2, md, start=250, end=252)
        assert srv2.starts == 0 and not srv2.running                                # no server, no model load
    assert time.perf_counter() - t0 < 10
    cols = ["ts", "action", "confidence", "stop_loss", "take_profit", "risk_level", "risk_score", "horizon", "rationale",
            "failure", "raw", "llm_key", "request_latency_s", "total_tokens"]
    assert again.decisions["cached"].all() and again.decisions[cols].equals(live.decisions[cols])
    st2 = agent2.stats()["client"]
    assert st2["load_s"] == 0 and st2["request_latency_p50_s"] == pytest.approx(st["client"]["request_latency_p50_s"])


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("PTRADER_LLM_FIGURES"), reason="a measurement (minutes): set PTRADER_LLM_FIGURES=N")
def test_figures_real_model_on_sp500(tmp_path):
    """The closing-note figures: decisions/s, p50/p95 latency, valid-JSON and parse-failure rates of SmolLM2 on N
    daily S&P 500 decisions (anonymized prompts), and the cache-hit replay time. Run:
    `PTRADER_LLM_FIGURES=20 .venv/bin/python -m pytest -s tests/test_llm_serve.py -k figures`."""
    from ptrader.data import load_bundled, validate_bars
    n = int(os.environ["PTRADER_LLM_FIGURES"])
    raw, src, _ = load_bundled("SP500")
    bars = validate_bars(raw, source=src, symbol="SP500").bars.loc["2007-01-01":"2008-12-31"]
    md = MarketData(bars, "SP500", min_history=252)
    cache = tmp_path / "llm.duckdb"
    srv = Served()
    try:
        agent = OllamaAgent(OllamaClient(DEFAULT_MODEL, srv.url, timeout=300, cache=cache), anonymize=True)
        t0 = time.perf_counter(); live = run_agent(agent, md, start=300, end=300 + n - 1); live_s = time.perf_counter() - t0
    finally:
        srv.stop()
    t0 = time.perf_counter()
    replay = run_agent(OllamaAgent(OllamaClient(DEFAULT_MODEL, srv.url, cache=cache, mode="replay"), anonymize=True), md,
                       start=300, end=300 + n - 1)
    replay_s = time.perf_counter() - t0
    st = agent.stats(); c = st["client"]
    cols = ["ts", "action", "confidence", "failure", "raw"]
    assert replay.decisions[cols].equals(live.decisions[cols])
    print(f"\nFIGURES n={n} live {live_s:.1f}s -> {n / live_s:.3f} decisions/s; latency p50 {c['latency_p50_s']:.2f}s "
          f"p95 {c['latency_p95_s']:.2f}s; tokens/s {c['tokens_per_s']:.1f}; prompt {c['prompt_tokens']:.0f} + answer "
          f"{c['eval_tokens']:.0f} tokens; valid JSON {st['valid_json_rate']:.0%}; parse failures {st['parse_failure_rate']:.0%} "
          f"{st['failures']}; actions {live.decisions['action'].value_counts().to_dict()}; replay {replay_s:.2f}s "
          f"({n / replay_s:.0f} decisions/s)")
    assert replay_s < live_s
