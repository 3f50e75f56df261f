"""Every layer's backward against central finite differences (float64 math via the
reference backend, so differences are not drowned in float32 rounding)."""

import numpy as np
import pytest

from hpcnet.kernels import get_backend
from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU
from hpcnet.nn.model import Model
from hpcnet.nn.norm import BatchNorm2D
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D
from hpcnet.nn.residual import Residual

EPS = 1e-2


def _loss(model, x, y, backend, dropout_seed=None):
    if dropout_seed is not None:
        model.seed_dropout(dropout_seed, 0)
    logits = model.forward(x, backend, train=True)
    return backend.softmax_xent(logits, y)[0]


def _check(layers, in_shape, backend_name, n=3, k=4, seed=0, dropout_seed=None, n_checks=25):
    be = get_backend(backend_name)
    model = Model(layers + [Flatten(), Dense(k)], in_shape)
    model.init(seed)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, *in_shape)).astype(np.float32)
    y = rng.integers(0, k, n)
    # analytic gradients of params and of the input
    if dropout_seed is not None:
        model.seed_dropout(dropout_seed, 0)
    logits = model.forward(x, be, train=True)
    _, d = be.softmax_xent(logits, y)
    for layer in reversed(model.layers):
        d = layer.backward(d, be)
    dx = d
    grads = model.grads.copy()
    idx = rng.choice(model.n_params, size=min(n_checks, model.n_params), replace=False)
    for i in idx:
        old = model.params[i]
        model.params[i] = old + EPS
        lp = _loss(model, x, y, be, dropout_seed)
        model.params[i] = old - EPS
        lm = _loss(model, x, y, be, dropout_seed)
        model.params[i] = old
        num = (lp - lm) / (2 * EPS)
        assert grads[i] == pytest.approx(num, rel=2e-2, abs=2e-3), f"param {i}"
    flat = x.reshape(-1)
    for j in rng.choice(flat.size, size=min(n_checks, flat.size), replace=False):
        old = flat[j]
        flat[j] = old + EPS
        lp = _loss(model, x, y, be, dropout_seed)
        flat[j] = old - EPS
        lm = _loss(model, x, y, be, dropout_seed)
        flat[j] = old
        assert dx.reshape(-1)[j] == pytest.approx((lp - lm) / (2 * EPS), rel=2e-2, abs=2e-3)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
@pytest.mark.parametrize(
    "case",
    [
        ("dense", lambda: [Flatten(), Dense(5)], (6,)),
        ("conv_same", lambda: [Conv2D(3, 3, padding="same")], (2, 5, 5)),
        ("conv_stride", lambda: [Conv2D(2, 3, stride=2, padding=1)], (2, 7, 7)),
        ("relu", lambda: [Conv2D(3, 3), ReLU()], (1, 6, 6)),
        ("maxpool", lambda: [MaxPool2D(2)], (2, 6, 6)),
        ("maxpool_overlap", lambda: [MaxPool2D(3, 2)], (1, 7, 7)),
        ("leaky_relu", lambda: [Conv2D(3, 3), LeakyReLU(0.1)], (1, 6, 6)),
        ("tanh", lambda: [Conv2D(3, 3), Tanh()], (1, 6, 6)),
        ("sigmoid", lambda: [Conv2D(3, 3), Sigmoid()], (1, 6, 6)),
        ("avgpool", lambda: [AvgPool2D(2)], (2, 6, 6)),
        ("avgpool_overlap", lambda: [AvgPool2D(3, 2)], (1, 7, 7)),
        ("global_avgpool", lambda: [Conv2D(3, 3), GlobalAvgPool2D()], (2, 5, 6)),
        ("batchnorm", lambda: [Conv2D(3, 3), BatchNorm2D(), Tanh()], (2, 6, 6)),
        (
            "residual_batchnorm",
            lambda: [
                Residual(
                    [Conv2D(2, 3, padding="same"), BatchNorm2D(), Tanh()],
                    [Conv2D(2, 1), BatchNorm2D()],
                )
            ],
            (3, 5, 5),
        ),
        (
            "residual_identity",
            lambda: [
                Residual([Conv2D(2, 3, padding="same"), Tanh(), Conv2D(2, 3, padding="same")])
            ],
            (2, 5, 5),
        ),
        (
            "residual_projection",
            lambda: [
                Residual([Conv2D(4, 3, stride=2, padding=1), Tanh()], [Conv2D(4, 1, stride=2)])
            ],
            (2, 6, 6),
        ),
    ],
    ids=lambda c: c[0] if isinstance(c, tuple) else c,
)
def test_backward_matches_finite_differences(case, backend):
    _, make, shape = case
    _check(make(), shape, backend)


def test_dropout_backward_matches_finite_differences():
    _check([Flatten(), Dense(6), Dropout(0.5)], (5,), "reference", dropout_seed=7)


def test_flat_vector_views():
    model = Model([Flatten(), Dense(3), ReLU(), Dense(2)], (4,))
    model.init(0)
    w = model.layers[1].params["w"]
    assert np.shares_memory(w, model.params) and w.shape == (3, 4)
    assert np.shares_memory(model.layers[1].grads["w"], model.grads)
    assert model.n_params == 3 * 4 + 3 + 2 * 3 + 2
    model.params[:] = 0
    assert (w == 0).all()
