"""The CPU backend's batch normalization (Ioffe and Szegedy 2015): per-channel sums in
float64, parallel over channels, and the per-channel affine maps parallel over (sample,
channel) planes (``numba.njit(parallel=True, cache=True)``). The formulas are in
:mod:`hpcnet.kernels.reference` (``batchnorm2d_*``)."""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True)
def _channel_sums(u, v, off, s1, s2):  # pragma: no cover - compiled
    # s1[c] = sum u[:, c], s2[c] = sum (u - off[c]) (v - off[c]); u, v (N, C, HW)
    n, c, hw = u.shape
    for ci in prange(c):
        a = 0.0
        q = 0.0
        o = off[ci]
        for b in range(n):
            for p in range(hw):
                a += u[b, ci, p]
                q += (u[b, ci, p] - o) * (v[b, ci, p] - o)
        s1[ci] = a
        s2[ci] = q


@njit(parallel=True, cache=True)
def _affine(x, scale, shift, y):  # pragma: no cover - compiled
    # y[:, c] = x[:, c] scale[c] + shift[c]; x, y (N, C, HW)
    n, c, hw = x.shape
    for nc in prange(n * c):
        b, ci = nc // c, nc % c
        sc, sh = np.float32(scale[ci]), np.float32(shift[ci])
        for p in range(hw):
            y[b, ci, p] = x[b, ci, p] * sc + sh


@njit(parallel=True, cache=True)
def _bn_dx(dy, xhat, k, a, g, dx):  # pragma: no cover - compiled
    # dx = k[c] (dy - a[c] - xhat g[c])
    n, c, hw = dy.shape
    for nc in prange(n * c):
        b, ci = nc // c, nc % c
        kc, ac, gc = np.float32(k[ci]), np.float32(a[ci]), np.float32(g[ci])
        for p in range(hw):
            dx[b, ci, p] = kc * (dy[b, ci, p] - ac - xhat[b, ci, p] * gc)


def _planes(x):
    n, c = x.shape[:2]
    return np.ascontiguousarray(x, np.float32).reshape(n, c, -1)


def batchnorm2d_forward(x, gamma, beta, eps):
    """Training mode: x (N, C, H, W) -> (y, xhat, mean, var), y and xhat (N, C, H, W)
    float32, the batch's mean and biased var (C,) float64."""
    u = _planes(x)
    c = u.shape[1]
    m = u.shape[0] * u.shape[2]
    s1, s2 = np.empty(c), np.empty(c)
    _channel_sums(u, u, np.zeros(c), s1, s2)
    mean = s1 / m
    _channel_sums(u, u, mean, s1, s2)
    var = s2 / m
    inv = 1.0 / np.sqrt(var + eps)
    xhat = np.empty_like(u)
    _affine(u, inv, -mean * inv, xhat)
    y = np.empty_like(u)
    _affine(xhat, np.asarray(gamma, np.float64), np.asarray(beta, np.float64), y)
    return y.reshape(x.shape), xhat.reshape(x.shape), mean, var


def batchnorm2d_infer(x, gamma, beta, mean, var, eps):
    """Inference mode, the running (C,) ``mean`` and ``var``: (N, C, H, W) float32."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    u = _planes(x)
    y = np.empty_like(u)
    _affine(u, scale, shift, y)
    return y.reshape(x.shape)


def batchnorm2d_backward(dy, xhat, gamma, var, eps, dgamma, dbeta, need_dx=True):
    """Writes dgamma, dbeta (C,); returns dx (N, C, H, W) float32 (None without
    ``need_dx``)."""
    d, xh = _planes(dy), _planes(xhat)
    c = d.shape[1]
    m = d.shape[0] * d.shape[2]
    db, dg = np.empty(c), np.empty(c)
    _channel_sums(d, xh, np.zeros(c), db, dg)  # sum dy, sum dy xhat
    dgamma[...] = dg
    dbeta[...] = db
    if not need_dx:
        return None
    k = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    dx = np.empty_like(d)
    _bn_dx(d, xh, k, db / m, dg / m, dx)
    return dx.reshape(dy.shape)
