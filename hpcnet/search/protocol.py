"""The search's messages: a group's leader asks, the scheduler (world rank 0) answers.

Every message is a small JSON object (a dict with a ``"kind"``) on the scheduler's own
communicator, through :class:`hpcnet.comm.messages.JsonChannel` (nothing pickled):
questions on tag :data:`TAG_ASK` to rank 0, answers on :data:`TAG_ANSWER` back. Every
question gets exactly one answer; a leader waits for it at most
:attr:`~hpcnet.comm.waits.Deadlines.scheduler_answer` seconds.

Questions (:func:`question`), with the answers each can get (:func:`answer`):

- ``next`` (``group``, ``record``: the trial it just finished, or None) -> ``trial``
  (``trial``: :func:`trial_json`), ``wait`` (ask again: a generation's last trials run
  elsewhere), ``done``, ``abort`` (``why``: the scheduler failed), ``retire`` (the
  group lost a rank), ``lost`` (``why``: the scheduler's own group lost one),
  ``preempted`` (``signal``: another group got SIGUSR1/SIGTERM).
- ``progress`` (``group``, ``trial``, ``step``, ``value``) -> ``go`` or ``stop``
  (early stopping, :mod:`hpcnet.search.early_stop`).
- ``preempted`` (``group``, ``record``, ``signal``: the group got SIGUSR1/SIGTERM) ->
  ``preempted`` (:mod:`hpcnet.search.preemption`).
- ``retired`` (``group``, ``dead``: the ranks the group lost; fault tolerance,
  :mod:`hpcnet.search.faults`) -> ``wait``, ``done``, ``abort`` or ``lost``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm.messages import JsonChannel
from hpcnet.comm.waits import Backoff, poll_until, search_reask
from hpcnet.errors import RankLost
from hpcnet.search import faults
from hpcnet.search.strategy import Trial

TAG_ASK, TAG_ANSWER = 51, 52
QUESTIONS = ("next", "progress", "preempted", "retired")
ANSWERS = ("trial", "wait", "done", "abort", "retire", "lost", "preempted", "go", "stop")


def question(kind: str, group: int, **fields: Any) -> dict[str, Any]:
    """A leader's question ``kind`` (one of :data:`QUESTIONS`) from ``group``."""
    if kind not in QUESTIONS:
        raise ValueError(f"no search question {kind!r}")
    return {"kind": kind, "group": group, **fields}


def answer(kind: str, **fields: Any) -> dict[str, Any]:
    """The scheduler's answer ``kind`` (one of :data:`ANSWERS`)."""
    if kind not in ANSWERS:
        raise ValueError(f"no search answer {kind!r}")
    return {"kind": kind, **fields}


def trial_json(trial) -> dict[str, Any]:
    """A strategy's trial as JSON: ``{"id", "params", "generation"}``."""
    return {
        "id": int(trial.id),
        "params": dict(trial.params),
        "generation": int(getattr(trial, "generation", 0)),
    }


def trial_of(message: dict[str, Any]) -> Trial:
    """The trial of a ``trial`` answer."""
    t = message["trial"]
    return Trial(id=int(t["id"]), params=dict(t["params"]), generation=int(t["generation"]))


class SchedulerLink:
    """The scheduler's end of the protocol: its two channels on ``comm``."""

    def __init__(self, comm: MPI.Comm):
        self.questions = JsonChannel(comm, TAG_ASK)
        self.answers = JsonChannel(comm, TAG_ANSWER)


def ask(sched: MPI.Intracomm, message: dict[str, Any], timeout: float, out: Path) -> dict:
    """A group leader's question to the scheduler (rank 0 of ``sched``) and its answer.

    Args:
        timeout: seconds to wait for the answer (``Deadlines.scheduler_answer``).
        out: the search directory (named in the error when the scheduler died).
    Raises:
        StallError: no answer within ``timeout`` seconds.
        RankLost: (fault tolerance) the scheduler died.
    """
    link = SchedulerLink(sched)
    try:
        link.questions.send(message, 0)
        return link.answers.recv(
            0, timeout, "the search scheduler's answer", backoff=Backoff(first=1e-4, cap=10e-3)
        )
    except MPI.Exception as e:  # from rank 0 only: it died
        if not faults.is_failure(e):
            raise
        raise faults.scheduler_died(sched, out) from None


def retire(sched: MPI.Intracomm, g: int, dead: list[int], timeout: float, out: Path) -> dict | None:
    """A live rank of group ``g``, which lost ``dead``: tells the scheduler, then asks
    again (pausing as :func:`~hpcnet.comm.waits.search_reask`, each answer within
    ``timeout`` seconds) until the search is over. Returns None (``done``) or the
    scheduler's ``abort`` answer.

    Raises:
        RankLost: the scheduler died, or its own group lost a rank (``lost``).
    """
    if 0 in dead:
        raise faults.scheduler_died(sched, out)
    final: list[dict] = []

    def over() -> bool:
        got = ask(sched, question("retired", g, dead=dead), timeout, out)
        if got["kind"] == "lost":
            raise RankLost(got["why"])
        if got["kind"] in ("abort", "done"):
            final.append(got)
            return True
        return False

    # unbounded: every question is answered within ``timeout`` while the search goes on
    poll_until(over, float("inf"), "the end of the search", backoff=search_reask())
    return final[0] if final[0]["kind"] == "abort" else None
