"""Winograd convolution of the CPU backend: F(2x2, 5x5) and F(4x4, 3x3), stride 1.

Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), eq. (8):
an m x m output tile of an r x r filter over an a x a input tile (a = m + r - 1 = 6 for
both variants here) is

    Y = A^T [ (G g G^T) (.) (B^T d B) ] A,

and summing over input channels before the output transform turns the element-wise
product into a^2 = 36 independent GEMMs, one per tile position:
``M[p] = V[p] @ U[p]`` with V (T tiles, C) and U (C, O). Per output pixel that is
a^2 / m^2 multiplies per channel pair instead of r^2: 9 against 25 for 5x5 filters,
2.25 against 9 for 3x3. The backward pass is the adjoint of each linear step:
``dM = A dY A^T``, ``dV[p] = dM[p] @ U[p]^T``, ``dU[p] = V[p]^T @ dM[p]``,
``dd = B dV B^T`` (overlapping tiles add up) and ``dg = G^T dU G``.

The transform matrices come from the Toom-Cook construction on the points
0, 1, -1, 2, -2 and infinity (:func:`winograd_matrices`): the same points as the
F(4x4, 3x3) of cuDNN and oneDNN, accurate to ~1e-6 of the output's magnitude in
float32. Layouts: the padded input is channels-last (N, Hp, Wp, C) so one tile
position of one tile is C contiguous floats; V, M and their gradients are
(a*a, T, C or O), one contiguous matrix per position for the GEMMs.
"""

from __future__ import annotations

from functools import cache

import numpy as np
from numba import njit

ALPHA = 6  # input tile size a = m + r - 1 of both variants
TILE_FOR_KERNEL = {3: 4, 5: 2}  # r -> m


@cache
def winograd_matrices(m: int, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 1-D transforms of F(m, r) (Lavin & Gray 2016, section 4; Toom-Cook).

    A^T (m, a) evaluates at the points 0, 1, -1, 2, -2, ... and infinity; G (a, r)
    evaluates the filter there, divided by the Lagrange denominators; B^T (a, a) is
    the unique matrix with ``A^T [(G g) (.) (B^T d)] = correlate(d, g)`` for every g,
    d, solved for in float64 and checked exact to 1e-12.

    Returns:
        (AT, G, BT) float32, shapes (m, a), (a, r), (a, a) with a = m + r - 1.
    Raises:
        ValueError: a > 8 (no points chosen for it).
    """
    a = m + r - 1
    finite = [0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5][: a - 1]
    if len(finite) < a - 1:
        raise ValueError(f"Winograd F({m}, {r}): input tile {a} > 8 has no points here")
    at = np.zeros((m, a))
    g = np.zeros((a, r))
    for j, p in enumerate(finite):
        denom = np.prod([p - q for q in finite if q != p])
        at[:, j] = [p**i for i in range(m)]
        g[j] = [p**k / denom for k in range(r)]
    at[m - 1, a - 1] = 1.0  # the point at infinity: leading coefficients
    g[a - 1, r - 1] = 1.0
    # y_i = sum_j AT[i,j] (sum_k G[j,k] g_k) (sum_t BT[j,t] d_t) = sum_k g_k d_{i+k}:
    # linear in BT, one equation per (i, k, t)
    rows, rhs = [], []
    for i in range(m):
        for k in range(r):
            for t in range(a):
                coef = np.zeros((a, a))
                coef[:, t] = at[i] * g[:, k]
                rows.append(coef.reshape(-1))
                rhs.append(1.0 if t == i + k else 0.0)
    sol, *_ = np.linalg.lstsq(np.array(rows), np.array(rhs), rcond=None)
    bt = sol.reshape(a, a)
    err = np.abs(np.array(rows) @ sol - np.array(rhs)).max()
    if err > 1e-12:  # pragma: no cover - a wrong construction, not an input error
        raise AssertionError(f"Winograd F({m}, {r}): B^T not exact ({err:.1e})")
    bt[np.abs(bt) < 1e-12] = 0.0
    return at.astype(np.float32), g.astype(np.float32), bt.astype(np.float32)


def tiles(size: int, m: int) -> int:
    """Output tiles of m along an axis of ``size`` output pixels (the last may stick out)."""
    return -(-size // m)


@njit(nogil=True, cache=True)
def pad_nhwc(x, pad, xp):  # pragma: no cover - compiled
    """x (N, C, H, W) -> xp (N, Hp, Wp, C): x at offset (pad, pad), zeros elsewhere
    (Hp, Wp may exceed H + 2 pad: the border of the last, partial tiles)."""
    n, c, h, w = x.shape
    hp, wp = xp.shape[1], xp.shape[2]
    for b in range(n):
        for i in range(hp):
            ii = i - pad
            for j in range(wp):
                jj = j - pad
                if ii < 0 or ii >= h or jj < 0 or jj >= w:
                    xp[b, i, j, :] = 0.0
                else:
                    for ci in range(c):
                        xp[b, i, j, ci] = x[b, ci, ii, jj]


# The transforms below are written out for the points 0, 1, -1, 2, -2, infinity (the
# matrices of winograd_matrices(2, 5) and (4, 3); tests check them against it): each
# inner loop runs over channels with straight-line arithmetic, which LLVM vectorizes.
# Loops over the 6 tile positions with the matrices as arrays ran 4-5x slower (9 ms
# against 2 for the input transform of 2conv's second convolution).


@njit(nogil=True, cache=True)
def input_transform(xp, m, th, tw, v, t0):  # pragma: no cover - compiled
    """V[r*6 + q, t0 + t, :] = (B^T d B)[r, q] for the 6 x 6 input tile d of every tile
    t = (b*th + ti)*tw + tj of xp (N, Hp, Wp, C), d's corner at (ti*m, tj*m);
    v (36, T, C) contiguous (a column slice of it would not be: Numba does not
    vectorize loops over arrays of unknown strides, 2.5x slower)."""
    n, _, _, c = xp.shape
    tmp = np.empty((6, 6, c), np.float32)  # rows of d times B
    for b in range(n):
        for ti in range(th):
            for tj in range(tw):
                t = t0 + (b * th + ti) * tw + tj
                i0, j0 = ti * m, tj * m
                for i in range(6):
                    for ci in range(c):
                        d0 = xp[b, i0 + i, j0, ci]
                        d1 = xp[b, i0 + i, j0 + 1, ci]
                        d2 = xp[b, i0 + i, j0 + 2, ci]
                        d3 = xp[b, i0 + i, j0 + 3, ci]
                        d4 = xp[b, i0 + i, j0 + 4, ci]
                        d5 = xp[b, i0 + i, j0 + 5, ci]
                        tmp[i, 0, ci] = 4.0 * d0 - 5.0 * d2 + d4
                        tmp[i, 1, ci] = d3 + d4 - 4.0 * (d1 + d2)
                        tmp[i, 2, ci] = 4.0 * (d1 - d2) - d3 + d4
                        tmp[i, 3, ci] = 2.0 * (d3 - d1) - d2 + d4
                        tmp[i, 4, ci] = 2.0 * (d1 - d3) - d2 + d4
                        tmp[i, 5, ci] = 4.0 * d1 - 5.0 * d3 + d5
                for q in range(6):
                    for ci in range(c):
                        d0 = tmp[0, q, ci]
                        d1 = tmp[1, q, ci]
                        d2 = tmp[2, q, ci]
                        d3 = tmp[3, q, ci]
                        d4 = tmp[4, q, ci]
                        d5 = tmp[5, q, ci]
                        v[q, t, ci] = 4.0 * d0 - 5.0 * d2 + d4
                        v[6 + q, t, ci] = d3 + d4 - 4.0 * (d1 + d2)
                        v[12 + q, t, ci] = 4.0 * (d1 - d2) - d3 + d4
                        v[18 + q, t, ci] = 2.0 * (d3 - d1) - d2 + d4
                        v[24 + q, t, ci] = 2.0 * (d1 - d3) - d2 + d4
                        v[30 + q, t, ci] = 4.0 * d1 - 5.0 * d3 + d5


@njit(nogil=True, cache=True)
def input_transform_adjoint(dv, m, th, tw, pad, dxp, dx):  # pragma: no cover - compiled
    """The adjoint of :func:`input_transform` and :func:`pad_nhwc`: every tile's
    B dV B^T is added into dxp (N, Hp, Wp, C) at its place (tiles overlap; one sample
    at a time), then the inside of dxp is written to dx
    (N, C, H, W)."""
    n, hp, wp, c = dxp.shape
    h, w = dx.shape[2], dx.shape[3]
    tmp = np.empty((6, 6, c), np.float32)  # B times columns of dV
    for b in range(n):
        dxp[b] = 0.0
        for ti in range(th):
            for tj in range(tw):
                t = (b * th + ti) * tw + tj
                for q in range(6):
                    for ci in range(c):
                        g0 = dv[q, t, ci]
                        g1 = dv[6 + q, t, ci]
                        g2 = dv[12 + q, t, ci]
                        g3 = dv[18 + q, t, ci]
                        g4 = dv[24 + q, t, ci]
                        g5 = dv[30 + q, t, ci]
                        tmp[0, q, ci] = 4.0 * g0
                        tmp[1, q, ci] = 4.0 * (g2 + g5 - g1) + 2.0 * (g4 - g3)
                        tmp[2, q, ci] = -5.0 * g0 - 4.0 * (g1 + g2) - g3 - g4
                        tmp[3, q, ci] = g1 - g2 + 2.0 * (g3 - g4) - 5.0 * g5
                        tmp[4, q, ci] = g0 + g1 + g2 + g3 + g4
                        tmp[5, q, ci] = g5
                i0, j0 = ti * m, tj * m
                for i in range(6):
                    for ci in range(c):
                        g0 = tmp[i, 0, ci]
                        g1 = tmp[i, 1, ci]
                        g2 = tmp[i, 2, ci]
                        g3 = tmp[i, 3, ci]
                        g4 = tmp[i, 4, ci]
                        g5 = tmp[i, 5, ci]
                        dxp[b, i0 + i, j0, ci] += 4.0 * g0
                        dxp[b, i0 + i, j0 + 1, ci] += 4.0 * (g2 + g5 - g1) + 2.0 * (g4 - g3)
                        dxp[b, i0 + i, j0 + 2, ci] += -5.0 * g0 - 4.0 * (g1 + g2) - g3 - g4
                        dxp[b, i0 + i, j0 + 3, ci] += g1 - g2 + 2.0 * (g3 - g4) - 5.0 * g5
                        dxp[b, i0 + i, j0 + 4, ci] += g0 + g1 + g2 + g3 + g4
                        dxp[b, i0 + i, j0 + 5, ci] += g5
        for ci in range(c):
            for i in range(h):
                for j in range(w):
                    dx[b, ci, i, j] = dxp[b, pad + i, pad + j, ci]


@njit(nogil=True, cache=True)
def output_transform(mm, m, th, tw, bias, y):  # pragma: no cover - compiled
    """y[b, :, ti*m + i, tj*m + j] = (A^T M A)[i, j] + bias for every tile
    t = (b*th + ti)*tw + tj of mm (36, T, O) (m = 2 or 4), pixels past (OH, OW) of
    y (N, O, OH, OW) dropped.

    Plain indexing only: views made in the loop (one per row of M) cost a reference
    count each, more than the arithmetic."""
    n, o, oh, ow = y.shape
    tmp = np.empty((m, 6, o), np.float32)  # A^T times columns of M
    out = np.empty((m, m, o), np.float32)  # the tile, transposed
    for b in range(n):
        for ti in range(th):
            for tj in range(tw):
                t = (b * th + ti) * tw + tj
                for q in range(6):
                    for oc in range(o):
                        s0 = mm[q, t, oc]
                        s1 = mm[6 + q, t, oc]
                        s2 = mm[12 + q, t, oc]
                        s3 = mm[18 + q, t, oc]
                        s4 = mm[24 + q, t, oc]
                        s5 = mm[30 + q, t, oc]
                        p12, n12, p34, n34 = s1 + s2, s1 - s2, s3 + s4, s3 - s4
                        tmp[0, q, oc] = s0 + p12 + p34
                        if m == 2:
                            tmp[1, q, oc] = n12 + 2.0 * n34 + s5
                        else:
                            tmp[1, q, oc] = n12 + 2.0 * n34
                            tmp[2, q, oc] = p12 + 4.0 * p34
                            tmp[3, q, oc] = n12 + 8.0 * n34 + s5
                for i in range(m):
                    for oc in range(o):
                        s0 = tmp[i, 0, oc]
                        s1 = tmp[i, 1, oc]
                        s2 = tmp[i, 2, oc]
                        s3 = tmp[i, 3, oc]
                        s4 = tmp[i, 4, oc]
                        s5 = tmp[i, 5, oc]
                        p12, n12, p34, n34 = s1 + s2, s1 - s2, s3 + s4, s3 - s4
                        out[0, i, oc] = s0 + p12 + p34
                        if m == 2:
                            out[1, i, oc] = n12 + 2.0 * n34 + s5
                        else:
                            out[1, i, oc] = n12 + 2.0 * n34
                            out[2, i, oc] = p12 + 4.0 * p34
                            out[3, i, oc] = n12 + 8.0 * n34 + s5
                hi, wj = min(m, oh - ti * m), min(m, ow - tj * m)
                for oc in range(o):
                    bo = bias[oc]
                    for i in range(hi):
                        for j in range(wj):
                            y[b, oc, ti * m + i, tj * m + j] = out[j, i, oc] + bo


@njit(nogil=True, cache=True)
def output_transform_adjoint(dy, m, th, tw, dm):  # pragma: no cover - compiled
    """The adjoint of :func:`output_transform` (without the bias): dM = A dY A^T per
    tile of dy (N, O, OH, OW), pixels past (OH, OW) taken as zero; dm (36, T, O)."""
    n, o, oh, ow = dy.shape
    dt = np.zeros((4, 4, o), np.float32)  # the tile of dY, channels last
    tmp = np.empty((4, 6, o), np.float32)  # rows of dY times A^T
    for b in range(n):
        for ti in range(th):
            for tj in range(tw):
                t = (b * th + ti) * tw + tj
                hi, wj = min(m, oh - ti * m), min(m, ow - tj * m)
                if hi < m or wj < m:
                    dt[:] = 0.0
                for oc in range(o):
                    for i in range(hi):
                        for j in range(wj):
                            dt[i, j, oc] = dy[b, oc, ti * m + i, tj * m + j]
                for i in range(m):  # tmp[i, :] = A dY[i, :]
                    for oc in range(o):
                        y0 = dt[i, 0, oc]
                        y1 = dt[i, 1, oc]
                        if m == 2:
                            tmp[i, 0, oc] = y0
                            tmp[i, 1, oc] = y0 + y1
                            tmp[i, 2, oc] = y0 - y1
                            tmp[i, 3, oc] = y0 + 2.0 * y1
                            tmp[i, 4, oc] = y0 - 2.0 * y1
                            tmp[i, 5, oc] = y1
                        else:
                            y2 = dt[i, 2, oc]
                            y3 = dt[i, 3, oc]
                            e, f = y0 + y2, y1 + y3
                            g, h = y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3
                            tmp[i, 0, oc] = y0
                            tmp[i, 1, oc] = e + f
                            tmp[i, 2, oc] = e - f
                            tmp[i, 3, oc] = g + h
                            tmp[i, 4, oc] = g - h
                            tmp[i, 5, oc] = y3
                for q in range(6):  # dM[:, q] = A tmp[:, q]
                    for oc in range(o):
                        y0 = tmp[0, q, oc]
                        y1 = tmp[1, q, oc]
                        if m == 2:
                            dm[q, t, oc] = y0
                            dm[6 + q, t, oc] = y0 + y1
                            dm[12 + q, t, oc] = y0 - y1
                            dm[18 + q, t, oc] = y0 + 2.0 * y1
                            dm[24 + q, t, oc] = y0 - 2.0 * y1
                            dm[30 + q, t, oc] = y1
                        else:
                            y2 = tmp[2, q, oc]
                            y3 = tmp[3, q, oc]
                            e, f = y0 + y2, y1 + y3
                            g, h = y0 + 4.0 * y2, 2.0 * y1 + 8.0 * y3
                            dm[q, t, oc] = y0
                            dm[6 + q, t, oc] = e + f
                            dm[12 + q, t, oc] = e - f
                            dm[18 + q, t, oc] = g + h
                            dm[24 + q, t, oc] = g - h
                            dm[30 + q, t, oc] = y3


def filter_transform(w: np.ndarray, g: np.ndarray) -> np.ndarray:
    """U[p*a + q, c, o] = sum_{k,l} G[p,k] w[o,c,k,l] G[q,l]: w (O, C, r, r) float32 ->
    (a*a, C, O) float32, contiguous."""
    a = g.shape[0]
    u = np.einsum("pk,ockl,ql->pqco", g, w, g, optimize=True)
    return np.ascontiguousarray(u, dtype=np.float32).reshape(a * a, w.shape[1], w.shape[0])


def filter_transform_adjoint(du: np.ndarray, g: np.ndarray, out: np.ndarray) -> None:
    """dw[o,c,k,l] = sum_{p,q} G[p,k] dU[p*a + q, c, o] G[q,l], written into ``out``
    (O, C, r, r); du (a*a, C, O)."""
    a = g.shape[0]
    du4 = du.reshape(a, a, du.shape[1], du.shape[2])
    out[...] = np.einsum("pk,pqco,ql->ockl", g, du4, g, optimize=True)
