"""Synchronous data-parallel SGD: every step, gradients averaged over replicas.

By default one ``Allreduce`` on the whole flat gradient vector per step, after
backward (the fused buffer Horovod calls tensor fusion). With ``--bucket-mb MB``
the vector is cut into buckets of about MB MiB, in the order backward produces
them, and each bucket's allreduce starts as soon as backward has produced it, so
communication overlaps the rest of backward (PyTorch DDP's buckets,
:mod:`hpcnet.comm.buckets`). Either way every replica applies the same update and
the replicas' parameters stay identical.
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcnet.algos.data_parallel import synchronous_algorithm
from hpcnet.algos.registry import only_for, register
from hpcnet.comm import allreduce_mean_, wait_polling
from hpcnet.comm.buckets import BYTES_PER_MB, BucketAllreduce, plan_buckets
from hpcnet.comm.collectives import SPIN_S
from hpcnet.comm.compress import METHODS, CompressedAllreduce, Traffic
from hpcnet.nn.model import Model
from hpcnet.options import Option, rule


class SyncSGD:
    """Gradient averaging policy (:mod:`hpcnet.algos.data_parallel`).

    Args:
        data_comm: the replicas' communicator; every replica calls the hooks at
            every step (same step count everywhere, or the allreduce hangs).
        bucket_mb: MiB per gradient bucket (``--bucket-mb``); 0: one allreduce of
            the whole vector after backward.
        model: the replica's whole model, whose ``grads`` the buckets are views of;
            None: no buckets. A replica split into partitions (``--partitions``)
            passes None and keeps the one allreduce after backward: its gradients
            are packed from the partition's owned ranges (``part.pack``) after a
            backward that exchanges activations with the other partitions, so its
            layers do not finish contiguous ranges of the reduced buffer in order.

    Attributes:
        on_grad_ready: with buckets, the hook to pass to ``Model.loss_and_grad``
            (starts each bucket's allreduce during backward); else None.
        buckets: the :class:`~hpcnet.comm.buckets.BucketAllreduce`, or None.
    """

    name = "sync"

    def __init__(
        self,
        data_comm: MPI.Intracomm,
        bucket_mb: float = 0.0,
        model: Model | None = None,
        compress: str = "none",
    ):
        self.comm = data_comm
        self.allreduces = 0
        self.buckets = None
        self.on_grad_ready = None
        self.traffic = Traffic(compress) if compress != "none" else None
        self.compressor = (
            CompressedAllreduce(compress, data_comm, self.traffic) if self.traffic else None
        )
        if bucket_mb > 0 and model is not None:
            plan = plan_buckets(model.layer_ranges(), model.n_params, int(bucket_mb * BYTES_PER_MB))
            self.buckets = BucketAllreduce(model.grads, plan, data_comm, compressor=self.compressor)
            self.on_grad_ready = self.buckets.grads_ready

    def after_backward(self, grads: np.ndarray) -> None:
        """Averages ``grads`` ((n_params,) float32) over replicas in place. Collective.

        With buckets, ``grads`` must be the model's ``grads`` the buckets view: the
        allreduces backward started are completed (and any it did not start are
        started first, in bucket order)."""
        if self.buckets is None:
            if self.compressor is not None and self.comm.Get_size() > 1:
                req, words = self.compressor.start(grads)
                what = "compressed allreduce of the gradients"
                wait_polling(req, None, what, cap=5e-3, spin=SPIN_S, comm=self.comm)
                self.compressor.finish(grads, words)
            else:
                allreduce_mean_(grads, self.comm)
            self.allreduces += 1
            return
        if not np.shares_memory(grads, self.buckets.grads):
            raise ValueError("SyncSGD with buckets: grads is not the model's gradient vector")
        self.buckets.wait()
        self.allreduces += len(self.buckets.plan)

    def after_step(self, step: int, params: np.ndarray) -> None:
        """Nothing: the replicas already applied the same averaged gradient."""

    def finish(self, params: np.ndarray) -> None:
        """Nothing to reconcile."""

    def resume(self, step: int) -> None:
        """Counters as after ``step`` steps (a resumed run)."""
        self.allreduces = step * (len(self.buckets.plan) if self.buckets else 1)


def _policy(run) -> SyncSGD:
    return SyncSGD(
        run.comms.data_comm,
        run.cfg.algo.bucket_mb,
        run.model if run.part is None else None,
        run.cfg.algo.compress,
    )


register(
    synchronous_algorithm(
        "sync",
        "synchronous SGD: gradients averaged over replicas every step (one Allreduce, or "
        "buckets overlapped with backward: --bucket-mb)",
        _policy,
        options=(
            Option(
                "algo.bucket_mb",
                0.0,
                "sync: MiB per gradient bucket, each allreduced while backward goes on "
                "(0: one allreduce after backward)",
                check=lambda v: v >= 0,
                must="must be >= 0 MiB (0: one allreduce)",
            ),
            Option(
                "algo.compress",
                "none",
                "sync: the gradients' allreduce as 16-bit floats, half the bytes "
                "(hpcnet.comm.compress; summed in float32 at each reduction step)",
                choices=METHODS,
            ),
        ),
    )
)


@rule("hpcnet.algos.sync")
def _buckets_are_syncs(cfg) -> None:
    only_for(cfg, "sync", "algo.bucket_mb", "gradient buckets are sync's")
    only_for(
        cfg,
        "sync",
        "algo.compress",
        "compressed allreduce is sync's (not yet avg's or Downpour's pushes and fetches)",
    )
