"""What a rank tells a launcher watching it (:mod:`hpcnet.tools.launch`): its pid,
host and role, in ``rank-K.json`` in the directory the launcher names, and the exit
status it leaves with, in ``exit-PID``."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

ENV = "HPCNET_LAUNCH_DIR"  # the launcher's directory for the ranks' files
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")  # the world rank, before MPI


def note_rank(role: str | None = None) -> None:
    """Writes this process's ``rank-K.json`` for the launcher (nothing without one).

    K is the world rank from the process manager's environment (``PMI_RANK``,
    ``OMPI_COMM_WORLD_RANK``), so it can be called before MPI starts; ``role``
    (e.g. ``"replica 1"``) is added once known. Never raises: a launcher that
    cannot learn a role still prints its line.
    """
    where = os.environ.get(ENV)
    rank = next((os.environ[k] for k in RANK_ENV if k in os.environ), None)
    if not where or rank is None:
        return
    info = {"rank": int(rank), "pid": os.getpid(), "host": socket.gethostname(), "role": role}
    path = Path(where) / f"rank-{rank}.json"
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(info))
        os.replace(tmp, path)
    except OSError:
        pass


def note_exit(code: int) -> None:
    """Writes this process's exit status to ``exit-PID`` for the launcher (nothing
    without one): what it reports when it has to end an ``mpiexec`` that stayed after
    every rank had exited. Never raises."""
    where = os.environ.get(ENV)
    if not where:
        return
    try:
        (Path(where) / f"exit-{os.getpid()}").write_text(str(int(code)))
    except OSError:
        pass
