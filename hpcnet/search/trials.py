"""One trial on one rank group, and a group leader's questions to the scheduler.

A trial is an ordinary hpcnet run (or a ``train_fn``) on a fresh duplicate of its
group's communicator; its outcome on every rank is gathered on the group's leader,
which asks the scheduler (world rank 0, :mod:`hpcnet.search.scheduler`) for the next
trial in the same message that reports this one. The policy is in
:mod:`hpcnet.search.runner`'s docstring.
"""

from __future__ import annotations

import contextlib
import math
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm import Backoff, bcast_object, gather_objects, poll_until
from hpcnet.errors import HpcnetError, RankLost
from hpcnet.search import faults
from hpcnet.search.preemption import resumable_trial
from hpcnet.search.records import TrialRecord, one_line
from hpcnet.search.scheduler import TAG_ANSWER, TAG_ASK

TrainFn = Callable[[dict[str, Any], MPI.Intracomm], dict[str, Any]]


class TrialTimeout(Exception):
    """Raised in a trial's ranks when it runs past ``--trial-timeout``."""


@contextlib.contextmanager
def _alarm(seconds: float | None) -> Iterator[None]:
    """Raises :class:`TrialTimeout` in this (main) thread after ``seconds``."""
    if not seconds:
        yield
        return

    def ring(signum, frame):
        raise TrialTimeout()

    old = signal.signal(signal.SIGALRM, ring)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def ask(sched: MPI.Intracomm, msg: tuple, timeout: float, out: Path) -> tuple:
    """A group leader's question to the scheduler (world rank 0) and its answer.

    Raises:
        StallError: no answer within ``timeout`` seconds.
        RankLost: (fault tolerance) the scheduler died.
    """
    try:
        sched.send(msg, dest=0, tag=TAG_ASK)
        poll_until(
            lambda: sched.iprobe(0, TAG_ANSWER),
            timeout,
            "the search scheduler's answer",
            backoff=Backoff(first=1e-4, cap=10e-3),
        )
        return sched.recv(source=0, tag=TAG_ANSWER)
    except MPI.Exception as e:  # from rank 0 only: it died
        if not faults.is_failure(e):
            raise
        raise faults.scheduler_died(sched, out) from None


def retire(
    sched: MPI.Intracomm, g: int, dead: list[int], timeout: float, out: Path
) -> tuple | None:
    """A live rank of group ``g``, which lost ``dead``: tells the scheduler, then asks
    every :data:`~hpcnet.search.faults.RETIRED_POLL_S` seconds until the search is over.
    Returns None (``done``) or the scheduler's ``abort`` answer.

    Raises:
        RankLost: the scheduler died, or its own group lost a rank (``lost``).
    """
    if 0 in dead:
        raise faults.scheduler_died(sched, out)
    while True:
        answer = ask(sched, ("retired", g, dead), timeout, out)
        if answer[0] == "lost":
            raise RankLost(answer[1])
        if answer[0] == "abort":
            return answer
        if answer[0] == "done":
            return None
        time.sleep(faults.RETIRED_POLL_S)


def run_trial(
    trial,
    group: MPI.Intracomm,
    trial_dir: Path,
    fixed: dict[str, Any],
    config_file: str | None,
    train_fn: TrainFn | None,
    metric: str,
    trial_timeout: float | None,
    on_progress=None,
    resume: bool = False,
) -> dict[str, Any]:
    """Runs one trial on every rank of ``group``; returns this rank's outcome.
    ``on_progress(record) -> stop?``: early stopping, asked on the run's rank 0.
    ``resume``: continue the trial from the checkpoint in ``trial_dir`` (a search
    stopped by a signal, :mod:`hpcnet.search.preemption`). Status ``preempted`` (with
    ``signum``): a SIGUSR1/SIGTERM stopped it, checkpointed."""
    from hpcnet.algos import train
    from hpcnet.config import load_config
    from hpcnet.run.preempt import STOP_REQUESTED, Preempted

    out: dict[str, Any] = {"status": "completed", "metric": None, "steps": None, "reason": ""}
    t0 = time.monotonic()
    comm = None
    try:
        # a failed trial may leave requests pending on its communicator: never reused.
        # Inside the try: a group rank dying just now makes Dup itself fail (ULFM), which
        # is this trial's failure; the agreement after it retires the group (seen in CI)
        comm = group.Dup()
        comm.Set_name(f"search trial {trial.id}")
        with _alarm(trial_timeout):
            overrides = {**fixed, **trial.params}
            if train_fn is None:
                where = {"run.out": str(trial_dir)}
                if resume:
                    where["run.resume"] = str(trial_dir)
                cfg = load_config(config_file, {**overrides, **where})
                metrics = train(cfg, comm, verbose=False, on_progress=on_progress)
                metrics.pop("_params", None)
            else:
                metrics = train_fn(dict(overrides), comm)
        value = metrics.get(metric)
        if value is None:
            raise ValueError(f"the trial's metrics hold no {metric!r}")
        out["metric"] = float(value)
        out["steps"] = metrics.get("steps")
        losses = [metrics.get(k) for k in ("test_loss", "final_train_loss")]
        if not math.isfinite(out["metric"]):
            out.update(status="failed", reason=f"{metric} is {out['metric']}")
        elif any(isinstance(v, float) and not math.isfinite(v) for v in losses):
            out.update(status="failed", reason="the loss became NaN")
    except Preempted as e:
        if e.signum != STOP_REQUESTED:  # a real SIGTERM/SIGUSR1: the search stops
            out.update(status="preempted", steps=e.step, signum=e.signum)
        else:
            out.update(status="stopped", steps=e.step)  # early stopping (the leader's metric)
    except TrialTimeout:
        out.update(status="failed", reason=f"past its trial timeout ({trial_timeout:g} s)")
    except (HpcnetError, Exception) as e:  # noqa: BLE001  a trial's failure is a result
        out.update(status="failed", reason=one_line(e))
    out["wall_s"] = time.monotonic() - t0
    if out["status"] == "completed" and comm is not None:
        comm.Free()
    return out


def trial_in_group(
    trial,
    group: MPI.Intracomm,
    g: int,
    out: Path,
    leader: bool,
    sched: MPI.Intracomm,
    key: str,
    answer_timeout: float,
    early_stop: str,
    run: Callable,
    group_lost: Callable[[str], list[int]],
    can_resume: bool = True,
) -> tuple[dict | None, list[int], int]:
    """Runs ``trial`` on every rank of group ``g`` (``run(trial, on_progress, resume)``:
    this rank's outcome) and gathers the outcomes on its leader. Collective over
    ``group``.

    Returns:
        The trial's record (a dict, on the leader; None elsewhere and when a signal
        stopped the trial), the ranks of the group that died (fault tolerance: agreed
        after the trial; then no record, the scheduler records the trial failed), and
        the signal that stopped the trial (0: none; every rank of the group).
    """
    trial_dir = out / "trials" / f"{trial.id:04d}"
    # A resumed search meets a trial that was not finished: one a signal stopped goes on
    # from its checkpoint. Every rank reads the same file and so decides the same, with
    # no collective here (a rank that died between trials is found by the trial's own
    # first collective, as a failure of that trial): the leader deletes the directory
    # only when the checkpoint is absent, final or unreadable, when the others read
    # "no" too, whether they read before or after it.
    resume = can_resume and trial_dir.exists() and resumable_trial(trial_dir)
    if leader and trial_dir.exists() and not resume:
        shutil.rmtree(trial_dir)  # killed, or finished unrecorded: run it again
    if leader and not resume:
        trial_dir.mkdir(parents=True)
    started = time.time()
    last: list[float] = []  # the progress values the leader reported

    def on_progress(rec) -> bool:
        value = rec.get(key)
        if not isinstance(value, int | float):
            return False
        last.append(float(value))
        answer = ask(sched, ("progress", g, trial.id, rec["step"], value), answer_timeout, out)
        return answer[0] != "go"

    mine = run(trial, on_progress if early_stop != "none" else None, resume)
    dead = group_lost(f"after trial {trial.id}")
    if dead:
        return None, dead, 0
    try:
        outcomes = gather_objects(mine, group, what="the trial's outcome")
        stopped = [o.get("signum", 0) for o in outcomes or [] if o["status"] == "preempted"]
        signum = bcast_object(max(stopped, default=0), group, what="the trial's stop")
    except MPI.Exception as e:  # (fault tolerance) a rank died since the agreement
        if not faults.is_failure(e):
            raise
        return None, group_lost("live ranks"), 0
    if not leader or signum:
        return None, [], signum
    bad = [o for o in outcomes if o["status"] == "failed"]
    first = bad[0] if bad else outcomes[0]
    record = asdict(
        TrialRecord(
            id=trial.id,
            params=trial.params,
            status="failed" if bad else first["status"],
            metric=last[-1] if first["status"] == "stopped" and last else outcomes[0]["metric"],
            steps=outcomes[0]["steps"],
            wall_s=max(o["wall_s"] for o in outcomes),
            group=g,
            generation=getattr(trial, "generation", 0),
            reason=first["reason"] if bad else "",
            started=started,
            ended=time.time(),
        )
    )
    return record, [], 0
