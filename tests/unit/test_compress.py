"""16-bit gradient words (``--compress fp16|bf16``): the casts against an independent
float64 reference (round to nearest, ties to even), and the MPI sum operation's
arithmetic on two operands."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.comm.compress import decode, encode


def _nearest(x: np.ndarray, bits: int, min_exp: int) -> np.ndarray:
    """The nearest float with ``bits`` significant bits (ties to even), in float64:
    x / 2**(e - bits) is exact, and np.round rounds halves to even."""
    x = x.astype(np.float64)
    _, e = np.frexp(x)  # x = m 2**e, 0.5 <= |m| < 1
    e = np.maximum(e, min_exp)  # subnormals: a fixed spacing
    scale = np.ldexp(1.0, e - bits)
    return np.round(x / scale) * scale


@pytest.mark.parametrize("method, bits, min_exp", [("fp16", 11, -13), ("bf16", 8, -125)])
def test_the_16_bit_words_are_the_nearest_values(method, bits, min_exp):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(20_000) * np.exp(rng.uniform(-8, 8, 20_000))).astype(np.float32)
    ties = np.float32(1.0) + np.float32(2.0**-bits) * np.arange(1, 9, dtype=np.float32)
    x = np.concatenate([x, ties, -ties, [0.0, -0.0]]).astype(np.float32)
    got = decode(encode(x, method), method)
    assert got.dtype == np.float32 and encode(x, method).dtype == np.uint16
    np.testing.assert_array_equal(got.astype(np.float64), _nearest(x, bits, min_exp))
    # truncation instead of rounding would differ on about half of them: the test can fail
    truncated = np.trunc(x.astype(np.float64) / np.ldexp(1.0, np.frexp(x)[1] - bits))
    assert (truncated * np.ldexp(1.0, np.frexp(x)[1] - bits) != got).mean() > 0.3


def test_bf16_keeps_float32s_range_and_fp16_overflows_to_infinity():
    x = np.array([3.0e38, -1.0e-30, np.inf, np.nan], np.float32)
    b = decode(encode(x, "bf16"), "bf16")
    assert b[0] == pytest.approx(3.0e38, rel=2**-8) and b[1] == pytest.approx(-1e-30, rel=2**-8)
    assert np.isinf(b[2]) and np.isnan(b[3])
    h = decode(encode(x, "fp16"), "fp16")
    assert np.isinf(h[0]) and h[1] == 0.0 and np.isnan(h[3])


@pytest.mark.parametrize("method", ["fp16", "bf16"])
def test_the_sum_operation_adds_in_float32_and_rounds_once(method):
    from mpi4py import MPI

    from hpcnet.comm.compress import sum_op

    rng = np.random.default_rng(1)
    a = encode(rng.standard_normal(1000).astype(np.float32), method)
    b = encode(rng.standard_normal(1000).astype(np.float32), method)
    want = encode(decode(a, method) + decode(b, method), method)
    inout = b.copy()
    sum_op(method).Reduce_local([a, MPI.UINT16_T], [inout, MPI.UINT16_T])
    np.testing.assert_array_equal(inout, want)
    assert not np.array_equal(inout, b)


def test_fp16_words_are_numpys_and_every_half_decodes_as_numpy_does():
    # the compiled casts (hpcnet/kernels/_cpu_cast.py) against NumPy's own float16
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_000) * np.exp(rng.uniform(-20, 20, 200_000))).astype(np.float32)
    x[:6] = [np.inf, -np.inf, np.nan, 0.0, -0.0, 65520.0]  # 65520: rounds to infinity
    with np.errstate(over="ignore"):
        want = x.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(encode(x, "fp16"), want)
    halves = np.arange(1 << 16, dtype=np.uint16)
    ref = halves.view(np.float16).astype(np.float32)
    got = decode(halves, "fp16")
    finite = ~np.isnan(ref)
    np.testing.assert_array_equal(got.view(np.uint32)[finite], ref.view(np.uint32)[finite])
    assert np.isnan(got[~finite]).all()
