"""The Slurm job scripts in jobs/: valid bash, and each one's run checked with
``--dry-run`` (config, data, layout for the world size) as srun would start it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_cli import MPIEXEC

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.sbatch"))


def test_there_is_a_job_script_per_algorithm():
    names = {p.stem for p in JOBS}
    assert {"sync", "avg", "downpour", "sandblaster", "modelpar", "search"} <= names
    for p in JOBS:
        text = p.read_text()
        assert "#SBATCH --job-name=" in text, p.name
        assert ("hpcnet_search" if p.stem == "search" else "hpcnet_job") in text, p.name


@pytest.mark.parametrize("script", [*JOBS, ROOT / "jobs" / "hpcnet-job.sh"], ids=lambda p: p.name)
def test_job_scripts_are_valid_bash(script):
    p = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("script", JOBS, ids=lambda p: p.name)
def test_job_scripts_dry_run_as_srun_would_start_them(tmp_path, script):
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_NTASKS="4",
        SLURM_CPUS_PER_TASK="1",
        OUT=str(tmp_path / "out"),
        HPCNET_LAUNCH=f"{MPIEXEC} -n 4",
        HPCNET_EXTRA="--dry-run --data digits",  # the shipped data: no download here
    )
    p = subprocess.run(
        ["bash", str(script)], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "dry run: nothing trained" in p.stdout and "4 ranks" in p.stdout, p.stdout
    assert not (tmp_path / "out").exists()  # a dry run writes nothing


# The workloads that checkpoint and stop on SIGUSR1/SIGTERM (exit 128 + signal) and go
# on from there when started again: every training job (hpcnet_job resumes OUT) and the
# search (hpcnet_search adds --resume; hpcnet.search.preemption).
SIGNAL_SAFE = [
    p for p in JOBS if "hpcnet_job " in p.read_text() or "hpcnet_search " in p.read_text()
]


def test_every_job_whose_workload_stops_on_a_signal_asks_for_it_and_is_requeued():
    # without --signal, Slurm kills the job at its time limit with only its last periodic
    # checkpoint; without --requeue, `scontrol requeue` (hpcnet-job.sh) is refused
    want = {"sync", "avg", "downpour", "sandblaster", "modelpar", "search"}
    assert {p.stem for p in SIGNAL_SAFE} >= want
    for p in SIGNAL_SAFE:
        words = [line.split()[1] for line in p.read_text().splitlines()
                 if line.startswith("#SBATCH ") and len(line.split()) > 1]  # fmt: skip
        flags = {w.split("=")[0] for w in words}
        assert "--signal" in flags and "--requeue" in flags, (p.name, sorted(flags))
        value = next(w for w in words if w.startswith("--signal=")).split("=", 1)[1]
        sig, _, lead = value.removeprefix("B:").partition("@")
        assert sig in ("USR1", "TERM") and int(lead) >= 30, (p.name, value)


def _metrics_lines(out: Path, search: bool) -> int:
    files = list(out.glob("trials/*/metrics.jsonl")) if search else [out / "metrics.jsonl"]
    return max((f.read_text().count("\n") for f in files if f.exists()), default=0)


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(600)
@pytest.mark.parametrize("script", SIGNAL_SAFE, ids=lambda p: p.name)
def test_a_job_sent_sigusr1_exits_138_and_its_requeue_runs_to_the_end(tmp_path, script):
    import signal
    import time

    from tests.e2e.procs import rank_pid

    search = script.stem == "search"
    out = tmp_path / "out"
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        SLURM_SUBMIT_DIR=str(ROOT),
        SLURM_CPUS_PER_TASK="1",
        OUT=str(out),
        HPCNET_DATA=str(tmp_path),
        HPCNET_LAUNCH=f"{MPIEXEC} -n 4",
        # the shipped data, a few epochs (sandblaster: its own 30 passes of L-BFGS, about
        # as long); the script's own algorithm flags stay
        HPCNET_EXTRA="--data digits --log-every 1"
        + ("" if script.stem == "sandblaster" else " --epochs 3"),
    )
    p = subprocess.Popen(["bash", str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, env=env, cwd=tmp_path, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while _metrics_lines(out, search) < 3:  # a few steps in (a progress line a step)
        assert p.poll() is None, "the job ended before it was signalled: " + p.stderr.read()
        assert time.monotonic() < deadline, "the job did not start training in time"
        time.sleep(0.05)
    # Slurm's --signal=USR1@120 signals every task of the job step: every rank here
    for pid in [rank_pid(out, r) for r in range(4)]:
        if pid is not None:
            os.kill(pid, signal.SIGUSR1)
    stdout, stderr = p.communicate(timeout=300)
    assert p.returncode == 138, stdout + stderr
    assert "hpcnet-job: stopped by a signal, checkpointed" in stderr, stderr
    if search:
        assert "search stopped by SIGUSR1" in stderr and (out / "search.json").exists(), stderr
        assert not (out / "results.csv").exists()
        import h5py

        stopped = {}  # trial dir -> the step its checkpoint holds
        for d in out.glob("trials/*"):
            if (d / "checkpoint.h5").exists():
                with h5py.File(d / "checkpoint.h5", "r") as f:
                    stopped[d] = int(f.attrs["step"])
        assert stopped and max(stopped.values()) >= 2, stopped
    else:
        assert "stopped by SIGUSR1" in stderr and (out / "checkpoint.h5").exists(), stderr
        assert not (out / "summary.json").exists()
    # the requeued job: the same script again finds OUT and goes on to the end
    again = subprocess.run(["bash", str(script)], capture_output=True, text=True, env=env,
                           cwd=tmp_path, timeout=400)  # fmt: skip
    assert again.returncode == 0, again.stdout + again.stderr
    if search:
        lines = (out / "trials.jsonl").read_text().splitlines()
        records = [json.loads(line) for line in lines]
        assert sorted(r["id"] for r in records) == [0, 1, 2, 3]  # each trial once
        assert all(r["status"] == "completed" for r in records), records
        assert (out / "results.csv").exists()
        for d in stopped:  # went on from its checkpoint: no step counted from 1 again
            steps = [json.loads(line)["step"] for line in (d / "metrics.jsonl").open()]
            assert steps == sorted(steps), (d.name, stopped[d], steps)
    else:  # the run's end: its final checkpoint and summary
        import h5py

        with h5py.File(out / "checkpoint.h5", "r") as f:
            assert bool(f.attrs["final"]), dict(f.attrs)
        assert "test_accuracy" in json.loads((out / "summary.json").read_text())
