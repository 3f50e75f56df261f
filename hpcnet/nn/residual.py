"""The residual block (He et al. 2016, "Deep Residual Learning for Image Recognition",
sec. 3.2): ``y = F(x) + shortcut(x)``, the shortcut the identity or, where F changes
the shape, a projection (a 1x1 convolution, eq. 2)."""

from __future__ import annotations

from hpcnet.errors import ConfigError
from hpcnet.nn.layers import Block, Layer, backward_through


class Residual(Block):
    """``layers(x) + shortcut(x)``; no ``shortcut``: the identity, so ``layers`` must
    keep the shape. Its parameters are the body's then the shortcut's, one contiguous
    range of the flat vector (:class:`hpcnet.nn.layers.Block`: ``"0.{i}.{name}"`` for
    the body, ``"1.{i}.{name}"`` for the shortcut).

    Model parallelism: the pipeline scheme places the block whole in one stage; the
    neurons scheme refuses it (its parameters would be computed whole on every
    partition).
    """

    def __init__(self, layers: list[Layer], shortcut: list[Layer] | None = None):
        super().__init__()
        if not layers:
            raise ConfigError("Residual needs at least one layer")
        self.towers = [list(layers), list(shortcut or [])]

    @property
    def body(self) -> list[Layer]:
        return self.towers[0]

    @property
    def shortcut(self) -> list[Layer]:
        return self.towers[1]

    def _out_shape(self, in_shape):
        shape = in_shape
        for layer in self.body:
            shape = layer.build(shape)
        side = in_shape
        for layer in self.shortcut:
            side = layer.build(side)
        if side != shape:
            what = "its shortcut gives" if self.shortcut else "its input (the identity) is"
            raise ConfigError(
                f"Residual: its layers give {shape} but {what} {side}; add a shortcut "
                "that makes them agree (e.g. a 1x1 conv2d)"
            )
        return shape

    def forward(self, x, backend, train):
        h = x
        for layer in self.body:
            h = layer.forward(h, backend, train)
        s = x
        for layer in self.shortcut:
            s = layer.forward(s, backend, train)
        return backend.add(h, s)

    def backward(self, dy, backend, need_dx=True):
        d_body = backward_through(self.body, dy, backend, need_dx)
        if self.shortcut:
            d_side = backward_through(self.shortcut, dy, backend, need_dx)
        else:
            d_side = dy
        return backend.add(d_body, d_side) if need_dx else None
