"""Sandblaster after its coordinator's process died (fault tolerance, :mod:`hpcnet.comm.ft`).

The coordinator holds no vector (Dean et al. 2012, sec. 4.2): the shards hold x, g and
the L-BFGS history, and the coordinator a few scalars. So a new coordinator can take
over from the iteration in progress, without a restart and without a checkpoint:

* at every iteration boundary (after ``COMMIT``) the coordinator sends every shard
  ``MARK``: the iteration and a *mirror* of its own state (f, g.g, accuracy, the pairs
  stored, passes, counters, the loss history, the losses of replicas); each shard keeps
  references to its x, g and history there (:meth:`LBFGSShardState.mark`; the last two
  boundaries, since a coordinator that died while sending ``MARK`` left some shards
  one ahead);
* every ``BEGIN`` tells the shards where the line search is: pass, step t, its try and
  the direction's number in the iteration (:attr:`LBFGSShardState.position`).

When the coordinator dies, the shard or replica that learns it first (its polls ask MPI
for failed processes) revokes the run's communicator, so every live rank's pending
operation fails too and each raises :class:`~hpcnet.algos.lifecycle.Regroup`. Then
:func:`regroup` (collective over the live ranks):

1. agrees on the live ranks (:func:`hpcnet.comm.ft.shrink`; with ``--replace-lost``
   a new process is spawned per dead one and joins as a replica);
2. takes the oldest boundary any shard holds as its newest (every shard has it), the
   mirror there, and the line search's newest position after it;
3. lays the ranks out again: the lowest live replica takes the coordinator's role
   (a rank of our single-threaded loops cannot serve shard commands and drive them at
   once, and a replica holds no state), the shards keep theirs, the other replicas
   follow; new parameter windows over the live ranks (the old ones are abandoned:
   their ``Win_free`` is collective over the dead rank too);
4. every shard rolls back to that boundary; the new coordinator restores the mirror,
   recomputes the direction (it depends only on the shards' state) and goes on with
   the line search at the try that was in flight.

The passes of the interrupted try are lost (their gradients were being summed for the
coordinator that died) and count in the pass budget. The run cannot go on (one line,
exit 3, as before) when a shard died too or fewer than two replicas are left.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from hpcnet.algos.survivors import live_and_spawned, move_run, printer_of
from hpcnet.comm import allgather_objects, bcast_object, ft
from hpcnet.errors import RankLost
from hpcnet.layout import Layout

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from hpcnet.algos.lifecycle import TrainingRun
    from hpcnet.ps.lbfgs_shard import LBFGSShardState


class CoordinatorWatch:
    """A shard's or a replica's check for the coordinator's death (under fault tolerance
    only; a no-op otherwise): :meth:`check` revokes the run's communicator and raises
    :class:`~hpcnet.algos.lifecycle.Regroup` with ``carry()`` once MPI reports the
    coordinator dead or another rank revoked the communicator. Local knowledge, asked
    at most every 50 ms unless forced.

    Args:
        run: the run (its communicator and layout).
        carry: what this rank brings to the regroup (see :func:`regroup`).
    """

    def __init__(self, run: TrainingRun, carry: Callable[[], dict[str, Any]]):
        self.run, self.carry = run, carry
        self._next = 0.0

    def check(self, force: bool = False) -> None:
        """Raises Regroup when the coordinator died.

        Raises:
            Regroup: the coordinator's process died (or a rank revoked the communicator
                because it did).
        """
        from hpcnet.algos.lifecycle import Regroup

        now = time.monotonic()
        if not ft.enabled() or (now < self._next and not force):
            return
        self._next = now + 0.05
        comm = self.run.comm
        try:
            revoked = comm.Is_revoked()
        except MPI.Exception:
            revoked = True
        if revoked or self.run.layout.coordinator_rank in ft.failed_ranks(comm):
            detected = time.time()
            try:
                comm.Revoke()  # every live rank's pending operation fails: all regroup
            except MPI.Exception:  # revoked already
                pass
            raise Regroup({**self.carry(), "detected_unix": detected})


def shard_carry(index: int, state: LBFGSShardState) -> dict[str, Any]:
    """What a shard brings to :func:`regroup`: its boundaries and the mirrors there, the
    line search's position, and (``state``, kept local) its L-BFGS state."""
    return {
        "kind": "shard",
        "index": index,
        "state": state,
        "boundaries": [b[0] for b in state.boundaries],
        "mirrors": {b[0]: b[2] for b in state.boundaries},
        "position": state.position,
    }


def regroup(run: TrainingRun, carry: dict[str, Any]) -> None:
    """Collective over the live ranks of ``run.comm`` (and the processes spawned with
    ``--replace-lost``, which join here) after the coordinator died: the run is set up
    again over them with a new coordinator (module docstring), and ``run.regrouped``
    holds what each role's program starts from.

    Args:
        carry: a shard's :func:`shard_carry`; a replica's ``{"kind": "replica",
            "index": r}``; a joining process's ``{"kind": "new"}``.
    Raises:
        RankLost: a shard died too, or fewer than two replicas are left (the line names
            the checkpoint to resume from).
    """
    t0 = time.time()
    joining = carry["kind"] == "new"
    if joining:
        comm, lost = run.comm, []
    else:
        comm, lost = live_and_spawned(run, 0)
    meta = {k: v for k, v in carry.items() if k != "state"}
    metas = allgather_objects(meta, comm, "sandblaster failover: who holds what")
    plan = bcast_object(
        None if joining or comm.Get_rank() != 0 else _plan(run, metas, lost),
        comm,
        what="sandblaster failover: the plan",
    )
    if isinstance(plan, str):
        raise RankLost(plan, printer=printer_of(comm))
    alive = comm.Split(0, plan["order"].index(comm.Get_rank()))  # coordinator first
    layout = Layout(**plan["layout"])
    if carry["kind"] == "shard":
        state = carry["state"]
        state.rollback(plan["iteration"])
        if plan["mirror"] is None:  # no boundary yet: the new coordinator starts afresh
            state.reset()
    if not joining:
        run.lost_report += plan["lost_ranks"]
    record = {k: plan[k] for k in ("lost_ranks", "iteration", "position", "passes", "spawned")}
    record.update(
        new_coordinator=plan["new_coordinator"],
        layout=layout.describe(),
        detected_unix=carry.get("detected_unix", t0),
    )
    run.regroups.append(record)
    move_run(run, alive, layout)
    run.say(plan["text"])
    if run.role.kind == "coordinator":
        run.regrouped = {k: plan[k] for k in ("mirror", "position", "passes")}
    elif run.role.kind == "shard":
        run.regrouped = {"state": carry["state"]}
    else:
        run.regrouped = None
    run.shared = run.algo.setup(run)  # the windows over the live ranks
    record["regroup_s"] = time.time() - t0


def _plan(run: TrainingRun, metas: list[dict], lost: list[int]) -> dict | str:
    """Rank 0 of the live ranks: the boundary to go on from, the new order of the ranks
    and layout, and the line to print; a str when the run cannot go on."""
    from hpcnet.algos.sandblaster.protocol import coordinator_died

    old = run.layout
    named = ", ".join(f"rank {r} ({old.role(r)})" for r in lost)
    shards = sorted((m["index"], i) for i, m in enumerate(metas) if m["kind"] == "shard")
    replicas = [i for i, m in enumerate(metas) if m["kind"] == "replica"]
    replicas.sort(key=lambda i: metas[i]["index"])
    live_replicas = len(replicas)
    replicas += [i for i, m in enumerate(metas) if m["kind"] == "new"]
    if len(shards) < old.shards or len(replicas) < 2 or not live_replicas:
        why = (
            "a parameter shard died too"
            if len(shards) < old.shards
            else ("fewer than two replicas are left (one takes the coordinator's role)")
        )
        return f"{named} died and {why}: {coordinator_died(old, run.prep.out)}"
    held = [metas[i] for _, i in shards]
    iteration = min(max(m["boundaries"]) for m in held)
    mirror = held[0]["mirrors"][iteration]
    positions = [m["position"] for m in held if max(m["boundaries"]) == iteration]
    positions = [p for p in positions if p is not None]
    position = max(positions, default=None)  # the newest BEGIN: the try in flight
    passes = max([mirror["passes"] if mirror else 0] + [p[0] for p in positions])
    order = [replicas[0]] + [i for _, i in shards] + replicas[1:]
    layout = Layout(len(order), "sandblaster", 1, old.shards, len(order) - 1 - old.shards)
    first = metas[replicas[0]]
    where = (
        f"iteration {iteration + 1}"
        + (f" (its line search at t={position[1]:.4g}, try {position[2] + 1})" if position else "")
        if mirror
        else "the start"
    )
    spawned = sum(m["kind"] == "new" for m in metas)
    text = (
        f"sandblaster: {named} died; rank {old.replica_ranks(first['index'])[0]} (replica "
        f"{first['index']}) takes the coordinator's role and goes on from {where}"
        + (f"; {spawned} new process(es) spawned in their place" if spawned else "")
        + f"; going on as {layout.describe()}"
    )
    return {
        "order": order,
        "layout": layout.to_dict(),
        "iteration": iteration,
        "mirror": mirror,
        "position": position,
        "passes": passes,
        "spawned": spawned,
        "lost_ranks": [{"rank": r, "role": str(old.role(r))} for r in lost],
        "new_coordinator": {
            "old_rank": old.replica_ranks(first["index"])[0],
            "was": f"replica {first['index']}",
        },
        "text": text,
    }
