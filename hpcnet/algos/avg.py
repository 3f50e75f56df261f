"""Parameter averaging: each replica takes k local SGD steps, then the replicas'
parameters are averaged with one ``Allreduce``.

This is Deeplearning4j-on-Spark's parameter averaging; with k = the number of
steps in the run it is the one-shot averaging of Zinkevich et al. 2010
("Parallelized Stochastic Gradient Descent"). With plain SGD (no momentum) and
k = 1 it equals synchronous SGD with the total batch, since the average of
``p - lr * g_i`` is ``p - lr * mean(g_i)``. Optimizer state (momentum) stays
local to each replica and is not averaged.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcnet.algos.data_parallel import synchronous_algorithm
from hpcnet.algos.registry import register
from hpcnet.comm import allreduce_mean_
from hpcnet.options import Option


class ParameterAveraging:
    """Averaging policy (:mod:`hpcnet.algos.data_parallel`).

    Args:
        data_comm: the replicas' communicator; every replica calls the hooks at
            the same steps (same step count everywhere, or the allreduce hangs).
        every: k, local steps between averages (>= 1).
    """

    name = "avg"

    def __init__(self, data_comm: MPI.Intracomm, every: int):
        self.comm = data_comm
        self.every = every
        self.allreduces = 0
        self._since = 0

    def after_backward(self, grads: np.ndarray) -> None:
        """Nothing: gradients stay local."""

    def after_step(self, step: int, params: np.ndarray) -> None:
        """Averages ``params`` every ``every`` steps. Collective over ``data_comm``."""
        self._since += 1
        if self._since == self.every:
            self._average(params)

    def finish(self, params: np.ndarray) -> None:
        """Averages once more if local steps were taken since the last average,
        so every replica ends with the same parameters. Collective."""
        if self._since:
            self._average(params)

    def resume(self, step: int) -> None:
        """Counters as after ``step`` steps (a resumed run)."""
        self.allreduces, self._since = divmod(step, self.every)

    def _average(self, params: np.ndarray) -> None:
        allreduce_mean_(params, self.comm)
        self.allreduces += 1
        self._since = 0


register(
    synchronous_algorithm(
        "avg",
        "parameter averaging every --avg-every local steps (Zinkevich et al. 2010)",
        lambda run: ParameterAveraging(run.comms.data_comm, run.cfg.algo.avg_every),
        options=(
            Option(
                "algo.avg_every",
                8,
                "avg: local steps between parameter averages",
                check=lambda v: v >= 1,
                must="must be >= 1",
            ),
        ),
    )
)
