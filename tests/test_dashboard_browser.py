"""The policy dashboard in a real browser: `ptrader dashboard` (Voila on 127.0.0.1, a free port) driven by
Playwright through Debian's Chromium. The test moves the max-risk-score slider and the drawdown-halt slider and
waits until the page shows the CRITICAL count, the rejection counts and the equity chart (its title and its last
point) that `ptrader.dashboard.recompute` computes in this process for the same settings; then it saves the
policy and reads the file back. Screenshots go to tests/artifacts/dashboard-*.png (gitignored).

Needs /usr/bin/chromium (`apt-get install chromium`; Playwright's own browser download is not used) and the
`playwright` package; skips cleanly without them."""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

sync_api = pytest.importorskip("playwright.sync_api")

from ptrader.compliance import load_policy
from ptrader.dashboard import DashboardData, DashboardSettings, free_port, load_settings, outcome_title, record_example_run, recompute
from ptrader.data import Warehouse

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
LOAD_S = 240          # first page: Voila starts a kernel that imports ptrader and builds the dashboard (2 busy cores: slow)
UPDATE_S = 60         # one control change: a recompute (~40 ms) plus the round trip and the redraw

pytestmark = pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK), reason=f"needs Debian's Chromium at {CHROMIUM}")


def _ptrader(*args):
    return [sys.executable, "-c", "import sys; from ptrader.cli import main; sys.exit(main())", *map(str, args)]


@pytest.fixture(scope="module")
def paths(tmp_path_factory):
    "A warehouse loaded by `ptrader ingest --bundled` and an audit trail holding one recorded paper run."
    tmp = tmp_path_factory.mktemp("dashboard")
    env = dict(os.environ, PTRADER_DB=str(tmp / "w.duckdb"), PTRADER_REPORTS=str(tmp / "reports"))
    env.pop("PTRADER_AUDIT_DB", None)
    r = subprocess.run(_ptrader("ingest", "--bundled"), env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    bars = Warehouse(tmp / "w.duckdb", read_only=True).bars("SP500")
    record_example_run(bars.loc["2007":"2010"], tmp / "audit.duckdb")
    return dict(tmp=tmp, env=env, db=tmp / "w.duckdb", audit=tmp / "audit.duckdb", policy=tmp / "tuned" / "policy.toml")


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2): return True
    except OSError: return False


def _stop(proc):
    "SIGTERM (cli_main stops Voila, Voila its kernels), then SIGKILL of the process group if anything is left."
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try: proc.wait(timeout=30)
        except subprocess.TimeoutExpired: pass
    try: os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError: pass
    proc.wait()


@pytest.fixture(scope="module")
def server(paths):
    "`ptrader dashboard` on a free loopback port; stopped afterwards, whatever happened."
    port = free_port()
    logf = paths["tmp"] / "dashboard.log"
    with open(logf, "w") as log:
        proc = subprocess.Popen(_ptrader("dashboard", "--port", port, "--db", paths["db"], "--audit-db", paths["audit"],
                                         "--policy", paths["policy"], "--no-browser"),
                                env=paths["env"], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + LOAD_S
            while not _listening(port):   # Voila listens; the page renders later, in the browser
                assert proc.poll() is None, logf.read_text()
                assert time.monotonic() < deadline, "voila did not start: " + logf.read_text()
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}/"
        finally:
            _stop(proc)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(logf, ARTIFACTS / "dashboard-server.log")
    assert not _listening(port), "the dashboard's port is still open after the stop"


@pytest.fixture(scope="module")
def page(server):
    with sync_api.sync_playwright() as pw, tempfile.TemporaryDirectory(prefix="ptrader-chromium-") as profile:
        ctx = pw.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, args=ARGS, headless=True,
                                                   viewport={"width": 1700, "height": 1250})
        pg = ctx.new_page()
        pg.set_default_timeout(UPDATE_S * 1000)
        pg.goto(server, wait_until="domcontentloaded", timeout=LOAD_S * 1000)
        pg.wait_for_selector(".ptrader-equity-chart .js-plotly-plot .gtitle", timeout=LOAD_S * 1000)
        yield pg
        ctx.close()


@pytest.fixture(scope="module")
def data(paths):
    "The Python reference: the same precomputation the page's kernel did."
    return DashboardData.from_paths(paths["db"], paths["audit"])


def _num(page, hook: str) -> str:
    return page.text_content(f".{hook} .ptrader-num").strip()


def _wait_shows(page, expected):
    "Wait until every hook shows its expected number and the chart its expected title, then check the chart's last point."
    o, want = expected, {"ptrader-critical-count": str(expected.counts["CRITICAL"]),
                         "ptrader-backtest-rejections-count": str(expected.n_rejections),
                         "ptrader-rejected-orders-count": str(expected.n_rejected_orders),
                         "ptrader-final-equity": f"{expected.final_equity:,.0f}"}
    title = outcome_title(o, "SP500")
    page.wait_for_function("""([want, title]) => {
        const num = h => { const e = document.querySelector('.' + h + ' .ptrader-num'); return e && e.textContent.trim(); };
        const t = document.querySelector('.ptrader-equity-chart .js-plotly-plot .gtitle');
        return Object.entries(want).every(([h, v]) => num(h) === v) && t && t.textContent.trim() === title;
    }""", arg=[want, title], timeout=UPDATE_S * 1000)
    last = page.evaluate("""() => { const g = document.querySelector('.ptrader-equity-chart .js-plotly-plot');
                                    const y = g._fullData[0].y; return Number(y[y.length - 1]); }""")
    assert last == pytest.approx(o.final_equity, rel=1e-9)


def _type_readout(page, hook: str, value: str):
    "Type a value into a slider's readout (a user's way to set it exactly) and press Enter."
    r = page.locator(f".{hook} .widget-readout")
    r.click(); page.keyboard.press("Control+A"); page.keyboard.type(value); page.keyboard.press("Enter")
    page.wait_for_function("([h, v]) => document.querySelector('.' + h + ' .widget-readout').textContent.trim() === v",
                           arg=[hook, value])


def _drag(page, hook: str, fraction: float) -> float:
    "Drag a slider's handle to `fraction` of its track with the mouse; returns the value its readout then shows."
    track = page.locator(f".{hook} .noUi-base").bounding_box()
    handle = page.locator(f".{hook} .noUi-handle").bounding_box()
    before = page.text_content(f".{hook} .widget-readout").strip()
    page.mouse.move(handle["x"] + handle["width"] / 2, handle["y"] + handle["height"] / 2)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], track["y"] + track["height"] / 2, steps=8)
    page.mouse.up()
    page.wait_for_function("([h, b]) => document.querySelector('.' + h + ' .widget-readout').textContent.trim() !== b",
                           arg=[hook, before])
    return float(page.text_content(f".{hook} .widget-readout"))


def test_dashboard_in_chromium(page, data, paths):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    base = recompute(data, DashboardSettings())
    _wait_shows(page, base)
    page.screenshot(path=str(ARTIFACTS / "dashboard-default.png"), full_page=True)

    # the max-risk-score slider: more decisions over the cap, more CRITICAL issues and refused entries
    _type_readout(page, "ptrader-max-risk-score", "0.50")
    s1 = DashboardSettings().with_values(max_risk_score=0.5)
    o1 = recompute(data, s1)
    assert o1.counts["CRITICAL"] > base.counts["CRITICAL"] and o1.n_rejections > base.n_rejections
    _wait_shows(page, o1)

    # the drawdown-halt slider, dragged with the mouse (the warning level first, below any halt it may reach)
    _type_readout(page, "ptrader-dd-warn", "0.01")
    halt = _drag(page, "ptrader-dd-halt", 0.06)
    assert 0.01 <= halt <= 0.06, halt
    s2 = s1.with_values(dd_warn=0.01, dd_halt=halt)
    o2 = recompute(data, s2)
    assert o2.final_equity != o1.final_equity and (o2.backtest.risk_events["kind"] == "state_change").any()
    _wait_shows(page, o2)
    page.screenshot(path=str(ARTIFACTS / "dashboard-tuned.png"), full_page=True)

    # save, and find the file: the policy file and its risk file hold the settings shown
    assert page.input_value(".ptrader-policy-path input") == str(paths["policy"])
    page.click(".ptrader-save")
    page.wait_for_selector(".ptrader-saved-path")
    assert page.text_content(".ptrader-saved-path").strip() == str(paths["policy"])
    assert paths["policy"].is_file()
    saved, shown = load_settings(paths["policy"]).values(), s2.values()
    assert saved.pop("forbidden_llm_decisions") == shown.pop("forbidden_llm_decisions")
    assert saved == pytest.approx(shown, rel=1e-12)     # the slider's float (0.04000000000000001) vs its readout
    assert load_policy(paths["policy"]).max_risk_score == 0.5
    for f in ("dashboard-default.png", "dashboard-tuned.png"):
        assert (ARTIFACTS / f).stat().st_size > 10_000
