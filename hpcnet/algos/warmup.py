"""Compile the kernels a run needs once per node, before training starts.

Numba compiles a kernel at its first call and, with ``cache=True``, stores the
machine code on disk. When every rank of a node makes that first call at once,
each compiles the same kernels on the same cores (4 ranks on 2 cores: ~85 s of
silence before the first step). Instead, a node's first ranks, one per core,
compile while the node's other ranks sleep: the model's layers are dealt out to
them, and each runs the forward and backward of its layers alone on blank inputs
(Numba compiles one kernel on one core, so the layers compile in parallel); one
of them also takes the loss and the update kernels. Then every rank runs one
whole tiny training step, which loads every kernel from the cache in
milliseconds (and compiles whatever the parts missed). Training throughput then
measures training, not compilation.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Deadlines, node_workers_first
from hpcnet.nn.layers import backward_through
from hpcnet.run.phases import phase

N = 2  # samples of the blank batches


def _updates(k: int, backend) -> None:
    """The loss on blank (N, k) logits and one call of each update kernel."""
    from hpcnet.optim.adagrad import Adagrad
    from hpcnet.optim.sgd import SGD

    backend.softmax_xent(np.zeros((N, k), np.float32), np.zeros(N, np.int64))
    p, g = np.zeros(4, np.float32), np.zeros(4, np.float32)
    SGD(4, momentum=0.9).step(p, g, 0.1)
    Adagrad(4).step(p, g, 0.1)


def _batch_for(layer) -> int:
    """Samples enough that the layer's arrays take the compiled path of elementwise ops
    (small arrays go to NumPy: ``hpcnet.kernels.cpu.PARALLEL_MIN_SIZE``), as a training
    or evaluation batch (up to 256 samples) may."""
    from hpcnet.kernels.cpu import PARALLEL_MIN_SIZE

    smallest = min(int(np.prod(layer.in_shape)), int(np.prod(layer.out_shape)))
    return int(min(256, max(N, -(-PARALLEL_MIN_SIZE // max(1, smallest)))))


def _layer(model, i: int, backend) -> None:
    """Layer i of ``model`` alone: forward (training mode) and backward on a blank batch
    of its input shape (:func:`_batch_for` samples), as the model runs it (the first
    layer computes no input gradient)."""
    layer = model.layers[i]
    y = layer.forward(np.zeros((_batch_for(layer), *layer.in_shape), np.float32), backend, True)
    backward_through([layer], np.zeros_like(y), backend, need_dx=i > 0)


def parts(model, backend) -> list[Callable[[], None]]:
    """The pieces of one training step that compile independently: one per layer, in the
    model's order (dealt out round robin, neighbours land on different cores), and the
    loss with the update kernels."""
    out = [lambda i=i: _layer(model, i, backend) for i in range(len(model.layers))]
    out.append(lambda: _updates(model.layers[-1].out_shape[0], backend))
    return out


def _one_step(model, backend) -> None:
    """One forward/backward pass (training and inference mode) of ``model`` on N blank
    samples, and one call of each update kernel; the model's parameters are kept."""
    saved = model.params.copy()
    x = np.zeros((N, *model.input_shape), np.float32)  # (N, C, H, W), as the loader gives
    y = np.zeros(N, np.int64)
    model.loss_and_grad(x, y, backend, train=True)
    model.evaluate(x, y, backend)
    _updates(model.layers[-1].out_shape[0], backend)
    model.params[:] = saved
    model.grads[:] = 0


def compile_kernels(
    model, backend, comm: MPI.Intracomm, say: bool, timeout: float = Deadlines.compile
) -> float:
    """Compiles (or loads from Numba's cache) every kernel one training step of ``model``
    calls: first the node's workers (one per core) compile the step's parts, then every
    rank runs the whole step. Collective over ``comm``.

    Args:
        model: a :class:`~hpcnet.nn.model.Model` like the run's (not the run's own: with
            the cuda backend a step binds a model to the GPU); its parameters are kept.
        backend: the run's compute backend (``cuda``: one worker runs the whole step;
            its kernels are not cached on disk, so the others compile them again).
        comm: the run's communicator.
        say: print a line when the compile takes longer than
            :data:`hpcnet.run.phases.NOTICE_AFTER_S` and one with the count of kernels
            when it ends (a first run; rank 0 only should).
        timeout: seconds the node's ranks wait for its workers
            (:attr:`hpcnet.comm.Deadlines.compile`).
    Returns:
        Seconds this rank spent, compiling and waiting.
    """
    t0 = time.perf_counter()
    before = compiled_kernels()
    what = "compiling kernels (once per machine, then loaded from Numba's cache)"
    with phase(what, say) as status:
        if backend.name == "cpu":
            pieces = parts(model, backend)
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1

            def work(j: int, n: int) -> None:
                for piece in pieces[j::n]:
                    piece()

            node_workers_first(work, comm, cores, timeout, "kernel compilation")
        else:
            node_workers_first(
                lambda j, n: _one_step(model, backend), comm, 1, timeout, "kernel compilation"
            )
        _one_step(model, backend)
        status["done"] = f"{compiled_kernels() - before} kernels ready on rank 0"
    return time.perf_counter() - t0


def compiled_kernels() -> int:
    """How many compiled versions (one per argument types) this process holds of the CPU
    backend's Numba kernels (``numba.njit`` functions of :mod:`hpcnet.kernels`)."""
    import sys

    count = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("hpcnet.kernels._cpu"):
            for obj in vars(module).values():
                if hasattr(obj, "py_func") and hasattr(obj, "signatures"):
                    count += len(obj.signatures)
    return count
