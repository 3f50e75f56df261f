"""Convolution helpers of the CPU backend: im2col in NHWC order, col2im, layout
transposes, direct convolution for few input channels, and a pool of large work
buffers.

The im2col matrix is ``cols (G, N*OH*OW, K*K*C/G)``: per group, one row per output
pixel and one column per weight, ordered (ki, kj, channel). Each row is copied from
a zero-padded, channels-last copy of the input (:func:`pad_grouped`), so a row is K
contiguous runs of K*C/G floats, with no bounds checks; each group's matrix is
contiguous (GEMMs on column blocks of one wide matrix ran 1.5-2x slower). The
forward product ``cols[g] @ w_g^T`` then yields the output in NHWC, and the weight
gradient ``dy_g^T @ cols[g]`` and ``dcols[g] = dy_g @ w_g`` are plain GEMMs too;
measured here, this orientation runs OpenBLAS faster than ``w @ cols`` with cols
(C*K*K, N*OH*OW) (2conv's second convolution: forward GEMM 11.5 ms against 23 ms,
2 threads), and the transposes between NCHW and NHWC move only activations, which
are 25 times smaller than cols for a 5x5 kernel.

Large buffers (cols, dcols, the padded input) are taken from :data:`POOL` and given
back when the backward is done with them: a fresh 40 MB ``np.empty`` costs page
faults on first touch on every call (glibc serves blocks above 32 MB by mmap).
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


class BufferPool:
    """Reusable float32 work buffers, by shape.

    ``take(shape)`` hands out a free buffer of that shape (or a new one); ``give(a)``
    returns one. A buffer that is never given back (an inference forward's im2col
    matrix) is simply garbage-collected. At most ``per_shape`` free buffers are kept
    per shape. Not thread-safe: one rank computes on one thread of Python.
    """

    def __init__(self, per_shape: int = 2):
        self.per_shape = per_shape
        self._free: dict[tuple[int, ...], list[np.ndarray]] = {}

    def take(self, shape: tuple[int, ...]) -> np.ndarray:
        free = self._free.get(tuple(shape))
        return free.pop() if free else np.empty(shape, np.float32)

    def give(self, a: np.ndarray) -> None:
        free = self._free.setdefault(a.shape, [])
        if len(free) < self.per_shape and not any(a is f for f in free):
            free.append(a)

    def clear(self) -> None:
        """Drops every free buffer (their memory goes back to the allocator)."""
        self._free.clear()


POOL = BufferPool()


@njit(parallel=True, cache=True)
def pad_grouped(x, pad, groups, xp):  # pragma: no cover - compiled
    """x (N, C, H, W) -> xp (N, G, H + 2 pad, W + 2 pad, C/G), zero border.

    Channels last within each group, so one kernel row of one group's window,
    ``xp[b, g, ih, iw : iw + K, :]``, is K*C/G contiguous floats at any stride.
    """
    n, c, h, w = x.shape
    cg = c // groups
    hp, wp = h + 2 * pad, w + 2 * pad
    for bg in prange(n * groups):
        b = bg // groups
        g = bg - b * groups
        for i in range(hp):
            ii = i - pad
            for j in range(wp):
                jj = j - pad
                if ii < 0 or ii >= h or jj < 0 or jj >= w:
                    xp[b, g, i, j, :] = 0.0
                else:
                    for ci in range(cg):
                        xp[b, g, i, j, ci] = x[b, g * cg + ci, ii, jj]


@njit(parallel=True, cache=True)
def im2col(xp, k, stride, oh, ow, cols):  # pragma: no cover - compiled
    """xp (N, G, Hp, Wp, C/G) from :func:`pad_grouped` -> cols (G, N*OH*OW, K*K*C/G),
    columns ordered (ki, kj, c): one contiguous matrix per group, for its GEMMs.

    Each row is K contiguous runs of K*C/G floats, copied as slice assignments:
    measured 2x faster than an element loop with 2-D indexing, which Numba does not
    vectorize (5.5 against 11 ms for 2conv's second convolution, batch 64, 1 thread).
    """
    n, groups, hp, wp, cg = xp.shape
    kc = k * cg
    xf = xp.reshape(-1)
    for r in prange(n * oh):
        b = r // oh
        i = r - b * oh
        for g in range(groups):
            for j in range(ow):
                crow = cols[g, r * ow + j]
                for ki in range(k):
                    src = (((b * groups + g) * hp + i * stride + ki) * wp + j * stride) * cg
                    crow[ki * kc : (ki + 1) * kc] = xf[src : src + kc]


@njit(parallel=True, cache=True)
def col2im(dcols, k, stride, oh, ow, pad, dxp, dx):  # pragma: no cover - compiled
    """Sums dcols (G, N*OH*OW, K*K*C/G) back into dx (N, C, H, W), through the padded
    grouped buffer dxp (N, G, Hp, Wp, C/G). One sample per thread: the overlapping
    windows of a sample never race. Runs shorter than 64 floats are added by an
    element loop (lenet's second layer, runs of 30: 0.8 against 1.7 ms as slices)."""
    n, groups, hp, wp, cg = dxp.shape
    h, w = dx.shape[2], dx.shape[3]
    kc = k * cg
    for b in prange(n):
        dxb = dxp[b]
        dxb[...] = 0.0
        dxf = dxb.reshape(-1)
        for g in range(groups):
            for i in range(oh):
                for j in range(ow):
                    drow = dcols[g, (b * oh + i) * ow + j]
                    for ki in range(k):
                        dst = ((g * hp + i * stride + ki) * wp + j * stride) * cg
                        if kc < 64:  # short runs: a slice's setup costs more than its adds
                            for t in range(kc):
                                dxf[dst + t] += drow[ki * kc + t]
                        else:
                            dxf[dst : dst + kc] += drow[ki * kc : (ki + 1) * kc]
        for g in range(groups):
            for ci in range(cg):
                for ii in range(h):
                    for jj in range(w):
                        dx[b, g * cg + ci, ii, jj] = dxb[g, ii + pad, jj + pad, ci]


# ------------------------------------------------------------- direct convolution
# For inputs with very few channels (a network's first layer: 1 or 3), im2col rows
# would be runs of 1-3 floats and the GEMM's inner dimension C*K*K tiny; a direct
# loop over the kernel taps, vectorised along output rows, does the same work with
# no im2col matrix. Stride 1 only. The K = 5 and K = 3 cases sum a whole kernel row
# per load and store of the output (measured, 2conv's first layer, batch 64, one
# thread: forward 4.9 ms against 8.5 ms tap by tap; weight gradient 7.4 against 53).


@njit(parallel=True, cache=True)
def pad_nchw(x, pad, xp):  # pragma: no cover - compiled
    """x (N, C, H, W) -> xp (N, C, H + 2 pad, W + 2 pad), zero border."""
    n, c, h, w = x.shape
    for bc in prange(n * c):
        b = bc // c
        ci = bc - b * c
        xp[b, ci] = 0.0
        xp[b, ci, pad : pad + h, pad : pad + w] = x[b, ci]


@njit(parallel=True, cache=True, fastmath=True)
def direct_forward(xp, w, bias, y):  # pragma: no cover - compiled
    """y (N, O, OH, OW) = conv(xp (N, C, Hp, Wp) padded, w (O, C/G, K, K)) + bias, stride 1."""
    n, c, hp, wp = xp.shape
    o, cg, k, _ = w.shape
    oh, ow = y.shape[2], y.shape[3]
    og = o // (c // cg)
    for t in prange(n * o):
        b = t // o
        oc = t - b * o
        g = oc // og
        acc = np.empty((oh, ow), np.float32)
        acc[...] = bias[oc]
        for ci in range(cg):
            ch = g * cg + ci
            for ki in range(k):
                if k == 5:
                    w0, w1, w2 = w[oc, ci, ki, 0], w[oc, ci, ki, 1], w[oc, ci, ki, 2]
                    w3, w4 = w[oc, ci, ki, 3], w[oc, ci, ki, 4]
                    for i in range(oh):
                        for j in range(ow):
                            acc[i, j] += (
                                w0 * xp[b, ch, i + ki, j]
                                + w1 * xp[b, ch, i + ki, j + 1]
                                + w2 * xp[b, ch, i + ki, j + 2]
                                + w3 * xp[b, ch, i + ki, j + 3]
                                + w4 * xp[b, ch, i + ki, j + 4]
                            )
                elif k == 3:
                    w0, w1, w2 = w[oc, ci, ki, 0], w[oc, ci, ki, 1], w[oc, ci, ki, 2]
                    for i in range(oh):
                        for j in range(ow):
                            acc[i, j] += (
                                w0 * xp[b, ch, i + ki, j]
                                + w1 * xp[b, ch, i + ki, j + 1]
                                + w2 * xp[b, ch, i + ki, j + 2]
                            )
                else:
                    for kj in range(k):
                        wv = w[oc, ci, ki, kj]
                        for i in range(oh):
                            for j in range(ow):
                                acc[i, j] += wv * xp[b, ch, i + ki, j + kj]
        y[b, oc] = acc


@njit(parallel=True, cache=True, fastmath=True)
def direct_backward_params(xp, dy, dw, db):  # pragma: no cover - compiled
    """dw (O, C/G, K, K) and db (O,) of :func:`direct_forward`; one channel per thread."""
    n, c, hp, wp = xp.shape
    o, cg, k, _ = dw.shape
    oh, ow = dy.shape[2], dy.shape[3]
    og = o // (c // cg)
    for oc in prange(o):
        g = oc // og
        acc = np.zeros((cg, k, k), np.float64)
        sb = 0.0
        for b in range(n):
            sbb = np.float32(0.0)
            for i in range(oh):
                for j in range(ow):
                    sbb += dy[b, oc, i, j]
            sb += sbb
            for ci in range(cg):
                ch = g * cg + ci
                for ki in range(k):
                    if k == 5:
                        s0 = s1 = s2 = s3 = s4 = np.float32(0.0)
                        for i in range(oh):
                            for j in range(ow):
                                d = dy[b, oc, i, j]
                                s0 += d * xp[b, ch, i + ki, j]
                                s1 += d * xp[b, ch, i + ki, j + 1]
                                s2 += d * xp[b, ch, i + ki, j + 2]
                                s3 += d * xp[b, ch, i + ki, j + 3]
                                s4 += d * xp[b, ch, i + ki, j + 4]
                        acc[ci, ki, 0] += s0
                        acc[ci, ki, 1] += s1
                        acc[ci, ki, 2] += s2
                        acc[ci, ki, 3] += s3
                        acc[ci, ki, 4] += s4
                    elif k == 3:
                        s0 = s1 = s2 = np.float32(0.0)
                        for i in range(oh):
                            for j in range(ow):
                                d = dy[b, oc, i, j]
                                s0 += d * xp[b, ch, i + ki, j]
                                s1 += d * xp[b, ch, i + ki, j + 1]
                                s2 += d * xp[b, ch, i + ki, j + 2]
                        acc[ci, ki, 0] += s0
                        acc[ci, ki, 1] += s1
                        acc[ci, ki, 2] += s2
                    else:
                        for kj in range(k):
                            s = np.float32(0.0)
                            for i in range(oh):
                                for j in range(ow):
                                    s += dy[b, oc, i, j] * xp[b, ch, i + ki, j + kj]
                            acc[ci, ki, kj] += s
        db[oc] = sb
        for ci in range(cg):
            for ki in range(k):
                for kj in range(k):
                    dw[oc, ci, ki, kj] = acc[ci, ki, kj]


@njit(parallel=True, cache=True, fastmath=True)
def direct_backward_input(dy, w, pad, dxp, dx):  # pragma: no cover - compiled
    """dx (N, C, H, W) of :func:`direct_forward` through the padded buffer dxp (N, C, Hp,
    Wp); one sample per thread."""
    n, c, hp, wp = dxp.shape
    o, cg, k, _ = w.shape
    oh, ow = dy.shape[2], dy.shape[3]
    h, wd = dx.shape[2], dx.shape[3]
    og = o // (c // cg)
    for b in prange(n):
        dxp[b] = 0.0
        for oc in range(o):
            g = oc // og
            for ci in range(cg):
                ch = g * cg + ci
                for ki in range(k):
                    for kj in range(k):
                        wv = w[oc, ci, ki, kj]
                        for i in range(oh):
                            for j in range(ow):
                                dxp[b, ch, i + ki, j + kj] += wv * dy[b, oc, i, j]
        for ci in range(c):
            dx[b, ci] = dxp[b, ci, pad : pad + h, pad : pad + wd]


@njit(parallel=True, cache=True)
def nchw_from_nhwc_bias(yh, bias, y):  # pragma: no cover - compiled
    """yh (G, N*P, O/G) -> y (N, O, P) with bias[o] added."""
    groups, _, og = yh.shape
    n, o, p = y.shape
    for b in prange(n):
        for g in range(groups):
            src = yh[g, b * p : (b + 1) * p]  # (P, O/G)
            for ol in range(og):
                bo = bias[g * og + ol]
                dst = y[b, g * og + ol]
                for q in range(p):
                    dst[q] = src[q, ol] + bo


@njit(parallel=True, cache=True)
def nhwc_from_nchw(dy, dyh):  # pragma: no cover - compiled
    """dy (N, O, P) -> dyh (G, N*P, O/G)."""
    groups, _, og = dyh.shape
    n, o, p = dy.shape
    for b in prange(n):
        for g in range(groups):
            dst = dyh[g, b * p : (b + 1) * p]  # (P, O/G)
            src = dy[b, g * og : (g + 1) * og]  # (O/G, P)
            for q in range(p):
                for ol in range(og):
                    dst[q, ol] = src[ol, q]


def weights_gkkc(w: np.ndarray) -> np.ndarray:
    """w (O, C/G, K, K) -> (O, K*K*C/G), columns (ki, kj, c) as in :func:`im2col` (a copy)."""
    o, cg, k, _ = w.shape
    return np.ascontiguousarray(w.transpose(0, 2, 3, 1)).reshape(o, k * k * cg)


def weights_from_gkkc(wb: np.ndarray, out: np.ndarray) -> None:
    """Inverse of :func:`weights_gkkc`, written into ``out`` (O, C/G, K, K)."""
    o, cg, k, _ = out.shape
    out[...] = wb.reshape(o, k, k, cg).transpose(0, 3, 1, 2)
