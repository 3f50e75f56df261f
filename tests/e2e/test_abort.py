"""An exception on one rank must end the whole job, not leave the others waiting."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

from tests.e2e.test_cli import MPIEXEC

SCRIPT = textwrap.dedent("""
    import sys
    from mpi4py import MPI
    from hpcnet.comm import install_abort_hook, library_comm, set_error_report
    from hpcnet.errors import DataError
    install_abort_hook()
    comm = library_comm()
    set_error_report(sys.argv[1], f"replica {{comm.rank}}")
    if comm.rank == 1:
        raise {exc}
    comm.Barrier()   # rank 0 waits here for a rank that will never come
""")


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "exc,code,must",
    [
        ("ZeroDivisionError('boom')", 1, "ZeroDivisionError: boom"),
        ("DataError('x.h5: only rank 1 saw this')", 2, "hpcnet: error (rank 1): x.h5"),
    ],
)
def test_exception_on_one_rank_aborts_every_rank(tmp_path, exc, code, must):
    script = tmp_path / "fail.py"
    script.write_text(SCRIPT.format(exc=exc))
    t = time.monotonic()
    p = subprocess.run(
        [MPIEXEC, "-n", "2", sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - t < 30
    assert p.returncode == code, p.stderr
    assert p.stderr.count(must) == 1, p.stderr
    # the full report, in the output directory, and stderr says where
    report = tmp_path / "error-rank-1.txt"
    assert f"full report: {report}" in p.stderr, p.stderr
    text = report.read_text()
    assert must in text and "role: replica 1" in text and "pid: " in text, text
    assert not (tmp_path / "error-rank-0.txt").exists()
