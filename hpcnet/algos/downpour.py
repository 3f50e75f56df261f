"""Downpour SGD (Dean et al. 2012, sec. 4.1): asynchronous replicas and a sharded
parameter server on MPI-3 one-sided RMA windows.

Ranks: ``S`` parameter shards first, then ``R`` replicas. Each replica, on its own
rows of the data, loops: every ``n_fetch`` steps it ``Get``s the parameters from
every shard; it computes a gradient; every ``n_push`` steps it ``Accumulate``s
the gradients summed since the last push into the shards' inboxes. The shards
apply pushes as they arrive (SGD or Adagrad, :mod:`hpcnet.ps.rules`) and count
versions. The training loop uses one-sided operations only: no messages, no
collectives. Termination is by counters: a shard finishes when every replica
has said done or fallen silent for ``replica_timeout`` seconds (lost). Then every
rank meets in a (polling, time-limited) barrier, the shards' slices are gathered,
the replicas evaluate the test split, and rank 0 (shard 0) writes the results.

Learning rate at the shards: ``lr_at(version)`` with the run's warmup and
schedule, counting one version per push; the expected number of pushes is
``R * steps / n_push``.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.common import (
    Prepared,
    announce,
    base_summary,
    evaluate,
    model_parallel_summary,
    report,
    train_loader,
)
from hpcnet.comm import (
    allgather_ranges,
    barrier_polling,
    bcast_,
    same_on_every_rank,
    split_role_comms,
)
from hpcnet.comm.exchange import Exchange
from hpcnet.modelpar import partition_model
from hpcnet.optim.schedules import lr_at
from hpcnet.ps import windows as W
from hpcnet.ps.client import ShardClient
from hpcnet.ps.rules import make_rule
from hpcnet.ps.shard import ShardService, ShardStats
from hpcnet.run.metrics import progress_line


def _segment_bounds(model) -> list[int]:
    return [start for _, start, _ in model.segments]


def train_downpour(prep: Prepared, comm: MPI.Intracomm, verbose: bool = True) -> dict[str, Any]:
    """Runs Downpour SGD. Collective over ``comm`` at its start and end only.

    Returns the summary (every rank); ``"_params"`` holds the final parameters.
    """
    cfg, layout, model, info = prep.cfg, prep.layout, prep.model, prep.info
    rank = comm.Get_rank()
    role = layout.role(rank)
    S, R, M = layout.shards, layout.replicas, layout.partitions
    ps = cfg.ps
    with same_on_every_rank():
        ranges = W.shard_ranges(model.n_params, S, _segment_bounds(model))
    shard_ranks = list(range(S))
    # one client (inbox slot) per replica partition: client = replica * M + partition
    windows = W.create_shard_windows(comm, shard_ranks, ranges, R * M)
    comms = split_role_comms(layout, comm)
    part = None
    if M > 1 and role.kind == "replica":
        exchange = Exchange(
            comms.replica_comm,
            timeout=max(300.0, 2 * ps.replica_timeout),
            node_ranks=prep.extra["node_ranks"],
        )
        part = partition_model(model, cfg.algo.partition_scheme, exchange, cfg.algo.micro_batches)
    # which clients push to which shard (a partition pushes only where its parameters are)
    owned = comm.allgather(part.owned if part else None)
    replica_ranks = [r for r in range(comm.Get_size()) if layout.role(r).kind == "replica"]
    touching = [
        sum(
            1
            for r in replica_ranks
            if owned[r] is None or any(a < hi and b > lo for a, b in owned[r])
        )
        for lo, hi in ranges
    ]

    # Step budget per replica: the same rule as sync (epochs over its own rows).
    spe = (info.n_train // R) // cfg.run.batch_size
    total_steps = spe * cfg.run.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    o = cfg.optim
    start_lr = 0.1 * o.lr

    def lr_schedule(clients: int):
        """The lr as a function of a shard's version, when ``clients`` clients push to it."""
        expected = max(1, clients * total_steps // ps.n_push)
        warmup = round(o.warmup_epochs * spe * clients / ps.n_push)
        return lambda version: lr_at(version, o.lr, warmup, start_lr, o.lr_schedule, expected)

    if rank == 0:
        model.init(cfg.run.seed)
    bcast_(model.params, comm)
    if role.kind == "shard":
        mine = windows[role.index]
        mine.local_arrays()[0][:] = model.params[mine.lo : mine.hi]
    announce(
        prep,
        f"{spe} steps/epoch x {cfg.run.epochs} epochs = {total_steps} steps per "
        f"replica; shard ranges {ranges}; n_fetch {ps.n_fetch}, n_push {ps.n_push}, "
        f"rule {ps.rule}, lr {o.lr:g}"
        + (f"; {M} partitions per replica ({part.scheme})" if part else ""),
        verbose,
    )
    comm.Barrier()  # shards hold the initial parameters before any replica fetches

    t_train = time.perf_counter()
    shard_stats: ShardStats | None = None
    client_stats: dict[str, Any] | None = None
    if role.kind == "shard":
        lr_of = lr_schedule(touching[role.index])
        shard_stats = _serve(prep, windows[role.index], lr_of, comm, total_steps, verbose)
    else:
        client_stats = _replica(prep, windows, role, total_steps, spe, part)
    train_s = time.perf_counter() - t_train

    # End of the run: everyone meets (sleeping while waiting, with a time limit).
    barrier_polling(comm, timeout=max(120.0, 4 * ps.replica_timeout), what="downpour end barrier")
    mine = (
        windows[role.index].local_arrays()[0].copy()
        if role.kind == "shard"
        else np.empty(0, np.float32)
    )
    allgather_ranges(mine, shard_ranks, ranges, model.params, comm)
    for sw in windows:
        sw.free()
    test_loss, test_acc = evaluate(prep, role.index if role.kind == "replica" else None, comm, part)
    gathered = comm.gather((asdict(shard_stats) if shard_stats else None, client_stats), root=0)
    summary = base_summary(prep, comm)
    if M > 1:
        summary["model_parallel"] = model_parallel_summary(part, cfg.run.batch_size, layout, comm)
    comms.free()
    if rank == 0:
        shards = [g[0] for g in gathered if g[0] is not None]
        replicas = sorted((g[1] for g in gathered if g[1] is not None), key=lambda c: c["client"])
        summary.update(_summarise(prep, shards, replicas, total_steps, spe, train_s))
        summary.update(
            {
                "test_accuracy": test_acc,
                "test_loss": test_loss,
                "wall_s": time.perf_counter() - prep.t_start,
            }
        )
        lost = summary["lost_replicas"]
        if lost and verbose:
            print(
                f"downpour: replica(s) {', '.join(map(str, lost))} lost (no heartbeat for "
                f"{ps.replica_timeout:g} s); training finished with the others",
                flush=True,
            )
        prep.log.write(
            {
                "event": "downpour",
                "shards": summary["shards"],
                "replicas": summary["replicas"],
                "staleness": summary["staleness"],
            }
        )
        report(prep, summary, verbose)
    summary = comm.bcast(summary if rank == 0 else None, root=0)
    summary["_params"] = model.params
    return summary


def _serve(prep, sw, lr_of, comm, total_steps, verbose) -> ShardStats:
    cfg = prep.cfg
    rule = make_rule(cfg.ps.rule, sw.n)
    R = sw.n_replicas  # clients: replicas x partitions
    n_rep = prep.layout.replicas
    tick = None
    if sw.shard == 0 and prep.log is not None:
        state = {"t": time.perf_counter(), "samples": 0.0, "loss": 0.0, "correct": 0.0}

        def tick(ctrl, st):
            now = time.perf_counter()
            tot = {
                k: sum(ctrl[W.field(r, f)] for r in range(R))
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
            rec = {
                "epoch": 1 + int(tot["steps"] / max(1, n_rep * total_steps / cfg.run.epochs)),
                "step": int(tot["steps"]),
                "total_steps": n_rep * total_steps,
                "loss": (tot["loss"] - state["loss"]) / n,
                "accuracy": (tot["correct"] - state["correct"]) / n,
                "lr": lr_of(int(ctrl[W.VERSION])),
                "samples_per_s": n / (now - state["t"]),
                "elapsed_s": now - prep.t_start,
                "version": int(ctrl[W.VERSION]),
                "staleness_mean": ShardStats.staleness_summary(st)["mean"],
            }
            state.update(t=now, samples=tot["samples"], loss=tot["loss"], correct=tot["correct"])
            prep.log.write(rec)
            if verbose:
                print(progress_line(rec) + f"  version {rec['version']}", flush=True)

    service = ShardService(sw, rule, lr_of, cfg.ps.replica_timeout, comm, on_tick=tick)
    return service.serve()


def _replica(prep, windows, role, total_steps, spe, part) -> dict[str, Any]:
    """One replica partition's training loop (the whole replica when ``part`` is None).
    The partitions of a replica step in lockstep: they stop together (``agree_any``)."""
    cfg, model, backend = prep.cfg, prep.model, prep.backend
    ps, faults = cfg.ps, cfg.faults
    replica, m = role.index, prep.layout.partitions
    client = ShardClient(
        windows,
        replica * m + role.partition,
        wait_timeout=max(60.0, 2 * ps.replica_timeout),
        owned=part.owned if part else None,
        report_stats=role.partition == 0,
    )
    net = part if part else model
    model.seed_dropout(cfg.run.seed, replica)

    def stop_now() -> bool:  # every partition of the replica gets the same answer
        return part.ex.agree_any(client.stopped) if part else client.stopped

    loader = train_loader(prep, replica)
    acc = np.zeros(model.n_params, np.float32)  # gradients summed since the last push
    stats = np.zeros(3)  # loss sum, correct, samples since the last push
    step = since_push = 0
    failed = False
    compute_s = first_step_s = 0.0
    t0 = time.perf_counter()
    if replica != 0 and ps.warm_start_steps:
        # Warm start (sec. 4.1): replica 0 trains alone first; the others join later.
        client.wait_for_version(
            max(1, ps.warm_start_steps // ps.n_push), timeout=max(600.0, 4 * ps.replica_timeout)
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
            "client": client.replica,
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


def _summarise(prep, shards, replicas, total_steps, spe, train_s) -> dict[str, Any]:
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
            {c // prep.layout.partitions for c in (shards[0]["lost_replicas"] if shards else [])}
        ),
        "failed_replicas": sorted({r["replica"] for r in replicas if r["failed"]}),
        "shards": shards,
        "replicas": replicas,
    }
