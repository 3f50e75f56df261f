"""``--compress fp16|bf16``: the compressed allreduce (whole and bucketed) gives the mean
of the ranks' gradients within 16-bit rounding, every rank the same words; and sync with
it trains the digits as well as float32 does, with half the bytes in its summary."""

from __future__ import annotations

import math

import numpy as np
import pytest

from hpcnet.comm.buckets import BucketAllreduce
from hpcnet.comm.compress import CompressedAllreduce, Traffic, decode, encode
from tests.mpi.ranks import first_ranks

BITS = {"fp16": 11, "bf16": 8}


def _grads(rank: int, n: int) -> np.ndarray:
    return np.random.default_rng(100 + rank).standard_normal(n).astype(np.float32)


@pytest.mark.mpi(min_size=2)
@pytest.mark.parametrize("method", ["fp16", "bf16"])
@pytest.mark.parametrize("bucketed", [False, True])
def test_the_mean_within_16_bit_rounding_on_every_rank(comm, method, bucketed):
    n, size = 5000, comm.size
    grads = _grads(comm.rank, n)
    traffic = Traffic(method)
    ca = CompressedAllreduce(method, comm, traffic)
    if bucketed:
        ba = BucketAllreduce(grads, [(3000, n), (1000, 3000), (0, 1000)], comm, compressor=ca)
        ba.grads_ready(3000)
        ba.wait()
    else:
        req, words = ca.start(grads)
        req.Wait()
        ca.finish(grads, words)
    exact = np.mean([_grads(r, n).astype(np.float64) for r in range(size)], axis=0)
    # each operand rounded once, each of the ceil(log2 R) sums once more
    rounds = 1 + math.ceil(math.log2(size)) + 1
    bound = rounds * 2.0 ** -BITS[method] * np.abs([_grads(r, n) for r in range(size)]).sum(0)
    assert (np.abs(grads - exact) <= bound / size + 1e-12).all()
    assert not np.allclose(grads, exact, rtol=0, atol=1e-7)  # it was rounded: can fail
    # every rank holds the same words: decoded, the mean is 16-bit values / R
    words = encode(grads * np.float32(size), method)
    np.testing.assert_array_equal(decode(words, method) / np.float32(size), grads)
    gathered = comm.allgather(grads.tobytes())
    assert all(g == gathered[0] for g in gathered)
    assert traffic.sent_bytes * 2 == traffic.raw_bytes == n * 4


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_sync_with_fp16_trains_the_digits_as_float32_does(comm, shared_tmp, digits_path):
    from hpcnet.algos import train
    from hpcnet.config import load_config

    sub = first_ranks(comm, 2)
    if sub is None:
        return
    acc = {}
    for method in ("none", "fp16"):
        cfg = load_config(
            None,
            {"data.name": str(digits_path), "run.epochs": 8, "run.threads": 1,
             "algo.compress": method, "run.out": str(shared_tmp / method)},
        )  # fmt: skip
        summary = train(cfg, sub, verbose=False)
        acc[method] = summary["test_accuracy"]
        if method == "fp16":
            c = summary["compression"]
            assert c["method"] == "fp16" and c["ratio"] == 2.0 and c["sent_bytes"] > 0
    assert acc["fp16"] >= acc["none"] - 0.02, acc
    sub.Free()
