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

from hpcnet.algos.budget import StepBudget
from hpcnet.comm import allgather_objects, bcast_, ft, split_role_comms, watchdog
from hpcnet.errors import RankLost
from hpcnet.layout import Layout
from hpcnet.run.checkpoint import read_rank_state

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import Run


def regroup(run: Run, carry: dict[str, Any]) -> None:
    """Collective over the live ranks of ``run.comm``, after a shard died: ``run`` is
    set up again over them (communicator, layout, role, budget, windows) and every rank
    runs its role's program again.

    Args:
        carry: what this rank brings: a shard its ``snapshot`` (``arrays``: ``slice``,
            ``accum``; ``version``); a replica its ``step`` and the shards' ``versions``
            at its last fetch (its parameters are ``run.model.params``).
    Raises:
        RankLost: no replica would be left, or the model is split (``--partitions``).
    """
    t0 = time.time()
    old_comm, old = run.comm, run.layout
    alive = ft.shrink(old_comm, run.deadlines.end_barrier, "downpour regroup: live ranks")
    lost = ft.lost_between(old_comm, alive)
    old_ranks = [r for r in range(old_comm.Get_size()) if r not in lost]  # by new rank
    meta = {k: v for k, v in carry.items() if k != "arrays"}
    metas = allgather_objects(meta, alive)
    dead = [old.role(r).index for r in lost if old.role(r).kind == "shard"]
    new_shards = max(1, old.shards - len(dead))
    if old.partitions > 1 or alive.Get_size() - new_shards < 1:
        raise RankLost(
            f"parameter shard(s) {dead} died and Downpour cannot regroup "
            + ("a split model (--partitions)" if old.partitions > 1 else "with no replica left")
            + f": resume from the newest checkpoint with --resume {run.prep.out}",
            printer=0,
        )
    # 1. the whole flat vector and the accumulators, as the live shards and sources hold them
    n = run.model.n_params
    params = run.model.params  # a replica's fetched copy until overwritten below
    adagrad = run.cfg.ps.rule == "adagrad"
    accum = np.zeros(n, np.float32) if adagrad else None
    version, sources = 0, []
    ckpt = _checkpoint_of_layout(run)
    for s, (lo, hi) in enumerate(run.shared.ranges):
        old_rank = old.shard_ranks[s]
        if old_rank in old_ranks:  # alive: its slice and accumulators as they are
            root = old_ranks.index(old_rank)
            if root == alive.Get_rank():
                params[lo:hi] = carry["arrays"]["slice"]
                if adagrad:
                    accum[lo:hi] = carry["arrays"]["accum"]
            bcast_(params[lo:hi], alive, root)
            if adagrad:
                bcast_(accum[lo:hi], alive, root)
            version = max(version, metas[root]["version"])
            continue
        if ckpt is not None:  # every rank reads the dead shard's state from the file
            arrays, state = read_rank_state(ckpt[0], old_rank)
            params[lo:hi] = arrays["slice"]
            if adagrad and "accum" in arrays:
                accum[lo:hi] = arrays["accum"]
            version = max(version, int(state["version"]))
            sources.append(
                {"shard": s, "from": "checkpoint", "step": ckpt[1], "version": state["version"]}
            )
            continue
        fetched = [(m["versions"][s], i) for i, m in enumerate(metas) if m["kind"] == "replica"]
        v, root = max(fetched)  # the replica that fetched this range last
        bcast_(params[lo:hi], alive, root)  # its accumulators are lost: they restart at 0
        sources.append(
            {"shard": s, "from": "replica copy", "replica": metas[root]["index"], "version": v}
        )
    # 2. the live ranks laid out again: shards first, then replicas
    layout = Layout(alive.Get_size(), "downpour", 0, new_shards, alive.Get_size() - new_shards)
    epochs = [m["step"] / run.budget.steps_per_epoch for m in metas if m["kind"] == "replica"]
    epoch = min(epochs) if epochs else 0.0
    run.lost_report += [{"rank": r, "role": str(old.role(r))} for r in lost]
    run.regroups.append(
        {
            "dead_shards": dead,
            "lost_ranks": [{"rank": r, "role": str(old.role(r))} for r in lost],
            "restored": sources,
            "epoch": epoch,
            "version": version,
            "layout": layout.describe(),
            "detected_unix": carry.get("detected_unix", t0),
            "regroup_s": 0.0,  # set below
        }
    )
    _move_run(run, alive, layout)
    run.say(  # the new rank 0 (rank 0 may have been the shard that died)
        f"downpour: {', '.join(f'rank {r} ({old.role(r)})' for r in lost)} died; "
        + "; ".join(_restored_text(src) for src in sources)
        + f"; going on as {layout.describe()} from epoch {epoch:.3f}"
    )
    run.regrouped = {
        "params": params,
        "accum": accum,
        "version": version,
        "epoch": epoch,
    }
    run.shared = run.algo.setup(run)  # the windows over the live ranks, state restored
    run.regroups[-1]["regroup_s"] = time.time() - t0


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


def _checkpoint_of_layout(run: Run) -> tuple[str, int] | None:
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


def _move_run(run: Run, alive, layout: Layout) -> None:
    """``run`` as the live ranks see it from now on (every field that names ranks)."""
    from hpcnet.comm.messages import Channel
    from hpcnet.run.metrics import MetricsLog

    watchdog.abandon()  # its window spans the dead rank
    run.comm = alive
    run.rank = alive.Get_rank()
    run.prep.layout = layout
    run.role = layout.role(run.rank)
    run.budget = StepBudget.of(run.cfg, run.info.n_train, layout.replicas)
    run.comms = split_role_comms(layout, alive)
    watchdog.start(alive, run.cfg.run.timeout, lambda r: str(layout.role(r)))
    run._signals = Channel(alive, run._signals.tag)
    run.live = list(range(alive.Get_size()))
    run.lost = []
    if run.rank == 0 and run.prep.log is None:  # rank 0 writes the run's records now
        run.prep.log = MetricsLog(run.prep.out, append=True, tensorboard=run.cfg.run.tensorboard)
