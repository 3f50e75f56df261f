"""Bounded staleness (SSP, ``--max-staleness``) for Downpour: the clock gap stays within
the bound, a straggler makes the others wait, a lost or resumed replica does not
deadlock the gate."""

import numpy as np
import pytest
from mpi4py import MPI

from hpcnet.algos import train
from hpcnet.config import load_config
from tests.mpi.ranks import first_ranks


def _cfg(out, **kv):
    base = {
        "data.name": "digits",
        "model.name": "digits_cnn",
        "algo.name": "downpour",
        "algo.shards": 1,
        "run.threads": 1,
        "run.out": str(out),
        "run.max_steps": 30,
        "optim.warmup_epochs": 0.0,
        "optim.lr_schedule": "constant",
        "optim.lr": 0.01,
    }
    base.update(kv)
    return load_config(None, base)


def _train_3_replicas(comm, out, **kv):
    """1 shard + 3 replicas; the summary on every rank of the 4 (None elsewhere)."""
    sub = first_ranks(comm, 4)
    if sub is None:
        return None
    s = train(_cfg(out, **kv), sub, verbose=False)
    sub.Free()
    return s


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("s", [0, 2])
def test_clock_gap_stays_within_the_bound_with_a_straggler(comm, shared_tmp, s):
    # replica 0 is 3x slower: without the gate the others would run ~20 steps ahead
    summary = _train_3_replicas(
        comm,
        shared_tmp / f"ssp{s}",
        **{"ps.max_staleness": s, "faults.slow_replica": 0, "faults.slow_factor": 3.0},
    )
    if summary is None:
        return
    ssp = summary["ssp"]
    assert ssp["max_staleness"] == s
    assert 0 <= ssp["max_clock_gap"] <= s, ssp
    by = {r["replica"]: r for r in summary["replicas"]}
    assert all(by[i]["steps"] == 30 for i in range(3))  # every replica finished its steps
    assert summary["pushes_applied_per_shard"] == [summary["pushes_sent"]] == [90]
    assert by[0]["slowed_s"] > 0 and by[1]["slowed_s"] == 0
    if s == 0:  # lock-step: the fast replicas wait for the straggler
        assert ssp["wait_s"]["per_replica"][1] > 0 and ssp["wait_s"]["per_replica"][2] > 0
        assert ssp["waits"][1] > 0 and ssp["waits"][2] > 0
        assert ssp["wait_s"]["total"] == pytest.approx(sum(ssp["wait_s"]["per_replica"]))


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
def test_without_the_flag_there_is_no_ssp(comm, shared_tmp):
    summary = _train_3_replicas(comm, shared_tmp / "plain", **{"run.max_steps": 10})
    if summary is None:
        return
    assert summary["ssp"] is None
    assert all(r["ssp"] is None for r in summary["replicas"])


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
def test_a_lost_replica_leaves_the_minimum(comm, shared_tmp):
    # replica 1 stops at step 4 without saying done; under lock-step the others can go
    # on only once the shard counts it lost (--replica-timeout 2 s)
    summary = _train_3_replicas(
        comm,
        shared_tmp / "lost",
        **{
            "ps.max_staleness": 0,
            "faults.fail_replica": 1,
            "faults.fail_at_step": 4,
            "ps.replica_timeout": 2.0,
        },
    )
    if summary is None:
        return
    assert summary["lost_replicas"] == [1] and summary["failed_replicas"] == [1]
    by = {r["replica"]: r for r in summary["replicas"]}
    assert by[1]["steps"] == 4 and by[0]["steps"] == by[2]["steps"] == 30
    assert summary["ssp"]["max_clock_gap"] == 0
    assert summary["ssp"]["wait_s"]["per_replica"][0] > 1.0  # waited for the loss


@pytest.mark.mpi(min_size=3)
@pytest.mark.timeout(120)
def test_resumed_clocks_that_start_apart_meet_within_the_bound(comm):
    # real windows, a shard and two clients: a resumed run restarts replica 0 at step 12
    # and replica 1 at step 3; with s = 1 replica 0 waits until replica 1 reaches 11,
    # then both go on together. Every step's start is checked against the other's
    # published clock (read after the wait), and nobody deadlocks.
    from hpcnet.optim.rules import make_rule
    from hpcnet.ps import windows as W
    from hpcnet.ps.client import ShardClient
    from hpcnet.ps.shard import ShardService
    from hpcnet.ps.ssp import ClockGate

    sub = first_ranks(comm, 3)
    if sub is None:
        return
    rank, s, end = sub.Get_rank(), 1, 20
    windows = W.create_shard_windows(sub, [0], [(0, 4)], n_clients=2)
    result = None
    if rank == 0:
        sub.Barrier()
        ShardService(windows[0], make_rule("sgd", 4), lambda v: 0.0, 30.0, sub).serve()
    else:
        sub.Barrier()
        c = rank - 1
        client = ShardClient(windows, c, wait_timeout=30.0)
        gate = ClockGate(client, c, 1, 2, s, timeout=60.0)
        clock = (12, 3)[c]
        gate.publish(clock)
        seen = []  # (own clock at a step's start, the other's clock read then)
        other = np.zeros(1, np.float64)
        sw = windows[0]
        while clock < end:
            gate.wait(clock)
            sw.ctrl_win.Get(other, sw.owner, (W.field(1 - c, W.CLOCK), 1, MPI.DOUBLE))
            sw.ctrl_win.Flush(sw.owner)
            seen.append((clock, float(other[0])))
            client.push(np.zeros(4, np.float32), 1, 0.0, 0, 1)
            clock += 1
            gate.publish(clock)
        client.done()
        client.close()
        result = (seen, gate.stats.max_gap, gate.stats.waits)
    results = sub.allgather(result)
    for w in windows:
        w.free()
    sub.Free()
    (seen0, gap0, waits0), (seen1, gap1, _) = results[1], results[2]
    assert gap0 <= s and gap1 <= s
    assert waits0 >= 1  # replica 0 started 9 steps ahead: it had to wait
    # every step replica 0 began, replica 1 was at most s steps behind (clocks only grow)
    assert all(own - other <= s for own, other in seen0), seen0
    assert [own for own, _ in seen0] == list(range(12, end))
    assert [own for own, _ in seen1] == list(range(3, end))
