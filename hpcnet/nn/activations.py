"""Elementwise activations beyond ReLU: leaky ReLU (Maas et al. 2013, "Rectifier
Nonlinearities Improve Neural Network Acoustic Models"), tanh and the logistic sigmoid.
Each keeps its output for the backward, which needs only it (formulas:
:func:`hpcnet.kernels.reference.activation_forward`)."""

from __future__ import annotations

from hpcnet.errors import ConfigError
from hpcnet.nn.layers import Layer


class _Activation(Layer):
    kind = ""
    alpha = 0.0

    def forward(self, x, backend, train):
        self._y = backend.activation_forward(x, self.kind, self.alpha)
        return self._y

    def backward(self, dy, backend):
        dx = backend.activation_backward(dy, self._y, self.kind, self.alpha)
        self._y = None
        return dx


class LeakyReLU(_Activation):
    """x for x > 0, else ``negative_slope`` x (PyTorch's default slope, 0.01)."""

    kind = "leaky_relu"

    def __init__(self, negative_slope: float = 0.01):
        super().__init__()
        if not 0.0 <= negative_slope < 1.0:
            raise ConfigError(f"LeakyReLU negative_slope must be in [0, 1), got {negative_slope}")
        self.alpha = float(negative_slope)


class Tanh(_Activation):
    """tanh(x)."""

    kind = "tanh"


class Sigmoid(_Activation):
    """1 / (1 + exp(-x))."""

    kind = "sigmoid"
