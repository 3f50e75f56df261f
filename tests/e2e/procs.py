"""Finding the processes of a running job, to signal, stop or kill one of its ranks."""

from __future__ import annotations

import sys
from pathlib import Path


def rank_pid(out: Path, rank: int) -> int | None:
    """The pid of world rank ``rank`` of the run writing ``out`` (from its environment:
    MPICH's PMI_RANK, Open MPI's OMPI_COMM_WORLD_RANK); None while it is not running."""
    want = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0] != sys.executable.encode() or str(out).encode() not in argv:
                continue
            if want & set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None
