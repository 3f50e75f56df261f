"""The "neurons" scheme: every layer split across the partitions of a replica.

DistBelief's model parallelism (Dean et al. 2012, sec. 3, Fig. 1): each partition
computes a slice of every layer's outputs, and only activations that cross a
partition boundary travel. Here:

- ``Dense(U)``: partition p computes output neurons ``[u_p, u_{p+1})`` (rows of w);
- ``Conv2D(F)``: output channels ``[f_p, f_{p+1})``; with G groups and ``M | G``
  each partition takes whole groups, and when the incoming activation is already
  split along the same group boundaries no exchange is needed at all (AlexNet's
  two-GPU layout, Krizhevsky et al. 2012 sec. 3.2); otherwise a partition's
  filters are cut at group edges into pieces;
- ``Towers``: partition p runs towers ``[t_p, t_{p+1})`` (one tower per partition
  when M = K), the master layer is the gather after them (the wider networks of
  the seed paper);
- ReLU, MaxPool2D, Flatten, Dropout act on whichever slice a partition holds
  (Dropout draws the whole batch's mask and keeps its slice);
- LRN (it mixes neighbouring channels) and any other layer run on the whole
  activation, computed alike on every partition.

Cuts are even (sizes differ by at most one, the larger first), so M may not exceed
any split layer's outputs (neurons, channels, towers): a clear error otherwise.

Exchanges. An activation split along axis 1 is made whole by an *allgather* where
the next layer needs all of it (a split Dense or Conv2D, LRN, the loss). Its
backward is a *reduce-scatter* (each partition's split layer contributed a partial
input gradient; the sum of a partition's slice is what it needs), except at the
loss, whose gradient every partition computes whole, so the backward is a slice.
With S the activation's bytes per step (batch x per-sample size x 4) and s_p this
partition's share, one step makes partition p:

- at every allgather: send ``(M - 1) s_p`` and receive ``S - s_p``;
- at every reduce-scatter (every allgather but the last): send ``S - s_p``, receive
  ``(M - 1) s_p``.

Summed over the plan this is :meth:`NeuronPartition.expected_bytes`; the tests check
it against the bytes counted by :class:`hpcnet.comm.exchange.Exchange`.
"""

from __future__ import annotations

import numpy as np

from hpcnet.comm.exchange import Exchange, even_bounds
from hpcnet.errors import ConfigError
from hpcnet.modelpar.base import PartitionedModel, layer_ranges, merge_ranges
from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.layers import (
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    ReLU,
    Towers,
    backward_through,
)
from hpcnet.nn.model import Model
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D

# act on each channel (or feature) on its own
_LOCAL = (ReLU, MaxPool2D, LeakyReLU, Tanh, Sigmoid, AvgPool2D, GlobalAvgPool2D)


def _too_many(m: int, i: int, layer: Layer, n: int, what: str) -> ConfigError:
    return ConfigError(
        f"--partitions {m}: layer {i} ({type(layer).__name__}) has only {n} {what} to split; "
        "use fewer partitions, or --partition-scheme pipeline"
    )


def _split_width(layer: Layer, m: int) -> tuple[int, str] | None:
    """How many units the neurons scheme splits ``layer`` into (None: not split, or
    split by whole groups, which M divides)."""
    if isinstance(layer, Dense):
        return layer.units, "output neurons"
    if isinstance(layer, Conv2D):
        if layer.groups > 1 and layer.groups % m == 0:
            return None
        return layer.filters, "output channels"
    if isinstance(layer, Towers):
        return len(layer.towers), "towers"
    return None


def check_neurons(model: Model, m: int) -> None:
    """Raises ConfigError unless every split layer of ``model`` has at least ``m``
    outputs (neurons, channels, towers). Needs no communication."""
    for i, layer in enumerate(model.layers):
        if layer.param_specs() and not isinstance(layer, Dense | Conv2D | Towers):
            raise ConfigError(
                f"--partitions {m} (neurons): layer {i} ({type(layer).__name__}) has "
                "parameters this scheme cannot split; use --partition-scheme pipeline"
            )
        width = _split_width(layer, m)
        if width is not None and width[0] < m:
            raise _too_many(m, i, layer, *width)


def _per_sample(shape: tuple[int, ...]) -> int:
    return int(np.prod(shape, dtype=np.int64))


class _Gather:
    """Split -> whole along axis 1: allgather forward; reduce-scatter (partial input
    gradients) or a slice (whole, identical gradients) backward."""

    kind = "gather"

    def __init__(self, ex: Exchange, bounds: list[int], shape: tuple[int, ...], partial: bool):
        self.ex, self.bounds, self.shape, self.partial = ex, bounds, shape, partial

    def forward(self, x, backend, train):
        return self.ex.allgather(x, self.bounds, "allgather of activations")

    def backward(self, dy, partial, backend, need_dx=True):
        if partial:
            return self.ex.reduce_scatter(dy, self.bounds, "reduce-scatter of gradients"), False
        p = self.ex.rank
        return np.ascontiguousarray(dy[:, self.bounds[p] : self.bounds[p + 1]]), False

    def describe(self) -> str:
        back = "reduce-scatter" if self.partial else "slice"
        return f"allgather {self.shape} (backward: {back})"


class _Whole:
    """A layer run as is: on the whole activation (alike on every partition), or on
    this partition's slice when it acts per channel. Its backward is linear in dy, so
    a partial gradient stays partial."""

    kind = "whole"

    def __init__(self, layer: Layer, on_slice: bool):
        self.layer, self.on_slice = layer, on_slice

    def forward(self, x, backend, train):
        return self.layer.forward(x, backend, train)

    def backward(self, dy, partial, backend, need_dx=True):
        return self.layer.backward(dy, backend), partial

    def describe(self) -> str:
        where = "on its slice" if self.on_slice else "whole, on every partition"
        return f"{type(self.layer).__name__} {where}"


class _SliceDropout:
    """Dropout on a slice ``[lo, hi)`` of axis 1: the whole batch's mask is drawn (the
    same random numbers as the unpartitioned layer) and this slice of it kept."""

    kind = "whole"

    def __init__(self, layer: Dropout, lo: int, hi: int):
        self.layer, self.lo, self.hi = layer, lo, hi
        self._mask = None

    def forward(self, x, backend, train):
        if not train or self.layer.rate == 0.0:
            self._mask = None
            return x
        full = self.layer.draw_mask((x.shape[0], *self.layer.in_shape))
        self._mask = np.ascontiguousarray(full[:, self.lo : self.hi])
        return backend.dropout_forward(x, self._mask)

    def backward(self, dy, partial, backend, need_dx=True):
        if self._mask is None:
            return dy, partial
        return backend.dropout_backward(dy, self._mask), partial

    def describe(self) -> str:
        return f"Dropout on its slice [{self.lo}, {self.hi})"


class _Split:
    """This partition's output slice of a Dense/Conv2D/Towers layer, as pieces:
    ``(in_lo, in_hi, layers)``, each reading input channels ``[in_lo, in_hi)`` and
    producing the next output channels. With ``local`` the input is this partition's
    own slice (no exchange; a whole input gradient for it); otherwise the input is the
    whole activation and the input gradient is this partition's partial sum."""

    kind = "split"

    def __init__(self, pieces, in_shape, local: bool, name: str, out_range):
        self.pieces, self.in_shape, self.local = pieces, tuple(in_shape), local
        self.name, self.out_range = name, out_range
        self._sizes: list[int] = []

    def forward(self, x, backend, train):
        outs = []
        for lo, hi, layers in self.pieces:
            h = x if self.local or (lo == 0 and hi == x.shape[1]) else x[:, lo:hi]
            h = np.ascontiguousarray(h)
            for layer in layers:
                h = layer.forward(h, backend, train)
            outs.append(h)
        self._sizes = [o.shape[1] for o in outs]
        return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)

    def backward(self, dy, partial, backend, need_dx=True):
        dx = None
        at = 0
        for (lo, hi, layers), size in zip(self.pieces, self._sizes, strict=True):
            d = dy if len(self.pieces) == 1 else np.ascontiguousarray(dy[:, at : at + size])
            at += size
            d = backward_through(layers, d, backend, need_dx)
            if not need_dx:
                continue
            if self.local:
                dx = d
                continue
            if dx is None:
                dx = np.zeros((dy.shape[0], *self.in_shape), np.float32)
            dx[:, lo:hi] += d
        return dx, not self.local

    def describe(self) -> str:
        src = "its own input slice" if self.local else "the whole input"
        return f"{self.name} outputs [{self.out_range[0]}, {self.out_range[1]}) from {src}"


def _bind_rows(sub: Layer, layer: Layer, lo: int, hi: int, in_shape) -> Layer:
    """Builds ``sub`` for ``in_shape`` and binds it to rows ``[lo, hi)`` of ``layer``'s
    w and b (views into the flat vectors: the sub-layer trains the real parameters)."""
    sub.build(tuple(in_shape))
    p, g = layer.params, layer.grads
    sub.bind({"w": p["w"][lo:hi], "b": p["b"][lo:hi]}, {"w": g["w"][lo:hi], "b": g["b"][lo:hi]})
    for name, shape in sub.param_specs():
        if sub.params[name].shape != tuple(shape):
            raise AssertionError(f"{name}: bound {sub.params[name].shape}, needs {shape}")
    return sub


class NeuronPartition(PartitionedModel):
    """Partition ``exchange.rank`` of ``model`` under the neurons scheme (module docs).

    Raises:
        ConfigError: M larger than a split layer's output neurons, channels or towers.
    """

    scheme = "neurons"

    def __init__(self, model: Model, exchange: Exchange):
        super().__init__(model, exchange)
        check_neurons(model, self.partitions)
        self.ops: list = []
        self._plan(model.layers, model.input_shape)
        self.owned = merge_ranges(self._ranges)
        self.first_split = next(i for i, op in enumerate(self.ops) if op.kind == "split")

    # ---- the plan ---------------------------------------------------------------------
    def _plan(self, layers: list[Layer], input_shape) -> None:
        m, p, ex = self.partitions, self.partition, self.ex
        self._ranges: list[tuple[int, int]] = []
        flat = self.model.params
        bounds: list[int] | None = None  # None: the whole activation; else the split of axis 1
        shape = tuple(input_shape)
        pending_gathers: list[_Gather] = []

        def gather() -> None:
            nonlocal bounds
            if bounds is not None:
                g = _Gather(ex, bounds, shape, partial=False)
                self.ops.append(g)
                pending_gathers.append(g)
                bounds = None

        def split_op(op: _Split) -> None:
            for g in pending_gathers:  # a split layer downstream: their backward sums
                g.partial = True
            pending_gathers.clear()
            self.ops.append(op)

        for i, layer in enumerate(layers):
            out = layer.out_shape
            if isinstance(layer, Dense):
                gather()
                ob = even_bounds(layer.units, m)
                sub = _bind_rows(Dense(ob[p + 1] - ob[p]), layer, ob[p], ob[p + 1], shape)
                sub.init_gain = layer.init_gain
                self._ranges += layer_ranges(flat, sub)
                split_op(_Split([(0, shape[0], [sub])], shape, False, f"{i} Dense", ob[p : p + 2]))
                bounds = ob
            elif isinstance(layer, Conv2D):
                op, ob = self._split_conv(i, layer, shape, bounds)
                if not op.local:
                    gather()
                split_op(op)
                bounds = ob
            elif isinstance(layer, Towers):
                k = len(layer.towers)
                gather()
                tb = even_bounds(k, m)
                cb = np.concatenate([[0], np.cumsum(layer.channels)]).astype(int).tolist()
                pieces = []
                for t in range(tb[p], tb[p + 1]):
                    pieces.append((0, shape[0], layer.towers[t]))
                    for sub in layer.towers[t]:
                        self._ranges += layer_ranges(flat, sub)
                ob = [cb[tb[q]] for q in range(m + 1)]
                name = f"{i} Towers {tb[p]}..{tb[p + 1] - 1}"
                split_op(_Split(pieces, shape, False, name, ob[p : p + 2]))
                bounds = ob
            elif isinstance(layer, _LOCAL):
                self.ops.append(_Whole(layer, on_slice=bounds is not None))
            elif isinstance(layer, Flatten):
                if bounds is not None:
                    per = _per_sample(shape[1:])
                    bounds = [b * per for b in bounds]
                self.ops.append(_Whole(layer, on_slice=bounds is not None))
            elif isinstance(layer, Dropout) and bounds is not None:
                self.ops.append(_SliceDropout(layer, bounds[p], bounds[p + 1]))
            else:  # LRN, Dropout on a whole activation, anything else: whole, everywhere
                gather()
                self.ops.append(_Whole(layer, on_slice=False))
            shape = out
        gather()  # the loss needs all logits (backward: a slice, no exchange)

    def _split_conv(self, i: int, layer: Conv2D, shape, bounds):
        m, p = self.partitions, self.partition
        f, g, c = layer.filters, layer.groups, shape[0]
        fg, cg = f // g, c // g
        flat = self.model.params

        def conv(filters, groups, lo, hi, in_c):
            sub = Conv2D(filters, layer.kernel, layer.stride, layer.pad, groups)
            out = _bind_rows(sub, layer, lo, hi, (in_c, *shape[1:]))
            self._ranges.extend(layer_ranges(flat, out))
            return out

        if g > 1 and g % m == 0:  # whole groups per partition
            gb = even_bounds(g, m)
            ob = [b * fg for b in gb]
            ib = [b * cg for b in gb]
            lo, hi = ib[p], ib[p + 1]
            sub = conv(ob[p + 1] - ob[p], gb[p + 1] - gb[p], ob[p], ob[p + 1], hi - lo)
            local = bounds == ib
            name = f"{i} Conv2D groups {gb[p]}..{gb[p + 1] - 1}"
            return _Split([(lo, hi, [sub])], shape, local, name, ob[p : p + 2]), ob
        ob = even_bounds(f, m)
        pieces = []
        for grp in range(g):  # cut this partition's filters at group edges
            a, b = max(ob[p], grp * fg), min(ob[p + 1], (grp + 1) * fg)
            if a < b:
                pieces.append((grp * cg, (grp + 1) * cg, [conv(b - a, 1, a, b, cg)]))
        name = f"{i} Conv2D" + (f" ({len(pieces)} group pieces)" if g > 1 else "")
        return _Split(pieces, shape, False, name, ob[p : p + 2]), ob

    # ---- passes -----------------------------------------------------------------------
    def forward(self, x: np.ndarray, backend, train: bool = False) -> np.ndarray:
        for op in self.ops:
            x = op.forward(x, backend, train)
        return x

    def _loss_and_grad(self, x, y, backend, train):
        logits = self.forward(x, backend, train)
        loss, d = backend.softmax_xent(logits, y)
        correct = int((logits.argmax(axis=1) == y).sum())
        partial = False
        for idx in range(len(self.ops) - 1, self.first_split - 1, -1):
            d, partial = self.ops[idx].backward(d, partial, backend, idx > self.first_split)
        return loss, correct

    # ---- reports ----------------------------------------------------------------------
    def plan_text(self) -> list[str]:
        return [op.describe() for op in self.ops]

    def expected_bytes(self, batch: int) -> tuple[int, int]:
        m, p = self.partitions, self.partition
        sent = recv = 0
        for op in self.ops:
            if op.kind != "gather":
                continue
            per = batch * 4 * _per_sample(op.shape[1:])  # bytes per unit of axis 1
            whole, mine = op.bounds[-1] * per, (op.bounds[p + 1] - op.bounds[p]) * per
            sent, recv = sent + (m - 1) * mine, recv + whole - mine
            if op.partial:
                sent, recv = sent + whole - mine, recv + (m - 1) * mine
        return sent, recv
