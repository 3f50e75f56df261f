"""MPI tests run under ``mpiexec -n N python -m pytest --with-mpi tests/mpi``."""

import pytest
from mpi4py import MPI


@pytest.fixture
def comm():
    """A duplicate of COMM_WORLD per test, so tests cannot cross-talk."""
    c = MPI.COMM_WORLD.Dup()
    yield c
    c.Free()


@pytest.fixture
def shared_tmp(comm, tmp_path_factory):
    """One temporary directory, made by rank 0 and shared by every rank."""
    path = tmp_path_factory.mktemp("shared") if comm.rank == 0 else None
    return comm.bcast(path, root=0)
