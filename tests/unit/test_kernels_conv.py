"""The CPU convolution's paths (im2col + GEMM, direct, Winograd) against the reference.

``cpu.DIRECT_MAX_CHANNELS`` and ``cpu.WINOGRAD_MIN_CHANNELS`` pick the path by the
channels; the tests pin them to force each path on the same shapes, strides, paddings
and groups. The Winograd tests are in test_kernels_winograd.py.
"""

import numpy as np
import pytest

from hpcnet.kernels import cpu, reference
from tests.close import assert_close

RNG = np.random.default_rng(77)

SHAPES = [  # n, c, h, w, o, k, stride, pad, groups
    (2, 3, 7, 7, 4, 3, 1, 1, 1),
    (3, 6, 8, 6, 4, 5, 1, 2, 1),
    (2, 8, 9, 9, 6, 3, 2, 0, 2),
    (1, 4, 6, 6, 2, 2, 2, 1, 1),
    (2, 12, 7, 7, 6, 3, 1, 1, 3),
    (2, 5, 10, 10, 4, 5, 2, 2, 1),
    (2, 2, 6, 7, 3, 4, 1, 1, 1),  # a kernel size with no special case
    (3, 1, 9, 9, 4, 5, 1, 0, 1),
    (2, 16, 6, 6, 4, 5, 1, 2, 1),  # im2col runs of K*C = 80 floats (slice copies)
    (2, 32, 7, 7, 4, 3, 2, 1, 2),  # grouped, strided, runs of 48
]


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("path", ["im2col", "direct"])
@pytest.mark.parametrize("shape", SHAPES)
def test_conv_paths_match_reference(monkeypatch, path, shape):
    monkeypatch.setattr(cpu, "DIRECT_MAX_CHANNELS", 0 if path == "im2col" else 99)
    monkeypatch.setattr(cpu, "WINOGRAD_MIN_CHANNELS", 10**9)
    n, c, h, w, o, k, stride, pad, groups = shape
    x, wt, b = rand(n, c, h, w), rand(o, c // groups, k, k), rand(o)
    y_ref, cache_ref = reference.conv2d_forward(x, wt, b, stride, pad, groups)
    y, cache = cpu.conv2d_forward(x, wt, b, stride, pad, groups)
    assert cache[0] == (path if stride == 1 else "im2col")  # direct: stride 1 only
    assert_close(y, y_ref, rtol=1e-4, scale=1e-4)
    dy = rand(*y.shape)
    dw_ref, db_ref = np.empty_like(wt), np.empty_like(b)
    dx_ref = reference.conv2d_backward(
        dy, x.shape, cache_ref, wt, stride, pad, dw_ref, db_ref, groups
    )
    dw, db = np.empty_like(wt), np.empty_like(b)
    dx = cpu.conv2d_backward(dy, x.shape, cache, wt, stride, pad, dw, db, groups)
    assert_close(dx, dx_ref, rtol=1e-4, scale=1e-4)
    assert_close(dw, dw_ref, rtol=1e-4, scale=1e-4)
    assert_close(db, db_ref, rtol=1e-4, scale=1e-4)
    # without the input gradient: the same parameter gradients, no dx
    y, cache = cpu.conv2d_forward(x, wt, b, stride, pad, groups)
    dw2, db2 = np.empty_like(wt), np.empty_like(b)
    assert cpu.conv2d_backward(dy, x.shape, cache, wt, stride, pad, dw2, db2, groups, False) is None
    np.testing.assert_array_equal(dw2, dw)
    np.testing.assert_array_equal(db2, db)


def test_buffers_are_reused_between_steps():
    from hpcnet.kernels._cpu_conv import POOL

    x, wt, b = rand(4, 9, 6, 6), rand(5, 9, 3, 3), rand(5)
    POOL.clear()
    _, cache = cpu.conv2d_forward(x, wt, b, 1, 1)
    cols = cache[1]
    free = POOL._free.setdefault(cols.shape, [])
    assert not free  # cols is in use by the layer
    cpu.conv2d_backward(rand(4, 5, 6, 6), x.shape, cache, wt, 1, 1,
                        np.empty_like(wt), np.empty_like(b))  # fmt: skip
    assert len(free) == 2 and any(f is cols for f in free)  # cols and dcols came back
    _, cache2 = cpu.conv2d_forward(x, wt, b, 1, 1)
    assert len(free) == 1 and not any(f is cache2[1] for f in free)  # taken, not new
    POOL.give(cache2[1])
    POOL.give(cache2[1])  # a second give of the same buffer is ignored
    assert len(free) == 2


@pytest.mark.parametrize("lead", ["conv", "flatten+dense"])
def test_model_gradients_equal_with_and_without_first_layer_input_gradient(lead):
    """The first layer with parameters computes no input gradient, and the
    parameterless layers before it no backward at all (Flatten before an MLP's first
    dense layer); the parameter gradients equal every layer's full backward's."""
    from hpcnet.kernels import get_backend
    from hpcnet.nn.layers import Conv2D, Dense, Flatten, ReLU
    from hpcnet.nn.model import Model

    class Counted(Dense):
        dx_passes = 0

        def backward(self, dy, backend, need_dx=True):
            Counted.dx_passes += need_dx
            return super().backward(dy, backend, need_dx)

    be = get_backend("cpu")
    if lead == "conv":
        layers = [Conv2D(6, 3, padding=1), ReLU(), Flatten(), Dense(3)]
    else:
        layers = [Flatten(), Counted(7), ReLU(), Dense(3)]
    model = Model(layers, (2, 5, 5))
    model.init(1)
    x, y = rand(4, 2, 5, 5), RNG.integers(0, 3, 4)
    model.loss_and_grad(x, y, be)  # first layer with parameters: backward_params
    fast = model.grads.copy()
    assert Counted.dx_passes == 0  # the MLP's first dense layer: no input gradient
    logits = model.forward(x, be, train=True)
    _, d = be.softmax_xent(logits, y)
    for layer in reversed(model.layers):  # every layer's full backward
        d = layer.backward(d, be)
    assert_close(model.grads, fast, rtol=1e-6, scale=1e-7)


def test_inference_forwards_reuse_the_im2col_buffer():
    from hpcnet.kernels import get_backend
    from hpcnet.nn.layers import Conv2D
    from hpcnet.nn.model import Model

    model = Model([Conv2D(4, 3, padding=1)], (8, 5, 5))
    model.init(0)
    be, x = get_backend("cpu"), rand(3, 8, 5, 5)
    y1 = model.forward(x, be).copy()
    cols1 = model.layers[0]._cache[1]
    y2 = model.forward(x, be)  # releases the first forward's buffers, then takes them
    assert model.layers[0]._cache[1] is cols1
    np.testing.assert_array_equal(y1, y2)
