"""The CPU backend's elementwise activations (ReLU, leaky ReLU, tanh, sigmoid) and
average pooling: compiled loops (``numba.njit(parallel=True, cache=True)``) and the ops
:mod:`hpcnet.kernels.cpu` exports. The formulas are in :mod:`hpcnet.kernels.reference`.

Small arrays go to NumPy: a Numba parallel launch costs ~30 us (measured), more than
the work below :data:`PARALLEL_MIN_SIZE` elements (lenet's dense layers: 7,680). The
compiled loops write into arrays allocated here with NumPy (why: the docstring of
:mod:`hpcnet.kernels._cpu_pointwise`).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from hpcnet.kernels._cpu_pointwise import _relu_bwd, _relu_fwd
from hpcnet.kernels.reference import ACTIVATIONS, conv_out_size

PARALLEL_MIN_SIZE = 1 << 16  # elements below which elementwise ops skip Numba's threads
_CODE = {kind: i for i, kind in enumerate(ACTIVATIONS)}  # leaky_relu 0, tanh 1, sigmoid 2


def relu_forward(x):
    """max(x, 0) elementwise; x any shape, float32."""
    if x.size < PARALLEL_MIN_SIZE:
        return np.maximum(x, np.float32(0.0))
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    _relu_fwd(x.reshape(-1), y.reshape(-1))
    return y


def relu_backward(dy, y):
    """dy where the forward output y was positive, else 0."""
    if dy.size < PARALLEL_MIN_SIZE:  # (np.where is 10x slower than this product)
        return np.multiply(dy, y > 0, dtype=np.float32)
    dy = np.ascontiguousarray(dy)
    dx = np.empty_like(dy)
    _relu_bwd(dy.reshape(-1), np.ascontiguousarray(y).reshape(-1), dx.reshape(-1))
    return dx


@njit(parallel=True, cache=True, fastmath=False)
def _act_fwd(x, code, alpha, y):  # pragma: no cover - compiled
    for i in prange(x.size):
        v = x[i]
        if code == 0:
            y[i] = v if v > 0 else np.float32(alpha) * v
        elif code == 1:
            y[i] = math.tanh(v)
        else:
            e = math.exp(-abs(v))
            y[i] = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)


@njit(parallel=True, cache=True)
def _act_bwd(dy, y, code, alpha, dx):  # pragma: no cover - compiled
    for i in prange(dy.size):
        v = y[i]
        if code == 0:
            dx[i] = dy[i] if v > 0 else np.float32(alpha) * dy[i]
        elif code == 1:
            dx[i] = dy[i] * (np.float32(1.0) - v * v)
        else:
            dx[i] = dy[i] * v * (np.float32(1.0) - v)


def activation_forward(x, kind, alpha=0.0):
    """``leaky_relu`` (slope ``alpha`` below 0), ``tanh`` or ``sigmoid`` of x
    elementwise; x any shape, float32."""
    x = np.ascontiguousarray(x, np.float32)
    y = np.empty_like(x)
    _act_fwd(x.reshape(-1), _CODE[kind], alpha, y.reshape(-1))
    return y


def activation_backward(dy, y, kind, alpha=0.0):
    """The gradient of :func:`activation_forward` from its output ``y``."""
    dy = np.ascontiguousarray(dy, np.float32)
    dx = np.empty_like(dy)
    y = np.ascontiguousarray(y, np.float32)
    _act_bwd(dy.reshape(-1), y.reshape(-1), _CODE[kind], alpha, dx.reshape(-1))
    return dx


@njit(parallel=True, cache=True)
def _avgpool_fwd(x, k, stride, y):  # pragma: no cover - compiled
    n, c = x.shape[0], x.shape[1]
    oh, ow = y.shape[2], y.shape[3]
    inv = np.float32(1.0 / (k * k))
    for nc in prange(n * c):
        b, ci = nc // c, nc % c
        for i in range(oh):
            for j in range(ow):
                s = np.float32(0.0)
                for di in range(k):
                    for dj in range(k):
                        s += x[b, ci, i * stride + di, j * stride + dj]
                y[b, ci, i, j] = s * inv


@njit(parallel=True, cache=True)
def _avgpool_bwd(dy, k, stride, dx):  # pragma: no cover - compiled
    n, c, oh, ow = dy.shape
    inv = np.float32(1.0 / (k * k))
    for nc in prange(n * c):
        b, ci = nc // c, nc % c
        dx[b, ci] = 0.0
        for i in range(oh):
            for j in range(ow):
                g = dy[b, ci, i, j] * inv
                for di in range(k):
                    for dj in range(k):
                        dx[b, ci, i * stride + di, j * stride + dj] += g


def avgpool2d_forward(x, k, stride):
    """Average pooling over k x k windows, no padding: (N, C, H, W) -> (N, C, OH, OW)."""
    n, c, h, wd = x.shape
    y = np.empty(
        (n, c, conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)), np.float32
    )
    _avgpool_fwd(np.ascontiguousarray(x), k, stride, y)
    return y


def avgpool2d_backward(dy, x_shape, k, stride):
    """Each window's dy / k**2 to each of its pixels; dx (N, C, H, W) float32."""
    dx = np.empty(x_shape, np.float32)
    _avgpool_bwd(np.ascontiguousarray(dy), k, stride, dx)
    return dx


def global_avgpool2d_forward(x):
    """The mean of every channel: (N, C, H, W) -> (N, C) float32."""
    return x.mean(axis=(2, 3), dtype=np.float32)


def global_avgpool2d_backward(dy, x_shape):
    """dy (N, C) / (H W) to every pixel of its channel: (N, C, H, W) float32."""
    g = dy / np.float32(x_shape[2] * x_shape[3])
    return np.ascontiguousarray(np.broadcast_to(g[:, :, None, None], x_shape), np.float32)
