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
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm import bcast_object, gather_objects
from hpcnet.errors import HpcnetError
from hpcnet.search import faults
from hpcnet.search.preemption import resumable_trial
from hpcnet.search.protocol import ask, question
from hpcnet.search.records import TrialRecord, one_line

TrainFn = Callable[[dict[str, Any], MPI.Intracomm], dict[str, Any]]


_trial_ends: list[float] = []  # this rank's running train_fn trial: when it times out


def trial_time_left() -> float:
    """Seconds the trial this rank runs (with ``train_fn``) has left before its
    ``--trial-timeout``; ``inf`` without a timeout or outside a trial.

    A ``train_fn`` that loops should return once it is <= 0 (``trial_timed_out()``):
    the trial is recorded failed, past its timeout, either way; one that does not look
    is recorded so only when it returns. (A trial of hpcnet's own training stops by
    itself, checkpointed, at the first step boundary past the timeout.)
    """
    return _trial_ends[-1] - time.monotonic() if _trial_ends else math.inf


def trial_timed_out() -> bool:
    """Whether the running trial is past its ``--trial-timeout`` (see
    :func:`trial_time_left`)."""
    return trial_time_left() <= 0


@contextlib.contextmanager
def _time_limit(seconds: float | None) -> Iterator[None]:
    """:func:`trial_time_left` counts down ``seconds`` (None: no limit) inside."""
    _trial_ends.append(time.monotonic() + seconds if seconds else math.inf)
    try:
        yield
    finally:
        _trial_ends.pop()


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
    from hpcnet.run.preempt import STOP_REQUESTED, TIME_LIMIT, Preempted

    out: dict[str, Any] = {"status": "completed", "metric": None, "steps": None, "reason": ""}
    t0 = time.monotonic()
    comm = None
    try:
        # a failed trial may leave requests pending on its communicator: never reused.
        # Inside the try: a group rank dying just now makes Dup itself fail (ULFM), which
        # is this trial's failure; the agreement after it retires the group (seen in CI)
        comm = group.Dup()
        comm.Set_name(f"search trial {trial.id}")
        overrides = {**fixed, **trial.params}
        if train_fn is None:
            where = {"run.out": str(trial_dir)}
            if resume:
                where["run.resume"] = str(trial_dir)
            cfg = load_config(config_file, {**overrides, **where})
            metrics = train(
                cfg, comm, verbose=False, on_progress=on_progress, time_limit=trial_timeout
            )
            metrics.pop("_params", None)
        else:
            with _time_limit(trial_timeout):
                metrics = train_fn(dict(overrides), comm)
            if trial_timeout and time.monotonic() - t0 > trial_timeout:
                raise Preempted(TIME_LIMIT, metrics.get("steps") or 0, str(trial_dir))
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
        if e.signum == TIME_LIMIT:
            why = f"past its trial timeout ({trial_timeout:g} s)"
            out.update(status="failed", steps=e.step, reason=why)
        elif e.signum != STOP_REQUESTED:  # a real SIGTERM/SIGUSR1: the search stops
            out.update(status="preempted", steps=e.step, signum=e.signum)
        else:
            out.update(status="stopped", steps=e.step)  # early stopping (the leader's metric)
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
        got = ask(
            sched,
            question("progress", g, trial=trial.id, step=rec["step"], value=value),
            answer_timeout,
            out,
        )
        return got["kind"] != "go"

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
