"""Adagrad on the flat parameter vector."""

from __future__ import annotations

import numpy as np


class Adagrad:
    """Adagrad (Duchi, Hazan & Singer 2011, "Adaptive Subgradient Methods for Online
    Learning and Stochastic Optimization", diagonal version), in place: a
    per-parameter learning rate ``lr / sqrt(sum of squared gradients)``::

        a <- a + g * g
        p <- p - lr * g / (sqrt(a) + eps)

    DistBelief's Downpour applies it at the parameter shards (Dean et al. 2012,
    sec. 4.1): each shard keeps the accumulators of its own slice.

    Args:
        n_params: length of the flat vectors.
        eps: added to ``sqrt(a)`` so the first steps stay finite.
        initial_accumulator: start value of every ``a`` (TensorFlow's default 0.1,
            which tames the first steps).
    """

    def __init__(self, n_params: int, eps: float = 1e-8, initial_accumulator: float = 0.1):
        self.accum = np.full(n_params, initial_accumulator, np.float32)
        self.eps = np.float32(eps)

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Updates ``params`` ((n,) float32) and the accumulators in place from
        ``grads`` ((n,) float32, unchanged); float32 throughout, one fused pass."""
        from hpcnet.kernels.cpu import adagrad_update

        adagrad_update(params, grads, self.accum, lr, self.eps)

    def step_and_zero(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """:meth:`step`, then ``grads[:] = 0``, in one fused pass (a parameter shard
        applying a push and emptying its inbox slot; the same result as the pair)."""
        from hpcnet.kernels.cpu import adagrad_update_zero

        adagrad_update_zero(params, grads, self.accum, lr, self.eps)
