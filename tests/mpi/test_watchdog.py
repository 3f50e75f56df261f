"""The watchdog inside one job: a collective that one rank joins late raises StallError
on the others, naming the late rank from its heartbeat; the collective still completes
once it joins."""

from __future__ import annotations

import time

import numpy as np
import pytest

from hpcnet.comm import allreduce_sum, watchdog
from hpcnet.errors import StallError


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_a_late_rank_is_named(comm):
    dog = watchdog.start(comm, timeout=0.5, role_of=lambda r: f"worker {r}")
    try:
        last = comm.Get_size() - 1
        watchdog.heartbeat(7)  # one completed step each: the normal (not first-step) deadline
        assert dog.current_timeout() == pytest.approx(0.5)
        comm.Barrier()
        if comm.rank == last:
            time.sleep(3.0)  # stalls: no heartbeat meanwhile
            total = allreduce_sum(np.array([1.0]), comm)
            assert total[0] == comm.Get_size()
        else:
            with pytest.raises(StallError) as e:
                allreduce_sum(np.array([1.0]), comm, what="test allreduce")
            text = str(e.value)
            assert f"rank {comm.rank} (worker {comm.rank}): test allreduce" in text
            line = next(s for s in text.splitlines() if f"rank {last} (worker {last}" in s)
            assert "probably stalled" in line and "at step 7" in line
            # nobody else is blamed: the other waiting ranks beat while they wait
            assert text.count("probably stalled") == 1
            # the abandoned request completes once the late rank joins: MPI stays usable
        comm.Barrier()
        assert allreduce_sum(np.array([2.0]), comm)[0] == 2.0 * comm.Get_size()
    finally:
        watchdog.stop()


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_first_step_gets_a_longer_deadline(comm):
    dog = watchdog.start(comm, timeout=2.0, role_of=str)
    try:
        assert dog.current_timeout() == pytest.approx(2.0 * watchdog.FIRST_STEP_FACTOR)
        dog.beat(1)
        assert dog.current_timeout() == pytest.approx(2.0)
        beats = dog.heartbeats()
        # every rank of this node is visible, with its own pid
        assert comm.rank in beats and beats[comm.rank][0] == 1
    finally:
        watchdog.stop()
