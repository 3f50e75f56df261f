"""The Slurm job scripts in jobs/: valid bash, and each one's run checked with
``--dry-run`` (config, data, layout for the world size) as srun would start it."""

from __future__ import annotations

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
