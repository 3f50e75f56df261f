"""Activation exchange between the partitions of one model replica (model parallelism).

:class:`Exchange` wraps ``replica_comm`` (docs/design.md, "Roles") with the few
operations a partitioned model needs, and counts the bytes each rank moves:

- :meth:`Exchange.allgather` — every partition holds a slice of an activation along
  axis 1 (channels or features); afterwards every one holds the whole of it;
- :meth:`Exchange.reduce_scatter` — every partition holds a partial sum of a whole
  gradient; afterwards each holds the complete sum of its own slice (the backward of
  an allgather whose consumers were split by output, Dean et al. 2012 sec. 3);
- :meth:`Exchange.send` / :meth:`Exchange.recv` — point-to-point, for the pipeline.

All operations are nonblocking MPI calls completed by :meth:`Exchange.wait`: first
``spin_s`` seconds of back-to-back ``Test`` calls (MPICH moves a large shared-memory
message only while a rank is inside MPI, so sleeping between tests stretched a 1 MB
allgather from 0.3 to 4 ms), then :func:`wait_polling`, which sleeps between tests
(no spin on an oversubscribed node) and turns a partner that never arrives into a
``TimeoutError`` (and so an abort) instead of a hang. The spin is long (5 ms) when
the node has a core for every rank and short (50 us) when it is oversubscribed.

Byte counts are payload, independent of MPI's algorithm: with S the bytes of the
whole tensor and s_p those of partition p's slice, an allgather makes rank p send
``(M - 1) s_p`` and receive ``S - s_p``; a reduce-scatter makes it send ``S - s_p``
and receive ``(M - 1) s_p``; a send/recv moves the array's bytes once.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.comm.waits import wait_polling
from hpcnet.comm.world import ranks_on_node

SPIN_S = 5e-3  # seconds of back-to-back tests before sleeping, a core per rank
SPIN_OVERSUBSCRIBED_S = 50e-6  # ... and when ranks outnumber cores


@dataclass
class ExchangeStats:
    """Payload bytes this rank sent and received, and the operations it took part in."""

    bytes_sent: int = 0
    bytes_recv: int = 0
    ops: int = 0

    def add(self, sent: int, recv: int) -> None:
        self.bytes_sent += int(sent)
        self.bytes_recv += int(recv)
        self.ops += 1


def even_bounds(n: int, parts: int) -> list[int]:
    """Cut points splitting ``n`` items into ``parts`` contiguous pieces whose sizes
    differ by at most one, the larger first: ``even_bounds(10, 3) == [0, 4, 7, 10]``."""
    q, r = divmod(n, parts)
    out = [0]
    for p in range(parts):
        out.append(out[-1] + q + (1 if p < r else 0))
    return out


class Exchange:
    """The counted operations of one rank on its replica's partition communicator.

    Args:
        comm: ``replica_comm``: the M partitions of one replica, rank = partition.
        timeout: seconds any one operation may wait for its partners.
        node_ranks: how many MPI ranks share this node (all roles); when they
            outnumber this process's cores a wait spins only
            :data:`SPIN_OVERSUBSCRIBED_S`, else :data:`SPIN_S`, before it sleeps. None:
            count ``comm``'s ranks on the node (collective over ``comm``; a lower bound).
    """

    def __init__(self, comm: MPI.Intracomm, timeout: float = 300.0, node_ranks: int | None = None):
        self.comm = comm
        self.size = comm.Get_size()
        self.rank = comm.Get_rank()
        self.timeout = timeout
        if node_ranks is None:
            node_ranks = ranks_on_node(comm)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        self.spin_s = SPIN_OVERSUBSCRIBED_S if node_ranks > cores else SPIN_S
        self.stats = ExchangeStats()

    def wait(self, req: MPI.Request, what: str) -> None:
        """Completes ``req``: ``spin_s`` seconds of back-to-back tests, then tests with
        sleeps (up to 1 ms) in between; raises TimeoutError after ``timeout`` seconds.
        Also for uncounted operations on ``comm``."""
        end = time.perf_counter() + self.spin_s
        while True:
            if req.Test():
                return
            if time.perf_counter() > end:
                break
        wait_polling(req, self.timeout, f"partition {self.rank}: {what}", cap=1e-3)

    def agree_any(self, flag: bool, what: str = "stop agreement") -> bool:
        """True on every partition if ``flag`` is true on any (a logical-or allreduce,
        not counted). Collective over the replica's partitions."""
        buf = np.array([1 if flag else 0], np.int32)
        self.wait(self.comm.Iallreduce(MPI.IN_PLACE, buf, MPI.MAX), what)
        return bool(buf[0])

    def allgather(
        self, local: np.ndarray, bounds: list[int], what: str = "allgather"
    ) -> np.ndarray:
        """Concatenates every partition's slice along axis 1.

        Args:
            local: (N, b[p+1] - b[p], ...) float32, this partition's slice.
            bounds: M + 1 cut points along axis 1 (the same on every partition).
        Returns:
            (N, b[M], ...) float32, a new array, the same on every partition.
        Collective over the replica's partitions.
        """
        n, rest = local.shape[0], local.shape[2:]
        per = n * int(np.prod(rest, dtype=np.int64))  # elements per unit of axis 1
        counts = [(bounds[p + 1] - bounds[p]) * per for p in range(self.size)]
        displs = [bounds[p] * per for p in range(self.size)]
        flat = np.empty(bounds[-1] * per, np.float32)
        send = np.ascontiguousarray(local, np.float32)
        self.wait(self.comm.Iallgatherv(send, [flat, counts, displs, MPI.FLOAT]), what)
        blocks = [
            flat[displs[p] : displs[p] + counts[p]].reshape(n, bounds[p + 1] - bounds[p], *rest)
            for p in range(self.size)
        ]
        mine = counts[self.rank] * 4
        self.stats.add((self.size - 1) * mine, flat.nbytes - mine)
        return np.concatenate(blocks, axis=1)

    def reduce_scatter(
        self, partial: np.ndarray, bounds: list[int], what: str = "reduce_scatter"
    ) -> np.ndarray:
        """Sums every partition's ``partial`` and leaves each its own slice along axis 1.

        Args:
            partial: (N, b[M], ...) float32, this partition's contribution.
            bounds: M + 1 cut points along axis 1.
        Returns:
            (N, b[p+1] - b[p], ...) float32: the sum over partitions of slice p.
        Collective over the replica's partitions.
        """
        n, rest = partial.shape[0], partial.shape[2:]
        per = n * int(np.prod(rest, dtype=np.int64))
        counts = [(bounds[p + 1] - bounds[p]) * per for p in range(self.size)]
        send = np.concatenate(
            [partial[:, bounds[p] : bounds[p + 1]].reshape(-1) for p in range(self.size)]
        )
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        out = np.empty((n, hi - lo, *rest), np.float32)
        self.wait(self.comm.Ireduce_scatter(send, out, counts, MPI.SUM), what)
        mine = out.nbytes
        self.stats.add(send.nbytes - mine, (self.size - 1) * mine)
        return out

    def send(self, arr: np.ndarray, dest: int, tag: int, what: str = "send") -> MPI.Request:
        """Starts sending ``arr`` (float32, C-contiguous, kept alive by the caller until
        the returned request completes) to partition ``dest``; see :meth:`complete`."""
        self.stats.add(arr.nbytes, 0)
        return self.comm.Isend(arr, dest=dest, tag=tag)

    def recv(self, shape: tuple[int, ...], source: int, tag: int, what: str = "recv") -> np.ndarray:
        """Receives a float32 array of ``shape`` from partition ``source`` (waits, with
        a time limit)."""
        out = np.empty(shape, np.float32)
        self.wait(self.comm.Irecv(out, source=source, tag=tag), what)
        self.stats.add(0, out.nbytes)
        return out

    def complete(self, requests: list[MPI.Request], what: str = "sends") -> None:
        """Waits (sleeping, with a time limit) for ``requests`` from :meth:`send`."""
        for req in requests:
            self.wait(req, what)

    def bcast(self, arr: np.ndarray, root: int, what: str = "bcast") -> np.ndarray:
        """Broadcasts ``arr`` (float32 or float64, in place) from partition ``root``.
        Counted as payload: the root sends ``(M - 1)`` copies, the others receive one."""
        self.wait(self.comm.Ibcast(arr, root=root), what)
        if self.rank == root:
            self.stats.add((self.size - 1) * arr.nbytes, 0)
        else:
            self.stats.add(0, arr.nbytes)
        return arr
