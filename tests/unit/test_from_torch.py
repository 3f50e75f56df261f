"""PyTorch -> hpcnet: a torch.nn.Sequential converts with its weights and computes the
same logits; the round trip back (torch_equiv) gives PyTorch's own weights; a module
that does not convert is one line naming it and its position."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.kernels import get_backend
from hpcnet.nn import from_torch
from hpcnet.nn.torch_equiv import torch_module, torch_state_dict
from hpcnet.nn.zoo import build_model

torch = pytest.importorskip("torch")
nn = torch.nn


def _net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.LeakyReLU(0.05),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
            nn.Tanh(),
            nn.AvgPool2d(3, 2),
            nn.LocalResponseNorm(3, 1e-3, 0.75, 2.0),
        ),
        nn.Conv2d(8, 12, 1),
        nn.Sigmoid(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(12, 16),
        nn.ReLU(),
        nn.Linear(16, 10),
    )


def test_a_torch_sequential_converts_with_its_weights():
    net = _net().eval()
    model = from_torch(net, (3, 12, 12))
    x = np.random.default_rng(0).standard_normal((5, 3, 12, 12)).astype(np.float32)
    want = net(torch.from_numpy(x)).detach().numpy()
    got = model.forward(x, get_backend("cpu"), train=False)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # and back: the exported module holds PyTorch's weights (a zero bias where it had none)
    back = torch_module(model).eval()
    back.load_state_dict(torch_state_dict(model))
    np.testing.assert_allclose(back(torch.from_numpy(x)).detach().numpy(), want, atol=1e-5)
    n_torch = sum(p.numel() for p in net.parameters())
    assert model.n_params == n_torch + 8  # the conv without a bias gets one


def test_batchnorm_converts_with_its_running_statistics():
    torch.manual_seed(1)
    net = nn.Sequential(
        nn.Conv2d(2, 6, 3, padding=1),
        nn.BatchNorm2d(6, eps=1e-3, momentum=0.2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(6, 4),
    )
    with torch.no_grad():  # running statistics and an affine map of PyTorch's making
        for _ in range(3):
            net.train()(torch.randn(8, 2, 7, 7) * 2 + 1)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.5, 0.5)
    model = from_torch(net.eval(), (2, 7, 7))
    x = np.random.default_rng(2).standard_normal((5, 2, 7, 7)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        model.forward(x, get_backend("cpu"), train=False), want, rtol=1e-4, atol=1e-5
    )
    back = torch_module(model).eval()
    state = torch_state_dict(model)
    assert set(state) == set(net.state_dict())
    back.load_state_dict(state)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), want, atol=1e-5)
    with pytest.raises(ConfigError, match=r"BatchNorm2d\): only affine=True"):
        from_torch(nn.Sequential(nn.BatchNorm2d(2, affine=False)), (2, 4, 4))


def test_a_python_source_may_return_a_torch_module(tmp_path):
    (tmp_path / "tnet.py").write_text(
        "import torch.nn as nn\n"
        "def build(shape, k):\n"
        "    return nn.Sequential(nn.Conv2d(shape[0], 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Flatten(), nn.Linear(4 * shape[1] * shape[2], k))\n"
        "def bad(shape, k):\n"
        "    return nn.Sequential(nn.Flatten(), nn.BatchNorm1d(64), nn.Linear(64, k))\n"
    )
    m = build_model(f"{tmp_path / 'tnet.py'}:build", (1, 8, 8), 10)
    assert [type(layer).__name__ for layer in m.layers] == ["Conv2D", "ReLU", "Flatten", "Dense"]
    with pytest.raises(ConfigError, match="torch module 1 \\(BatchNorm1d\\): not supported"):
        build_model(f"{tmp_path / 'tnet.py'}:bad", (1, 8, 8), 10)


@pytest.mark.parametrize(
    "module, message",
    [
        (nn.Sequential(nn.Conv2d(1, 2, (3, 5))), "kernel_size \\(3, 5\\) differs between the axes"),
        (nn.Sequential(nn.ReLU(), nn.Sequential(nn.GELU())), "torch module 1.0 \\(GELU\\)"),
        (nn.Sequential(nn.MaxPool2d(2, padding=1)), "only pooling without padding"),
        (nn.Conv2d(1, 2, 3), "only a torch.nn.Sequential converts"),
    ],
)
def test_what_does_not_convert_is_one_line(module, message):
    with pytest.raises(ConfigError, match=message):
        from_torch(module, (1, 8, 8))
