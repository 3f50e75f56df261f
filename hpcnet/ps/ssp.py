"""Bounded staleness for Downpour: the Stale Synchronous Parallel (SSP) wait.

Ho et al. 2013 (NIPS, "More Effective Distributed ML via a Stale Synchronous
Parallel Parameter Server"), sec. 2-3; ps-lite's bounded delay is the same rule. A
replica's *clock* is the number of training steps it has completed. With staleness
bound ``s`` (``--max-staleness``), a replica at clock ``c`` starts its next step only
once every *live* replica has reached clock ``c - s``: ``s = 0`` is lock-step, no
bound is plain Downpour. A replica the shard counts lost (its LOST counter, set by
:meth:`hpcnet.ps.shard.ShardService.serve` after ``--replica-timeout`` seconds of
silence or when MPI reports its process dead) or done leaves the minimum, or SSP
would deadlock after a failure.

Where the clocks live: shard 0's control window (:mod:`hpcnet.ps.windows`), one
CLOCK counter per client. Partition 0 of each replica adds its new steps to its own
client's CLOCK after every step (one ``Accumulate`` + ``Flush``, 8 bytes); every
partition waits itself (the partitions of a replica step together, so each must
pass the same gate). A client whose clock may be too far ahead reads shard 0's
head and per-client blocks (one ``Get`` each: ``8 * PER_CLIENT * C`` bytes for C
clients) and, while it must wait, polls with :class:`hpcnet.comm.Backoff` (50 us
doubling to 2 ms: the node's cores are shared), sending heartbeats so no shard
declares it lost meanwhile.

What is promised, and measured: a replica begins a step at clock ``c`` only after
reading every live replica's clock ``>= c - s``; ``max_gap`` is the largest
``c - min live clock`` over the steps it began (an upper bound: the minimum it
compares with may be an older reading, and clocks only grow). Not promised: Ho et
al.'s read guarantee (the updates of every clock ``<= c - s - 1`` are in the
parameters a replica fetches) -- pushes are applied asynchronously by the shards,
and with ``n_push > 1`` a step's gradient is pushed only with its group. A replica
the shard counted lost that speaks again re-enters the minimum with its own clock,
which may then be more than ``s`` behind the others.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Backoff, poll_until
from hpcnet.ps import windows as W
from hpcnet.ps.client import ShardClient


@dataclass
class SSPStats:
    """What one client's SSP gate did (seconds, counts, steps)."""

    max_staleness: int
    wait_s: float = 0.0  # seconds spent waiting for slower replicas
    waits: int = 0  # steps that had to wait
    reads: int = 0  # reads of shard 0's clocks
    max_gap: int = 0  # largest own clock - min live clock at a step's start


class ClockGate:
    """One client's SSP gate: publishes its replica's clock, waits for the slowest.

    Args:
        client: this client's handle on the shards (its heartbeats and stop flags).
        replica: this client's replica index.
        partitions: M, clients per replica (``client = replica * M + partition``).
        n_replicas: R.
        max_staleness: ``s >= 0``, in steps.
        timeout: seconds one wait may last before it is a
            :class:`hpcnet.errors.StallError` (give it more than ``--replica-timeout``:
            a lost replica leaves the minimum only once a shard has noticed).

    Who calls what: every client of an SSP run builds one; :meth:`publish` is called
    by every client after each step (only partition 0 writes), :meth:`wait` before
    each step. Not collective: one-sided operations on shard 0's control window only.
    """

    def __init__(
        self,
        client: ShardClient,
        replica: int,
        partitions: int,
        n_replicas: int,
        max_staleness: int,
        timeout: float,
    ):
        if max_staleness < 0:
            raise ValueError(f"max_staleness {max_staleness}: must be >= 0")
        self.client, self.replica = client, replica
        self.M, self.R = partitions, n_replicas
        self.publisher = client.client % partitions == 0
        self.timeout = timeout
        self.sw = client.shards[0]
        self.stats = SSPStats(max_staleness)
        self._published = 0
        self._blocks = np.zeros(n_replicas * partitions * W.PER_CLIENT, np.float64)
        self._one = np.zeros(1, np.float64)
        self._min_seen = 0.0  # min live clock of the other replicas at the last read

    def publish(self, clock: int) -> None:
        """Makes this replica's ``clock`` (its completed steps) visible at shard 0
        (partition 0 writes; the others return). Clocks only grow."""
        if not self.publisher or clock <= self._published:
            return
        sw = self.sw
        self._one[0] = clock - self._published
        sw.ctrl_win.Accumulate(
            self._one, sw.owner, (W.field(self.client.client, W.CLOCK), 1, MPI.DOUBLE), MPI.SUM
        )
        sw.ctrl_win.Flush(sw.owner)
        self._published = clock

    def _read_min(self) -> float | None:
        """The smallest clock of the other live replicas at shard 0 (None: none is left:
        every other one is done or lost). Also notes a stop (the client's flags)."""
        sw = self.sw
        self.client._read_head(sw)  # STOP / PREEMPT / REGROUP, as every client read does
        sw.ctrl_win.Get(self._blocks, sw.owner, (W.HEAD, len(self._blocks), MPI.DOUBLE))
        sw.ctrl_win.Flush(sw.owner)
        self.stats.reads += 1
        b = self._blocks.reshape(self.R, self.M, W.PER_CLIENT)
        gone = ((b[:, :, W.LOST] > 0) | (b[:, :, W.DONE] > 0)).any(axis=1)  # (R,)
        gone[self.replica] = True  # its own clock is the caller's
        live = b[~gone, 0, W.CLOCK]  # partition 0 publishes the replica's clock
        return float(live.min()) if live.size else None

    def _holds(self, clock: int, m: float | None) -> bool:
        return m is None or clock - m <= self.stats.max_staleness

    def wait(self, clock: int) -> float:
        """Returns once every other live replica's clock is ``>= clock - s`` (or the run
        is stopping: the client's ``stopped``); the seconds spent reading and waiting.

        Raises:
            StallError: the condition did not hold within ``timeout`` seconds.
            PeerDied: the run regroups (a shard set REGROUP, fault tolerance).
        """
        st = self.stats
        if self.R == 1 or clock - self._min_seen <= st.max_staleness:  # clocks only grow
            st.max_gap = max(st.max_gap, int(clock - self._min_seen) if self.R > 1 else 0)
            return 0.0
        t = time.perf_counter()
        state = {"min": self._read_min()}
        if not self._holds(clock, state["min"]):
            st.waits += 1

            def ready() -> bool:
                state["min"] = self._read_min()
                return self._holds(clock, state["min"]) or self.client.stopped

            poll_until(
                ready,
                self.timeout,
                f"client {self.client.client}'s SSP wait (replica {self.replica} at clock "
                f"{clock}, --max-staleness {st.max_staleness}: every live replica at clock "
                f">= {clock - st.max_staleness})",
                backoff=Backoff(first=50e-6, cap=2e-3),
                on_poll=lambda: (self.client.check_shards(), self.client.heartbeat()),
            )
        m = state["min"]
        if m is not None and self._holds(clock, m):  # (not a stop): the gate held
            self._min_seen = m
            st.max_gap = max(st.max_gap, int(clock - m))
        waited = time.perf_counter() - t
        st.wait_s += waited
        return waited
