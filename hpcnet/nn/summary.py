"""A model's summary table (as Keras' ``model.summary()`` or torchinfo print it): per
layer its type, output shape, parameters and multiply-adds per sample; the totals; and
the memory a replica and a parameter shard need for it (``info --model SOURCE``)."""

from __future__ import annotations

import numpy as np

from hpcnet.nn.layers import Block, Conv2D, Dense, Layer
from hpcnet.nn.model import Model

BYTES = 4  # float32


def multiply_adds(layer: Layer) -> int:
    """Multiply-adds per sample of ``layer``'s forward pass (its weights' products: a
    dense layer in x out, a convolution out_C x OH x OW x (in_C / groups) x K x K; a
    block (``Towers``, ``Residual``) its layers' sum; layers without weights 0, as
    torchinfo counts)."""
    if isinstance(layer, Dense):
        return layer.units * layer.in_shape[0]
    if isinstance(layer, Conv2D):
        o, oh, ow = layer.out_shape
        return o * oh * ow * (layer.in_shape[0] // layer.groups) * layer.kernel**2
    if isinstance(layer, Block):
        return sum(multiply_adds(sub) for _, _, sub in layer.sublayers())
    return 0


def _params(layer: Layer) -> int:
    return sum(int(np.prod(s)) for _, s in layer.param_specs())


def _mib(n_bytes: float) -> str:
    """``n_bytes`` in KiB, MiB or GiB, whichever reads best."""
    for unit, size in (("GiB", 2**30), ("MiB", 2**20)):
        if n_bytes >= size:
            return f"{n_bytes / size:,.1f} {unit}"
    return f"{n_bytes / 2**10:,.1f} KiB"


def summary_table(model: Model, shards: int = 1, replicas: int = 1) -> str:
    """The summary of ``model`` (built for its input shape), as lines of text.

    Memory (float32): a replica holds the parameters, their gradients and SGD's
    momentum (3 x 4 bytes per parameter); a Downpour parameter shard holds its range's
    parameters, Adagrad's sums of squares and two push slots per replica
    (:mod:`hpcnet.ps.windows`: (2 + 2 R) x 4 bytes per parameter of its range).

    Args:
        shards: parameter shards to size the shard line for (S).
        replicas: replicas pushing to them (R).
    """
    rows = [("#", "layer", "output shape", "params", "mult-adds")]
    for i, layer in enumerate(model.layers):
        rows.append(
            (
                str(i),
                type(layer).__name__,
                str(layer.out_shape),
                f"{_params(layer):,}",
                f"{multiply_adds(layer):,}",
            )
        )
    widths = [max(len(r[j]) for r in rows) for j in range(5)]
    line = "  ".join("-" * w for w in widths)

    def fmt(r):
        return "  ".join(
            c.rjust(w) if j in (0, 3, 4) else c.ljust(w)
            for j, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    n = model.n_params
    macs = sum(multiply_adds(layer) for layer in model.layers)
    per_shard = -(-n // max(shards, 1))
    out = [f"model {model.name}: input {model.input_shape} -> {model.output_shape}", line]
    out += [fmt(rows[0]), line, *(fmt(r) for r in rows[1:]), line]
    out += [
        f"total: {n:,} parameters, {macs:,} multiply-adds per sample (forward)",
        f"flat parameter vector: {n * BYTES:,} bytes ({_mib(n * BYTES)})",
        f"per replica: {_mib(3 * n * BYTES)} (parameters, gradients, momentum)",
        f"per parameter shard ({shards} shard(s), {replicas} replica(s)): "
        f"{_mib((2 + 2 * replicas) * per_shard * BYTES)} (its range, Adagrad sums, push slots)",
    ]
    if model.buffers.size:
        out.append(
            f"buffers: {model.buffers.size:,} values ({_mib(model.buffers.size * BYTES)}; "
            "BatchNorm running statistics, one copy per replica, not on the shards)"
        )
    return "\n".join(out)
