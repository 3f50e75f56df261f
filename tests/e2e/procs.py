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
            # this Python, by its path or (a job script's `python` found on PATH) its name
            python = argv[0] == sys.executable.encode() or Path(argv[0].decode()).name in (
                "python",
                "python3",
            )
            if not python or str(out).encode() not in argv:
                continue
            if want & set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def start_run(n: int, args: list[str], out: Path, ready, timeout: float = 180):
    """Starts ``mpiexec -n n python -m hpcnet ARGS --out OUT`` in its own session (so
    ``os.killpg`` reaches every rank) and returns the Popen once ``ready()`` is true.
    stderr is piped, stdout dropped."""
    import subprocess
    import time

    from tests.e2e.test_cli import MPIEXEC

    p = subprocess.Popen(
        [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcnet", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while not ready():
        assert p.poll() is None, "the run ended before it was stopped: " + p.stderr.read()
        assert time.monotonic() < deadline, "the run did not get there in time"
        time.sleep(0.01)
    return p
