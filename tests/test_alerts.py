"""Alert routing against a loopback HTTP receiver started by the test (127.0.0.1, a free port): it accepts,
answers 500, stalls past the timeout, fails twice then accepts, or is down. Every alert ends delivered or in the
dead-letter file; Slack and PagerDuty Events v2 payload shapes; deduplication and bundling."""
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ptrader.compliance import Alert, AlertRouter, JsonlSink, LogSink, WebhookSink, default_router


class Receiver:
    "A loopback webhook receiver; `mode` in ok / fail / slow / flaky (500 twice, then 200)."
    def __init__(self, mode="ok", delay=1.5):
        self.mode, self.delay, self.bodies, self.hits = mode, delay, [], 0
        outer = self
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                outer.hits += 1
                if outer.mode == "slow": time.sleep(outer.delay)
                code = 500 if outer.mode == "fail" or (outer.mode == "flaky" and outer.hits <= 2) else 200
                if code == 200: outer.bodies.append(json.loads(body))
                try:
                    self.send_response(code); self.end_headers(); self.wfile.write(b"ok" if code == 200 else b"boom")
                except (BrokenPipeError, ConnectionResetError): pass
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True); self.thread.start()
    def stop(self): self.server.shutdown(); self.server.server_close(); self.thread.join(5)


@pytest.fixture
def receiver():
    made = []
    def start(mode="ok", **kw):
        r = Receiver(mode, **kw); made.append(r); return r
    yield start
    for r in made: r.stop()


def _down_url():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
    return f"http://127.0.0.1:{port}/hook"


ALERTS = [Alert("CRITICAL", "traded_after_kill_switch", "fill of order 9 after the kill switch (seq 40)", (40, 41)),
          Alert("WARNING", "fill_outside_collar", "order 3 filled 12% from the close", (17,)),
          Alert("INFO", "risk_rejections", "4 order(s) rejected by rule max_position", (5, 6, 7, 8))]


def _router(tmp_path, style="slack", monkeypatch=None, **kw):
    sinks = {"log": LogSink(), "jsonl": JsonlSink(tmp_path / "alerts.jsonl"), style: WebhookSink(style, timeout=0.5)}
    routes = {"CRITICAL": ("log", "jsonl", style), "WARNING": ("log", "jsonl", style), "INFO": ("log", "jsonl")}
    return AlertRouter(sinks, routes, dead_letter=tmp_path / "dead.jsonl", retries=2, backoff=0.01, **kw)


def _dead(tmp_path):
    p = tmp_path / "dead.jsonl"
    return [json.loads(x) for x in p.read_text().splitlines()] if p.exists() else []


def _accounted(d, tmp_path, sink):
    "Every routed alert is delivered or dead-lettered, never both, never neither."
    routed = {a.key for a in ALERTS if a.severity != "INFO"}
    got, dead = set(d.delivered.get(sink, [])), set(d.dead_lettered.get(sink, []))
    assert got | dead == routed and not got & dead
    assert {a["key"] for rec in _dead(tmp_path) if rec["sink"] == sink for a in rec["alerts"]} == dead
    assert set(d.delivered["jsonl"]) == {a.key for a in ALERTS}


def test_slack_accepts_one_bundle(tmp_path, receiver, monkeypatch):
    r = receiver("ok"); monkeypatch.setenv("PTRADER_SLACK_WEBHOOK", r.url)
    router = _router(tmp_path); router.submit(*ALERTS); d = router.flush()
    _accounted(d, tmp_path, "slack")
    assert r.hits == 1 and len(r.bodies) == 1 and d.delivered["slack"]                # bundled: one POST for two alerts
    body = r.bodies[0]
    assert set(body) == {"text", "blocks"} and "1 CRITICAL, 1 WARNING" in body["text"]
    assert [b["type"] for b in body["blocks"]] == ["header", "section", "section"]
    assert all(b["text"]["type"] == "mrkdwn" for b in body["blocks"][1:]) and "seq 40, 41" in body["blocks"][1]["text"]["text"]
    assert len((tmp_path / "alerts.jsonl").read_text().splitlines()) == 3 and not _dead(tmp_path)


def test_pagerduty_events_v2_shape(tmp_path, receiver, monkeypatch):
    r = receiver("ok"); monkeypatch.setenv("PTRADER_PAGERDUTY_URL", r.url); monkeypatch.setenv("PTRADER_PAGERDUTY_ROUTING_KEY", "R" * 32)
    router = _router(tmp_path, "pagerduty"); router.submit(*ALERTS); d = router.flush()
    _accounted(d, tmp_path, "pagerduty")
    ev = r.bodies[0]
    assert ev["routing_key"] == "R" * 32 and ev["event_action"] == "trigger" and len(ev["dedup_key"]) <= 255
    p = ev["payload"]
    assert {"summary", "source", "severity"} <= set(p) and p["severity"] == "critical" and len(p["summary"]) <= 1024
    assert [a["type"] for a in p["custom_details"]["alerts"]] == ["traded_after_kill_switch", "fill_outside_collar"]


@pytest.mark.parametrize("mode", ["fail", "slow", "down"])
def test_failures_are_retried_then_dead_lettered(tmp_path, receiver, monkeypatch, mode):
    url = _down_url() if mode == "down" else receiver(mode).url
    monkeypatch.setenv("PTRADER_SLACK_WEBHOOK", url)
    router = _router(tmp_path); router.submit(*ALERTS)
    t0 = time.monotonic(); d = router.flush(); took = time.monotonic() - t0
    _accounted(d, tmp_path, "slack")
    assert not d.delivered.get("slack") and d.attempts["slack"] == 3, d
    rec = _dead(tmp_path)[0]
    assert rec["attempts"] == 3 and rec["sink"].startswith("slack") and len(rec["alerts"]) == 2
    assert {"fail": "HTTP 500", "slow": "timed out", "down": "refused"}[mode].lower() in rec["error"].lower(), rec["error"]
    if mode == "slow": assert took < 3 * 1.0 + 1.0      # each attempt gave up at the 0.5 s timeout


def test_flaky_receiver_delivered_after_retries(tmp_path, receiver, monkeypatch):
    r = receiver("flaky"); monkeypatch.setenv("PTRADER_SLACK_WEBHOOK", r.url)
    sleeps = []
    router = _router(tmp_path, sleep=sleeps.append); router.submit(*ALERTS); d = router.flush()
    _accounted(d, tmp_path, "slack")
    assert d.delivered["slack"] and d.attempts["slack"] == 3 and r.hits == 3 and len(r.bodies) == 1
    assert sleeps == [0.01, 0.02] and not _dead(tmp_path)                   # exponential backoff


def test_missing_url_is_dead_lettered_and_dedup_window(tmp_path, receiver, monkeypatch):
    monkeypatch.delenv("PTRADER_SLACK_WEBHOOK", raising=False)
    router = _router(tmp_path); router.submit(*ALERTS); d = router.flush()
    _accounted(d, tmp_path, "slack"); assert "PTRADER_SLACK_WEBHOOK" in _dead(tmp_path)[0]["error"] and d.attempts["slack"] == 1
    r = receiver("ok"); monkeypatch.setenv("PTRADER_SLACK_WEBHOOK", r.url)
    now = [0.0]
    router = _router(tmp_path, clock=lambda: now[0], dedup_window_s=600)
    router.submit(*ALERTS); router.flush()
    now[0] = 300; assert router.submit(*ALERTS) == 0 and not router.flush().delivered    # within the window: suppressed
    now[0] = 601; assert router.submit(ALERTS[0]) == 1; router.flush()
    assert r.hits == 2 and len(r.bodies[1]["blocks"]) == 2


def test_default_router_reads_the_environment(tmp_path, monkeypatch):
    for k in ("PTRADER_SLACK_WEBHOOK", "PTRADER_PAGERDUTY_ROUTING_KEY"): monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("PTRADER_ALERTS_FILE", str(tmp_path / "a.jsonl"))
    assert set(default_router().sinks) == {"log", "jsonl"}
    monkeypatch.setenv("PTRADER_SLACK_WEBHOOK", "http://127.0.0.1:9/x"); monkeypatch.setenv("PTRADER_PAGERDUTY_ROUTING_KEY", "k")
    r = default_router(); assert set(r.sinks) == {"log", "jsonl", "slack", "pagerduty"}
    assert r.routes["CRITICAL"] == ("log", "jsonl", "slack", "pagerduty") and r.routes["INFO"] == ("log", "jsonl")
