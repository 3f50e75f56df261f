"""The Sandblaster L-BFGS shard's service loop, and both ends of its traffic: the
coordinator's commands (:class:`ShardGroup`), the replicas' parameter fetches
(:class:`ParameterWindows`) and gradient pushes (:func:`push_gradient`).

The shard's state and vector algebra are :class:`hpcnet.ps.lbfgs_shard.LBFGSShardState`;
this module moves the bytes. Per shard ``s`` with range ``[lo, hi)``:

* ``param`` window, (hi - lo,) float32, memory on the shard's rank only: the trial
  point ``x + t d`` of the current evaluation pass, written by the shard at
  ``begin`` (local stores + ``Win.Sync``) and ``Get`` by the replicas, once per
  pass each, inside one long ``Lock_all`` epoch. Created with the same info hints
  as the Downpour windows (:mod:`hpcnet.ps.windows`).
* commands: float64 ``[command, args...]`` from the coordinator (tag ``TAG_CMD``),
  one float64 reply each (tag ``TAG_REPLY``) except ``STOP``
  (:class:`hpcnet.ps.lbfgs_shard.Command` lists them with their bytes).
* pushes: (hi - lo,) float32 gradient sums from replicas, tag ``push_tag(pass)``,
  sent only after the coordinator accepted the push. The shard adds them as they
  arrive; at ``finalize`` it waits for exactly the number of pushes the
  coordinator accepted from each replica, so every unit's gradient is added
  exactly once (:mod:`hpcnet.algos.sandblaster.workunits`).

Bytes per evaluation pass: each replica fetches ``4 n_params`` B and each accepted
push moves ``4 n_params`` B, split over the shards; the commands are scalars.

Progress: the loop calls into MPI (``Iprobe``) at every turn and sleeps with
exponential back-off (20 us .. 2 ms) only when nothing arrived; every wait has a
named deadline (:class:`hpcnet.comm.Deadlines`).

Who must call what: :class:`ParameterWindows` and its :meth:`~ParameterWindows.free`
are collective over the communicator (every rank, same arguments). Each shard rank
runs :meth:`LBFGSShardService.run` until the coordinator's ``STOP``; the
coordinator alone uses :class:`ShardGroup` and must end with
:meth:`ShardGroup.stop`, or the shards wait until their deadline. Each command is
sent to every shard, so every shard sees the same command sequence.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Backoff, ft, poll_until, watchdog
from hpcnet.comm.messages import Channel
from hpcnet.errors import StallError
from hpcnet.layout import Layout
from hpcnet.ps.lbfgs_shard import TAG_CMD, TAG_REPLY, Command, LBFGSShardState, push_tag
from hpcnet.ps.windows import window_info


def pack_json(obj) -> np.ndarray:
    """``obj`` (JSON-able) as float64 values, one per byte of its JSON text (a command's
    arguments are float64)."""
    return np.frombuffer(json.dumps(obj).encode(), np.uint8).astype(np.float64)


def unpack_json(values: np.ndarray):
    """What :func:`pack_json` packed."""
    return json.loads(values.astype(np.uint8).tobytes().decode())


class ParameterWindows:
    """The served parameters of every shard: one float32 window per shard.

    Collective over ``comm``: every rank constructs it with the same arguments (one
    ``Win.Allocate`` per shard, in shard order); a rank that does not hangs the others.

    Args:
        comm: the run's communicator.
        shard_ranks: rank of each shard in ``comm``, shard 0 first.
        ranges: ``(lo, hi)`` of each shard in the flat parameter vector.
    """

    def __init__(
        self, comm: MPI.Intracomm, shard_ranks: Sequence[int], ranges: Sequence[tuple[int, int]]
    ):
        rank = comm.Get_rank()
        self.shard_ranks, self.ranges = list(shard_ranks), list(ranges)
        self.shard = self.shard_ranks.index(rank) if rank in self.shard_ranks else None
        self.fetched_pass = -1  # a replica's: the evaluation pass of its last fetch
        info = window_info()
        self.wins = [
            MPI.Win.Allocate((hi - lo) * 4 if owner == rank else 0, 4, info, comm)
            for owner, (lo, hi) in zip(self.shard_ranks, self.ranges, strict=True)
        ]
        info.Free()

    def served(self) -> np.ndarray:
        """On a shard's rank: its window memory, (hi - lo,) float32."""
        return np.frombuffer(self.wins[self.shard].tomemory(), np.float32)

    def publish(self) -> None:
        """On a shard's rank, after writing :meth:`served`: makes the stores visible
        to the replicas' ``Get`` (``Win.Sync`` inside the epoch of :meth:`lock`)."""
        self.wins[self.shard].Sync()

    def _mine(self) -> list[MPI.Win]:
        return [self.wins[self.shard]] if self.shard is not None else self.wins

    def lock(self) -> None:
        """Opens one passive-target epoch (``Lock_all``) for the whole run: on a shard's
        rank on its own window, on a replica's on every window. Not collective."""
        for w in self._mine():
            w.Lock_all(MPI.MODE_NOCHECK)

    def unlock(self) -> None:
        """Closes the epoch :meth:`lock` opened."""
        for w in self._mine():
            w.Unlock_all()

    def fetch(self, out: np.ndarray) -> None:
        """Replica: ``Get``s every shard's served slice into ``out`` ((n_params,)
        float32), complete on return (one ``Flush`` per shard). Inside :meth:`lock`."""
        for w, rank, (lo, hi) in zip(self.wins, self.shard_ranks, self.ranges, strict=True):
            w.Get(out[lo:hi], rank, (0, hi - lo, MPI.FLOAT))
        for w, rank in zip(self.wins, self.shard_ranks, strict=True):
            w.Flush(rank)

    def free(self) -> None:
        """Frees the windows. Collective over the communicator, after :meth:`unlock`."""
        for w in self.wins:
            w.Free()


def push_gradient(
    comm: MPI.Intracomm,
    grads: np.ndarray,
    shard_ranks: Sequence[int],
    ranges: Sequence[tuple[int, int]],
    pass_id: int,
) -> None:
    """Replica: sends each shard its slice of ``grads`` ((n_params,) float32, the
    per-sample gradients summed over the pushed units) for pass ``pass_id``.

    Only after the coordinator accepted the push: each shard's ``finalize`` waits
    for exactly the accepted pushes, so an unannounced push is never added.
    """
    channel = Channel(comm, push_tag(pass_id), np.float32)
    for rank, (lo, hi) in zip(shard_ranks, ranges, strict=True):
        channel.send(grads[lo:hi], rank)


class ShardGroup:
    """The coordinator's end of the shard commands: each method sends one
    :class:`~hpcnet.ps.lbfgs_shard.Command` to every shard and returns the sum of
    their replies (partial sums over the shards' slices add up to the whole).

    Args:
        comm: the run's communicator.
        shard_ranks: rank of each shard, shard 0 first.
        timeout: seconds a shard may take to answer (``Deadlines.shard_reply``).
    """

    def __init__(self, comm: MPI.Intracomm, shard_ranks: Sequence[int], timeout: float):
        self.ranks, self.timeout = list(shard_ranks), timeout
        self.give_up = None  # runs between polls for a reply and may raise (a shard died)
        self.commands = Channel(comm, TAG_CMD)
        self.replies = Channel(comm, TAG_REPLY)

    def _call(self, op: Command, *args: float) -> np.ndarray:
        self.commands.send_all([op, *args], self.ranks, self.timeout, f"coordinator: {op.name}")
        if op == Command.STOP:  # the one command without a reply
            return np.zeros(0)
        total = None
        for s, rank in enumerate(self.ranks):
            what = f"coordinator: shard {s}'s answer to {op.name}"
            backoff = Backoff(first=20e-6, cap=2e-3)
            part = self.replies.recv(rank, self.timeout, what, backoff, give_up=self.give_up)
            total = part if total is None else total + part
        return total

    def begin(self, pass_id: int, t: float, trial: int = 0, attempt: int = 0) -> None:
        """Every shard serves ``x + t d`` for pass ``pass_id`` (and is ready for its
        pushes); ``trial`` and ``attempt`` (the line search's try of this direction, the
        direction's number in this iteration) are kept for a failover."""
        self._call(Command.BEGIN, pass_id, t, trial, attempt)

    def mark(self, iteration: int, mirror: dict) -> None:
        """An iteration boundary: every shard keeps its state here and ``mirror`` (the
        coordinator's own state, JSON-able), from which a new coordinator goes on
        (:mod:`hpcnet.algos.sandblaster.failover`). 8 B per byte of its JSON text."""
        self._call(Command.MARK, iteration, *pack_json(mirror))

    def finalize(self, pass_id: int, n_samples: int, accepted_pushes: Sequence[int]) -> np.ndarray:
        """Waits for the pushes accepted from each replica; returns the sums
        ``[||x_trial||^2, g_trial . d, g_trial . g_trial, missing]`` (4,) float64, where
        ``missing`` > 0 when a shard went without the accepted push of a replica that
        died (under fault tolerance): the pass's gradient is incomplete."""
        return self._call(Command.FINALIZE, pass_id, n_samples, *accepted_pushes)

    def gram(self, k: int) -> np.ndarray:
        """The Gram matrix (2k+1, 2k+1) float64 of the basis [s.., y.., g]."""
        return self._call(Command.GRAM).reshape(2 * k + 1, 2 * k + 1)

    def direction(self, delta: np.ndarray) -> None:
        """d = sum_l delta_l b_l on every shard."""
        self._call(Command.DIRECTION, *delta)

    def accept(self) -> tuple[float, float]:
        """Moves to the trial point; returns (s . y, y . y) of the new pair."""
        sy, yy = self._call(Command.ACCEPT)
        return float(sy), float(yy)

    def commit(self, store: bool) -> None:
        self._call(Command.COMMIT, float(store))

    def reset(self) -> None:
        self._call(Command.RESET)

    def stop(self) -> None:
        """Ends every shard's service loop (the last command)."""
        self._call(Command.STOP)

    def snapshot(self, sizes: Sequence[int]) -> list[dict[str, np.ndarray]]:
        """Every shard's state (:meth:`LBFGSShardState.arrays`), shard order; ``sizes``:
        each shard's slice length. Between iterations only (after ``commit``)."""
        self.commands.send_all(
            [Command.SNAPSHOT], self.ranks, self.timeout, "coordinator: SNAPSHOT"
        )
        out = []
        for s, rank in enumerate(self.ranks):
            what = f"coordinator: shard {s}'s answer to SNAPSHOT"
            msg = self.replies.recv(rank, self.timeout, what, Backoff(first=20e-6, cap=2e-3))
            out.append(LBFGSShardState.unpack(msg, sizes[s]))
        return out


class LBFGSShardService:
    """Serves one L-BFGS shard: the coordinator's commands and the replicas' pushes.

    Args:
        comm: the run's communicator.
        windows: the parameter windows (this rank is one of their shards).
        state: this shard's L-BFGS state (its slice of x, d, g and the history).
        layout: the run's layout (the coordinator's rank, who is replica what).
        timeout: seconds ``finalize`` waits for the accepted pushes
            (``Deadlines.shard_reply``).
        idle_timeout: seconds the shard may hear nothing (no command, no push) before
            it reports a stall (``Deadlines.coordinator_reply``: a pass waits at most
            that long for a lost replica).
        on_poll: called at every turn of the loop (e.g. forwarding a signal this rank
            got to the coordinator).
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        windows: ParameterWindows,
        state: LBFGSShardState,
        layout: Layout,
        timeout: float,
        idle_timeout: float = 600.0,
        on_poll=None,
    ):
        self.comm, self.windows, self.state = comm, windows, state
        self.on_poll = on_poll
        self.layout, self.timeout, self.idle_timeout = layout, timeout, idle_timeout
        self.shard = windows.shard
        self.lo, self.hi = windows.ranges[self.shard]
        self.coordinator = layout.coordinator_rank
        self.commands = Channel(comm, TAG_CMD)
        self.replies = Channel(comm, TAG_REPLY)
        self.pushes = Channel(comm, push_tag(-1), np.float32)  # the current pass's
        self.received = np.zeros(layout.replicas, np.int64)  # pushes this pass, per replica
        self.pushes_received = 0
        self._buf = np.empty(self.hi - self.lo, np.float32)

    def run(self) -> dict:
        """Serves until ``STOP``; returns this shard's figures and, under ``"_x"``, its
        final slice of the parameters ((hi - lo,) float64).

        Raises:
            StallError: nothing (command or push) arrived for ``idle_timeout`` seconds.
        """
        self.windows.lock()
        backoff = Backoff(first=20e-6, cap=2e-3)
        heard = time.monotonic()
        served = 0
        while True:
            watchdog.heartbeat(served)
            if self.on_poll is not None:
                self.on_poll()
            if self._take_pushes():
                backoff.reset()
                heard = time.monotonic()
                continue
            got = self.commands.poll(self.coordinator)
            if got is None:
                idle = time.monotonic() - heard
                if idle > self.idle_timeout:
                    what = f"L-BFGS shard {self.shard} waiting for a command or a push"
                    raise StallError(watchdog.stall_report(what, idle))
                backoff.sleep()
                continue
            backoff.reset()
            heard = time.monotonic()
            served += 1
            cmd = got[1]
            try:
                op = Command(int(cmd[0]))
            except ValueError:
                raise RuntimeError(f"shard {self.shard}: unknown command {cmd[0]}") from None
            if op == Command.STOP:
                break
            self.replies.send(self._execute(op, cmd), self.coordinator)
        self.windows.unlock()
        return {
            "shard": self.shard,
            "lo": self.lo,
            "hi": self.hi,
            "pushes_received": self.pushes_received,
            "_x": self.state.x,
        }

    def _take_pushes(self) -> bool:
        """Adds every push of the current pass that has arrived; True if any.

        A replica killed while its push was on the way (under fault tolerance) leaves a
        message the receive fails on: it is dropped, and ``finalize`` reports that
        replica's accepted push missing (the pass is done again). Any other failure,
        or one while the coordinator or a shard is dead, raises."""
        took = False
        while True:
            try:
                push = self.pushes.poll(out=self._buf)
            except MPI.Exception as e:
                if not ft.is_failure(e) or self.comm.Is_revoked():
                    raise
                dead = set(ft.acknowledge(self.comm))
                if dead & {self.coordinator, *self.layout.shard_ranks}:
                    raise
                return took
            if push is None:
                return took
            source, grads = push
            self.state.add(grads)
            self.received[self.layout.role(source).index] += 1
            self.pushes_received += 1
            took = True

    def _execute(self, op: Command, cmd: np.ndarray) -> np.ndarray:
        state = self.state
        if op == Command.BEGIN:
            pass_id = int(cmd[1])
            self.pushes = Channel(self.comm, push_tag(pass_id), np.float32)
            position = (pass_id, float(cmd[2]), int(cmd[3]), int(cmd[4]))
            self.windows.served()[:] = state.begin(float(cmd[2]), position)
            self.windows.publish()
            self.received[:] = 0
        elif op == Command.FINALIZE:
            expected = cmd[3 : 3 + self.layout.replicas].astype(np.int64)
            missing = self._await_pushes(int(cmd[1]), expected)
            return np.append(state.finalize(int(cmd[2])), float(missing))
        elif op == Command.GRAM:
            return state.gram()
        elif op == Command.DIRECTION:
            state.direction(cmd[1:])
        elif op == Command.ACCEPT:
            return state.accept()
        elif op == Command.COMMIT:
            state.commit(bool(cmd[1]))
        elif op == Command.RESET:
            state.reset()
        elif op == Command.SNAPSHOT:
            return state.pack()
        elif op == Command.MARK:
            state.mark(int(cmd[1]), unpack_json(cmd[2:]))
        return np.ones(1)

    def _await_pushes(self, pass_id: int, expected: np.ndarray) -> bool:
        """Waits until every replica's accepted pushes of this pass have been added, or
        (under fault tolerance) every replica still owing one has died; returns whether
        a push is missing."""
        dead: set[int] = set()

        def arrived() -> bool:
            self._take_pushes()
            owing = set(np.flatnonzero(self.received < expected).tolist())
            if owing and ft.enabled():
                failed = ft.failed_ranks(self.comm)
                roles = [self.layout.role(r) for r in failed]
                dead.update(role.index for role in roles if role.kind == "replica")
            return owing <= dead

        what = f"shard {self.shard}: the pushes of pass {pass_id}"
        try:
            poll_until(arrived, self.timeout, what, backoff=Backoff(first=20e-6, cap=2e-3))
        except TimeoutError as e:
            raise TimeoutError(
                f"{e}: received {self.received.tolist()} of {expected.tolist()} per replica"
            ) from None
        return bool((self.received < expected).any())
