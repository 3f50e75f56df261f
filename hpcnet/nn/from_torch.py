"""PyTorch modules into hpcnet models: :func:`from_torch` (architecture and weights),
:func:`layers_from_torch` (architecture only), the reverse of
:mod:`hpcnet.nn.torch_equiv`.

A ``torch.nn.Sequential`` (nested ones allowed) of these modules converts, each to its
hpcnet layer, in order:

========================== =========================================================
PyTorch                    hpcnet
========================== =========================================================
``Conv2d``                 ``Conv2D`` (square kernel, equal stride and padding on both
                           axes, zero padding, no dilation; ``bias=False`` becomes a
                           zero bias, which then trains)
``Linear``                 ``Dense``
``ReLU``, ``LeakyReLU``,   ``ReLU``, ``LeakyReLU``, ``Tanh``, ``Sigmoid``
``Tanh``, ``Sigmoid``
``MaxPool2d``, ``AvgPool2d`` ``MaxPool2D``, ``AvgPool2D`` (no padding, no ceil mode)
``AdaptiveAvgPool2d(1)``   ``GlobalAvgPool2D`` (its (C,) output makes a ``Flatten``
                           after it a no-op)
``Dropout``                ``Dropout``
``Flatten``                ``Flatten`` (from dim 1)
``LocalResponseNorm``      ``LRN`` with ``alpha / size`` (hpcnet's alpha follows
                           Krizhevsky et al. 2012, PyTorch's divides by the window)
``BatchNorm2d``            ``BatchNorm2D`` (affine, tracking running statistics, a
                           numeric momentum), its running statistics copied too
========================== =========================================================

Anything else is one line naming the module and its position (``features.3``).
PyTorch is imported by these functions only.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU
from hpcnet.nn.model import Model
from hpcnet.nn.norm import LRN, BatchNorm2D
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D

SUPPORTED = (
    "Conv2d, Linear, ReLU, LeakyReLU, Tanh, Sigmoid, MaxPool2d, AvgPool2d, "
    "AdaptiveAvgPool2d(1), Dropout, Flatten, LocalResponseNorm, BatchNorm2d, Sequential"
)


def _leaves(module, prefix: str = "") -> list[tuple[str, Any]]:
    """(position, module) of every non-Sequential module, in order."""
    import torch.nn as nn

    if isinstance(module, nn.Sequential):
        out = []
        for name, child in module.named_children():
            out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix or type(module).__name__, module)]


def _pair(value, what: str, where: str) -> int:
    a, b = (value, value) if isinstance(value, int) else tuple(value)
    if a != b:
        raise ConfigError(f"torch module {where}: {what} {value} differs between the axes")
    return int(a)


def _layer(where: str, m) -> Layer:
    import torch.nn as nn

    def refuse(why: str) -> ConfigError:
        return ConfigError(f"torch module {where} ({type(m).__name__}): {why}")

    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros" or _pair(m.dilation, "dilation", where) != 1:
            raise refuse("only zero padding and no dilation convert")
        if isinstance(m.padding, str):
            raise refuse(f"padding={m.padding!r}; give the padding as a number")
        return Conv2D(
            m.out_channels,
            _pair(m.kernel_size, "kernel_size", where),
            _pair(m.stride, "stride", where),
            _pair(m.padding, "padding", where),
            m.groups,
        )
    if isinstance(m, nn.Linear):
        return Dense(m.out_features)
    if isinstance(m, nn.LeakyReLU):
        return LeakyReLU(m.negative_slope)
    simple = {nn.ReLU: ReLU, nn.Tanh: Tanh, nn.Sigmoid: Sigmoid, nn.Flatten: Flatten}
    for kind, make in simple.items():
        if type(m) is kind:
            if kind is nn.Flatten and (m.start_dim != 1 or m.end_dim != -1):
                raise refuse("only Flatten(start_dim=1) converts")
            return make()
    if isinstance(m, nn.MaxPool2d | nn.AvgPool2d):
        if _pair(m.padding, "padding", where) or m.ceil_mode:
            raise refuse("only pooling without padding or ceil mode converts")
        if isinstance(m, nn.MaxPool2d) and _pair(m.dilation, "dilation", where) != 1:
            raise refuse("only pooling without dilation converts")
        k = _pair(m.kernel_size, "kernel_size", where)
        stride = _pair(m.stride if m.stride is not None else k, "stride", where)
        return (MaxPool2D if isinstance(m, nn.MaxPool2d) else AvgPool2D)(k, stride)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        if m.output_size not in (1, (1, 1)):
            raise refuse("only AdaptiveAvgPool2d(1) converts (global average pooling)")
        return GlobalAvgPool2D()
    if isinstance(m, nn.Dropout):
        return Dropout(m.p)
    if isinstance(m, nn.BatchNorm2d):
        if not m.affine or not m.track_running_stats or m.momentum is None:
            raise refuse(
                "only affine=True, track_running_stats=True and a numeric momentum convert"
            )
        return BatchNorm2D(m.eps, m.momentum)
    if isinstance(m, nn.LocalResponseNorm):
        return LRN(m.size, m.alpha / m.size, m.beta, m.k)
    raise refuse(f"not supported; supported: {SUPPORTED}")


def layers_from_torch(module) -> list[Layer]:
    """The hpcnet layers of ``module`` (a ``torch.nn.Sequential``), unbuilt, without
    weights.

    Raises:
        ConfigError: a module that does not convert, naming it and its position.
    """
    return _converted(module)[0]


def _converted(module) -> tuple[list[Layer], list]:
    import torch.nn as nn

    if not isinstance(module, nn.Sequential):
        raise ConfigError(
            f"torch module {type(module).__name__}: only a torch.nn.Sequential converts "
            "(nested Sequentials allowed)"
        )
    pairs = [(_layer(where, m), m) for where, m in _leaves(module)]
    if not pairs:
        raise ConfigError("torch module: an empty Sequential")
    return [layer for layer, _ in pairs], [m for _, m in pairs]


def from_torch(module, input_shape: tuple[int, ...], name: str | None = None) -> Model:
    """An hpcnet model computing what ``module`` computes, with its weights.

    Args:
        module: a ``torch.nn.Sequential`` of the modules in the module doc.
        input_shape: per-sample (C, H, W) (or (F,)).
        name: the model's name (default: ``torch:`` and the module's class name).
    Returns:
        The built :class:`~hpcnet.nn.model.Model`, its flat vector holding ``module``'s
        weights (float32) and its ``buffers`` BatchNorm2d's running statistics;
        ``export --format torch`` of a run that trains it gives a module of the same
        layout back (:mod:`hpcnet.nn.torch_equiv`).
    Raises:
        ConfigError: a module that does not convert, or a shape that does not fit.
    """
    layers, modules = _converted(module)
    model = Model(layers, input_shape, name=name or f"torch:{type(module).__name__}")
    for layer, m in zip(layers, modules, strict=True):
        if isinstance(layer, Conv2D | Dense):
            layer.params["w"][...] = m.weight.detach().cpu().numpy().astype(np.float32)
            bias = m.bias.detach().cpu().numpy() if m.bias is not None else 0.0
            layer.params["b"][...] = bias
        elif isinstance(layer, BatchNorm2D):
            layer.params["gamma"][...] = m.weight.detach().cpu().numpy()
            layer.params["beta"][...] = m.bias.detach().cpu().numpy()
            layer.buffers["running_mean"][...] = m.running_mean.detach().cpu().numpy()
            layer.buffers["running_var"][...] = m.running_var.detach().cpu().numpy()
    return model


def is_torch_module(obj) -> bool:
    """Whether ``obj`` is a ``torch.nn.Module`` (without importing PyTorch if it is not
    loaded: then nothing can be one)."""
    import sys

    torch = sys.modules.get("torch")
    return torch is not None and isinstance(obj, torch.nn.Module)
