"""CPU kernels: NumPy BLAS for matrix products, Numba for the rest.

Convolution is im2col + one GEMM per group and direction (the layout and why:
:mod:`hpcnet.kernels._cpu_conv`). Elementwise work, im2col/col2im, pooling and
LRN are ``numba.njit(parallel=True, cache=True)``; their thread count follows
``numba.set_num_threads`` (set from ``--threads``). Same names and signatures as
:mod:`hpcnet.kernels.reference`.
"""

from __future__ import annotations

import os

import numba
import numpy as np

# Threading layer: OpenMP, spinning briefly after each parallel region. Numba's
# `workqueue` layer costs ~0.1 ms to start a parallel loop (a ReLU of 4 K floats:
# 0.116 ms, against 0.0035 ms under OpenMP): lenet and small batches paid it a dozen
# times a step. OpenMP's default spin after a region (GOMP_SPINCOUNT 300000) starves
# OpenBLAS's threads on the same cores (2conv 270 -> 470 samples/s when we moved to
# workqueue); a short spin keeps both (bench layers, 2 threads, samples/s hpcnet:
# workqueue / omp default / spin 3000: mlp@256 26,865 / 17,979 / 37,193, lenet@64
# 6,448 / 12,109 / 11,659, 2conv@64 1,241 / 995 / 1,498). Where libgomp is missing
# Numba falls back to workqueue. A user's NUMBA_THREADING_LAYER, GOMP_SPINCOUNT or
# OMP_WAIT_POLICY wins; libgomp reads them when Numba first loads it, after this.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "default"
    numba.config.THREADING_LAYER_PRIORITY = ["omp", "workqueue", "tbb"]
if "GOMP_SPINCOUNT" not in os.environ and "OMP_WAIT_POLICY" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "3000"

from hpcnet.kernels import _cpu_chunks as _chunks  # noqa: E402
from hpcnet.kernels import _cpu_conv as _conv  # noqa: E402
from hpcnet.kernels import _cpu_winograd as _wino  # noqa: E402
from hpcnet.kernels._cpu_conv import POOL  # noqa: E402
from hpcnet.kernels._cpu_elementwise import (  # noqa: E402, F401  (ops of this backend)
    PARALLEL_MIN_SIZE,
    activation_backward,
    activation_forward,
    avgpool2d_backward,
    avgpool2d_forward,
    global_avgpool2d_backward,
    global_avgpool2d_forward,
    relu_backward,
    relu_forward,
)
from hpcnet.kernels._cpu_norm import (  # noqa: E402, F401  (ops of this backend)
    batchnorm2d_backward,
    batchnorm2d_forward,
    batchnorm2d_infer,
)
from hpcnet.kernels._cpu_pointwise import (  # noqa: E402
    _lrn_bwd,
    _lrn_fwd,
    _maxpool_bwd,
    _maxpool_fwd,
    _softmax_xent,
)
from hpcnet.kernels.reference import conv_out_size  # noqa: E402

DIRECT_MAX_CHANNELS = 4  # input channels per group up to which stride-1 convolution is direct
WINOGRAD_MIN_CHANNELS = 8  # input and output channels from which 3x3 and 5x5 use Winograd
WINOGRAD_MAX_WASTE = 1.35  # most tile area per output pixel (6x6 output, 4x4 tiles: 1.78)


def _winograd_tile(k: int, stride: int, c: int, o: int, groups: int, oh: int, ow: int) -> int:
    """The output tile m of the Winograd F(m x m, k x k) for this convolution, or 0 when
    it takes another path (stride 2, groups, other kernel sizes, few channels, or an
    output so small that partial tiles would waste more than WINOGRAD_MAX_WASTE)."""
    m = _wino.TILE_FOR_KERNEL.get(k, 0)
    if not m or stride != 1 or groups != 1 or min(c, o) < WINOGRAD_MIN_CHANNELS:
        return 0
    covered = _wino.tiles(oh, m) * _wino.tiles(ow, m) * m * m
    return m if covered <= WINOGRAD_MAX_WASTE * oh * ow else 0


def conv2d_forward(x, w, b, stride, pad, groups=1):
    """Convolution (cross-correlation): Winograd, im2col + one GEMM per group, or direct.

    Stride-1, ungrouped 5x5 and 3x3 convolutions with at least
    :data:`WINOGRAD_MIN_CHANNELS` input and output channels use Winograd's F(2x2, 5x5)
    and F(4x4, 3x3) (:mod:`hpcnet.kernels._cpu_winograd`; Lavin & Gray 2016): 36
    GEMMs of (tiles, C) x (C, O), 2.8x and 4x fewer multiplies. Otherwise the im2col
    matrix has one row per output pixel, channels last (see
    :mod:`hpcnet.kernels._cpu_conv`), so ``cols @ w^T`` gives the output in NHWC;
    one transpose (with the bias added) makes it NCHW. With at most
    :data:`DIRECT_MAX_CHANNELS` input channels per group and stride 1 (first
    layers) a direct loop over the kernel taps is used instead.

    Args:
        x: (N, C, H, W) float32. w: (O, C/G, K, K) float32. b: (O,) float32.
        stride, pad: ints, the same along both spatial axes. groups: G, divides C and O.
    Returns:
        (y, cache): y (N, O, OH, OW) float32 with OH = (H + 2 pad - K) // stride + 1;
        cache for :func:`conv2d_backward` (pooled buffers: pass it back once).
    """
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    x = np.ascontiguousarray(x)
    if cg <= DIRECT_MAX_CHANNELS and stride == 1:
        xp = POOL.take((n, c, h + 2 * pad, wd + 2 * pad))  # (N, C, Hp, Wp)
        _conv.pad_nchw(x, pad, xp)
        y = np.empty((n, o, oh, ow), np.float32)
        _conv.direct_forward(xp, w, b, y)
        return y, ("direct", xp)
    if _winograd_tile(k, stride, c, o, groups, oh, ow):
        return _winograd_forward(x, w, b, pad, oh, ow)
    xp = POOL.take((n, groups, h + 2 * pad, wd + 2 * pad, cg))  # (N, G, Hp, Wp, C/G)
    _conv.pad_grouped(x, pad, groups, xp)
    cols = POOL.take((groups, n * oh * ow, rows))  # (G, N*OH*OW, K*K*C/G)
    _conv.im2col(xp, k, stride, oh, ow, cols)
    POOL.give(xp)
    wb = _conv.weights_gkkc(w).reshape(groups, og, rows)  # (G, O/G, K*K*C/G)
    yh = POOL.take((groups, n * oh * ow, og))  # (G, N*OH*OW, O/G)
    for g in range(groups):
        np.matmul(cols[g], wb[g].T, out=yh[g])
    y = np.empty((n, o, oh * ow), np.float32)
    _conv.nchw_from_nhwc_bias(yh, b, y)
    POOL.give(yh)
    return y.reshape(n, o, oh, ow), ("im2col", cols)


def conv2d_backward(dy, x_shape, cache, w, stride, pad, dw, db, groups=1, need_dx=True):
    """Gradients of :func:`conv2d_forward`.

    Args:
        dy: (N, O, OH, OW) float32. x_shape: (N, C, H, W). cache: from the forward
            (its buffers go back to the pool: use it once).
        w: (O, C/G, K, K) float32. dw: (O, C/G, K, K) float32 and db: (O,) float32,
            written in place (views into the flat gradient vector). groups: as in the
            forward. need_dx: False skips the input gradient (the first layer's).
    Returns:
        dx: (N, C, H, W) float32, or None when ``need_dx`` is False.
    """
    if cache[0] == "winograd":
        return _winograd_backward(dy, x_shape, cache, w, pad, dw, db, need_dx)
    kind, buf = cache
    n, c, h, wd = x_shape
    o, cg, k, _ = w.shape
    og, rows = o // groups, cg * k * k
    oh, ow = dy.shape[2], dy.shape[3]
    dy = np.ascontiguousarray(dy)
    if kind == "direct":
        _conv.direct_backward_params(buf, dy, dw, db)
        dx = None
        if need_dx:
            dx = np.empty((n, c, h, wd), np.float32)
            _conv.direct_backward_input(dy, w, pad, buf, dx)  # buf reused as dxp
        POOL.give(buf)
        return dx
    cols = buf
    dyh = POOL.take((groups, n * oh * ow, og))  # (G, N*OH*OW, O/G)
    _conv.nhwc_from_nchw(dy.reshape(n, o, oh * ow), dyh)
    np.sum(dy, axis=(0, 2, 3), out=db)
    wb = _conv.weights_gkkc(w).reshape(groups, og, rows)
    dwb = np.empty((groups, og, rows), np.float32)  # (G, O/G, K*K*C/G)
    dcols = POOL.take(cols.shape) if need_dx else None
    for g in range(groups):
        np.matmul(dyh[g].T, cols[g], out=dwb[g])
        if need_dx:
            np.matmul(dyh[g], wb[g], out=dcols[g])
    _conv.weights_from_gkkc(dwb.reshape(o, rows), dw)
    POOL.give(cols)
    POOL.give(dyh)
    if not need_dx:
        return None
    dxp = POOL.take((n, groups, h + 2 * pad, wd + 2 * pad, cg))
    dx = np.empty((n, c, h, wd), np.float32)
    _conv.col2im(dcols, k, stride, oh, ow, pad, dxp, dx)
    POOL.give(dcols)
    POOL.give(dxp)
    return dx


def _winograd_plan(n, c, w, oh, ow):
    """(m, tiles along H, tiles along W, padded (Hp, Wp), G, samples per chunk) of the
    Winograd convolution of n samples of c channels by w (O, C, K, K) to OH x OW (the
    transforms by A^T and B^T are written out in :mod:`hpcnet.kernels._cpu_winograd`;
    only G is applied as a matrix)."""
    o, _, k, _ = w.shape
    m = _wino.TILE_FOR_KERNEL[k]
    th, tw = _wino.tiles(oh, m), _wino.tiles(ow, m)
    _, g, _ = _wino.winograd_matrices(m, k)
    chunk = _chunks.samples_per_chunk(n, 36 * th * tw * max(c, o) * 4)  # V or M per sample
    return m, th, tw, (th * m + k - 1, tw * m + k - 1), g, chunk


def _winograd_forward(x, w, b, pad, oh, ow):
    """The Winograd path of :func:`conv2d_forward` (same arguments and result).

    V (36, T, C) is kept for the backward; M is made and consumed chunk by chunk of
    samples (:func:`hpcnet.kernels._cpu_chunks.run_chunks`), so it stays in cache."""
    n, c = x.shape[:2]
    o = w.shape[0]
    m, th, tw, (hp, wp), g, chunk = _winograd_plan(n, c, w, oh, ow)
    per = th * tw  # tiles per sample
    v = POOL.take((36, n * per, c))  # (36, T, C)
    u = _wino.filter_transform(w, g)  # (36, C, O)
    y = np.empty((n, o, oh, ow), np.float32)

    def work(b0, b1, scratch):
        xp = scratch.get("xp", (b1 - b0, hp, wp, c))  # (n_c, Hp, Wp, C), zero border
        _wino.pad_nhwc(x[b0:b1], pad, xp)
        _wino.input_transform(xp, m, th, tw, v, b0 * per)
        vc = v[:, b0 * per : b1 * per]
        mm = scratch.get("m", (36, (b1 - b0) * per, o))  # (36, T_c, O)
        np.matmul(vc, u, out=mm)
        _wino.output_transform(mm, m, th, tw, b, y[b0:b1])

    _chunks.run_chunks(n, chunk, work)
    return y, ("winograd", v, u)


def _winograd_backward(dy, x_shape, cache, w, pad, dw, db, need_dx):
    """The Winograd path of :func:`conv2d_backward` (same arguments and result), chunk
    by chunk of samples like the forward; each chunk's dU is kept and they are summed
    in chunk order (a per-thread sum would depend on which thread took which chunk)."""
    _, v, u = cache
    n, c, h, wd = x_shape
    o = w.shape[0]
    oh, ow = dy.shape[2], dy.shape[3]
    m, th, tw, (hp, wp), g, chunk = _winograd_plan(n, c, w, oh, ow)
    per = th * tw
    dy = np.ascontiguousarray(dy)
    np.sum(dy, axis=(0, 2, 3), out=db)
    dx = np.empty((n, c, h, wd), np.float32) if need_dx else None
    ut = u.transpose(0, 2, 1)  # (36, O, C)
    n_chunks = -(-n // chunk)
    du = np.empty((n_chunks, *u.shape), np.float32)  # (chunks, 36, C, O)

    def work(b0, b1, scratch):
        tc = (b1 - b0) * per
        dm = scratch.get("dm", (36, tc, o))  # (36, T_c, O)
        _wino.output_transform_adjoint(dy[b0:b1], m, th, tw, dm)
        vc = v[:, b0 * per : b1 * per]
        np.matmul(vc.transpose(0, 2, 1), dm, out=du[b0 // chunk])
        if need_dx:
            dv = scratch.get("dv", (36, tc, c))  # (36, T_c, C)
            np.matmul(dm, ut, out=dv)
            dxp = scratch.get("xp", (b1 - b0, hp, wp, c))
            _wino.input_transform_adjoint(dv, m, th, tw, pad, dxp, dx[b0:b1])

    _chunks.run_chunks(n, chunk, work)
    POOL.give(v)
    # summed in chunk order, whichever thread made each: the same bits on every run
    du = du.sum(axis=0) if n_chunks > 1 else du[0]
    _wino.filter_transform_adjoint(du, g, dw)
    return dx


def conv2d_release(cache) -> None:
    """Gives a forward's buffers back to the pool when no backward will use them (an
    inference forward); the cache must not be used afterwards."""
    for buf in cache[1:]:
        POOL.give(buf)


# The compiled loops below write into arrays allocated here with NumPy (why: the
# docstring of hpcnet.kernels._cpu_pointwise).


def maxpool2d_forward(x, k, stride):
    """Max pooling over k x k windows (overlapping when stride < k, AlexNet sec. 3.4).

    Returns:
        (y, argmax): y (N, C, OH, OW) float32; argmax (N, C, OH, OW) int64 flat
        ``h * W + w`` index of each window's first maximum.
    """
    n, c, h, wd = x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)
    y = np.empty((n, c, oh, ow), np.float32)
    arg = np.empty(y.shape, np.int64)
    _maxpool_fwd(x, k, stride, y, arg)
    return y, arg


def maxpool2d_backward(dy, argmax, x_shape):
    """Routes each gradient to its window's argmax; returns dx (N, C, H, W) float32."""
    n, c, h, w = x_shape
    dx = np.empty((n, c, h * w), np.float32)
    _maxpool_bwd(np.ascontiguousarray(dy), argmax, dx)
    return dx.reshape(x_shape)


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3).

    See :func:`hpcnet.kernels.reference.lrn_forward` for the formula.

    Returns:
        (y, scale): both (N, C, H, W) float32.
    """
    n, c, h, w = x.shape
    y = np.empty((n, c, h * w), np.float32)
    s = np.empty_like(y)
    _lrn_fwd(np.ascontiguousarray(x).reshape(n, c, h * w), size, alpha, beta, k, y, s)
    return y.reshape(x.shape), s.reshape(x.shape)


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`; returns dx (N, C, H, W) float32."""
    n, c, h, w = x.shape

    def flat(a):
        return np.ascontiguousarray(a).reshape(n, c, h * w)

    dx = np.empty((n, c, h * w), np.float32)
    t = np.empty_like(dx)  # scratch: dy * y / scale
    accs = np.empty((n, h * w), np.float32)  # scratch: one window sum per sample
    _lrn_bwd(flat(dy), flat(x), flat(y), flat(scale), size, alpha, beta, dx, t, accs)
    return dx.reshape(x.shape)


def dropout_forward(x, mask):
    """Inverted dropout: ``x * mask``; mask holds 0 or 1/(1-rate), float32, x's shape."""
    return np.multiply(x, mask, dtype=np.float32)


def dropout_backward(dy, mask):
    """``dy * mask``, the gradient of :func:`dropout_forward`."""
    return np.multiply(dy, mask, dtype=np.float32)


def add(a, b):
    """a + b elementwise, float32, a new array (e.g. the input gradients of parallel towers)."""
    return np.add(a, b, dtype=np.float32)


def concat_forward(xs):
    """Concatenates (N, C_i, ...) float32 arrays along axis 1 (channels or features)."""
    return np.concatenate(xs, axis=1)


def concat_backward(dy, sizes):
    """Splits dy (N, sum C_i, ...) along axis 1 into contiguous pieces of ``sizes`` channels."""
    ends = np.cumsum(sizes)
    return [np.ascontiguousarray(dy[:, e - s : e]) for s, e in zip(sizes, ends, strict=True)]


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I) float32, w (O, I), b (O,) -> (N, O) float32."""
    y = x @ w.T
    y += b
    return y


def dense_backward(dy, x, w, dw, db, need_dx=True):
    """Writes dw (O, I) and db (O,) in place; returns dx (N, I) float32 (None without
    ``need_dx``)."""
    np.matmul(dy.T, x, out=dw)
    np.sum(dy, axis=0, out=db)
    return dy @ w if need_dx else None


GRAD_FLUSH = 1e-30  # |dlogits| below this is set to 0 (see softmax_xent)


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy and its gradient; see the reference for shapes.

    One serial Numba loop (a batch of logits is tiny; NumPy's dozen calls cost more
    than the arithmetic). Gradient entries smaller than :data:`GRAD_FLUSH` in magnitude
    are set to 0: a confident network's far tail probabilities are float32 subnormals,
    which the backward GEMMs then spread through every layer, and arithmetic on
    subnormals is slow (measured here: mlp's forward + backward went from 6 to 17 ms
    once the model had memorised its batches). Entries that small change no weight.
    """
    loss, d = _softmax_xent(
        np.ascontiguousarray(logits, np.float32), np.ascontiguousarray(labels, np.int64), GRAD_FLUSH
    )
    return float(loss), d


# the optimizers' fused update passes live beside the layer kernels (one import path)
from hpcnet.kernels._cpu_optim import (  # noqa: E402, F401
    adagrad_update,
    adagrad_update_zero,
    sgd_momentum_update,
    sgd_update_zero,
)
