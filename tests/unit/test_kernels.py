"""CPU kernels against the plain-NumPy reference on small random shapes."""

import numpy as np
import pytest

from hpcnet.errors import BackendError
from hpcnet.kernels import cpu, get_backend, reference
from tests.close import assert_close

RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize(
    "n,c,h,w,o,k,stride,pad",
    [
        (2, 3, 7, 7, 4, 3, 1, 1),
        (3, 1, 8, 6, 5, 5, 1, 2),
        (2, 2, 9, 9, 3, 3, 2, 0),
        (1, 4, 6, 6, 2, 2, 2, 1),
    ],
)
def test_conv2d_matches_reference(n, c, h, w, o, k, stride, pad):
    x, wt, b = rand(n, c, h, w), rand(o, c, k, k), rand(o)
    y_ref, cache_ref = reference.conv2d_forward(x, wt, b, stride, pad)
    y, cols = cpu.conv2d_forward(x, wt, b, stride, pad)
    assert_close(y, y_ref, rtol=1e-4, scale=1e-4)
    dy = rand(*y.shape)
    dw_ref, db_ref = np.empty_like(wt), np.empty_like(b)
    dx_ref = reference.conv2d_backward(dy, x.shape, cache_ref, wt, stride, pad, dw_ref, db_ref)
    dw, db = np.empty_like(wt), np.empty_like(b)
    dx = cpu.conv2d_backward(dy, x.shape, cols, wt, stride, pad, dw, db)
    assert_close(dx, dx_ref, rtol=1e-4, scale=1e-4)
    assert_close(dw, dw_ref, rtol=1e-4, scale=1e-4)
    assert_close(db, db_ref, rtol=1e-4, scale=1e-4)


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (3, 1)])
def test_maxpool_matches_reference(k, stride):
    x = rand(2, 3, 9, 9)
    y_ref, a_ref = reference.maxpool2d_forward(x, k, stride)
    y, a = cpu.maxpool2d_forward(x, k, stride)
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(a, a_ref)
    dy = rand(*y.shape)
    assert_close(
        cpu.maxpool2d_backward(dy, a, x.shape),
        reference.maxpool2d_backward(dy, a_ref, x.shape),
        scale=1e-6,
    )


def test_overlapping_pool_backward_routes_to_argmax():
    # One plane whose maximum sits in the overlap of four 3x3/stride-2 windows.
    x = np.zeros((1, 1, 5, 5), np.float32)
    x[0, 0, 2, 2] = 9.0
    y, a = cpu.maxpool2d_forward(x, 3, 2)
    assert y.shape == (1, 1, 2, 2) and (y == 9.0).all()
    dx = cpu.maxpool2d_backward(np.ones_like(y), a, x.shape)
    assert dx[0, 0, 2, 2] == 4.0 and dx.sum() == 4.0


def test_relu_dense_softmax_match_reference():
    x = rand(5, 7)
    np.testing.assert_array_equal(cpu.relu_forward(x), reference.relu_forward(x))
    dy = rand(5, 7)
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(cpu.relu_backward(dy, y), reference.relu_backward(dy, y))
    w, b = rand(4, 7), rand(4)
    assert_close(
        cpu.dense_forward(x, w, b), reference.dense_forward(x, w, b), rtol=1e-5, scale=1e-5
    )
    d = rand(5, 4)
    dw1, db1, dw2, db2 = (np.empty_like(w), np.empty_like(b), np.empty_like(w), np.empty_like(b))
    dx1 = cpu.dense_backward(d, x, w, dw1, db1)
    dx2 = reference.dense_backward(d, x, w, dw2, db2)
    for a1, a2 in ((dx1, dx2), (dw1, dw2), (db1, db2)):
        assert_close(a1, a2, rtol=1e-5, scale=1e-5)
    logits, labels = rand(6, 10), RNG.integers(0, 10, 6)
    l1, g1 = cpu.softmax_xent(logits, labels)
    l2, g2 = reference.softmax_xent(logits, labels)
    assert abs(l1 - l2) < 1e-5
    assert_close(g1, g2, rtol=1e-5, scale=1e-6)


def test_softmax_xent_against_formula():
    logits = np.array([[1.0, 2.0, 3.0]], np.float32)
    loss, _ = cpu.softmax_xent(logits, np.array([2]))
    assert loss == pytest.approx(-np.log(np.exp(3) / np.exp([1, 2, 3]).sum()), rel=1e-6)


def test_unknown_backend_and_cuda_without_gpu_are_errors():
    with pytest.raises(BackendError, match="unknown backend"):
        get_backend("opencl")
    with pytest.raises(BackendError, match="--backend cuda"):
        get_backend("cuda")
    assert get_backend("auto").name == "cpu"


@pytest.mark.parametrize("kind", ["leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("size", [30, 70_000])  # NumPy-sized and Numba-sized arrays
def test_activations_match_reference(kind, size):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal(size) * 4).astype(np.float32)
    x[:3] = [0.0, -80.0, 80.0]  # the kink and the saturated ends (no overflow)
    dy = rng.standard_normal(size).astype(np.float32)
    y = cpu.activation_forward(x, kind, 0.2)
    np.testing.assert_allclose(y, reference.activation_forward(x, kind, 0.2), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        cpu.activation_backward(dy, y, kind, 0.2),
        reference.activation_backward(dy, y, kind, 0.2),
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("k,stride", [(2, 2), (3, 2), (3, 1)])
def test_avgpool_matches_reference(k, stride):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = cpu.avgpool2d_forward(x, k, stride)
    np.testing.assert_allclose(y, reference.avgpool2d_forward(x, k, stride), rtol=1e-5, atol=1e-6)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    np.testing.assert_allclose(
        cpu.avgpool2d_backward(dy, x.shape, k, stride),
        reference.avgpool2d_backward(dy, x.shape, k, stride),
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        cpu.global_avgpool2d_forward(x), x.astype(np.float64).mean(axis=(2, 3)), rtol=1e-5
    )


@pytest.mark.parametrize("shape", [(4, 3, 5, 6), (2, 40, 9, 9)])
def test_batchnorm_matches_reference(shape):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 2 + 3).astype(np.float32)
    c = shape[1]
    gamma = rng.uniform(0.5, 2, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    got = cpu.batchnorm2d_forward(x, gamma, beta, 1e-5)
    want = reference.batchnorm2d_forward(x, gamma, beta, 1e-5)
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(want[2], x.astype(np.float64).mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(want[3], x.astype(np.float64).var(axis=(0, 2, 3)), rtol=1e-9)
    mean, var = rng.standard_normal(c), rng.uniform(0.5, 2, c)
    np.testing.assert_allclose(
        cpu.batchnorm2d_infer(x, gamma, beta, mean, var, 1e-5),
        reference.batchnorm2d_infer(x, gamma, beta, mean, var, 1e-5),
        rtol=1e-5,
        atol=1e-5,
    )
    dy = rng.standard_normal(shape).astype(np.float32)
    grads = [np.zeros(c, np.float32) for _ in range(4)]
    dx = cpu.batchnorm2d_backward(dy, got[1], gamma, got[3], 1e-5, grads[0], grads[1])
    dx_ref = reference.batchnorm2d_backward(dy, want[1], gamma, want[3], 1e-5, grads[2], grads[3])
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(grads[0], grads[2], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grads[1], grads[3], rtol=1e-4, atol=1e-4)
    assert np.abs(dx_ref).max() > 0.1 and np.abs(grads[2]).max() > 0.1
