"""CUDA kernels: every op as ``numba.cuda.jit`` kernels (the ``numba-cuda`` package).

Same names and signatures as :mod:`hpcnet.kernels.cpu`. Each op accepts host
(NumPy) or device arrays: with host inputs it copies them to the GPU, runs its
kernels and returns host arrays; with device arrays (anything numba.cuda made, or
that carries ``__cuda_array_interface__``) it returns device arrays and copies
nothing, so a caller that keeps activations on the device pays no transfers.
Caches passed from a forward to its backward (the im2col matrix) stay on the device.

Matrix products (convolution as im2col + GEMM, dense layers) run on one
shared-memory tiled GEMM kernel (:func:`gemm`, the classic tiling of Kirk & Hwu,
"Programming Massively Parallel Processors", ch. 5): each block computes a
``tile x tile`` piece of C, staging ``tile x tile`` pieces of A and B in shared
memory. Other kernels use grid-stride loops; reductions are one block per row with
a shared-memory tree.

This module is the backend (:func:`hpcnet.kernels.get_backend` imports it) and holds
the elementwise, dense, softmax and concat ops; private siblings hold the rest:
``_cuda_gemm`` (launch sizes, host/device plumbing, GEMM, row sums), ``_cuda_conv``
(im2col convolution), ``_cuda_pool`` (max pooling, LRN) and ``_cuda_elementwise``
(activations, average pooling).

Launch sizes are settings (:data:`LAUNCH`), not constants, so tests can shrink
them and exercise several blocks and grid-stride loops on tiny inputs::

    from hpcnet.kernels import cuda as kc
    kc.LAUNCH.threads, kc.LAUNCH.tile, kc.LAUNCH.max_blocks = 8, 4, 3

Without a GPU these kernels run under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is first imported).
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64

from hpcnet.kernels._cuda_conv import conv2d_backward, conv2d_forward, conv2d_release
from hpcnet.kernels._cuda_elementwise import (
    activation_backward,
    activation_forward,
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
)
from hpcnet.kernels._cuda_gemm import (
    LAUNCH,
    Launch,
    dev,
    gemm,
    grid1d,
    is_host,
    ret,
    rowsum,
    write,
)
from hpcnet.kernels._cuda_norm import (
    batchnorm2d_backward,
    batchnorm2d_forward,
    batchnorm2d_infer,
)
from hpcnet.kernels._cuda_pool import (
    lrn_backward,
    lrn_forward,
    maxpool2d_backward,
    maxpool2d_forward,
)

__all__ = [
    "LAUNCH",
    "Launch",
    "activation_backward",
    "activation_forward",
    "avgpool2d_backward",
    "avgpool2d_forward",
    "batchnorm2d_backward",
    "batchnorm2d_forward",
    "batchnorm2d_infer",
    "global_avgpool2d_backward",
    "global_avgpool2d_forward",
    "add",
    "concat_backward",
    "concat_forward",
    "conv2d_backward",
    "conv2d_forward",
    "conv2d_release",
    "dense_backward",
    "dense_forward",
    "dropout_backward",
    "dropout_forward",
    "gemm",
    "lrn_backward",
    "lrn_forward",
    "maxpool2d_backward",
    "maxpool2d_forward",
    "relu_backward",
    "relu_forward",
    "softmax_xent",
]


# ----------------------------------------------------------------------------- kernels


@cuda.jit
def _relu_fwd_k(x, y):  # pragma: no cover - device code
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        v = x[i]
        y[i] = v if v > 0 else 0.0


@cuda.jit
def _relu_bwd_k(dy, y, dx):  # pragma: no cover - device code
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        dx[i] = dy[i] if y[i] > 0 else 0.0


@cuda.jit
def _mul_k(a, b, out):  # pragma: no cover - device code
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        out[i] = a[i] * b[i]


@cuda.jit
def _add_k(a, b, out):  # pragma: no cover - device code
    for i in range(cuda.grid(1), out.size, cuda.gridsize(1)):
        out[i] = a[i] + b[i]


@cuda.jit
def _add_bias_k(y, bias):  # pragma: no cover - device code
    n, o = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        y[i // o, i % o] += bias[i % o]


@cuda.jit
def _softmax_xent_k(z, labels, loss, d):  # pragma: no cover - device code
    n, kk = z.shape
    for r in range(cuda.grid(1), n, cuda.gridsize(1)):
        m = float64(z[r, 0])
        for j in range(1, kk):
            m = max(m, float64(z[r, j]))
        s = float64(0.0)
        for j in range(kk):
            s += math.exp(z[r, j] - m)
        loss[r] = math.log(s) - (z[r, labels[r]] - m)
        for j in range(kk):
            g = math.exp(z[r, j] - m) / s
            if j == labels[r]:
                g -= 1.0
            d[r, j] = g / n


@cuda.jit
def _copy_channels_k(src, dst, offset, to_dst):  # pragma: no cover - device code
    # src (N, Cs, P) <-> dst (N, Cd, P) at channel offset: to_dst 1 copies src -> dst.
    n, cs, p = src.shape
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        b = i // (cs * p)
        r = i - b * (cs * p)
        ci = r // p
        q = r - ci * p
        if to_dst:
            dst[b, offset + ci, q] = src[b, ci, q]
        else:
            src[b, ci, q] = dst[b, offset + ci, q]


# ----------------------------------------------------------------------------- ops


def relu_forward(x):
    """max(x, 0) elementwise."""
    host = is_host(x)
    d_x = dev(x)
    y = cuda.device_array(d_x.shape, np.float32)
    _relu_fwd_k[grid1d(d_x.size)](d_x.reshape(d_x.size), y.reshape(y.size))
    return ret(y, host)


def _elementwise(kernel, a, b):
    """``kernel(a, b, out)`` over the flattened arrays, out a new float32 array of a's
    shape (host in, host out; device in, device out)."""
    host = is_host(a)
    d_a, d_b = dev(a), dev(b)
    out = cuda.device_array(d_a.shape, np.float32)
    kernel[grid1d(out.size)](d_a.reshape(out.size), d_b.reshape(out.size), out.reshape(out.size))
    return ret(out, host)


def relu_backward(dy, y):
    """dy where the forward output y was positive, else 0."""
    return _elementwise(_relu_bwd_k, dy, y)


def _mul(a, b):
    return _elementwise(_mul_k, a, b)


def add(a, b):
    """a + b elementwise, float32 (host in, host out; device in, device out)."""
    return _elementwise(_add_k, a, b)


def dropout_forward(x, mask):
    """Inverted dropout: ``x * mask`` (mask 0 or 1/(1-rate), drawn on the host)."""
    return _mul(x, mask)


def dropout_backward(dy, mask):
    """``dy * mask``."""
    return _mul(dy, mask)


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I), w (O, I), b (O,) -> (N, O)."""
    host = is_host(x)
    d_x, d_w = dev(x), dev(w)
    y = cuda.device_array((d_x.shape[0], d_w.shape[0]), np.float32)
    gemm(d_x, d_w, y, tb=True)
    _add_bias_k[grid1d(y.size)](y, dev(b))
    return ret(y, host)


def dense_backward(dy, x, w, dw, db, need_dx=True):
    """Writes dw (O, I) and db (O,); returns dx (N, I) (None without ``need_dx``)."""
    host = is_host(dy)
    d_dy, d_x, d_w = dev(dy), dev(x), dev(w)
    d_dw = cuda.device_array(d_w.shape, np.float32)
    gemm(d_dy, d_x, d_dw, ta=True)
    d_db = cuda.device_array(d_w.shape[0], np.float32)
    rowsum(d_dy, d_db, trans=True)
    write(d_dw, dw)
    write(d_db, db)
    if not need_dx:
        return None
    dx = cuda.device_array(d_x.shape, np.float32)
    gemm(d_dy, d_w, dx)
    return ret(dx, host)


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy (nats, a float) and dlogits (N, K)."""
    host = is_host(logits)
    d_z = dev(logits)
    n = d_z.shape[0]
    loss = cuda.device_array(n, np.float64)
    d = cuda.device_array(d_z.shape, np.float32)
    _softmax_xent_k[grid1d(n)](d_z, dev(labels, np.int64), loss, d)
    return float(loss.copy_to_host().mean()), ret(d, host)


def concat_forward(xs):
    """Concatenates (N, C_i, ...) arrays along axis 1."""
    host = is_host(xs[0])
    n, rest = xs[0].shape[0], xs[0].shape[2:]
    p = int(np.prod(rest)) if rest else 1
    total = sum(x.shape[1] for x in xs)
    y = cuda.device_array((n, total, p), np.float32)
    off = 0
    for x in xs:
        d_x = dev(x).reshape(n, x.shape[1], p)
        _copy_channels_k[grid1d(d_x.size)](d_x, y, off, 1)
        off += x.shape[1]
    return ret(y.reshape(n, total, *rest), host)


def concat_backward(dy, sizes):
    """Splits dy (N, sum C_i, ...) along axis 1 into pieces of ``sizes`` channels."""
    host = is_host(dy)
    n, rest = dy.shape[0], dy.shape[2:]
    p = int(np.prod(rest)) if rest else 1
    d_dy = dev(dy).reshape(n, dy.shape[1], p)
    out, off = [], 0
    for s in sizes:
        piece = cuda.device_array((n, s, p), np.float32)
        _copy_channels_k[grid1d(piece.size)](piece, d_dy, off, 0)
        off += s
        out.append(ret(piece.reshape(n, s, *rest), host))
    return out
