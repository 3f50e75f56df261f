"""Winograd convolution (F(2x2, 5x5), F(4x4, 3x3)) of the CPU backend.

Three independent references: NumPy's 1-D correlation for the transform matrices, the
matrices themselves (einsum) for the hand-written transforms, and the NumPy
``reference`` backend for whole layers, forward and backward, on odd sizes (partial
tiles), with and without padding, in one chunk and in many chunks on two threads.
"""

import numba
import numpy as np
import pytest

from hpcnet.kernels import _cpu_chunks, cpu, reference
from hpcnet.kernels import _cpu_winograd as wino
from tests.close import assert_close

RNG = np.random.default_rng(5)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("m,r", [(2, 5), (4, 3), (2, 3), (3, 3)])
def test_matrices_compute_a_1d_correlation(m, r):
    at, g, bt = (a.astype(np.float64) for a in wino.winograd_matrices(m, r))
    d, f = RNG.standard_normal(m + r - 1), RNG.standard_normal(r)
    got = at @ ((g @ f) * (bt @ d))
    np.testing.assert_allclose(got, np.correlate(d, f, mode="valid"), rtol=1e-6, atol=1e-6)


def test_matrices_refuse_a_tile_with_no_points():
    with pytest.raises(ValueError, match="no points"):
        wino.winograd_matrices(6, 5)


@pytest.mark.parametrize("m,r", [(2, 5), (4, 3)])
def test_written_out_transforms_equal_the_matrices(m, r):
    """The straight-line transforms against einsum with A^T and B^T, on 2 samples of
    2 x 3 tiles, so tile offsets and channels are exercised."""
    at, _, bt = wino.winograd_matrices(m, r)
    n, th, tw, c, o = 2, 2, 3, 5, 7
    xp = rand(n, th * m + r - 1, tw * m + r - 1, c)
    v = np.zeros((36, 3 + n * th * tw, c), np.float32)
    wino.input_transform(xp, m, th, tw, v, 3)  # written after 3 tiles of another chunk
    assert not v[:, :3].any()
    for b in range(n):
        for ti in range(th):
            for tj in range(tw):
                t = (b * th + ti) * tw + tj
                d = xp[b, ti * m : ti * m + 6, tj * m : tj * m + 6]  # (6, 6, C)
                want = np.einsum("ri,ijc,qj->rqc", bt, d, bt).reshape(36, c)
                assert_close(v[:, 3 + t], want, rtol=1e-5, scale=1e-6)
    mm = rand(36, n * th * tw, o)
    oh, ow = th * m - 1, tw * m  # the last tile row sticks out
    y = np.empty((n, o, oh, ow), np.float32)
    bias = rand(o)
    wino.output_transform(mm, m, th, tw, bias, y)
    full = np.einsum("ip,pqtc,jq->itcj", at, mm.reshape(6, 6, -1, o), at)  # (m, T, O, m)
    full = full.reshape(m, n, th, tw, o, m).transpose(1, 4, 2, 0, 3, 5)
    full = full.reshape(n, o, th * m, tw * m)[:, :, :oh, :ow] + bias[None, :, None, None]
    assert_close(y, full, rtol=1e-5, scale=1e-6)


def test_adjoint_transforms_are_adjoints():
    """<T x, y> == <x, T* y> for the input and output transforms (random x, y)."""
    for m, r in ((2, 5), (4, 3)):
        n, th, tw, c, o, pad = 2, 2, 2, 3, 4, 1
        h = w = th * m + r - 1 - 2 * pad
        x = rand(n, c, h, w)
        xp = np.empty((n, th * m + r - 1, tw * m + r - 1, c), np.float32)
        wino.pad_nhwc(x, pad, xp)
        v = np.empty((36, n * th * tw, c), np.float32)
        wino.input_transform(xp, m, th, tw, v, 0)
        dv = rand(*v.shape)
        dx = np.empty_like(x)
        wino.input_transform_adjoint(dv, m, th, tw, pad, np.empty_like(xp), dx)
        lhs, rhs = float(np.vdot(v, dv)), float(np.vdot(x, dx))
        assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), 1.0), (m, lhs, rhs)
        mm = rand(36, n * th * tw, o)
        y = np.empty((n, o, th * m - 1, tw * m - 1), np.float32)
        wino.output_transform(mm, m, th, tw, np.zeros(o, np.float32), y)
        dy = rand(*y.shape)
        dm = np.empty_like(mm)
        wino.output_transform_adjoint(dy, m, th, tw, dm)
        lhs, rhs = float(np.vdot(y, dy)), float(np.vdot(mm, dm))
        assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), 1.0), (m, lhs, rhs)


SHAPES = [  # n, c, h, w, o, k, pad
    (2, 8, 7, 7, 8, 3, 1),
    (3, 9, 9, 6, 10, 5, 2),  # partial tiles, W != H
    (2, 12, 13, 11, 8, 3, 0),  # no padding, odd sizes
    (2, 16, 10, 10, 9, 5, 0),
    (5, 32, 14, 14, 64, 5, 2),  # 2conv's second convolution, 5 samples
]


@pytest.mark.parametrize("chunked", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
def test_winograd_layer_matches_reference(monkeypatch, shape, chunked):
    monkeypatch.setattr(cpu, "WINOGRAD_MIN_CHANNELS", 8)
    monkeypatch.setattr(cpu, "WINOGRAD_MAX_WASTE", 2.0)
    if chunked:  # one sample per chunk, two threads taking them
        monkeypatch.setattr(_cpu_chunks, "CHUNK_BYTES", 1)
    n, c, h, w, o, k, pad = shape
    x, wt, b = rand(n, c, h, w), rand(o, c, k, k), rand(o)
    threads = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS) if chunked else 1)
    try:
        y, cache = cpu.conv2d_forward(x, wt, b, 1, pad)
        assert cache[0] == "winograd"
        y_ref, cache_ref = reference.conv2d_forward(x, wt, b, 1, pad)
        assert_close(y, y_ref, rtol=1e-4, scale=1e-4)
        dy = rand(*y.shape)
        dw_ref, db_ref = np.empty_like(wt), np.empty_like(b)
        dx_ref = reference.conv2d_backward(dy, x.shape, cache_ref, wt, 1, pad, dw_ref, db_ref)
        dw, db = np.empty_like(wt), np.empty_like(b)
        dx = cpu.conv2d_backward(dy, x.shape, cache, wt, 1, pad, dw, db)
        assert_close(dx, dx_ref, rtol=1e-4, scale=1e-4)
        assert_close(dw, dw_ref, rtol=1e-4, scale=1e-4)
        assert_close(db, db_ref, rtol=1e-4, scale=1e-4)
        y2, cache2 = cpu.conv2d_forward(x, wt, b, 1, pad)  # without the input gradient
        dw2, db2 = np.empty_like(wt), np.empty_like(b)
        assert cpu.conv2d_backward(dy, x.shape, cache2, wt, 1, pad, dw2, db2, 1, False) is None
        np.testing.assert_array_equal(dw2, dw)  # chunk sums in a fixed order: same bits
    finally:
        numba.set_num_threads(threads)


@pytest.mark.parametrize(
    "k,stride,c,o,groups,oh,want",
    [
        (5, 1, 32, 64, 1, 14, 2),
        (3, 1, 16, 32, 1, 7, 4),
        (3, 1, 16, 32, 1, 6, 0),  # 6x6 output in 4x4 tiles: 1.78x the work
        (5, 2, 32, 64, 1, 14, 0),
        (5, 1, 32, 64, 2, 14, 0),
        (5, 1, 6, 16, 1, 10, 0),  # lenet's second convolution: too few channels
        (7, 1, 32, 32, 1, 14, 0),
    ],
)
def test_which_convolutions_take_winograd(k, stride, c, o, groups, oh, want):
    assert cpu._winograd_tile(k, stride, c, o, groups, oh, oh) == want


def test_a_failing_chunk_raises_after_every_thread_stopped(monkeypatch):
    seen = []

    def work(b0, b1, scratch):
        seen.append(b0)
        if b0 == 2:
            raise RuntimeError("chunk 2")

    threads = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    try:
        with pytest.raises(RuntimeError, match="chunk 2"):
            _cpu_chunks.run_chunks(6, 1, work)
    finally:
        numba.set_num_threads(threads)
    assert 2 in seen
