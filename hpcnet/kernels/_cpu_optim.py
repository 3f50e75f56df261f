"""The optimizers' update rules as fused Numba passes over the flat vectors (CPU
backend): one pass instead of NumPy's several and their temporaries. The rules
themselves, with their sources, are :mod:`hpcnet.optim`; these are their loops.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange


@njit(parallel=True, cache=True, fastmath=True)
def _sgd_momentum(params, grads, velocity, lr, momentum, weight_decay):  # pragma: no cover
    for i in prange(params.size):
        g = grads[i] + weight_decay * params[i]
        grads[i] = g
        v = momentum * velocity[i] + g
        velocity[i] = v
        params[i] -= lr * v


def sgd_momentum_update(params, grads, velocity, lr, momentum, weight_decay=0.0):
    """One SGD-with-momentum step on the flat vectors, in one pass, in place.

    The same update as :class:`hpcnet.optim.sgd.SGD` (PyTorch's convention: ``g += wd p;
    v = m v + g; p -= lr v``; ``grads`` becomes the decayed gradient), for an
    optimizer to call: NumPy needs four passes and a temporary (measured here, 2conv's
    3.3 M parameters, one thread: 9.0 ms against 3.8 ms).

    Args:
        params, grads, velocity: (n_params,) float32, C-contiguous, updated in place.
        lr, momentum, weight_decay: floats.
    """
    f32 = np.float32
    _sgd_momentum(params, grads, velocity, f32(lr), f32(momentum), f32(weight_decay))


# error_model="numpy": a float division by zero gives inf as IEEE says instead of
# raising, so LLVM may vectorise the loop (sqrt and division stay exactly rounded: the
# results are the same bits; 3.6x faster at 270 K floats, 8x at 3.27 M, AVX2)
@njit(cache=True, fastmath=False, error_model="numpy")
def _adagrad(params, grads, accum, lr, eps, zero):  # pragma: no cover - compiled
    for i in range(params.size):
        g = grads[i]
        a = accum[i] + g * g
        accum[i] = a
        params[i] -= lr * g / (np.sqrt(a) + eps)
        if zero:  # the shard's fused apply-and-empty of an inbox slot
            grads[i] = 0.0


def adagrad_update(params, grads, accum, lr, eps):
    """One Adagrad step on the flat vectors, in one pass, in place.

    The update of :class:`hpcnet.optim.adagrad.Adagrad` (Duchi, Hazan & Singer 2011):
    ``a += g * g; p -= lr * g / (sqrt(a) + eps)``, element by element in float32.
    Serial and without fastmath: IEEE float32 arithmetic in the formula's order.

    Args:
        params, grads, accum: (n_params,) float32, C-contiguous; ``params`` and
            ``accum`` are updated in place, ``grads`` is only read.
        lr, eps: floats.
    """
    f32 = np.float32
    _adagrad(params, grads, accum, f32(lr), f32(eps), False)


def adagrad_update_zero(params, grads, accum, lr, eps):
    """:func:`adagrad_update`, then ``grads[:] = 0``, in the same single pass: a
    parameter shard applies a push from its inbox slot and empties the slot while
    the slot is still in cache (one pass over 3 * 4 n bytes + 4 n written instead of
    two; the same float32 arithmetic, so the result equals the unfused pair exactly).

    Args:
        params, grads, accum: (n_params,) float32, C-contiguous, updated in place;
            ``grads`` is all zeros afterwards.
        lr, eps: floats.
    """
    f32 = np.float32
    _adagrad(params, grads, accum, f32(lr), f32(eps), True)


@njit(cache=True, fastmath=False)
def _sgd_zero(params, grads, lr):  # pragma: no cover - compiled
    for i in range(params.size):
        params[i] -= lr * grads[i]
        grads[i] = 0.0


def sgd_update_zero(params, grads, lr):
    """Plain SGD ``p -= lr * g``, then ``grads[:] = 0``, in one pass (a shard's apply
    of a push and the emptying of its inbox slot; the same float32 arithmetic as
    NumPy's ``params -= float32(lr) * grads``).

    Args:
        params, grads: (n_params,) float32, C-contiguous, updated in place; ``grads``
            is all zeros afterwards.
        lr: float.
    """
    _sgd_zero(params, grads, np.float32(lr))
