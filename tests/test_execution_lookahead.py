"""Look-ahead detection of `walk_forward` on every fold.

The detector used to perturb the data of the first fold only, so a signal function that starts reading
the next bar later in the sample went through. These tests build such late cheats (the next bar's close
from a chosen fold on) and check that the walk-forward refuses them, naming that fold and a cut inside
its test window; that an honest signal function passes every check; and that `mirror_after`, the data
replacement behind the cuts, keeps the bars valid and leaves the bars before the cut untouched.
"""
import numpy as np
import pandas as pd
import pytest

from ptrader.broker import RiskLimits
from ptrader.errors import LookAheadError
from ptrader.execution import check_bars, ma_crossover_signals, mirror_after, walk_forward

GRID = {"fast": [5, 10], "slow": [30, 60]}
KW = dict(train_size=500, test_size=250, fees_bps=1, risk=RiskLimits.permissive())


def _bars(n=2000, seed=3):
    rng = np.random.default_rng(seed)
    c = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    o = np.r_[100.0, c[:-1]] * np.exp(rng.normal(0, 0.002, n))
    h = np.maximum(o, c) * np.exp(np.abs(rng.normal(0, 0.004, n)))
    l = np.minimum(o, c) * np.exp(-np.abs(rng.normal(0, 0.004, n)))
    return pd.DataFrame({"open": o, "high": h, "low": l, "close": c, "volume": rng.integers(100, 1000, n).astype(float)},
                        index=pd.bdate_range("2010-01-04", periods=n, name="ts"))


def _honest(b, fast, slow):
    return ma_crossover_signals(b["close"], fast, slow)


def _cheat_from(start):
    "The crossover until `start`, then 'enter if tomorrow closes higher, exit if lower': a one-bar peek."
    def fn(b, fast, slow):
        en, ex = ma_crossover_signals(b["close"], fast, slow)
        nxt = b["close"].shift(-1)
        up = (nxt > b["close"]).to_numpy(); down = (nxt < b["close"]).to_numpy()
        late = (b.index >= start) & nxt.notna().to_numpy()
        return en.where(~late, up), ex.where(~late, down)
    return fn


def test_honest_signals_pass_every_fold():
    bars = _bars()
    wf = walk_forward(bars, _honest, GRID, **KW)
    assert len(wf.folds) == 6
    # the checks do not change what the walk-forward computes
    plain = walk_forward(bars, _honest, GRID, check_causal=False, **KW)
    pd.testing.assert_frame_equal(wf.folds, plain.folds)
    np.testing.assert_array_equal(wf.backtest.equity.to_numpy(), plain.backtest.equity.to_numpy())


@pytest.mark.parametrize("fold", [1, 3, 5])
def test_a_late_cheat_is_caught_in_its_fold(fold):
    """The cheat begins with fold `fold`'s test window; folds before it are clean. The old detector (the
    first fold only) let it through; every fold's check names that fold and a cut inside its test window."""
    bars = _bars()
    plain = walk_forward(bars, _honest, GRID, check_causal=False, **KW)
    f = plain.folds.iloc[fold]
    with pytest.raises(LookAheadError, match=f"fold {fold}, cut at") as e:
        walk_forward(bars, _cheat_from(f.test_start), GRID, **KW)
    assert e.value.fold == fold and f.test_start < e.value.cut <= f.test_end
    # without the check the cheat goes through, with a suspiciously good out-of-sample record
    wf = walk_forward(bars, _cheat_from(f.test_start), GRID, check_causal=False, **KW)
    assert wf.backtest.stats()["Sharpe Ratio"] > plain.backtest.stats()["Sharpe Ratio"] + 1


def test_cheat_in_the_train_window_only_is_caught_at_the_train_end():
    """With no test-window cut (`causal_cuts=0`) a peek is still caught where the train signals (from the
    bars up to the train end) differ from the same bars' signals given the test window too."""
    bars = _bars()
    plain = walk_forward(bars, _honest, GRID, check_causal=False, **KW)
    f = plain.folds.iloc[2]
    with pytest.raises(LookAheadError, match="fold 2") as e:
        walk_forward(bars, _cheat_from(f.train_end - pd.Timedelta(days=30)), GRID, causal_cuts=0, **KW)
    assert e.value.cut == f.test_start        # no purge: the train end is the test start
    with pytest.raises(ValueError, match="causal_cuts"):
        walk_forward(bars, _honest, GRID, causal_cuts=-1, **KW)


def test_mirror_after_keeps_bars_valid_and_the_past_untouched():
    bars = _bars(300)
    for cut in (1, 150, 299):
        m = mirror_after(bars, cut)
        check_bars(m)
        pd.testing.assert_frame_equal(m.iloc[:cut], bars.iloc[:cut])
        lr, lm = np.log(bars.close).diff().to_numpy(), np.log(m.close).diff().to_numpy()
        np.testing.assert_allclose(lm[cut + 1:], -lr[cut + 1:], atol=1e-12)       # later returns change sign
        np.testing.assert_allclose(m.close.iloc[cut] * bars.close.iloc[cut], bars.close.iloc[cut - 1] ** 2)
        np.testing.assert_array_equal(m.volume.to_numpy()[cut:], bars.volume.to_numpy()[cut:][::-1])
    with pytest.raises(ValueError, match="cut"):
        mirror_after(bars, 0)
