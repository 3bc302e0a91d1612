"""ptrader.ssa tests that need more than a notebook cell: property tests over random shapes and the GPU checks.

GPU tests carry the `gpu` marker and skip cleanly when CuPy is missing or sees no CUDA device.
"""
from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from ptrader.ssa import (SSA, batched_ssa, batched_ssa_xp, cupy_or_none, decompose, diagonal_average,
                         hankel_embed, page_embed, rolling_ssa, trajectory_operator)

cp = cupy_or_none()
needs_gpu = pytest.mark.skipif(cp is None, reason="needs CuPy and a CUDA device")


def _naive_hankelize(Y):
    L, K = Y.shape
    return np.array([np.mean([Y[i, n - i] for i in range(max(0, n - K + 1), min(L, n + 1))])
                     for n in range(L + K - 1)])


@settings(max_examples=40, deadline=None)
@given(N=st.integers(8, 120), M=st.integers(1, 3), frac=st.floats(0.05, 0.95), seed=st.integers(0, 10**6),
       page=st.booleans())
def test_operator_matches_explicit_matrix(N, M, frac, seed, page):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, M))
    L = int(np.clip(round(frac * N), 2, N - 1))
    X = (page_embed if page else hankel_embed)(x, L)
    op = trajectory_operator(x, L, "page" if page else "hankel")
    V, U = rng.standard_normal((X.shape[1], 2)), rng.standard_normal((L, 2))
    np.testing.assert_allclose(op.matmat(V), X @ V, atol=1e-10 * (1 + np.abs(X).sum()))
    np.testing.assert_allclose(op.rmatmat(U), X.T @ U, atol=1e-10 * (1 + np.abs(X).sum()))
    np.testing.assert_allclose(op.frobenius_sq(), np.sum(X * X), rtol=1e-10)


@settings(max_examples=40, deadline=None)
@given(L=st.integers(1, 40), K=st.integers(1, 90), r=st.integers(1, 4), seed=st.integers(0, 10**6))
def test_diagonal_average_matches_definition(L, K, r, seed):
    rng = np.random.default_rng(seed)
    U, V = rng.standard_normal((L, r)), rng.standard_normal((K, r))
    ref = _naive_hankelize(U @ V.T)
    for method in ("numba", "fft"):
        np.testing.assert_allclose(diagonal_average(U, V, method=method), ref, atol=1e-11)


@settings(max_examples=25, deadline=None)
@given(N=st.integers(10, 150), M=st.integers(1, 2), frac=st.floats(0.1, 0.9), seed=st.integers(0, 10**6))
def test_all_components_reconstruct_the_series(N, M, frac, seed):
    "Every elementary component together is the series itself (diagonal averaging of X is x)."
    x = np.random.default_rng(seed).standard_normal((N, M))
    L = int(np.clip(round(frac * N), 2, N - 1))
    ssa = SSA(L, method="full").fit(x)
    np.testing.assert_allclose(ssa.reconstruct(), x if M > 1 else x[:, 0], atol=1e-9)
    np.testing.assert_allclose(ssa.contributions_.sum(), 1.0, rtol=1e-9)


@functools.lru_cache(maxsize=None)
def _full_reference(L):
    t = np.arange(3000)
    x = sum((6 - j) * np.cos(2 * np.pi * t / p + j) for j, p in enumerate([13, 29, 41, 67, 151]))
    x = x + 0.02 * np.random.default_rng(L).standard_normal(t.size)
    return x, decompose(x, L, 10, "full")


@pytest.mark.parametrize("method", ["eigen", "lanczos", "propack", "randomized"])
@pytest.mark.parametrize("L", [64, 333, 1500])
def test_fast_methods_agree_with_full_svd(method, L):
    x, (Uf, sf, Vf, _) = _full_reference(L)
    U, s, V, _ = decompose(x, L, 10, method)
    np.testing.assert_allclose(s, sf, rtol=1e-8)
    np.testing.assert_allclose((U * s) @ V.T, (Uf * sf) @ Vf.T, atol=1e-8 * sf[0])


def _panel(n_windows=300, window=160):
    rng = np.random.default_rng(3)
    t = np.arange(n_windows + window - 1)
    x = 0.02 * t + np.sin(2 * np.pi * t / 25) + 0.4 * np.cos(2 * np.pi * t / 11) + 0.05 * rng.standard_normal(t.size)
    return x, np.lib.stride_tricks.sliding_window_view(x, window)


def test_xp_numpy_subspace_matches_numba():
    x, W = _panel()
    cpu = batched_ssa(W, 60, 5, 10, backend="cpu")
    s, rec, fc = batched_ssa_xp(W, 60, 5, 10, xp=np, eig="subspace")
    np.testing.assert_allclose(s, cpu.singular_values, rtol=1e-8)
    np.testing.assert_allclose(rec, cpu.reconstruction, atol=1e-8)
    np.testing.assert_allclose(fc, cpu.forecast, atol=1e-8)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("eig", ["direct", "subspace"])
def test_gpu_matches_cpu(eig):
    x, W = _panel()
    cpu = batched_ssa(W, 60, 5, 10, backend="cpu")
    s, rec, fc = (cp.asnumpy(a) for a in batched_ssa_xp(cp.asarray(W), 60, 5, 10, xp=cp, eig=eig))
    np.testing.assert_allclose(s, cpu.singular_values, rtol=1e-8)
    np.testing.assert_allclose(rec, cpu.reconstruction, atol=1e-8)
    np.testing.assert_allclose(fc, cpu.forecast, atol=1e-8)


@pytest.mark.gpu
@needs_gpu
def test_gpu_rolling_backend_and_small_L():
    x, _ = _panel()
    for L in (20, 60):          # L <= 32 uses cuSOLVER's batched Jacobi directly, L > 32 the subspace iteration
        cpu = rolling_ssa(x, 160, L, 4, h=5, step=3, backend="cpu")
        gpu = rolling_ssa(x, 160, L, 4, h=5, step=3, backend="gpu")
        assert gpu.backend == "gpu" and cpu.backend == "cpu"
        np.testing.assert_array_equal(gpu.end, cpu.end)
        np.testing.assert_allclose(gpu.reconstruction, cpu.reconstruction, atol=1e-8)
        np.testing.assert_allclose(gpu.forecast, cpu.forecast, atol=1e-8)


def test_auto_backend_falls_back_without_gpu():
    x, _ = _panel(50, 60)
    res = rolling_ssa(x, 60, 20, 3, backend="auto")
    assert res.backend == ("gpu" if cp is not None else "cpu")
    if cp is None:
        with pytest.raises(ValueError, match="backend"):
            rolling_ssa(x, 60, 20, 3, backend="gpu")
