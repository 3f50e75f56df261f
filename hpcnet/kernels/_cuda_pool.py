"""Windowed ops of the CUDA backend: max pooling and local response normalization.

One thread per output element (grid-stride loops). Max pooling keeps each window's
argmax for the backward, which scatters with atomic adds since overlapping windows
(stride < k) can send several gradients to one input; LRN sums over a window of
channels (Krizhevsky et al. 2012, sec. 3.3).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float32

from hpcnet.kernels._cuda_gemm import dev, grid1d, is_host, ret, unravel_nchw
from hpcnet.kernels.reference import conv_out_size


@cuda.jit
def _maxpool_fwd_k(x, k, stride, y, arg):  # pragma: no cover - device code
    n, c, oh, ow = y.shape
    w = x.shape[3]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ci, oi, oj = unravel_nchw(i, c, oh, ow)
        best = -math.inf
        bi = 0
        for di in range(k):
            for dj in range(k):
                ih = oi * stride + di
                iw = oj * stride + dj
                v = x[b, ci, ih, iw]
                if v > best:
                    best = v
                    bi = ih * w + iw
        y[b, ci, oi, oj] = best
        arg[b, ci, oi, oj] = bi


@cuda.jit
def _maxpool_bwd_k(dy, arg, dx):  # pragma: no cover - device code
    # Scatter each output gradient to its argmax; overlapping windows (stride < k) can
    # send several to one input, hence the atomic add. dx (N, C, H*W) starts at zero.
    n, c, oh, ow = dy.shape
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        b, ci, oi, oj = unravel_nchw(i, c, oh, ow)
        cuda.atomic.add(dx, (b, ci, arg[b, ci, oi, oj]), dy[b, ci, oi, oj])


@cuda.jit
def _fill_k(a, value):  # pragma: no cover - device code
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


@cuda.jit
def _lrn_fwd_k(x, size, alpha, beta, k, y, s):  # pragma: no cover - device code
    n, c, p = x.shape
    half = size // 2
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b = i // (c * p)
        r = i - b * (c * p)
        ci = r // p
        q = r - ci * p
        acc = float32(0.0)
        for j in range(max(0, ci - half), min(c, ci + half + 1)):
            v = x[b, j, q]
            acc += v * v
        sc = k + alpha * acc
        s[b, ci, q] = sc
        y[b, ci, q] = x[b, ci, q] * math.pow(sc, -beta)


@cuda.jit
def _lrn_bwd_k(dy, x, y, s, size, alpha, beta, dx):  # pragma: no cover - device code
    n, c, p = x.shape
    half = size // 2
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        b = i // (c * p)
        r = i - b * (c * p)
        ci = r // p
        q = r - ci * p
        acc = float32(0.0)
        for j in range(max(0, ci - half), min(c, ci + half + 1)):
            acc += dy[b, j, q] * y[b, j, q] / s[b, j, q]
        dx[b, ci, q] = dy[b, ci, q] * math.pow(s[b, ci, q], -beta) - (
            2.0 * alpha * beta * x[b, ci, q] * acc
        )


def maxpool2d_forward(x, k, stride):
    """Max pooling (overlapping when stride < k); returns (y, argmax) as the CPU op does."""
    host = is_host(x)
    n, c, h, wd = x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)
    y = cuda.device_array((n, c, oh, ow), np.float32)
    arg = cuda.device_array((n, c, oh, ow), np.int64)
    _maxpool_fwd_k[grid1d(y.size)](dev(x), k, stride, y, arg)
    return ret(y, host), ret(arg, host)


def maxpool2d_backward(dy, argmax, x_shape):
    """Routes each gradient to its window's argmax, summing where windows overlap."""
    host = is_host(dy)
    n, c, h, w = x_shape
    dx = cuda.device_array((n, c, h * w), np.float32)
    _fill_k[grid1d(dx.size)](dx.reshape(dx.size), 0.0)
    d_dy = dev(dy)
    _maxpool_bwd_k[grid1d(d_dy.size)](d_dy, dev(argmax, np.int64), dx)
    return ret(dx.reshape(n, c, h, w), host)


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3);
    formula in :func:`hpcnet.kernels.reference.lrn_forward`. Returns (y, scale)."""
    host = is_host(x)
    n, c, h, w = x.shape
    d_x = dev(x).reshape(n, c, h * w)
    y = cuda.device_array((n, c, h * w), np.float32)
    s = cuda.device_array((n, c, h * w), np.float32)
    _lrn_fwd_k[grid1d(y.size)](d_x, size, float(alpha), float(beta), float(k), y, s)
    return ret(y.reshape(n, c, h, w), host), ret(s.reshape(n, c, h, w), host)


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`; returns dx (N, C, H, W)."""
    host = is_host(dy)
    n, c, h, w = x.shape
    shp = (n, c, h * w)
    dx = cuda.device_array(shp, np.float32)
    _lrn_bwd_k[grid1d(dx.size)](
        dev(dy).reshape(shp),
        dev(x).reshape(shp),
        dev(y).reshape(shp),
        dev(scale).reshape(shp),
        size,
        float(alpha),
        float(beta),
        dx,
    )
    return ret(dx.reshape(n, c, h, w), host)
