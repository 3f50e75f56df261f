"""``python -m hpcnet launch``: a rank killed by a signal ends the job with one line.

The kill is real: SIGKILL of one rank's process, found from the rank file the
launcher's ranks write (``HPCNET_LAUNCH_DIR``, inside ``TMPDIR``). The test fails
without the launcher's filter: MPICH's hydra prints its BAD TERMINATION banner,
whose PID is rank 0's whatever rank died (checked by hand: 4 ranks, rank 2 killed,
banner PID = rank 0's)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hpcnet.tools.launch import _Filter
from tests.e2e.test_cli import MPIEXEC

HYDRA_BANNER = """
===================================================================================
=   BAD TERMINATION OF ONE OF YOUR APPLICATION PROCESSES
=   PID 18239 RUNNING AT vm
=   EXIT CODE: 9
=   CLEANING UP REMAINING PROCESSES
=   YOU CAN IGNORE THE BELOW CLEANUP MESSAGES
===================================================================================
YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)
This typically refers to a problem with your application.
Please see the FAQ page for debugging suggestions
"""

OMPI_NOTICE = """--------------------------------------------------------------------------
prterun noticed that process rank 2 with PID 18331 on node vm exited on
signal 9 (Killed).
--------------------------------------------------------------------------
"""


def _filtered(text: str) -> tuple[str, list[str]]:
    out = io.StringIO()
    f = _Filter(out)
    for line in io.StringIO(text):
        f.feed(line)
    f.pump(io.BytesIO(b""))  # the end of the stream flushes what waited
    return out.getvalue(), f.held


def test_filter_holds_the_notices_and_passes_everything_else():
    ordinary = (
        "epoch 1 step 2/3 loss 0.5\n\n"
        "=" * 30 + "\n| trial | metric |\n" + "-" * 30 + "\n| 1 | 0.9 |\n\n" + "-" * 30 + "\n"
    )
    shown, held = _filtered(ordinary + HYDRA_BANNER + "after\n")
    assert shown == ordinary + "after\n"
    assert held[1].startswith("=   BAD TERMINATION") and held[-1].startswith("Please see")
    shown, held = _filtered("a\n" + OMPI_NOTICE + "b\n")
    assert shown == "a\nb\n" and "process rank 2 with PID 18331" in "\n".join(held)


def _wait_for(folder: Path, pattern: str, role: str, p, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert p.poll() is None, "the job ended before the kill: " + p.stderr.read()
        for f in folder.glob(pattern):
            try:
                info = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if info.get("role") == role:
                return info
        time.sleep(0.05)
    raise AssertionError(f"no rank file with role {role!r}")


def launch_and_kill(tmp_path: Path, launch: list[str], rank: int, role: str):
    """Runs ``python -m hpcnet launch LAUNCH train`` (a long Downpour run, 1 shard), kills
    world rank ``rank`` (whose role is ``role``) with SIGKILL once training is under way;
    returns (its rank file, exit status, stdout, stderr)."""
    out = tmp_path / "run"
    args = ["--algo", "downpour", "--shards", "1", "--epochs", "2000", "--out", str(out)]
    env = dict(os.environ, TMPDIR=str(tmp_path))
    env.update(OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    p = subprocess.Popen(
        [sys.executable, "-m", "hpcnet", "launch", *launch, "train", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        info = _wait_for(tmp_path, f"hpcnet-launch-*/rank-{rank}.json", role, p)
        deadline = time.monotonic() + 120  # training under way: a progress record
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").stat().st_size:
            assert time.monotonic() < deadline, "no progress record"
            time.sleep(0.05)
        os.kill(info["pid"], 9)
        stdout, stderr = p.communicate(timeout=120)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, 9)
    return info, p.returncode, stdout, stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.parametrize("rank,role", [(2, "replica 1"), (0, "shard 0")])
def test_a_killed_rank_ends_the_job_with_one_line_naming_it(tmp_path, rank, role):
    info, rc, stdout, stderr = launch_and_kill(tmp_path, ["-n", "4"], rank, role)
    assert rc == 3, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines == [lines[-1]], stderr  # one line, nothing else on stderr
    assert lines[-1].startswith(f"hpcnet: rank {rank} ({role}; pid {info['pid']} on "), stderr
    assert "signal 9 (SIGKILL); MPICH ended the whole job" in lines[-1]
    assert "--with-ft ulfm" in lines[-1]
    assert "BAD TERMINATION" not in stdout + stderr and "epoch" in stdout


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
def test_launch_passes_bad_input_and_its_status_through(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "hpcnet", "launch", "-n", "2", "train", "--epochs", "-1"],
        capture_output=True,
        text=True,
        timeout=120,
        env=dict(os.environ, TMPDIR=str(tmp_path)),
    )
    assert r.returncode == 2
    assert r.stderr.strip() == "hpcnet: error: --epochs -1: must be >= 1"
    r = subprocess.run(
        [sys.executable, "-m", "hpcnet", "launch", "-n", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "-n 0" in r.stderr


@pytest.mark.parametrize("code", [0, 2])
def test_an_mpiexec_that_stays_after_every_rank_exited_is_ended(tmp_path, monkeypatch, capfd, code):
    # a stand-in for Open MPI's prterun when it stays (openpmix/prrte#1839): it starts
    # one real rank (python -m hpcnet, which notes its pid and exit status as any rank
    # does), then never exits. The launcher must end it and report the rank's status.
    from hpcnet.tools import launch

    stays = tmp_path / "mpiexec-that-stays"
    stays.write_text('#!/bin/sh\nshift 2\nPMI_RANK=0 "$@"\nexec sleep 600\n')
    stays.chmod(0o755)
    monkeypatch.setattr(launch, "LINGER_S", 1.0)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    args = ["info"] if code == 0 else ["train", "--epochs", "-1"]
    t0 = time.monotonic()
    rc = launch.main(["-n", "1", "--mpiexec", str(stays), *args])
    assert rc == code
    assert time.monotonic() - t0 < 60  # not the stand-in's 600 s
    line = "every rank has exited but mpiexec-that-stays (pid "
    assert line in capfd.readouterr().err
