"""SGD with momentum and weight decay on the flat parameter vector."""

from __future__ import annotations

import numpy as np


class SGD:
    """Stochastic gradient descent with heavy-ball momentum, in place.

    The update (PyTorch's convention, Sutskever et al. 2013 eq. 1 with the
    learning rate moved outside the velocity)::

        g <- g + weight_decay * p
        v <- momentum * v + g
        p <- p - lr * v

    The synchronous algorithms step it on the averaged gradient; Downpour's parameter
    shards apply it without momentum or weight decay, ``p <- p - lr * g``, to each
    push (Dean et al. 2012, sec. 4.1; :func:`hpcnet.optim.rules.make_rule`).

    Args:
        n_params: length of the flat vectors.
        momentum: in [0, 1); 0 gives plain SGD.
        weight_decay: L2 coefficient (per step, unscaled by batch).
    """

    def __init__(self, n_params: int, momentum: float = 0.0, weight_decay: float = 0.0):
        self.momentum = float(momentum)
        self.weight_decay = float(weight_decay)
        self.velocity = np.zeros(n_params, np.float32) if momentum else None

    def step(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Updates ``params`` ((n,) float32) in place from ``grads`` ((n,) float32).

        ``grads`` is modified when weight decay is on (it becomes the decayed gradient).
        """
        if self.velocity is not None:
            # one fused pass (Numba) instead of NumPy's four and a temporary
            from hpcnet.kernels.cpu import sgd_momentum_update

            sgd_momentum_update(params, grads, self.velocity, lr, self.momentum, self.weight_decay)
            return
        if self.weight_decay:
            grads += np.float32(self.weight_decay) * params
        params -= np.float32(lr) * grads

    def step_and_zero(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """:meth:`step`, then ``grads[:] = 0`` (a parameter shard applying a push and
        emptying its inbox slot): one fused pass for plain SGD, the shards' rule; with
        momentum or weight decay, the step and then the zeroing."""
        if self.velocity is None and not self.weight_decay:
            from hpcnet.kernels.cpu import sgd_update_zero

            sgd_update_zero(params, grads, lr)
            return
        self.step(params, grads, lr)
        grads[:] = 0.0
