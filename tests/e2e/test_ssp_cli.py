"""SSP from the command line, with model parallelism: every partition of a replica
passes the same gate, partition 0 publishes the replica's clock."""

import json

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_lock_step_with_partitioned_replicas_and_a_straggler(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr, _ = hpcnet(
        "train", "--algo", "downpour", "--shards", "1", "--partitions", "2",
        "--max-steps", "20", "--threads", "1", "--max-staleness", "0",
        "--slow-replica", "0", "--slow-factor", "3", "--out", str(out),
        n=5, cwd=tmp_path, timeout=240,
    )  # fmt: skip
    assert code == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    ssp = s["ssp"]
    assert ssp["max_staleness"] == 0 and ssp["max_clock_gap"] == 0, ssp
    assert ssp["replicas"] == [0, 1] and ssp["wait_s"]["per_replica"][1] > 0
    steps = {c["client"]: c["steps"] for c in s["replicas"]}
    assert steps == {0: 20, 1: 20, 2: 20, 3: 20}
    assert s["pushes_applied_per_shard"] == [s["pushes_sent"]]
