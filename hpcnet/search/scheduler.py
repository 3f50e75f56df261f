"""The search's scheduler: world rank 0 answers the group leaders, in a thread.

Its messages (JSON on its own communicator) are :mod:`hpcnet.search.protocol`'s; the
policy is in :mod:`hpcnet.search.runner`'s docstring."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm import Backoff, ft
from hpcnet.search import faults
from hpcnet.search.early_stop import make_rule, progress_key, read_curve
from hpcnet.search.protocol import SchedulerLink, answer, trial_json
from hpcnet.search.records import TrialRecord, fmt_value, one_line, write_atomic


class Scheduler:
    """The search's scheduler (world rank 0, in a thread): answers the group leaders.

    Args:
        comm: the scheduler's communicator (a duplicate of the search's: its traffic
            never meets a trial's).
        strategy: the searcher (``ask``/``tell``/``finished``/``state``).
        n_groups: how many groups will say they are done.
        out: the search directory.
        metric: the metrics key (TensorBoard HParams); direction: ``max`` or ``min``.
        records: trials finished before (a resumed search).
        verbose: print a progress line per finished trial.
        group_size: ranks per group (groups are consecutive ranks of ``comm``).

    Under fault tolerance it also retires a group that lost a rank (the dead rank's
    trial recorded failed; :mod:`hpcnet.search.faults`) and ends the search for every
    group (a ``lost`` answer) when its own group (group 0) lost one.
    """

    def __init__(
        self,
        comm,
        strategy,
        n_groups,
        out: Path,
        metric,
        direction,
        records,
        verbose=True,
        early_stop: str = "none",
        group_size: int = 1,
    ):
        self.comm, self.strategy, self.n_groups = comm, strategy, n_groups
        self.group_size = group_size
        self.out, self.metric, self.direction, self.verbose = out, metric, direction, verbose
        self.key, key_direction = progress_key(metric, direction)
        self.rule = make_rule(early_stop, key_direction)
        if self.rule is not None:  # a resumed search: the completed curves, the rungs
            for rec in records:
                if rec.status != "failed":
                    self.rule.completed(rec.id, read_curve(self._dir(rec.id), self.key))
        self.records: list[TrialRecord] = list(records)
        self.running: dict[int, int] = {}  # trial id -> group
        self.handed: dict[int, tuple[Any, float]] = {}  # trial id -> (trial, Unix start)
        self.retired: set[int] = set()  # groups that lost a rank (fault tolerance)
        self.lost: list[dict[str, Any]] = []  # lost_groups.json
        self.dead: set[int] = set()  # ranks MPI reported dead
        self.waiting: set[int] = set()  # retired groups' live ranks, to be told the end
        self.fatal: str | None = None  # the scheduler's own group lost a rank
        self._next_check = 0.0
        self.done_groups: set[int] = set()
        self.error: BaseException | None = None
        self.t0 = time.monotonic()
        self.finished_here = 0
        self.preempted = 0  # the signal that stops the search (hpcnet.search.preemption)
        self.link = SchedulerLink(comm)

    def serve(self) -> None:
        """Answers until every group has been told ``done`` (or an error: every later
        question gets ``abort``) and, under fault tolerance, every live rank of a retired
        group has been told the search is over."""
        backoff = Backoff(first=1e-4, cap=20e-3)
        while len(self.done_groups) < self.n_groups or self.waiting:
            self._check_failures()
            # ft.iprobe inside: a dead rank's failure, reported here, is acknowledged
            got = self.link.questions.poll()
            if got is None:
                backoff.sleep()
                continue
            backoff.reset()
            source, msg = got
            kind, g = msg["kind"], msg["group"]
            try:
                if self.error:
                    reply = answer("abort", why=one_line(self.error))
                elif kind == "retired":
                    reply = self._retired(source, g, msg["dead"])
                elif kind == "preempted":  # a group got SIGUSR1/SIGTERM: all stop
                    self.preempted = self.preempted or msg["signal"]
                    reply = self._next(g, msg["record"])  # a "preempted" answer
                elif self.fatal:  # a running trial stops; a group's next question ends it
                    if kind == "next" and msg["record"] is not None and g not in self.retired:
                        self._finished(TrialRecord(**msg["record"]))  # kept for --resume
                    reply = answer("stop") if kind == "progress" else answer("lost", why=self.fatal)
                elif kind == "progress":  # a running trial's progress: go on, or stop early
                    stop = self.rule is not None and self.rule.report(
                        msg["trial"], msg["step"], msg["value"]
                    )
                    reply = answer("stop" if stop else "go")
                else:
                    reply = self._next(g, msg["record"])
            except BaseException as e:  # noqa: BLE001  reported to every group, then raised
                self.error = e
                reply = answer("abort", why=one_line(e))
            if kind == "retired":
                if reply["kind"] != "wait":
                    self.waiting.discard(source)
            elif reply["kind"] in ("done", "abort", "lost", "preempted"):
                self.done_groups.add(g)
            try:
                self.link.answers.send(reply, source)
            except MPI.Exception as e:  # it died since it asked: the next check says so
                if not faults.is_failure(e):
                    raise

    def _check_failures(self) -> None:
        """Under fault tolerance, at most every 50 ms: retires the group of each rank
        MPI newly reports dead (local knowledge: ``MPI_Comm_get_failed``)."""
        now = time.monotonic()
        if not ft.enabled() or now < self._next_check:
            return
        self._next_check = now + 0.05
        for r in sorted(set(ft.failed_ranks(self.comm)) - self.dead):
            self._died(r // self.group_size, [r])

    def _died(self, g: int, ranks: list[int]) -> None:
        """``ranks`` (of group ``g``) died: the group retires (once); the trial it was
        running is recorded failed; the scheduler's own group (0) ends the search."""
        ranks = sorted(set(ranks) - self.dead)
        if not ranks:
            return
        self.dead |= set(ranks)
        self.waiting -= self.dead
        if g in self.retired:
            entry = next(e for e in self.lost if e["group"] == g)
            entry["dead"] = sorted(set(entry["dead"]) | set(ranks))
            faults.write_lost_groups(self.out, self.lost)
            return
        self.retired.add(g)
        self.done_groups.add(g)
        members = range(g * self.group_size, (g + 1) * self.group_size)
        self.waiting |= {r for r in members if r not in self.dead}
        if g == 0:  # its trial stays unrecorded: --resume runs it again
            self.fatal = faults.own_group_died(ranks, self.out)
            if self.verbose:
                print(self.fatal, flush=True)
            return
        trials = [t for t, group in self.running.items() if group == g]
        for trial_id in trials:
            trial, started = self.handed[trial_id]
            ended = time.time()
            self._finished(
                TrialRecord(
                    id=trial_id,
                    params=trial.params,
                    status="failed",
                    metric=None,
                    wall_s=ended - started,
                    group=g,
                    generation=getattr(trial, "generation", 0),
                    reason=faults.died(ranks),
                    started=started,
                    ended=ended,
                )
            )
        self.lost.append(
            {
                "group": g,
                "ranks": list(members),
                "dead": ranks,
                "trial": trials[0] if trials else None,
                "at_unix": time.time(),
            }
        )
        faults.write_lost_groups(self.out, self.lost)
        if self.verbose:
            failed = f"; trial {trials[0]} recorded failed" if trials else ""
            go_on = self.n_groups - len(self.retired)
            print(
                f"group {g} retired: {faults.died(ranks)}{failed}; "
                f"the search goes on on {go_on} group(s)",
                flush=True,
            )

    def _retired(self, source: int, g: int, dead: list[int]):
        """A live rank of group ``g``, which lost ``dead``, asks whether the search is
        over: ``wait``, ``done`` or ``lost``."""
        self._died(g, dead)
        if self.fatal:
            self.waiting.discard(source)
            return answer("lost", why=self.fatal)
        if len(self.done_groups) < self.n_groups:
            self.waiting.add(source)
            return answer("wait")
        self.waiting.discard(source)
        return answer("done")

    def _dir(self, trial_id: int) -> Path:
        return self.out / "trials" / f"{trial_id:04d}"

    def _next(self, group: int, record: dict | None) -> dict:
        """The answer to ``next`` (or ``preempted``): records the trial ``group`` just
        finished, then hands out the strategy's next trial."""
        if group in self.retired:  # it lost a rank: its trial is recorded already
            return answer("retire")
        if record is not None:
            self._finished(TrialRecord(**record))
        if self.preempted:  # a group got a signal: this one stops too
            return answer("preempted", signal=self.preempted)
        trial = self.strategy.ask()
        if trial is not None:
            self.running[trial.id] = group
            self.handed[trial.id] = (trial, time.time())
            return answer("trial", trial=trial_json(trial))
        if self.strategy.finished or not self.running:
            return answer("done")
        return answer("wait")

    def _finished(self, rec: TrialRecord) -> None:
        self.running.pop(rec.id, None)
        self.handed.pop(rec.id, None)
        if self.rule is not None and rec.status == "completed":
            self.rule.completed(rec.id, read_curve(self._dir(rec.id), self.key))
        # a stopped trial's metric is a training value, not the searched one: to the
        # strategy it counts as worse than any completed trial (it never wins a selection)
        self.strategy.tell(rec.id, rec.metric if rec.status == "completed" else None)
        self.records.append(rec)
        self.finished_here += 1
        with open(self.out / "trials.jsonl", "a") as f:
            f.write(json.dumps(asdict(rec)) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_atomic(self.out / "state.json", json.dumps(self.strategy.state()))
        if rec.status == "completed":
            from hpcnet.search.results import write_hparams

            write_hparams(self.out, rec, self.metric)
        if self.verbose:
            print(self._progress_line(rec), flush=True)

    def best(self) -> TrialRecord | None:
        ok = [r for r in self.records if r.status == "completed" and r.metric is not None]
        if not ok:
            return None
        pick = max if self.direction == "max" else min
        return pick(ok, key=lambda r: r.metric)

    def _progress_line(self, rec: TrialRecord) -> str:
        params = ", ".join(f"{k}={fmt_value(v)}" for k, v in rec.params.items())
        what = f"{rec.metric:.4g}" if rec.status == "completed" else f"{rec.status} ({rec.reason})"
        if rec.status == "stopped" and rec.metric is not None:
            what = f"{rec.metric:.4g} (stopped early)"
        best = self.best()
        best_text = f"best {best.metric:.4g} (trial {best.id})" if best else "best -"
        done, total = len(self.records), self.strategy.total
        eta = ""
        if total and self.finished_here:
            left = (time.monotonic() - self.t0) / self.finished_here * (total - done)
            eta = f", ETA {left:.0f} s"
        of = f"/{total}" if total else ""
        return f"trial {rec.id:4d} [{params}] {what}; {best_text}; {done}{of} done{eta}"
