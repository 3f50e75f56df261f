"""The model zoo: named architectures, built for a dataset's input shape.

Models:
    mlp: 784-512-512-10 style multilayer perceptron (two hidden ReLU layers of 512).
    wide_mlp: two hidden ReLU layers of 4096 (about 20 M parameters on 28x28 inputs):
        the wide fully connected model the model-parallel benchmark splits.
    lenet: LeNet-5 style (LeCun et al. 1998): conv 6 5x5 -> pool -> conv 16 5x5 -> pool
        -> 120 -> 84 -> K, ReLU activations.
    2conv: the TensorFlow tutorial CNN listed in Zalando's Fashion-MNIST benchmark (0.916):
        conv 32 5x5 same -> pool 2 -> conv 64 5x5 same -> pool 2 -> dense 1024 -> dropout 0.4
        -> dense K.
    digits_cnn: a small CNN for 8x8 inputs (the UCI digits): conv 16 3x3 same -> pool 2
        -> conv 32 3x3 same -> dense 64 -> dense K.
    linear: softmax regression (no hidden layer), for convex tests.
    alexnet: AlexNet's topology (Krizhevsky et al. 2012, sec. 3.5, Fig. 2) scaled to
        28x28 / 32x32 inputs and two CPU cores: conv 32 5x5 -> LRN -> overlapping pool
        3/2 -> conv 64 5x5 (2 groups) -> LRN -> pool 3/2 -> conv 96 3x3 -> conv 96 3x3
        (2 groups) -> conv 64 3x3 (2 groups) -> pool 3/2 -> dense 256 -> dropout 0.5
        -> dense 256 -> dropout 0.5 -> dense K; ReLU after every conv and hidden dense
        layer, LRN after the ReLU as in the paper (sec. 3.3). The paper's widths
        (96, 256, 384, 384, 256; 4096, 4096) divided by 3 and 16.
    towers: a "wider" network (Dean et al. 2012, sec. 3): 4 parallel towers on the same
        input, each conv 16 5x5 same -> pool 2 -> conv 32 5x5 same -> pool 2, whose
        outputs a master layer (:class:`Towers`) concatenates to (128, 7, 7), then
        dense 256 -> dense K. Each tower's parameters are one contiguous range of the
        flat vector (a model-parallel run can place one tower per rank).
"""

from __future__ import annotations

from collections.abc import Callable

from hpcnet.errors import ConfigError
from hpcnet.nn.layers import LRN, Conv2D, Dense, Dropout, Flatten, MaxPool2D, ReLU, Towers
from hpcnet.nn.model import Model


def _mlp(shape, k):
    return [Flatten(), Dense(512), ReLU(), Dense(512), ReLU(), Dense(k)]


def _wide_mlp(shape, k):
    return [Flatten(), Dense(4096), ReLU(), Dense(4096), ReLU(), Dense(k)]


def _lenet(shape, k):
    return [
        Conv2D(6, 5, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Conv2D(16, 5),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(120),
        ReLU(),
        Dense(84),
        ReLU(),
        Dense(k),
    ]


def _two_conv(shape, k):
    return [
        Conv2D(32, 5, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Conv2D(64, 5, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(1024),
        ReLU(),
        Dropout(0.4),
        Dense(k),
    ]


def _digits_cnn(shape, k):
    return [
        Conv2D(16, 3, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Conv2D(32, 3, padding="same"),
        ReLU(),
        Flatten(),
        Dense(64),
        ReLU(),
        Dense(k),
    ]


def _linear(shape, k):
    return [Flatten(), Dense(k)]


def _alexnet(shape, k):
    return [
        Conv2D(32, 5, padding="same"),
        ReLU(),
        LRN(5, alpha=1e-4, beta=0.75, k=2.0),
        MaxPool2D(3, 2),  # overlapping pooling, sec. 3.4
        Conv2D(64, 5, padding="same", groups=2),
        ReLU(),
        LRN(5, alpha=1e-4, beta=0.75, k=2.0),
        MaxPool2D(3, 2),
        Conv2D(96, 3, padding="same"),
        ReLU(),
        Conv2D(96, 3, padding="same", groups=2),
        ReLU(),
        Conv2D(64, 3, padding="same", groups=2),
        ReLU(),
        MaxPool2D(3, 2),
        Flatten(),
        Dense(256),
        ReLU(),
        Dropout(0.5),
        Dense(256),
        ReLU(),
        Dropout(0.5),
        Dense(k),
    ]


def towers_layers(n_towers: int, k: int) -> list:
    """The ``towers`` model with ``n_towers`` towers, for K classes (see the module doc)."""
    tower = [
        [
            Conv2D(16, 5, padding="same"),
            ReLU(),
            MaxPool2D(2),
            Conv2D(32, 5, padding="same"),
            ReLU(),
            MaxPool2D(2),
        ]
        for _ in range(n_towers)
    ]
    return [Towers(tower), Flatten(), Dense(256), ReLU(), Dense(k)]


def _towers(shape, k):
    return towers_layers(4, k)


MODELS: dict[str, Callable] = {
    "mlp": _mlp,
    "wide_mlp": _wide_mlp,
    "lenet": _lenet,
    "2conv": _two_conv,
    "digits_cnn": _digits_cnn,
    "linear": _linear,
    "alexnet": _alexnet,
    "towers": _towers,
}
DEFAULT_FOR_DATA = {"digits": "digits_cnn", "fashion-mnist": "2conv"}


def default_model(data_name: str) -> str:
    """The zoo model ``--model auto`` picks for a dataset name (2conv for anything unknown)."""
    return DEFAULT_FOR_DATA.get(data_name, "2conv")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """Builds zoo model ``name`` for per-sample ``input_shape`` (C, H, W) and K classes.

    Raises:
        ConfigError: unknown name, or a model that does not fit the input shape.
    """
    if name not in MODELS:
        raise ConfigError(f"--model {name!r}: unknown model; choose one of {', '.join(MODELS)}")
    try:
        return Model(MODELS[name](input_shape, num_classes), input_shape, name=name)
    except ConfigError as e:
        takes = smallest_input(name, input_shape[0], num_classes)
        hint = f"; it takes images of at least {takes}x{takes}" if takes else ""
        raise ConfigError(
            f"--model {name}: does not fit input {tuple(input_shape)}: {e}{hint}"
        ) from None


def smallest_input(name: str, channels: int, num_classes: int, largest: int = 64) -> int | None:
    """The smallest square image side (pixels) zoo model ``name`` builds for, up to
    ``largest``; None when none does."""
    for side in range(1, largest + 1):
        shape = (channels, side, side)
        try:
            Model(MODELS[name](shape, num_classes), shape, name=name)
        except ConfigError:
            continue
        return side
    return None
