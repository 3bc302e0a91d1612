"""The noisy test series of issue 12, shared by tests/test_ssa.py and tests/bench/bench_ssa.py: the signal has
rank 4 (white, ar1: a sine of period 500 + a slow linear trend + white or AR(1) noise), a decaying spectrum (rw,
a random walk) or is clean (harmonics and exponentials); a rank-5 decomposition reaches the noise floor."""
import numpy as np
from scipy.signal import lfilter

KINDS = ("white", "ar1", "rw", "clean")


def noisy_series(kind: str, N: int, seed: int = 0) -> np.ndarray:
    "One of `KINDS`, length `N`, seeded. Raises ValueError for another kind."
    t = np.arange(N)
    rng = np.random.default_rng(seed)
    base = np.sin(2 * np.pi * t / 500) + 2 * t / N
    if kind == "white":
        return base + 0.1 * rng.standard_normal(N)
    if kind == "ar1":
        return base + lfilter([1.0], [1.0, -0.7], 0.1 * rng.standard_normal(N))
    if kind == "rw":
        return np.cumsum(rng.standard_normal(N))
    if kind == "clean":
        return np.cos(2 * np.pi * t / 7) + np.sin(2 * np.pi * t / 17) * np.exp(1.5 * t / N) + np.exp(-1.2 * t / N)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
