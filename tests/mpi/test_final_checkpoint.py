"""Every algorithm ends with OUT/checkpoint.h5 holding its final parameters."""

import h5py
import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.config import load_config
from tests.mpi.ranks import first_ranks


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "algo, ranks, extra",
    [
        ("sync", 2, {"run.max_steps": 5}),
        ("downpour", 3, {"run.max_steps": 5}),
        ("sandblaster", 4, {"run.epochs": 2, "algo.shards": 1}),
    ],
)
def test_the_final_checkpoint_holds_the_final_parameters(comm, shared_tmp, algo, ranks, extra):
    sub = first_ranks(comm, ranks)
    if sub is None:
        return
    out = shared_tmp / f"final-{algo}"
    cfg = load_config(
        None,
        {"data.name": "digits", "algo.name": algo, "run.threads": 1, "run.out": str(out), **extra},
    )
    s = train(cfg, sub, verbose=False)  # rank 0 wrote the file before the summary's bcast
    sub.Free()
    with h5py.File(out / "checkpoint.h5", "r") as f:  # every rank of the run checks it
        assert bool(f.attrs["final"]) and f.attrs["algo"] == algo
        assert int(f.attrs["step"]) == s["steps"]
        np.testing.assert_array_equal(f["params"][()], s["_params"])
