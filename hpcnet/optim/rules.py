"""The update rules by name: what a Downpour parameter shard applies to each push
(``--ps-rule``)."""

from __future__ import annotations

from hpcnet.errors import ConfigError
from hpcnet.optim.adagrad import Adagrad
from hpcnet.optim.sgd import SGD

RULES = ("sgd", "adagrad")


def make_rule(name: str, n: int) -> SGD | Adagrad:
    """The update rule called ``name`` for ``n`` parameters; its ``step(params, grads,
    lr)`` updates ``params`` ((n,) float32) in place.

    ``sgd`` is :class:`~hpcnet.optim.sgd.SGD` without momentum, ``p <- p - lr * g``;
    ``adagrad`` is :class:`~hpcnet.optim.adagrad.Adagrad` (DistBelief, Dean et al.
    2012, sec. 4.1, runs both at its shards).

    Raises:
        ConfigError: unknown name.
    """
    if name == "sgd":
        return SGD(n)
    if name == "adagrad":
        return Adagrad(n)
    raise ConfigError(f"--ps-rule {name!r}: choose one of {', '.join(RULES)}")
