"""Model parallelism from the command line: composition with downpour, and bad input."""

import json

import pytest

from tests.e2e.test_cli import MPIEXEC, hpcnet


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(400)
@pytest.mark.parametrize("scheme", ["neurons", "pipeline"])
def test_downpour_with_two_partitions_per_replica_learns_digits(tmp_path, scheme):
    """1 shard + 2 replicas x 2 partitions: each partition fetches and pushes only
    the parameters it owns; together they train the whole model."""
    out = tmp_path / "out"
    code, stdout, stderr, _ = hpcnet(
        "train",
        "--algo",
        "downpour",
        "--shards",
        "1",
        "--partitions",
        "2",
        "--partition-scheme",
        scheme,
        "--epochs",
        "5",
        "--threads",
        "1",
        "--out",
        str(out),
        n=5,
        cwd=tmp_path,
        timeout=360,
    )
    assert code == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["test_accuracy"] >= 0.9, s["test_accuracy"]
    assert s["layout"]["partitions"] == 2 and s["layout"]["replicas"] == 2
    clients = s["replicas"]
    assert [c["client"] for c in clients] == [0, 1, 2, 3]
    n = s["n_params"]
    per = s["model_parallel"]["per_partition"]
    assert sum(p["owned_params"] for p in per) == n
    for c in clients:  # a partition moves only its own parameters
        owned = per[c["partition"]]["owned_params"]
        assert c["bytes_in"] == c["fetches"] * 4 * owned
        assert c["bytes_out"] == c["pushes"] * 4 * owned
    assert s["pushes_applied_per_shard"] == [s["pushes_sent"]]
    assert (
        s["model_parallel"]["bytes_sent_per_step"] == s["model_parallel"]["bytes_expected_per_step"]
    )


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "args, n, message",
    [
        (["--partitions", "3"], 2, "2 ranks cannot hold replicas of 3 partitions"),
        (
            ["--partitions", "2", "--partition-scheme", "pipeline", "--model", "linear"],
            2,
            "--partitions 2: model 'linear'",
        ),
        (["--partition-scheme", "columns"], 2, "--partition-scheme 'columns'"),
        (["--partitions", "2", "--algo", "sandblaster"], 4, "sandblaster does not split"),
    ],
)
def test_bad_partitioning_is_one_clear_line_and_exit_2(tmp_path, args, n, message):
    code, stdout, stderr, _ = hpcnet(
        "train", *args, "--out", str(tmp_path / "o"), n=n, cwd=tmp_path, timeout=100
    )
    assert code == 2, (stdout, stderr)
    lines = [ln for ln in stderr.splitlines() if ln.startswith("hpcnet: error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr


@pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec")
@pytest.mark.timeout(300)
def test_downpour_loses_a_whole_partitioned_replica_and_finishes(tmp_path):
    """Replica 1 (both its partitions) stops after 5 steps: the shard declares its
    two clients lost, the run finishes with replica 0 and reports replica 1."""
    out = tmp_path / "out"
    code, stdout, stderr, _ = hpcnet(
        "train",
        "--algo",
        "downpour",
        "--shards",
        "1",
        "--partitions",
        "2",
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
        n=5,
        cwd=tmp_path,
        timeout=240,
    )
    assert code == 0, stderr
    assert stdout.count("replica 1 lost (no heartbeat for 3 s)") == 1, stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["lost_replicas"] == [1] and s["failed_replicas"] == [1]
    assert s["pushes_applied_per_shard"] == [s["pushes_sent"]]
    steps = {c["client"]: c["steps"] for c in s["replicas"]}
    assert steps[2] == steps[3] == 5  # replica 1's partitions stopped together
    assert steps[0] == steps[1] > 5
