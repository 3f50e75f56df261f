"""Every zoo model builds for Fashion-MNIST's (1, 28, 28) and learns a fixed batch."""

import numpy as np
import pytest

from hpcnet.kernels import get_backend
from hpcnet.nn.layers import Conv2D, Dropout, MaxPool2D, Towers
from hpcnet.nn.norm import LRN
from hpcnet.nn.zoo import MODELS, build_model
from hpcnet.optim.sgd import SGD

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_and_trains_a_few_steps(name):
    model = build_model(name, (1, 28, 28), 10)
    assert model.output_shape == (10,)
    model.init(0)
    model.seed_dropout(0, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, 8)
    be = get_backend("cpu")
    opt = SGD(model.n_params, momentum=0.9)
    first, _ = model.loss_and_grad(x, y, be, train=False)
    for _ in range(4):
        model.loss_and_grad(x, y, be)
        assert np.isfinite(model.grads).all()
        opt.step(model.params, model.grads, 0.01)
    last, _ = model.loss_and_grad(x, y, be, train=False)
    assert last < first  # memorising one batch


def test_alexnet_topology():
    model = build_model("alexnet", (3, 32, 32), 10)
    convs = [layer for layer in model.layers if isinstance(layer, Conv2D)]
    assert [c.groups for c in convs] == [1, 2, 1, 2, 2]  # sec. 3.5: conv 2, 4, 5 split
    kinds = [type(layer) for layer in model.layers]
    # LRN after conv 1 and 2 (after their ReLU), overlapping pooling after LRNs and conv 5
    assert kinds.count(LRN) == 2
    pools = [layer for layer in model.layers if isinstance(layer, MaxPool2D)]
    assert len(pools) == 3 and all((p.kernel, p.stride) == (3, 2) for p in pools)
    assert [d.rate for d in model.layers if isinstance(d, Dropout)] == [0.5, 0.5]


def test_towers_model_has_parallel_towers():
    model = build_model("towers", (1, 28, 28), 10)
    assert isinstance(model.layers[0], Towers) and len(model.layers[0].towers) == 4
    assert model.layers[0].out_shape == (128, 7, 7)


@pytest.mark.parametrize("name", ["lenet", "alexnet"])
def test_a_model_too_big_for_the_images_names_the_sizes_it_takes(name):
    from hpcnet.errors import ConfigError
    from hpcnet.nn.zoo import build_model, smallest_input

    side = smallest_input(name, 3, 10)
    build_model(name, (3, side, side), 10)  # the size it names builds ...
    with pytest.raises(ConfigError, match=f"at least {side}x{side}"):
        build_model(name, (3, side - 1, side - 1), 10)  # ... one pixel less does not
