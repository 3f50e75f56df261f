"""The library communicator and the job-wide error policy.

This package is the only code that touches raw MPI. hpcnet never
communicates on ``COMM_WORLD`` itself: :func:`library_comm` is a ``Dup`` of it,
so a user's own messages cannot match ours.

Error policy (docs/design.md, "Faults and bad input"):

* a user error found identically on every rank (bad flag, layout, data file
  checked by rank 0 and broadcast) -> rank 0 prints one line, every rank
  exits with status 2, no MPI_Abort;
* a user error found on one rank only, or any other exception -> that rank
  prints it and calls ``Abort`` on COMM_WORLD, so no rank is left waiting.

A fatal message must reach the user: the rank writes it to stderr, and also to
``OUT/error-rank-K.txt`` (host, pid, rank, role, time, traceback) once the run
has an output directory (:func:`set_error_report`), then waits
:data:`ABORT_GRACE_S` seconds before ``Abort``, so that the launcher (hydra's
proxy, Open MPI's prted) has forwarded what the rank wrote before it tears the
job down.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mpi4py import MPI

from hpcnet.errors import HpcnetError, RankLost, StallError

T = TypeVar("T")
_LIBRARY_COMM = None
_WORLD_ID = 0

# Seconds between writing a fatal message and MPI_Abort: the launcher forwards a rank's
# stderr through a pipe it polls; Abort makes it kill every rank, and an unread pipe is
# lost. 1 s covers a launcher that waits for a core on a busy node.
ABORT_GRACE_S = 1.0
_REPORT: dict[str, Any] = {"dir": None, "role": ""}


def library_comm() -> MPI.Intracomm:
    """hpcnet's duplicate of COMM_WORLD (created on first call: collective over
    COMM_WORLD, so every rank must call it the first time, in the same order)."""
    global _LIBRARY_COMM, _WORLD_ID
    if _LIBRARY_COMM is None:
        _LIBRARY_COMM = MPI.COMM_WORLD.Dup()
        _LIBRARY_COMM.Set_name("hpcnet world")
        me = f"{socket.gethostname()}:{os.getpid()}"
        _WORLD_ID = zlib.crc32(_LIBRARY_COMM.bcast(me, root=0).encode()) & 0x7FFFFFFF
    return _LIBRARY_COMM


def world_id() -> int:
    """A number the processes of one ``MPI_COMM_WORLD`` share and processes spawned
    later (``MPI_Comm_spawn``: another world) do not: MPICH lets only one world's
    processes share memory (``MPI_Win_allocate_shared``), even on one node. Set by
    :func:`library_comm`'s first call (collective over COMM_WORLD); 0 before it: never
    a collective here, since this may run on a subset of the world."""
    return _WORLD_ID


def world_rank() -> int:
    return MPI.COMM_WORLD.Get_rank()


def world_size() -> int:
    return MPI.COMM_WORLD.Get_size()


def ranks_on_node(comm: MPI.Intracomm) -> int:
    """Number of ranks of ``comm`` sharing this node (collective over ``comm``)."""
    node = comm.Split_type(MPI.COMM_TYPE_SHARED)
    n = node.Get_size()
    node.Free()
    return n


def set_error_report(out_dir: str | os.PathLike | None, role: str = "") -> None:
    """Where this rank writes the full report of a fatal error (``out_dir/error-rank-K.txt``)
    and the role it names there (e.g. ``replica 2``). Call it once the run's output
    directory exists; ``None`` turns the file off."""
    _REPORT["dir"] = None if out_dir is None else os.fspath(out_dir)
    _REPORT["role"] = role


def _write_report(message: str) -> str | None:
    """Writes ``message`` with host, pid, rank and role to the report file; returns its path
    (None when no output directory is set or it cannot be written)."""
    if _REPORT["dir"] is None:
        return None
    path = os.path.join(_REPORT["dir"], f"error-rank-{world_rank()}.txt")
    try:
        with open(path, "w") as f:
            f.write(
                f"host: {socket.gethostname()}\npid: {os.getpid()}\nrank: {world_rank()} of "
                f"{world_size()}\nrole: {_REPORT['role'] or '-'}\n"
                f"time: {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n\n{message.rstrip()}\n"
            )
        return path
    except OSError:
        return None


def abort(message: str, code: int = 1) -> None:
    """Reports ``message`` from this rank (stderr, and the report file when the run has an
    output directory) and aborts every rank of the job with exit status ``code``.

    The message survives the abort: this rank waits :data:`ABORT_GRACE_S` seconds after
    writing it, so the launcher forwards it before it kills the job. Never returns.
    """
    message = message.rstrip("\n") + "\n"
    path = _write_report(message)
    if path is not None:
        message += f"hpcnet: rank {world_rank()}'s full report: {path}\n"
    sys.stderr.write(message)
    sys.stderr.flush()
    if world_size() > 1:
        time.sleep(ABORT_GRACE_S)
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


def root_then_bcast(fn: Callable[[], T], comm: MPI.Intracomm, root: int = 0) -> T:
    """Runs ``fn()`` on ``root`` only and broadcasts its result, or its HpcnetError,
    to every rank of ``comm`` (which then raises the same error everywhere).

    Collective over ``comm``: every rank must call it. Other exceptions on root
    propagate there (and abort the job through the except hook) - never a hang.
    """
    payload: Any = None
    if comm.Get_rank() == root:
        try:
            payload = ("ok", fn())
        except HpcnetError as e:
            payload = ("error", e)
    payload = comm.bcast(payload, root=root)
    if payload[0] == "error":
        payload[1].collective = True
        raise payload[1]
    return payload[1]


@contextmanager
def same_on_every_rank() -> Iterator[None]:
    """Marks HpcnetErrors raised inside as raised identically on every rank.

    Use it around validation that depends only on the config and world size
    and communicates nothing: then every rank can print-once-and-exit(2)
    instead of aborting the job.
    """
    try:
        yield
    except HpcnetError as e:
        e.collective = True
        raise


def exit_on_error(e: HpcnetError) -> int:
    """What a rank does with a user error: returns the exit status when the error
    was raised on every rank alike (rank 0 prints it once), else prints it from
    this rank and aborts the whole job with the error's status."""
    if getattr(e, "collective", False) or world_size() == 1:
        printer = world_rank() == getattr(e, "printer", 0)  # rank 0, unless it died
        if printer:
            sys.stderr.write(f"hpcnet: error: {e}\n")
            sys.stderr.flush()
        if isinstance(e, RankLost):  # no MPI_Finalize: it would wait on the dead rank and
            sys.stdout.flush()  # on requests the survivors still hold to each other;
            if not printer:  # the others leave once the launcher has the printer's line
                time.sleep(ABORT_GRACE_S)
            os._exit(e.exit_code)
        return e.exit_code
    abort(f"hpcnet: error (rank {world_rank()}): {e}", e.exit_code)
    return e.exit_code  # pragma: no cover - Abort does not return


def _excepthook(kind, value, tb) -> None:
    if isinstance(value, HpcnetError):
        msg = f"hpcnet: error (rank {world_rank()}): {value}\n"
        code = value.exit_code
    elif isinstance(value, StallError):  # its message says all; the traceback would not
        msg = f"hpcnet: stalled: {value}\n"
        code = value.exit_code
    else:
        msg = f"hpcnet: rank {world_rank()} failed:\n" + "".join(
            traceback.format_exception(kind, value, tb)
        )
        code = 1
    abort(msg, code)


def install_abort_hook() -> None:
    """Makes an uncaught exception on any rank abort the whole job (as ``python -m mpi4py``)."""
    sys.excepthook = _excepthook
