"""Model: a sequence of layers over ONE flat parameter vector.

All parameters live in ``model.params`` ((n_params,) float32, contiguous) and
all gradients in ``model.grads`` (same shape); every layer's weights are views
into them (docs/design.md, "The flat parameter vector"). So an allreduce is
one call on ``grads``, a parameter-shard range is a slice, and a checkpoint is
one dataset.
"""

from __future__ import annotations

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.nn.layers import Block, Dense, Dropout, Layer, backward_through


class Model:
    """A sequential network bound to flat parameter and gradient vectors.

    Args:
        layers: the layers, input to output; the last one produces logits (N, K).
        input_shape: per-sample input shape, (C, H, W) or (F,).
        name: the zoo name, for reports.
    """

    def __init__(self, layers: list[Layer], input_shape: tuple[int, ...], name: str = "model"):
        self.name = name
        self.layers = layers
        self.input_shape = tuple(input_shape)
        shape = self.input_shape
        specs = []  # (layer, param name, shape, offset)
        offset = 0
        for i, layer in enumerate(layers):
            try:
                shape = layer.build(shape)
            except ConfigError as e:
                raise ConfigError(
                    f"layer {i} ({type(layer).__name__}) gets input {shape}: {e}"
                ) from None
            for pname, pshape in layer.param_specs():
                size = int(np.prod(pshape))
                specs.append((layer, pname, pshape, offset))
                offset += size
        self.output_shape = shape
        self.n_params = offset
        self.params = np.zeros(offset, np.float32)  # (n_params,) float32
        self.grads = np.zeros(offset, np.float32)  # (n_params,) float32
        self.segments: list[tuple[str, int, int]] = []  # (layer.param, start, stop)
        self._specs = specs
        for layer, pname, pshape, off in specs:
            size = int(np.prod(pshape))
            idx = layers.index(layer)
            self.segments.append((f"{idx}.{type(layer).__name__}.{pname}", off, off + size))
        # layer i's parameters start at _starts[i] (a layer without any: where the next one's do)
        sizes = [sum(int(np.prod(s)) for _, s in layer.param_specs()) for layer in layers]
        self._starts = [int(v) for v in np.cumsum([0, *sizes[:-1]])] if layers else []
        self._bind(self.params, self.grads)
        self._bind_buffers()
        self.device = None  # (params, grads) on the GPU while the cuda backend runs it
        if layers and isinstance(layers[-1], Dense):
            layers[-1].init_gain = 1.0  # logits: no ReLU follows

    def layer_ranges(self) -> list[tuple[int, int]]:
        """(lo, hi) of each layer's parameters in the flat vector (elements), input to
        output; (lo, lo) for a layer without parameters. A ``Towers`` layer is one range."""
        ends = [*self._starts[1:], self.n_params]
        return list(zip(self._starts, ends, strict=True))

    def named_params(self) -> dict[str, np.ndarray]:
        """Each parameter tensor under its segment name (``"6.Dense.w"``: layer index,
        layer type, parameter), in flat-vector order: views of ``params`` in the
        layer's shape, e.g. Dense w (out, in), Conv2D w (out, in/groups, kh, kw)."""
        return {
            name: self.params[lo:hi].reshape(pshape)
            for (name, lo, hi), (_, _, pshape, _) in zip(self.segments, self._specs, strict=True)
        }

    def _bind_buffers(self) -> None:
        """Allocates ``buffers`` ((n_buffers,) float32, host): the layers' state that is
        not a parameter (BatchNorm2D's running statistics), beside the flat parameter
        vector, and binds each layer to its views; ``buffer_segments`` names them like
        ``segments``."""
        views, offset = [], 0
        self.buffer_segments: list[tuple[str, int, int]] = []
        self.buffer_ranges: list[tuple[int, int]] = []  # (lo, hi) per layer
        for i, layer in enumerate(self.layers):
            mine = []
            lo = offset
            for bname, bshape in layer.buffer_specs():
                size = int(np.prod(bshape))
                mine.append((bname, bshape, offset))
                self.buffer_segments.append(
                    (f"{i}.{type(layer).__name__}.{bname}", offset, offset + size)
                )
                offset += size
            views.append(mine)
            self.buffer_ranges.append((lo, offset))
        self.buffers = np.zeros(offset, np.float32)  # (n_buffers,) float32
        for layer, mine in zip(self.layers, views, strict=True):
            layer.bind_buffers(
                {n: self.buffers[o : o + int(np.prod(sh))].reshape(sh) for n, sh, o in mine}
            )
            layer.init_buffers()
        self._batch_normed = [sub for sub in self._leaves() if hasattr(sub, "batch_stats")]

    def _leaves(self) -> list[Layer]:
        """Every layer, a block's (Towers, Residual) inner layers in its place, in order."""
        return [
            sub
            for layer in self.layers
            for sub in (
                [s for _, _, s in layer.sublayers()] if isinstance(layer, Block) else [layer]
            )
        ]

    def named_buffers(self) -> dict[str, np.ndarray]:
        """Each buffer under its name (``"1.BatchNorm2D.running_mean"``), views of
        ``buffers`` in the layer's shape."""
        return {
            name: self.buffers[lo:hi].reshape(layer_shape)
            for (name, lo, hi), layer_shape in zip(
                self.buffer_segments,
                [s for layer in self.layers for _, s in layer.buffer_specs()],
                strict=True,
            )
        }

    def _bind(self, params, grads) -> None:
        """Binds every layer to views of the flat ``params``/``grads`` (host or device)."""
        views: dict[int, tuple[dict, dict]] = {}
        for layer, pname, pshape, off in self._specs:
            size = int(np.prod(pshape))
            p, g = views.setdefault(id(layer), ({}, {}))
            p[pname] = params[off : off + size].reshape(pshape)
            g[pname] = grads[off : off + size].reshape(pshape)
        for layer in self.layers:
            p, g = views.get(id(layer), ({}, {}))
            layer.bind(p, g)

    def _to_backend(self, backend) -> None:
        """With the ``cuda`` backend, keeps the parameters and gradients on the GPU: the
        layers are re-bound to views of device copies of the flat vectors, and a step
        moves only ``params`` to the device (:meth:`_upload`) and ``grads`` back."""
        if getattr(backend, "name", "") != "cuda" or self.device is not None:
            return
        from numba import cuda

        self.device = (cuda.to_device(self.params), cuda.to_device(self.grads))
        self._bind(*self.device)

    def _upload(self, backend):
        self._to_backend(backend)
        if self.device is not None:
            self.device[0].copy_to_device(self.params)  # the one host -> device vector

    def _download_grads(self) -> None:
        if self.device is not None:
            self.device[1].copy_to_host(self.grads)  # the one device -> host vector

    def init(self, seed: int) -> None:
        """Fills ``params`` from ``seed``: He-normal weights (LeCun-normal on the
        final logits layer), zero biases."""
        rng = np.random.default_rng(seed)
        for layer in self.layers:
            layer.init(rng)
            layer.init_buffers()

    def seed_dropout(self, seed: int, replica: int, restart: int = 0) -> None:
        """Gives each Dropout layer its own stream, different per replica, fixed by the seed.

        ``restart`` > 0 (the step an asynchronous run resumes at, whose streams were not
        saved) starts other streams, as fixed by the seed and that step."""
        more = [restart] if restart else []
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.rng = np.random.default_rng([seed, replica, i, 0xD7, *more])
            elif isinstance(layer, Block):  # sequence t's layer j: its own stream too
                for t, j, sub in layer.sublayers():
                    if isinstance(sub, Dropout):
                        sub.rng = np.random.default_rng([seed, replica, i, t, j, 0xD7, *more])

    def _dropouts(self) -> list[Dropout]:
        return [sub for sub in self._leaves() if isinstance(sub, Dropout)]

    def rng_states(self) -> list[dict]:
        """The Dropout streams' states (JSON-able dicts), for a checkpoint."""
        return [d.rng.bit_generator.state for d in self._dropouts()]

    def set_rng_states(self, states: list[dict]) -> None:
        """Puts the Dropout streams back where :meth:`rng_states` found them."""
        drops = self._dropouts()
        if len(states) != len(drops):
            raise ValueError(f"{len(states)} RNG states for {len(drops)} Dropout layers")
        for d, st in zip(drops, states, strict=True):
            d.rng.bit_generator.state = st

    def forward(self, x: np.ndarray, backend, train: bool = False) -> np.ndarray:
        """x ``(N, *input_shape)`` float32 -> logits (N, K) float32 (on the host)."""
        self._upload(backend)
        out = self._forward(x, backend, train)
        return out if isinstance(out, np.ndarray) else out.copy_to_host()

    def _forward(self, x, backend, train):
        if self.device is not None:  # the batch goes to the GPU once; activations stay there
            from numba import cuda

            x = cuda.to_device(np.ascontiguousarray(x, np.float32))
        for layer in self.layers:
            x = layer.forward(x, backend, train)
        return x

    @staticmethod
    def _count_correct(logits, y) -> int:
        host = logits if isinstance(logits, np.ndarray) else logits.copy_to_host()  # (N, K)
        return int((host.argmax(axis=1) == y).sum())

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, backend, train: bool = True, on_grad_ready=None
    ) -> tuple[float, int]:
        """One forward and backward pass; fills ``self.grads``.

        Args:
            x: ``(N, *input_shape)`` float32. y: (N,) int64 labels.
            train: training mode (dropout on); False gives the deterministic
                objective's gradient (batch methods such as L-BFGS). Batch
                normalization uses the batch's statistics either way (a backward
                follows) and moves its running statistics.
            on_grad_ready: if given, called as ``on_grad_ready(lo)`` after each
                layer's backward, last layer first: ``self.grads[lo:]`` are final then
                (``lo`` only decreases; 0 after the first layer). The ``sync`` policy
                starts its bucketed allreduce there (:mod:`hpcnet.comm.buckets`). With
                the ``cuda`` backend the gradients reach the host only after backward:
                it is called once, ``on_grad_ready(0)``, then (no overlap).
        Returns:
            (loss, correct): mean cross-entropy over the batch (nats) and the
            number of samples whose argmax logit equals the label.
        """
        self._upload(backend)
        for norm in self._batch_normed:  # a backward follows: the batch's statistics
            norm.batch_stats = True
        try:
            logits = self._forward(x, backend, train)
        finally:
            for norm in self._batch_normed:
                norm.batch_stats = False
        loss, d = backend.softmax_xent(logits, y)
        correct = self._count_correct(logits, y)
        hook = None
        if on_grad_ready is not None and self.device is None:
            starts = self._starts

            def hook(i: int) -> None:
                on_grad_ready(starts[i])

        backward_through(self.layers, d, backend, need_dx=False, after_layer=hook)  # no dx
        self._download_grads()
        if on_grad_ready is not None and self.device is not None:
            on_grad_ready(0)
        return loss, correct

    def evaluate(self, x: np.ndarray, y: np.ndarray, backend) -> tuple[float, int]:
        """Sum of per-sample losses (nats) and number correct on one batch, inference mode."""
        self._upload(backend)
        logits = self._forward(x, backend, False)
        loss, _ = backend.softmax_xent(logits, y)
        return loss * len(y), self._count_correct(logits, y)

    def summary(self) -> str:
        """One line per layer: output shape and parameter count."""
        lines = [f"model {self.name}: input {self.input_shape}, {self.n_params:,} parameters"]
        for layer in self.layers:
            n = sum(int(np.prod(s)) for _, s in layer.param_specs())
            lines.append(f"  {type(layer).__name__:<10} -> {layer.out_shape}  ({n:,} params)")
        return "\n".join(lines)
