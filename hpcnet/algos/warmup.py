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

import importlib
import os
import time

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Deadlines, node_leader_first

# The modules whose Numba kernels a training step may call (the CPU backend).
KERNEL_MODULES = ("hpcnet.kernels.cpu", "hpcnet.kernels._cpu_conv", "hpcnet.kernels._cpu_optim")


def cold_kernels() -> list[str]:
    """Names of the cached Numba kernels with no on-disk cache index yet (a first run).

    An index on disk does not prove that this CPU's machine code is in it, so this is
    the hint for the "compiling" message, not a guarantee.
    """
    cold = []
    for name in KERNEL_MODULES:
        module = importlib.import_module(name)
        for attr, obj in vars(module).items():
            cache = getattr(obj, "_cache", None)
            index = getattr(getattr(cache, "_cache_file", None), "_index_path", None)
            if index is not None and not os.path.exists(index):
                cold.append(f"{name}.{attr}")
    return cold


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
) -> tuple[float, bool]:
    """Compiles (or loads from Numba's cache) every kernel one training step of ``model``
    calls, one rank per node first. Collective over ``comm``.

    Args:
        model: a :class:`~hpcnet.nn.model.Model` like the run's (not the run's own: with
            the cuda backend a step binds a model to the GPU); its parameters are kept.
        backend: the run's compute backend.
        comm: the run's communicator.
        say: print one line before a first-run compile (rank 0 only should).
        timeout: seconds the node's other ranks wait for its first rank
            (:attr:`hpcnet.comm.Deadlines.compile`).
    Returns:
        (seconds this rank spent, in its own step and waiting; whether a cold cache
        was seen on this rank).
    """
    t0 = time.perf_counter()
    cold = bool(cold_kernels()) if backend.name == "cpu" else False
    if say and cold:
        print("hpcnet: compiling kernels (first run only) ...", flush=True)
    node_leader_first(lambda: _one_step(model, backend), comm, timeout, "kernel compilation")
    return time.perf_counter() - t0, cold
