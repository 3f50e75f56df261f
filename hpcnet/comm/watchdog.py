"""The hang watchdog: per-rank heartbeats that name the rank a stalled wait waits for.

MPI says nothing about a peer that stopped without dying (``kill -STOP``, a hung
file system, a swapped-out node): a collective it has not joined simply never
completes, and a one-sided operation on its window, on the same node, completes
without it. So every wait in hpcnet has a deadline (:mod:`hpcnet.comm.waits`),
and while a run is active every rank publishes a *heartbeat* - its step, the time
of its last beat, its pid - in a small shared-memory window of its node
(``MPI_Win_allocate_shared`` over the node's ranks, written with plain stores), at
every step and between the polls of every wait. A stopped rank's last beat stays
readable there without any help from it, and goes stale while the others' stay fresh. When a
wait passes its deadline the rank raises :class:`hpcnet.errors.StallError` with
:func:`stall_report`'s text: the operation, the communicator, how long it waited,
the ranks it waited for with their roles, and each one's last heartbeat, the
stalest first ("probably stalled"). Ranks on other nodes are named without a
heartbeat (their node's ranks see it; each rank that times out reports). The
job then aborts with exit status :data:`hpcnet.errors.EXIT_STALLED` (124).

One watchdog is active per process at a time (:func:`start`/:func:`stop`, done
by the run lifecycle); without one, waits use :data:`DEFAULT_TIMEOUT_S` and
reports carry no heartbeats.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import numpy as np
from mpi4py import MPI

from hpcnet.comm.world import world_id, world_rank

DEFAULT_TIMEOUT_S = 300.0  # a wait without an active watchdog (``--timeout``'s default)
FIRST_STEP_FACTOR = 3.0  # waits before a rank's first completed step may last this much longer

# one heartbeat slot: world rank, run-communicator rank, step, time.time() of the beat, pid
_WORLD, _RANK, _STEP, _TIME, _PID = range(5)
_SLOT = 5


class Watchdog:
    """This rank's heartbeat slot and the deadline of its waits during one run.

    Built collectively over ``comm`` (every rank, same ``timeout``).

    Args:
        comm: the run's communicator; ``role_of(rank)`` names the role of its ranks.
        timeout: seconds a wait for another rank may last (``--timeout``); waits
            before this rank's first completed step get ``FIRST_STEP_FACTOR`` times
            as long (the first step loads kernels and data on a busy node).
    """

    def __init__(self, comm: MPI.Intracomm, timeout: float, role_of: Callable[[int], str]):
        self.comm, self.timeout, self.role_of = comm, float(timeout), role_of
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        self.node = node.Split(world_id(), node.Get_rank())  # spawned ones: their own
        node.Free()
        self.win = MPI.Win.Allocate_shared(_SLOT * 8, 8, comm=self.node)
        self.slots = [
            np.frombuffer(self.win.Shared_query(r)[0], np.float64)[:_SLOT]
            for r in range(self.node.Get_size())
        ]
        self.mine = self.slots[self.node.Get_rank()]
        self.mine[:] = (world_rank(), comm.Get_rank(), -1, time.time(), os.getpid())
        self.beats = 0
        self.node.Barrier()  # every slot filled before anyone reads one

    def beat(self, step: int | None = None) -> None:
        """Publishes that this rank is alive now and, with ``step``, that it completed
        ``step`` (plain stores to shared memory)."""
        if step is not None:
            self.mine[_STEP] = step
            self.beats += 1
        self.mine[_TIME] = time.time()

    def current_timeout(self) -> float:
        """The deadline of a wait starting now, seconds."""
        return self.timeout * (FIRST_STEP_FACTOR if self.beats < 1 else 1.0)

    def heartbeats(self) -> dict[int, tuple[int, float, int]]:
        """The visible heartbeats: run rank -> (step, seconds since its beat, pid)."""
        now = time.time()
        return {
            int(s[_RANK]): (int(s[_STEP]), now - float(s[_TIME]), int(s[_PID])) for s in self.slots
        }

    def close(self) -> None:
        """Frees the window (collective over the node's ranks of the run)."""
        self.win.Free()
        self.node.Free()


_ACTIVE: Watchdog | None = None


def start(comm: MPI.Intracomm, timeout: float, role_of: Callable[[int], str]) -> Watchdog:
    """Makes a :class:`Watchdog` over ``comm`` the active one (collective over ``comm``)."""
    global _ACTIVE
    from hpcnet.run.ranks import note_rank

    note_rank(role_of(comm.Get_rank()))  # a launcher's line names the role of a rank that dies
    _ACTIVE = Watchdog(comm, timeout, role_of)
    return _ACTIVE


def stop() -> None:
    """Ends the active watchdog at the normal end of a run (collective over its
    communicator: freeing the window is)."""
    global _ACTIVE
    if _ACTIVE is not None:
        _ACTIVE.close()
        _ACTIVE = None


def abandon() -> None:
    """Forgets the active watchdog without freeing its window: on an error path, where
    another rank may never reach a collective ``Free`` (a tiny leak, never a hang)."""
    global _ACTIVE
    _ACTIVE = None


def heartbeat(step: int | None = None) -> None:
    """Publishes that this rank is alive and, with ``step``, its progress (its steps, or a
    shard's applied pushes) when a watchdog is active. Role loops call it once per step
    or service pass; every polling wait calls it between polls (a waiting rank is alive:
    the rank whose heartbeat goes stale is the one that stopped)."""
    if _ACTIVE is not None:
        _ACTIVE.beat(step)


def current_timeout(default: float = DEFAULT_TIMEOUT_S) -> float:
    """Seconds a wait for another rank starting now may last."""
    return _ACTIVE.current_timeout() if _ACTIVE is not None else default


def _ranks_of(comm: MPI.Comm | None, run_comm: MPI.Comm) -> list[int]:
    """The run-communicator ranks of ``comm``'s other ranks (all of the run: None)."""
    if comm is None or comm == MPI.COMM_NULL:
        return [r for r in range(run_comm.Get_size()) if r != run_comm.Get_rank()]
    mine = comm.Get_rank()
    others = [r for r in range(comm.Get_size()) if r != mine]
    ranks = MPI.Group.Translate_ranks(comm.Get_group(), others, run_comm.Get_group())
    return [r for r in ranks if r != MPI.UNDEFINED]


def stall_report(what: str, waited: float, comm: MPI.Comm | None = None) -> str:
    """The text of a stall: this rank, ``what`` it waited in for ``waited`` seconds on
    ``comm`` (None: any rank of the run), and the heartbeats of the ranks it waited for.

    Returns:
        One line, then one line per rank waited for (stalest first).
    """
    dog = _ACTIVE
    name = comm.Get_name() if comm is not None and comm != MPI.COMM_NULL else ""
    on = f" on {name}" if name else ""
    if dog is None:
        return f"rank {world_rank()}: {what}{on} did not complete in {waited:.0f} s"
    me = dog.comm.Get_rank()
    lines = [
        f"rank {me} ({dog.role_of(me)}): {what}{on} did not complete in {waited:.0f} s "
        f"(--timeout {dog.timeout:g}); the job ends with exit status 124"
    ]
    beats = dog.heartbeats()
    mine = beats.get(me, (-1, 0.0, 0))
    peers = _ranks_of(comm, dog.comm)
    seen = sorted((r for r in peers if r in beats), key=lambda r: -beats[r][1])
    unseen = [r for r in peers if r not in beats]
    for i, r in enumerate(seen):
        step, age, pid = beats[r]
        flag = "  <- probably stalled" if i == 0 and age > 0.5 * waited else ""
        lines.append(
            f"  rank {r} ({dog.role_of(r)}, pid {pid}): last heartbeat {age:.1f} s ago at "
            f"step {step}{flag}"
        )
    lines.append(f"  rank {me} (this rank): step {mine[0]}")
    if unseen:
        shown = ", ".join(f"{r} ({dog.role_of(r)})" for r in unseen[:16])
        more = f" and {len(unseen) - 16} more" if len(unseen) > 16 else ""
        lines.append(f"  on other nodes, no heartbeat visible here: ranks {shown}{more}")
    return "\n".join(lines)
