"""Collectives on flat float32 buffers (buffer API: no pickling, no copies), and on
small objects.

Every one is bounded: it starts the nonblocking form (``Iallreduce``, ``Ibcast``,
``Iallgatherv``; an ``Ibarrier`` before a pickled object collective, which then
finds every rank there) and completes it with
:func:`hpcnet.comm.waits.wait_polling`: a short spin inside MPI (MPICH moves a large
message only while a rank is in MPI), then sleeps, and a
:class:`~hpcnet.errors.StallError` naming the missing ranks after the watchdog's
``--timeout``. ``what`` names the operation in that report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.comm.waits import wait_polling
from hpcnet.layout import Layout, Role

# Seconds a collective's wait tests in a tight loop (yielding the core) before it sleeps:
# a step's collective usually completes within it; a stalled one then costs no CPU.
SPIN_S = 0.05


def _complete(request: MPI.Request, comm: MPI.Comm, what: str) -> None:
    wait_polling(request, None, what, cap=5e-3, spin=SPIN_S, comm=comm)


def _arrive(comm: MPI.Comm, what: str) -> None:
    """Every rank of ``comm`` has reached this point (a bounded ``Ibarrier``)."""
    if comm.Get_size() > 1:
        _complete(comm.Ibarrier(), comm, what)


@dataclass
class RoleComms:
    """The sub-communicators one rank takes part in (docs/design.md, "Roles").

    Attributes:
        world: the library communicator (all ranks).
        role: this rank's role.
        data_comm: the same partition index across all replicas (allreduce runs
            here); None on non-replica ranks.
        replica_comm: the partitions of this rank's replica; None on non-replica ranks.
    """

    world: MPI.Intracomm
    role: Role
    data_comm: MPI.Intracomm | None
    replica_comm: MPI.Intracomm | None

    def free(self) -> None:
        for c in (self.data_comm, self.replica_comm):
            if c is not None and c != MPI.COMM_NULL:
                c.Free()


def split_role_comms(layout: Layout, comm: MPI.Intracomm) -> RoleComms:
    """Builds the sub-communicators of ``layout`` with ``Comm.Split``.

    Collective over ``comm``: every rank of it must call, with the same layout.
    """
    role = layout.role(comm.Get_rank())
    is_rep = role.kind == "replica"
    color = role.partition if is_rep else MPI.UNDEFINED
    data = comm.Split(color, key=role.index if is_rep else 0)
    color = role.index if is_rep else MPI.UNDEFINED
    rep = comm.Split(color, key=role.partition if is_rep else 0)
    if is_rep:  # named in stall reports
        data.Set_name(f"data_comm (partition {role.partition} of every replica)")
        rep.Set_name(f"replica_comm (replica {role.index})")
    return RoleComms(
        comm, role, data if data != MPI.COMM_NULL else None, rep if rep != MPI.COMM_NULL else None
    )


def allreduce_mean_(
    buf: np.ndarray, comm: MPI.Intracomm, what: str = "allreduce of the gradients"
) -> np.ndarray:
    """In-place average of ``buf`` (any shape, float32, C-contiguous) over ``comm``.

    One ``Allreduce(SUM)`` then a scale by 1/size. Collective: every rank of
    ``comm`` must call it with a buffer of the same length and dtype.
    """
    size = comm.Get_size()
    if size > 1:
        _complete(comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.SUM), comm, what)
        buf *= buf.dtype.type(1.0 / size)
    return buf


def allreduce_sum(
    values: np.ndarray, comm: MPI.Intracomm, what: str = "allreduce of the statistics"
) -> np.ndarray:
    """Sum of a small float64 vector over ``comm`` (e.g. loss sums, counts); a new array.

    Collective over ``comm``, same length everywhere.
    """
    out = np.array(values, dtype=np.float64)
    if comm.Get_size() > 1:
        _complete(comm.Iallreduce(MPI.IN_PLACE, out, op=MPI.SUM), comm, what)
    return out


def allgather_ranges(
    mine: np.ndarray,
    owners: list[int],
    ranges: list[tuple[int, int]],
    out: np.ndarray,
    comm: MPI.Intracomm,
) -> np.ndarray:
    """Assembles ``out`` ((n,) float32) from slices held by some ranks: rank
    ``owners[i]`` holds ``out[lo:hi]`` for ``ranges[i] = (lo, hi)`` and passes it as
    ``mine`` (other ranks pass an empty array). Afterwards every rank holds all of
    ``out`` (e.g. the parameter shards' slices at the end of a run). One
    ``Allgatherv``; collective over ``comm``.
    """
    counts, displs = [0] * comm.Get_size(), [0] * comm.Get_size()
    for owner, (lo, hi) in zip(owners, ranges, strict=True):
        counts[owner], displs[owner] = hi - lo, lo
    send = np.ascontiguousarray(mine, np.float32)
    req = comm.Iallgatherv(send, [out, counts, displs, MPI.FLOAT])
    _complete(req, comm, "allgather of the parameter slices")
    return out


def bcast_(
    buf: np.ndarray, comm: MPI.Intracomm, root: int = 0, what: str = "broadcast of the parameters"
) -> np.ndarray:
    """Broadcasts ``buf`` in place from ``root`` (buffer API). Collective over ``comm``."""
    if comm.Get_size() > 1:
        _complete(comm.Ibcast(buf, root=root), comm, what)
    return buf


def gather_objects(
    obj: Any, comm: MPI.Intracomm, root: int = 0, what: str = "gather of the results"
) -> list[Any] | None:
    """Small picklable ``obj`` of every rank, in rank order, on ``root`` (None
    elsewhere): results and statistics, never arrays of parameters. Collective over
    ``comm``."""
    _arrive(comm, what)
    return comm.gather(obj, root=root)


def allgather_objects(
    obj: Any, comm: MPI.Intracomm, what: str = "allgather of the results"
) -> list[Any]:
    """Small picklable ``obj`` of every rank, in rank order, on every rank. Collective."""
    _arrive(comm, what)
    return comm.allgather(obj)


def bcast_object(
    obj: Any, comm: MPI.Intracomm, root: int = 0, what: str = "broadcast of the results"
) -> Any:
    """``root``'s small picklable ``obj`` on every rank. Collective over ``comm``."""
    _arrive(comm, what)
    return comm.bcast(obj, root=root)


def allreduce_max_ints(
    values: list[int], comm: MPI.Intracomm, what: str = "allreduce (max)"
) -> list[int]:
    """The largest of each of ``values`` over ``comm`` (e.g. any rank's stop request, a
    flag only rank 0 raises). Collective: every rank, the same number of values."""
    buf = np.array(values, np.int64)
    if comm.Get_size() > 1:
        _complete(comm.Iallreduce(MPI.IN_PLACE, buf, op=MPI.MAX), comm, what)
    return [int(v) for v in buf]
