"""The library communicator and the job-wide error policy.

This package is the only code that touches raw MPI. hpcnet never
communicates on ``COMM_WORLD`` itself: :func:`library_comm` is a ``Dup`` of it,
so a user's own messages cannot match ours.

Error policy (shared/DESIGN.md, "Faults and bad input"):

* a user error found identically on every rank (bad flag, layout, data file
  checked by rank 0 and broadcast) -> rank 0 prints one line, every rank
  exits with status 2, no MPI_Abort;
* a user error found on one rank only, or any other exception -> that rank
  prints it and calls ``Abort`` on COMM_WORLD, so no rank is left waiting.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from mpi4py import MPI

from hpcnet.errors import HpcnetError

T = TypeVar("T")
_LIBRARY_COMM = None


def library_comm() -> MPI.Intracomm:
    """hpcnet's duplicate of COMM_WORLD (created on first call: collective over
    COMM_WORLD, so every rank must call it the first time, in the same order)."""
    global _LIBRARY_COMM
    if _LIBRARY_COMM is None:
        _LIBRARY_COMM = MPI.COMM_WORLD.Dup()
    return _LIBRARY_COMM


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


def abort(message: str, code: int = 1) -> None:
    """Prints ``message`` from this rank and aborts every rank of the job."""
    sys.stderr.write(message.rstrip("\n") + "\n")
    sys.stderr.flush()
    MPI.COMM_WORLD.Abort(code)


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
        if world_rank() == 0:
            sys.stderr.write(f"hpcnet: error: {e}\n")
            sys.stderr.flush()
        return e.exit_code
    abort(f"hpcnet: error (rank {world_rank()}): {e}", e.exit_code)
    return e.exit_code  # pragma: no cover - Abort does not return


def _excepthook(kind, value, tb) -> None:
    if isinstance(value, HpcnetError):
        msg = f"hpcnet: error (rank {world_rank()}): {value}\n"
        code = value.exit_code
    else:
        msg = f"hpcnet: rank {world_rank()} failed:\n" + "".join(
            traceback.format_exception(kind, value, tb)
        )
        code = 1
    sys.stderr.write(msg)
    sys.stderr.flush()
    if world_size() > 1:
        MPI.COMM_WORLD.Abort(code)
    os._exit(code)


def install_abort_hook() -> None:
    """Makes an uncaught exception on any rank abort the whole job (as ``python -m mpi4py``)."""
    sys.excepthook = _excepthook


class Backoff:
    """Sleeps between polls, doubling from ``first`` to ``cap`` seconds, so a waiting
    rank does not spin-burn a core on an oversubscribed node. ``reset()`` after
    progress."""

    def __init__(self, first: float = 20e-6, cap: float = 2e-3):
        self.first, self.cap = first, cap
        self.delay = first

    def reset(self) -> None:
        self.delay = self.first

    def sleep(self) -> None:
        import time

        time.sleep(self.delay)
        self.delay = min(self.delay * 2, self.cap)


def wait_polling(
    request: MPI.Request,
    timeout: float,
    what: str,
    on_poll: Callable[[], None] | None = None,
    cap: float = 10e-3,
) -> None:
    """Completes a nonblocking ``request`` by testing it with sleeps in between
    (no busy spin; the sleeps double from 20 us to ``cap`` seconds), or raises after
    ``timeout`` seconds.

    Raises:
        TimeoutError: ``what`` did not complete within ``timeout`` seconds (the
            except hook then aborts the job: a hang becomes an error).
    """
    import time

    deadline = time.monotonic() + timeout
    backoff = Backoff(cap=cap)
    while not request.Test():
        if time.monotonic() > deadline:
            raise TimeoutError(f"rank {world_rank()}: {what} did not complete in {timeout:.0f} s")
        if on_poll is not None:
            on_poll()
        backoff.sleep()


def barrier_polling(
    comm: MPI.Intracomm, timeout: float, what: str, on_poll: Callable[[], None] | None = None
) -> None:
    """A barrier over ``comm`` that sleeps while it waits and times out (see
    :func:`wait_polling`); ``on_poll`` runs between tests (e.g. to drain stale
    messages). Collective over ``comm``."""
    wait_polling(comm.Ibarrier(), timeout, what, on_poll)
