"""Launch settings, host/device plumbing and the matrix kernels of the CUDA backend.

:data:`LAUNCH` holds the launch sizes every kernel of :mod:`hpcnet.kernels.cuda` reads
at call time (tests shrink them). :func:`gemm` is one shared-memory tiled GEMM kernel,
the classic tiling of Kirk & Hwu, "Programming Massively Parallel Processors", ch. 5:
each block computes a ``tile x tile`` piece of C, staging ``tile x tile`` pieces of A
and B in shared memory. :func:`rowsum` is a reduction, one block per row with a
shared-memory tree (the bias gradients).

The helpers :func:`is_host`, :func:`dev`, :func:`ret` and :func:`write` give every op
the same rule: host (NumPy) inputs are copied to the GPU and the results copied back;
device inputs give device results and no copies.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np
from numba import cuda, float32


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


@cuda.jit(device=True)
def unravel_nchw(i, c, h, w):  # pragma: no cover - device code
    """(n, c, h, w): the indices of flat element ``i`` of a C-contiguous (N, C, H, W)
    array; the grid-stride loops of one thread per element use it."""
    b = i // (c * h * w)
    r = i - b * (c * h * w)
    ci = r // (h * w)
    r -= ci * (h * w)
    ih = r // w
    return b, ci, ih, r - ih * w


def grid1d(n: int) -> tuple[int, int]:
    """(blocks, threads) of a 1-D grid-stride launch over ``n`` items, from :data:`LAUNCH`."""
    t = LAUNCH.threads
    if t < 1 or t & (t - 1):
        raise ValueError(f"LAUNCH.threads must be a power of two, got {t}")
    return max(1, min((n + t - 1) // t, LAUNCH.max_blocks)), t


def is_host(a) -> bool:
    """True for a NumPy array (the op then returns host arrays)."""
    return isinstance(a, np.ndarray)


def dev(a, dtype=np.float32):
    """A device array for ``a``: copied from the host, or ``a`` itself if already there."""
    if is_host(a):
        return cuda.to_device(np.ascontiguousarray(a, dtype=dtype))
    return a


def ret(d, host: bool):
    """The op's result: device array ``d`` copied to the host if ``host``, else ``d``."""
    return d.copy_to_host() if host else d


def write(d, out) -> None:
    """Copies device array ``d`` into ``out`` (a host view, e.g. of the flat gradient, or
    a device array)."""
    if is_host(out):
        out[...] = d.copy_to_host().reshape(out.shape)
    else:
        _copy_k[grid1d(d.size)](d.reshape(d.size), out.reshape(out.size))


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


def rowsum(a, out, trans: bool = False) -> None:
    """``out[r]`` = sum of row r of ``a`` (2-D device array), or of column r with
    ``trans``, into the device array ``out``."""
    rows = a.shape[1] if trans else a.shape[0]
    blocks, threads = grid1d(rows * LAUNCH.threads)
    _rowsum_kernel(threads)[blocks, threads](a, out, int(trans))
