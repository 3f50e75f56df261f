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

    def init(self, rng: np.random.Generator) -> None:
        """Writes initial values into the bound parameter views."""

    def forward(self, x, backend, train: bool):
        raise NotImplementedError

    def backward(self, dy, backend):
        raise NotImplementedError

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

    def backward(self, dy, backend):
        return backend.dense_backward(
            dy, self._x, self.params["w"], self.grads["w"], self.grads["b"]
        )


class Conv2D(Layer):
    """2-D convolution, square kernel, same stride and zero padding on both axes.

    ``padding="same"`` keeps H and W at stride 1 (odd kernels only).
    """

    def __init__(self, filters: int, kernel: int, stride: int = 1, padding: int | str = 0):
        super().__init__()
        self.filters, self.kernel, self.stride = filters, kernel, stride
        if padding == "same":
            if kernel % 2 == 0:
                raise ConfigError(f"Conv2D padding='same' needs an odd kernel, got {kernel}")
            padding = kernel // 2
        self.pad = int(padding)

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"Conv2D needs a (C, H, W) input, got {in_shape}")
        c, h, w = in_shape
        oh = conv_out_size(h, self.kernel, self.stride, self.pad)
        ow = conv_out_size(w, self.kernel, self.stride, self.pad)
        if oh < 1 or ow < 1:
            raise ConfigError(f"Conv2D kernel {self.kernel} does not fit a {h}x{w} input")
        return (self.filters, oh, ow)

    def param_specs(self):
        c = self.in_shape[0]
        return [("w", (self.filters, c, self.kernel, self.kernel)), ("b", (self.filters,))]

    def init(self, rng):
        _he_normal(rng, self.params["w"], self.in_shape[0] * self.kernel**2)
        self.params["b"][...] = 0.0

    def forward(self, x, backend, train):
        self._x_shape = x.shape  # (N, C, H, W)
        y, self._cache = backend.conv2d_forward(
            x, self.params["w"], self.params["b"], self.stride, self.pad
        )
        return y  # (N, O, OH, OW)

    def backward(self, dy, backend):
        dx = backend.conv2d_backward(
            dy,
            self._x_shape,
            self._cache,
            self.params["w"],
            self.stride,
            self.pad,
            self.grads["w"],
            self.grads["b"],
        )
        self._cache = None
        return dx


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
        return x.reshape(x.shape[0], -1)

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
        keep = np.float32(1.0 - self.rate)
        self._mask = (self.rng.random(x.shape, dtype=np.float32) < keep) / keep
        return x * self._mask

    def backward(self, dy, backend):
        return dy if self._mask is None else dy * self._mask
