"""A search that outlives a dead rank (ULFM: Open MPI with ``mpiexec --with-ft ulfm``).

Under fault tolerance (:func:`hpcnet.comm.ft.enabled`) a rank killed in a group other
than world rank 0's does not end the search:

- the group's live ranks learn it from their trial (a collective over the group raises
  ``MPI_ERR_PROC_FAILED``; the trial is a failure like any other) and agree on it
  after every trial (:func:`lost_in_group`: ``MPI_Comm_agree`` then ``MPI_Comm_shrink``
  over the group, so every survivor sees the same dead ranks);
- the scheduler learns it from MPI too (its ``Iprobe`` from any source reports the
  failure, which it acknowledges), or from a survivor's ``retired`` message, whichever
  comes first: it records the trial the group was running as failed, with the reason
  ``rank K died (process failed)``, *retires* the group (no more trials for it; it is
  listed in ``lost_groups.json``) and hands the rest of the search to the other groups;
- the survivors of a retired group stop training and ask the scheduler, pausing up
  to half a second in between, whether the search is over (each answer within the
  search's answer deadline, so a dead scheduler is noticed:
  :func:`hpcnet.search.protocol.retire`);
- the end (the records, ``results.csv``, ``best.toml``) runs over the live ranks
  (:func:`end_comm`).

A rank of world rank 0's group dying, or world rank 0 itself, ends the search on every
live rank with :class:`~hpcnet.errors.RankLost` (exit status 3): one line saying to
continue with ``--resume``. Without fault tolerance (MPICH, or Open MPI without
``--with-ft ulfm``) a killed rank ends the job, as before, and nothing here runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.comm import ft
from hpcnet.errors import RankLost

LOST_FILE = "lost_groups.json"


def died(ranks: list[int]) -> str:
    """The one-line reason of a trial whose group lost ``ranks`` (search ranks)."""
    if len(ranks) == 1:
        return f"rank {ranks[0]} died (process failed)"
    return f"ranks {', '.join(map(str, ranks))} died (process failed)"


def lost_in_group(group: MPI.Intracomm, base: int, timeout: float, what: str) -> list[int]:
    """The ranks of ``group`` that died, agreed by its live ranks, as search ranks
    (``base`` + group rank: groups are consecutive ranks). ``[]`` without fault
    tolerance, with no communication.

    Collective over the live ranks of ``group``: every one calls it at the same point
    (after each trial, or once a collective over ``group`` failed).

    Args:
        timeout: seconds to wait for the other live ranks (:func:`hpcnet.comm.ft.shrink`).
    Raises:
        StallError: a live rank of the group did not arrive within ``timeout``.
    """
    if not ft.enabled():
        return []
    alive = ft.shrink(group, timeout, what)
    lost = ft.lost_between(group, alive)
    alive.Free()
    return [base + r for r in lost]


def is_failure(e: BaseException) -> bool:
    """Whether ``e`` is MPI's report of a dead rank, under fault tolerance."""
    return ft.enabled() and ft.is_failure(e)


def end_comm(comm: MPI.Intracomm, timeout: float) -> tuple[MPI.Intracomm, list[int]]:
    """The communicator the end of the search runs on, and the ranks of ``comm`` that
    died: ``comm`` itself without fault tolerance; under it, the live ranks of ``comm``
    agreed (:func:`hpcnet.comm.ft.shrink`; order kept, so rank 0 stays rank 0 while it
    lives). Collective over the live ranks of ``comm``.

    Raises:
        StallError: a live rank did not arrive within ``timeout`` seconds.
    """
    if not ft.enabled():
        return comm, []
    alive = ft.shrink(comm, timeout, "the search's end: its live ranks")
    return alive, ft.lost_between(comm, alive)


def scheduler_died(comm: MPI.Comm, out: Path) -> RankLost:
    """The error every live rank raises when world rank 0 (the scheduler) died."""
    failed = set(ft.failed_ranks(comm)) | {0}
    alive = [r for r in range(comm.Get_size()) if r not in failed]
    return RankLost(
        "search: rank 0 (the search's scheduler) died (process failed); the search ends: "
        f"continue it with --resume {out}",
        printer=alive[0] if alive else 0,
    )


def own_group_died(dead: list[int], out: Path) -> str:
    """The message of the search's end when the scheduler's own group lost ``dead``."""
    return (
        f"search: {died(dead)} in the scheduler's group (group 0); the search ends: "
        f"continue it with --resume {out}"
    )


def write_lost_groups(out: Path, lost: list[dict[str, Any]]) -> None:
    """Replaces ``out/lost_groups.json`` (atomically): one entry per retired group,
    ``{"group", "ranks", "dead", "trial", "at_unix"}`` (``trial``: the id recorded
    failed, or None when the group was between trials)."""
    tmp = out / f".{LOST_FILE}.tmp"
    tmp.write_text(json.dumps(lost, indent=1))
    os.replace(tmp, out / LOST_FILE)


def read_lost_groups(out: Path) -> list[dict[str, Any]]:
    """The groups this search (this start of it) retired; ``[]`` when none."""
    path = out / LOST_FILE
    return json.loads(path.read_text()) if path.exists() else []


def lost_lines(lost: list[dict[str, Any]]) -> list[str]:
    """One line per retired group for the final report."""
    lines = []
    for g in lost:
        trial = f"; trial {g['trial']} recorded failed" if g["trial"] is not None else ""
        lines.append(f"lost group {g['group']} (ranks {g['ranks']}): {died(g['dead'])}{trial}")
    return lines
