"""CUDA kernels against the CPU kernels under Numba's CUDA simulator.

Not collected on its own (the name does not start with ``test_``):
``test_kernels_cuda.py`` runs this file in a fresh ``python -m pytest`` with
``NUMBA_ENABLE_CUDASIM=1`` in its environment, since the variable must be set
before ``numba.cuda`` is first imported. Shapes are tiny (the simulator runs
every CUDA thread as a Python thread) and the launch sizes are shrunk so that
every kernel runs several blocks and its grid-stride loop.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

if os.environ.get("NUMBA_ENABLE_CUDASIM") != "1":  # pragma: no cover - guarded by the runner
    pytest.skip(
        "run through test_kernels_cuda.py (needs NUMBA_ENABLE_CUDASIM=1)", allow_module_level=True
    )

from hpcnet.kernels import cpu, get_backend  # noqa: E402
from hpcnet.kernels import cuda as kc  # noqa: E402
from hpcnet.nn.layers import (  # noqa: E402
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    MaxPool2D,
    ReLU,
    Towers,
)
from hpcnet.nn.model import Model  # noqa: E402
from hpcnet.nn.norm import LRN
from tests.close import assert_close


def _locked_shared_array():
    """Numba-cuda 0.30's simulator hands out a block's shared arrays from a dict with an
    unlocked check-then-set (``FakeCUDAShared.array``), so two of a block's threads can
    both miss and get private copies: a race that makes tiled kernels fail at random
    (seen here about once in 70 launches with a short switch interval, rarely with the
    default). Same lookup (by the caller's file and line), under a lock."""
    import threading
    import traceback

    from numba.cuda.simulator import kernelapi
    from numba.np.numpy_support import as_dtype

    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:
            return original(self, shape, dtype, alignment)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]
        with lock:
            res = self._allocations.get(caller)
            if res is None:
                dt = as_dtype(dtype) if not isinstance(dtype, np.dtype) else dtype
                res = self._allocations[caller] = np.empty(shape, dt)
        return res

    original = kernelapi.FakeCUDAShared.array
    kernelapi.FakeCUDAShared.array = array


_locked_shared_array()
# The simulator's threads meet at barriers (syncthreads) by polling; with Python's
# default 5 ms switch interval every barrier costs milliseconds.
sys.setswitchinterval(1e-4)

RNG = np.random.default_rng(99)
TOL = {"rtol": 1e-4, "scale": 1e-5}  # atol = scale * max|cpu result| (tests/close.py)


@pytest.fixture(autouse=True)
def small_launches():
    saved = (kc.LAUNCH.threads, kc.LAUNCH.tile, kc.LAUNCH.max_blocks)
    kc.LAUNCH.threads, kc.LAUNCH.tile, kc.LAUNCH.max_blocks = 8, 4, 3
    yield
    kc.LAUNCH.threads, kc.LAUNCH.tile, kc.LAUNCH.max_blocks = saved


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def test_backend_is_the_cuda_module_only_when_asked():
    assert get_backend("cuda", allow_simulator=True).conv2d_forward is kc.conv2d_forward
    assert get_backend("auto").name == "cpu"  # the simulator is never picked by auto


@pytest.mark.parametrize("m,k,n", [(5, 9, 7), (1, 4, 13), (8, 3, 4)])
def test_tiled_gemm_all_transposes(m, k, n):
    from numba import cuda

    for ta in (False, True):
        for tb in (False, True):
            a = rand(k, m) if ta else rand(m, k)
            b = rand(n, k) if tb else rand(k, n)
            want = (a.T if ta else a) @ (b.T if tb else b)
            c = cuda.device_array((m, n), np.float32)
            kc.gemm(cuda.to_device(a), cuda.to_device(b), c, ta=ta, tb=tb)
            assert_close(c.copy_to_host(), want, **TOL)
    c0 = rand(m, n)
    c = cuda.to_device(c0)
    kc.gemm(cuda.to_device(a), cuda.to_device(b), c, ta=True, tb=True, accumulate=True)
    assert_close(c.copy_to_host(), c0 + a.T @ b.T, **TOL)


@pytest.mark.parametrize(
    "n,c,h,o,k,stride,pad,groups",
    [(2, 4, 5, 6, 3, 1, 1, 2), (1, 3, 6, 2, 2, 2, 0, 1)],
)
def test_conv2d(n, c, h, o, k, stride, pad, groups):
    x, w, b = rand(n, c, h, h), rand(o, c // groups, k, k), rand(o)
    y_c, cache_c = cpu.conv2d_forward(x, w, b, stride, pad, groups)
    y_g, cache_g = kc.conv2d_forward(x, w, b, stride, pad, groups)
    assert_close(y_g, y_c, **TOL)
    dy = rand(*y_c.shape)
    out = {}
    for name, mod, cache in (("cpu", cpu, cache_c), ("cuda", kc, cache_g)):
        dw, db = np.empty_like(w), np.empty_like(b)
        dx = mod.conv2d_backward(dy, x.shape, cache, w, stride, pad, dw, db, groups)
        out[name] = (dx, dw, db)
    for a, r in zip(out["cuda"], out["cpu"], strict=True):
        assert_close(a, r, **TOL)


@pytest.mark.parametrize("k,stride", [(3, 2), (2, 2)])
def test_maxpool2d(k, stride):
    x = rand(2, 2, 5, 5)
    y_c, a_c = cpu.maxpool2d_forward(x, k, stride)
    y_g, a_g = kc.maxpool2d_forward(x, k, stride)
    np.testing.assert_array_equal(y_g, y_c)
    np.testing.assert_array_equal(a_g, a_c)
    dy = rand(*y_c.shape)
    assert_close(
        kc.maxpool2d_backward(dy, a_g, x.shape), cpu.maxpool2d_backward(dy, a_c, x.shape), **TOL
    )


@pytest.mark.parametrize("kind", ["leaky_relu", "tanh", "sigmoid"])
def test_activations(kind):
    x, dy = rand(3, 2, 4, 5) * 3, rand(3, 2, 4, 5)
    y = cpu.activation_forward(x, kind, 0.1)
    assert_close(kc.activation_forward(x, kind, 0.1), y, **TOL)
    assert_close(
        kc.activation_backward(dy, y, kind, 0.1), cpu.activation_backward(dy, y, kind, 0.1), **TOL
    )


@pytest.mark.parametrize("k,stride", [(3, 2), (2, 2), (2, 1)])
def test_avgpool2d_and_global(k, stride):
    x = rand(2, 3, 6, 5)
    y = cpu.avgpool2d_forward(x, k, stride)
    assert_close(kc.avgpool2d_forward(x, k, stride), y, **TOL)
    dy = rand(*y.shape)
    assert_close(
        kc.avgpool2d_backward(dy, x.shape, k, stride),
        cpu.avgpool2d_backward(dy, x.shape, k, stride),
        **TOL,
    )
    assert_close(kc.global_avgpool2d_forward(x), cpu.global_avgpool2d_forward(x), **TOL)
    g = rand(2, 3)
    assert_close(
        kc.global_avgpool2d_backward(g, x.shape), cpu.global_avgpool2d_backward(g, x.shape), **TOL
    )


def test_batchnorm2d():
    x, dy = rand(3, 5, 3, 4) * 2 + 1, rand(3, 5, 3, 4)
    gamma, beta = rand(5) + 2, rand(5)
    y, xhat, mean, var = cpu.batchnorm2d_forward(x, gamma, beta, 1e-5)
    gy, gxhat, gmean, gvar = kc.batchnorm2d_forward(x, gamma, beta, 1e-5)
    assert_close(gy, y, **TOL)
    assert_close(gxhat, xhat, **TOL)
    np.testing.assert_allclose(gmean, mean, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(gvar, var, rtol=1e-6)
    assert_close(
        kc.batchnorm2d_infer(x, gamma, beta, mean, var + 0.5, 1e-5),
        cpu.batchnorm2d_infer(x, gamma, beta, mean, var + 0.5, 1e-5),
        **TOL,
    )
    grads = [np.zeros(5, np.float32) for _ in range(4)]
    dx = cpu.batchnorm2d_backward(dy, xhat, gamma, var, 1e-5, grads[0], grads[1])
    gdx = kc.batchnorm2d_backward(dy, xhat, gamma, var, 1e-5, grads[2], grads[3])
    assert_close(gdx, dx, **TOL)
    assert_close(grads[2], grads[0], **TOL)
    assert_close(grads[3], grads[1], **TOL)


def test_lrn():
    x, dy = rand(2, 6, 2, 3) * 2, rand(2, 6, 2, 3)
    args = (5, 0.3, 0.75, 1.0)
    y_c, s_c = cpu.lrn_forward(x, *args)
    y_g, s_g = kc.lrn_forward(x, *args)
    assert_close(y_g, y_c, **TOL)
    assert_close(s_g, s_c, **TOL)
    assert_close(
        kc.lrn_backward(dy, x, y_g, s_g, *args), cpu.lrn_backward(dy, x, y_c, s_c, *args), **TOL
    )


def test_elementwise_dense_softmax_concat():
    x, dy = rand(3, 11), rand(3, 11)
    y = cpu.relu_forward(x)
    np.testing.assert_array_equal(kc.relu_forward(x), y)
    np.testing.assert_array_equal(kc.relu_backward(dy, y), cpu.relu_backward(dy, y))
    mask = (RNG.random((3, 11)) < 0.5).astype(np.float32) * 2
    np.testing.assert_array_equal(kc.dropout_forward(x, mask), cpu.dropout_forward(x, mask))
    np.testing.assert_array_equal(kc.dropout_backward(dy, mask), cpu.dropout_backward(dy, mask))
    w, b = rand(5, 11), rand(5)
    assert_close(kc.dense_forward(x, w, b), cpu.dense_forward(x, w, b), **TOL)
    d = rand(3, 5)
    got, want = [np.empty_like(w), np.empty_like(b)], [np.empty_like(w), np.empty_like(b)]
    assert_close(kc.dense_backward(d, x, w, *got), cpu.dense_backward(d, x, w, *want), **TOL)
    for g, r in zip(got, want, strict=True):
        assert_close(g, r, **TOL)
    labels = RNG.integers(0, 5, 3)
    l_g, d_g = kc.softmax_xent(d, labels)
    l_c, d_c = cpu.softmax_xent(d, labels)
    assert abs(l_g - l_c) < 1e-5
    assert_close(d_g, d_c, **TOL)
    xs = [rand(2, 3, 2, 2), rand(2, 1, 2, 2)]
    cat = kc.concat_forward(xs)
    np.testing.assert_array_equal(cat, cpu.concat_forward(xs))
    for g, r in zip(kc.concat_backward(cat, [3, 1]), xs, strict=True):
        np.testing.assert_array_equal(g, r)


def test_device_arrays_stay_on_the_device():
    from numba import cuda

    x = cuda.to_device(rand(2, 3))
    y = kc.relu_forward(x)
    assert not isinstance(y, np.ndarray)
    np.testing.assert_array_equal(y.copy_to_host(), cpu.relu_forward(x.copy_to_host()))


def test_training_step_matches_cpu():
    """A whole forward + backward of a model with every layer kind: same loss, same grads."""

    def layers():
        return [
            Towers(
                [
                    [Conv2D(4, 3, padding=1, groups=1), ReLU(), LRN(3, 0.1, 0.75, 1.0)],
                    [Conv2D(2, 3, padding=1)],
                ]
            ),
            Conv2D(4, 3, padding=1, groups=2),
            ReLU(),
            MaxPool2D(3, 2),
            Flatten(),
            Dense(6),
            ReLU(),
            Dropout(0.5),
            Dense(3),
        ]

    x, y = rand(2, 2, 5, 5), RNG.integers(0, 3, 2)
    results = []
    for backend in (get_backend("cpu"), get_backend("cuda", allow_simulator=True)):
        model = Model(layers(), (2, 5, 5))
        model.init(0)
        model.seed_dropout(0, 0)
        loss, correct = model.loss_and_grad(x, y, backend)
        results.append((loss, correct, model.grads.copy()))
    (l_c, k_c, g_c), (l_g, k_g, g_g) = results
    assert abs(l_c - l_g) < 1e-5 and k_c == k_g
    assert_close(g_g, g_c, rtol=1e-4, scale=1e-5)


def test_training_step_with_batchnorm_and_residual_matches_cpu():
    """The post-AlexNet layers in one model on the device (parameters bound to device
    views): the loss, the gradients, the running statistics and an evaluation agree."""
    from hpcnet.nn import AvgPool2D, BatchNorm2D, GlobalAvgPool2D, LeakyReLU, Residual

    def layers():
        return [
            Conv2D(4, 3, padding=1),
            BatchNorm2D(),
            LeakyReLU(0.1),
            Residual([Conv2D(4, 3, padding=1), BatchNorm2D()], [Conv2D(4, 1)]),
            AvgPool2D(2),
            GlobalAvgPool2D(),
            Dense(3),
        ]

    x, y = rand(3, 2, 6, 6), RNG.integers(0, 3, 3)
    results = []
    for backend in (get_backend("cpu"), get_backend("cuda", allow_simulator=True)):
        model = Model(layers(), (2, 6, 6))
        model.init(0)
        loss, correct = model.loss_and_grad(x, y, backend)
        results.append(
            (loss, model.grads.copy(), model.buffers.copy(), model.evaluate(x, y, backend))
        )
    (l_c, g_c, b_c, e_c), (l_g, g_g, b_g, e_g) = results
    assert abs(l_c - l_g) < 1e-5
    assert_close(g_g, g_c, rtol=1e-4, scale=1e-5)
    assert_close(b_g, b_c, rtol=1e-5, scale=1e-6)
    assert abs(e_c[0] - e_g[0]) < 1e-4 and e_c[1] == e_g[1]


def test_training_step_keeps_parameters_and_activations_on_the_device():
    """With the cuda backend the layers hold device views of one device copy of the flat
    vectors, activations between layers are device arrays, and the host sees the same
    loss and gradients as the CPU backend after a step, twice (the second step uploads
    the changed parameters)."""

    def model():
        m = Model(
            [Conv2D(4, 3, padding=1), ReLU(), MaxPool2D(2), Flatten(), Dense(5), ReLU(), Dense(3)],
            (2, 6, 6),
        )
        m.init(1)
        return m

    x, y = rand(3, 2, 6, 6), RNG.integers(0, 3, 3)
    gpu, host = model(), model()
    be_g, be_c = get_backend("cuda", allow_simulator=True), get_backend("cpu")
    for _ in range(2):
        lg, cg = gpu.loss_and_grad(x, y, be_g)
        lc, cc = host.loss_and_grad(x, y, be_c)
        assert abs(lg - lc) < 1e-5 and cg == cc
        assert_close(gpu.grads, host.grads, rtol=1e-4, scale=1e-5)
        # the next step starts from the same parameters on both (the host's update,
        # uploaded by the device model at its next step), so float32 rounding is not
        # carried into a ReLU switch (issue 31)
        host.params -= np.float32(0.1) * host.grads
        gpu.params[:] = host.params
    assert gpu.device is not None and host.device is None
    w = gpu.layers[0].params["w"]
    assert hasattr(w, "copy_to_host") and not isinstance(w, np.ndarray)
    assert not isinstance(gpu.layers[1]._y, np.ndarray)  # a ReLU output, left on the device
    assert_close(gpu.forward(x, be_g), host.forward(x, be_c), rtol=1e-4, scale=1e-5)
