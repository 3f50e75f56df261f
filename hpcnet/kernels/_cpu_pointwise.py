"""The CPU backend's compiled loops for pooling, ReLU, LRN and the softmax loss
(``numba.njit(parallel=True, cache=True)``); :mod:`hpcnet.kernels.cpu` allocates their
outputs and calls them. The formulas, with their sources, are in
:mod:`hpcnet.kernels.reference`.

The parallel kernels write into arrays the caller allocated with NumPy: an array
allocated inside a parallel Numba function is fresh mmap'd memory faulted in page by
page (and misses NumPy's huge pages): a ReLU of 131 K floats took 0.18 ms against
0.010 with NumPy's array, of 18 M floats 46 against 10 ms (OpenMP layer, 2 threads).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, k, stride, y, arg):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    oh, ow = y.shape[2], y.shape[3]
    for nc in prange(n * c):
        b = nc // c
        ci = nc % c
        for i in range(oh):
            for j in range(ow):
                best = -np.inf
                bi = 0
                for di in range(k):
                    for dj in range(k):
                        ih = i * stride + di
                        iw = j * stride + dj
                        v = x[b, ci, ih, iw]
                        if v > best:
                            best = v
                            bi = ih * w + iw
                y[b, ci, i, j] = best
                arg[b, ci, i, j] = bi


@njit(parallel=True, cache=True)
def _maxpool_bwd(dy, arg, dx):  # pragma: no cover - compiled
    n, c, oh, ow = dy.shape
    for nc in prange(n * c):
        b = nc // c
        ci = nc % c
        dx[b, ci] = 0.0
        for i in range(oh):
            for j in range(ow):
                dx[b, ci, arg[b, ci, i, j]] += dy[b, ci, i, j]


@njit(parallel=True, cache=True)
def _relu_fwd(x, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        y[i] = v if v > 0 else np.float32(0.0)


@njit(parallel=True, cache=True)
def _relu_bwd(dy, y, dx):  # pragma: no cover - compiled
    for i in prange(dy.size):
        dx[i] = dy[i] if y[i] > 0 else np.float32(0.0)


@njit(inline="always")
def _pow_neg(s, beta):  # pragma: no cover - compiled
    # s ** -beta; the paper's beta = 0.75 as 1/sqrt(s) * sqrt(1/sqrt(s)), which vectorises
    # (a general power is a scalar libm call per element). Its callers use
    # error_model="numpy": Python's division-by-zero check would keep the loop scalar.
    if beta == 0.75:
        r = np.float32(1.0) / np.sqrt(s)
        return r * np.sqrt(r)
    return s ** np.float32(-beta)


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")  # see _pow_neg
def _lrn_fwd(x, size, alpha, beta, k, y, s):  # pragma: no cover - compiled
    n, c, hw = x.shape
    half = size // 2
    a32, k32 = np.float32(alpha), np.float32(k)
    for nc in prange(n * c):
        b = nc // c
        ci = nc % c
        srow, yrow, xrow = s[b, ci], y[b, ci], x[b, ci]
        srow[:] = 0.0
        for j in range(max(0, ci - half), min(c, ci + half + 1)):
            xj = x[b, j]
            for p in range(hw):
                srow[p] += xj[p] * xj[p]
        for p in range(hw):
            sc = k32 + a32 * srow[p]
            srow[p] = sc
            yrow[p] = xrow[p] * _pow_neg(sc, beta)


@njit(parallel=True, cache=True, fastmath=True, error_model="numpy")  # see _pow_neg
def _lrn_bwd(dy, x, y, s, size, alpha, beta, dx, t, accs):  # pragma: no cover - compiled
    n, c, hw = x.shape
    half = size // 2
    f = np.float32(2.0 * alpha * beta)
    for b in prange(n):
        tb = t[b]  # (C, HW): each channel's term of the window sums
        for ci in range(c):
            for p in range(hw):
                tb[ci, p] = dy[b, ci, p] * y[b, ci, p] / s[b, ci, p]
        acc = accs[b]
        for ci in range(c):
            acc[:] = 0.0
            for j in range(max(0, ci - half), min(c, ci + half + 1)):
                tj = tb[j]
                for p in range(hw):
                    acc[p] += tj[p]
            srow, xrow, dyrow, dxrow = s[b, ci], x[b, ci], dy[b, ci], dx[b, ci]
            for p in range(hw):
                dxrow[p] = dyrow[p] * _pow_neg(srow[p], beta) - f * xrow[p] * acc[p]


@njit(cache=True, fastmath=False)
def _softmax_xent(z, labels, flush):  # pragma: no cover - compiled
    n, k = z.shape
    d = np.empty((n, k), np.float32)
    loss = 0.0
    for r in range(n):
        m = z[r, 0]
        for j in range(1, k):
            m = max(m, z[r, j])
        s = 0.0
        for j in range(k):
            e = np.exp(np.float64(z[r, j] - m))
            d[r, j] = e
            s += e
        loss += np.log(s) - (z[r, labels[r]] - m)
        for j in range(k):
            g = d[r, j] / s
            if j == labels[r]:
                g -= 1.0
            g /= n
            d[r, j] = g if abs(g) >= flush else 0.0
    return loss / n, d
