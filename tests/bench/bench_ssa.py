"""Benchmark of ptrader.ssa against peers measured in the same run (a script; pytest does not collect it).

Run:  python tests/bench/bench_ssa.py            (all cases)
      python tests/bench/bench_ssa.py --quick    (smaller sizes, for a smoke run)

Cases
1. N = 10,000, L = N/2, rank 10: ptrader (auto method + reconstruction) vs a naive NumPy SSA (build X, full
   np.linalg.svd, Python-loop diagonal averaging) and pyts.decomposition.SingularSpectrumAnalysis. Prints ratios.
2. N = 1,000,000, L = N/2, rank 5: decompose + reconstruct, in a child process so its peak RSS is its own.
3. Rolling SSA: 10,000 windows of length 500, L = 100, rank 10: Numba CPU path vs the CuPy GPU path when a CUDA
   device is present (windows per second for both), else the GPU line says why it was skipped.
4. Series that look like data, rank 5 with L = N/2 (the requested rank exceeds the signal's, so the last components
   sit in the noise floor): "white" (period-500 sine + slow linear trend + white noise s.d. 0.1), "ar1" (the same
   with AR(1) noise, phi = 0.7, innovations s.d. 0.1), "rw" (a Gaussian random walk), "clean" (an exact rank-5
   harmonic series, no noise). For N = 100,000 every method, for N = 1,000,000 `auto` (and the methods given with
   --methods-1m): decompose + reconstruct time, the same in FFT pairs (one rfft + irfft of length N, the unit
   measured right before and after each run in the same process, wall clock and CPU time), operator products
   (X v plus X^T u), the largest residual relative to s_1, whether it met tol, and the largest error of the singular
   values against a tight reference (ARPACK, rank r + 3, tol 1e-10), relative to s_1: a method can meet tol and
   still return the twin of a noise component instead of the component itself (the noise components of a Hankel
   matrix come in sine/cosine pairs whose values differ by 1e-7 to 1e-3 relative). Every method runs with the
   missing-twin check (the default); "-nocheck" is the method without it (the column shows the twins it returns and
   the pairs column what the check costs), "irlba-b2" irlba from a block of two start vectors. With L = N/2, `auto`
   is symlanczos (Lanczos on the square symmetric Hankel block, one product per step). Each row is
   `decompose` + `diagonal_average` of the rank-r sum (what SSA.fit + reconstruct run). The cost targets are 60
   FFT pairs at N = 1e6 (auto) and 100 at N = 1e5 (every truncated method). "other" is pairs minus products: a
   product costs about one FFT pair, so it is what the run spends besides them (reorthogonalization, small SVDs,
   the check's Hilbert transforms, the reconstruction's r + 1/2 pairs). Each series runs --repeat rounds (default 3)
   of every method, each round in a rotated order (a machine that drifts, or a first run that is faster, favours no
   method), and the smallest count of each method is printed (the unit measured around each run), as timeit does: on
   a shared machine the other processes only ever add time. The CPU-time count is the steadier one: it does not
   grow when other processes take the cores.
   Case 1 also runs on the "white" series, so the peer ratios are shown on noisy data too.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np


def series(N: int, seed: int = 0) -> np.ndarray:
    t = np.arange(N)
    rng = np.random.default_rng(seed)
    return (np.cos(2 * np.pi * t / 7) + np.sin(2 * np.pi * t / 17) * np.exp(1.5 * t / N) + np.exp(-1.2 * t / N)
            + 0.3 * np.sin(2 * np.pi * t / 101) + 0.2 * np.cos(2 * np.pi * t / 33) + 0.1 * rng.standard_normal(N))


sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from ssa_series import noisy_series  # the series the tests use (tests/ssa_series.py)


def fft_pair_unit(N: int, repeat: int = 7):
    "Median wall and CPU seconds of one rfft + irfft of length N (scipy.fft, the transforms the operator uses)."
    import scipy.fft as sfft
    x = np.random.default_rng(99).standard_normal(N)
    wall, cpu = [], []
    for _ in range(repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        sfft.irfft(sfft.rfft(x), n=N)
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return float(np.median(wall)), float(np.median(cpu))


def naive_ssa(x: np.ndarray, L: int, r: int) -> np.ndarray:
    "The textbook algorithm: explicit trajectory matrix, full SVD, loop diagonal averaging."
    N = x.size
    K = N - L + 1
    X = np.column_stack([x[j:j + L] for j in range(K)])
    U, s, Vt = np.linalg.svd(X, full_matrices=False)
    Y = (U[:, :r] * s[:r]) @ Vt[:r]
    out = np.zeros(N)
    cnt = np.zeros(N)
    for i in range(L):
        out[i:i + K] += Y[i]
        cnt[i:i + K] += 1
    return out / cnt


def peak_rss_mib() -> float:
    "Peak resident set size of this process (VmHWM; reset at exec, unlike ru_maxrss which a child inherits)."
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(f, repeat: int = 1):
    best, out = np.inf, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def case_10k(N: int, kind: str = "bench"):
    from ptrader.ssa import SSA
    x = series(N) if kind == "bench" else noisy_series(kind, N)
    L, r = N // 2, 10
    SSA(50, 3).fit(x[:200]).reconstruct()          # warm the Numba caches
    t_pt, rec = timed(lambda: SSA(L, r).fit(x).reconstruct(), repeat=3)
    method = SSA(L, r).fit(x).method_
    print(f"[{kind} series, N={N:,}, L={L:,}, rank {r}] ptrader SSA (method={method}) fit+reconstruct: {t_pt:.4f} s")
    t_nv, rec_nv = timed(lambda: naive_ssa(x, L, r))
    print(f"  naive numpy (build X, full SVD, loop averaging): {t_nv:.3f} s   ratio naive/ptrader = {t_nv / t_pt:,.0f}x"
          f"   max |diff| = {np.abs(rec - rec_nv).max():.2e}")
    try:
        from pyts.decomposition import SingularSpectrumAnalysis
    except ImportError as e:
        print(f"  pyts: skipped ({e})")
        return
    # pyts keeps every one of the L elementary components (L x N floats); groups=[0..r-1] still computes them all.
    need = 8 * L * N * 3
    if need > 0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"):
        print(f"  pyts: skipped (needs about {need / 2**30:.1f} GiB)")
        return
    pyts = SingularSpectrumAnalysis(window_size=L, groups=[np.arange(r)])
    t_py, rec_py = timed(lambda: pyts.fit_transform(x[None, :]))
    rec_py = np.asarray(rec_py).reshape(-1)
    print(f"  pyts SingularSpectrumAnalysis: {t_py:.3f} s   ratio pyts/ptrader = {t_py / t_pt:,.0f}x"
          f"   max |diff| = {np.abs(rec - rec_py).max():.2e}")


def case_1m_child(N: int, method: str):
    from ptrader.ssa import SSA
    x = series(N)
    SSA(50, 3).fit(x[:200]).reconstruct()
    rss0 = peak_rss_mib()
    t0 = time.perf_counter()
    ssa = SSA(N // 2, 5, method=method).fit(x)
    t1 = time.perf_counter()
    rec = ssa.reconstruct()
    t2 = time.perf_counter()
    rss = peak_rss_mib()
    print(json.dumps(dict(method=ssa.method_, fit=t1 - t0, reconstruct=t2 - t1, rss_mib=rss,
                          rss_before_mib=rss0, resid_std=float(np.std(x - rec)),
                          s=ssa.singular_values_.tolist())))


def case_1m(N: int):
    "Each run in a fresh process; N/4 and N with the default method show how peak memory grows with N."
    for n, method in ((N // 4, "auto"), (N, "auto"), (N, "lanczos")):
        out = subprocess.run([sys.executable, __file__, "--child-1m", str(n), method], capture_output=True, text=True)
        if out.returncode:
            print(out.stderr)
            continue
        d = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"[N={n:,}, L={n // 2:,}, rank 5, method={d['method']}] fit {d['fit']:.2f} s + reconstruct "
              f"{d['reconstruct']:.2f} s = {d['fit'] + d['reconstruct']:.2f} s; peak RSS {d['rss_mib']:.0f} MiB "
              f"(after imports and input {d['rss_before_mib']:.0f} MiB; series alone {8 * n / 2**20:.0f} MiB); "
              f"residual std {d['resid_std']:.4f}")


def case_noisy(sizes, methods_1m, kinds=("white", "ar1", "rw", "clean"), r: int = 5, repeat: int = 3):
    "Case 4: time, FFT pairs, products, residuals and errors of decompose + reconstruct per series, size and method."
    import logging
    from ptrader.errors import ConvergenceFailure
    from ptrader.ssa import SSA, decompose, diagonal_average
    logging.getLogger("ptrader.ssa").setLevel(logging.ERROR)      # "residual above tol" is the conv column
    SSA(50, 3).fit(series(200)).reconstruct()
    print(f"{'series':6s} {'N':>9s} {'method':>13s} {'used':>10s} {'time s':>8s} {'pairs':>6s} {'pairs cpu':>9s} "
          f"{'products':>8s} {'other':>6s} {'max res/s1':>10s} {'s err/s1':>9s} conv")
    rows = []
    for N in sizes:
        methods = (("auto", "symlanczos", "symlanczos-nocheck", "irlba", "irlba-nocheck", "irlba-b2", "propack",
                    "lanczos", "randomized") if N <= 100_000
                   else methods_1m)
        for kind in kinds:
            x = noisy_series(kind, N)
            ref = decompose(x, N // 2, r + 3, "lanczos", tol=1e-10).s[:r]
            best, last, failed = {}, {}, {}
            for rnd in range(repeat):        # rounds over every method, each round in a rotated order
                for method in methods[rnd % len(methods):] + methods[:rnd % len(methods)]:
                    if method in failed:
                        continue
                    w0, c0 = fft_pair_unit(N)
                    t0, p0 = time.perf_counter(), time.process_time()
                    try:
                        res = decompose(x, N // 2, r, method.split("-")[0], twin_check=not method.endswith("-nocheck"),
                                        options={"irlba": {"block_size": 2}} if method == "irlba-b2" else None)
                        diagonal_average(res.U, res.V * res.s)
                    except ConvergenceFailure as e:
                        failed[method] = str(e)
                        continue
                    wall, cpu = time.perf_counter() - t0, time.process_time() - p0
                    w1, c1 = fft_pair_unit(N)
                    pairs, pairs_cpu = wall / ((w0 + w1) / 2), cpu / ((c0 + c1) / 2)
                    b = best.get(method, (np.inf, np.inf, np.inf))
                    best[method] = (*((wall, pairs) if pairs < b[1] else b[:2]), min(b[2], pairs_cpu))
                    last[method] = res
            for method in methods:
                if method in failed:
                    print(f"{kind:6s} {N:9,d} {method:>13s}  ConvergenceFailure: {failed[method][:200]}")
                    continue
                res, (wall, pairs, pairs_cpu) = last[method], best[method]
                d = res.diagnostics
                resid = max(d["residuals"]) if d["residuals"] is not None else float("nan")
                serr = float(np.max(np.abs(res.s - ref)) / ref[0])
                row = dict(kind=kind, N=N, method=method, used=res.method, time=wall, pairs=pairs,
                           pairs_cpu=pairs_cpu, products=d["products"], residual=resid, s_err=serr,
                           converged=d["converged"])
                rows.append(row)
                print(f"{kind:6s} {N:9,d} {method:>13s} {res.method:>10s} {wall:8.3f} {pairs:6.1f} "
                      f"{pairs_cpu:9.1f} {d['products']:8d} {pairs - d['products']:6.1f} {resid:10.2e} {serr:9.1e} "
                      f"{d['converged']}" + (" repaired" if d.get("repaired") else ""), flush=True)
    return rows


def case_rolling(n_windows: int, window: int, L: int, r: int):
    from ptrader.ssa import batched_ssa, cupy_or_none
    x = series(n_windows + window - 1, seed=1) + np.cumsum(np.random.default_rng(2).standard_normal(n_windows + window - 1)) * 0.05
    W = np.lib.stride_tricks.sliding_window_view(x, window)
    batched_ssa(W[:16], L, r, 5, backend="cpu")       # compile / load cache
    t_cpu, cpu = timed(lambda: batched_ssa(W, L, r, 5, backend="cpu"))
    print(f"[rolling: {n_windows:,} windows x {window}, L={L}, rank {r}] Numba CPU: {t_cpu:.2f} s = "
          f"{n_windows / t_cpu:,.0f} windows/s")
    cp = cupy_or_none()
    if cp is None:
        print("  CuPy GPU: skipped (CuPy not installed or no CUDA device)")
        return
    batched_ssa(W[:16], L, r, 5, backend="gpu")
    def run_gpu():
        res = batched_ssa(W, L, r, 5, backend="gpu")
        cp.cuda.Device().synchronize()
        return res
    t_gpu, gpu = timed(run_gpu, repeat=2)
    err = np.abs(gpu.reconstruction - cpu.reconstruction).max()
    print(f"  CuPy GPU: {t_gpu:.3f} s = {n_windows / t_gpu:,.0f} windows/s   ratio GPU/CPU = {t_cpu / t_gpu:.1f}x"
          f"   max |rec diff| = {err:.2e}   max |forecast diff| = {np.nanmax(np.abs(gpu.forecast - cpu.forecast)):.2e}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--child-1m", nargs=2, metavar=("N", "METHOD"))
    ap.add_argument("--only", choices=("10k", "1m", "rolling", "noisy"))
    ap.add_argument("--methods-1m", default="auto", help="comma-separated methods for case 4 at N = 1e6")
    ap.add_argument("--repeat", type=int, default=3,
                    help="case 4: rounds of every method (rotated order); the smallest count of each is printed")
    a = ap.parse_args()
    if a.child_1m:
        case_1m_child(int(a.child_1m[0]), a.child_1m[1])
        return
    print(f"cores: {os.cpu_count()}, load average: {os.getloadavg()}")
    if a.only in (None, "10k"):
        case_10k(2_000 if a.quick else 10_000)
        case_10k(2_000 if a.quick else 10_000, "white")
    if a.only in (None, "1m"):
        case_1m(100_000 if a.quick else 1_000_000)
    if a.only in (None, "noisy"):
        case_noisy((20_000, 100_000) if a.quick else (100_000, 1_000_000), tuple(a.methods_1m.split(",")),
                   repeat=a.repeat)
    if a.only in (None, "rolling"):
        case_rolling(1_000 if a.quick else 10_000, 500, 100, 10)


if __name__ == "__main__":
    main()
