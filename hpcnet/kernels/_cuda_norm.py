"""The CUDA backend's batch normalization (Ioffe and Szegedy 2015): per-channel sums,
one block per channel with a shared-memory tree reduction in float64, and the
per-channel affine maps one thread per element (:mod:`hpcnet.kernels.cuda`). The
(C,) statistics come back to the host (C floats: the layer keeps its running
statistics there). The formulas are in :mod:`hpcnet.kernels.reference`."""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import cuda, float64

from hpcnet.kernels._cuda_gemm import LAUNCH, dev, grid1d, is_host, ret


@cache
def _sums_kernel(threads: int):
    """s1[c] = sum u[:, c]; s2[c] = sum (u - off[c]) (v - off[c]); u, v (N, C, HW)."""

    @cuda.jit
    def sums_k(u, v, off, s1, s2):  # pragma: no cover - device code
        a = cuda.shared.array(threads, float64)
        q = cuda.shared.array(threads, float64)
        tid = cuda.threadIdx.x
        n, c, hw = u.shape
        for ci in range(cuda.blockIdx.x, c, cuda.gridDim.x):
            o = off[ci]
            sa = 0.0
            sq = 0.0
            for i in range(tid, n * hw, threads):
                b, p = i // hw, i % hw
                sa += u[b, ci, p]
                sq += (u[b, ci, p] - o) * (v[b, ci, p] - o)
            a[tid] = sa
            q[tid] = sq
            cuda.syncthreads()
            s = threads // 2
            while s > 0:
                if tid < s:
                    a[tid] += a[tid + s]
                    q[tid] += q[tid + s]
                cuda.syncthreads()
                s //= 2
            if tid == 0:
                s1[ci] = a[0]
                s2[ci] = q[0]
            cuda.syncthreads()

    return sums_k


@cuda.jit
def _affine_k(x, scale, shift, y):  # pragma: no cover - device code
    n, c, hw = x.shape
    for i in range(cuda.grid(1), x.size, cuda.gridsize(1)):
        ci = (i // hw) % c
        b, p = i // (c * hw), i % hw
        y[b, ci, p] = x[b, ci, p] * scale[ci] + shift[ci]


@cuda.jit
def _dx_k(dy, xhat, k, a, g, dx):  # pragma: no cover - device code
    n, c, hw = dy.shape
    for i in range(cuda.grid(1), dy.size, cuda.gridsize(1)):
        ci = (i // hw) % c
        b, p = i // (c * hw), i % hw
        dx[b, ci, p] = k[ci] * (dy[b, ci, p] - a[ci] - xhat[b, ci, p] * g[ci])


def _planes(d):
    n, c = d.shape[:2]
    return d.reshape((n, c, d.size // (n * c)))


def _sums(u, v, off):
    c = u.shape[1]
    s1, s2 = cuda.device_array(c, np.float64), cuda.device_array(c, np.float64)
    threads = LAUNCH.threads
    _sums_kernel(threads)[max(1, min(c, LAUNCH.max_blocks)), threads](
        u, v, cuda.to_device(np.asarray(off, np.float64)), s1, s2
    )
    return s1.copy_to_host(), s2.copy_to_host()


def _affine(u, scale, shift):
    y = cuda.device_array(u.shape, np.float32)
    _affine_k[grid1d(u.size)](
        u,
        cuda.to_device(np.asarray(scale, np.float32)),
        cuda.to_device(np.asarray(shift, np.float32)),
        y,
    )
    return y


def batchnorm2d_forward(x, gamma, beta, eps):
    """Training mode: x (N, C, H, W) -> (y, xhat, mean, var); y, xhat on the device
    (the host for a host ``x``), mean and biased var (C,) float64 on the host."""
    host = is_host(x)
    d_x = dev(x)
    u = _planes(d_x)
    c, m = u.shape[1], u.shape[0] * u.shape[2]
    s1, _ = _sums(u, u, np.zeros(c))
    mean = s1 / m
    _, s2 = _sums(u, u, mean)
    var = s2 / m
    inv = 1.0 / np.sqrt(var + eps)
    xhat = _affine(u, inv, -mean * inv)
    y = _affine(xhat, _host(gamma), _host(beta))
    return ret(y.reshape(d_x.shape), host), ret(xhat.reshape(d_x.shape), host), mean, var


def batchnorm2d_infer(x, gamma, beta, mean, var, eps):
    """Inference mode, the running (C,) ``mean`` and ``var`` (host arrays)."""
    host = is_host(x)
    d_x = dev(x)
    scale = _host(gamma).astype(np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = _host(beta) - np.asarray(mean, np.float64) * scale
    return ret(_affine(_planes(d_x), scale, shift).reshape(d_x.shape), host)


def batchnorm2d_backward(dy, xhat, gamma, var, eps, dgamma, dbeta, need_dx=True):
    """Writes dgamma, dbeta (C,) (host or device views); returns dx (None without
    ``need_dx``)."""
    host = is_host(dy)
    d_dy, d_xh = dev(dy), dev(xhat)
    u, v = _planes(d_dy), _planes(d_xh)
    c, m = u.shape[1], u.shape[0] * u.shape[2]
    db, dg = _sums(u, v, np.zeros(c))
    for out, val in ((dgamma, dg), (dbeta, db)):
        if is_host(out):
            out[...] = val
        else:
            out.copy_to_device(val.astype(np.float32))
    if not need_dx:
        return None
    k = _host(gamma).astype(np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    dx = cuda.device_array(u.shape, np.float32)
    _dx_k[grid1d(u.size)](
        u,
        v,
        cuda.to_device(k.astype(np.float32)),
        cuda.to_device((db / m).astype(np.float32)),
        cuda.to_device((dg / m).astype(np.float32)),
        dx,
    )
    return ret(dx.reshape(d_dy.shape), host)


def _host(a) -> np.ndarray:
    """A (C,) parameter view as a host array (it may be a device view of the flat vector)."""
    return a if is_host(a) else a.copy_to_host()
