"""Collectives on flat buffers hold at any world size."""

import numpy as np
import pytest

from hpcnet.comm import (
    allgather_ranges,
    allreduce_mean_,
    allreduce_sum,
    bcast_,
    root_then_bcast,
)
from hpcnet.errors import DataError


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_allreduce_mean_is_the_mean(comm):
    size, rank = comm.size, comm.rank
    x = np.arange(1000, dtype=np.float32) * (rank + 1)
    allreduce_mean_(x, comm)
    expect = np.arange(1000, dtype=np.float32) * (size + 1) / 2
    np.testing.assert_allclose(x, expect, rtol=1e-6)
    s = allreduce_sum(np.array([1.0, rank]), comm)
    assert s[0] == size and s[1] == size * (size - 1) / 2


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_bcast_and_root_errors_reach_every_rank(comm):
    x = np.full(10, comm.rank, np.float32)
    bcast_(x, comm)
    assert (x == 0).all()

    def fails():
        raise DataError("bad.h5: broken")

    with pytest.raises(DataError, match="bad.h5") as info:
        root_then_bcast(fails, comm)
    assert info.value.collective
    assert root_then_bcast(lambda: 42, comm) == 42


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_allgather_ranges_assembles_the_slices_of_their_owners(comm):
    """The last ranks own uneven slices (out of order), rank 0 owns nothing."""
    n = 101
    want = np.random.default_rng(5).standard_normal(n).astype(np.float32)
    owners = list(range(comm.size - 1, 0, -1))  # ranks size-1 .. 1
    cuts = np.linspace(0, n, len(owners) + 1).astype(int)
    ranges = [(int(cuts[i]), int(cuts[i + 1])) for i in range(len(owners))]
    mine = np.empty(0, np.float32)
    if comm.rank in owners:
        lo, hi = ranges[owners.index(comm.rank)]
        mine = want[lo:hi].copy()
    out = np.zeros(n, np.float32)
    allgather_ranges(mine, owners, ranges, out, comm)
    np.testing.assert_array_equal(out, want)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
def test_node_workers_first_work_while_the_others_wait(comm, workers):
    import time

    from hpcnet.comm import node_workers_first

    done = []

    def work(j, n):
        t0 = time.monotonic()
        time.sleep(0.2)  # long enough that a rank returning early would show
        done.append((j, n, t0, time.monotonic()))

    was_worker = node_workers_first(work, comm, workers, timeout=30, what="test")
    back = time.monotonic()
    # all ranks of this test share one node (and its monotonic clock)
    every = comm.allgather((was_worker, done, back))
    ran = [d for _, ds, _ in every for d in ds]
    n = min(workers, comm.size)
    assert sorted(d[0] for d in ran) == list(range(n)) and {d[1] for d in ran} == {n}
    assert [w for w, _, _ in every].count(True) == n
    assert all(b >= max(d[3] for d in ran) for _, _, b in every)  # none back before all done


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_json_messages_arrive_as_sent_and_nothing_else_is_sent(comm):
    from hpcnet.comm.messages import JsonChannel

    ch = JsonChannel(comm, tag=77)
    if comm.rank == 1:
        ch.send({"kind": "next", "group": 1, "x": np.float32(0.5), "v": np.arange(3)}, 0)
        with pytest.raises(TypeError, match="set"):
            ch.send({"bad": {1, 2}}, 0)  # refused before anything leaves
        ch.send({"kind": "done", "why": "é ✓"}, 0)
    elif comm.rank == 0:
        first = ch.recv(1, 30, "test message")
        assert first == {"kind": "next", "group": 1, "x": 0.5, "v": [0, 1, 2]}
        assert ch.recv(1, 30, "test message") == {"kind": "done", "why": "é ✓"}
        assert ch.poll() is None
    comm.Barrier()
