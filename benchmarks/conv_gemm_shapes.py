"""Experiment (issue 3): can the convolution GEMMs beat OpenBLAS on their skinny shapes?

hpcnet's convolution is im2col + three GEMMs per layer (see
``hpcnet/kernels/_cpu_conv.py``), each with the filter count O (16-96) as one
dimension. OpenBLAS runs them at 40-75 GFLOP/s per thread against ~105 on square
shapes. This script times, at one thread and in CPU time (robust to the other jobs
on this shared 2-vCPU machine), interleaved A B A B, medians:

* ``blas``: the GEMMs as hpcnet calls them, for im2col matrix ``cols (M, K)`` with
  M = N*OH*OW, K = C*k*k, weights ``w (O, K)`` and output gradient ``dy (M, O)``:
  forward ``cols @ w.T``, weight gradient ``dy.T @ cols``, input gradient ``dy @ w``;
* ``blas-alt``: the same products in another orientation: forward ``(w @ cols.T).T``,
  weight gradient ``(cols.T @ dy).T`` (the transpose of an (K, O) result is small);
* ``numba-dot``: a Numba register-blocked micro-kernel for the forward (4 rows of
  cols x 4 rows of w, 16 accumulators, the K-long inner loop vectorised with fastmath
  reductions; both operands are contiguous along K, so no packing);
* ``numba-tile``: the BLIS-style 6 x 64 register tile written in LLVM IR through
  Numba (``_skinny_gemm.py``), for all three products.

Findings (2026-11-22, numpy 2.4 / OpenBLAS 0.3.31 SkylakeX kernel, Numba 0.68, one
thread, CPU time, machine busy), 2conv's second convolution at batch 64 (M = 12,544,
K = 800, O = 64; 1.28 GFLOP per GEMM): forward blas 17-23 ms (56-76 GFLOP/s),
numba-dot 23-27 ms (48-55), numba-tile 18-20 ms (65-72); weight gradient blas 29-31
ms (41-44), blas-alt 27-28 ms (1.1x), numba-tile 31-40 ms (reduction blocks of 64-256;
0.8-1.0x; computing its transpose instead: 48-52 ms); input gradient blas 21-22 ms
(58-60), numba-tile 17.6-26 ms (0.85-1.26x, noisy). Summed over the three GEMMs
numba-tile saves ~10 % (~67 against ~76 ms), the layer (with im2col and col2im) less;
lenet's second convolution (M = 6,400, K = 150, O = 16) is a wash (0.7-1.0 ms per
GEMM either way; blas-alt 0.94x). Nothing reached the 1.2x on the layer that would
justify a change, so hpcnet's kernels are unchanged. What was tried in Numba:

* The dot form above (the only register-blocked form LLVM vectorises from Numba):
  LLVM emits 256-bit FMAs because its tuning for this CPU prefers 256-bit vectors;
  ``NUMBA_CPU_FEATURES=<host features>,-prefer-256-bit`` gives 512-bit FMAs but ran
  slower (47 against 55 GFLOP/s: W (64 x 800, 200 KB) streams from L2, 4 vector
  loads per 16 FMAs) and would change every kernel's code generation.
* The BLAS-style broadcast form (MR rows x 32-64 columns of C held in registers) in
  Python code: Numba gives LLVM no way to keep the accumulators in registers.
  Accumulators in a local or per-thread array are not promoted (LLVM cannot prove
  they do not alias A or B; even inside ``prange``, whose arguments are ``noalias``,
  views of one array alias each other); scalar accumulators (generated code, 64-128
  scalars) are not SLP-vectorised into vectors (the loop-carried phis stay scalar;
  with fastmath reassociation the loop vectoriser instead vectorises the K loop with
  gathers). With C in L1 the loop is store-bound: 11-12 GFLOP/s for the weight and
  input gradients. Written in LLVM IR instead (``numba-tile``) the same form gives
  the textbook loop (4 vector loads, 6 broadcasts, 24 zmm FMAs per step) and 65-73
  GFLOP/s where its operands stream well, but the weight gradient (reduction over
  M = 12,544 rows of cols, 64-float pieces of 3,200-byte rows) stays at OpenBLAS's
  rate; packing those panels would be the next thing to try.
* Upper bound: with all three GEMMs of 2conv's second convolution at 105 GFLOP/s
  (OpenBLAS's square-shape rate), a one-thread 2conv step would go from ~144 ms to
  ~106 ms, about 0.97x PyTorch (oneDNN direct convolution); the 1.3x target needs a
  direct convolution, not a faster GEMM.

Run: ``python benchmarks/conv_gemm_shapes.py [--batch 64] [--repeats 15]`` (first run
~10 s: Numba compiles and caches the kernels).
"""

from __future__ import annotations

import argparse
import time

import _skinny_gemm
import numba
import numpy as np
from numba import njit
from threadpoolctl import threadpool_limits


@njit(cache=True, fastmath=True)
def gemm_abt_dot(a, b, c):  # pragma: no cover - compiled
    """c (M, N) = a (M, K) @ b (N, K)^T, float32, C-contiguous; 4 x 4 register blocks."""
    m, k = a.shape
    n = b.shape[0]
    m4, n4 = m - m % 4, n - n % 4
    for i in range(0, m4, 4):
        a0, a1, a2, a3 = a[i], a[i + 1], a[i + 2], a[i + 3]
        for j in range(0, n4, 4):
            b0, b1, b2, b3 = b[j], b[j + 1], b[j + 2], b[j + 3]
            s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = np.float32(0.0)
            s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = np.float32(0.0)
            for t in range(k):
                x0, x1, x2, x3 = a0[t], a1[t], a2[t], a3[t]
                y0, y1, y2, y3 = b0[t], b1[t], b2[t], b3[t]
                s00 += x0 * y0
                s01 += x0 * y1
                s02 += x0 * y2
                s03 += x0 * y3
                s10 += x1 * y0
                s11 += x1 * y1
                s12 += x1 * y2
                s13 += x1 * y3
                s20 += x2 * y0
                s21 += x2 * y1
                s22 += x2 * y2
                s23 += x2 * y3
                s30 += x3 * y0
                s31 += x3 * y1
                s32 += x3 * y2
                s33 += x3 * y3
            c[i, j], c[i, j + 1], c[i, j + 2], c[i, j + 3] = s00, s01, s02, s03
            c[i + 1, j], c[i + 1, j + 1], c[i + 1, j + 2], c[i + 1, j + 3] = s10, s11, s12, s13
            c[i + 2, j], c[i + 2, j + 1], c[i + 2, j + 2], c[i + 2, j + 3] = s20, s21, s22, s23
            c[i + 3, j], c[i + 3, j + 1], c[i + 3, j + 2], c[i + 3, j + 3] = s30, s31, s32, s33
    for i in range(m):  # edges: rows past m4 (all columns), columns past n4
        for j in range(n4 if i < m4 else 0, n):
            s = np.float32(0.0)
            for t in range(k):
                s += a[i, t] * b[j, t]
            c[i, j] = s


def conv_shapes(batch: int) -> dict[str, tuple[int, int, int]]:
    """(M, K, O) of the im2col GEMMs: M = batch*OH*OW, K = C*k*k, O filters."""
    return {
        "2conv conv2": (batch * 14 * 14, 32 * 5 * 5, 64),  # 32x14x14, 64 5x5 same
        "lenet conv2": (batch * 10 * 10, 6 * 5 * 5, 16),  # 6x14x14, 16 5x5 valid
    }


def cpu_medians(fns: dict, repeats: int) -> dict[str, float]:
    """Median CPU seconds of each callable, run interleaved (A B C A B C ...)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.process_time()
            fn()
            times[name].append(time.process_time() - t)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def time_layer(layer: str, m: int, k: int, o: int, repeats: int, rng) -> None:
    """Times every variant on one layer's GEMMs and prints ms and GFLOP/s."""
    cols = rng.standard_normal((m, k), dtype=np.float32)  # (M, K)
    w = rng.standard_normal((o, k), dtype=np.float32)  # (O, K)
    dy = rng.standard_normal((m, o), dtype=np.float32)  # (M, O)
    y, dw = np.empty((m, o), np.float32), np.empty((o, k), np.float32)
    dcols, dwt = np.empty((m, k), np.float32), np.empty((k, o), np.float32)
    cf, dyf, wf = cols.reshape(-1), dy.reshape(-1), w.reshape(-1)
    gemm = _skinny_gemm.gemm  # C = A @ B on flat arrays: (a, off, row, col strides), ...

    def fwd_tile():
        wt = np.ascontiguousarray(w.T)  # (K, O)
        gemm(cf, 0, k, 1, wt.reshape(-1), 0, o, y.reshape(-1), 0, o, m, o, k)

    def dw_tile():  # A = dy^T: element (i, p) at dy[p, i]
        gemm(dyf, 0, 1, o, cf, 0, k, dw.reshape(-1), 0, k, o, k, m, 64)

    def dcols_tile():
        gemm(dyf, 0, o, 1, wf, 0, k, dcols.reshape(-1), 0, k, m, k, o)

    def dw_alt():
        np.matmul(cols.T, dy, out=dwt)
        dw[...] = dwt.T

    fns = {
        "fwd blas": lambda: np.matmul(cols, w.T, out=y),
        "fwd blas-alt": lambda: np.matmul(w, cols.T).T,
        "fwd numba-dot": lambda: gemm_abt_dot(cols, w, y),
        "fwd numba-tile": fwd_tile,
        "dw blas": lambda: np.matmul(dy.T, cols, out=dw),
        "dw blas-alt": dw_alt,
        "dw numba-tile": dw_tile,
        "dcols blas": lambda: np.matmul(dy, w, out=dcols),
        "dcols numba-tile": dcols_tile,
    }
    with threadpool_limits(1):
        tol = {"rtol": 1e-3, "atol": 1e-3 * np.sqrt(k)}
        gemm_abt_dot(cols, w, y)  # compile (or load the cache) before timing
        np.testing.assert_allclose(y, cols @ w.T, **tol)
        fwd_tile()
        np.testing.assert_allclose(y, cols @ w.T, **tol)
        dcols_tile()
        np.testing.assert_allclose(dcols, dy @ w, **tol)
        dw_tile()
        np.testing.assert_allclose(dw, dy.T @ cols, rtol=1e-3, atol=1e-3 * np.sqrt(m))
        for fn in fns.values():
            fn()
        med = cpu_medians(fns, repeats)
    flop = 2.0 * m * k * o
    print(f"# {layer}: M={m} K={k} O={o}, {flop / 1e9:.2f} GFLOP per GEMM, 1 thread, CPU time")
    for name, t in med.items():
        print(f"  {name:<16} {t * 1e3:8.2f} ms  {flop / t / 1e9:6.1f} GFLOP/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    args = ap.parse_args()
    numba.set_num_threads(1)
    rng = np.random.default_rng(0)
    for layer, (m, k, o) in conv_shapes(args.batch).items():
        time_layer(layer, m, k, o, args.repeats, rng)


if __name__ == "__main__":
    main()
