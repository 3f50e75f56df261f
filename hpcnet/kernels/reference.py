"""Plain-NumPy reference kernels: the test oracle for every backend.

Slow and obvious on purpose: loops and ``einsum`` over explicit windows, no
im2col, no Numba. Same names and signatures as :mod:`hpcnet.kernels.cpu`
(gradients of parameters are written into the ``dw``/``db`` arrays passed in).
"""

from __future__ import annotations

import numpy as np


def conv_out_size(size: int, k: int, stride: int, pad: int) -> int:
    """Output length of a convolution or pooling window along one axis."""
    return (size + 2 * pad - k) // stride + 1


def conv2d_forward(x, w, b, stride, pad, groups=1):
    """Cross-correlation ``y[n,o] = sum_c,i,j w[o,c,i,j] x[n,g*C/G+c,s*h+i-p,s*w+j-p] + b[o]``.

    With ``groups = G`` the C input and O output channels are split into G equal
    groups and output group g sees only input group g (AlexNet's conv 2, 4, 5 ran
    as two groups, one per GPU: Krizhevsky et al. 2012, sec. 3.2 and 3.5).

    Args:
        x: (N, C, H, W) float32. w: (O, C/G, K, K) float32. b: (O,) float32.
        stride, pad: ints, the same on both spatial axes. groups: G, divides C and O.
    Returns:
        (y, cache): y (N, O, OH, OW) float32; cache for :func:`conv2d_backward`.
    """
    n, c, h, wd = x.shape
    o, cg, k, _ = w.shape
    og = o // groups
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, o, oh, ow), np.float64)
    for g in range(groups):
        xg, wg = xp[:, g * cg : (g + 1) * cg], w[g * og : (g + 1) * og]
        for i in range(k):
            for j in range(k):
                patch = xg[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
                y[:, g * og : (g + 1) * og] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    y += b[None, :, None, None]
    return y.astype(np.float32), xp


def conv2d_backward(dy, x_shape, cache, w, stride, pad, dw, db, groups=1, need_dx=True):
    """Gradients of :func:`conv2d_forward`; writes ``dw`` (O,C/G,K,K) and ``db`` (O,).

    Returns:
        dx: (N, C, H, W) float32; None when ``need_dx`` is False (the first layer's
        input gradient, which nothing uses).
    """
    xp = cache
    n, c, h, wd = x_shape
    o, cg, k, _ = w.shape
    og = o // groups
    oh, ow = dy.shape[2], dy.shape[3]
    dxp = np.zeros(xp.shape, np.float64)
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for i in range(k):
            for j in range(k):
                sl = (
                    slice(None),
                    cs,
                    slice(i, i + stride * oh, stride),
                    slice(j, j + stride * ow, stride),
                )
                dw[os_, :, i, j] = np.einsum("nchw,nohw->oc", xp[sl], dy[:, os_])
                dxp[sl] += np.einsum("nohw,oc->nchw", dy[:, os_], w[os_, :, i, j])
    db[...] = dy.sum(axis=(0, 2, 3))
    if not need_dx:
        return None
    return dxp[:, :, pad : pad + h, pad : pad + wd].astype(np.float32)


def conv2d_release(cache) -> None:
    """Frees a forward's cache that no backward will use (nothing to do here)."""


def maxpool2d_forward(x, k, stride):
    """Max over k x k windows with the given stride (windows overlap when stride < k).

    Returns:
        (y, argmax): y (N, C, OH, OW) float32; argmax (N, C, OH, OW) int64, the
        flat index ``h * W + w`` of the winning input inside its (H, W) plane
        (the first maximum in row-major window order wins ties).
    """
    n, c, h, wd = x.shape
    oh, ow = conv_out_size(h, k, stride, 0), conv_out_size(wd, k, stride, 0)
    y = np.empty((n, c, oh, ow), np.float32)
    arg = np.empty((n, c, oh, ow), np.int64)
    for i in range(oh):
        for j in range(ow):
            win = x[:, :, i * stride : i * stride + k, j * stride : j * stride + k].reshape(
                n, c, -1
            )
            a = win.argmax(axis=2)
            y[:, :, i, j] = np.take_along_axis(win, a[..., None], 2)[..., 0]
            arg[:, :, i, j] = (i * stride + a // k) * wd + (j * stride + a % k)
    return y, arg


def maxpool2d_backward(dy, argmax, x_shape):
    """Routes each output gradient to its window's argmax (summing where windows overlap)."""
    n, c, h, wd = x_shape
    dx = np.zeros((n, c, h * wd), np.float32)
    for a in range(n):
        for b in range(c):
            np.add.at(dx[a, b], argmax[a, b].ravel(), dy[a, b].ravel())
    return dx.reshape(x_shape)


def relu_forward(x):
    """max(x, 0), elementwise."""
    return np.maximum(x, 0).astype(np.float32)


def relu_backward(dy, y):
    """dy where the forward output was positive, else 0."""
    return (dy * (y > 0)).astype(np.float32)


ACTIVATIONS = ("leaky_relu", "tanh", "sigmoid")


def activation_forward(x, kind, alpha=0.0):
    """An elementwise activation of ``x`` (any shape, float32): ``leaky_relu`` (x for
    x > 0, else ``alpha`` x; Maas et al. 2013), ``tanh``, or ``sigmoid`` (1 / (1 +
    exp(-x)), computed without overflow for either sign)."""
    x64 = x.astype(np.float64)
    if kind == "leaky_relu":
        y = np.where(x64 > 0, x64, alpha * x64)
    elif kind == "tanh":
        y = np.tanh(x64)
    elif kind == "sigmoid":
        e = np.exp(-np.abs(x64))
        y = np.where(x64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    else:
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}")
    return y.astype(np.float32)


def activation_backward(dy, y, kind, alpha=0.0):
    """The gradient of :func:`activation_forward` from its output ``y``: dy times 1 or
    ``alpha`` (leaky ReLU, 0 <= alpha < 1, so y > 0 exactly where x > 0), ``1 - y**2``
    (tanh), ``y (1 - y)`` (sigmoid)."""
    y64 = y.astype(np.float64)
    if kind == "leaky_relu":
        d = np.where(y64 > 0, 1.0, alpha)
    elif kind == "tanh":
        d = 1.0 - y64 * y64
    elif kind == "sigmoid":
        d = y64 * (1.0 - y64)
    else:
        raise ValueError(f"unknown activation {kind!r}; known: {', '.join(ACTIVATIONS)}")
    return (dy * d).astype(np.float32)


def avgpool2d_forward(x, k, stride):
    """Average pooling, k x k windows, no padding: x (N, C, H, W) -> (N, C, OH, OW)
    float32, OH = (H - k) // stride + 1."""
    n, c, h, wd = x.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    y = np.zeros((n, c, oh, ow), np.float64)
    for di in range(k):
        for dj in range(k):
            y += x[
                :,
                :,
                di : di + stride * (oh - 1) + 1 : stride,
                dj : dj + stride * (ow - 1) + 1 : stride,
            ]
    return (y / (k * k)).astype(np.float32)


def avgpool2d_backward(dy, x_shape, k, stride):
    """Each window's dy / k**2 back to every pixel of it (summed where windows overlap)."""
    n, c, oh, ow = dy.shape
    dx = np.zeros(x_shape, np.float64)
    g = dy.astype(np.float64) / (k * k)
    for di in range(k):
        for dj in range(k):
            dx[
                :,
                :,
                di : di + stride * (oh - 1) + 1 : stride,
                dj : dj + stride * (ow - 1) + 1 : stride,
            ] += g
    return dx.astype(np.float32)


def global_avgpool2d_forward(x):
    """The mean of every channel: x (N, C, H, W) -> (N, C) float32."""
    return x.astype(np.float64).mean(axis=(2, 3)).astype(np.float32)


def global_avgpool2d_backward(dy, x_shape):
    """dy (N, C) / (H W) to every pixel of its channel: (N, C, H, W) float32."""
    n, c, h, w = x_shape
    g = dy.astype(np.float64) / (h * w)
    return np.broadcast_to(g[:, :, None, None], x_shape).astype(np.float32)


def batchnorm2d_forward(x, gamma, beta, eps):
    """Batch normalization in training mode (Ioffe and Szegedy 2015, "Batch
    Normalization", Algorithm 1), per channel over the batch and both spatial axes:
    ``y = gamma (x - mean) / sqrt(var + eps) + beta``, var the biased variance.

    Args:
        x: (N, C, H, W) float32. gamma, beta: (C,) float32. eps: added to var.
    Returns:
        (y, xhat, mean, var): y and xhat (the normalized input, kept for the
        backward) (N, C, H, W) float32; the batch's mean and biased var (C,) float64.
    """
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 2, 3))
    var = ((x64 - mean[None, :, None, None]) ** 2).mean(axis=(0, 2, 3))
    xhat = (x64 - mean[None, :, None, None]) / np.sqrt(var + eps)[None, :, None, None]
    y = xhat * gamma[None, :, None, None] + beta[None, :, None, None]
    return y.astype(x.dtype), xhat.astype(x.dtype), mean, var


def batchnorm2d_infer(x, gamma, beta, mean, var, eps):
    """Batch normalization in inference mode: the (C,) running ``mean`` and ``var`` in
    place of the batch's; x (N, C, H, W) -> y, same shape and dtype."""
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(mean, np.float64) * scale
    y = x.astype(np.float64) * scale[None, :, None, None] + shift[None, :, None, None]
    return y.astype(x.dtype)


def batchnorm2d_backward(dy, xhat, gamma, var, eps, dgamma, dbeta, need_dx=True):
    """The gradient of :func:`batchnorm2d_forward` (Ioffe and Szegedy 2015, sec. 3),
    with m = N H W values per channel: ``dbeta = sum dy``, ``dgamma = sum dy xhat``,
    ``dx = gamma / sqrt(var + eps) (dy - dbeta / m - xhat dgamma / m)``.
    ``dgamma``/``dbeta`` (C,) are written; returns dx (N, C, H, W), or None."""
    dy64, xh = dy.astype(np.float64), xhat.astype(np.float64)
    db = dy64.sum(axis=(0, 2, 3))
    dg = (dy64 * xh).sum(axis=(0, 2, 3))
    dgamma[...] = dg
    dbeta[...] = db
    if not need_dx:
        return None
    m = dy.shape[0] * dy.shape[2] * dy.shape[3]
    k = (np.asarray(gamma, np.float64) / np.sqrt(np.asarray(var, np.float64) + eps))[
        None, :, None, None
    ]
    dx = k * (dy64 - db[None, :, None, None] / m - xh * dg[None, :, None, None] / m)
    return dx.astype(dy.dtype)


def lrn_forward(x, size, alpha, beta, k):
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3).

    ``y[n,c,h,w] = x[n,c,h,w] / s[n,c,h,w] ** beta`` with the scale
    ``s[n,c,h,w] = k + alpha * sum_{j = max(0, c - size//2)}^{min(C-1, c + size//2)} x[n,j,h,w]**2``
    (the paper's formula: alpha multiplies the sum itself; Caffe and PyTorch divide
    it by ``size`` first, so their ``alpha`` is ``size`` times ours). The paper's
    values are size = 5, k = 2, alpha = 1e-4, beta = 0.75.

    Args:
        x: (N, C, H, W) float32. size: channels in the window (odd). alpha, beta, k: floats.
    Returns:
        (y, scale): y (N, C, H, W) float32; scale s (N, C, H, W) float32 for the backward.
    """
    c = x.shape[1]
    x64 = x.astype(np.float64)
    sq = x64 * x64
    s = np.empty_like(x64)
    half = size // 2
    for ci in range(c):
        s[:, ci] = k + alpha * sq[:, max(0, ci - half) : min(c, ci + half + 1)].sum(axis=1)
    return (x64 * s**-beta).astype(np.float32), s.astype(np.float32)


def lrn_backward(dy, x, y, scale, size, alpha, beta, k):
    """Gradient of :func:`lrn_forward`; ``y`` and ``scale`` are its outputs.

    ``dx[j] = dy[j] s[j]^-beta - 2 alpha beta x[j] sum_{c: |c-j| <= size//2} dy[c] y[c] / s[c]``
    (the window is symmetric, so channel j is in the window of c iff c is in j's).

    Returns:
        dx: (N, C, H, W) float32.
    """
    c = x.shape[1]
    half = size // 2
    dy64, s = dy.astype(np.float64), scale.astype(np.float64)
    t = dy64 * y.astype(np.float64) / s  # (N, C, H, W)
    acc = np.empty_like(t)
    for ci in range(c):
        acc[:, ci] = t[:, max(0, ci - half) : min(c, ci + half + 1)].sum(axis=1)
    dx = dy64 * s**-beta - 2.0 * alpha * beta * x.astype(np.float64) * acc
    return dx.astype(np.float32)


def dropout_forward(x, mask):
    """Inverted dropout: ``x * mask``; mask (same shape) holds 0 or 1/(1-rate), float32."""
    return (x * mask).astype(np.float32)


def dropout_backward(dy, mask):
    """``dy * mask``, the gradient of :func:`dropout_forward`."""
    return (dy * mask).astype(np.float32)


def add(a, b):
    """a + b elementwise, float32, a new array."""
    return (a.astype(np.float64) + b).astype(np.float32)


def concat_forward(xs):
    """Concatenates (N, C_i, ...) float32 arrays along axis 1 (channels or features)."""
    return np.concatenate(xs, axis=1).astype(np.float32, copy=False)


def concat_backward(dy, sizes):
    """Splits dy (N, sum C_i, ...) along axis 1 into pieces of ``sizes`` channels (copies)."""
    ends = np.cumsum(sizes)
    return [np.ascontiguousarray(dy[:, e - s : e]) for s, e in zip(sizes, ends, strict=True)]


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I), w (O, I), b (O,) -> y (N, O) float32."""
    return (x.astype(np.float64) @ w.T.astype(np.float64) + b).astype(np.float32)


def dense_backward(dy, x, w, dw, db, need_dx=True):
    """Writes dw (O, I) and db (O,); returns dx (N, I) float32 (None without ``need_dx``)."""
    dw[...] = dy.T.astype(np.float64) @ x
    db[...] = dy.sum(axis=0)
    if not need_dx:
        return None
    return (dy.astype(np.float64) @ w).astype(np.float32)


def softmax_xent(logits, labels):
    """Mean softmax cross-entropy over the batch and its gradient.

    Args:
        logits: (N, K) float32. labels: (N,) int64 in [0, K).
    Returns:
        (loss, dlogits): loss a float (mean over N, nats); dlogits (N, K) float32.
    """
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -logp[np.arange(n), labels].mean()
    d = np.exp(logp)
    d[np.arange(n), labels] -= 1.0
    return float(loss), (d / n).astype(np.float32)
