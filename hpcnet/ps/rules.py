"""Update rules a parameter shard applies to the gradients replicas push."""

from __future__ import annotations

import numpy as np
from numba import njit

from hpcnet.errors import ConfigError

RULES = ("sgd", "adagrad")


@njit(cache=True, fastmath=False)
def _adagrad(params, grads, accum, lr, eps):  # pragma: no cover - compiled
    for i in range(params.size):
        g = grads[i]
        a = accum[i] + g * g
        accum[i] = a
        params[i] -= lr * g / (np.sqrt(a) + eps)


class SGDRule:
    """Plain SGD at the shard: ``p <- p - lr * g``."""

    name = "sgd"

    def __init__(self, n: int):
        self.n = n

    def apply(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Updates ``params`` ((n,) float32) in place from ``grads`` ((n,) float32)."""
        params -= np.float32(lr) * grads


class AdagradRule:
    """Adagrad (Duchi, Hazan & Singer 2011; DistBelief sec. 4.1 uses it at the shards):
    per-parameter learning rate ``lr / sqrt(sum of squared gradients)``::

        a <- a + g * g
        p <- p - lr * g / (sqrt(a) + eps)

    The accumulators ``a`` ((n,) float32) live at the shard and start at
    ``initial_accumulator`` (TensorFlow's default 0.1, which tames the first steps).
    """

    name = "adagrad"

    def __init__(self, n: int, eps: float = 1e-8, initial_accumulator: float = 0.1):
        self.accum = np.full(n, initial_accumulator, np.float32)
        self.eps = np.float32(eps)

    def apply(self, params: np.ndarray, grads: np.ndarray, lr: float) -> None:
        """Updates ``params`` and the accumulators in place; float32 throughout."""
        _adagrad(params, grads, self.accum, np.float32(lr), self.eps)


def make_rule(name: str, n: int):
    """The update rule called ``name`` (``sgd`` or ``adagrad``) for ``n`` parameters.

    Raises:
        ConfigError: unknown name.
    """
    if name == "sgd":
        return SGDRule(n)
    if name == "adagrad":
        return AdagradRule(n)
    raise ConfigError(f"--ps-rule {name!r}: choose one of {', '.join(RULES)}")
