"""The watchdog with a real stall: one rank's process stopped with SIGSTOP in a running
job. The others must name the stopped rank (from its stale heartbeat) within
``--timeout`` + a few seconds, sleep rather than spin while they wait, and end the
job with exit status 124."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.procs import rank_pid
from tests.e2e.test_cli import MPIEXEC

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")

TIMEOUT_S = 6  # --timeout of the runs below
# long enough never to finish before the stall (the job is stopped long before)
LONG_RUN = ["--data", "digits", "--model", "mlp", "--epochs", "100000", "--threads", "1"]


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _training(out: Path) -> bool:
    """Whether the run has written a progress record (it is past its start-up)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return False
    return any("step" in json.loads(line) and "event" not in line for line in lines[:-1] or [])


def _stall(n: int, args: list[str], out: Path, stop_rank: int, watch_rank: int):
    """Runs ``n`` ranks, SIGSTOPs ``stop_rank`` once training is under way, and returns
    (exit status, stderr, seconds from the stop to the end, CPU share of ``watch_rank``
    in the 2 s after the stop)."""
    p = subprocess.Popen(
        [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcnet", "train", *args]
        + ["--timeout", str(TIMEOUT_S), "--log-every", "5", "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    stopped = None
    try:
        deadline = time.monotonic() + 180
        while not _training(out):
            assert p.poll() is None, "the run ended before it was stopped"
            assert time.monotonic() < deadline, "the run did not start training"
            time.sleep(0.05)
        stopped, watched = rank_pid(out, stop_rank), rank_pid(out, watch_rank)
        assert stopped and watched
        os.kill(stopped, signal.SIGSTOP)
        t_stop = time.monotonic()
        cpu0 = _cpu_s(watched)
        time.sleep(2.0)
        cpu_share = (_cpu_s(watched) - cpu0) / (time.monotonic() - t_stop)
        _, err = p.communicate(timeout=TIMEOUT_S + 60)
        return p.returncode, err, time.monotonic() - t_stop, cpu_share
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        if stopped is not None:
            try:
                os.kill(stopped, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_sigstop_in_sync_names_the_stopped_rank(tmp_path):
    rc, err, after, cpu_share = _stall(2, LONG_RUN, tmp_path / "run", stop_rank=1, watch_rank=0)
    assert rc == 124, err
    assert "allreduce" in err and "did not complete" in err, err
    assert "rank 1 (replica 1" in err and "probably stalled" in err, err
    assert after < TIMEOUT_S + 20, f"the job ended {after:.0f} s after the stop"
    # the waiting rank sleeps: a spinning wait would use a whole core (share ~1.0)
    assert cpu_share < 0.5, f"the waiting rank used {cpu_share:.0%} of a core"


def test_sigstop_of_a_downpour_shard_names_it(tmp_path):
    args = [*LONG_RUN, "--algo", "downpour"]
    rc, err, after, cpu_share = _stall(3, args, tmp_path / "run", stop_rank=0, watch_rank=1)
    assert rc == 124, err
    assert "push to shard 0" in err or "fetch" in err, err
    assert "rank 0 (shard 0" in err and "probably stalled" in err, err
    assert after < TIMEOUT_S + 20, f"the job ended {after:.0f} s after the stop"
    assert cpu_share < 0.5, f"the waiting replica used {cpu_share:.0%} of a core"
