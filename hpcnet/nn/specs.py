"""Models described as data: a list of layer tables, each a ``type`` and that layer's
constructor arguments, the format of a model file (``--model FILE.toml``) and of the
built-in models (``hpcnet/nn/models/*.toml``).

::

    name = "small_cnn"
    [[layers]]
    type = "conv2d"
    filters = 32
    kernel = 3
    padding = "same"
    [[layers]]
    type = "relu"
    [[layers]]
    type = "maxpool2d"
    kernel = 2
    [[layers]]
    type = "flatten"
    [[layers]]
    type = "dense"
    units = "classes"     # the data set's number of classes

Argument names are the Python classes' constructor arguments (:data:`LAYER_TYPES`);
``units = "classes"`` stands for the number of classes of the data; a ``residual``
layer holds ``layers`` and an optional ``shortcut`` (layer lists,
:class:`hpcnet.nn.residual.Residual`), a ``towers`` layer ``towers``, a list of layer
lists (:class:`hpcnet.nn.layers.Towers`).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from hpcnet.errors import ConfigError
from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU, Towers
from hpcnet.nn.norm import LRN, BatchNorm2D
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D
from hpcnet.nn.residual import Residual

LAYER_TYPES: dict[str, type[Layer]] = {
    "conv2d": Conv2D,
    "dense": Dense,
    "relu": ReLU,
    "leaky_relu": LeakyReLU,
    "tanh": Tanh,
    "sigmoid": Sigmoid,
    "maxpool2d": MaxPool2D,
    "avgpool2d": AvgPool2D,
    "global_avgpool2d": GlobalAvgPool2D,
    "batchnorm2d": BatchNorm2D,
    "dropout": Dropout,
    "flatten": Flatten,
    "lrn": LRN,
    "residual": Residual,
    "towers": Towers,
}
CLASSES = "classes"  # ``units = "classes"``: the data's number of classes


def layer_arguments(kind: str) -> list[tuple[str, Any]]:
    """(name, default or ``inspect.Parameter.empty``) of layer type ``kind``'s arguments."""
    sig = inspect.signature(LAYER_TYPES[kind].__init__)
    return [(p.name, p.default) for p in list(sig.parameters.values())[1:]]


def layers_from_spec(spec: Any, num_classes: int, where: str) -> list[Layer]:
    """The layers a spec describes (a list of tables, see the module doc).

    Args:
        spec: the ``layers`` array.
        num_classes: what ``units = "classes"`` stands for.
        where: the source, named in errors (a file, a built-in model's name).
    Raises:
        ConfigError: one line naming ``where``, the layer's index (``layers[3]``;
            ``layers[2].towers[0][1]``, ``layers[4].layers[1]`` inside a block) and
            what is wrong: an unknown type (listing the known ones), an unknown or
            missing argument, a bad value.
    """
    return _layers(spec, num_classes, where, "layers")


def _layers(spec: Any, k: int, where: str, at: str) -> list[Layer]:
    if not isinstance(spec, list) or not spec:
        raise ConfigError(f"{where}: {at} must be a non-empty array of layer tables")
    return [_layer(item, k, where, f"{at}[{i}]") for i, item in enumerate(spec)]


def _layer(item: Any, k: int, where: str, at: str) -> Layer:
    if not isinstance(item, dict) or "type" not in item:
        raise ConfigError(f'{where}: {at} must be a table with a type (e.g. type = "relu")')
    kind = item["type"]
    if kind not in LAYER_TYPES:
        raise ConfigError(
            f"{where}: {at}: unknown layer type {kind!r}; known: {', '.join(LAYER_TYPES)}"
        )
    args = {key: v for key, v in item.items() if key != "type"}
    known = dict(layer_arguments(kind))
    for key in args:
        if key not in known:
            listed = ", ".join(known) or "none"
            raise ConfigError(f"{where}: {at} ({kind}): no argument {key!r}; it takes {listed}")
    for key, default in known.items():
        if default is inspect.Parameter.empty and key not in args:
            raise ConfigError(f"{where}: {at} ({kind}): missing argument {key!r}")
    if kind == "dense" and args.get("units") == CLASSES:
        args["units"] = k
    if kind == "residual":
        for key in ("layers", "shortcut"):
            if key in args and args[key] is not None:
                args[key] = _layers(args[key], k, where, f"{at}.{key}")
    if kind == "towers":
        towers = args.get("towers")
        if not isinstance(towers, list):
            raise ConfigError(f"{where}: {at} (towers): towers must be a list of layer lists")
        args["towers"] = [_layers(t, k, where, f"{at}.towers[{j}]") for j, t in enumerate(towers)]
    try:
        return LAYER_TYPES[kind](**args)
    except ConfigError as e:
        raise ConfigError(f"{where}: {at} ({kind}): {e}") from None
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {at} ({kind}): bad arguments {args} ({e})") from None


def read_model_file(path: Path) -> tuple[str, list]:
    """(name, layers spec) of a model file: TOML with ``layers`` and an optional
    ``name`` (default: the file's stem).

    Raises:
        ConfigError: no such file, invalid TOML, or no ``layers`` array.
    """
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib

    try:
        data = tomllib.loads(path.read_text())
    except OSError as e:
        raise ConfigError(f"--model {path}: cannot read it ({e.strerror or e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"--model {path}: not valid TOML ({e})") from None
    extra = sorted(set(data) - {"name", "layers"})
    if extra:
        raise ConfigError(f"{path}: unknown key {extra[0]!r} (a model file has name and layers)")
    if "layers" not in data:
        raise ConfigError(f"{path}: no layers array (a model file has [[layers]] tables)")
    return str(data.get("name", path.stem)), data["layers"]
