"""Downpour after a parameter shard's process died (fault tolerance, :mod:`hpcnet.comm.ft`).

DistBelief keeps training when machines fail (Dean et al. 2012, sec. 4.1); a parameter
shard's death takes its range of the parameters with it. Under ULFM the live ranks
learn it from MPI (:class:`hpcnet.comm.ft.PeerDied`, raised in the shards' service loop and in the
replicas' parameter-server client), leave their programs with what they hold
(:class:`~hpcnet.algos.lifecycle.Regroup`), and :func:`regroup` (collective over the
live ranks):

1. agrees on the live ranks (:func:`hpcnet.comm.ft.shrink`);
2. rebuilds the whole flat vector and the Adagrad accumulators: the surviving shards'
   slices as they were; each dead shard's range from the newest checkpoint of this
   layout (``OUT/checkpoint.h5``: its slice and accumulators; lost: the pushes that
   shard applied after it), or, failing that, from the copy of the replica that
   fetched it last (lost: the pushes applied after that fetch, and the range's
   Adagrad accumulators, which restart at zero);
3. lays the live ranks out again (``max(1, S - dead)`` shards first, a replica taking
   a shard's place if none is left, the others replicas) and sets the run up over them
   as a resume with another replica count does: every replica restarts at the
   slowest survivor's position in epochs with fresh push counters
   (:func:`hpcnet.ps.checkpoint.resume_plan_new_replicas`).

Then every rank runs its (new) role's program again. Old windows are abandoned, not
freed: their ``Win_free`` is collective over the dead rank too.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnet.algos.survivors import live_and_spawned, move_run, printer_of
from hpcnet.comm import (
    allgather_objects,
    bcast_,
    bcast_object,
    ft,
)
from hpcnet.errors import RankLost
from hpcnet.layout import Layout
from hpcnet.run.checkpoint import read_rank_state

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import TrainingRun


def regroup(run: TrainingRun, carry: dict[str, Any]) -> None:
    """Collective over the live ranks of ``run.comm`` (and, with ``--replace-lost``, the
    processes spawned in place of the dead, which join here), after a rank died:
    ``run`` is set up again over them (communicator, layout, role, budget, windows)
    and every rank runs its role's program again.

    Args:
        carry: what this rank brings: a shard its ``snapshot`` (``arrays``: ``slice``,
            ``accum``; ``version``); a replica its ``step`` and the shards' ``versions``
            at its last fetch (its parameters are ``run.model.params``); a process that
            joins ``{"kind": "new"}`` (``run.comm``: already merged with the others).
    Raises:
        RankLost: no replica would be left, or the model is split (``--partitions``).
    """
    t0 = time.time()
    joining = carry["kind"] == "new"
    if joining:
        comm = run.comm
    else:
        comm, lost = live_and_spawned(run, carry.get("grow", 0))
    meta = {k: v for k, v in carry.items() if k != "arrays"}
    metas = allgather_objects(meta, comm, "downpour regroup: who holds what")
    plan = bcast_object(
        None if joining or comm.Get_rank() != 0 else _plan(run, metas, lost, comm),
        comm,
        what="downpour regroup: the plan",
    )
    if isinstance(plan, str):  # rank 0 found the run cannot go on
        raise RankLost(plan, printer=printer_of(comm))
    params = run.model.params
    adagrad = run.cfg.ps.rule == "adagrad"
    accum = np.zeros(params.size, np.float32) if adagrad else None
    for src in plan["sources"]:
        lo, hi = src["lo"], src["hi"]
        if src["from"] == "alive":  # a live shard: its slice and accumulators as they are
            if src["root"] == comm.Get_rank():
                params[lo:hi] = carry["arrays"]["slice"]
                if adagrad:
                    accum[lo:hi] = carry["arrays"]["accum"]
            bcast_(params[lo:hi], comm, src["root"])
            if adagrad:
                bcast_(accum[lo:hi], comm, src["root"])
        elif src["from"] == "checkpoint":  # every rank reads the dead shard's state
            arrays, _ = read_rank_state(src["path"], src["old_rank"])
            params[lo:hi] = arrays["slice"]
            if adagrad and "accum" in arrays:
                accum[lo:hi] = arrays["accum"]
        else:  # the replica that fetched it last; the accumulators restart at 0
            bcast_(params[lo:hi], comm, src["root"])
    if not joining and not ft.enabled():  # nobody died (grow): the old windows go
        for sw in run.shared.windows:
            sw.free()
    layout = Layout(**plan["layout"])
    if not joining:
        run.lost_report += plan["lost_ranks"]
    record = {
        k: plan[k] for k in ("lost_ranks", "dead_shards", "epoch", "version", "added_on_request")
    }
    record.update(
        restored=[s for s in plan["sources"] if s["from"] != "alive"],
        spawned=plan["spawned"],
        layout=layout.describe(),
        detected_unix=carry.get("detected_unix", t0),
    )
    run.regroups.append(record)
    move_run(run, comm, layout)
    if plan["text"]:
        run.say(plan["text"])  # the new rank 0 (rank 0 may have been the rank that died)
    run.regrouped = {
        "params": params,
        "accum": accum,
        "version": plan["version"],
        "epoch": plan["epoch"],
    }
    run.shared = run.algo.setup(run)  # the windows over the live ranks, state restored
    record["regroup_s"] = time.time() - t0


def _plan(run: TrainingRun, metas: list[dict], lost: list[int], comm) -> dict | str:
    """Rank 0: where each range of the parameters comes from, the new layout, the epoch
    to go on from, and the line to print; a str when the run cannot go on."""
    old = run.layout
    old_ranks = [r for r in range(old.world_size) if r not in lost]  # by new rank
    dead = [old.role(r).index for r in lost if old.role(r).kind == "shard"]
    size = comm.Get_size()
    shards = max(1, old.shards - len(dead)) if not run.cfg.faults.replace_lost else old.shards
    if old.partitions > 1 or size - shards < 1:
        why = "a split model (--partitions)" if old.partitions > 1 else "with no replica left"
        named = ", ".join(f"rank {r} ({old.role(r)})" for r in lost)
        return (
            f"{named} died and Downpour cannot regroup {why}: resume from the newest "
            f"checkpoint with --resume {run.prep.out}"
        )
    ckpt = _checkpoint_of_layout(run)
    sources, version = [], 0
    for s, (lo, hi) in enumerate(run.shared.ranges):
        old_rank = old.shard_ranks[s]
        src = {"shard": s, "lo": lo, "hi": hi}
        if old_rank in old_ranks:
            root = old_ranks.index(old_rank)
            src.update({"from": "alive", "root": root})
            version = max(version, metas[root]["version"])
        elif ckpt is not None:
            _, state = read_rank_state(ckpt[0], old_rank)
            src.update(
                {"from": "checkpoint", "path": ckpt[0], "old_rank": old_rank, "step": ckpt[1]}
            )
            src["version"] = int(state["version"])
            version = max(version, src["version"])
        else:
            v, root = max(
                (m["versions"][s], i) for i, m in enumerate(metas) if m["kind"] == "replica"
            )
            src.update({"from": "replica copy", "root": root, "replica": metas[root]["index"]})
            src["version"] = v
            version = max(version, v)
        sources.append(src)
    layout = Layout(size, "downpour", 0, shards, size - shards)
    epochs = [m["step"] / run.budget.steps_per_epoch for m in metas if m["kind"] == "replica"]
    epoch = min(epochs) if epochs else 0.0
    spawned = sum(m["kind"] == "new" for m in metas)
    lost_ranks = [{"rank": r, "role": str(old.role(r))} for r in lost]
    asked = spawned - (len(lost) if run.cfg.faults.replace_lost else 0)
    text = (
        "downpour: "
        + (f"{', '.join(f'rank {r} ({old.role(r)})' for r in lost)} died; " if lost else "")
        + "".join(_restored_text(src) + "; " for src in sources if src["from"] != "alive")
        + (f"{spawned - asked} new process(es) spawned in their place; " if spawned > asked else "")
        + (f"{asked} replica(s) added on request (python -m hpcnet grow); " if asked else "")
        + f"going on as {layout.describe()} from epoch {epoch:.3f}"
    )
    return {
        "sources": sources,
        "layout": layout.to_dict(),
        "epoch": epoch,
        "version": version,
        "dead_shards": dead,
        "lost_ranks": lost_ranks,
        "spawned": spawned,
        "added_on_request": asked,
        "text": text,
    }


def _restored_text(src: dict) -> str:
    if src["from"] == "checkpoint":
        return (
            f"shard {src['shard']}'s range restored from the checkpoint of step {src['step']} "
            "(lost: the pushes it applied after it)"
        )
    return (
        f"shard {src['shard']}'s range restored from replica {src['replica']}'s copy "
        f"fetched at version {src['version']} (lost: the pushes applied after that fetch, "
        "and its Adagrad accumulators)"
    )


def _checkpoint_of_layout(run: TrainingRun) -> tuple[str, int] | None:
    """(path, step) of OUT/checkpoint.h5 when it is an intermediate checkpoint of this
    very layout (its ``ranks/R`` are this run's shards); None otherwise."""
    import json

    import h5py

    path = run.prep.out / "checkpoint.h5"
    try:
        with h5py.File(path, "r") as f:
            layout = f.attrs["layout"]
            layout = json.loads(layout) if isinstance(layout, str) else None
            if f.attrs["final"] or layout != run.layout.to_dict():
                return None
            return str(path), int(f.attrs["step"])
    except (OSError, KeyError, ValueError):
        return None
