"""The built-in models and every other source of a model (``--model SOURCE``).

Where a model comes from:

- ``NAME``: a built-in model, one model file of ``hpcnet/nn/models/`` (the format of
  :mod:`hpcnet.nn.specs`; every built-in is written as a user's model is);
- ``FILE.toml``: a model file of the same format;
- ``FILE.py:FUNCTION`` or ``package.module:FUNCTION``: ``FUNCTION(input_shape,
  num_classes)`` returns the model's layers (:mod:`hpcnet.nn.layers` objects, or layer
  tables as in a model file). Every rank imports it: the file must be readable on
  every node.

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

import copy
import importlib
import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hpcnet.errors import ConfigError
from hpcnet.nn.from_torch import is_torch_module, layers_from_torch
from hpcnet.nn.layers import Layer
from hpcnet.nn.model import Model
from hpcnet.nn.specs import layers_from_spec, read_model_file

MODELS_DIR = Path(__file__).resolve().parent / "models"
MODELS: dict[str, Path] = {p.stem: p for p in sorted(MODELS_DIR.glob("*.toml"))}
DEFAULT_FOR_DATA = {"digits": "digits_cnn", "fashion-mnist": "2conv"}
INLINE_PREFIX = "python:"
_INLINE: dict[str, Callable] = {}  # source name -> fn(input_shape, num_classes) -> layers
_INLINE_NAMES: dict[int, str] = {}  # id of a registered object -> its source name


def register_inline(model) -> str:
    """A source name for ``model``, a list of layers, a ``torch.nn.Sequential`` (its
    architecture) or a function ``fn(input_shape, num_classes) -> layers`` held by this
    process (:func:`hpcnet.api.train`): every
    build gets a fresh copy of the layers. The same object gets the same name; names
    count registrations (``python:build#0``), so every rank that registers the same
    models in the same order names them alike.

    Raises:
        ConfigError: ``model`` is neither.
    """
    layers, label = None, ""
    if is_torch_module(model):
        layers, label = layers_from_torch(model), f"torch:{type(model).__name__}"  # checked now
    elif isinstance(model, list) and model and all(isinstance(x, Layer) for x in model):
        layers, label = model, "layers"
    if layers is not None:

        def build(input_shape, num_classes, layers=layers):
            return copy.deepcopy(layers)

    elif callable(model):
        build, label = model, getattr(model, "__name__", "function")
    else:
        raise ConfigError(
            f"model: {type(model).__name__} is no model; give a source, a list of hpcnet "
            "layers or a function (input_shape, num_classes) -> layers"
        )
    if id(model) not in _INLINE_NAMES:
        _INLINE_NAMES[id(model)] = f"{INLINE_PREFIX}{label}#{len(_INLINE)}"
        _INLINE[_INLINE_NAMES[id(model)]] = build
    return _INLINE_NAMES[id(model)]


def default_model(data_name: str) -> str:
    """The zoo model ``--model auto`` picks for a dataset name (2conv for anything unknown)."""
    return DEFAULT_FOR_DATA.get(data_name, "2conv")


def model_layers(source: str, input_shape: tuple[int, ...], num_classes: int) -> tuple[str, list]:
    """(name, layers) of model ``source`` (see the module doc) for per-sample
    ``input_shape`` and K classes.

    Raises:
        ConfigError: an unknown name, a bad model file, a Python source that cannot be
            imported or raises, a function that returns something else.
    """
    if source in MODELS:
        name, spec = read_model_file(MODELS[source])
        return name, layers_from_spec(spec, num_classes, f"built-in model {source}")
    if source in _INLINE:
        return source, _checked_layers(source, _INLINE[source], input_shape, num_classes)
    if source.endswith(".toml"):
        name, spec = read_model_file(Path(source))
        return name, layers_from_spec(spec, num_classes, source)
    if ":" in source and not source.startswith(INLINE_PREFIX):
        return source.rsplit(":", 1)[1], _checked_layers(
            source, _function(source), input_shape, num_classes
        )
    raise ConfigError(
        f"--model {source!r}: unknown model; a built-in ({', '.join(MODELS)}), a FILE.toml, "
        "or FILE.py:FUNCTION / module:FUNCTION"
    )


def _checked_layers(source: str, fn: Callable, input_shape, num_classes: int) -> list:
    """What ``fn(input_shape, num_classes)`` returns, as layers.

    Raises:
        ConfigError: it raised (its one-line message), or returned no list of layers
            or layer tables.
    """
    try:
        got = fn(tuple(input_shape), num_classes)
    except ConfigError as e:
        raise ConfigError(f"--model {source}: {e}") from None
    except Exception as e:  # noqa: BLE001  the user's code: its one-line message
        raise ConfigError(f"--model {source}: raised {type(e).__name__}: {e}") from None
    if is_torch_module(got):  # its architecture; the run initialises the weights
        try:
            return layers_from_torch(got)
        except ConfigError as e:
            raise ConfigError(f"--model {source}: {e}") from None
    if isinstance(got, list) and got and all(isinstance(x, dict) for x in got):
        return layers_from_spec(got, num_classes, source)
    if isinstance(got, list) and got and all(isinstance(x, Layer) for x in got):
        return got
    raise ConfigError(
        f"--model {source}: returned {type(got).__name__}; expected a list of hpcnet "
        "layers (hpcnet.nn.layers), of layer tables, or a torch.nn.Sequential"
    )


def _function(source: str) -> Callable:
    where, _, attr = source.rpartition(":")
    try:
        if where.endswith(".py"):
            path = Path(where)
            if not path.is_file():
                raise ConfigError(f"--model {source}: no such file {where}")
            spec = importlib.util.spec_from_file_location(f"hpcnet_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[spec.name] = module
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001  the user's code: its one-line message
        raise ConfigError(
            f"--model {source}: cannot import {where} ({type(e).__name__}: {e})"
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ConfigError(f"--model {source}: {where} has no function {attr!r}")
    return fn


def build_model(
    name: str, input_shape: tuple[int, ...], num_classes: int, layers: Any = ()
) -> Model:
    """Builds model ``name`` (a built-in or any source of the module doc) for per-sample
    ``input_shape`` (C, H, W) and K classes; or, given ``layers`` (a config file's
    ``[model] layers``: a model file's layers array), that model, called ``name``
    (``auto``: ``config``).

    Raises:
        ConfigError: a bad source, a model that does not fit the input shape (naming the
            smallest square size a built-in takes), or one whose output is not K logits.
    """
    if layers:
        name = "config" if name == "auto" else name
        label, layers = name, layers_from_spec(list(layers), num_classes, "[model] layers")
    else:
        label, layers = model_layers(name, input_shape, num_classes)
    try:
        model = Model(layers, input_shape, name=label if name in MODELS else name)
    except ConfigError as e:
        takes = smallest_input(name, input_shape[0], num_classes) if name in MODELS else None
        hint = f"; it takes images of at least {takes}x{takes}" if takes else ""
        raise ConfigError(
            f"--model {name}: does not fit input {tuple(input_shape)}: {e}{hint}"
        ) from None
    if model.output_shape != (num_classes,):
        raise ConfigError(
            f"--model {name}: its output is {model.output_shape}, but the data has "
            f'{num_classes} classes: end with a dense layer of units = "classes"'
        )
    return model


def run_model(model_cfg, data_name: str, input_shape: tuple[int, ...], num_classes: int) -> Model:
    """A run's model from its ``[model]`` settings (``name``, ``layers``): ``name``
    ``auto`` without layers is the data set's default model (:func:`default_model`).

    Raises:
        ConfigError: as :func:`build_model`.
    """
    name, layers = model_cfg.name, model_cfg.layers
    if name == "auto" and not layers:
        name = default_model(data_name)
    return build_model(name, input_shape, num_classes, layers)


def smallest_input(name: str, channels: int, num_classes: int, largest: int = 64) -> int | None:
    """The smallest square image side (pixels) zoo model ``name`` builds for, up to
    ``largest``; None when none does."""
    for side in range(1, largest + 1):
        shape = (channels, side, side)
        try:
            Model(model_layers(name, shape, num_classes)[1], shape, name=name)
        except ConfigError:
            continue
        return side
    return None
