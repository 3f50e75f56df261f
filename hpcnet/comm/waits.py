"""Every blocking wait in hpcnet: one poll loop and one set of named deadlines.

A hang is the worst bug an MPI program can have, so a wait for another rank polls
(MPI ``Test``/``Iprobe``, or a one-sided read) with a sleep in between that doubles
from ``first`` to ``cap`` seconds (:class:`Backoff`), so a waiting rank leaves the
core to the ranks that compute on an oversubscribed node, and raises
``TimeoutError`` naming the rank and what it waited for when its deadline passes
(the except hook then aborts the job). How long each kind of wait may last is one
field of :class:`Deadlines` (derived from ``--replica-timeout``, except ``compile``).

Not yet bounded (known, for the watchdog to cover): the blocking collectives of a
run's start (communicator splits, the parameter broadcast, window allocation), the
synchronous algorithms' per-step ``Allreduce``, and the Sandblaster shards' and
coordinator's service loops, which wait for the next command or request.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mpi4py import MPI

from hpcnet.comm.world import world_rank

T = TypeVar("T")


@dataclass(frozen=True)
class Deadlines:
    """Seconds each kind of wait may last before it is an error.

    Attributes:
        replica_silence: a replica (client) silent this long is lost; the run goes
            on without it (``--replica-timeout``, default 60).
        end_barrier: every rank meets at the end of a run (default 4x silence, >= 120).
        push_slot: a Downpour push waits for the shard to empty its inbox slot
            (2x silence, >= 60).
        warm_start: Downpour replicas wait for replica 0's warm start (4x silence, >= 600).
        exchange: one activation exchange between a replica's partitions (2x silence,
            >= 300).
        coordinator_reply: a Sandblaster replica waits for the coordinator's answer
            (10x silence, >= 600: the coordinator may be waiting for a lost replica).
        shard_reply: the Sandblaster coordinator waits for a shard's reply, and a shard
            for the pushes it was promised (4x silence, >= 120).
        compile: a node's ranks wait for its first rank to compile the kernels (900).
    """

    replica_silence: float = 60.0
    end_barrier: float = 240.0
    push_slot: float = 120.0
    warm_start: float = 600.0
    exchange: float = 300.0
    coordinator_reply: float = 600.0
    shard_reply: float = 240.0
    compile: float = 900.0

    @classmethod
    def from_replica_timeout(cls, seconds: float) -> Deadlines:
        """The deadlines of a run whose ``--replica-timeout`` is ``seconds``."""
        t = float(seconds)
        return cls(
            replica_silence=t,
            end_barrier=max(120.0, 4 * t),
            push_slot=max(60.0, 2 * t),
            warm_start=max(600.0, 4 * t),
            exchange=max(300.0, 2 * t),
            coordinator_reply=max(600.0, 10 * t),
            shard_reply=max(120.0, 4 * t),
        )


class Backoff:
    """Sleeps between polls, doubling from ``first`` to ``cap`` seconds, so a waiting
    rank does not spin-burn a core on an oversubscribed node. ``reset()`` after
    progress."""

    def __init__(self, first: float = 20e-6, cap: float = 2e-3):
        self.first, self.cap = first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    def sleep(self) -> None:
        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def poll_until(
    ready: Callable[[], bool],
    timeout: float,
    what: str,
    *,
    backoff: Backoff | None = None,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Calls ``ready()`` until it returns True, sleeping (``backoff``, default 20 us
    doubling to 10 ms) and calling ``on_poll()`` between calls.

    Raises:
        TimeoutError: ``ready()`` was still False after ``timeout`` seconds; the
            message names this rank and ``what``.
    """
    deadline = time.monotonic() + timeout
    backoff = backoff or Backoff(cap=10e-3)
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {world_rank()}: {what} did not complete in {timeout:.0f} s")
        if on_poll is not None:
            on_poll()
        backoff.sleep()


def probe_polling(
    comm: MPI.Comm,
    source: int,
    tag: int,
    status: MPI.Status,
    timeout: float,
    what: str,
    backoff=None,
) -> None:
    """Waits until a message from ``source`` with ``tag`` can be received (``Iprobe``
    with sleeps); ``status`` describes it afterwards.

    Raises:
        TimeoutError: no such message within ``timeout`` seconds.
    """
    poll_until(lambda: comm.Iprobe(source, tag, status), timeout, what, backoff=backoff)


def wait_polling(
    request: MPI.Request,
    timeout: float,
    what: str,
    on_poll: Callable[[], None] | None = None,
    cap: float = 10e-3,
) -> None:
    """Completes a nonblocking ``request`` by testing it with sleeps in between
    (no busy spin; the sleeps double from 20 us to ``cap`` seconds), or raises after
    ``timeout`` seconds.

    Raises:
        TimeoutError: ``what`` did not complete within ``timeout`` seconds (the
            except hook then aborts the job: a hang becomes an error).
    """
    poll_until(request.Test, timeout, what, backoff=Backoff(cap=cap), on_poll=on_poll)


def node_workers_first(
    work: Callable[[int, int], None],
    comm: MPI.Intracomm,
    workers: int,
    timeout: float,
    what: str,
) -> bool:
    """Runs ``work(j, n)`` on the first ``n = min(workers, ranks on the node)`` ranks of
    every node (``j`` = 0 .. n-1) while the node's other ranks wait, and returns on every
    rank once the node's workers are all done.

    E.g. the workers compile different Numba kernels into the on-disk cache at once,
    one per core, which the node's other ranks then load instead of compiling the
    same code at the same time on the same cores. Every rank waits sleeping
    (:func:`wait_polling`). Collective over ``comm``: every rank must call, with the
    same ``workers``.

    Returns:
        True on a rank that was a worker.
    Raises:
        TimeoutError: the node's workers took longer than ``timeout`` seconds.
    """
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        n = max(1, min(workers, node.Get_size()))
        j = node.Get_rank()
        if j < n:
            work(j, n)
        wait_polling(node.Ibarrier(), timeout, what, cap=50e-3)
    finally:
        node.Free()
    return j < n


def barrier_polling(
    comm: MPI.Intracomm, timeout: float, what: str, on_poll: Callable[[], None] | None = None
) -> None:
    """A barrier over ``comm`` that sleeps while it waits and times out (see
    :func:`wait_polling`); ``on_poll`` runs between tests (e.g. to drain stale
    messages). Collective over ``comm``."""
    wait_polling(comm.Ibarrier(), timeout, what, on_poll)
