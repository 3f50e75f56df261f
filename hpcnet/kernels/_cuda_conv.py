"""Convolution of the CUDA backend: im2col + one tiled GEMM per group.

The im2col matrix is ``cols (C*K*K, N*OH*OW)``: one row per weight, ordered
(channel, ki, kj), and one column per output pixel. The forward product
``w_g @ cols_g`` gives the output as (O, N*OH*OW), which one kernel moves to NCHW
adding the bias; the weight gradient ``dy_g @ cols_g^T`` and ``dcols_g = w_g^T @ dy_g``
are GEMMs too, and col2im gathers ``dcols`` back into dx without atomics. ``cols``
stays on the device from the forward to the backward.
"""

from __future__ import annotations

import numpy as np
from numba import cuda, float32

from hpcnet.kernels._cuda_gemm import (
    dev,
    gemm,
    grid1d,
    is_host,
    ret,
    rowsum,
    unravel_nchw,
    write,
)
from hpcnet.kernels.reference import conv_out_size


@cuda.jit
def _im2col_k(x, k, stride, pad, oh, ow, cols):  # pragma: no cover - device code
    n, c, h, w = x.shape
    p = oh * ow
    npix = n * p
    for i in range(cuda.grid(1), cols.shape[0] * npix, cuda.gridsize(1)):
        row = i // npix
        col = i - row * npix
        b = col // p
        q = col - b * p
        oi = q // ow
        oj = q - oi * ow
        ci = row // (k * k)
        ki = (row // k) % k
        kj = row % k
        ih = oi * stride + ki - pad
        iw = oj * stride + kj - pad
        if ih >= 0 and ih < h and iw >= 0 and iw < w:
            cols[row, col] = x[b, ci, ih, iw]
        else:
            cols[row, col] = 0.0


@cuda.jit
def _col2im_k(dcols, k, stride, pad, oh, ow, dx):  # pragma: no cover - device code
    # Gather: each input element sums the im2col entries it was copied to (no atomics).
    n, c, h, w = dx.shape
    p = oh * ow
    for i in range(cuda.grid(1), dx.size, cuda.gridsize(1)):
        b, ci, ih, iw = unravel_nchw(i, c, h, w)
        acc = float32(0.0)
        for ki in range(k):
            t = ih + pad - ki
            if t < 0 or t % stride != 0 or t // stride >= oh:
                continue
            oi = t // stride
            for kj in range(k):
                u = iw + pad - kj
                if u < 0 or u % stride != 0 or u // stride >= ow:
                    continue
                acc += dcols[(ci * k + ki) * k + kj, b * p + oi * ow + u // stride]
        dx[b, ci, ih, iw] = acc


@cuda.jit
def _nchw_from_onhw_k(y2, bias, y):  # pragma: no cover - device code
    # y2 (O, N*P) -> y (N, O, P) + bias[o]
    n, o, p = y.shape
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b = i // (o * p)
        r = i - b * (o * p)
        oc = r // p
        q = r - oc * p
        y[b, oc, q] = y2[oc, b * p + q] + bias[oc]


@cuda.jit
def _onhw_from_nchw_k(dy, d2):  # pragma: no cover - device code
    n, o, p = dy.shape
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        b = i // (o * p)
        r = i - b * (o * p)
        oc = r // p
        q = r - oc * p
        d2[oc, b * p + q] = dy[b, oc, q]


def conv2d_forward(x, w, b, stride, pad, groups=1):
    """Convolution as im2col + one tiled GEMM per group; see :mod:`hpcnet.kernels.cpu`.

    Returns:
        (y, cols): y (N, O, OH, OW) float32; cols the (C*K*K, N*OH*OW) im2col matrix,
        left on the device for the backward.
    """
    host = is_host(x)
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    d_x, d_w, d_b = dev(x), dev(w).reshape(o, rows), dev(b)
    cols = cuda.device_array((c * k * k, n * oh * ow), np.float32)
    _im2col_k[grid1d(cols.size)](d_x, k, stride, pad, oh, ow, cols)
    y2 = cuda.device_array((o, n * oh * ow), np.float32)  # (O, N*OH*OW)
    for g in range(groups):
        gemm(d_w[g * og : (g + 1) * og], cols[g * rows : (g + 1) * rows], y2[g * og : (g + 1) * og])
    y = cuda.device_array((n, o, oh * ow), np.float32)
    _nchw_from_onhw_k[grid1d(y.size)](y2, d_b, y)
    return ret(y.reshape(n, o, oh, ow), host), cols


def conv2d_backward(dy, x_shape, cols, w, stride, pad, dw, db, groups=1, need_dx=True):
    """Gradients of :func:`conv2d_forward`: writes dw (O, C/G, K, K), db (O,); returns dx
    (N, C, H, W), or None when ``need_dx`` is False."""
    host = is_host(dy)
    n, c, h, wd = x_shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = dy.shape[2], dy.shape[3]
    d_dy = dev(dy).reshape(n, o, oh * ow)
    d2 = cuda.device_array((o, n * oh * ow), np.float32)
    _onhw_from_nchw_k[grid1d(d2.size)](d_dy, d2)
    d_w = dev(w).reshape(o, rows)
    d_dw = cuda.device_array((o, rows), np.float32)
    d_db = cuda.device_array(o, np.float32)
    rowsum(d2, d_db)
    dcols = cuda.device_array(cols.shape, np.float32) if need_dx else None
    for g in range(groups):
        ro, rc = slice(g * og, (g + 1) * og), slice(g * rows, (g + 1) * rows)
        gemm(d2[ro], cols[rc], d_dw[ro], tb=True)
        if need_dx:
            gemm(d_w[ro], d2[ro], dcols[rc], ta=True)
    write(d_dw, dw)
    write(d_db, db)
    if not need_dx:
        return None
    dx = cuda.device_array((n, c, h, wd), np.float32)
    _col2im_k[grid1d(dx.size)](dcols, k, stride, pad, oh, ow, dx)
    return ret(dx, host)


def conv2d_release(cache) -> None:
    """Frees a forward's cache that no backward will use (nothing to do here)."""
