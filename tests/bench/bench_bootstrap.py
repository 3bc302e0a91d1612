"""Benchmark: 10,000 stationary-bootstrap replications of Sharpe and maximum drawdown on 5,000 daily
returns, ptrader's Numba kernel against the same computation through arch's StationaryBootstrap.

Run: python tests/bench/bench_bootstrap.py [--reps 10000] [--n 5000] [--arch-reps 10000]
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
from arch.bootstrap import StationaryBootstrap, optimal_block_length

from ptrader.stats import _bootstrap_stats_nb, block_bootstrap


def sharpe_mdd(x: np.ndarray) -> np.ndarray:
    "Per-period Sharpe and maximum drawdown of one resample (numpy), the statistic arch bootstraps."
    eq = np.concatenate(([1.0], np.cumprod(1.0 + x)))
    return np.array([x.mean() / x.std(ddof=1), 1.0 - (eq / np.maximum.accumulate(eq)).min()])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--reps", type=int, default=10_000)
    ap.add_argument("--arch-reps", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=42)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    x = rng.standard_t(4, a.n) * 0.01 / np.sqrt(2) + 0.0004
    block = max(1.0, float(optimal_block_length(x)["stationary"].iloc[0]))
    lx = np.log1p(x)
    _bootstrap_stats_nb(x[:50], lx[:50], 3.0, 10, 0, True, 0.0)  # compile (or load the cache)
    t = []
    for _ in range(5):
        t0 = time.perf_counter(); raw = _bootstrap_stats_nb(x, lx, block, a.reps, a.seed, True, 0.0); t.append(time.perf_counter() - t0)
    t_kernel = min(t)
    t0 = time.perf_counter(); res = block_bootstrap(x, reps=a.reps, block_size=block, seed=a.seed); res.conf_int(); t_api = time.perf_counter() - t0
    bs = StationaryBootstrap(block, x, seed=a.seed)
    t0 = time.perf_counter(); ref = bs.apply(sharpe_mdd, reps=a.arch_reps); t_arch = (time.perf_counter() - t0) * a.reps / a.arch_reps
    print(f"n={a.n} reps={a.reps} mean block={block:.2f} threads={os.environ.get('NUMBA_NUM_THREADS', 'default')} cores={os.cpu_count()}")
    print(f"ptrader Numba kernel (Sharpe, Sortino, CAGR, MDD): {t_kernel:.3f} s (best of 5)")
    print(f"ptrader block_bootstrap + BCa conf_int (end to end): {t_api:.3f} s")
    print(f"arch StationaryBootstrap.apply (Sharpe, MDD){' scaled from ' + str(a.arch_reps) + ' reps' if a.arch_reps != a.reps else ''}: {t_arch:.3f} s")
    print(f"speed-up kernel vs arch: {t_arch / t_kernel:.1f}x; end to end vs arch: {t_arch / t_api:.1f}x")
    print(f"bootstrap sd of per-period Sharpe: ptrader {raw[:, 0].std():.5f}, arch {ref[:, 0].std():.5f}; "
          f"mean MDD: ptrader {raw[:, 3].mean():.4f}, arch {ref[:, 1].mean():.4f}")


if __name__ == "__main__":
    main()
