"""The bucketed gradient allreduce overlapped with backward (hpcnet.comm.buckets)
against the same buckets reduced after backward (bit for bit) and against one
allreduce of the whole vector (float tolerance), and the sync policy and run with
``--bucket-mb``."""

import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.algos.sync import SyncSGD
from hpcnet.comm import allreduce_mean_
from hpcnet.comm.buckets import BYTES_PER_MB, BucketAllreduce, plan_buckets
from hpcnet.config import load_config
from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.loader import normalize
from hpcnet.kernels import get_backend
from hpcnet.nn.zoo import build_model
from tests.close import assert_flat_close
from tests.mpi.ranks import first_ranks

B = 16


class DroppedBucket(BucketAllreduce):
    """A broken bucketed allreduce that never reduces bucket ``drop`` (its gradients
    stay this rank's own, scaled by 1/R): the tests below must catch it."""

    drop = 1

    def _start(self):
        if self.started == self.drop:
            self.started += 1
            return
        super()._start()


def _setup(comm, digits_path, name="digits_cnn"):
    info = open_dataset(digits_path)
    x, y = read_rows(digits_path, "train", 0, comm.size * B)
    x = normalize(x, info.mean, info.std)
    r = comm.rank
    model = build_model(name, info.image_shape, info.num_classes)
    model.init(5)
    return model, x[r * B : (r + 1) * B], y[r * B : (r + 1) * B]


def _three_ways(comm, model, x, y, mb, cls=BucketAllreduce):
    """(overlapped, after backward, one allreduce) averaged gradients, and the buckets
    started while backward still had layers to go."""
    be = get_backend("cpu")
    plan = plan_buckets(model.layer_ranges(), model.n_params, int(mb * BYTES_PER_MB))
    buckets = cls(model.grads, plan, comm)
    early = []

    def hook(lo):
        buckets.grads_ready(lo)
        if lo > 0:
            early.append(buckets.started)

    model.loss_and_grad(x, y, be, on_grad_ready=hook)
    buckets.wait()
    overlapped = model.grads.copy()
    model.loss_and_grad(x, y, be)
    buckets.wait()  # every bucket started now, after backward, in the same order
    after = model.grads.copy()
    model.loss_and_grad(x, y, be)
    allreduce_mean_(model.grads, comm)
    return overlapped, after, model.grads.copy(), plan, max(early, default=0)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mb", [1e-6, 0.05, 1.0])
def test_overlapped_buckets_equal_buckets_after_backward_and_one_allreduce(comm, digits_path, mb):
    model, x, y = _setup(comm, digits_path)
    overlapped, after, one, plan, early = _three_ways(comm, model, x, y, mb)
    if len(plan) > 1:
        assert early >= 1, "no bucket's allreduce started before backward was over"
    assert np.array_equal(overlapped, after), "overlap changed the bits of the buckets' sum"
    assert_flat_close(overlapped, one, model, what=f"{len(plan)} buckets vs one allreduce")
    # the oracle is no echo: every replica's own gradient differs from the mean
    model.loss_and_grad(x, y, get_backend("cpu"))
    assert not np.allclose(model.grads, one)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_a_dropped_bucket_is_caught(comm, digits_path):
    model, x, y = _setup(comm, digits_path)
    overlapped, after, one, plan, _ = _three_ways(comm, model, x, y, 0.05, DroppedBucket)
    assert len(plan) > DroppedBucket.drop
    assert np.array_equal(overlapped, after)  # broken the same way in both: only the
    with pytest.raises(AssertionError):  # one-allreduce oracle can see it
        assert_flat_close(overlapped, one, model)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_sync_policy_with_buckets_counts_and_completes(comm, digits_path):
    model, x, y = _setup(comm, digits_path)
    policy = SyncSGD(comm, bucket_mb=0.05, model=model)
    assert policy.on_grad_ready is not None and len(policy.buckets.plan) == 2
    ref = SyncSGD(comm)
    assert ref.on_grad_ready is None and ref.buckets is None
    be = get_backend("cpu")
    for _ in range(2):
        model.loss_and_grad(x, y, be, on_grad_ready=policy.on_grad_ready)
        policy.after_backward(model.grads)
    got = model.grads.copy()
    model.loss_and_grad(x, y, be)
    policy.after_backward(model.grads)  # no hook during backward: all start after it
    assert np.array_equal(model.grads, got)
    assert policy.allreduces == 3 * 2
    policy.resume(7)
    assert policy.allreduces == 14
    with pytest.raises(ValueError, match="not the model's gradient vector"):
        policy.after_backward(model.grads.copy())


def _cfg(out, **algo):
    return load_config(
        None,
        {
            "data.name": "digits",
            "run.out": str(out),
            "run.epochs": 1,
            "run.max_steps": 12,
            "run.threads": 1,
            **{f"algo.{k}": v for k, v in algo.items()},
        },
    )


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(240)
def test_sync_run_with_buckets_trains_as_one_allreduce(comm, shared_tmp):
    # Two replicas: each element's sum is a + b, the same bits in whatever order MPI
    # adds (float addition commutes), so the runs must agree bit for bit. With more
    # replicas the order of a 3- or 4-term sum may differ with the message size, and 12
    # steps can carry that rounding into a ReLU switch (issue 31).
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    one = train(_cfg(shared_tmp / "one"), sub, verbose=False)
    bkt = train(_cfg(shared_tmp / "bkt", bucket_mb=0.05), sub, verbose=False)
    assert np.array_equal(bkt["_params"], one["_params"]), "--bucket-mb 0.05 vs 0"
    assert bkt["allreduces"] == 2 * one["allreduces"] == 2 * one["steps"]
    everyone = sub.allgather(bkt["_params"][:1000])  # replicas stay identical
    assert all(np.array_equal(everyone[0], p) for p in everyone)
    sub.Free()
