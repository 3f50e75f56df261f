"""The work-unit protocol between Sandblaster's replicas and its coordinator.

A replica talks to the coordinator only by asking (a :class:`Request`, tag
:data:`TAG_REQUEST`); every request gets exactly one :class:`Reply` (tag
:data:`TAG_REPLY`), except that the coordinator, when the run is over, sends every
replica one :data:`Action.STOP` reply unasked: a replica receives it as the answer
to its next request (or its pending one, a push request included), and the requests
it sent after the coordinator stopped listening are drained at the end of the run.
After ``STOP`` a replica asks nothing more: the last pass is complete, so whatever it
still keeps is stale, and no push request would be answered.

Requests (:class:`Ask`):

* ``WORK``: "give me work" (at the start, and after a ``FLUSH`` or ``WAIT``);
* ``DONE``: "unit ``unit`` of pass ``pass_id`` is done: its summed loss and correct
  count; give me work". The verdict says whether the result is kept (the first
  copy of a unit to finish is; a later backup copy, or one from a replica
  declared lost, is not);
* ``PUSH``: "may I push the gradient summed over my kept ``units``?"; asks no
  work (the action is ``NONE``). Only if the verdict is yes does the replica send
  the gradient to the shards (:func:`hpcnet.ps.lbfgs_service.push_gradient`).

Replies (:class:`Action`): ``WORK`` (compute unit ``unit``, rows ``[lo, hi)`` of
the training split, at the parameters of pass ``pass_id``), ``FLUSH`` (push what
you keep), ``WAIT`` (nothing to do yet: ask again after a pause), ``STOP``,
``NONE`` (the answer to a push request). A reply's ``pass_id`` is the current
pass: when it changes, the replica drops what it kept of the old pass and fetches
the new parameters before its next unit.

Wire format: float64 vectors (buffer API, no pickle) on
:class:`hpcnet.comm.messages.Channel`; a request is
``[ask, pass_id, unit, loss, correct, n_units, units...]`` (48 B + 8 B per pushed
unit), a reply ``[verdict, action, pass_id, unit, lo, hi]`` (48 B). Per unit a
replica exchanges 96 B with the coordinator, per push 96 B + 8 B per unit.

Who calls what: replicas use :class:`CoordinatorLink` (one request at a time:
send, then wait for the answer with the ``coordinator_reply`` deadline); the
coordinator uses :class:`ReplicaLinks`, must answer every request it receives,
and must call :meth:`ReplicaLinks.stop` once at the end, or the replicas wait
until their deadline.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Backoff, ft
from hpcnet.comm.messages import Channel
from hpcnet.layout import Layout

TAG_REQUEST, TAG_REPLY = 21, 22


class Ask(enum.IntEnum):
    """What a replica's request to the coordinator asks."""

    WORK = 1
    DONE = 2
    PUSH = 3


class Action(enum.IntEnum):
    """What the coordinator tells a replica to do next."""

    WORK = 1
    FLUSH = 2
    WAIT = 3
    STOP = 4
    NONE = 5


@dataclass(frozen=True)
class Request:
    """Replica -> coordinator.

    Attributes:
        ask: what is asked.
        pass_id: the evaluation pass the replica works on (-1 before its first).
        unit: ``DONE``: the unit computed.
        loss: ``DONE``: the sum of the unit's per-sample losses.
        correct: ``DONE``: the unit's correctly classified samples.
        units: ``PUSH``: the kept units whose summed gradient would be pushed.
    """

    ask: Ask
    pass_id: int = -1
    unit: int = -1
    loss: float = 0.0
    correct: int = 0
    units: tuple[int, ...] = ()

    HEADER = 6  # float64 values before the units

    def pack(self) -> np.ndarray:
        head = [self.ask, self.pass_id, self.unit, self.loss, self.correct, len(self.units)]
        return np.array(head + list(self.units), np.float64)

    @classmethod
    def unpack(cls, msg: np.ndarray) -> Request:
        n = int(msg[5])
        units = tuple(int(u) for u in msg[cls.HEADER : cls.HEADER + n])
        return cls(Ask(int(msg[0])), int(msg[1]), int(msg[2]), float(msg[3]), int(msg[4]), units)


@dataclass(frozen=True)
class Reply:
    """Coordinator -> replica.

    Attributes:
        verdict: ``DONE``: the result is kept; ``PUSH``: send the push.
        action: what to do next.
        pass_id: the coordinator's current evaluation pass.
        unit, lo, hi: ``WORK``: the unit and its rows ``[lo, hi)`` (-1, 0, 0 otherwise).
    """

    verdict: bool
    action: Action
    pass_id: int
    unit: int = -1
    lo: int = 0
    hi: int = 0

    def pack(self) -> np.ndarray:
        fields = [self.verdict, self.action, self.pass_id, self.unit, self.lo, self.hi]
        return np.array(fields, np.float64)

    @classmethod
    def unpack(cls, msg: np.ndarray) -> Reply:
        return cls(bool(msg[0] == 1.0), Action(int(msg[1])), *(int(v) for v in msg[2:6]))


def coordinator_died(layout: Layout, out) -> str:
    """What every survivor says when the coordinator's process died: the run ends;
    resume it from OUT's newest checkpoint, if it has one."""
    from pathlib import Path

    head = f"the Sandblaster coordinator (rank {layout.coordinator_rank}) died; the run ends"
    if (Path(out) / "checkpoint.h5").exists():
        return f"{head}: resume it from its newest checkpoint with: train --resume {out}"
    return f"{head} with no checkpoint to resume from (--checkpoint-every N writes them)"


class CoordinatorLink:
    """A replica's end of the protocol.

    Args:
        comm: the run's communicator.
        layout: the run's layout (where the coordinator is).
        replica: this replica's index (for error messages).
        timeout: seconds to wait for an answer (``Deadlines.coordinator_reply``).
        out: the run's output directory (where a checkpoint to resume from would be).
        watch: what checks for the coordinator's death (``check(force)`` raising);
            None: a :class:`hpcnet.comm.ft.DeathWatch` (RankLost: the run ends).
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        layout: Layout,
        replica: int,
        timeout: float,
        out="OUT",
        watch=None,
    ):
        self.coordinator = layout.coordinator_rank
        self.requests = Channel(comm, TAG_REQUEST)
        self.replies = Channel(comm, TAG_REPLY)
        self.timeout = timeout
        self.what = f"replica {replica} waiting for the coordinator"
        self.watch = watch or ft.DeathWatch(
            comm, self.coordinator, lambda: coordinator_died(layout, out)
        )

    def ask(self, request: Request) -> Reply:
        """Sends ``request`` and waits (sleeping) for the answer.

        Raises:
            TimeoutError: no answer within the deadline.
            RankLost: the coordinator's process died (under fault tolerance).
        """
        try:
            self.requests.send(request.pack(), self.coordinator)
            msg = self.replies.recv(
                self.coordinator,
                self.timeout,
                self.what,
                Backoff(first=20e-6, cap=5e-3),
                give_up=self.watch.check,
            )
        except MPI.Exception as e:
            if not ft.is_failure(e):
                raise
            self.watch.check(force=True)
            raise
        return Reply.unpack(msg)


class ReplicaLinks:
    """The coordinator's end of the protocol: requests from every replica.

    Args:
        comm: the run's communicator.
        layout: the run's layout (which rank is which replica).
    """

    def __init__(self, comm: MPI.Intracomm, layout: Layout):
        self.comm, self.layout = comm, layout
        self.requests = Channel(comm, TAG_REQUEST)
        self.replies = Channel(comm, TAG_REPLY)
        self.dead: set[int] = set()  # replicas whose process died (fault tolerance)
        self._next_check = 0.0

    def died(self) -> set[int]:
        """Replicas whose process MPI reports dead (under fault tolerance, checked at
        most every 50 ms; local knowledge, no communication); the set grows."""
        now = time.monotonic()
        if ft.enabled() and now >= self._next_check:
            self._next_check = now + 0.05
            failed = ft.failed_ranks(self.comm)
            self.dead |= {
                self.layout.role(r).index for r in failed if self.layout.role(r).kind == "replica"
            }
        return self.dead

    def poll(self) -> tuple[int, Request] | None:
        """The next request that has arrived, as (replica index, request), or None
        (a dead replica's last requests are dropped: nobody would take the answer)."""
        while (got := self.requests.poll()) is not None:
            rank, msg = got
            r = self.layout.role(rank).index
            if r not in self.died():
                return r, Request.unpack(msg)
        return None

    def answer(self, replica: int, reply: Reply) -> None:
        """Sends ``reply`` to ``replica`` (48 B: goes out eagerly). A replica that died
        meanwhile (under fault tolerance) is added to :attr:`dead`."""
        try:
            self.replies.send(reply.pack(), self.layout.replica_ranks(replica)[0])
        except MPI.Exception as e:
            if not (ft.enabled() and ft.is_failure(e)):
                raise
            self.dead.add(replica)

    def stop(self, pass_id: int, timeout: float) -> None:
        """Tells every live replica to stop, unasked: a replica busy with a (backup)
        unit receives it as the answer to its next request; a stopped replica never
        receives it, which costs nothing (an eager send)."""
        stop = Reply(False, Action.STOP, pass_id)
        for r in range(self.layout.replicas):
            if r not in self.died():
                self.answer(r, stop)

    def drain(self) -> None:
        """Receives and drops the requests replicas sent before they saw ``STOP``."""
        self.requests.drain()
