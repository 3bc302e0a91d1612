"""The agentic validation harness (`ptrader.harness`) as a statistical procedure and as a program.

Size and power: over repeated seeds, an agent with no edge passes the significance gates (superiority after
Holm, deflated Sharpe ratio) at no more than the nominal rate, and its raw one-sided HAC t-test rejects at
about alpha (inside a binomial band); an agent handed a noisy copy of the return its position will earn
(from outside the view: this tests the statistics, not the view) passes them in at least 80% of seeds.
A peeking agent is refused; honest agents' paper accounts agree 100% with the vectorized replay on bars
without gaps; planted divergences are detected and explained; an unreachable model leaves the baselines
running; the audit trail records the run; the command line's exit codes.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as ss

from ptrader.agents import BuyAndHold, Decision, synthetic_bars
from ptrader.errors import LLMError, LookAheadError
from ptrader.harness import (HarnessConfig, evaluate, paper_alignment, symbol_data, test_windows as _windows, walk_forward_runs,
                             window_bars)

ROOT = Path(__file__).resolve().parents[1]
VOL = 0.012
ALPHA = 0.05


def null_bars(seed: int, n: int) -> pd.DataFrame:
    "Zero-mean simple returns (log drift -vol^2/2): buy-and-hold and any agent whose position ignores the future earn 0 in expectation."
    return synthetic_bars(n, seed=seed, drift=-VOL ** 2 / 2, vol=VOL)


class CoinFlip:
    "No edge: long or flat by a coin drawn from (seed, t)."
    name = "coin_flip"
    def __init__(self, seed): self.seed = seed
    def decide(self, view):
        up = np.random.default_rng([self.seed, int(view.t.value // 10**9)]).random() < 0.5
        return Decision(action="BUY" if up else "SELL", confidence=0.5, target_fraction=1.0 if up else None, symbol=view.symbol)


class Planted:
    """A planted edge: at the close of t it is told (from outside the view) a noisy copy of the return its position
    earns, open(t+1) -> open(t+2), with correlation `rho` to it, and goes long when the copy is positive."""
    name = "planted"
    def __init__(self, bars: dict, rho: float, seed: int):
        rng = np.random.default_rng(seed); self.sig = {}
        for s, b in bars.items():
            o = b["open"].to_numpy(float)
            fwd = np.r_[o[2:] / o[1:-1] - 1, np.nan, np.nan]
            sd = np.nanstd(fwd)
            self.sig[s] = pd.Series(fwd + rng.normal(0, sd * math.sqrt(1 / rho ** 2 - 1), len(b)), index=b.index)
    def decide(self, view):
        x = self.sig[view.symbol].get(view.t, np.nan)
        if not np.isfinite(x): return Decision.hold(symbol=view.symbol)
        return Decision(action="BUY" if x > 0 else "SELL", confidence=0.6, target_fraction=1.0 if x > 0 else None, symbol=view.symbol)


# the fast path for repeated seeds: one symbol, 6 windows of 42 bars (252 test bars), daily decisions, no costs,
# no risk limits binding, no validator, only the comparison and the significance gates, 200 bootstrap replications
FAST = HarnessConfig(agent="none", symbols=["SYN"], splits=6, test_bars=42, context_bars=5, cadence=1, fees_bps=0,
                     slippage_bps=0, live_risk=False, forecast_models=[], reps=200, significance_only=True, validator="none",
                     baselines=["buy_and_hold"])
RHO = 0.4   # the planted strength


def one_seed(seed: int, planted: bool) -> dict:
    n = FAST.splits * FAST.test_bars + FAST.context_bars + 1
    bars = {"SYN": null_bars(seed, n)}
    agent = Planted(bars, RHO, seed) if planted else CoinFlip(seed)
    r = evaluate(bars, FAST.model_copy(update={"seed": seed}), agent=agent, baselines=[BuyAndHold()])
    g = r.gates.set_index("gate")["status"]; c = r.comparison.set_index("test")
    return dict(superior=g["superiority after Holm"] == "PASS", dsr=g["deflated Sharpe ratio"] == "PASS",
                both=g["superiority after Holm"] == "PASS" and g["deflated Sharpe ratio"] == "PASS",
                t_raw=float(c.loc["paired t (HAC)", "p_value"]) < ALPHA)


def band(n: int, p: float = ALPHA, level: float = 0.99) -> tuple[int, int]:
    "Central `level` binomial interval of the number of rejections in n seeds at rate p."
    return int(ss.binom.ppf((1 - level) / 2, n, p)), int(ss.binom.ppf(1 - (1 - level) / 2, n, p))


def size_check(n_seeds: int):
    res = pd.DataFrame([one_seed(1000 + s, planted=False) for s in range(n_seeds)])
    lo, hi = band(n_seeds)
    k = int(res.t_raw.sum())
    assert lo <= k <= hi, f"raw HAC t rejected {k}/{n_seeds} null seeds, outside the 99% binomial band [{lo}, {hi}] at {ALPHA}"
    for gate in ("superior", "dsr", "both"):
        assert int(res[gate].sum()) <= hi, f"{gate}: {int(res[gate].sum())}/{n_seeds} null seeds passed (band upper {hi})"
    return res


def power_check(n_seeds: int):
    res = pd.DataFrame([one_seed(2000 + s, planted=True) for s in range(n_seeds)])
    for gate in ("superior", "dsr", "both"):
        assert res[gate].mean() >= 0.8, f"{gate}: power {res[gate].mean():.2f} < 0.8 at rho = {RHO}"
    return res


def test_size_no_edge():
    size_check(40)


def test_power_planted_edge():
    power_check(20)


@pytest.mark.slow
def test_size_and_power_many_seeds():
    s = size_check(400); p = power_check(200)
    print(f"size: raw t {s.t_raw.mean():.3f}, superiority {s.superior.mean():.3f}, DSR {s.dsr.mean():.3f}; "
          f"power: superiority {p.superior.mean():.3f}, DSR {p.dsr.mean():.3f}")


def small_bars(seeds=(1, 2), n=420):
    return {f"S{i}": synthetic_bars(n, seed=s) for i, s in enumerate(seeds)}


SMALL = HarnessConfig(agent="none", symbols=["S0", "S1"], splits=3, test_bars=21, context_bars=260, forecast_models=[], reps=200)


class Peeker:
    "Reads the next close through the view."
    name = "peeker"
    def decide(self, view):
        nxt = view.close.lag(-1)
        return Decision(action="BUY" if nxt > view.close.lag(0) else "SELL", confidence=0.9, symbol=view.symbol)


class SneakyPeeker:
    "Tries to reach the storage behind the view instead."
    name = "sneaky"
    def decide(self, view):
        return Decision(action="BUY" if view._data.bars["close"].iloc[-1] > 0 else "SELL", confidence=0.9, symbol=view.symbol)


@pytest.mark.parametrize("agent", [Peeker(), SneakyPeeker()])
def test_peeking_agent_is_refused(agent):
    with pytest.raises(LookAheadError) as e:
        evaluate(small_bars(), SMALL, agent=agent)
    msg = str(e.value)
    assert f"agent {agent.name!r} refused" in msg and "S0" in msg and "window 0" in msg


class UpDay:
    name = "up_day"
    def decide(self, view):
        up = view.close.lag(0) > view.close.lag(1)
        return Decision(action="BUY" if up else "SELL", confidence=0.55, target_fraction=1.0 if up else None, symbol=view.symbol)


def test_honest_agents_align_fully_on_bars_without_gaps():
    r = evaluate(small_bars(), SMALL.model_copy(update={"alignment_agents": "all"}), agent=UpDay(), baselines=[BuyAndHold()])
    assert set(r.alignment.agent) == {"up_day", "buy_and_hold"}
    al = r.alignment.groupby("agent")[["aligned", "bars"]].sum()
    assert (al.aligned == al.bars).all(), al
    assert r.alignment_rate == 1.0 and r.divergences.empty
    assert r.gates.set_index("gate").loc["paper alignment", "status"] == "PASS"


class Timid:
    "BUY at every decision with confidence 0.1 and no target fraction: the Kelly size from flat is zero shares."
    name = "timid"
    def decide(self, view):
        return Decision(action="BUY", confidence=0.1, stop_loss=0.03, take_profit=0.06, symbol=view.symbol)


def test_buys_sized_to_zero_are_not_replayed():
    "An honest agent whose every BUY the paper account sizes to zero placed no order: the replay enters nothing either."
    r = evaluate(small_bars(), SMALL, agent=Timid(), baselines=[BuyAndHold()])
    d = r.decisions[r.decisions.agent == "timid"]
    assert len(d) and (d.action == "BUY").all() and (d.n_orders == 0).all()   # the premise: nothing was ever ordered
    assert r.alignment_rate == 1.0 and r.divergences.empty


def _one_window(bars, agent, cfg):
    w = _windows(len(bars), 1, 21, 100)
    d, off = symbol_data(bars, "X", w, 100)
    run = walk_forward_runs(agent, d, off, w, cfg)[0]
    return paper_alignment(run, window_bars(d, off, w.iloc[0]), 21, cfg)


def test_planted_gap_divergence_is_detected_and_explained():
    "A 5% gap up at the open after a full-size BUY: the paper account refuses the fill (max_position), the replay fills."
    b = synthetic_bars(122, seed=5)
    i = len(b) - 21                                   # first test bar: the BUY decided at the close before fills here
    b.iloc[i:, [0, 1, 2, 3]] *= 1.05                  # the whole path moves up 5% from this open on (a gap, no other change)
    cfg = HarnessConfig(agent="none", symbols=["X"], fees_bps=0, slippage_bps=0)
    summ, div = _one_window(b, BuyAndHold(), cfg)
    assert summ["rate"] < 1 and len(div)
    assert div.cause.str.contains("rejected by the risk manager").all() and div.cause.str.contains("max_position").all()
    assert div.ts.iloc[0] == b.index[i]


class Bracketed:
    "BUY with a 3% stop-loss bracket on the first decision, then hold."
    name = "bracketed"
    def decide(self, view):
        if view.account.position > 0 or len(view.bars) > 101: return Decision.hold(symbol=view.symbol)
        return Decision(action="BUY", confidence=0.9, stop_loss=0.03, take_profit=0.08, target_fraction=0.5, symbol=view.symbol)


def test_planted_fill_rule_divergence_is_detected_and_explained():
    "A bracket stop the vectorized replay does not have: after a 5% gap down the paper stop fills, the replay holds on."
    b = synthetic_bars(122, seed=6)
    i = len(b) - 21 + 3
    b.iloc[i:, [0, 1, 2, 3]] *= 0.95
    cfg = HarnessConfig(agent="none", symbols=["X"])
    summ, div = _one_window(b, Bracketed(), cfg)
    assert summ["rate"] < 1
    assert div.cause.str.contains("stop_loss fill").all(), div.cause.unique()
    assert div.ts.iloc[0] == b.index[i] and div.paper_state.iloc[0] == 0 and div.replay_state.iloc[0] == 1


def test_short_symbol_is_left_out_and_named():
    bars = {**small_bars(), "TINY": synthetic_bars(100, seed=9)}
    r = evaluate(bars, SMALL.model_copy(update={"symbols": ["S0", "S1", "TINY"]}), agent=UpDay(), baselines=[BuyAndHold()])
    assert r.budget["symbols"] == ["S0", "S1"] and "needs at least 282" in r.budget["skipped"]["TINY"]
    with pytest.raises(Exception, match="no symbol has enough bars"):
        evaluate({"TINY": bars["TINY"]}, SMALL.model_copy(update={"symbols": ["TINY"]}), agent=UpDay())


def test_unreachable_model_runs_the_baselines(tmp_path):
    from ptrader.llm import free_port
    cfg = SMALL.model_copy(update={"agent": "ollama:smollm2:135m", "llm_host": f"http://127.0.0.1:{free_port()}"})
    r = evaluate(small_bars(), cfg)
    assert r.llm_status.startswith("unreachable") and r.agent is None
    assert set(r.decision_quality.agent) == {"buy_and_hold", "ma_20_100", "momentum_12_1", "random"}
    assert (r.gates.status == "NOT RUN").all() and r.verdict.startswith("NO-GO") and "could not be judged" in r.verdict
    with pytest.raises(LLMError):
        evaluate(small_bars(), cfg.model_copy(update={"agent_required": True}))
    # with an answer cache that never saw the model: the same, and the cache is consulted, not the server
    r2 = evaluate(small_bars(), cfg.model_copy(update={"llm_cache": str(tmp_path / "c.duckdb")}))
    assert r2.llm_status.startswith("unreachable") and "no cached answer" in r2.llm_status


def test_audit_trail_records_the_run(tmp_path):
    from ptrader.audit import AuditTrail
    trail = tmp_path / "audit.duckdb"
    r = evaluate(small_bars(), SMALL, agent=UpDay(), baselines=[BuyAndHold()], audit=trail, run_id="h1")
    t = AuditTrail(trail)
    assert t.verify().ok
    ev = t.events()
    kinds = ev["kind"].value_counts()
    n_runs = 2 * 2 * 3
    assert kinds["agent_run"] == n_runs and kinds["decision"] == len(r.decisions) and kinds["harness_run"] == 1
    n_orders = int(r.decisions["n_orders"].sum())
    assert kinds["order"] == n_orders and kinds["fill"] >= 1 and kinds["risk_check"] >= 1
    pay = [json.loads(p) if isinstance(p, str) else p for p in ev.loc[ev["kind"] == "harness_run", "payload"]][0]
    assert pay["run_id"] == "h1" and pay["verdict"] == r.verdict
    runs = {json.loads(p)["run_id"] if isinstance(p, str) else p["run_id"] for p in ev.loc[ev["kind"] == "agent_run", "payload"]}
    assert runs == {f"h1/{a}/{s}/{k}" for a in ("up_day", "buy_and_hold") for s in ("S0", "S1") for k in range(3)}


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    from ptrader.data import Warehouse
    p = tmp_path_factory.mktemp("wh") / "w.duckdb"
    with Warehouse(p) as wh: wh.ingest_bundled(["SP500", "VIX"])
    return p


def _cli(*args):
    "`ptrader agent ARGS` as a user runs it (a subprocess)."
    cmd = [sys.executable, "-c", "import sys; from ptrader.harness import cli_main; sys.exit(cli_main(sys.argv[1:]))", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("args, word", [(["evaluate", "--cadence", "0"], "--cadence"), (["evaluate", "--splits", "x"], "--splits"),
                                        (["evaluate", "--agent", "gpt4"], "--agent"), (["evaluate", "--bogus"], "--bogus"),
                                        (["evaluate", "--symbols", "A/B"], "--symbols"), (["frobnicate"], "frobnicate")])
def test_cli_bad_arguments_exit_2_naming_the_argument(args, word, tmp_path, capsys):
    from ptrader.harness import cli_main
    assert cli_main([*args, "--db", str(tmp_path / "none.duckdb")]) == 2
    err = capsys.readouterr().err
    assert word in err and len(err.strip().splitlines()) == 1, err


def test_cli_runs_and_exit_codes(warehouse, tmp_path, capsys):
    from ptrader.harness import cli_main
    from ptrader.llm import free_port
    out = tmp_path / "h.json"
    p = _cli("evaluate", "--agent", "none", "--symbols", "SP500", "--splits", "2", "--db", warehouse, "--json", out, "--reps", "200")
    assert p.returncode == 0, p.stderr
    assert "superiority after Holm" in p.stdout and "NO-GO" in p.stdout
    d = json.loads(out.read_text())
    assert d["verdict"].startswith("NO-GO") and len(d["gates"]) == 9 and d["budget"]["symbols"] == ["SP500"]
    rc = cli_main(["evaluate", "--agent", "ollama:smollm2:135m", "--symbols", "SP500", "--splits", "2", "--db", str(warehouse),
                   "--ollama-host", f"http://127.0.0.1:{free_port()}", "--cache", str(tmp_path / "c.duckdb"), "--reps", "200"])
    assert rc == 1 and "gave no answer" in capsys.readouterr().err
    assert cli_main(["evaluate", "--symbols", "SP500", "--splits", "2", "--db", str(tmp_path / "missing.duckdb")]) == 2
    assert "missing.duckdb" in capsys.readouterr().err


@pytest.mark.llm
@pytest.mark.slow
def test_real_local_model_tiny_budget(warehouse, tmp_path):
    "The bundled SmolLM2 through `ptrader llm serve`: 2 windows, a decision every 10 bars; then the rerun replays the cache."
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from ptrader.harness import evaluate_warehouse
    cfg = HarnessConfig(symbols=["SP500"], splits=2, cadence=10, forecast_models=[], reps=200, llm_cache=str(tmp_path / "c.duckdb"))
    r = evaluate_warehouse(warehouse, cfg)
    assert r.llm_status == "live" and r.agent == "ollama:smollm2:135m" and r.budget["n_decisions"] == 2 * 3   # decisions at 0, 10, 20 of each window
    assert r.verdict.startswith("NO-GO")
    r2 = evaluate_warehouse(warehouse, cfg)
    assert r2.llm_status == "cache"
    assert r2.gates.status.tolist() == r.gates.status.tolist()
    pd.testing.assert_frame_equal(r2.returns, r.returns)
