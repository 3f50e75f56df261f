"""Sandblaster after its coordinator's or a parameter shard's process died (fault
tolerance, :mod:`hpcnet.comm.ft`).

The coordinator holds no vector (Dean et al. 2012, sec. 4.2): the shards hold x, g and
the L-BFGS history, and the coordinator a few scalars. So a new coordinator can take
over from the iteration in progress, without a restart and without a checkpoint:

* at every iteration boundary (after ``COMMIT``) the coordinator sends every shard
  ``MARK``: the iteration and a *mirror* of its own state (f, g.g, accuracy, the pairs
  stored, passes, counters, the loss history, the losses of replicas); each shard keeps
  references to its x, g and history there (:meth:`LBFGSShardState.mark`; the last two
  boundaries, since a coordinator that died while sending ``MARK`` left some shards
  one ahead), and so does the coordinator (its last two mirrors);
* every ``BEGIN`` tells the shards where the line search is: pass, step t, its try and
  the direction's number in the iteration (:attr:`LBFGSShardState.position`).

When the coordinator or a shard dies, the rank that learns it first (its polls ask MPI
for failed processes) revokes the run's communicator, so every live rank's pending
operation fails too and each raises :class:`~hpcnet.algos.lifecycle.Regroup`. Then
:func:`regroup` (collective over the live ranks):

1. agrees on the live ranks (:func:`hpcnet.comm.ft.shrink`; with ``--replace-lost``
   a new process is spawned per dead one and joins as a replica);
2. takes the oldest boundary any live shard holds as its newest (every shard has it),
   the mirror there, and the line search's newest position after it;
3. lays the ranks out again: live replicas, lowest index first, take the dead roles (a
   rank of our single-threaded loops cannot serve shard commands and drive them at
   once, and a replica holds no state), the others keep theirs; new parameter windows
   over the live ranks (the old ones are abandoned: their ``Win_free`` is collective
   over the dead rank too);
4. every live shard rolls back to that boundary. After a coordinator's death the new
   coordinator restores the mirror, recomputes the direction (it depends only on the
   shards' state) and goes on with the line search at the try that was in flight: the
   run goes on as if nothing happened. After a shard's death its range comes back from
   the parameters the replica that fetched last holds (the trial point of its pass, in
   float32), every shard forgets the history (the dead shard's part of it is gone) and
   L-BFGS starts afresh from that point, the counters and the loss history kept.

The passes of the interrupted try are lost (their gradients were being summed for the
coordinator that died) and count in the pass budget. The run cannot go on (one line,
exit 3, as before) when too few replicas are left to take the dead roles and still
leave one that works.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from mpi4py import MPI

from hpcnet.algos.survivors import live_and_spawned, move_run, printer_of
from hpcnet.comm import allgather_objects, bcast_, bcast_object, ft
from hpcnet.errors import RankLost
from hpcnet.layout import Layout
from hpcnet.ps.lbfgs_shard import LBFGSShardState

if TYPE_CHECKING:  # pragma: no cover
    from collections.abc import Callable

    from hpcnet.algos.lifecycle import TrainingRun


class PeerWatch:
    """Any rank's check for the death of a rank Sandblaster cannot go on without (the
    coordinator or a parameter shard), under fault tolerance only (a no-op otherwise):
    :meth:`check` revokes the run's communicator and raises
    :class:`~hpcnet.algos.lifecycle.Regroup` with ``carry()`` once MPI reports one of
    them dead or another rank revoked the communicator. Local knowledge, asked at most
    every 50 ms unless forced.

    Args:
        run: the run (its communicator and layout).
        carry: what this rank brings to the regroup (see :func:`regroup`).
    """

    def __init__(self, run: TrainingRun, carry: Callable[[], dict[str, Any]]):
        self.run, self.carry = run, carry
        layout = run.layout
        self.needed = {layout.coordinator_rank, *layout.shard_ranks}
        self._next = 0.0

    def check(self, force: bool = False) -> None:
        """Raises Regroup when the coordinator or a shard died.

        Raises:
            Regroup: their process died (or a rank revoked the communicator because one
                did).
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
        if revoked or self.needed & set(ft.failed_ranks(comm)):
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
    ``--replace-lost``, which join here) after the coordinator or a shard died: the run
    is set up again over them (module docstring), and ``run.regrouped`` holds what each
    role's program starts from.

    Args:
        carry: a shard's :func:`shard_carry`; the coordinator's ``{"kind":
            "coordinator", "marks": {iteration: mirror}}`` (its last two boundaries); a
            replica's ``{"kind": "replica", "index": r, "fetched": pass}`` (its
            parameters, fetched at that pass, are ``run.model.params``); a joining
            process's ``{"kind": "new"}``.
    Raises:
        RankLost: too few replicas are left to take the dead roles and still work (the
            line names the checkpoint to resume from).
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
    params = run.model.params
    if plan["copy_from"] is not None:  # a dead shard's range: a replica's fetched copy
        bcast_(params, comm, plan["copy_from"])
    me = comm.Get_rank()
    alive = comm.Split(0, plan["order"].index(me))  # coordinator, shards, replicas
    layout = Layout(**plan["layout"])
    state = carry.get("state")
    if state is not None:
        state.rollback(plan["iteration"])
    role = layout.role(plan["order"].index(me))
    if role.kind == "shard" and state is None:  # a replica takes a dead shard's place
        lo, hi = plan["ranges"][role.index]
        cfg = run.cfg
        state = LBFGSShardState(params[lo:hi], cfg.lbfgs.m, cfg.optim.weight_decay)
    if state is not None and (plan["restart"] or plan["mirror"] is None):
        state.reset()  # the history of a dead shard's range is gone: L-BFGS restarts
    if not joining:
        run.lost_report += plan["lost_ranks"]
    record = {
        k: plan[k] for k in ("lost_ranks", "iteration", "position", "passes", "spawned", "restart")
    }
    record.update(
        new_roles=plan["new_roles"],
        layout=layout.describe(),
        detected_unix=carry.get("detected_unix", t0),
    )
    run.regroups.append(record)
    move_run(run, alive, layout)
    run.say(plan["text"])
    if run.role.kind == "coordinator":
        run.regrouped = {k: plan[k] for k in ("mirror", "position", "passes", "restart")}
    elif run.role.kind == "shard":
        run.regrouped = {"state": state}
    else:
        run.regrouped = None
    run.shared = run.algo.setup(run)  # the windows over the live ranks
    record["regroup_s"] = time.time() - t0


def _plan(run: TrainingRun, metas: list[dict], lost: list[int]) -> dict | str:
    """Rank 0 of the live ranks: the boundary to go on from, who takes which role, where
    a dead shard's range comes from, and the line to print; a str when the run cannot
    go on."""
    from hpcnet.algos.sandblaster.protocol import coordinator_died

    old = run.layout
    named = ", ".join(f"rank {r} ({old.role(r)})" for r in lost)
    by_kind: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        by_kind.setdefault(m["kind"], []).append(i)
    shard_of = {metas[i]["index"]: i for i in by_kind.get("shard", [])}
    replicas = sorted(by_kind.get("replica", []), key=lambda i: metas[i]["index"])
    live_replicas = len(replicas)
    replicas += by_kind.get("new", [])
    coordinator = by_kind.get("coordinator", [])
    dead_shards = [s for s in range(old.shards) if s not in shard_of]
    needed = len(dead_shards) + (0 if coordinator else 1)
    if len(replicas) < needed + 1 or (needed and not live_replicas):
        return (
            f"{named} died and too few replicas are left to take their roles and still "
            f"work: {coordinator_died(old, run.prep.out)}"
        )
    # the boundary every live shard holds, and the coordinator's mirror there
    held = [metas[i] for i in shard_of.values()]
    marks = metas[coordinator[0]]["marks"] if coordinator else {}
    latest = [max(m["boundaries"]) for m in held] or [max(marks, default=-1)]
    iteration = min(latest)
    mirrors = [marks.get(iteration)] + [m["mirrors"].get(iteration) for m in held]
    mirror = next((x for x in mirrors if x is not None), None)
    positions = [m["position"] for m in held if max(m["boundaries"]) == iteration]
    position = max((p for p in positions if p is not None), default=None)
    passes = max([mirror["passes"] if mirror else 0] + ([position[0]] if position else []))
    # who takes what: the coordinator stays; live replicas fill the dead roles in order
    takers = list(replicas)
    new_roles = []
    first = coordinator[0] if coordinator else takers.pop(0)
    order = [first]
    if not coordinator:
        new_roles.append(_took(old, metas[first], "coordinator"))
    for s in range(old.shards):
        if s in shard_of:
            order.append(shard_of[s])
        else:
            order.append(takers.pop(0))
            new_roles.append(_took(old, metas[order[-1]], f"shard {s}"))
    order += takers
    copy_from = None
    if dead_shards:  # the replica whose parameters were fetched last
        copy_from = max(by_kind["replica"], key=lambda i: metas[i]["fetched"])
    layout = Layout(len(order), "sandblaster", 1, old.shards, len(order) - 1 - old.shards)
    restart = bool(dead_shards)
    if restart:
        where = (
            f"the range of shard(s) {dead_shards} from replica {metas[copy_from]['index']}'s "
            f"copy fetched at pass {metas[copy_from]['fetched']}; L-BFGS starts afresh there "
            "(its history is lost with the shard)"
        )
    elif mirror:
        where = f"iteration {iteration + 1}" + (
            f" (its line search at t={position[1]:.4g}, try {position[2] + 1})" if position else ""
        )
    else:
        where = "the start"
    spawned = len(by_kind.get("new", []))
    text = (
        f"sandblaster: {named} died; "
        + "; ".join(f"{t['old']} takes the role of {t['role']}" for t in new_roles)
        + f"; going on from {where}"
        + (f"; {spawned} new process(es) spawned in their place" if spawned else "")
        + f"; going on as {layout.describe()}"
    )
    return {
        "order": order,
        "layout": layout.to_dict(),
        "ranges": run.shared.ranges,
        "iteration": iteration,
        "mirror": mirror,
        "position": None if restart else position,
        "passes": passes,
        "restart": restart,
        "copy_from": copy_from,
        "spawned": spawned,
        "lost_ranks": [{"rank": r, "role": str(old.role(r))} for r in lost],
        "new_roles": new_roles,
        "text": text,
    }


def _took(old: Layout, meta: dict, role: str) -> dict[str, Any]:
    """A live replica (or a joining process) that takes a dead rank's ``role``."""
    if meta["kind"] == "new":
        return {"old": "a new process", "role": role}
    rank = old.replica_ranks(meta["index"])[0]
    return {"old": f"rank {rank} (replica {meta['index']})", "old_rank": rank, "role": role}
