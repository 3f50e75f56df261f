"""The CUDA backend's activations (leaky ReLU, tanh, sigmoid) and average pooling: one
thread per element, grid-stride loops (:mod:`hpcnet.kernels.cuda`). The formulas are
in :mod:`hpcnet.kernels.reference`. Average pooling's backward gathers (each input
pixel sums the windows that cover it), so it needs no atomics."""

from __future__ import annotations

import math

import numpy as np
from numba import cuda

from hpcnet.kernels._cuda_gemm import dev, grid1d, is_host, ret, unravel_nchw
from hpcnet.kernels.reference import ACTIVATIONS, conv_out_size

_CODE = {kind: i for i, kind in enumerate(ACTIVATIONS)}  # leaky_relu 0, tanh 1, sigmoid 2


@cuda.jit
def _act_fwd_k(x, code, alpha, y):  # pragma: no cover - device code
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        if code == 0:
            y[i] = v if v > 0 else alpha * v
        elif code == 1:
            y[i] = math.tanh(v)
        else:
            e = math.exp(-abs(v))
            y[i] = 1.0 / (1.0 + e) if v >= 0 else e / (1.0 + e)


@cuda.jit
def _act_bwd_k(dy, y, code, alpha, dx):  # pragma: no cover - device code
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        v = y[i]
        if code == 0:
            dx[i] = dy[i] if v > 0 else alpha * dy[i]
        elif code == 1:
            dx[i] = dy[i] * (1.0 - v * v)
        else:
            dx[i] = dy[i] * v * (1.0 - v)


def activation_forward(x, kind, alpha=0.0):
    """``leaky_relu``, ``tanh`` or ``sigmoid`` of x elementwise (host or device)."""
    host = is_host(x)
    d_x = dev(x)
    y = cuda.device_array(d_x.shape, np.float32)
    _act_fwd_k[grid1d(y.size)](d_x.reshape(y.size), _CODE[kind], alpha, y.reshape(y.size))
    return ret(y, host)


def activation_backward(dy, y, kind, alpha=0.0):
    """The gradient of :func:`activation_forward` from its output ``y``."""
    host = is_host(dy)
    d_dy, d_y = dev(dy), dev(y)
    dx = cuda.device_array(d_dy.shape, np.float32)
    n = dx.size
    _act_bwd_k[grid1d(n)](d_dy.reshape(n), d_y.reshape(n), _CODE[kind], alpha, dx.reshape(n))
    return ret(dx, host)


@cuda.jit
def _avgpool_fwd_k(x, k, stride, y):  # pragma: no cover - device code
    n, c, oh, ow = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b, ci, oi, oj = unravel_nchw(i, c, oh, ow)
        s = 0.0
        for di in range(k):
            for dj in range(k):
                s += x[b, ci, oi * stride + di, oj * stride + dj]
        y[b, ci, oi, oj] = s / (k * k)


@cuda.jit
def _avgpool_bwd_k(dy, k, stride, dx):  # pragma: no cover - device code
    # every input pixel gathers dy / k**2 from the windows covering it
    n, c, h, w = dx.shape
    oh, ow = dy.shape[2], dy.shape[3]
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        b, ci, ih, iw = unravel_nchw(i, c, h, w)
        s = 0.0
        for oi in range(max(0, (ih - k) // stride + 1), min(oh, ih // stride + 1)):
            for oj in range(max(0, (iw - k) // stride + 1), min(ow, iw // stride + 1)):
                if oi * stride <= ih < oi * stride + k and oj * stride <= iw < oj * stride + k:
                    s += dy[b, ci, oi, oj]
        dx[b, ci, ih, iw] = s / (k * k)


def avgpool2d_forward(x, k, stride):
    """Average pooling over k x k windows, no padding: (N, C, H, W) -> (N, C, OH, OW)."""
    host = is_host(x)
    d_x = dev(x)
    n, c, h, w = d_x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(w, k, stride, 0)
    y = cuda.device_array((n, c, oh, ow), np.float32)
    _avgpool_fwd_k[grid1d(y.size)](d_x, k, stride, y)
    return ret(y, host)


def avgpool2d_backward(dy, x_shape, k, stride):
    """Each window's dy / k**2 to each of its pixels; dx (N, C, H, W) float32."""
    host = is_host(dy)
    dx = cuda.device_array(tuple(x_shape), np.float32)
    _avgpool_bwd_k[grid1d(dx.size)](dev(dy), k, stride, dx)
    return ret(dx, host)


@cuda.jit
def _gap_fwd_k(x, y):  # pragma: no cover - device code
    n, c, h, w = x.shape
    for i in range(cuda.grid(1), n * c, cuda.gridsize(1)):
        b, ci = i // c, i % c
        s = 0.0
        for p in range(h):
            for q in range(w):
                s += x[b, ci, p, q]
        y[b, ci] = s / (h * w)


@cuda.jit
def _gap_bwd_k(dy, dx):  # pragma: no cover - device code
    n, c, h, w = dx.shape
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        b, ci, ih, iw = unravel_nchw(i, c, h, w)
        dx[b, ci, ih, iw] = dy[b, ci] / (h * w)


def global_avgpool2d_forward(x):
    """The mean of every channel: (N, C, H, W) -> (N, C) float32."""
    host = is_host(x)
    d_x = dev(x)
    y = cuda.device_array(d_x.shape[:2], np.float32)
    _gap_fwd_k[grid1d(y.size)](d_x, y)
    return ret(y, host)


def global_avgpool2d_backward(dy, x_shape):
    """dy (N, C) / (H W) to every pixel of its channel: (N, C, H, W) float32."""
    host = is_host(dy)
    dx = cuda.device_array(tuple(x_shape), np.float32)
    _gap_bwd_k[grid1d(dx.size)](dev(dy), dx)
    return ret(dx, host)
