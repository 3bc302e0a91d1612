"""The validation report on a user's own series (issue 11, item 4): a clean geometric random walk (daily vol 1.2%,
business days from 2020-01-02) ingested through the public `Warehouse.ingest_file`, then `ptrader validate
--symbols ACME` with no dates (the range follows the data). 300 bars: the walk-forward (needs 1,009) and
forecasting (needs 765) sections are shown as skipped with the reason and the rest runs; 1,100 bars: every section
runs (the volatility comparison once died in `optimal_block_length` on EGARCH's inf losses, and the MCS on
ARIMA(0,1,0) = naive); 3,000 bars: the walk-forward has several folds."""
import json
import re

import nbformat
import numpy as np
import pandas as pd
import pytest

from ptrader.data import Warehouse


def random_walk_csv(path, n, seed=0, vol=0.012):
    "A clean OHLC file: geometric random walk closes, open = previous close, high/low 0.2% outside."
    rng = np.random.default_rng(seed)
    idx = pd.bdate_range("2020-01-02", periods=n)
    close = 100 * np.exp(np.cumsum(rng.normal(0, vol, n)))
    op = np.r_[100.0, close[:-1]]
    pd.DataFrame({"Date": idx.strftime("%Y-%m-%d"), "Open": op, "High": np.maximum(op, close) * 1.002,
                  "Low": np.minimum(op, close) * 0.998, "Close": close, "Volume": 1e6}).to_csv(path, index=False)
    return idx


def run_user_report(tmp_path, cli, n, seed=0):
    idx = random_walk_csv(tmp_path / "acme.csv", n, seed)
    with Warehouse(tmp_path / "w.duckdb") as wh:
        wh.ingest_file(tmp_path / "acme.csv", symbol="ACME")
    r = cli("validate", "--symbols", "ACME", "--quiet", "--agent", "none")
    html = sorted((tmp_path / "reports").glob("validation-ACME-*.html"))
    return idx, r, html


def outputs_text(ipynb):
    nb = nbformat.read(ipynb, as_version=4)
    return "\n".join(o.get("data", {}).get("text/html", "") + o.get("data", {}).get("text/plain", "") + o.get("data", {}).get("text/markdown", "")
                     for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])).replace("**", "")


def common_checks(idx, r, html):
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(html) == 1
    # --quiet: none of the kernel's own messages
    assert "without encryption" not in r.stderr and "KeyboardInterrupt" not in r.stderr, r.stderr
    rec = json.loads(html[0].with_suffix(".json").read_text())
    assert (rec["parameters"]["start"], rec["parameters"]["end"]) == (str(idx[0].date()), str(idx[-1].date()))   # the data's range
    text = outputs_text(html[0].with_suffix(".ipynb"))
    assert f"Period {idx[0].date()} to {idx[-1].date()}" in text
    assert not re.search(r">\s*(NaN|nan|NaT)\s*<", text), "raw NaN in a table"
    assert "deciding evidence" in text and html[0].stat().st_size < 5e6
    return text


@pytest.mark.slow   # 38 s; the default suite keeps the 251-bar SP500 case of test_validate.py
def test_report_on_300_bars_skips_the_long_sections_with_the_reason(tmp_path, cli):
    idx, r, html = run_user_report(tmp_path, cli, 300)
    text = common_checks(idx, r, html)
    assert "walk-forward and statistical evidence needs 1009" in r.stderr and "forecasting needs 765" in r.stderr   # the pre-run check
    assert "Forecasting (section 5): ACME needs 765 bars, the range holds 300" in text
    assert "Walk-forward: needs 1,009 bars, the range holds 300" in text
    assert "Forecasting: not run" in text and "Drawdown of buy-and-hold" in text   # the price charts still run


@pytest.mark.slow
def test_report_on_1100_bars_runs_every_section(tmp_path, cli):
    idx, r, html = run_user_report(tmp_path, cli, 1100, seed=1)
    text = common_checks(idx, r, html)
    assert "Sections not run" not in text and "Forecasting: not run" not in text   # 1,100 >= 1,009 and >= 765
    assert re.search(r"(does not beat|beats) the benchmark", text)
    assert "Decided by the" in text or "Every test rejects" in text                # the deciding evidence, in words
    assert "Volatility forecasts" in text and "Volatility model confidence set" in text and "SSA scree" in text


@pytest.mark.slow
def test_report_on_3000_bars(tmp_path, cli):
    idx, r, html = run_user_report(tmp_path, cli, 3000, seed=2)
    text = common_checks(idx, r, html)
    assert "Forecasting: not run" not in text and "walk-forward folds" in text and "Sections not run" not in text
