"""Sandblaster's coordinator: L-BFGS on scalars, the backtracking line search, and
the evaluation passes that hand out work units (Dean et al. 2012, sec. 4.2).

The coordinator never holds a parameter vector. Per L-BFGS iteration it asks the
shards (:class:`hpcnet.ps.lbfgs_service.ShardGroup`) for the Gram matrix of the
basis ``[s.., y.., g]``, runs the two-loop recursion on it
(:func:`hpcnet.optim.lbfgs.two_loop_coefficients`), sends back the direction's
coefficients, then tries steps ``t = 1, 1/2, ...`` (the first iteration
``1 / ||g||``) until the Armijo condition holds; each try is one evaluation pass.
A failed line search forgets the history (or ends the run without one).

One evaluation pass (:meth:`Coordinator.evaluate`): ``begin(t)`` on every shard;
then the coordinator answers the replicas' requests
(:mod:`hpcnet.algos.sandblaster.protocol`) with the decisions of a
:class:`~hpcnet.algos.sandblaster.workunits.WorkScheduler` until every unit's
gradient has been delivered to the shards, declaring replicas silent for
``replica_silence`` seconds lost; then ``finalize``: the shards wait for exactly
the accepted pushes and return three partial sums, which give f, g.d and g.g.

Who calls what: rank ``layout.coordinator_rank`` alone runs :meth:`Coordinator.run`,
while every shard serves and every replica works; it ends by stopping the
replicas, then the shards. Its :meth:`~Coordinator.drain` must run while it waits
in the end barrier (replicas' late requests).
"""

from __future__ import annotations

import math
import os
import signal
import time
from typing import TYPE_CHECKING

import numpy as np

from hpcnet.algos.sandblaster.protocol import Action, Ask, ReplicaLinks, Reply, Request
from hpcnet.algos.sandblaster.workunits import WorkScheduler
from hpcnet.comm import Backoff, watchdog
from hpcnet.optim.lbfgs import (
    ARMIJO_C1,
    CURVATURE_EPS,
    MAX_TRIALS,
    SHRINK,
    first_step,
    two_loop_coefficients,
)
from hpcnet.ps.lbfgs_service import ShardGroup

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import TrainingRun

_ACTIONS = {"work": Action.WORK, "flush": Action.FLUSH, "wait": Action.WAIT}


class Coordinator:
    """The coordinator's program.

    Args:
        run: the run (config, layout, deadlines, progress records).
        units: ``(lo, hi)`` rows of each work unit of a pass.
        n_batch: rows per evaluation pass (the L-BFGS batch).
        max_passes: evaluation passes allowed (the run's budget).
    """

    def __init__(
        self,
        run: TrainingRun,
        units: list[tuple[int, int]],
        n_batch: int,
        max_passes: int,
    ):
        self.run_, self.prep, self.units = run, run.prep, units
        self.n_batch, self.max_passes = n_batch, max_passes
        self.deadlines = deadlines = run.deadlines
        self.R = run.layout.replicas
        self.shards = ShardGroup(run.comm, run.layout.shard_ranks, deadlines.shard_reply)
        self.replicas = ReplicaLinks(run.comm, run.layout)
        self.passes = self.passes0 = 0  # passes0: those before a resume
        self.completed = np.zeros(self.R, np.int64)
        self.backups = self.discarded = 0
        self.lost_events: list[tuple[int, int]] = []  # (pass, replica)
        # each loss: replica, pass, cause, when known and when its pass finished (unix s)
        self.lost: list[dict] = []
        self.dead_seen: set[int] = set()  # replicas whose process died (fault tolerance)
        self.voided_passes = 0  # passes done again: a dead replica's push went missing
        self.units_before = 0  # units completed under a coordinator that died (failover)
        self.marks: dict[int, dict] = {}  # our last two boundaries' mirrors (failover)
        self.watch = None  # checks for a dead shard (failover.PeerWatch); set by the program
        self.history: list[dict] = []

    # one evaluation pass --------------------------------------------------
    def evaluate(self, t: float, trial: int = 0, attempt: int = 0) -> tuple[float, ...]:
        """f, g.d, g.g and training accuracy at x + t d (one pass over the batch; again,
        when a replica died under fault tolerance after its push was accepted and
        before every shard had it: that pass's gradient is incomplete, and void).
        ``trial``, ``attempt``: the line search's position, which the shards keep."""
        while True:
            f, gd, gg, acc, missing = self._pass(t, trial, attempt)
            if not missing:
                return f, gd, gg, acc
            self.voided_passes += 1

    def _pass(self, t: float, trial: int, attempt: int) -> tuple[float, float, float, float, bool]:
        self.passes += 1
        p = self.passes
        self.shards.begin(p, t, trial, attempt)
        ws = WorkScheduler(len(self.units), self.R, self.deadlines.replica_silence)
        backoff = Backoff(first=20e-6, cap=2e-3)
        while not ws.finished:
            watchdog.heartbeat(self.passes)
            if self.watch is not None:
                self.watch.check()  # a shard died (fault tolerance): regroup
            for r in ws.check_timeouts():
                self._lost(p, r, "silent")
            for r in self.replicas.died() - ws.lost:  # its process died (fault tolerance)
                ws.lose(r)  # its units, and results not yet pushed, go back to pending
                if r not in self.dead_seen:
                    self.dead_seen.add(r)
                    self._lost(p, r, "process failed")
            got = self.replicas.poll()
            if got is None:
                backoff.sleep()
                continue
            backoff.reset()
            self._answer(ws, *got, p)
        for e in self.lost:  # the pass a loss came in finished: the others took over
            e.setdefault("recovered_unix", time.time())
        self.completed += ws.completed
        self.backups += ws.backups
        self.discarded += ws.discarded
        sums = self.shards.finalize(p, self.n_batch, ws.accepted_pushes)
        loss, correct = ws.totals()
        wd = self.prep.cfg.optim.weight_decay
        f = loss / self.n_batch + 0.5 * wd * sums[0]
        return f, float(sums[1]), float(sums[2]), correct / self.n_batch, bool(sums[3] > 0)

    def _lost(self, p: int, r: int, cause: str) -> None:
        """Replica r lost in pass p: ``cause`` "silent" (``--replica-timeout``) or
        "process failed" (MPI said so); ``at_unix`` when the coordinator knew."""
        self.lost_events.append((p, r))
        self.lost.append({"replica": r, "pass": p, "cause": cause, "at_unix": time.time()})

    def _answer(self, ws: WorkScheduler, r: int, req: Request, p: int) -> None:
        """Judges replica r's request (results of an old pass count for nothing) and answers."""
        ws.seen(r)
        verdict, unit = False, -1
        if req.ask == Ask.DONE and req.pass_id == p:
            verdict = ws.on_done(r, req.unit, req.loss, req.correct)
        if req.ask == Ask.PUSH:  # a push request does not ask for work: no assignment
            if req.pass_id == p:
                verdict = ws.on_push_request(r, list(req.units))
            action = Action.NONE
        else:
            what, unit = ws.next_for(r)
            action = _ACTIONS[what]
        lo, hi = self.units[unit] if unit >= 0 else (0, 0)
        self.replicas.answer(r, Reply(verdict, action, p, unit, lo, hi))

    def drain(self) -> None:
        """Receives and drops replica requests sent before they saw STOP."""
        self.replicas.drain()

    # L-BFGS ---------------------------------------------------------------
    def run(self) -> dict:
        """Runs L-BFGS until the pass budget is spent (or the line search fails
        without history); stops the replicas and the shards; returns the figures."""
        m = self.prep.cfg.lbfgs.m
        t0 = time.perf_counter()
        f, gg, acc, k, at = self._start(t0)
        attempt = 0  # directions tried in this iteration (a failed line search resets)
        while self.passes < self.max_passes:
            if k:
                gram = self.shards.gram(k)
                delta = two_loop_coefficients(gram, k)
                gd = float(delta @ gram[:, 2 * k])
            else:
                delta, gd = np.array([-1.0]), -gg
            if gd >= 0:  # not a descent direction: forget the history
                self.shards.reset()
                k, delta, gd = 0, np.array([-1.0]), -gg
            self.shards.direction(delta)
            t, first = (1.0 if k else first_step(math.sqrt(gg))), 0
            if at is not None and at[3] == attempt:  # a failover: the try in flight
                t, first = at[1], at[2]
            at = None
            accepted = False
            for trial in range(first, MAX_TRIALS):
                if self.passes >= self.max_passes:
                    break
                f_t, _, gg_t, acc_t = self.evaluate(t, trial, attempt)
                if f_t <= f + ARMIJO_C1 * t * gd:
                    accepted = True
                    break
                t *= SHRINK
            if not accepted:
                if not k:
                    break
                self.shards.reset()
                k, attempt = 0, attempt + 1
                continue
            sy, yy = self.shards.accept()
            if len(self.history) == self.prep.cfg.faults.coordinator_dies_at and not (
                self.run_.regroups  # the first coordinator only
            ):
                os.kill(os.getpid(), signal.SIGKILL)  # injected: every shard moved, none stored
            store = sy > CURVATURE_EPS * yy
            self.shards.commit(store)
            if store:
                k = min(k + 1, m)
            f, gg, acc, attempt = f_t, gg_t, acc_t, 0
            self._record(len(self.history), f, acc, t, gg, t0)
            self._mark(k, f, gg, acc)
            if self._checkpoint_or_stop(k, f, gg, acc):
                break
        self.replicas.stop(self.passes, self.deadlines.end_barrier)
        self.shards.stop()
        return {
            "iterations": len(self.history) - 1,
            "passes": self.passes,
            "loss_history": [h["loss"] for h in self.history],
            "units_completed": self.completed.tolist(),
            "backup_units": self.backups,
            "discarded_results": self.discarded,
            "lost_replicas": sorted({r for _, r in self.lost_events}),
            "lost_events": self.lost_events,
            "lost": self.lost,
            "dead_replicas": sorted(self.dead_seen),
            "voided_passes": self.voided_passes,
            "final_train_loss": f,
            "final_train_accuracy": acc,
            "passes_before_resume": self.passes0,
            "units_completed_before_failover": self.units_before,
        }

    def _start(self, t0: float) -> tuple[float, float, float, int, tuple | None]:
        """Where the iterations start: (f, g.g, accuracy, pairs stored, the line search's
        position to go on from or None). A fresh run evaluates x0; a resumed one takes
        the checkpoint's state (the shards restored theirs); a new coordinator after a
        failover the mirror of the boundary the shards rolled back to."""
        regrouped, self.run_.regrouped = self.run_.regrouped, None
        if regrouped is not None:  # failover (hpcnet.algos.sandblaster.failover)
            self.passes = regrouped["passes"]
            if regrouped["mirror"] is not None:
                f, gg, acc, k = self._restore(regrouped["mirror"], failover=True)
                if not regrouped["restart"]:
                    return f, gg, acc, k, regrouped["position"]
        resumed = self.run_.resume_state() if regrouped is None else None
        if resumed is not None:  # the shards restored their slices of x, g and the history
            f, gg, acc, k = self._restore(resumed[1])
        else:  # a fresh start (or a restart after a shard died: counters kept)
            f, _, gg, acc = self.evaluate(0.0)
            self.shards.accept()
            self.shards.commit(False)
            self._record(len(self.history), f, acc, 0.0, gg, t0)
            k = 0  # pairs stored
        self._mark(k, f, gg, acc)
        return f, gg, acc, k, None

    def _mark(self, k: int, f: float, gg: float, acc: float) -> None:
        """An iteration boundary: every shard keeps its state and our mirror (failover);
        so do we (our last two), for a regroup after a shard died."""
        it, mirror = len(self.history) - 1, self._state(k, f, gg, acc)
        self.marks = {i: m for i, m in self.marks.items() if i == max(self.marks)} | {it: mirror}
        self.shards.mark(it, mirror)

    # checkpoints ----------------------------------------------------------------------
    def _checkpoint_or_stop(self, k: int, f: float, gg: float, acc: float) -> bool:
        """After an accepted iteration: writes a checkpoint when one is due or a rank got
        SIGTERM/SIGUSR1; returns True when the run must stop for that signal."""
        run, it = self.run_, len(self.history) - 1
        signum = run.signal_heard()
        if signum or run.checkpoint_due(it):
            self._checkpoint(it, k, f, gg, acc)
        if signum and self.passes < self.max_passes:
            run.stopped_by = (signum, it)
            return True
        return False

    def _checkpoint(self, it: int, k: int, f: float, gg: float, acc: float) -> None:
        """OUT/checkpoint.h5 at iteration ``it``: the shards' x, g and history (asked for
        with SNAPSHOT), the coordinator's scalars and counters (its line search starts
        afresh each iteration: nothing of it is pending here)."""
        run = self.run_
        ranges = run.shared.ranges
        snaps = self.shards.snapshot([hi - lo for lo, hi in ranges])
        ranks: list[tuple[dict, dict]] = [({}, {}) for _ in range(run.comm.Get_size())]
        ranks[0] = ({}, self._state(k, f, gg, acc))
        for r, a in zip(run.layout.shard_ranks, snaps, strict=True):
            ranks[r] = (a, {"pairs": len(a["S"])})
        params = np.concatenate([a["x"] for a in snaps]).astype(np.float32)
        epoch = self.passes * self.n_batch / self.prep.info.n_train
        run.write_checkpoint(it, epoch, params, ranks)

    def _state(self, k: int, f: float, gg: float, acc: float) -> dict:
        """The coordinator's state at an iteration boundary (JSON-able): a checkpoint's
        and a failover mirror's (its line search starts afresh each iteration)."""
        return {
            "k": k,
            "f": f,
            "gg": gg,
            "acc": acc,
            "passes": self.passes,
            "passes0": self.passes0,
            "completed": self.completed.tolist(),
            "units_before": self.units_before,
            "backups": self.backups,
            "discarded": self.discarded,
            "voided": self.voided_passes,
            "lost_events": [list(e) for e in self.lost_events],
            "lost": self.lost,
            "dead": sorted(self.dead_seen),
            "loss_history": [h["loss"] for h in self.history],
        }

    def _restore(self, st: dict, failover: bool = False) -> tuple[float, float, float, int]:
        """Takes the coordinator's state of a checkpoint (or, ``failover``, of the dead
        coordinator's mirror: its pass count stays the newest any shard saw, and the
        replicas are numbered anew); returns (f, g.g, accuracy, k)."""
        if failover:
            self.passes0 = int(st.get("passes0", 0))
            self.units_before = int(st.get("units_before", 0)) + sum(st["completed"])
            self.voided_passes = int(st.get("voided", 0))
            self.dead_seen = set()  # replica indices of the old layout
        else:
            self.passes = self.passes0 = int(st["passes"])
            self.completed[:] = st["completed"]
            self.units_before = int(st.get("units_before", 0))
        self.backups, self.discarded = int(st["backups"]), int(st["discarded"])
        self.lost_events = [tuple(e) for e in st["lost_events"]]
        self.lost = list(st.get("lost", []))
        self.history = [{"loss": loss} for loss in st["loss_history"]]
        return float(st["f"]), float(st["gg"]), float(st["acc"]), int(st["k"])

    def _record(self, it, f, acc, t, gg, t0):
        """One progress record per iteration (the run's one shape): ``step`` counts
        iterations, ``total_steps`` is the pass budget (an upper bound), ``lr`` the
        accepted line-search step."""
        n_train = self.prep.info.n_train
        rec = self.run_.progress(
            epoch=round(self.passes * self.n_batch / n_train, 3),
            step=it,
            total_steps=self.max_passes,
            loss=f,
            accuracy=acc,
            lr=t,
            samples_per_s=(self.passes - self.passes0)
            * self.n_batch
            / max(time.perf_counter() - t0, 1e-9),
            suffix=f"  passes {self.passes}/{self.max_passes}  |g| {math.sqrt(gg):.3g}  "
            f"units/replica {self.completed.tolist()}",
            iteration=it,
            samples=self.passes * self.n_batch,
            passes=self.passes,
            grad_norm=math.sqrt(gg),
            units_completed=self.completed.tolist(),
        )
        self.history.append(rec)
