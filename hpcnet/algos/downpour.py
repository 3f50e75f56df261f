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
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from hpcnet.algos.lifecycle import Run
from hpcnet.algos.registry import SHARDED_FLAGS, Algorithm, register
from hpcnet.comm import (
    allgather_objects,
    allgather_ranges,
    barrier_polling,
    same_on_every_rank,
    watchdog,
)
from hpcnet.layout import LayoutRule
from hpcnet.optim.rules import make_rule
from hpcnet.ps import windows as W
from hpcnet.ps.client import ShardClient
from hpcnet.ps.shard import ShardService, ShardStats

__all__ = ["DOWNPOUR"]


@dataclass
class _Shared:
    """What the ranks of a Downpour run share, built collectively by :func:`_setup`."""

    ranges: list[tuple[int, int]]  # each shard's [lo, hi) of the flat vector
    windows: list[W.ShardWindows]  # every shard's RMA windows
    touching: list[int]  # per shard: how many clients push to it


def _setup(run: Run) -> _Shared:
    """Collective: the shards' windows (one inbox slot per client = replica x partition),
    which clients touch which shard, the initial parameters in the shards' windows, and
    a barrier: the shards hold them before any replica fetches."""
    model, layout, comm = run.model, run.layout, run.comm
    with same_on_every_rank():
        ranges = W.shard_ranges(model.n_params, layout.shards, [a for _, a, _ in model.segments])
    windows = W.create_shard_windows(comm, layout.shard_ranks, ranges, layout.n_clients)
    # which clients push to which shard (a partition pushes only where its parameters are)
    owned = allgather_objects(run.part.owned if run.part else None, comm)
    replica_ranks = [r for r in range(comm.Get_size()) if layout.role(r).kind == "replica"]
    touching = [
        sum(
            1
            for r in replica_ranks
            if owned[r] is None or any(a < hi and b > lo for a, b in owned[r])
        )
        for lo, hi in ranges
    ]
    if run.role.kind == "shard":
        mine = windows[run.role.index]
        mine.local_arrays()[0][:] = model.params[mine.lo : mine.hi]
    barrier_polling(comm, run.deadlines.end_barrier, "downpour start")
    return _Shared(ranges, windows, touching)


def _describe(run: Run) -> str:
    ps = run.cfg.ps
    return (
        f"{run.budget.describe(run.cfg.run.epochs)} per replica; shard ranges "
        f"{run.shared.ranges}; n_fetch {ps.n_fetch}, n_push {ps.n_push}, rule {ps.rule}, "
        f"lr {run.cfg.optim.lr:g}" + run.partitions_text()
    )


def _finish(run: Run) -> None:
    """Collective: every rank gets the shards' final slices; the windows are freed."""
    sh = run.shared
    mine = (
        sh.windows[run.role.index].local_arrays()[0].copy()
        if run.role.kind == "shard"
        else np.empty(0, np.float32)
    )
    allgather_ranges(mine, run.layout.shard_ranks, sh.ranges, run.model.params, run.comm)
    for sw in sh.windows:
        sw.free()


def _shard(run: Run) -> dict[str, Any]:
    """Learning rate at a shard: ``lr(version)`` with the run's warmup and schedule,
    one version per push; the expected number of pushes is ``clients * steps / n_push``."""
    lr_of = run.lr_schedule(
        clients=run.shared.touching[run.role.index], n_push=run.cfg.ps.n_push, scale_batch=False
    )
    return asdict(_serve(run, run.shared.windows[run.role.index], lr_of))


def _summarise(run: Run, gathered: list[tuple[str, dict]], train_s: float) -> dict[str, Any]:
    shards = [r for kind, r in gathered if kind == "shard"]
    replicas = sorted((r for kind, r in gathered if kind == "replica"), key=lambda c: c["client"])
    summary = _summary(run, shards, replicas, train_s)
    lost = summary["lost_replicas"]
    if lost:
        run.say(
            f"downpour: replica(s) {', '.join(map(str, lost))} lost (no heartbeat for "
            f"{run.cfg.ps.replica_timeout:g} s); training finished with the others"
        )
    run.write_record(
        {
            "event": "downpour",
            "shards": summary["shards"],
            "replicas": summary["replicas"],
            "staleness": summary["staleness"],
        }
    )
    return summary


def _serve(run: Run, sw: W.ShardWindows, lr_of) -> ShardStats:
    """A shard's program: serves pushes until every client is done or lost. Shard 0,
    on rank 0, also writes the run's progress records from the clients' counters."""
    cfg = run.cfg
    rule = make_rule(cfg.ps.rule, sw.n)
    C = sw.n_clients  # replicas x partitions
    n_rep, total_steps = run.layout.replicas, run.budget.total_steps
    tick = None
    if sw.shard == 0 and run.prep.log is not None:
        state = {"t": time.perf_counter(), "samples": 0.0, "loss": 0.0, "correct": 0.0}

        def tick(ctrl, st):
            now = time.perf_counter()
            tot = {
                k: sum(ctrl[W.field(c, f)] for c in range(C))
                for k, f in (
                    ("samples", W.SAMPLES),
                    ("loss", W.LOSS),
                    ("correct", W.CORRECT),
                    ("steps", W.STEPS),
                )
            }
            n = tot["samples"] - state["samples"]
            if n <= 0:
                return
            version = int(ctrl[W.VERSION])
            run.progress(
                epoch=1 + int(tot["steps"] / max(1, n_rep * total_steps / cfg.run.epochs)),
                step=int(tot["steps"]),
                total_steps=n_rep * total_steps,
                loss=(tot["loss"] - state["loss"]) / n,
                accuracy=(tot["correct"] - state["correct"]) / n,
                lr=lr_of(version),
                samples_per_s=n / (now - state["t"]),
                suffix=f"  version {version}",
                version=version,
                staleness_mean=ShardStats.staleness_summary(st)["mean"],
            )
            state.update(t=now, samples=tot["samples"], loss=tot["loss"], correct=tot["correct"])

    service = ShardService(sw, rule, lr_of, run.deadlines.replica_silence, run.comm, on_tick=tick)
    return service.serve()


def _replica(run: Run) -> dict[str, Any]:
    """One replica partition's training loop (the whole replica when unpartitioned).
    The partitions of a replica step in lockstep: they stop together (``agree_any``)."""
    cfg, model, backend, part, role = run.cfg, run.model, run.backend, run.part, run.role
    windows, total_steps = run.shared.windows, run.budget.total_steps
    ps, faults = cfg.ps, cfg.faults
    replica = role.index
    client = ShardClient(
        windows,
        run.layout.client(replica, role.partition),
        wait_timeout=run.deadlines.push_slot,
        owned=part.owned if part else None,
        report_stats=role.partition == 0,
    )
    net = part if part else model
    model.seed_dropout(cfg.run.seed, replica)

    def stop_now() -> bool:  # every partition of the replica gets the same answer
        return part.ex.agree_any(client.stopped) if part else client.stopped

    loader = run.loader()
    acc = np.zeros(model.n_params, np.float32)  # gradients summed since the last push
    stats = np.zeros(3)  # loss sum, correct, samples since the last push
    step = since_push = 0
    failed = False
    compute_s = first_step_s = 0.0
    t0 = time.perf_counter()
    if replica != 0 and ps.warm_start_steps:
        # Warm start (sec. 4.1): replica 0 trains alone first; the others join later.
        client.wait_for_version(
            max(1, ps.warm_start_steps // ps.n_push), timeout=run.deadlines.warm_start
        )
    try:
        epoch = 0
        stopped = False
        while step < total_steps and not stopped and not failed:
            for x, y in loader.batches(epoch):
                if step % ps.n_fetch == 0:
                    client.fetch(model.params, ps.read_own_writes)
                    stopped = stop_now()
                    if stopped:
                        break
                tc = time.perf_counter()
                loss, correct = net.loss_and_grad(x, y, backend)
                acc += model.grads
                compute_s += time.perf_counter() - tc
                stats += (loss * len(y), correct, len(y))
                step += 1
                watchdog.heartbeat(step)
                since_push += 1
                if step == 1:  # its forward + backward, reported apart
                    first_step_s = compute_s
                if since_push == ps.n_push:
                    client.push(acc, since_push, *stats)
                    acc[:] = 0
                    stats[:] = 0
                    since_push = 0
                if replica == faults.fail_replica and step >= faults.fail_at_step:
                    failed = True  # leave without saying done: the shards must notice
                    break
                stopped = stop_now()
                if step >= total_steps or stopped:
                    break
            epoch += 1
        if since_push and not failed and not stopped:
            client.push(acc, since_push, *stats)
        if not failed:
            client.done()
    finally:
        loader.close()
        client.close()
    wall = time.perf_counter() - t0
    out = asdict(client.stats)
    out.update(
        {
            "client": client.client,
            "replica": replica,
            "partition": role.partition,
            "steps": step,
            "samples": step * cfg.run.batch_size,
            "failed": failed,
            "compute_s": compute_s,
            "first_step_s": first_step_s,
            "wall_s": wall,
            "samples_per_s": step * cfg.run.batch_size / wall if wall else 0.0,
        }
    )
    return out


def _summary(run: Run, shards, replicas, train_s) -> dict[str, Any]:
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
        "failed_replicas": sorted({r["replica"] for r in replicas if r["failed"]}),
        "shards": shards,
        "replicas": replicas,
    }


DOWNPOUR = register(
    Algorithm(
        name="downpour",
        doc="asynchronous SGD: replicas fetch parameters from and push gradients to "
        "parameter shards over MPI-3 RMA (Dean et al. 2012, sec. 4.1)",
        layout=LayoutRule(shards=True),
        programs={"shard": _shard, "replica": _replica},
        flags=("--n-fetch", "--n-push", "--ps-rule", "--warm-start-steps", "--read-own-writes")
        + SHARDED_FLAGS,
        setup=_setup,
        finish=_finish,
        summarise=_summarise,
        describe=_describe,
    )
)
