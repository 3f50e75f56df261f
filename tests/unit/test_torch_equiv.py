"""The PyTorch equivalent of every cheap zoo model: hpcnet's parameters loaded into it
give hpcnet's own logits on real rows (the shipped UCI digits), in inference mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from hpcnet.data import normalize, open_dataset, read_rows
from hpcnet.kernels import get_backend
from hpcnet.nn.model import Model
from hpcnet.nn.norm import LRN
from hpcnet.nn.torch_equiv import torch_module, torch_names, torch_state_dict
from hpcnet.nn.zoo import build_model
from tests.close import assert_close
from tests.conftest import DIGITS

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.timeout(120)

# wide_mlp (20 M parameters) is mlp's layers, wider: mlp covers it
MODELS_8x8 = ["digits_cnn", "linear", "mlp"]
_MODELS = Path(__file__).resolve().parents[1] / "models"
# and the layers added after AlexNet's (activations, average pooling, residual blocks)
MODELS_28x28 = ["mlp", "lenet", "2conv", "alexnet", "towers"] + [
    str(_MODELS / "new_layers.toml"),
    str(_MODELS / "residual.toml"),
]


def _digits_rows(n: int, size: int) -> np.ndarray:
    """(n, 1, size, size) float32: the first n test digits, normalised as training does;
    for size 28, each 8x8 digit scaled up 3x (nearest) and zero-padded to 28x28."""
    info = open_dataset(DIGITS)
    images, _ = read_rows(DIGITS, "test", 0, n)  # (n, 1, 8, 8) uint8
    x = normalize(images, info.mean, info.std)
    if size == 28:
        x = np.kron(x, np.ones((1, 1, 3, 3), np.float32))  # (n, 1, 24, 24)
        x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    return np.ascontiguousarray(x, np.float32)


def _model(name: str, size: int, seed: int = 0) -> Model:
    model = build_model(name, (1, size, size), 10)
    model.init(seed)
    rng = np.random.default_rng(seed)
    for seg, p in model.named_params().items():  # zero biases would not test their mapping
        if seg.endswith(".b"):
            p[...] = rng.normal(0.0, 0.1, p.shape)
    return model


def _torch_logits(model: Model, x: np.ndarray) -> np.ndarray:
    net = torch_module(model).eval()
    net.load_state_dict(torch_state_dict(model))  # strict: every name and shape fits
    with torch.no_grad():
        return net(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(
    "name,size", [(m, 8) for m in MODELS_8x8] + [(m, 28) for m in MODELS_28x28]
)
def test_torch_module_gives_hpcnets_logits(name, size):
    model = _model(name, size)
    x = _digits_rows(16, size)
    ref = model.forward(x, get_backend("cpu"), train=False)  # (16, 10)
    got = _torch_logits(model, x)
    assert got.shape == ref.shape == (16, 10)
    assert np.abs(ref).max() > 0.1  # logits that say something
    assert_close(got, ref, rtol=1e-3, scale=1e-4, err_msg=name)


def test_state_dict_holds_pytorch_layouts():
    model = _model("lenet", 28)
    state = torch_state_dict(model)
    assert list(state) == list(torch_names(model).values())
    assert tuple(state["0.weight"].shape) == (6, 1, 5, 5)  # Conv2d (out, in, kh, kw)
    assert tuple(state["7.weight"].shape) == (120, 16 * 5 * 5)  # Linear (out, in)
    assert all(t.dtype == torch.float32 for t in state.values())
    flat = np.concatenate([t.numpy().ravel() for t in state.values()])
    np.testing.assert_array_equal(flat, model.params)  # every value, in order
    state["0.bias"][0] += 1.0  # a copy: hpcnet's parameters stay
    assert model.params[6 * 25] != state["0.bias"][0].item()


def test_towers_names_reach_inside_the_towers():
    model = _model("towers", 28)
    names = torch_names(model)
    assert names["0.Towers.3.3.w"] == "0.towers.3.3.weight"  # tower 3, its second conv
    assert names["4.Dense.b"] == "4.bias"


def test_lrn_alpha_follows_pytorchs_convention():
    """PyTorch divides alpha by the window size; with large inputs a wrong alpha (or k)
    changes the output by far more than the tolerance."""
    layer = LRN(5, alpha=1e-4, beta=0.75, k=2.0)
    layer.build((12, 3, 3))
    x = np.random.default_rng(1).normal(0, 60.0, (2, 12, 3, 3)).astype(np.float32)
    ref = layer.forward(x, get_backend("cpu"), train=False)
    net = torch_module(Model([LRN(5, alpha=1e-4, beta=0.75, k=2.0)], (12, 3, 3)))
    with torch.no_grad():
        got = net(torch.from_numpy(x)).numpy()
    assert_close(got, ref, rtol=1e-4, err_msg="LRN")
    wrong = torch.nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0)(torch.from_numpy(x))
    assert np.abs(wrong.numpy() - ref).max() > 100 * 1e-4 * np.abs(ref).max()


def _new_layers():
    from hpcnet.nn import (
        AvgPool2D,
        BatchNorm2D,
        Conv2D,
        GlobalAvgPool2D,
        LeakyReLU,
        Residual,
        Sigmoid,
        Tanh,
    )

    return {
        "leaky_relu": lambda: LeakyReLU(0.1),
        "tanh": Tanh,
        "sigmoid": Sigmoid,
        "avgpool": lambda: AvgPool2D(2),
        "avgpool_overlap": lambda: AvgPool2D(3, 2),
        "global_avgpool": GlobalAvgPool2D,
        "residual": lambda: Residual([Conv2D(3, 3, padding="same"), Tanh()]),
        "residual_projection": lambda: Residual(
            [Conv2D(4, 3, stride=2, padding=1), Sigmoid()], [Conv2D(4, 1, stride=2)]
        ),
        "batchnorm2d": lambda: BatchNorm2D(eps=1e-3, momentum=0.3),
        "residual_batchnorm": lambda: Residual(
            [Conv2D(4, 3, padding=1), BatchNorm2D()], [Conv2D(4, 1), BatchNorm2D()]
        ),
    }


@pytest.mark.parametrize("kind", list(_new_layers()))
def test_new_layers_forward_and_backward_agree_with_pytorch_in_float64(kind):
    # the layer alone (its torch twin in float64): outputs, input gradients and, for a
    # residual block, its parameter gradients, through the NumPy reference backend
    layer = _new_layers()[kind]()
    shape = (3, 7, 7)
    model = Model([layer], shape)
    model.init(5)
    rng = np.random.default_rng(9)
    for name, v in model.named_params().items():  # BatchNorm: gamma, beta other than 1, 0
        if name.endswith(("gamma", "beta")):
            v[...] = rng.uniform(0.5, 1.5, v.shape)
    x = (rng.standard_normal((4, *shape)) * 2).astype(np.float32)
    be = get_backend("reference")
    y = model.forward(x, be, train=True)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = layer.backward(dy, be)
    net = torch_module(model).double()
    net.load_state_dict({k: v.double() for k, v in torch_state_dict(model).items()})
    tx = torch.from_numpy(x.astype(np.float64)).requires_grad_(True)
    ty = net(tx)
    ty.backward(torch.from_numpy(dy.astype(np.float64)))
    np.testing.assert_allclose(y, ty.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(dx, tx.grad.numpy(), rtol=1e-4, atol=1e-6)
    names = torch_names(model)
    grads = dict(net.named_parameters())
    for seg, lo, hi in model.segments:
        want = grads[names[seg]].grad.numpy().reshape(-1)
        np.testing.assert_allclose(model.grads[lo:hi], want, rtol=1e-4, atol=1e-6)


def test_batchnorm_running_statistics_and_evaluation_agree_with_pytorch():
    # two training-mode batches move the running statistics as PyTorch's do (unbiased
    # variance, momentum); evaluation then uses them, in both frameworks
    from hpcnet.nn import BatchNorm2D

    shape = (3, 5, 4)
    model = Model([BatchNorm2D(momentum=0.2)], shape)
    model.init(0)
    net = torch_module(model).double()
    net.load_state_dict({k: v.double() for k, v in torch_state_dict(model).items()})
    rng = np.random.default_rng(4)
    be = get_backend("cpu")
    for _ in range(2):
        x = (rng.standard_normal((6, *shape)) * 3 + 1).astype(np.float32)
        model.forward(x, be, train=True)
        net.train()(torch.from_numpy(x.astype(np.float64)))
    bn = net[0]
    mean, var = model.named_buffers().values()
    np.testing.assert_allclose(mean, bn.running_mean.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, bn.running_var.numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(var, 1.0) and not np.allclose(mean, 0.0)  # they did move
    x = (rng.standard_normal((2, *shape)) * 3 + 1).astype(np.float32)
    with torch.no_grad():
        want = net.eval()(torch.from_numpy(x.astype(np.float64))).numpy()
    np.testing.assert_allclose(model.forward(x, be, train=False), want, rtol=1e-5, atol=1e-5)
    # the batch's statistics would give something else: the test can fail
    assert not np.allclose(model.forward(x, be, train=True), want, rtol=1e-3, atol=1e-3)
