"""Downpour checkpoints, resume and preemption as a user meets them.

Asynchronous SGD is not reproducible, so what a resumed run must keep is the
shards' state: every push is applied exactly once per shard across the restart
(pushes applied per client == the pushes its whole step budget makes, though the
shards' cuts differ), and the training loss goes on from where it was, not from
the start."""

from __future__ import annotations

import json
import math
import os
import signal
from pathlib import Path

import h5py
import pytest

from tests.e2e.procs import rank_pid, start_run
from tests.e2e.test_cli import MPIEXEC, hpcnet

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")

EPOCHS = 4
# the digits: 1,437 training rows over 2 replicas at batch 8 = 89 steps per epoch each
STEPS = 89 * EPOCHS
# steps per replica after which the window loss is well below the first window's
MIN_STEP = 100


def _args(n_push: int) -> list[str]:
    return [
        "train", "--algo", "downpour", "--batch-size", "8", "--epochs", str(EPOCHS),
        "--threads", "1", "--log-every", "10", "--checkpoint-every", "20",
        "--n-push", str(n_push), "--replicas", "2", "--keep-checkpoints", "3",
    ]  # fmt: skip


def _start(n: int, args: list[str], out: Path, checkpoints: int, min_step: int = 0):
    """Starts the run and returns once ``checkpoints`` intermediate ones are on disk,
    the newest at step ``min_step`` or later."""

    def ready() -> bool:
        return len(list(out.glob("checkpoint-*.h5"))) >= checkpoints and (
            min_step == 0 or _newest_step(out) >= min_step
        )

    return start_run(n, args, out, ready)


def _newest_step(out: Path) -> int:
    """The step of OUT/checkpoint.h5 (renamed into place whole), or -1 while it is absent."""
    try:
        with h5py.File(out / "checkpoint.h5", "r") as f:
            return int(f.attrs["step"])
    except (OSError, KeyError):
        return -1


def _checkpoint(out: Path, shards: int) -> tuple[int, list[list[int]]]:
    """The newest checkpoint's step and each shard's ACK per client."""
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert not f.attrs["final"]
        acks = [json.loads(f[f"ranks/{r}"].attrs["state"])["acks"] for r in range(shards)]
        return int(f.attrs["step"]), acks


def _first_loss_after(out: Path, event: str | None) -> float:
    """The loss of the first progress record (after the ``event`` record, if given)."""
    seen = event is None
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if event is not None and rec.get("event") == event:
            seen = True
        elif seen and "event" not in rec and "loss" in rec:
            return rec["loss"]
    raise AssertionError(f"no progress record after {event}")


def _assert_every_push_once(out: Path, n_push: int, clients: int = 2) -> None:
    summary = json.loads((out / "summary.json").read_text())
    pushes = math.ceil(STEPS / n_push)  # per client: the last one may hold fewer steps
    for shard in summary["shards"]:
        assert shard["pushes_applied"] == [pushes] * clients, shard["pushes_applied"]
    assert summary["steps"] == 2 * STEPS and summary["test_accuracy"] > 0.85, summary


@pytest.mark.timeout(600)
@pytest.mark.parametrize("shards, n_push, partitions", [(1, 1, 1), (2, 3, 1), (1, 1, 2)])
def test_killed_and_resumed_applies_every_push_once_and_loss_goes_on(
    tmp_path, shards, n_push, partitions
):
    n = shards + 2 * partitions  # 2 replicas of M partitions (a client each)
    out = tmp_path / "run"
    args = [*_args(n_push), "--shards", str(shards), "--partitions", str(partitions)]
    # the first ~50 steps of asynchronous Adagrad are noisy (window losses 1.2-3.1 on the
    # digits): kill once the shards are well past them, so the loss test below has margin
    p = _start(n, args, out, checkpoints=2, min_step=MIN_STEP)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    at, acks = _checkpoint(out, shards)
    assert MIN_STEP <= at < STEPS
    code, stdout, stderr, _ = hpcnet(*args, "--resume", str(out), n=n, timeout=300)
    assert code == 0, stderr
    assert "test accuracy" in stdout
    # every push of the whole budget applied once per shard, across the restart
    _assert_every_push_once(out, n_push, clients=2 * partitions)
    # the loss goes on from where the shards were (a fresh start would be back near ln 10)
    fresh, resumed = _first_loss_after(out, None), _first_loss_after(out, "resume")
    assert resumed < 0.6 * fresh, (fresh, resumed)


@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    "shards, rank, signum",
    [(1, 2, signal.SIGUSR1), (2, 1, signal.SIGTERM)],
    ids=["usr1-to-a-replica", "term-to-shard-1"],
)
def test_a_signal_to_one_rank_stops_every_rank_checkpointed(tmp_path, shards, rank, signum):
    n = shards + 2
    out = tmp_path / "run"
    args = [*_args(1), "--shards", str(shards)]
    p = _start(n, args, out, checkpoints=1)
    pid = rank_pid(out, rank)
    assert pid is not None
    os.kill(pid, signum)  # one rank only: the others must learn it and stop too
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signum, stderr
    at, _ = _checkpoint(out, shards)
    name = signal.Signals(signum).name
    assert f"stopped by {name} after step {at}" in stderr and "--resume" in stderr, stderr
    assert 20 <= at < STEPS
    code, _, stderr, _ = hpcnet(*args, "--resume", str(out), n=n, timeout=300)
    assert code == 0, stderr
    _assert_every_push_once(out, 1)


@pytest.mark.timeout(600)
def test_resume_with_another_replica_count_restarts_every_replica_at_the_epoch(tmp_path):
    # 2 replicas checkpointed, 3 resume: the shards' state carries on, every replica
    # restarts at the checkpoint's position in epochs with fresh push counters
    out = tmp_path / "run"
    args = [a for a in _args(1) if a not in ("--replicas", "2")] + ["--shards", "1"]
    p = _start(3, args, out, checkpoints=2)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    with h5py.File(out / "checkpoint.h5", "r") as f:
        epoch = float(f.attrs["epoch"])
    code, stdout, stderr, _ = hpcnet(*args, "--resume", str(out), n=4, timeout=300)
    assert code == 0, stderr
    assert "resuming 2 replicas' checkpoint with 3" in stdout, stdout
    summary = json.loads((out / "summary.json").read_text())
    spe = 1437 // (3 * 8)  # steps per epoch of each of 3 replicas
    restart = round(epoch * spe)
    assert summary["shards"][0]["pushes_applied"] == [spe * EPOCHS - restart] * 3
    assert summary["test_accuracy"] > 0.85
