"""Helpers shared by the MPI tests."""

from mpi4py import MPI


def first_ranks(comm: MPI.Intracomm, n: int) -> MPI.Intracomm | None:
    """A communicator of the first ``n`` ranks of ``comm``, in order; None on the
    others (which sit the test out). Collective over ``comm``; free it after use."""
    sub = comm.Split(0 if comm.rank < n else MPI.UNDEFINED, comm.rank)
    return None if sub == MPI.COMM_NULL else sub
