"""A Downpour parameter shard's program (:mod:`hpcnet.ps.shard` serves the pushes);
shard 0 also writes the run's progress records and takes the checkpoints
(:mod:`hpcnet.ps.checkpoint`)."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.downpour import grow
from hpcnet.algos.lifecycle import Regroup, TrainingRun
from hpcnet.comm import ft
from hpcnet.ps import windows as W
from hpcnet.ps.checkpoint import resume_plan
from hpcnet.ps.shard import ShardStats


def run_shard(run: TrainingRun) -> dict[str, Any]:
    """A shard's program. Learning rate: ``lr(version)`` with the run's warmup and
    schedule, one version per push; the expected number of pushes is ``clients * steps /
    n_push``. Shard 0 also takes the checkpoints (:mod:`hpcnet.ps.checkpoint`)."""
    sh = run.shared
    service, ckpt = sh.service, sh.checkpoints
    if run.role.index == 0:
        leader = _Leader(run, _progress_tick(run, service.sw, service.lr_at))
        service.on_pass = leader.on_pass
    else:
        service.on_pass = lambda ctrl: ckpt.answer()
    try:
        stats = service.serve()
    except (ft.PeerDied, MPI.Exception) as e:  # a shard died (fault tolerance), or grow
        if isinstance(e, MPI.Exception) and not ft.is_failure(e):
            raise
        arrays, state = service.snapshot()
        if not ft.enabled():  # nobody died (grow): the windows are freed in the regroup
            service.sw.unlock_all()
        carry = {"kind": "shard", "index": run.role.index, "version": state["version"]}
        carry["grow"] = e.count if isinstance(e, grow.Grow) else 0
        raise Regroup({**carry, "arrays": arrays, "detected_unix": time.time()}) from None
    if run.role.index == 0:
        leader.at_end(service.sw.local_arrays()[2])
    return asdict(stats)


class _Leader:
    """Shard 0's progress records (every ``--log-every`` steps per replica, from the
    clients' STEPS counters) and checkpoints: every ``--checkpoint-every`` steps per
    replica (counted from the pushes it applied) or ``--checkpoint-every-s`` seconds of
    its clock, and at the end of a run stopped by a signal before every replica
    finished."""

    def __init__(self, run: TrainingRun, tick):
        self.run, self.tick = run, tick
        self.log_mark: int | None = None  # progress records written so far, by steps
        self.steps_at = [W.field(c, W.STEPS) for c in range(run.layout.n_clients)]
        r = run.cfg.run
        self.every = r.checkpoint_every
        self.steps_per_push = run.cfg.ps.n_push / max(1, run.shared.touching[0])
        self.mark: int | None = None  # checkpoints due so far, by steps
        self.next_grow_check = 0.0  # monotonic s: the next look for a grow request

    def _grow(self, ctrl) -> None:
        """Acts on ``python -m hpcnet grow OUT`` (:mod:`hpcnet.algos.downpour.grow`):
        raises :class:`~hpcnet.algos.downpour.grow.Grow` to add replicas, or prints why
        not."""
        run, sh = self.run, self.run.shared
        asked = grow.take(run.prep.out)
        if asked is None:
            return
        room = run.cfg.faults.max_replicas - run.layout.replicas
        left = run.budget.total_steps - ctrl[self.steps_at].min()
        margin = grow.margin_steps(run.cfg.ps.n_fetch, run.cfg.ps.n_push)
        if asked < 1:
            why = f"{grow.REQUEST} unreadable"
        elif room < 1:
            why = f"the run has {run.layout.replicas} replicas, --max-replicas allows no more"
        elif (
            left < margin
            or ctrl[W.PREEMPT]
            or any(ctrl[W.field(c, W.DONE)] for c in range(run.layout.n_clients))
        ):
            why = "the run is finishing"
        else:
            count = min(asked, room)
            if count < asked:
                run.say(
                    f"downpour: adding {count} of the {asked} replicas asked for "
                    f"(--max-replicas {run.cfg.faults.max_replicas})"
                )
            ctrl[W.REGROUP] = 1.0  # every replica leaves at its next fetch or push
            sh.service.sw.ctrl_win.Sync()
            others = sh.checkpoints.shard_ranks[1:]
            sh.checkpoints.requests.send_all(
                [grow.REGROUP_REQUEST], others, run.deadlines.end_barrier, "regroup request"
            )
            raise grow.Grow(count)
        run.say(grow.refuse(run.prep.out, asked, why))

    def on_pass(self, ctrl) -> None:
        if self.run.cfg.faults.max_replicas and time.monotonic() >= self.next_grow_check:
            self.next_grow_check = time.monotonic() + grow.CHECK_S
            self._grow(ctrl)
        if self.tick is not None:
            mark = int(ctrl[self.steps_at].sum() / self.run.layout.replicas)
            mark //= self.run.budget.log_every
            if self.log_mark is not None and mark > self.log_mark:
                self.tick(ctrl, self.run.shared.service.stats)
            self.log_mark = mark
        progress = ctrl[W.APPLIED] * self.steps_per_push  # mean steps per client
        if progress >= self.run.budget.total_steps or ctrl[W.PREEMPT]:
            return  # the end, or a stop, writes its own
        due = False
        if self.every:
            mark = int(progress // self.every)
            if self.mark is None:
                self.mark = mark
            due = mark > self.mark
            self.mark = mark
        if self.run.due_by_time():  # --checkpoint-every-s, the run's own clock
            due = True
        if due:
            self.save()

    def save(self) -> int:
        """Collects every shard's snapshot and writes OUT/checkpoint.h5; returns its step
        (the newest step every replica's pushes reached at every shard)."""
        run, sh = self.run, self.run.shared
        snaps = sh.checkpoints.collect()
        plan = resume_plan(
            [st["acks"] for _, st in snaps],
            sh.touches,
            run.cfg.ps.n_push,
            run.budget.total_steps,
            run.layout.partitions,
        )
        step = min(c.step for c in plan)
        params = np.concatenate([a["slice"] for a, _ in snaps])
        ranks: list[tuple[dict, dict]] = [({}, {}) for _ in range(run.comm.Get_size())]
        for r, snap in zip(run.layout.shard_ranks, snaps, strict=True):
            ranks[r] = snap
        run.write_checkpoint(step, step / run.budget.steps_per_epoch, params, ranks)
        return step

    def at_end(self, ctrl) -> None:
        """A run stopped by a signal: checkpointed, unless every replica had finished;
        a run whose every replica died before it finished (fault tolerance): checkpointed
        (the run then ends with a line naming it, exit 3)."""
        signum = int(ctrl[W.PREEMPT])
        clients = range(self.run.layout.n_clients)
        if signum:
            step = self.save()
            if step < self.run.budget.total_steps:
                self.run.stopped_by = (signum, step)
        elif not any(ctrl[W.field(c, W.DONE)] for c in clients):  # every replica lost
            self.save()


def _progress_tick(run: TrainingRun, sw: W.ShardWindows, lr_of):
    """Shard 0's progress records (rank 0 holds the metrics log), from the clients'
    counters; None where no log is kept."""
    cfg = run.cfg
    C = sw.n_clients  # replicas x partitions
    n_rep, total_steps = run.layout.replicas, run.budget.total_steps
    tick = None
    if run.prep.log is not None:
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
                epoch=min(  # the epoch the mean replica is in (the last step: the last)
                    cfg.run.epochs,
                    1 + int(tot["steps"] / max(1, n_rep * total_steps / cfg.run.epochs)),
                ),
                step=int(tot["steps"] / n_rep),  # per replica, as the header's budget
                total_steps=total_steps,
                samples=tot["samples"],
                replica_steps=int(tot["steps"]),
                loss=(tot["loss"] - state["loss"]) / n,
                accuracy=(tot["correct"] - state["correct"]) / n,
                lr=lr_of(version),
                samples_per_s=n / (now - state["t"]),
                suffix=f"  version {version}",
                version=version,
                staleness_mean=ShardStats.staleness_summary(st)["mean"],
            )
            state.update(t=now, samples=tot["samples"], loss=tot["loss"], correct=tot["correct"])

    return tick
