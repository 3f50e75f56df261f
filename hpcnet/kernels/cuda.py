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

Launch sizes are settings (:data:`LAUNCH`), not constants, so tests can shrink
them and exercise several blocks and grid-stride loops on tiny inputs::

    from hpcnet.kernels import cuda as kc
    kc.LAUNCH.threads, kc.LAUNCH.tile, kc.LAUNCH.max_blocks = 8, 4, 3

Without a GPU these kernels run under Numba's CUDA simulator
(``NUMBA_ENABLE_CUDASIM=1``, set before ``numba.cuda`` is first imported).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from numba import cuda, float32, float64

from hpcnet.kernels.reference import conv_out_size


@dataclass
class Launch:
    """Launch sizes of the CUDA kernels.

    Attributes:
        threads: threads per block of the 1-D kernels; a power of two (the reductions
            halve it).
        tile: the GEMM's block is ``tile x tile`` threads, and its shared-memory tiles
            ``tile x tile`` float32 of A and of B.
        max_blocks: most blocks of a 1-D launch; the grid-stride loops cover the rest.
    """

    threads: int = 128
    tile: int = 16
    max_blocks: int = 4096


LAUNCH = Launch()


def _grid(n: int) -> tuple[int, int]:
    t = LAUNCH.threads
    if t < 1 or t & (t - 1):
        raise ValueError(f"LAUNCH.threads must be a power of two, got {t}")
    return max(1, min((n + t - 1) // t, LAUNCH.max_blocks)), t


def _is_host(a) -> bool:
    return isinstance(a, np.ndarray)


def _dev(a, dtype=np.float32):
    """A device array for ``a``: copied from the host, or ``a`` itself if already there."""
    if _is_host(a):
        return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))
    return a


def _ret(d, host: bool):
    return d.copy_to_host() if host else d


def _write(d, out) -> None:
    """Copies device array ``d`` into ``out`` (a host view, e.g. of the flat gradient, or
    a device array)."""
    if _is_host(out):
        out[...] = d.copy_to_host().reshape(out.shape)
    else:
        _copy_k[_grid(d.size)](d.reshape(d.size), out.reshape(out.size))


# ----------------------------------------------------------------------------- kernels


@cuda.jit
def _copy_k(src, dst):  # pragma: no cover - device code
    for i in range(cuda.grid(1), src.size, cuda.gridsize(1)):
        dst[i] = src[i]


@cache
def _gemm_kernel(tile: int):
    """C (m, n) = op(A) @ op(B) [+ C if accumulate], op = transpose where ta / tb is 1."""

    @cuda.jit
    def gemm_k(a, b, c, m, n, k, ta, tb, accumulate):  # pragma: no cover - device code
        sa = cuda.shared.array((tile, tile), float32)
        sb = cuda.shared.array((tile, tile), float32)
        tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
        row = cuda.blockIdx.y * tile + ty
        col = cuda.blockIdx.x * tile + tx
        acc = float32(0.0)
        for t in range((k + tile - 1) // tile):
            ka = t * tile + tx
            if row < m and ka < k:
                sa[ty, tx] = a[row, ka] if ta == 0 else a[ka, row]
            else:
                sa[ty, tx] = 0.0
            kb = t * tile + ty
            if kb < k and col < n:
                sb[ty, tx] = b[kb, col] if tb == 0 else b[col, kb]
            else:
                sb[ty, tx] = 0.0
            cuda.syncthreads()
            for i in range(tile):
                acc += sa[ty, i] * sb[i, tx]
            cuda.syncthreads()
        if row < m and col < n:
            if accumulate:
                c[row, col] += acc
            else:
                c[row, col] = acc

    return gemm_k


def gemm(a, b, c, ta: bool = False, tb: bool = False, accumulate: bool = False) -> None:
    """``c = op(a) @ op(b)`` (or ``c +=``) on device arrays, float32, shared-memory tiled.

    Args:
        a: (m, k), or (k, m) with ``ta``. b: (k, n), or (n, k) with ``tb``. c: (m, n),
            written in place. All 2-D C-contiguous device arrays (row slices are fine).
    """
    m, k = (a.shape[1], a.shape[0]) if ta else a.shape
    n = b.shape[0] if tb else b.shape[1]
    if c.shape != (m, n) or (b.shape[1] if tb else b.shape[0]) != k:
        raise ValueError(f"gemm: shapes {a.shape}, {b.shape} -> {c.shape} do not fit")
    t = LAUNCH.tile
    grid = ((n + t - 1) // t, (m + t - 1) // t)
    _gemm_kernel(t)[grid, (t, t)](a, b, c, m, n, k, int(ta), int(tb), bool(accumulate))


@cache
def _rowsum_kernel(threads: int):
    """out[r] = sum_j a[r, j] (trans 0) or sum_j a[j, r] (trans 1); one block per row."""

    @cuda.jit
    def rowsum_k(a, out, trans):  # pragma: no cover - device code
        sm = cuda.shared.array(threads, float32)
        tid = cuda.threadIdx.x
        rows = a.shape[1] if trans else a.shape[0]
        length = a.shape[0] if trans else a.shape[1]
        for r in range(cuda.blockIdx.x, rows, cuda.gridDim.x):
            acc = float32(0.0)
            for j in range(tid, length, threads):
                acc += a[j, r] if trans else a[r, j]
            sm[tid] = acc
            cuda.syncthreads()
            s = threads // 2
            while s > 0:
                if tid < s:
                    sm[tid] += sm[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                out[r] = sm[0]
            cuda.syncthreads()

    return rowsum_k


def _rowsum(a, out, trans: bool = False) -> None:
    rows = a.shape[1] if trans else a.shape[0]
    blocks, threads = _grid(rows * LAUNCH.threads)
    _rowsum_kernel(threads)[blocks, threads](a, out, int(trans))


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
        b = i // (c * h * w)
        r = i - b * (c * h * w)
        ci = r // (h * w)
        r -= ci * (h * w)
        ih = r // w
        iw = r - ih * w
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


@cuda.jit
def _maxpool_fwd_k(x, k, stride, y, arg):  # pragma: no cover - device code
    n, c, oh, ow = y.shape
    w = x.shape[3]
    for i in range(cuda.grid(1), y.size, cuda.gridsize(1)):
        b = i // (c * oh * ow)
        r = i - b * (c * oh * ow)
        ci = r // (oh * ow)
        r -= ci * (oh * ow)
        oi = r // ow
        oj = r - oi * ow
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
        b = i // (c * oh * ow)
        r = i - b * (c * oh * ow)
        ci = r // (oh * ow)
        r -= ci * (oh * ow)
        oi = r // ow
        oj = r - oi * ow
        cuda.atomic.add(dx, (b, ci, arg[b, ci, oi, oj]), dy[b, ci, oi, oj])


@cuda.jit
def _fill_k(a, value):  # pragma: no cover - device code
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        a[i] = value


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


def conv2d_forward(x, w, b, stride, pad, groups=1):
    """Convolution as im2col + one tiled GEMM per group; see :mod:`hpcnet.kernels.cpu`.

    Returns:
        (y, cols): y (N, O, OH, OW) float32; cols the (C*K*K, N*OH*OW) im2col matrix,
        left on the device for the backward.
    """
    host = _is_host(x)
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    d_x, d_w, d_b = _dev(x), _dev(w).reshape(o, rows), _dev(b)
    cols = cuda.device_array((c * k * k, n * oh * ow), np.float32)
    _im2col_k[_grid(cols.size)](d_x, k, stride, pad, oh, ow, cols)
    y2 = cuda.device_array((o, n * oh * ow), np.float32)  # (O, N*OH*OW)
    for g in range(groups):
        gemm(d_w[g * og : (g + 1) * og], cols[g * rows : (g + 1) * rows], y2[g * og : (g + 1) * og])
    y = cuda.device_array((n, o, oh * ow), np.float32)
    _nchw_from_onhw_k[_grid(y.size)](y2, d_b, y)
    return _ret(y.reshape(n, o, oh, ow), host), cols


def conv2d_backward(dy, x_shape, cols, w, stride, pad, dw, db, groups=1, need_dx=True):
    """Gradients of :func:`conv2d_forward`: writes dw (O, C/G, K, K), db (O,); returns dx
    (N, C, H, W), or None when ``need_dx`` is False."""
    host = _is_host(dy)
    n, c, h, wd = x_shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = dy.shape[2], dy.shape[3]
    d_dy = _dev(dy).reshape(n, o, oh * ow)
    d2 = cuda.device_array((o, n * oh * ow), np.float32)
    _onhw_from_nchw_k[_grid(d2.size)](d_dy, d2)
    d_w = _dev(w).reshape(o, rows)
    d_dw = cuda.device_array((o, rows), np.float32)
    d_db = cuda.device_array(o, np.float32)
    _rowsum(d2, d_db)
    dcols = cuda.device_array(cols.shape, np.float32) if need_dx else None
    for g in range(groups):
        ro, rc = slice(g * og, (g + 1) * og), slice(g * rows, (g + 1) * rows)
        gemm(d2[ro], cols[rc], d_dw[ro], tb=True)
        if need_dx:
            gemm(d_w[ro], d2[ro], dcols[rc], ta=True)
    _write(d_dw, dw)
    _write(d_db, db)
    if not need_dx:
        return None
    dx = cuda.device_array((n, c, h, wd), np.float32)
    _col2im_k[_grid(dx.size)](dcols, k, stride, pad, oh, ow, dx)
    return _ret(dx, host)


def conv2d_release(cache) -> None:
    """Frees a forward's cache that no backward will use (nothing to do here)."""


def maxpool2d_forward(x, k, stride):
    """Max pooling (overlapping when stride < k); returns (y, argmax) as the CPU op does."""
    host = _is_host(x)
    n, c, h, wd = x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)
    y = cuda.device_array((n, c, oh, ow), np.float32)
    arg = cuda.device_array((n, c, oh, ow), np.int64)
    _maxpool_fwd_k[_grid(y.size)](_dev(x), k, stride, y, arg)
    return _ret(y, host), _ret(arg, host)


def maxpool2d_backward(dy, argmax, x_shape):
    """Routes each gradient to its window's argmax, summing where windows overlap."""
    host = _is_host(dy)
    n, c, h, w = x_shape
    dx = cuda.device_array((n, c, h * w), np.float32)
    _fill_k[_grid(dx.size)](dx.reshape(dx.size), 0.0)
    d_dy = _dev(dy)
    _maxpool_bwd_k[_grid(d_dy.size)](d_dy, _dev(argmax, np.int64), dx)
    return _ret(dx.reshape(n, c, h, w), host)


def relu_forward(x):
    """max(x, 0) elementwise."""
    host = _is_host(x)
    d_x = _dev(x)
    y = cuda.device_array(d_x.shape, np.float32)
    _relu_fwd_k[_grid(d_x.size)](d_x.reshape(d_x.size), y.reshape(y.size))
    return _ret(y, host)


def _elementwise(kernel, a, b):
    """``kernel(a, b, out)`` over the flattened arrays, out a new float32 array of a's
    shape (host in, host out; device in, device out)."""
    host = _is_host(a)
    d_a, d_b = _dev(a), _dev(b)
    out = cuda.device_array(d_a.shape, np.float32)
    kernel[_grid(out.size)](d_a.reshape(out.size), d_b.reshape(out.size), out.reshape(out.size))
    return _ret(out, host)


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


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3);
    formula in :func:`hpcnet.kernels.reference.lrn_forward`. Returns (y, scale)."""
    host = _is_host(x)
    n, c, h, w = x.shape
    d_x = _dev(x).reshape(n, c, h * w)
    y = cuda.device_array((n, c, h * w), np.float32)
    s = cuda.device_array((n, c, h * w), np.float32)
    _lrn_fwd_k[_grid(y.size)](d_x, size, float(alpha), float(beta), float(k), y, s)
    return _ret(y.reshape(n, c, h, w), host), _ret(s.reshape(n, c, h, w), host)


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`; returns dx (N, C, H, W)."""
    host = _is_host(dy)
    n, c, h, w = x.shape
    shp = (n, c, h * w)
    dx = cuda.device_array(shp, np.float32)
    _lrn_bwd_k[_grid(dx.size)](
        _dev(dy).reshape(shp),
        _dev(x).reshape(shp),
        _dev(y).reshape(shp),
        _dev(scale).reshape(shp),
        size,
        float(alpha),
        float(beta),
        dx,
    )
    return _ret(dx.reshape(n, c, h, w), host)


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I), w (O, I), b (O,) -> (N, O)."""
    host = _is_host(x)
    d_x, d_w = _dev(x), _dev(w)
    y = cuda.device_array((d_x.shape[0], d_w.shape[0]), np.float32)
    gemm(d_x, d_w, y, tb=True)
    _add_bias_k[_grid(y.size)](y, _dev(b))
    return _ret(y, host)


def dense_backward(dy, x, w, dw, db, need_dx=True):
    """Writes dw (O, I) and db (O,); returns dx (N, I) (None without ``need_dx``)."""
    host = _is_host(dy)
    d_dy, d_x, d_w = _dev(dy), _dev(x), _dev(w)
    d_dw = cuda.device_array(d_w.shape, np.float32)
    gemm(d_dy, d_x, d_dw, ta=True)
    d_db = cuda.device_array(d_w.shape[0], np.float32)
    _rowsum(d_dy, d_db, trans=True)
    _write(d_dw, dw)
    _write(d_db, db)
    if not need_dx:
        return None
    dx = cuda.device_array(d_x.shape, np.float32)
    gemm(d_dy, d_w, dx)
    return _ret(dx, host)


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy (nats, a float) and dlogits (N, K)."""
    host = _is_host(logits)
    d_z = _dev(logits)
    n = d_z.shape[0]
    loss = cuda.device_array(n, np.float64)
    d = cuda.device_array(d_z.shape, np.float32)
    _softmax_xent_k[_grid(n)](d_z, _dev(labels, np.int64), loss, d)
    return float(loss.copy_to_host().mean()), _ret(d, host)


def concat_forward(xs):
    """Concatenates (N, C_i, ...) arrays along axis 1."""
    host = _is_host(xs[0])
    n, rest = xs[0].shape[0], xs[0].shape[2:]
    p = int(np.prod(rest)) if rest else 1
    total = sum(x.shape[1] for x in xs)
    y = cuda.device_array((n, total, p), np.float32)
    off = 0
    for x in xs:
        d_x = _dev(x).reshape(n, x.shape[1], p)
        _copy_channels_k[_grid(d_x.size)](d_x, y, off, 1)
        off += x.shape[1]
    return _ret(y.reshape(n, total, *rest), host)


def concat_backward(dy, sizes):
    """Splits dy (N, sum C_i, ...) along axis 1 into pieces of ``sizes`` channels."""
    host = _is_host(dy)
    n, rest = dy.shape[0], dy.shape[2:]
    p = int(np.prod(rest)) if rest else 1
    d_dy = _dev(dy).reshape(n, dy.shape[1], p)
    out, off = [], 0
    for s in sizes:
        piece = cuda.device_array((n, s, p), np.float32)
        _copy_channels_k[_grid(piece.size)](piece, d_dy, off, 0)
        off += s
        out.append(_ret(piece.reshape(n, s, *rest), host))
    return out
