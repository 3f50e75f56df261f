"""Compile the kernels a run needs once per node, before training starts.

Numba compiles a kernel at its first call and, with ``cache=True``, stores the
machine code on disk. When every rank of a node makes that first call at once,
each compiles the same kernels on the same cores (4 ranks on 2 cores: ~85 s of
silence before the first step). Instead, one rank per node runs one tiny
training step of the run's model (forward, backward, the optimizer's and the
shards' update kernels) while the node's other ranks sleep; then they run the
same step, which loads every kernel from the cache in milliseconds. Training
throughput then measures training, not compilation.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Deadlines, node_leader_first

# Seconds into the warm-up after which rank 0 says that kernels are being compiled.
NOTICE_AFTER_S = 1.0


def _one_step(model, backend) -> None:
    """One forward/backward pass (training and inference mode) of ``model`` on 2 blank
    samples, and one call of each update kernel; the model's parameters are kept."""
    from hpcnet.optim.adagrad import Adagrad
    from hpcnet.optim.sgd import SGD

    saved = model.params.copy()
    x = np.zeros((2, *model.input_shape), np.float32)  # (N, C, H, W), as the loader gives
    y = np.zeros(2, np.int64)
    model.loss_and_grad(x, y, backend, train=True)
    model.evaluate(x, y, backend)
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    SGD(4, momentum=0.9).step(p, g, 0.1)
    Adagrad(4).step(p, g, 0.1)
    model.params[:] = saved
    model.grads[:] = 0


def compile_kernels(
    model, backend, comm: MPI.Intracomm, say: bool, timeout: float = Deadlines.compile
) -> float:
    """Compiles (or loads from Numba's cache) every kernel one training step of ``model``
    calls, one rank per node first. Collective over ``comm``.

    Args:
        model: a :class:`~hpcnet.nn.model.Model` like the run's (not the run's own: with
            the cuda backend a step binds a model to the GPU); its parameters are kept.
        backend: the run's compute backend.
        comm: the run's communicator.
        say: print one line when the compile takes longer than :data:`NOTICE_AFTER_S`
            (a first run; rank 0 only should).
        timeout: seconds the node's other ranks wait for its first rank
            (:attr:`hpcnet.comm.Deadlines.compile`).
    Returns:
        Seconds this rank spent, in its own step and waiting for its node's first rank.
    """
    t0 = time.perf_counter()
    # the notice only when it is true: a warm cache loads every kernel in well under this
    notice = threading.Timer(
        NOTICE_AFTER_S, print, ("hpcnet: compiling kernels (first run only) ...",), {"flush": True}
    )
    if say:
        notice.start()
    try:
        node_leader_first(lambda: _one_step(model, backend), comm, timeout, "kernel compilation")
    finally:
        notice.cancel()
    return time.perf_counter() - t0
