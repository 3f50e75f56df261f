"""Checkpoints of a running Downpour parameter server, taken without stopping it.

Asynchronous replicas never meet, so a Downpour checkpoint is the shards' state
alone: each shard's parameter slice, its Adagrad accumulators, its version and,
per client, the pushes it has applied (its ACK counter, :mod:`hpcnet.ps.shard`).
Shard 0 (the *leader*, on world rank 0, which writes ``OUT/checkpoint.h5``)
decides when one is due, asks every other shard for a snapshot (a message on
:data:`TAG_REQUEST`), takes its own and collects theirs (:data:`TAG_STATE`,
:data:`TAG_ARRAYS`). A shard answers between two of its applies, in its service
loop or, once that has ended, while it waits for the end of the run; so a
request never meets a shard that stopped listening.

The shards' cuts differ by the pushes that landed in between. Resuming
(:func:`resume_plan`) restarts each replica at the newest step that *every* shard
has applied (its ACK times ``n_push``, the oldest cut), and tells the client to
skip, at each shard, the repeated pushes that shard applied before the restart:
every push is applied exactly once per shard across a restart, and the steps a
replica had computed but not yet pushed are computed again (asynchronous SGD is
not reproducible; what is kept is the shards' state and the data position).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from mpi4py import MPI

from hpcnet.comm import ft
from hpcnet.comm.messages import Channel

TAG_REQUEST, TAG_STATE, TAG_ARRAYS = 31, 32, 33

Snapshot = tuple[dict[str, np.ndarray], dict]  # (arrays, state) of one shard


@dataclass
class ClientResume:
    """Where one client restarts: the replica's ``step`` (0 .. total steps), and per
    shard the pushes it has ``sent`` (the shard's ACK) and how many of its next pushes
    to ``skip`` there (already applied before the restart)."""

    step: int
    sent: list[int]
    skip: list[int]


def resume_plan(
    acks: list[list[int]],
    touches: list[list[bool]],
    n_push: int,
    total_steps: int,
    partitions: int = 1,
) -> list[ClientResume]:
    """Where every client of a resumed Downpour run restarts.

    Args:
        acks: ``acks[s][c]``: pushes of client c applied by shard s at its snapshot.
        touches: ``touches[c][s]``: whether client c pushes to shard s.
        n_push: steps per push (``--n-push``); every push but a replica's last holds
            exactly that many.
        total_steps: steps per replica in the whole run.
        partitions: clients per replica (``--partitions``); a replica's partitions
            restart at the same step.
    Returns:
        One :class:`ClientResume` per client, in client order.
    """
    n_shards, n_clients = len(acks), len(touches)
    out = []
    for c in range(n_clients):
        r0 = c - c % partitions
        m = min(
            acks[s][k] for k in range(r0, r0 + partitions) for s in range(n_shards) if touches[k][s]
        )
        step = min(total_steps, m * n_push)
        done = step >= total_steps
        out.append(
            ClientResume(
                step=step,
                sent=[acks[s][c] for s in range(n_shards)],
                skip=[0 if done else max(0, acks[s][c] - m) for s in range(n_shards)],
            )
        )
    return out


def resume_plan_new_replicas(
    epoch: float, steps_per_epoch: int, total_steps: int, n_clients: int
) -> list[ClientResume]:
    """Where the clients restart when the replica count changed: every replica at the
    checkpoint's position in epochs (``epoch``, the checkpoint's) in this run's steps,
    with fresh push counters (the shards' ACKs restart at 0: the old replicas' push
    streams end at the checkpoint, whose state holds what they applied; what they had
    in flight is recomputed)."""
    step = min(total_steps, round(epoch * steps_per_epoch))
    return [ClientResume(step=step, sent=[], skip=[]) for _ in range(n_clients)]


def _pack(snap: Snapshot) -> tuple[np.ndarray, np.ndarray]:
    arrays, state = snap
    head = np.array([state["shard"], state["version"], *state["acks"]], np.float64)
    body = np.concatenate([arrays["slice"], arrays.get("accum", np.empty(0, np.float32))])
    return head, body


def _unpack(head: np.ndarray, body: np.ndarray, n: int) -> Snapshot:
    arrays = {"slice": body[:n].copy()}
    if len(body) > n:
        arrays["accum"] = body[n:].copy()
    state = {"shard": int(head[0]), "version": int(head[1]), "acks": [int(a) for a in head[2:]]}
    return arrays, state


class ShardCheckpoints:
    """The snapshot exchange between the shards of a Downpour run (see the module).

    Args:
        comm: the run's communicator.
        shard_ranks: the shards' ranks in ``comm``, shard order (``shard_ranks[0]``
            is the leader).
        sizes: each shard's slice length.
        shard: this rank's shard index.
        snapshot: this shard's ``ShardService.snapshot``.
        timeout: seconds a shard may take to answer (or the leader to receive).
    """

    def __init__(
        self,
        comm: MPI.Intracomm,
        shard_ranks: list[int],
        sizes: list[int],
        shard: int,
        snapshot,
        timeout: float,
    ):
        self.shard_ranks, self.sizes, self.shard = shard_ranks, sizes, shard
        self.snapshot, self.timeout = snapshot, timeout
        self.requests = Channel(comm, TAG_REQUEST)
        self.states = Channel(comm, TAG_STATE)
        self.arrays = Channel(comm, TAG_ARRAYS, np.float32)
        self.answered = 0

    def collect(self) -> list[Snapshot]:
        """The leader: every shard's snapshot, in shard order (its own taken now).

        Raises:
            StallError: a shard did not answer within the timeout.
            PeerDied: a shard's process died meanwhile (under fault tolerance).
        """
        others = self.shard_ranks[1:]
        self.requests.send_all([1.0], others, self.timeout, "checkpoint request to the shards")
        out = [self.snapshot()]
        for s, r in enumerate(others, start=1):
            what = f"checkpoint snapshot of shard {s} (rank {r})"
            dead = ft.alive_check(self.states.comm, [r])
            head = self.states.recv(r, self.timeout, what, give_up=dead)
            body = self.arrays.recv(r, self.timeout, what, give_up=dead)
            out.append(_unpack(head, body, self.sizes[s]))
        return out

    def answer(self) -> None:
        """Another shard: sends a snapshot for each request that has arrived (never
        waits for one).

        Raises:
            PeerDied: the leader asks the shards to regroup (it adds replicas:
                :mod:`hpcnet.algos.downpour.grow`, value 2.0 on this channel).
        """
        leader = self.shard_ranks[0]
        while (got := self.requests.poll(leader)) is not None:
            if got[1][0] == 2.0:  # the leader adds replicas (python -m hpcnet grow): regroup
                raise ft.PeerDied([])
            head, body = _pack(self.snapshot())
            what = f"shard {self.shard}'s checkpoint snapshot to the leader (rank {leader})"
            self.states.send_all(head, [leader], self.timeout, what)
            self.arrays.send_all(body, [leader], self.timeout, what)
            self.answered += 1
