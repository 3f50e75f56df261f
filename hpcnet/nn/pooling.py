"""Average pooling: over k x k windows, and over each whole channel (global average
pooling, Lin et al. 2014, "Network In Network", sec. 3.2: the last feature maps
averaged into one value per channel, in place of fully connected layers)."""

from __future__ import annotations

from hpcnet.errors import ConfigError
from hpcnet.kernels.reference import conv_out_size
from hpcnet.nn.layers import Layer


class AvgPool2D(Layer):
    """Average pooling, k x k windows with the given stride (default: stride = k), no
    padding; (C, H, W) -> (C, OH, OW)."""

    def __init__(self, kernel: int, stride: int | None = None):
        super().__init__()
        self.kernel, self.stride = kernel, stride or kernel
        if self.kernel < 1 or self.stride < 1:
            raise ConfigError(f"AvgPool2D kernel and stride must be >= 1, got {kernel}, {stride}")

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"AvgPool2D needs a (C, H, W) input, got {in_shape}")
        c, h, w = in_shape
        oh = conv_out_size(h, self.kernel, self.stride, 0)
        ow = conv_out_size(w, self.kernel, self.stride, 0)
        if oh < 1 or ow < 1:
            raise ConfigError(f"AvgPool2D window {self.kernel} does not fit a {h}x{w} input")
        return (c, oh, ow)

    def forward(self, x, backend, train):
        self._x_shape = x.shape
        return backend.avgpool2d_forward(x, self.kernel, self.stride)

    def backward(self, dy, backend):
        return backend.avgpool2d_backward(dy, self._x_shape, self.kernel, self.stride)


class GlobalAvgPool2D(Layer):
    """The mean of each channel: (C, H, W) -> (C,), flat (a dense layer may follow)."""

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"GlobalAvgPool2D needs a (C, H, W) input, got {in_shape}")
        return (in_shape[0],)

    def forward(self, x, backend, train):
        self._x_shape = x.shape
        return backend.global_avgpool2d_forward(x)

    def backward(self, dy, backend):
        return backend.global_avgpool2d_backward(dy, self._x_shape)
