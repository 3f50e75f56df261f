"""Synchronous SGD and parameter averaging against a serial big-batch oracle."""

import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.algos.avg import ParameterAveraging
from hpcnet.algos.sync import SyncSGD
from hpcnet.config import load_config
from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.loader import BatchLoader, assign_rows, normalize
from hpcnet.kernels import get_backend
from hpcnet.nn.zoo import build_model
from hpcnet.optim.sgd import SGD
from tests.close import assert_flat_close

STEPS, B, LR = 5, 16, 0.1


def _batches(path, size):
    """STEPS global batches of size*B real digits samples, the same on every rank."""
    info = open_dataset(path)
    x, y = read_rows(path, "train", 0, STEPS * size * B)
    x = normalize(x, info.mean, info.std)
    return info, [
        (x[s * size * B : (s + 1) * size * B], y[s * size * B : (s + 1) * size * B])
        for s in range(STEPS)
    ]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("algo", ["sync", "avg"])
def test_replicas_equal_one_process_with_the_total_batch(comm, digits_path, algo):
    # Deeplearning4j's argument: N replicas with batch b, plain SGD, averaging every
    # step, end where one process with batch N*b over the same samples ends.
    size, rank = comm.size, comm.rank
    be = get_backend("cpu")
    info, batches = _batches(digits_path, size)
    dist = build_model("digits_cnn", info.image_shape, info.num_classes)
    serial = build_model("digits_cnn", info.image_shape, info.num_classes)
    dist.init(3)
    serial.init(3)
    policy = SyncSGD(comm) if algo == "sync" else ParameterAveraging(comm, every=1)
    opt_d, opt_s = SGD(dist.n_params), SGD(serial.n_params)
    for step, (x, y) in enumerate(batches):
        dist.loss_and_grad(x[rank * B : (rank + 1) * B], y[rank * B : (rank + 1) * B], be)
        policy.after_backward(dist.grads)
        opt_d.step(dist.params, dist.grads, LR)
        policy.after_step(step, dist.params)
        serial.loss_and_grad(x, y, be)
        opt_s.step(serial.params, serial.grads, LR)
    policy.finish(dist.params)
    assert not np.array_equal(
        serial.params, build_model("digits_cnn", info.image_shape, info.num_classes).params
    ), "training moved nothing"
    assert_flat_close(dist.params, serial.params, serial)


def _cfg(out, **run):
    return load_config(
        None,
        {
            "data.name": "digits",
            "run.out": str(out),
            "run.epochs": 2,
            "run.threads": 1,
            **{f"run.{k}": v for k, v in run.items()},
        },
    )


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(180)
def test_same_seed_same_world_gives_bitwise_identical_parameters(comm, shared_tmp):
    a = train(_cfg(shared_tmp / "a", max_steps=15), comm, verbose=False)["_params"].copy()
    b = train(_cfg(shared_tmp / "b", max_steps=15), comm, verbose=False)["_params"].copy()
    assert np.array_equal(a, b)
    c = train(_cfg(shared_tmp / "c", max_steps=15, seed=1), comm, verbose=False)["_params"]
    assert not np.array_equal(a, c)
    # sync keeps every replica's parameters identical
    everyone = comm.allgather(a[:1000])
    assert all(np.array_equal(everyone[0], p) for p in everyone)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(180)
def test_train_digits_sync_and_avg_learn(comm, shared_tmp):
    for algo in ("sync", "avg"):
        cfg = load_config(
            None,
            {
                "data.name": "digits",
                "run.out": str(shared_tmp / algo),
                "run.epochs": 10,
                "run.threads": 1,
                "algo.name": algo,
            },
        )
        s = train(cfg, comm, verbose=False)
        assert s["test_accuracy"] >= 0.9, (algo, s["test_accuracy"])
        assert s["world_size"] == comm.size and s["layout"]["replicas"] == comm.size
        if algo == "avg":
            everyone = comm.allgather(s["_params"][:1000])
            assert all(np.array_equal(everyone[0], p) for p in everyone)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(60)
def test_no_rank_reads_rows_outside_its_assignment(comm, digits_path):
    info = open_dataset(digits_path)
    start, stop = assign_rows(info.n_train, comm.size, comm.rank)
    loader = BatchLoader(
        digits_path,
        replica=comm.rank,
        n_replicas=comm.size,
        batch_size=8,
        seed=0,
        mean=info.mean,
        std=info.std,
    )
    try:
        assert loader.rows_read, "the loader must record what it read"
        for a, b in loader.rows_read:
            assert start <= a < b <= stop
        ranges = comm.allgather((start, stop))
        assert len({b - a for a, b in ranges}) == 1  # same steps per epoch everywhere
        for (_, b1), (a2, _) in zip(ranges, ranges[1:], strict=False):
            assert b1 <= a2  # disjoint
        steps = comm.allgather(loader.steps_per_epoch)
        assert len(set(steps)) == 1
    finally:
        loader.close()
