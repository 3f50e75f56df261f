"""Which MPI a job would use: the library this process loaded and the ``mpiexec`` on
PATH (``python -m hpcnet info``)."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def mpi_library_file() -> str | None:
    """The MPI shared library this process loaded (from /proc/self/maps), or None
    where that cannot be read (not Linux)."""
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                path = line.split()[-1]
                if "/libmpi" in path and ".so" in path:
                    return path
    except OSError:
        pass
    return None


def mpiexec_lines() -> list[str]:
    """``info``'s lines on which ``mpiexec`` a job started now would use, and whether it
    is this Python environment's (the ``mpich`` extra puts one in the venv's ``bin/``;
    a site MPI earlier on PATH would shadow it and start ranks of another MPI)."""
    lines = [f"mpi library file: {mpi_library_file() or 'unknown'}"]
    found = shutil.which("mpiexec")
    own = Path(sys.prefix) / "bin" / "mpiexec"
    if found is None:
        lines.append(f"mpiexec: none on PATH ({own} if the mpich extra is installed)")
    elif own.exists() and Path(found).resolve() != own.resolve():
        lines.append(
            f"mpiexec: {found} -- NOT this environment's {own}: another MPI comes first on "
            f"PATH; activate the environment (. {Path(sys.prefix)}/bin/activate) or run {own}"
        )
    else:
        where = "this environment's" if own.exists() else "from PATH; none in this environment"
        lines.append(f"mpiexec: {found} ({where})")
    return lines
