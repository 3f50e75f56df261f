"""Sandblaster checkpoints, resume and preemption as a user meets them.

A checkpoint is taken between two L-BFGS iterations: the shards' x, g and history
and the coordinator's scalars. The units' gradients reach the shards in arrival
order, so a resumed run is not bit for bit the uninterrupted one; what it must keep
is the optimisation: the loss history continues where the checkpoint left it,
never rises (every accepted step passes the Armijo test), and ends where the
uninterrupted run ends, as it would not with the history forgotten."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import h5py
import pytest

from tests.e2e.procs import rank_pid, start_run
from tests.e2e.test_cli import MPIEXEC, hpcnet

pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")

N = 4  # the coordinator, 1 shard, 2 replicas
ARGS = [
    "train", "--algo", "sandblaster", "--shards", "1", "--epochs", "30", "--threads", "1",
    "--checkpoint-every", "5", "--keep-checkpoints", "10",
]  # fmt: skip


def _losses(out: Path) -> list[float]:
    return json.loads((out / "summary.json").read_text())["loss_history"]


def _checkpointed_losses(out: Path) -> tuple[int, list[float]]:
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert not f.attrs["final"]
        state = json.loads(f["ranks/0"].attrs["state"])
        return int(f.attrs["step"]), state["loss_history"]


def _assert_goes_on(out: Path, whole: list[float], at: int, before: list[float]) -> None:
    losses = _losses(out)
    assert losses[: len(before)] == before  # the history up to the checkpoint, kept
    assert len(before) == at + 1 and len(losses) > len(before)
    assert all(b <= a for a, b in zip(losses, losses[1:], strict=False)), losses
    # the end of the uninterrupted run, up to the units' summation order, which L-BFGS
    # amplifies: ten local resumes ended within 0.5 % of it, one CI run 7 % below it
    # (0.0401 vs 0.0432: a line search took another branch); the history forgotten,
    # it ended 74 % higher, which this bound still refuses
    assert abs(losses[-1] - whole[-1]) <= 0.25 * whole[-1], (losses[-1], whole[-1])


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> list[float]:
    """The loss history of the uninterrupted run."""
    out = tmp_path_factory.mktemp("sandblaster") / "whole"
    code, _, stderr, _ = hpcnet(*ARGS, "--out", str(out), n=N, timeout=300)
    assert code == 0, stderr
    return _losses(out)


@pytest.mark.timeout(600)
def test_killed_and_resumed_goes_on_from_the_checkpoint(tmp_path, whole):
    out = tmp_path / "run"
    p = start_run(N, ARGS, out, lambda: (out / "checkpoint-000000005.h5").exists())
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    at, before = _checkpointed_losses(out)
    code, _, stderr, _ = hpcnet(*ARGS, "--resume", str(out), n=N, timeout=300)
    assert code == 0, stderr
    _assert_goes_on(out, whole, at, before)


@pytest.mark.timeout(600)
def test_a_signal_to_a_replica_stops_every_rank_checkpointed(tmp_path, whole):
    out = tmp_path / "run"
    p = start_run(N, ARGS, out, lambda: (out / "checkpoint.h5").exists())
    pid = rank_pid(out, N - 1)
    assert pid is not None
    os.kill(pid, signal.SIGUSR1)  # a replica: it tells the coordinator, who stops all
    _, stderr = p.communicate(timeout=120)
    assert p.returncode == 128 + signal.SIGUSR1, stderr
    at, before = _checkpointed_losses(out)
    assert f"stopped by SIGUSR1 after step {at}" in stderr, stderr
    code, _, stderr, _ = hpcnet(*ARGS, "--resume", str(out), n=N, timeout=300)
    assert code == 0, stderr
    _assert_goes_on(out, whole, at, before)
