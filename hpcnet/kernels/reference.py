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


def conv2d_forward(x, w, b, stride, pad):
    """Cross-correlation ``y[n,o] = sum_c,i,j w[o,c,i,j] x[n,c,s*h+i-p,s*w+j-p] + b[o]``.

    Args:
        x: (N, C, H, W) float32. w: (O, C, K, K) float32. b: (O,) float32.
    Returns:
        (y, cache): y (N, O, OH, OW) float32; cache for :func:`conv2d_backward`.
    """
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = conv_out_size(h, k, stride, pad), conv_out_size(wd, k, stride, pad)
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    y = np.zeros((n, o, oh, ow), np.float64)
    for i in range(k):
        for j in range(k):
            patch = xp[:, :, i : i + stride * oh : stride, j : j + stride * ow : stride]
            y += np.einsum("nchw,oc->nohw", patch, w[:, :, i, j])
    y += b[None, :, None, None]
    return y.astype(np.float32), xp


def conv2d_backward(dy, x_shape, cache, w, stride, pad, dw, db):
    """Gradients of :func:`conv2d_forward`; writes ``dw`` (O,C,K,K) and ``db`` (O,).

    Returns:
        dx: (N, C, H, W) float32.
    """
    xp = cache
    n, c, h, wd = x_shape
    o, _, k, _ = w.shape
    oh, ow = dy.shape[2], dy.shape[3]
    dxp = np.zeros(xp.shape, np.float64)
    for i in range(k):
        for j in range(k):
            sl = (
                slice(None),
                slice(None),
                slice(i, i + stride * oh, stride),
                slice(j, j + stride * ow, stride),
            )
            dw[:, :, i, j] = np.einsum("nchw,nohw->oc", xp[sl], dy)
            dxp[sl] += np.einsum("nohw,oc->nchw", dy, w[:, :, i, j])
    db[...] = dy.sum(axis=(0, 2, 3))
    return dxp[:, :, pad : pad + h, pad : pad + wd].astype(np.float32)


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


def dense_forward(x, w, b):
    """y = x w^T + b; x (N, I), w (O, I), b (O,) -> y (N, O) float32."""
    return (x.astype(np.float64) @ w.T.astype(np.float64) + b).astype(np.float32)


def dense_backward(dy, x, w, dw, db):
    """Writes dw (O, I) and db (O,); returns dx (N, I) float32."""
    dw[...] = dy.T.astype(np.float64) @ x
    db[...] = dy.sum(axis=0)
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
