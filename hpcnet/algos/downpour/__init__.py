"""Downpour SGD (Dean et al. 2012, sec. 4.1): asynchronous replicas and a sharded
parameter server on MPI-3 one-sided RMA windows.

Ranks: ``S`` parameter shards first, then ``R`` replicas. Each replica, on its own
rows of the data, loops: every ``n_fetch`` steps it ``Get``s the parameters from
every shard; it computes a gradient; every ``n_push`` steps it ``Accumulate``s
the gradients summed since the last push into the shards' inboxes. The shards
apply pushes as they arrive (SGD or Adagrad, :mod:`hpcnet.optim.rules`) and count
versions. The training loop uses one-sided operations only: no messages, no
collectives. Termination is by counters: a shard finishes when every replica
has said done or fallen silent for ``replica_timeout`` seconds (lost). Then the
lifecycle (:mod:`hpcnet.algos.lifecycle`) has every rank meet in a (polling,
time-limited) barrier, :func:`_finish` gathers the shards' slices, the replicas
evaluate the test split, and rank 0 (shard 0) writes the results.

Learning rate at the shards: ``lr_at(version)`` with the run's warmup and
schedule, counting one version per push; the expected number of pushes is
``R * steps / n_push``.

Checkpoints (``--checkpoint-every``, ``--checkpoint-every-s``) are the shards'
state, collected by shard 0 without stopping anyone (:mod:`hpcnet.ps.checkpoint`);
``--resume`` restarts each replica where every shard's cut holds it and skips the
pushes a shard already applied. SIGTERM/SIGUSR1 on any rank: the replica tells the
shards (its SIGNAL counter), a shard sets PREEMPT, every replica stops at its next
step, shard 0 checkpoints, and the lifecycle ends every rank with 128 + signal.

Bounded staleness (``--max-staleness s``, SSP; Ho et al. 2013, sec. 2-3): a replica
at clock c (its completed steps) starts its next step only once every live replica
has reached c - s (:mod:`hpcnet.ps.ssp`); summary.json's ``ssp`` says the largest
clock gap the replicas saw (<= s) and how long they waited.

Modules: this one (set-up, end, summary), :mod:`.shard` (the shards' program,
shard 0's progress records and checkpoints), :mod:`.replica` (the replicas').
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from hpcnet.algos.downpour.options import OPTIONS
from hpcnet.algos.downpour.regroup import regroup
from hpcnet.algos.downpour.replica import run_replica
from hpcnet.algos.downpour.shard import run_shard
from hpcnet.algos.lifecycle import TrainingRun
from hpcnet.algos.registry import SHARDED_FLAGS, Algorithm, register
from hpcnet.algos.resume import replicas_changed
from hpcnet.comm import (
    allgather_objects,
    allgather_ranges,
    barrier_polling,
    ft,
    same_on_every_rank,
)
from hpcnet.layout import LayoutRule
from hpcnet.optim.rules import make_rule
from hpcnet.ps import windows as W
from hpcnet.ps.checkpoint import (
    ClientResume,
    ShardCheckpoints,
    resume_plan,
    resume_plan_new_replicas,
)
from hpcnet.ps.shard import ShardService, ShardStats
from hpcnet.run.checkpoint import read_rank_state

__all__ = ["DOWNPOUR"]


@dataclass
class _Shared:
    """What the ranks of a Downpour run share, built collectively by :func:`_setup`."""

    ranges: list[tuple[int, int]]  # each shard's [lo, hi) of the flat vector
    windows: list[W.ShardWindows]  # every shard's RMA windows
    touches: list[list[bool]]  # touches[c][s]: client c pushes to shard s
    resume: list[ClientResume] | None  # per client, where a resumed run restarts
    service: ShardService | None = None  # this shard's service (shard ranks)
    checkpoints: ShardCheckpoints | None = None  # this shard's snapshot exchange

    @property
    def touching(self) -> list[int]:
        """Per shard: how many clients push to it."""
        return [sum(t[s] for t in self.touches) for s in range(len(self.ranges))]


def _setup(run: TrainingRun) -> _Shared:
    """Collective: the shards' windows (``--inbox-slots`` slots per client = replica x
    partition), which clients touch which shard, the parameters in the shards' windows
    (initial, or a resumed run's shard state), and a barrier: the shards hold them before
    any replica fetches."""
    model, layout, comm, cfg = run.model, run.layout, run.comm, run.cfg
    with same_on_every_rank():
        ranges = W.shard_ranges(model.n_params, layout.shards, [a for _, a, _ in model.segments])
    windows = W.create_shard_windows(
        comm, layout.shard_ranks, ranges, layout.n_clients, slots=cfg.ps.inbox_slots
    )
    # which clients push to which shard (a partition pushes only where its parameters are)
    owned = allgather_objects(run.part.owned if run.part else None, comm)
    by_client, client_ranks = {}, {}
    for r in range(comm.Get_size()):
        role = layout.role(r)
        if role.kind == "replica":
            by_client[layout.client(role.index, role.partition)] = owned[r]
            client_ranks[layout.client(role.index, role.partition)] = r
    touches = [
        [o is None or any(a < hi and b > lo for a, b in o) for lo, hi in ranges]
        for _, o in sorted(by_client.items())
    ]
    resume, states = None, None
    if run.regrouped is not None:  # after a shard died: the state regroup() rebuilt
        g = run.regrouped
        states = [
            (
                {"slice": g["params"][lo:hi].copy()}
                | ({"accum": g["accum"][lo:hi].copy()} if g["accum"] is not None else {}),
                {"shard": s, "version": g["version"], "acks": [0] * layout.n_clients},
            )
            for s, (lo, hi) in enumerate(ranges)
        ]
        resume = resume_plan_new_replicas(
            g["epoch"], run.budget.steps_per_epoch, run.budget.total_steps, layout.n_clients
        )
        run.regrouped = None
    elif run.prep.resume is not None:  # every rank reads the shards' state from the file
        info = run.prep.resume
        states = [read_rank_state(info["path"], r) for r in layout.shard_ranks]
        if replicas_changed(info, layout):  # fresh push streams from the shards' state
            for _, st in states:
                st["acks"] = [0] * layout.n_clients
            resume = resume_plan_new_replicas(
                float(info["epoch"]),
                run.budget.steps_per_epoch,
                run.budget.total_steps,
                layout.n_clients,
            )
            run.say(
                f"downpour: resuming {info['layout']['replicas']} replicas' checkpoint with "
                f"{layout.replicas}: every replica restarts at epoch {float(info['epoch']):.3f}"
            )
        else:
            resume = resume_plan(
                [st["acks"] for _, st in states],
                touches,
                cfg.ps.n_push,
                run.budget.total_steps,
                layout.partitions,
            )
    shared = _Shared(ranges, windows, touches, resume)
    if run.role.kind == "shard":
        s = run.role.index
        mine = windows[s]
        service = ShardService(
            mine,
            make_rule(cfg.ps.rule, mine.n),
            run.lr_schedule(clients=shared.touching[s], n_push=cfg.ps.n_push, scale_batch=False),
            run.deadlines.replica_silence,
            comm,
            signal_of=lambda: run.preempt.signum if run.preempt else 0,
            client_ranks=[client_ranks[c] for c in range(layout.n_clients)],
            peer_ranks=[r for r in layout.shard_ranks if r != run.rank],
            regroup_on_death=cfg.faults.replace_lost and ft.enabled(),
        )
        if states is None:
            mine.local_arrays()[0][:] = model.params[mine.lo : mine.hi]
        else:
            # STEPS: counted by one partition per replica (the one reporting)
            M = layout.partitions
            service.restore(
                *states[s], steps=[c.step if i % M == 0 else 0 for i, c in enumerate(resume)]
            )
        shared.service = service
        shared.checkpoints = ShardCheckpoints(
            comm,
            layout.shard_ranks,
            [hi - lo for lo, hi in ranges],
            s,
            service.snapshot,
            run.deadlines.end_barrier,
        )
        if s > 0:  # answers the leader's checkpoint requests until the very end
            run.on_end_poll = shared.checkpoints.answer
    barrier_polling(comm, run.deadlines.end_barrier, "downpour start")
    return shared


def _describe(run: TrainingRun) -> str:
    ps = run.cfg.ps
    return (
        f"{run.budget.describe(run.cfg.run.epochs)} per replica; shard ranges "
        f"{run.shared.ranges}; n_fetch {ps.n_fetch}, n_push {ps.n_push}, rule {ps.rule}, "
        f"lr {run.cfg.optim.lr:g}" + run.partitions_text()
    )


def _finish(run: TrainingRun) -> None:
    """Collective: every rank gets the shards' final slices; the windows are freed."""
    sh = run.shared
    mine = (
        sh.windows[run.role.index].local_arrays()[0].copy()
        if run.role.kind == "shard"
        else np.empty(0, np.float32)
    )
    # the shards are the first ranks: a replica that died leaves their ranks as they were
    allgather_ranges(mine, run.layout.shard_ranks, sh.ranges, run.model.params, run.comm)
    if not run.lost:  # Win_free is collective over the starting ranks, the dead too
        for sw in sh.windows:
            sw.free()


def _summarise(
    run: TrainingRun, gathered: list[tuple[str, dict]], train_s: float
) -> dict[str, Any]:
    shards = [r for kind, r in gathered if kind == "shard"]
    replicas = sorted((r for kind, r in gathered if kind == "replica"), key=lambda c: c["client"])
    summary = _summary(run, shards, replicas, train_s)
    told = set()
    for lost in summary["lost"]:  # once per replica (with --partitions, once per client)
        if lost["replica"] in told:
            continue
        told.add(lost["replica"])
        why = (
            "its process died"
            if lost["cause"] == "process failed"
            else f"no heartbeat for {run.cfg.ps.replica_timeout:g} s"
        )
        run.say(
            f"downpour: replica {lost['replica']} lost ({why}) {lost['after_s']:.1f} s into "
            f"training at shard 0's version {lost['version']}, after {lost['pushes_applied']} "
            "pushes applied; training finished with the others"
        )
    run.write_record(
        {
            "event": "downpour",
            "shards": summary["shards"],
            "replicas": summary["replicas"],
            "staleness": summary["staleness"],
            "ssp": summary["ssp"],
        }
    )
    return summary


def _ssp_summary(max_staleness: int, replicas: list[dict]) -> dict[str, Any] | None:
    """summary.json's ``ssp``: None without ``--max-staleness``; else ``max_staleness``
    (steps), ``max_clock_gap`` (steps: the largest own clock - min live clock a replica
    saw at the start of a step, <= max_staleness), ``wait_s`` (seconds waiting for
    slower replicas: ``total`` and ``per_replica``, a replica's partitions waiting
    together count once, their longest), ``waits`` (steps that waited, per replica)
    and ``wait_fraction`` (total wait / the replicas' total wall seconds)."""
    if max_staleness < 0:
        return None
    wait: dict[int, float] = {}
    waits: dict[int, int] = {}
    wall: dict[int, float] = {}
    gap = 0
    for r in replicas:
        if r.get("ssp") is None:
            continue
        i = r["replica"]
        wait[i] = max(wait.get(i, 0.0), r["ssp"]["wait_s"])
        waits[i] = max(waits.get(i, 0), r["ssp"]["waits"])
        wall[i] = max(wall.get(i, 0.0), r["wall_s"])
        gap = max(gap, r["ssp"]["max_gap"])
    total = sum(wait.values())
    return {
        "max_staleness": max_staleness,
        "max_clock_gap": gap,
        "wait_s": {"total": total, "per_replica": [wait[i] for i in sorted(wait)]},
        "waits": [waits[i] for i in sorted(waits)],
        "replicas": sorted(wait),
        "wait_fraction": total / sum(wall.values()) if sum(wall.values()) else 0.0,
    }


def _summary(run: TrainingRun, shards, replicas, train_s) -> dict[str, Any]:
    prep, spe, total_steps = run.prep, run.budget.steps_per_epoch, run.budget.total_steps
    hist = np.sum([s["staleness_hist"] for s in shards], axis=0)
    st = ShardStats.staleness_summary(ShardStats(0, 0, 0, staleness_hist=list(hist)))
    steps = sum(r["steps"] for r in replicas if r["partition"] == 0)  # once per replica
    samples = sum(r["samples"] for r in replicas if r["partition"] == 0)
    pushes_sent = sum(r["pushes"] for r in replicas)
    applied = [sum(s["pushes_applied"]) for s in shards]
    fetches = sum(r["fetches"] for r in replicas)
    for s in shards:  # one-sided Gets are invisible to the shard: count them at the replicas
        s["bytes_out"] = fetches * (s["hi"] - s["lo"]) * 4
    return {
        "epochs": steps / max(1, spe * prep.layout.replicas),
        "steps": steps,
        "steps_per_epoch": spe,
        "steps_per_replica": total_steps,
        "samples_per_s": samples / train_s if train_s else 0.0,
        "first_step_s": max((r["first_step_s"] for r in replicas), default=0.0),
        "train_s": train_s,
        "pushes_sent": pushes_sent,
        "pushes_applied_per_shard": applied,
        "staleness": {**st, "histogram": hist.tolist()},
        # the shards count clients (replica * M + partition): report replicas
        "lost_replicas": sorted(
            {c // prep.layout.partitions for c in (shards[0]["lost_clients"] if shards else [])}
        ),
        # per lost client (replica partition), as shard 0 saw it: when, why, pushes applied
        "lost": [
            {**lost, "replica": lost["client"] // prep.layout.partitions}
            for lost in (shards[0]["lost_at"] if shards else [])
        ],
        "failed_replicas": sorted({r["replica"] for r in replicas if r["failed"]}),
        "ssp": _ssp_summary(run.cfg.ps.max_staleness, replicas),
        "shards": shards,
        "replicas": replicas,
    }


DOWNPOUR = register(
    Algorithm(
        name="downpour",
        doc="asynchronous SGD: replicas fetch parameters from and push gradients to "
        "parameter shards over MPI-3 RMA (Dean et al. 2012, sec. 4.1)",
        layout=LayoutRule(shards=True),
        programs={"shard": run_shard, "replica": run_replica},
        options=OPTIONS,
        flags=SHARDED_FLAGS + ("--slow-replica", "--slow-factor"),
        setup=_setup,
        finish=_finish,
        summarise=_summarise,
        describe=_describe,
        resumable=True,
        survives=True,
        regroup=regroup,
    )
)
