"""Bucketed gradient allreduce overlapped with backward (PyTorch DDP's buckets,
Horovod's tensor fusion).

Backward produces the flat gradient vector from its end to its start (the last
layer's gradients first, :func:`hpcnet.nn.layers.backward_through`). A *bucket
plan* cuts the vector into contiguous ranges of about ``bucket_bytes`` each, on
layer boundaries, in that order: bucket 0 ends at ``n_params``. As soon as
backward has produced every gradient of a bucket, :class:`BucketAllreduce` starts a
nonblocking ``Iallreduce(SUM)`` on it, in place; backward goes on, and between
layers ``Testall`` lets MPICH move the outstanding messages (it moves them only while
a rank is inside MPI). After backward, :meth:`BucketAllreduce.wait` completes them
all within the watchdog's ``--timeout`` (a stall names the ranks waited for, as
every collective of :mod:`hpcnet.comm.collectives` does) and scales each bucket by
1/R, as :func:`hpcnet.comm.allreduce_mean_` does.

Bucket i is the same ``Iallreduce`` on every rank whether it starts during backward
or after it, so the overlapped result equals, bit for bit, the same buckets reduced
after backward; against one allreduce of the whole vector MPICH may sum in another
order for another message size (a few ulps).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcnet.comm.waits import Backoff, poll_until

BYTES_PER_MB = 1 << 20  # --bucket-mb counts MiB, as DDP's bucket_cap_mb does
SPIN_S = 0.05  # seconds, as hpcnet.comm.collectives: spin inside MPI first, then sleep


def plan_buckets(
    layer_ranges: list[tuple[int, int]], n_params: int, bucket_bytes: int, itemsize: int = 4
) -> list[tuple[int, int]]:
    """Cuts the flat gradient vector into buckets, in the order backward fills them.

    Whole layers are added to the open bucket, from the last layer back, until it
    holds at least ``bucket_bytes``; then the next bucket opens. A layer larger than
    a bucket is therefore a bucket of its own (never split: its gradients are
    produced at once, so splitting it would start nothing earlier).

    Args:
        layer_ranges: (lo, hi) of each layer's parameters in the flat vector, in any
            order; together they cover [0, n_params) without overlap.
        n_params: length of the flat vector (elements).
        bucket_bytes: the least bytes per bucket (the last, nearest the input, may
            hold less); <= 0: one bucket, the whole vector.
        itemsize: bytes per element (float32: 4).
    Returns:
        [(lo, hi), ...]: bucket 0 ends at ``n_params``, each next one ends where the
        previous starts, the last starts at 0 (empty list for ``n_params`` 0).
    """
    if n_params <= 0:
        return []
    if bucket_bytes <= 0:
        return [(0, n_params)]
    cuts = sorted({lo for lo, hi in layer_ranges if hi > lo} - {0}, reverse=True)
    buckets, hi = [], n_params
    for lo in cuts:  # lo: where a layer starts, from the last layer back
        if (hi - lo) * itemsize >= bucket_bytes:
            buckets.append((lo, hi))
            hi = lo
    buckets.append((0, hi))
    return buckets


class BucketAllreduce:
    """Averages a flat gradient buffer over ``comm`` bucket by bucket, each bucket's
    ``Iallreduce`` started as soon as backward has produced it.

    Per step: :meth:`grads_ready` as backward goes (the hook of
    ``Model.loss_and_grad``), then :meth:`wait`. Collective over ``comm``: every rank
    must run the same steps with the same plan (the buckets start in plan order
    everywhere, whatever the timing), or an ``Iallreduce`` never completes (the
    watchdog then reports the stall).

    Args:
        grads: (n_params,) float32, C-contiguous: the buffer reduced in place (a
            model's ``grads``); buckets are views of it.
        plan: the buckets (:func:`plan_buckets`), in backward order.
        comm: the replicas' communicator (``data_comm``).
        what: names the operation in a stall report.
        compressor: a :class:`hpcnet.comm.compress.CompressedAllreduce` (each bucket
            travels as 16-bit words), or None (float32).
    """

    def __init__(
        self,
        grads: np.ndarray,
        plan: list[tuple[int, int]],
        comm: MPI.Intracomm,
        what: str = "bucketed allreduce of the gradients",
        compressor=None,
    ):
        self.grads, self.plan, self.comm, self.what = grads, list(plan), comm, what
        self.compressor = compressor
        self.words: list = []  # per started bucket: its 16-bit payload (compressor)
        self.size = comm.Get_size()
        self.started = 0  # buckets of this step whose Iallreduce has started
        self.requests: list[MPI.Request] = []
        self.during_backward = 0  # buckets started before wait(), since construction

    def grads_ready(self, lo: int) -> None:
        """Backward has produced ``grads[lo:]`` (``lo`` only decreases within a step):
        starts the ``Iallreduce`` of every bucket now complete, then tests all
        outstanding ones (``Testall``) so that MPI moves them while backward goes on.
        Collective in effect: every rank starts the same buckets in the same order."""
        while self.started < len(self.plan) and self.plan[self.started][0] >= lo:
            self._start()
            self.during_backward += 1
        if self.requests:
            MPI.Request.Testall(self.requests)

    def _start(self) -> None:
        b_lo, b_hi = self.plan[self.started]
        if self.size > 1:
            buf = self.grads[b_lo:b_hi]
            if self.compressor is not None:
                req, words = self.compressor.start(buf)
                self.requests.append(req)
                self.words.append(words)
            else:
                self.requests.append(self.comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM))
        self.started += 1

    def wait(self) -> None:
        """Starts the buckets backward did not report (all of them if nobody called
        :meth:`grads_ready`), completes every ``Iallreduce`` and scales ``grads`` by
        1/R: ``grads`` ((n_params,) float32) is then the mean over ``comm``.

        Raises:
            StallError: not complete within the watchdog's ``--timeout``; names the
                ranks of ``comm`` waited for.
        """
        while self.started < len(self.plan):
            self._start()
        requests, self.requests, self.started = self.requests, [], 0
        if self.size > 1:
            done = lambda: MPI.Request.Testall(requests)  # noqa: E731
            poll_until(
                done, None, self.what, backoff=Backoff(cap=5e-3), spin=SPIN_S, comm=self.comm
            )
            if self.compressor is not None:  # decode each bucket's sum, and its mean
                words, self.words = self.words, []
                for (b_lo, b_hi), w in zip(self.plan, words, strict=True):
                    self.compressor.finish(self.grads[b_lo:b_hi], w)
            else:
                self.grads *= self.grads.dtype.type(1.0 / self.size)

    def describe(self) -> str:
        """One line: the buckets and their sizes (MiB), in backward order."""
        sizes = ", ".join(
            f"{(hi - lo) * self.grads.itemsize / BYTES_PER_MB:.2f}" for lo, hi in self.plan
        )
        return f"{len(self.plan)} gradient bucket(s), MiB in backward order: {sizes}"
