"""Layers: shapes, parameter specs, forward and backward over a kernel backend.

A layer owns no memory for its parameters: :class:`hpcnet.nn.model.Model`
allocates ONE flat float32 vector for all of them (and one for the gradients)
and hands each layer views into it through :meth:`Layer.bind`. Activations are
float32 in (N, C, H, W) for images and (N, F) after :class:`Flatten`.
"""

from __future__ import annotations

import math

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.kernels.reference import conv_out_size
from hpcnet.nn.backward import backward_through  # noqa: F401  (re-exported)


class Layer:
    """Base class. Subclasses set ``param_specs`` in ``build`` and implement the passes."""

    def __init__(self):
        self.params: dict[str, np.ndarray] = {}
        self.grads: dict[str, np.ndarray] = {}
        self.in_shape: tuple[int, ...] = ()
        self.out_shape: tuple[int, ...] = ()

    def build(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Fixes the per-sample input shape; returns the per-sample output shape."""
        self.in_shape = tuple(in_shape)
        self.out_shape = self._out_shape(self.in_shape)
        return self.out_shape

    def _out_shape(self, in_shape):
        return in_shape

    def param_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each parameter, in flat-vector order."""
        return []

    def bind(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray]) -> None:
        """Gives the layer its views into the flat parameter and gradient vectors."""
        self.params, self.grads = params, grads

    def buffer_specs(self) -> list[tuple[str, tuple[int, ...]]]:
        """(name, shape) of each buffer (state that is not a parameter, e.g. batch
        normalization's running statistics), in the flat ``buffers`` vector's order."""
        return []

    def bind_buffers(self, buffers: dict[str, np.ndarray]) -> None:
        """Gives the layer its views into the model's flat ``buffers`` vector (host)."""
        self.buffers = buffers

    def init_buffers(self) -> None:
        """Writes the buffers' initial values into the bound views."""

    def init(self, rng: np.random.Generator) -> None:
        """Writes initial values into the bound parameter views."""

    def forward(self, x, backend, train: bool):
        raise NotImplementedError

    def backward(self, dy, backend):
        raise NotImplementedError

    def backward_params(self, dy, backend) -> None:
        """The backward pass for the parameter gradients only, when nothing needs the
        input gradient (the model's first layer); layers with weights skip its work."""
        self.backward(dy, backend)

    def __repr__(self) -> str:
        return f"{type(self).__name__}{self.out_shape}"


def _he_normal(rng, w, fan_in, gain=2.0):
    # He et al. 2015, "Delving Deep into Rectifiers", sec. 2.2: std = sqrt(2 / fan_in) for a
    # layer followed by ReLU; gain 1 (LeCun's std = sqrt(1 / fan_in)) for the logits layer,
    # which no ReLU halves.
    w[...] = rng.standard_normal(w.shape, dtype=np.float32) * np.float32(math.sqrt(gain / fan_in))


class Dense(Layer):
    """Fully connected: y = x w^T + b; w (out, in), b (out,)."""

    def __init__(self, units: int):
        super().__init__()
        self.units = units
        self.init_gain = 2.0  # He init; the model sets 1.0 on its logits layer

    def _out_shape(self, in_shape):
        if len(in_shape) != 1:
            raise ConfigError(f"Dense needs a flat (F,) input, got {in_shape}; add Flatten first")
        return (self.units,)

    def param_specs(self):
        return [("w", (self.units, self.in_shape[0])), ("b", (self.units,))]

    def init(self, rng):
        _he_normal(rng, self.params["w"], self.in_shape[0], self.init_gain)
        self.params["b"][...] = 0.0

    def forward(self, x, backend, train):
        self._x = x  # (N, I)
        return backend.dense_forward(x, self.params["w"], self.params["b"])  # (N, O)

    def backward(self, dy, backend, need_dx=True):
        return backend.dense_backward(
            dy, self._x, self.params["w"], self.grads["w"], self.grads["b"], need_dx
        )

    def backward_params(self, dy, backend):
        self.backward(dy, backend, need_dx=False)


class Conv2D(Layer):
    """2-D convolution, square kernel, same stride and zero padding on both axes.

    ``padding="same"`` keeps H and W at stride 1 (odd kernels only). ``groups = G``
    splits the input and output channels into G groups, output group g seeing only
    input group g; w is (filters, C/G, K, K). AlexNet ran conv 2, 4 and 5 as two
    groups, one per GPU (Krizhevsky et al. 2012, sec. 3.2 and 3.5).
    """

    def __init__(
        self,
        filters: int,
        kernel: int,
        stride: int = 1,
        padding: int | str = 0,
        groups: int = 1,
    ):
        super().__init__()
        self.filters, self.kernel, self.stride, self.groups = filters, kernel, stride, groups
        if padding == "same":
            if kernel % 2 == 0:
                raise ConfigError(f"Conv2D padding='same' needs an odd kernel, got {kernel}")
            padding = kernel // 2
        self.pad = int(padding)
        if groups < 1 or filters % groups:
            raise ConfigError(f"Conv2D groups={groups} must be >= 1 and divide filters={filters}")

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"Conv2D needs a (C, H, W) input, got {in_shape}")
        c, h, w = in_shape
        if c % self.groups:
            raise ConfigError(f"Conv2D groups={self.groups} does not divide {c} input channels")
        oh = conv_out_size(h, self.kernel, self.stride, self.pad)
        ow = conv_out_size(w, self.kernel, self.stride, self.pad)
        if oh < 1 or ow < 1:
            raise ConfigError(f"Conv2D kernel {self.kernel} does not fit a {h}x{w} input")
        return (self.filters, oh, ow)

    def param_specs(self):
        cg = self.in_shape[0] // self.groups
        return [("w", (self.filters, cg, self.kernel, self.kernel)), ("b", (self.filters,))]

    def init(self, rng):
        _he_normal(rng, self.params["w"], self.in_shape[0] // self.groups * self.kernel**2)
        self.params["b"][...] = 0.0

    def forward(self, x, backend, train):
        if getattr(self, "_cache", None) is not None:  # the last forward had no backward
            backend.conv2d_release(self._cache)
        self._x_shape = x.shape  # (N, C, H, W)
        y, self._cache = backend.conv2d_forward(
            x, self.params["w"], self.params["b"], self.stride, self.pad, self.groups
        )
        return y  # (N, O, OH, OW)

    def backward(self, dy, backend, need_dx=True):
        dx = backend.conv2d_backward(
            dy,
            self._x_shape,
            self._cache,
            self.params["w"],
            self.stride,
            self.pad,
            self.grads["w"],
            self.grads["b"],
            self.groups,
            need_dx,
        )
        self._cache = None
        return dx

    def backward_params(self, dy, backend):
        self.backward(dy, backend, need_dx=False)


class MaxPool2D(Layer):
    """Max pooling, k x k windows with the given stride (default: stride = k)."""

    def __init__(self, kernel: int, stride: int | None = None):
        super().__init__()
        self.kernel, self.stride = kernel, stride or kernel

    def _out_shape(self, in_shape):
        c, h, w = in_shape
        oh = conv_out_size(h, self.kernel, self.stride, 0)
        ow = conv_out_size(w, self.kernel, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ConfigError(f"MaxPool2D window {self.kernel} does not fit a {h}x{w} input")
        return (c, oh, ow)

    def forward(self, x, backend, train):
        self._x_shape = x.shape
        y, self._arg = backend.maxpool2d_forward(x, self.kernel, self.stride)
        return y

    def backward(self, dy, backend):
        return backend.maxpool2d_backward(dy, self._arg, self._x_shape)


class ReLU(Layer):
    """max(x, 0)."""

    def forward(self, x, backend, train):
        self._y = backend.relu_forward(x)
        return self._y

    def backward(self, dy, backend):
        return backend.relu_backward(dy, self._y)


class Flatten(Layer):
    """(N, C, H, W) -> (N, C*H*W), a view."""

    def _out_shape(self, in_shape):
        return (int(np.prod(in_shape)),)

    def forward(self, x, backend, train):
        self._shape = x.shape
        return x.reshape(x.shape[0], int(np.prod(x.shape[1:])))  # explicit: device arrays too

    def backward(self, dy, backend):
        return dy.reshape(self._shape)


class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): zero with probability ``rate``,
    scale survivors by 1/(1-rate) in training; the identity at evaluation.

    The mask comes from ``self.rng`` (a numpy Generator the model seeds per
    replica), so a run is reproducible from its seed.
    """

    def __init__(self, rate: float):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rate = rate
        self.rng = np.random.default_rng(0)

    def forward(self, x, backend, train):
        if not train or self.rate == 0.0:
            self._mask = None
            return x
        self._mask = self.draw_mask(x.shape)
        return backend.dropout_forward(x, self._mask)

    def draw_mask(self, shape: tuple[int, ...]) -> np.ndarray:
        """The next training mask from ``self.rng``: ``shape`` float32, each entry 0 or
        1/(1-rate). A model partition that holds a slice of the activation draws the
        whole batch's mask and keeps its slice, so it matches the unpartitioned model."""
        keep = np.float32(1.0 - self.rate)
        mask = self.rng.random(shape, dtype=np.float32) < keep
        return np.multiply(mask, np.float32(1.0) / keep, dtype=np.float32)

    def backward(self, dy, backend):
        return dy if self._mask is None else backend.dropout_backward(dy, self._mask)


class Block(Layer):
    """A layer made of layer sequences (``self.towers``: a list of layer lists) whose
    parameters stay in the model's one flat vector: its parameter specs are the
    sequences' specs in order, named ``"{t}.{i}.{name}"`` (sequence t, its layer i), so
    each sequence's parameters are one contiguous range. :class:`Towers` and
    :class:`hpcnet.nn.residual.Residual` are blocks."""

    towers: list[list[Layer]]

    def sublayers(self):
        """(sequence, index, layer) for every layer of every sequence, in flat-vector order."""
        return [
            (t, i, layer) for t, tower in enumerate(self.towers) for i, layer in enumerate(tower)
        ]

    def param_specs(self):
        return [
            (f"{t}.{i}.{name}", shape)
            for t, i, layer in self.sublayers()
            for name, shape in layer.param_specs()
        ]

    def bind(self, params, grads):
        super().bind(params, grads)
        for t, i, layer in self.sublayers():
            prefix = f"{t}.{i}."
            layer.bind(
                {k[len(prefix) :]: v for k, v in params.items() if k.startswith(prefix)},
                {k[len(prefix) :]: v for k, v in grads.items() if k.startswith(prefix)},
            )

    def buffer_specs(self):
        return [
            (f"{t}.{i}.{name}", shape)
            for t, i, layer in self.sublayers()
            for name, shape in layer.buffer_specs()
        ]

    def bind_buffers(self, buffers):
        super().bind_buffers(buffers)
        for t, i, layer in self.sublayers():
            prefix = f"{t}.{i}."
            layer.bind_buffers(
                {k[len(prefix) :]: v for k, v in buffers.items() if k.startswith(prefix)}
            )

    def init(self, rng):
        for _, _, layer in self.sublayers():
            layer.init(rng)

    def init_buffers(self):
        for _, _, layer in self.sublayers():
            layer.init_buffers()

    def backward_params(self, dy, backend):
        self.backward(dy, backend, need_dx=False)


class Towers(Block):
    """K parallel towers (layer sequences) on the same input, outputs concatenated.

    The master layer of a "wider" network (Dean et al. 2012, sec. 3; Krizhevsky et
    al. 2012 ran two such towers, one per GPU): tower t maps the input (C, H, W) to
    (C_t, H', W') and the outputs are concatenated along the channel axis, so every
    tower must end with the same H', W' (or all end flat, (F_t,)). The backward
    splits dy by channels, runs each tower backward and sums their input gradients.

    Parameters stay in the model's one flat vector: this layer's parameter specs are
    the towers' specs in order, named ``"{t}.{i}.{name}"`` (tower t, its layer i), so
    each tower's parameters are one contiguous range (a model-parallel run can give
    each tower its own rank and slice).
    """

    def __init__(self, towers: list[list[Layer]]):
        super().__init__()
        if not towers or any(not t for t in towers):
            raise ConfigError("Towers needs at least one tower, each with at least one layer")
        self.towers = [list(t) for t in towers]

    def _out_shape(self, in_shape):
        outs = []
        for t, tower in enumerate(self.towers):
            shape = in_shape
            for layer in tower:
                shape = layer.build(shape)
            outs.append(shape)
            if shape[1:] != outs[0][1:]:
                raise ConfigError(
                    f"Towers: tower {t} ends with shape {shape}, tower 0 with {outs[0]}; "
                    "all must agree except in channels"
                )
        self.channels = [s[0] for s in outs]
        return (sum(self.channels), *outs[0][1:])

    def forward(self, x, backend, train):
        outs = []
        for tower in self.towers:
            h = x
            for layer in tower:
                h = layer.forward(h, backend, train)
            outs.append(h)
        return backend.concat_forward(outs)  # (N, sum C_t, H', W')

    def backward(self, dy, backend, need_dx=True):
        dx = None
        for tower, d in zip(self.towers, backend.concat_backward(dy, self.channels), strict=True):
            d = backward_through(tower, d, backend, need_dx)
            if need_dx:
                dx = d if dx is None else backend.add(dx, d)
        return dx  # (N, C, H, W)
