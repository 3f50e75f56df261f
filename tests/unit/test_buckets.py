"""The gradient bucket plan (hpcnet.comm.buckets.plan_buckets) and the backward hook
that tells the bucketed allreduce which gradients are final."""

import numpy as np
import pytest

from hpcnet.comm.buckets import BYTES_PER_MB, plan_buckets
from hpcnet.kernels import get_backend
from hpcnet.nn.zoo import build_model


def _check_plan(plan, ranges, n, bucket_bytes):
    """The buckets cover [0, n) exactly, in backward order (from n down to 0), cut only
    where a layer starts, and each but the last (nearest the input) holds at least
    ``bucket_bytes``; none could have closed a layer earlier."""
    assert plan[0][1] == n and plan[-1][0] == 0
    for (lo, _), (_, hi) in zip(plan, plan[1:], strict=False):
        assert hi == lo  # contiguous, descending
    assert all(lo < hi for lo, hi in plan)
    starts = {lo for lo, hi in ranges if hi > lo}
    assert all(lo in starts for lo, _ in plan)
    for lo, hi in plan[:-1]:
        assert (hi - lo) * 4 >= bucket_bytes
        inner = [s for s in starts if lo < s < hi]  # a cut at the last inner start: too small
        assert all((hi - s) * 4 < bucket_bytes for s in inner)


@pytest.mark.parametrize("name", ["digits_cnn", "mlp", "wide_mlp", "2conv", "towers"])
@pytest.mark.parametrize("mb", [1e-6, 0.05, 0.25, 1.0, 25.0])
def test_plan_covers_the_vector_in_backward_order(name, mb):
    m = build_model(name, (1, 8, 8) if name == "digits_cnn" else (1, 28, 28), 10)
    ranges = m.layer_ranges()
    assert ranges[0][0] == 0 and ranges[-1][1] == m.n_params
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
    plan = plan_buckets(ranges, m.n_params, int(mb * BYTES_PER_MB))
    _check_plan(plan, ranges, m.n_params, int(mb * BYTES_PER_MB))


def test_plan_sizes():
    ranges = [(0, 100), (100, 100), (100, 150), (150, 160), (160, 400)]  # one without params
    assert plan_buckets(ranges, 400, 0) == [(0, 400)]  # 0: one bucket
    assert plan_buckets(ranges, 400, 10**9) == [(0, 400)]
    # 1 byte: every layer with parameters is a bucket, last layer first
    assert plan_buckets(ranges, 400, 1) == [(160, 400), (150, 160), (100, 150), (0, 100)]
    # 200 bytes = 50 floats: the 240-float layer alone, then 10 + 50 floats, then the rest
    assert plan_buckets(ranges, 400, 200) == [(160, 400), (100, 160), (0, 100)]
    assert plan_buckets(ranges, 400, 4 * 300) == [(100, 400), (0, 100)]  # 300 floats: full
    assert plan_buckets(ranges, 400, 4 * 301) == [(0, 400)]  # never a split layer
    assert plan_buckets([], 0, 100) == []


@pytest.mark.parametrize("name", ["digits_cnn", "towers", "mlp"])  # mlp: Flatten first
def test_backward_reports_final_gradients_last_layer_first(name):
    # on_grad_ready(lo) must mean grads[lo:] are final: snapshot them then and compare
    # with the gradients at the end of backward (the vector starts as NaN).
    shape = (1, 28, 28) if name == "towers" else (1, 8, 8)
    m = build_model(name, shape, 10)
    m.init(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, *shape)).astype(np.float32)
    y = rng.integers(0, 10, 4)
    m.grads[:] = np.nan
    seen = []
    m.loss_and_grad(
        x, y, get_backend("cpu"), on_grad_ready=lambda lo: seen.append((lo, m.grads[lo:].copy()))
    )
    assert len(seen) == len(m.layers)
    los = [lo for lo, _ in seen]
    assert los == sorted(los, reverse=True) and los[-1] == 0
    assert los[0] == m.layer_ranges()[-1][0]  # after the last layer: its own gradients
    for lo, snap in seen:
        np.testing.assert_array_equal(snap, m.grads[lo:])
    assert np.isfinite(m.grads).all()
