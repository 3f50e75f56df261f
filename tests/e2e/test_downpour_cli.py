"""Downpour from the command line: a lost replica is reported and the run ends."""

import json

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_downpour_with_a_failed_replica_finishes_and_says_so(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr, _ = hpcnet(
        "train",
        "--algo",
        "downpour",
        "--shards",
        "1",
        "--epochs",
        "3",
        "--threads",
        "1",
        "--fail-replica",
        "1",
        "--fail-at-step",
        "5",
        "--replica-timeout",
        "3",
        "--out",
        str(out),
        n=4,
        cwd=tmp_path,
        timeout=240,
    )
    assert code == 0, stderr
    assert "replica 1 lost (no heartbeat for 3 s)" in stdout, stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["algo"] == "downpour" and s["lost_replicas"] == [1]
    assert s["pushes_applied_per_shard"] == [s["pushes_sent"]]
    for key in ("mean", "p50", "p90", "max", "histogram"):
        assert key in s["staleness"]
