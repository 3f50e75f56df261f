"""Runs a search over rank groups: one scheduler, each trial an ordinary hpcnet run.

The world (``comm``) is split into groups of ``group_size`` consecutive ranks
(``comm.Split``); each group trains one trial at a time on a fresh duplicate of its
communicator, with any algorithm and layout that fits in the group. World rank 0
also runs the *scheduler*, in a thread (MPI_THREAD_MULTIPLE), so it keeps
answering while its own group trains.

Scheduling policy: first come, first served. A group's leader (its rank 0) asks
the scheduler for the next trial when its group is free, telling it the result of
the trial it just finished in the same message; the scheduler records the result
(the strategy's ``tell``), then hands out the strategy's next trial. So fast trials
never wait for slow ones; a differential-evolution generation is evaluated as
groups free up, and a group that finds the generation's trials all handed out
waits (asks again) until the generation is complete. The leader broadcasts each
answer to its group; every rank of the group runs the trial.

A trial fails (recorded with a one-line reason; its group takes the next trial)
when it raises on any of its ranks (a config ``train`` rejects, a stall the
watchdog ends), when its metric or loss is not finite, or when it runs past
``trial_timeout`` seconds (hpcnet's training stops itself at its first step boundary
past it, checkpointed, on every rank of the group; a ``train_fn`` looks at
:func:`hpcnet.search.trials.trial_time_left`). Every wait has a deadline
(:class:`hpcnet.comm.waits.Deadlines`: ``scheduler_answer``, ``group_agreement``);
the messages are JSON (:mod:`hpcnet.search.protocol`).

A rank that dies under fault tolerance (Open MPI, ``mpiexec --with-ft ulfm``) fails
its group's trial with the reason ``rank K died (process failed)`` and retires the
group; the other groups finish the search (:mod:`hpcnet.search.faults`).

Files in ``out`` (rank 0 writes them): ``search.json`` (the settings, to refuse a
``--resume`` with other ones), ``trials.jsonl`` (one record per finished trial,
appended and ``fsync``-ed), ``state.json`` (the strategy's state, replaced
atomically after every trial), ``trials/NNNN/`` (each trial's run: config.toml,
metrics.jsonl, summary.json), and at the end ``results.csv`` and ``best.toml``
(a config file ``train --config`` accepts); ``lost_groups.json`` when a group retired.

Who calls what: :func:`search_on_groups` is collective over ``comm``.
"""

from __future__ import annotations

import contextlib
import json
import threading
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm import Deadlines, bcast_object
from hpcnet.comm.waits import search_reask
from hpcnet.comm.watchdog import current_timeout
from hpcnet.comm.world import root_then_bcast
from hpcnet.errors import ConfigError, RankLost
from hpcnet.run.preempt import PreemptionWatch
from hpcnet.search import faults
from hpcnet.search.early_stop import progress_key
from hpcnet.search.preemption import SearchPreempted, group_signal
from hpcnet.search.protocol import answer as protocol_answer
from hpcnet.search.protocol import ask, question, retire, trial_of
from hpcnet.search.records import TrialRecord, fmt_value, one_line, write_atomic
from hpcnet.search.scheduler import Scheduler
from hpcnet.search.settings import SearchSettings
from hpcnet.search.trials import TrainFn, run_trial, trial_in_group

__all__ = ["Scheduler", "TrainFn", "TrialRecord", "fmt_value", "search_on_groups"]


def _prepare_dir(out: Path, settings: dict[str, Any], resume: bool):
    """Rank 0: makes (or, resuming, checks) the search directory; returns the finished
    records and the strategy state to resume from (None: a new search)."""
    meta = out / "search.json"
    if resume:
        if not meta.is_file():
            raise ConfigError(f"--resume {out}: no search.json in it (not a search directory)")
        saved = json.loads(meta.read_text())
        for key, value in settings.items():
            if key != "group_size" and saved.get(key) != value:
                raise ConfigError(
                    f"--resume {out}: the search was started with {key} = {saved.get(key)!r}, "
                    f"this one has {value!r}"
                )
        lines = (
            (out / "trials.jsonl").read_text().splitlines()
            if (out / "trials.jsonl").exists()
            else []
        )
        records = [TrialRecord(**json.loads(line)) for line in lines if line.strip()]
        state_path = out / "state.json"
        state = json.loads(state_path.read_text()) if state_path.exists() else None
        return records, state
    if meta.exists():
        raise ConfigError(f"--out {out}: holds a search already; --resume continues it")
    (out / "trials").mkdir(parents=True, exist_ok=True)
    write_atomic(meta, json.dumps(settings, indent=1))
    return [], None


def search_on_groups(
    strategy,
    settings: SearchSettings,
    *,
    comm: MPI.Intracomm,
    saved: dict[str, Any],
    fixed: dict[str, Any] | None = None,
    train_fn: TrainFn | None = None,
    deadlines: Deadlines | None = None,
) -> list[TrialRecord]:
    """Runs every trial ``strategy`` hands out on the rank groups of ``comm``.

    Collective over ``comm``: every rank calls it with the same arguments.

    Args:
        strategy: the searcher (ask/tell: :class:`hpcnet.search.strategy.Strategy`).
        settings: how the search runs (:class:`hpcnet.search.settings.SearchSettings`:
            group size, directory, metric and direction, early stopping, trial
            timeout, resume, config file).
        saved: what defines the search (space, strategy and its options, fixed config,
            metric): saved in ``search.json``, and compared on ``settings.resume``.
        fixed: config keys (``"section.name"``) every trial shares.
        train_fn: ``train_fn(config, comm) -> metrics`` instead of training hpcnet
            (``config``: the fixed and trial keys; collective over ``comm``).
        deadlines: how long a leader waits for the scheduler's answer
            (``scheduler_answer``) and a group's live ranks for each other
            (``group_agreement``); None: the defaults.
    Returns:
        Every finished trial's record (every rank), in the order they finished.
    Raises:
        ConfigError: a group size that does not divide the ranks, MPI without
            threads, a bad or mismatched ``out``.
        SearchPreempted: SIGUSR1/SIGTERM stopped it (:mod:`hpcnet.search.preemption`).
    """
    group_size, out, config_file = settings.group_size, settings.out, settings.config_file
    metric, direction, early_stop = settings.metric, settings.direction, settings.early_stop
    trial_timeout = settings.trial_timeout or None
    resume, verbose = settings.resume, settings.verbose
    deadlines = deadlines or Deadlines()
    answer_timeout = deadlines.scheduler_answer
    out = Path(out)
    size, rank = comm.Get_size(), comm.Get_rank()
    if group_size < 1 or size % group_size:
        raise ConfigError(f"--group-size {group_size}: {size} ranks do not split into groups of it")
    if MPI.Query_thread() < MPI.THREAD_MULTIPLE:
        raise ConfigError(
            "search: the MPI library gives no MPI_THREAD_MULTIPLE (the scheduler runs in a thread)"
        )
    records, state = root_then_bcast(lambda: _prepare_dir(out, saved, resume), comm)
    if state is not None:
        strategy.restore(state)
    for rec in records:  # killed between a trial's record and the state saved after it
        try:
            strategy.metric(rec.id)
        except KeyError:
            strategy.tell(rec.id, rec.metric if rec.status == "completed" else None)
    if rank == 0:
        with contextlib.suppress(FileNotFoundError):  # a previous start's lost groups
            (out / faults.LOST_FILE).unlink()
    g, n_groups = rank // group_size, size // group_size
    key = progress_key(metric, direction)[0]
    group = comm.Split(g, rank)
    group.Set_name(f"search group {g}")
    sched = comm.Dup()
    sched.Set_name("search scheduler")
    scheduler = thread = None
    if rank == 0:
        scheduler = Scheduler(
            sched,
            strategy,
            n_groups,
            out,
            metric,
            direction,
            records,
            verbose,
            early_stop,
            group_size,
        )
        thread = threading.Thread(
            target=scheduler.serve, name="hpcnet search scheduler", daemon=True
        )
        thread.start()
        if verbose:
            total = strategy.total
            print(
                f"hpcnet search: {n_groups} group(s) of {group_size} rank(s); "
                f"{total if total else '?'} trials; metric {metric} ({direction}); "
                f"results in {out}",
                flush=True,
            )
    leader = group.Get_rank() == 0
    record: dict | None = None
    error = None
    lost_error: RankLost | None = None
    base = g * group_size  # the search rank of the group's rank 0

    def group_lost(what: str) -> list[int]:  # collective over the group's live ranks
        return faults.lost_in_group(
            group, base, deadlines.group_agreement, f"search group {g}: {what}"
        )

    watch = PreemptionWatch()  # a signal between trials; a trial's own run notes its own
    stop_signal = 0  # SIGUSR1/SIGTERM: the search stops (hpcnet.search.preemption)
    pause = search_reask()  # between questions while the scheduler says "wait"
    while True:
        dead: list[int] = []
        try:
            stop_signal = stop_signal or group_signal(watch.signum, group)
            if stop_signal:
                msg = question("preempted", g, record=record, signal=stop_signal)
            else:
                msg = question("next", g, record=record)
            answer = ask(sched, msg, answer_timeout, out) if leader else None
            record = None
            answer = bcast_object(answer, group, what="the search's next trial")
        except MPI.Exception as e:  # (fault tolerance) a rank of the group died
            if not faults.is_failure(e):
                raise
            answer = protocol_answer("retire")
        except RankLost as e:
            lost_error = e
            break
        kind = answer["kind"]
        if kind == "lost":
            lost_error = RankLost(answer["why"])
            break
        if kind in ("done", "abort", "preempted"):
            error = answer["why"] if kind == "abort" else None
            stop_signal = answer["signal"] if kind == "preempted" else stop_signal
            break
        if kind == "wait":
            pause.sleep()
            continue
        pause.reset()
        if kind == "retire":
            dead = group_lost("live ranks")
        else:
            record, dead, stop_signal = trial_in_group(
                trial_of(answer), group, g, out, leader, sched, key, answer_timeout, early_stop,
                lambda trial, on_progress, resume: run_trial(
                    trial, group, out / "trials" / f"{trial.id:04d}", fixed or {},
                    config_file, train_fn, metric, trial_timeout, on_progress, resume,
                ),
                group_lost, can_resume=train_fn is None,
            )  # fmt: skip
        if dead or kind == "retire":
            try:
                abort = retire(sched, g, dead, answer_timeout, out)
            except RankLost as e:
                lost_error = e
                break
            error = abort["why"] if abort else None
            break
    watch.close()
    if thread is not None:
        thread.join()
        if scheduler.error is not None:
            error = one_line(scheduler.error)
        records = scheduler.records
        stop_signal = scheduler.preempted
    if lost_error is not None:  # every live rank raises it; nothing more to agree
        raise lost_error
    end, lost = faults.end_comm(comm, current_timeout())
    records, stop_signal = bcast_object((records, stop_signal), end, what="the search's results")
    if end is not comm:
        end.Free()
    if not lost:  # a Free is collective over a communicator that holds a dead rank
        group.Free()
        sched.Free()
    if error:
        raise RuntimeError(f"search: the scheduler failed: {error}")
    if stop_signal:
        raise SearchPreempted(stop_signal, out, len(records))
    return records
