"""Every blocking wait in hpcnet: one poll loop and one set of named deadlines.

A hang is the worst bug an MPI program can have, so a wait for another rank polls
(MPI ``Test``/``Iprobe``, or a one-sided read): first briefly in a tight loop that
yields the core between tests (``spin`` seconds: MPICH moves a large message only
while a rank is inside MPI), then with a sleep in between that doubles from
``first`` to ``cap`` seconds (:class:`Backoff`), so a waiting rank leaves the core
to the ranks that compute on an oversubscribed node. When its deadline passes it
raises :class:`hpcnet.errors.StallError` naming the operation, the communicator and
the ranks it waited for with their last heartbeats (:mod:`hpcnet.comm.watchdog`);
the except hook then aborts the job with exit status 124. How long each kind of
wait may last is one field of :class:`Deadlines`, from ``--timeout`` and
``--replica-timeout``; the collectives of :mod:`hpcnet.comm.collectives` take the
active watchdog's ``--timeout``.

Not bounded (MPI offers no nonblocking form, or they run before a run's watchdog
exists): the communicator splits and window allocations of a run's start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from mpi4py import MPI

from hpcnet.comm import watchdog
from hpcnet.errors import StallError

T = TypeVar("T")


@dataclass(frozen=True)
class Deadlines:
    """Seconds each kind of wait may last before it is an error.

    ``timeout`` is ``--timeout`` (the watchdog: how long any rank may wait for another
    that should answer); ``t`` below is ``--replica-timeout`` (how long a Downpour or
    Sandblaster replica may stay silent before the run goes on without it). Waits that
    include noticing a lost replica get the longer of the two scales.

    Attributes:
        replica_silence: a replica (client) silent this long is lost (``t``).
        end_barrier: every rank meets at the end of a run (max(timeout, 4 t)).
        push_slot: a Downpour push waits for the shard to empty its inbox slot (timeout).
        warm_start: Downpour replicas wait for replica 0's warm start
            (max(timeout, 4 t, 600): it trains alone meanwhile).
        exchange: one activation exchange between a replica's partitions (timeout).
        coordinator_reply: a Sandblaster replica waits for the coordinator's answer
            (max(timeout, 10 t): the coordinator may be waiting for a lost replica).
        shard_reply: the Sandblaster coordinator waits for a shard's reply, and a shard
            for the pushes it was promised (max(timeout, 4 t)).
        compile: a node's ranks wait for its first ranks to compile the kernels
            (max(900, 3 timeout)).
        scheduler_answer: a search group's leader waits for the scheduler's answer to
            one question (:mod:`hpcnet.search.protocol`; the scheduler answers at once,
            so only a dead or stuck scheduler makes this wait long).
        group_agreement: the live ranks of a search group wait for each other to agree
            on the ranks it lost (fault tolerance, :mod:`hpcnet.search.faults`).

    Not deadlines: a search group told to wait for a generation asks again, each
    answer within ``scheduler_answer`` (:func:`search_reask`), for as long as the
    scheduler answers; a trial's ``--trial-timeout`` is a time limit the trial's run
    checks at its step boundaries (:class:`hpcnet.run.preempt.PreemptionWatch`).
    """

    replica_silence: float = 60.0
    end_barrier: float = 300.0
    push_slot: float = 300.0
    warm_start: float = 600.0
    exchange: float = 300.0
    coordinator_reply: float = 600.0
    shard_reply: float = 300.0
    compile: float = 900.0
    scheduler_answer: float = 600.0
    group_agreement: float = 600.0

    @classmethod
    def of(cls, timeout: float, replica_timeout: float) -> Deadlines:
        """The deadlines of a run with ``--timeout`` and ``--replica-timeout`` (seconds)."""
        s, t = float(timeout), float(replica_timeout)
        return cls(
            replica_silence=t,
            end_barrier=max(s, 4 * t),
            push_slot=s,
            warm_start=max(s, 4 * t, 600.0),
            exchange=s,
            coordinator_reply=max(s, 10 * t),
            shard_reply=max(s, 4 * t),
            compile=max(900.0, 3 * s),
            scheduler_answer=max(s, 600.0),
            group_agreement=max(s, 600.0),
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


def search_reask() -> Backoff:
    """The pause between a search group's questions while the scheduler says ``wait``
    (the generation's last trials run elsewhere) or, for a group that lost a rank,
    until the search is over: 10 ms doubling to 0.5 s, so a group picks up a trial soon
    after one is free and an idle group costs no CPU."""
    return Backoff(first=10e-3, cap=0.5)


def poll_until(
    ready: Callable[[], bool],
    timeout: float | None,
    what: str,
    *,
    backoff: Backoff | None = None,
    on_poll: Callable[[], None] | None = None,
    spin: float = 0.0,
    comm: MPI.Comm | None = None,
) -> None:
    """Calls ``ready()`` until it returns True: for the first ``spin`` seconds in a loop
    that only yields the core (``sched_yield``), then sleeping (``backoff``, default
    20 us doubling to 10 ms) and calling ``on_poll()`` between calls.

    Args:
        timeout: seconds; None: the active watchdog's ``--timeout``
            (:func:`hpcnet.comm.watchdog.current_timeout`).
        comm: the communicator whose other ranks ``ready`` depends on (None: any rank
            of the run); the stall report lists their heartbeats.
    Raises:
        StallError: ``ready()`` was still False after ``timeout`` seconds; the message
            names this rank, ``what``, ``comm`` and the ranks waited for.
    """
    if ready():
        return
    if timeout is None:
        timeout = watchdog.current_timeout()
    t0 = time.monotonic()
    deadline = t0 + timeout
    spin_until = t0 + spin
    backoff = backoff or Backoff(cap=10e-3)
    while not ready():
        now = time.monotonic()
        if now < spin_until:
            os.sched_yield()
            continue
        if now > deadline:
            raise StallError(watchdog.stall_report(what, now - t0, comm))
        if on_poll is not None:
            on_poll()
        watchdog.heartbeat()  # alive, waiting
        backoff.sleep()


def probe_polling(
    comm: MPI.Comm,
    source: int,
    tag: int,
    status: MPI.Status,
    timeout: float,
    what: str,
    backoff=None,
    on_poll: Callable[[], None] | None = None,
) -> None:
    """Waits until a message from ``source`` with ``tag`` can be received (``Iprobe``
    with sleeps, ``on_poll()`` between them); ``status`` describes it afterwards.

    Raises:
        StallError: no such message within ``timeout`` seconds.
    """
    poll_until(
        lambda: comm.Iprobe(source, tag, status),
        timeout,
        what,
        backoff=backoff,
        comm=comm,
        on_poll=on_poll,
    )


def wait_polling(
    request: MPI.Request,
    timeout: float | None,
    what: str,
    on_poll: Callable[[], None] | None = None,
    cap: float = 10e-3,
    *,
    spin: float = 0.0,
    comm: MPI.Comm | None = None,
) -> None:
    """Completes a nonblocking ``request`` by testing it: ``spin`` seconds in a tight
    loop, then with sleeps in between (doubling from 20 us to ``cap`` seconds), or
    raises after ``timeout`` seconds (None: the watchdog's ``--timeout``).

    Raises:
        StallError: ``what`` did not complete within ``timeout`` seconds (the except
            hook then aborts the job: a hang becomes an error naming the ranks waited
            for on ``comm``).
    """
    poll_until(
        request.Test, timeout, what, backoff=Backoff(cap=cap), on_poll=on_poll, spin=spin, comm=comm
    )


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
        StallError: the node's workers took longer than ``timeout`` seconds.
    """
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    try:
        n = max(1, min(workers, node.Get_size()))
        j = node.Get_rank()
        if j < n:
            work(j, n)
        wait_polling(node.Ibarrier(), timeout, what, cap=50e-3, comm=node)
    finally:
        node.Free()
    return j < n


def barrier_polling(
    comm: MPI.Intracomm, timeout: float | None, what: str, on_poll: Callable[[], None] | None = None
) -> None:
    """A barrier over ``comm`` that sleeps while it waits and times out (see
    :func:`wait_polling`); ``on_poll`` runs between tests (e.g. to drain stale
    messages). Collective over ``comm``."""
    wait_polling(comm.Ibarrier(), timeout, what, on_poll, comm=comm)
