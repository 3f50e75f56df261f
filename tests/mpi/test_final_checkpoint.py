"""Every algorithm ends with OUT/checkpoint.h5 holding its final parameters."""

import time

import h5py
import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.config import load_config
from hpcnet.run.preempt import TIME_LIMIT, Preempted
from tests.mpi.ranks import first_ranks

# each algorithm on the fewest ranks it runs on, and what it needs there
ALGOS = [("sync", 2, {}), ("downpour", 3, {}), ("sandblaster", 4, {"algo.shards": 1})]


def _config(out, algo, extra):
    return load_config(
        None,
        {"data.name": "digits", "algo.name": algo, "run.threads": 1, "run.out": str(out), **extra},
    )


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("algo, ranks, extra", ALGOS)
def test_the_final_checkpoint_holds_the_final_parameters(comm, shared_tmp, algo, ranks, extra):
    sub = first_ranks(comm, ranks)
    if sub is None:
        return
    out = shared_tmp / f"final-{algo}"
    length = {"run.epochs": 2} if algo == "sandblaster" else {"run.max_steps": 5}
    cfg = _config(out, algo, {**extra, **length})
    s = train(cfg, sub, verbose=False)  # rank 0 wrote the file before the summary's bcast
    sub.Free()
    with h5py.File(out / "checkpoint.h5", "r") as f:  # every rank of the run checks it
        assert bool(f.attrs["final"]) and f.attrs["algo"] == algo
        assert int(f.attrs["step"]) == s["steps"]
        np.testing.assert_array_equal(f["params"][()], s["_params"])


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
@pytest.mark.parametrize("algo, ranks, extra", ALGOS)
def test_a_time_limit_stops_every_rank_checkpointed(comm, shared_tmp, algo, ranks, extra):
    # a search's --trial-timeout: no SIGALRM, the run stops itself at a step boundary
    sub = first_ranks(comm, ranks)
    if sub is None:
        return
    out = shared_tmp / f"limit-{algo}"
    cfg = _config(out, algo, {**extra, "run.epochs": 1000})  # hours: only the limit ends it
    # the run stops once the first rank's limit has passed: from the earliest start (a
    # rank that entered train() a few ms later waits a few ms less)
    t0 = min(sub.allgather(time.time()))
    with pytest.raises(Preempted) as stop:
        train(cfg, sub, verbose=False, time_limit=3.0)
    waited = time.time() - t0
    writer = sub.Get_rank() == 0  # it has written the checkpoint when it raises
    sub.Free()
    assert stop.value.signum == TIME_LIMIT, stop.value
    assert 3.0 <= waited < 120, waited  # it did stop, soon after the limit
    if writer:
        with h5py.File(out / "checkpoint.h5", "r") as f:  # resumable: not the final one
            assert not bool(f.attrs["final"]) and f.attrs["algo"] == algo
            assert int(f.attrs["step"]) == stop.value.step
