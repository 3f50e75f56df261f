"""CPU kernels: NumPy BLAS for matrix products, Numba for the rest.

Convolution is im2col + one GEMM per direction. The im2col matrix is laid out
(C*K*K, N*OH*OW) so the forward product ``w (O, C*K*K) @ cols`` and both
backward products are single large GEMMs that OpenBLAS runs near its peak.
Elementwise work, im2col/col2im and pooling are ``numba.njit(parallel=True,
cache=True)``; their thread count follows ``numba.set_num_threads`` (set from
``--threads``). Same names and signatures as :mod:`hpcnet.kernels.reference`.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange

# Numba's OpenMP layer spin-waits after each parallel region and starves
# OpenBLAS's threads (measured: 2conv step 270 -> 470 samples/s with workqueue
# on 2 cores). A user's NUMBA_THREADING_LAYER still wins.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"

from hpcnet.kernels.reference import conv_out_size


@njit(parallel=True, cache=True)
def _im2col(x, k, stride, pad, oh, ow, cols):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    ohw = oh * ow
    for row in prange(c * k * k):
        ci = row // (k * k)
        ki = (row // k) % k
        kj = row % k
        for b in range(n):
            base = b * ohw
            for i in range(oh):
                ih = i * stride + ki - pad
                if ih < 0 or ih >= h:
                    for j in range(ow):
                        cols[row, base + i * ow + j] = 0.0
                    continue
                for j in range(ow):
                    iw = j * stride + kj - pad
                    if iw < 0 or iw >= w:
                        cols[row, base + i * ow + j] = 0.0
                    else:
                        cols[row, base + i * ow + j] = x[b, ci, ih, iw]


@njit(parallel=True, cache=True)
def _col2im(cols, n, c, h, w, k, stride, pad, oh, ow):  # pragma: no cover - compiled
    dx = np.zeros((n, c, h, w), np.float32)
    ohw = oh * ow
    for ci in prange(c):
        for ki in range(k):
            for kj in range(k):
                row = (ci * k + ki) * k + kj
                for b in range(n):
                    base = b * ohw
                    for i in range(oh):
                        ih = i * stride + ki - pad
                        if ih < 0 or ih >= h:
                            continue
                        for j in range(ow):
                            iw = j * stride + kj - pad
                            if iw >= 0 and iw < w:
                                dx[b, ci, ih, iw] += cols[row, base + i * ow + j]
    return dx


@njit(parallel=True, cache=True)
def _nchw_from_onhw(y2, b, n, o, ohw):  # pragma: no cover - compiled
    # (O, N*OH*OW) GEMM output -> (N, O, OH*OW) with the bias added on the way.
    y = np.empty((n, o, ohw), np.float32)
    for nb in prange(n * o):
        bi = nb // o
        oi = nb % o
        src = bi * ohw
        bias = b[oi]
        for p in range(ohw):
            y[bi, oi, p] = y2[oi, src + p] + bias
    return y


@njit(parallel=True, cache=True)
def _onhw_from_nchw(dy, n, o, ohw):  # pragma: no cover - compiled
    d2 = np.empty((o, n * ohw), np.float32)
    for nb in prange(n * o):
        bi = nb // o
        oi = nb % o
        dst = bi * ohw
        for p in range(ohw):
            d2[oi, dst + p] = dy[bi, oi, p]
    return d2


def conv2d_forward(x, w, b, stride, pad):
    """Convolution (cross-correlation) as im2col + GEMM.

    Args:
        x: (N, C, H, W) float32. w: (O, C, K, K) float32. b: (O,) float32.
        stride, pad: ints, the same along both spatial axes.
    Returns:
        (y, cols): y (N, O, OH, OW) float32 with OH = (H + 2 pad - K) // stride + 1;
        cols (C*K*K, N*OH*OW) float32, kept for the backward pass.
    """
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    cols = np.empty((c * k * k, n * oh * ow), np.float32)
    _im2col(x, k, stride, pad, oh, ow, cols)
    y2 = w.reshape(o, -1) @ cols  # (O, N*OH*OW)
    y = _nchw_from_onhw(y2, b, n, o, oh * ow)
    return y.reshape(n, o, oh, ow), cols


def conv2d_backward(dy, x_shape, cols, w, stride, pad, dw, db):
    """Gradients of :func:`conv2d_forward`.

    Args:
        dy: (N, O, OH, OW) float32. x_shape: (N, C, H, W). cols: from the forward.
        w: (O, C, K, K) float32. dw: (O, C, K, K) float32 and db: (O,) float32,
        written in place (views into the flat gradient vector).
    Returns:
        dx: (N, C, H, W) float32.
    """
    n, c, h, wd = x_shape
    o, _, k, _ = w.shape
    oh, ow = dy.shape[2], dy.shape[3]
    d2 = _onhw_from_nchw(np.ascontiguousarray(dy).reshape(n, o, oh * ow), n, o, oh * ow)
    np.matmul(d2, cols.T, out=dw.reshape(o, -1))
    np.sum(d2, axis=1, out=db)
    dcols = w.reshape(o, -1).T @ d2  # (C*K*K, N*OH*OW)
    return _col2im(dcols, n, c, h, wd, k, stride, pad, oh, ow)


@njit(parallel=True, cache=True)
def _maxpool_fwd(x, k, stride, oh, ow):  # pragma: no cover - compiled
    n, c, h, w = x.shape
    y = np.empty((n, c, oh, ow), np.float32)
    arg = np.empty((n, c, oh, ow), np.int64)
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
    return y, arg


@njit(parallel=True, cache=True)
def _maxpool_bwd(dy, arg, h, w):  # pragma: no cover - compiled
    n, c, oh, ow = dy.shape
    dx = np.zeros((n, c, h * w), np.float32)
    for nc in prange(n * c):
        b = nc // c
        ci = nc % c
        for i in range(oh):
            for j in range(ow):
                dx[b, ci, arg[b, ci, i, j]] += dy[b, ci, i, j]
    return dx.reshape(n, c, h, w)


def maxpool2d_forward(x, k, stride):
    """Max pooling over k x k windows (overlapping when stride < k, AlexNet sec. 3.4).

    Returns:
        (y, argmax): y (N, C, OH, OW) float32; argmax (N, C, OH, OW) int64 flat
        ``h * W + w`` index of each window's first maximum.
    """
    n, c, h, wd = x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)
    return _maxpool_fwd(x, k, stride, oh, ow)


def maxpool2d_backward(dy, argmax, x_shape):
    """Routes each gradient to its window's argmax; returns dx (N, C, H, W) float32."""
    return _maxpool_bwd(np.ascontiguousarray(dy), argmax, x_shape[2], x_shape[3])


@njit(parallel=True, cache=True)
def _relu_fwd(x):  # pragma: no cover - compiled
    y = np.empty_like(x)
    for i in prange(x.size):
        v = x.flat[i]
        y.flat[i] = v if v > 0 else np.float32(0.0)
    return y


@njit(parallel=True, cache=True)
def _relu_bwd(dy, y):  # pragma: no cover - compiled
    dx = np.empty_like(dy)
    for i in prange(dy.size):
        dx.flat[i] = dy.flat[i] if y.flat[i] > 0 else np.float32(0.0)
    return dx


def relu_forward(x):
    """max(x, 0) elementwise; x any shape, float32."""
    return _relu_fwd(np.ascontiguousarray(x).reshape(-1)).reshape(x.shape)


def relu_backward(dy, y):
    """dy where the forward output y was positive, else 0."""
    flat = _relu_bwd(np.ascontiguousarray(dy).reshape(-1), np.ascontiguousarray(y).reshape(-1))
    return flat.reshape(dy.shape)


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I) float32, w (O, I), b (O,) -> (N, O) float32."""
    y = x @ w.T
    y += b
    return y


def dense_backward(dy, x, w, dw, db):
    """Writes dw (O, I) and db (O,) in place; returns dx (N, I) float32."""
    np.matmul(dy.T, x, out=dw)
    np.sum(dy, axis=0, out=db)
    return dy @ w


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy and its gradient; see the reference for shapes."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    s = e.sum(axis=1, keepdims=True)
    n = logits.shape[0]
    idx = np.arange(n)
    loss = float(np.mean(np.log(s[:, 0]) - z[idx, labels]))
    d = e / s
    d[idx, labels] -= 1.0
    d /= n
    return loss, d.astype(np.float32, copy=False)
