"""The PyTorch equivalent of an hpcnet model, for weights leaving hpcnet.

:func:`torch_module` builds a ``torch.nn.Module`` that computes the same logits as
an hpcnet :class:`~hpcnet.nn.model.Model` in inference mode, and
:func:`torch_state_dict` fills it from the model's flat parameters:

>>> net = torch_module(model).eval()
>>> net.load_state_dict(torch_state_dict(model))   # or torch.load("OUT/weights.pt")
>>> logits = net(torch.from_numpy(x))              # x (N, *model.input_shape) float32

The module is a ``torch.nn.Sequential`` with one entry per hpcnet layer, so layer i
of the model is entry i and its parameters are PyTorch's ``"i.weight"`` and
``"i.bias"``. hpcnet already stores them in PyTorch's layouts: ``Dense`` w (out, in)
as ``nn.Linear.weight``, ``Conv2D`` w (out, in/groups, kh, kw) as
``nn.Conv2d.weight`` (both are cross-correlations, same zero padding), and
``Flatten`` flattens (C, H, W) in row-major order as ``nn.Flatten`` does. ``LRN``
becomes ``nn.LocalResponseNorm`` with ``alpha * size`` (PyTorch divides alpha by
the window size, Krizhevsky et al. 2012 sec. 3.3 do not); ``Towers`` becomes a
module holding the towers as ``towers.t`` (``nn.Sequential`` each), whose outputs
are concatenated along channels, so tower t's layer j's weight is
``"i.towers.t.j.weight"``; a ``Residual`` block becomes the same module adding its two
sequences (body ``towers.0``, shortcut ``towers.1``). LeakyReLU, Tanh, Sigmoid and
AvgPool2D map to their namesakes, GlobalAvgPool2D to ``AdaptiveAvgPool2d(1)`` then
``Flatten``, BatchNorm2D to ``BatchNorm2d`` (gamma, beta as ``weight``, ``bias``; the
running statistics as its ``running_mean``, ``running_var`` buffers).

PyTorch is optional: importing this module does not import it; the functions do.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU, Towers
from hpcnet.nn.model import Model
from hpcnet.nn.norm import LRN, BatchNorm2D
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D
from hpcnet.nn.residual import Residual

if TYPE_CHECKING:
    import torch

_PARAM = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}


def torch_names(model: Model) -> dict[str, str]:
    """hpcnet segment name (``model.segments``, e.g. ``"6.Dense.w"``) -> the
    equivalent module's state_dict key (``"6.weight"``), in flat-vector order."""
    return _names(model, "param_specs")


def _names(model: Model, specs: str) -> dict[str, str]:
    names = {}
    for i, layer in enumerate(model.layers):
        kind = type(layer).__name__
        for pname, _ in getattr(layer, specs)():
            *tower, last = pname.split(".")  # a block (Towers, Residual): "t.j.w"
            inner = f"towers.{'.'.join(tower)}." if tower else ""
            names[f"{i}.{kind}.{pname}"] = f"{i}.{inner}{_PARAM.get(last, last)}"
    return names


def torch_state_dict(model: Model) -> dict[str, torch.Tensor]:
    """The model's current parameters (and buffers: BatchNorm2D's running statistics)
    as a state_dict for :func:`torch_module`.

    Returns:
        key -> float32 CPU tensor, a copy (not a view of ``model.params``), with the
        layer's parameter shape, e.g. ``"0.weight"`` (out, in/groups, kh, kw).
    Raises:
        ImportError: PyTorch is not installed.
    """
    import torch

    names = torch_names(model)
    state = {names[k]: torch.from_numpy(v.copy()) for k, v in model.named_params().items()}
    buffer_names = _names(model, "buffer_specs")  # BatchNorm2D's running statistics
    for k, v in model.named_buffers().items():
        state[buffer_names[k]] = torch.from_numpy(v.copy())
        tracked = buffer_names[k].rsplit(".", 1)[0] + ".num_batches_tracked"
        state[tracked] = torch.tensor(0, dtype=torch.long)  # PyTorch's counter, unused
    return state


def torch_module(model: Model) -> torch.nn.Module:
    """A ``torch.nn.Sequential`` computing the same function as ``model`` (see the
    module doc), freshly initialised by PyTorch: load :func:`torch_state_dict` (or an
    exported ``weights.pt``) into it, and call ``.eval()`` (Dropout) before inference.

    Raises:
        ImportError: PyTorch is not installed.
        ValueError: a layer type with no PyTorch equivalent here.
    """
    import torch.nn as nn

    return nn.Sequential(*[_torch_layer(layer) for layer in model.layers])


def _torch_layer(layer: Layer):
    import torch.nn as nn

    if isinstance(layer, Dense):
        return nn.Linear(layer.in_shape[0], layer.units)
    if isinstance(layer, Conv2D):
        return nn.Conv2d(
            layer.in_shape[0],
            layer.filters,
            layer.kernel,
            stride=layer.stride,
            padding=layer.pad,
            groups=layer.groups,
        )
    if isinstance(layer, MaxPool2D):
        return nn.MaxPool2d(layer.kernel, layer.stride)  # floor mode, as conv_out_size
    if isinstance(layer, ReLU):
        return nn.ReLU()
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.rate)
    if isinstance(layer, LRN):
        return nn.LocalResponseNorm(layer.size, layer.alpha * layer.size, layer.beta, layer.k)
    if isinstance(layer, LeakyReLU):
        return nn.LeakyReLU(layer.alpha)
    if isinstance(layer, Tanh):
        return nn.Tanh()
    if isinstance(layer, Sigmoid):
        return nn.Sigmoid()
    if isinstance(layer, AvgPool2D):
        return nn.AvgPool2d(layer.kernel, layer.stride)
    if isinstance(layer, BatchNorm2D):
        return nn.BatchNorm2d(layer.in_shape[0], eps=layer.eps, momentum=layer.momentum)
    if isinstance(layer, GlobalAvgPool2D):
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if isinstance(layer, Towers | Residual):
        towers = [nn.Sequential(*[_torch_layer(sub) for sub in t]) for t in layer.towers]
        return _towers_class()(towers, add=isinstance(layer, Residual))
    raise ValueError(f"no PyTorch equivalent for hpcnet layer {type(layer).__name__}")


@functools.cache
def _towers_class():
    """The torch.nn.Module for :class:`~hpcnet.nn.layers.Towers` (defined on first use,
    so that importing this module does not need PyTorch)."""
    import torch
    import torch.nn as nn

    class TowersModule(nn.Module):
        """Parallel towers on the same input, outputs concatenated along channels (dim 1);
        with ``add``, a residual block: ``towers[0](x) + towers[1](x)`` (an empty
        ``towers[1]`` is the identity shortcut)."""

        def __init__(self, towers: list[nn.Module], add: bool = False):
            super().__init__()
            self.towers = nn.ModuleList(towers)
            self.add = add

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.add:
                return self.towers[0](x) + self.towers[1](x)
            return torch.cat([t(x) for t in self.towers], dim=1)  # (N, sum C_t, H', W')

    return TowersModule


__all__ = ["torch_module", "torch_names", "torch_state_dict"]
