"""The client's side of the parameter server: fetch parameters, push gradients.

Only one-sided operations (``Get``, ``Put``, ``Accumulate``, ``Flush``) inside one
``Lock_all`` epoch per window that lasts the whole run (docs/design.md, "Known MPI
pitfalls": MPICH stalls ~100 ms per ``Lock``/``Unlock`` while the target computes,
not with ``Flush`` inside a long epoch). See :mod:`hpcnet.ps.shard` for the push
protocol and the consistency guarantees.

Bytes per operation, for S shards and n parameters in total: a fetch moves
``4 n`` bytes of parameters plus ``56 S`` of counters (heartbeat, head, ACK); a push
moves ``4 n`` bytes of gradients plus ``112 S`` of counters (the slot check's 48
when it is not skipped).

Round trips (a ``Flush`` that waits; flushes of two windows back to back count once)
per shard, before issue 14 -> now:

* fetch: 2 -> 1. The heartbeat, the head, this client's ACK and the parameters go in
  one epoch; the version recorded is the one an earlier head read returned (a lower
  bound; see :meth:`ShardClient.fetch`). The first fetch, and ``read_own_writes``,
  read the head first (2).
* push: 3 -> 2 or 3. The slot check (ACK and head in one ``Flush``; it was an ACK
  read, then a head read when the slot was busy) is skipped when the last ACK read
  already shows the slot empty: with two inbox slots per client (the default), when
  the shard had applied the push before last by the last fetch, which is the usual
  case; then the gradient and its counters; then READY (with a ``Get`` of the head
  riding along).

A client is a replica, or with model parallelism one partition of it: its own
inbox slot and counter block, ``client = replica * M + partition`` (see
:mod:`hpcnet.ps.windows`). A partition owns only some ranges of the
flat vector: it fetches and pushes only the parts of the shards that hold them
(``n`` above becomes its owned count), and pushes (and so advances the version of)
only the shards it touches. Only one partition per replica reports the training
counters, so progress lines count each sample once.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Backoff, ft, poll_until
from hpcnet.ps import windows as W


@dataclass
class ClientStats:
    """What one client did with the parameter server (seconds, bytes, counts)."""

    client: int
    fetches: int = 0
    pushes: int = 0
    fetch_s: float = 0.0
    push_s: float = 0.0  # includes waiting for the shard to empty the slot
    push_wait_s: float = 0.0
    bytes_in: int = 0
    bytes_out: int = 0
    first_fetch_version: int = -1  # shard 0's version at this client's first fetch


class ShardClient:
    """A client's handle on every parameter shard.

    Args:
        shards: every shard's windows, from :func:`hpcnet.ps.windows.create_shard_windows`.
        client: this client's index (its inbox slot and counter block): the replica,
            or ``replica * M + partition`` with M partitions per replica.
        wait_timeout: seconds a push may wait for its slot before it is an error.
        owned: ``[start, stop)`` ranges of the flat vector this client fetches and
            pushes (None: all of it).
        report_stats: whether pushes carry the training counters (steps, loss,
            correct, samples); one partition per replica does.
        sent: per shard, this client's pushes the shard has already consumed (a
            resumed run: its ACK in the checkpoint); None: none.
        skip: per shard, how many of this client's next pushes it must not receive
            (a resumed run repeats the steps after the oldest shard's cut; a shard whose
            cut is newer already applied those pushes); None: none.
        comm: the communicator the windows were made on: under fault tolerance the
            client checks that the shards live (:meth:`check_shards`); None: it does not.
    """

    def __init__(
        self,
        shards: list[W.ShardWindows],
        client: int,
        wait_timeout: float,
        owned: list[tuple[int, int]] | None = None,
        report_stats: bool = True,
        sent: list[int] | None = None,
        skip: list[int] | None = None,
        comm: MPI.Comm | None = None,
    ):
        self.shards, self.client = shards, client
        self.wait_timeout = wait_timeout
        self.report_stats = report_stats
        # per shard: the [a, b) pieces (flat-vector indices) this client moves
        self.pieces = [
            [(sw.lo, sw.hi)]
            if owned is None
            else [(max(a, sw.lo), min(b, sw.hi)) for a, b in owned if a < sw.hi and b > sw.lo]
            for sw in shards
        ]
        self.touched = [sw for sw, pcs in zip(shards, self.pieces, strict=True) if pcs]
        self.n_moved = sum(b - a for pcs in self.pieces for a, b in pcs)
        self.stats = ClientStats(client)
        self.stopped = False  # a shard has finished, or the run is stopping: stop training
        self.preempt_signal = 0  # the signal the run is stopping for (a shard's PREEMPT)
        n = len(shards)
        self.sent = np.array(sent or [0] * n, np.int64)  # per shard
        self.skip = np.array(skip or [0] * n, np.int64)
        self.versions = np.zeros(len(shards), np.int64)  # per shard, at the last fetch
        # per shard: the head as last read, the version in it (a lower bound of any
        # parameters Got after that read: VERSION only grows; -1: none read yet), this
        # client's ACK as last read (a lower bound of the shard's ACK)
        self._heads = np.zeros((n, W.HEAD), np.float64)
        self._lb = np.full(n, -1, np.int64)
        self._ack_buf = np.zeros(n, np.float64)
        self.acks = np.full(n, -(2**40), np.int64)  # unknown: the first push reads it
        self._one = np.ones(1, np.float64)
        # one counter block per shard: an Accumulate's origin buffer must stay as it is
        # until its Flush, and the blocks differ (BASE_VERSION)
        self._fields = np.zeros((len(shards), W.SAMPLES - W.BASE_VERSION + 1), np.float64)
        self.comm = comm
        self._next_check = 0.0
        for sw in shards:
            sw.lock_all()

    def check_shards(self, force: bool = False) -> None:
        """Under fault tolerance (:mod:`hpcnet.comm.ft`): raises when MPI reports a shard's
        process dead (local knowledge, checked at most every 50 ms unless ``force``).

        Raises:
            PeerDied: a shard died (its ranks in ``comm``).
        """
        if self.comm is None or not ft.enabled():
            return
        now = time.monotonic()
        if now < self._next_check and not force:
            return
        self._next_check = now + 0.05
        ft.check_alive(self.comm, [sw.owner for sw in self.shards])

    def close(self) -> None:
        """Ends the access epochs (before the windows are freed)."""
        for sw in self.shards:
            sw.unlock_all()

    def _get_head(self, sw: W.ShardWindows) -> None:
        """Starts a ``Get`` of shard ``sw``'s head; complete after the next ctrl Flush."""
        sw.ctrl_win.Get(self._heads[sw.shard], sw.owner, (0, W.HEAD, MPI.DOUBLE))

    def _get_ack(self, sw: W.ShardWindows) -> None:
        """Starts a ``Get`` of this client's ACK at shard ``sw`` (into ``self.acks``);
        complete after the next ctrl Flush."""
        i = sw.shard
        sw.ctrl_win.Get(
            self._ack_buf[i : i + 1], sw.owner, (W.field(self.client, W.ACK), 1, MPI.DOUBLE)
        )

    def _took_head(self, sw: W.ShardWindows, regroup: bool = True) -> np.ndarray:
        """After a ctrl Flush that completed :meth:`_get_head`: records the version (a
        lower bound for the next fetch) and acts on the flags: STOP and PREEMPT set
        ``stopped``; REGROUP raises (unless ``regroup`` is False: the caller raises
        later, see :meth:`push`)."""
        head = self._heads[sw.shard]
        self._lb[sw.shard] = int(head[W.VERSION])
        if head[W.STOP] > 0:
            self.stopped = True
        if head[W.PREEMPT] > 0:
            self.preempt_signal = int(head[W.PREEMPT])
            self.stopped = True
        if regroup and head[W.REGROUP] > 0:  # a rank died; the run regroups (fault tolerance)
            raise ft.PeerDied([])
        return head

    def _took_ack(self, sw: W.ShardWindows) -> None:
        i = sw.shard
        self.acks[i] = max(self.acks[i], int(self._ack_buf[i]))  # ACK only grows

    def _read_head(self, sw: W.ShardWindows) -> np.ndarray:
        """Reads shard ``sw``'s head (and this client's ACK there) in one round trip:
        two ``Get``s, one ``Flush``."""
        self._get_head(sw)
        self._get_ack(sw)
        sw.ctrl_win.Flush(sw.owner)
        self._took_ack(sw)
        return self._took_head(sw)

    def _add(self, sw: W.ShardWindows, name: int, value: float) -> None:
        self._one[0] = value
        sw.ctrl_win.Accumulate(
            self._one, sw.owner, (W.field(self.client, name), 1, MPI.DOUBLE), MPI.SUM
        )

    def heartbeat(self) -> None:
        """Tells every shard this client is alive (also done by fetch and push)."""
        for sw in self.shards:
            self._add(sw, W.HEARTBEAT, 1.0)
            sw.ctrl_win.Flush(sw.owner)

    def _wait_applied(self, sw: W.ShardWindows, pending: int = 0) -> float:
        """Waits, with heartbeats, until at most ``pending`` of this client's pushes
        are not yet consumed by shard ``sw`` (0: all applied; ``sw.slots - 1``: the slot
        of the next push is empty); returns the seconds waited. Sets ``stopped`` if the
        shard finished.

        No communication when the ACK last read already shows it (ACK only grows, and
        only this client's pushes fill its slots).

        Raises:
            TimeoutError: the shard did not take the push within ``wait_timeout`` seconds.
        """
        i = sw.shard
        if self.acks[i] + pending >= self.sent[i]:
            return 0.0  # known without asking

        def taken() -> bool:
            head = self._read_head(sw)  # the ACK and the head in one round trip
            if self.acks[i] + pending >= self.sent[i]:
                return True
            return head[W.STOP] > 0  # a finished shard takes no more

        t = time.perf_counter()
        poll_until(
            taken,
            self.wait_timeout,
            f"client {self.client}'s push to shard {sw.shard} (rank {sw.owner})",
            backoff=Backoff(first=10e-6, cap=1e-3),
            on_poll=lambda: (self.check_shards(), self._add(sw, W.HEARTBEAT, 1.0)),
        )
        return time.perf_counter() - t

    def wait_for_version(self, version: int, timeout: float) -> None:
        """Waits, with heartbeats, until shard 0's version reaches ``version`` (warm
        start) or the shard has finished.

        Raises:
            TimeoutError: the version was not reached within ``timeout`` seconds.
        """
        sw = self.shards[0]
        poll_until(
            lambda: self._read_head(sw)[W.VERSION] >= version or self.stopped,
            timeout,
            f"client {self.client}'s warm start (shard 0 reaching version {version})",
            backoff=Backoff(first=1e-3, cap=50e-3),
            on_poll=lambda: (self.check_shards(), self.heartbeat()),
        )

    def fetch(self, params: np.ndarray, read_own_writes: bool = False) -> None:
        """Copies every shard's parameters into ``params`` ((n_params,) float32, in
        place) and records each shard's version in ``self.versions``.

        One round trip per shard when an earlier read of the shard's head (the last
        push's, or the last fetch's) gave a version: the heartbeat, the head, this
        client's ACK and the parameters go in one epoch, the ctrl and param windows
        flushed back to back. ``versions`` is that earlier version: a lower bound of
        the parameters' version (VERSION only grows, and the read completed before the
        parameters' ``Get`` was issued), possibly lower than a read just before the
        ``Get`` would give, by the updates applied in between (a push and the next
        fetch follow each other in the training loop, so usually none). Without an
        earlier read (the first fetch) the head is read and flushed first, then the
        parameters: two round trips.

        Raises:
            PeerDied: a shard's process died (under fault tolerance), or the run
                regroups (REGROUP).
        """
        self.check_shards()
        t = time.perf_counter()
        for i, sw in enumerate(self.shards):
            self._add(sw, W.HEARTBEAT, 1.0)
            if not self.pieces[i]:
                sw.ctrl_win.Flush(sw.owner)
                continue
            if read_own_writes:
                self._wait_applied(sw)
            if self._lb[i] < 0 or read_own_writes:
                # no version known yet, or one read after the ACK showed our last push
                # applied (the Gets of one Flush are unordered): read it first
                self._read_head(sw)
            self.versions[i] = self._lb[i]
            self._get_head(sw)  # for the flags, and the next fetch's version
            self._get_ack(sw)  # so the next push may know its slot is empty
            for a, b in self.pieces[i]:
                sw.param_win.Get(params[a:b], sw.owner, (a - sw.lo, b - a, MPI.FLOAT))
        for sw in self.touched:
            sw.param_win.Flush(sw.owner)
            sw.ctrl_win.Flush(sw.owner)
        for sw in self.touched:
            self._took_ack(sw)
            self._took_head(sw)
        if self.stats.fetches == 0:
            self.stats.first_fetch_version = int(self.versions[0])
        self.stats.fetches += 1
        self.stats.fetch_s += time.perf_counter() - t
        self.stats.bytes_in += 4 * self.n_moved

    def push(
        self, grads: np.ndarray, steps: int, loss_sum: float, correct: int, samples: int
    ) -> None:
        """Puts ``grads`` ((n_params,) float32: the gradients summed since the last
        push; only read, so it may be the model's own gradient buffer) into this
        client's inbox slot on every shard, and accumulates the training counters
        (steps, loss sum, correct, samples) since the last push.

        Round trips per shard: the slot check (this client's ACK and the head, one
        ``Flush``), skipped when the last read ACK already shows this push's slot
        empty; the gradient and counters (inbox and ctrl flushed back to
        back); READY, with a ``Get`` of the head in the same epoch. READY is raised only
        after the gradient's ``Flush``: the shard never sees a half-written push.

        Raises:
            PeerDied: a shard's process died (under fault tolerance), or the run
                regroups (REGROUP; seen after this push was announced, so it counts).
        """
        t = time.perf_counter()
        if self.skip.any():
            # a resumed run's repeated push that a shard applied before the restart: not again
            to = [i for i in range(len(self.shards)) if self.skip[i] == 0]
            self.skip[self.skip > 0] -= 1
            targets = [self.shards[i] for i in to if self.pieces[i]]
        else:  # every push but those: every shard this client moves pieces of
            to, targets = range(len(self.shards)), self.touched
        for sw in targets:  # the slot of this push is empty
            self.stats.push_wait_s += self._wait_applied(sw, pending=sw.slots - 1)
        if self.stopped:
            self.stats.push_s += time.perf_counter() - t
            return
        for i in to:
            sw, f = self.shards[i], self._fields[i]
            k = int(self.sent[i])  # this push's number at shard i
            slot = sw.slot(self.client, k) - sw.lo
            for a, b in self.pieces[i]:  # the slot is this client's and empty: a Put
                sw.inbox_win.Put(grads[a:b], sw.owner, (slot + a, b - a, MPI.FLOAT))
            f[:] = 0.0
            f[k % sw.slots] = self.versions[i] if self.pieces[i] else 0  # its BASE_VERSION
            f[W.HEARTBEAT - W.BASE_VERSION] = 1.0
            if self.report_stats:
                f[W.STEPS - W.BASE_VERSION] = steps
                f[W.LOSS - W.BASE_VERSION] = loss_sum
                f[W.CORRECT - W.BASE_VERSION] = correct
                f[W.SAMPLES - W.BASE_VERSION] = samples
            sw.ctrl_win.Accumulate(
                f, sw.owner, (W.field(self.client, W.BASE_VERSION), len(f), MPI.DOUBLE), MPI.SUM
            )
        for i in to:  # the gradient is complete at every shard ...
            sw = self.shards[i]
            sw.inbox_win.Flush(sw.owner)
            sw.ctrl_win.Flush(sw.owner)
        for sw in targets:  # ... before it is announced
            self._add(sw, W.READY, 1.0)
            self.sent[sw.shard] += 1
            self._get_head(sw)  # the flags, and the next fetch's version, at no extra trip
        for sw in targets:
            sw.ctrl_win.Flush(sw.owner)
        self.stats.pushes += 1
        self.stats.push_s += time.perf_counter() - t
        self.stats.bytes_out += 4 * self.n_moved
        regroup = False
        for sw in targets:
            regroup |= self._took_head(sw, regroup=False)[W.REGROUP] > 0
        if regroup:  # the push is complete and announced: leave now, as at a next read
            raise ft.PeerDied([])

    def signal(self, signum: int) -> None:
        """Tells every shard that this client's replica got signal ``signum`` (SIGTERM,
        SIGUSR1): the shards stop the run (their PREEMPT) and checkpoint it."""
        for sw in self.shards:
            self._add(sw, W.SIGNAL, float(signum))
            sw.ctrl_win.Flush(sw.owner)

    def done(self) -> None:
        """Tells every shard this client has finished its work."""
        for sw in self.shards:
            self._add(sw, W.DONE, 1.0)
            sw.ctrl_win.Flush(sw.owner)
