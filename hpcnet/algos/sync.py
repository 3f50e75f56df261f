"""Synchronous data-parallel SGD: every step, gradients averaged over replicas.

One ``Allreduce`` on the whole flat gradient vector per step (the fused buffer
Horovod calls tensor fusion), so every replica applies the same update and
the replicas' parameters stay identical.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcnet.algos.registry import register
from hpcnet.algos.synchronous import synchronous_algorithm
from hpcnet.comm import allreduce_mean_


class SyncSGD:
    """Gradient averaging policy (:mod:`hpcnet.algos.synchronous`).

    Args:
        data_comm: the replicas' communicator; every replica calls the hooks at
            every step (same step count everywhere, or the allreduce hangs).
    """

    name = "sync"

    def __init__(self, data_comm: MPI.Intracomm):
        self.comm = data_comm
        self.allreduces = 0

    def after_backward(self, grads: np.ndarray) -> None:
        """Averages ``grads`` ((n_params,) float32) over replicas in place. Collective."""
        allreduce_mean_(grads, self.comm)
        self.allreduces += 1

    def after_step(self, step: int, params: np.ndarray) -> None:
        """Nothing: the replicas already applied the same averaged gradient."""

    def finish(self, params: np.ndarray) -> None:
        """Nothing to reconcile."""

    def resume(self, step: int) -> None:
        """Counters as after ``step`` steps (a resumed run)."""
        self.allreduces = step


register(
    synchronous_algorithm(
        "sync",
        "synchronous SGD: gradients averaged over replicas every step (one Allreduce)",
        lambda run: SyncSGD(run.comms.data_comm),
    )
)
