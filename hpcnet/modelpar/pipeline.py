"""GPipe-style pipeline model parallelism: consecutive layer groups (stages) on
consecutive partitions, the batch cut into micro-batches that flow through them.

Stage assignment (:func:`plan_stages`): the top-level ``model.layers`` are cut into M
consecutive stages, stage p on partition p. The cut first minimises the largest
stage's per-sample forward cost B (multiply-adds estimated from the layer shapes,
:func:`forward_cost`), then, among the cuts whose every stage costs at most
(1 + :data:`SLACK`) B, the number of activation values crossing stage boundaries
(so a cut lands after a pooling layer, not before it). Every stage gets at least
one layer *with parameters*, so M may be at most the number of such layers (a stage
of only ReLU/pooling would own no gradients and only add a hop); a
:class:`~hpcnet.nn.layers.Towers` layer is one layer here.

Training step (:meth:`PipelinePartition.loss_and_grad`), GPipe's fill/drain schedule
(Huang et al. 2019, "GPipe", sec. 2.2): the batch of N samples is cut into
m = min(micro_batches, N) micro-batches (``np.array_split`` sizes, larger first).
All m go forward in order (stage p receives micro-batch j's activation from p - 1,
computes, starts a nonblocking send to p + 1, goes on with j + 1); the last stage
computes each micro-batch's softmax cross-entropy, scales its gradient by n_j / N so
that the sum over micro-batches is the full-batch mean loss gradient, and the
micro-batches go backward in reverse order. Each stage sums its parameter gradients
over the micro-batches into its owned range of ``model.grads``. The last stage then
broadcasts (loss, correct). Dropout masks are drawn for the whole batch, once per
layer and step, exactly as the unpartitioned model draws them, and each micro-batch
uses its rows: loss, gradients and updates equal the unpartitioned model's.

With equal stage times, the bubble (the fraction of the step a stage idles during
fill and drain) is (M - 1) / (m + M - 1) (GPipe sec. 2.2: negligible once m >= 4 M).
GPipe's re-materialisation is not done: a stage holds the layer state of all m
micro-batches between its forward and its backward (memory ~ one full batch).

Bytes per training step (payload, whatever m is, since the micro-batches sum to N):
with a_p = N * prod(out_shape of stage p's last layer) * 4 bytes the activation
crossing boundary p -> p + 1 (and the same-size gradient crossing back), partition p

- sends    a_p (if p < M - 1) + a_{p-1} (if p > 0) + 16 (M - 1) (if p = M - 1),
- receives a_{p-1} (if p > 0) + a_p (if p < M - 1) + 16 (if p < M - 1),

the 16 bytes being the (loss, correct) float64 pair broadcast by the last stage.
"""

from __future__ import annotations

import copy

import numpy as np

from hpcnet.comm.exchange import Exchange
from hpcnet.errors import ConfigError
from hpcnet.modelpar.base import PartitionedModel, layer_ranges, merge_ranges
from hpcnet.nn.layers import (
    Block,
    Conv2D,
    Dense,
    Dropout,
    Flatten,
    Layer,
    MaxPool2D,
    backward_through,
)
from hpcnet.nn.model import Model
from hpcnet.nn.norm import LRN

TAG_FORWARD, TAG_BACKWARD, TAG_INFER = 1, 2, 3  # MPI keeps each (source, tag) in order
SLACK = 0.05  # stage cost allowed above the least bottleneck to cut where traffic is least


def forward_cost(layer: Layer) -> int:
    """Estimated per-sample forward cost of a built layer, in multiply-adds.

    Dense: in * out; Conv2D: out elements * (C / G) * K * K; a block (Towers,
    Residual): the sum over its layers; MaxPool2D: out elements * K * K; LRN: elements
    * size; Flatten: 0; other parameter-free layers (ReLU, Dropout): one per element.
    """
    out = int(np.prod(layer.out_shape))
    if isinstance(layer, Dense):
        return layer.in_shape[0] * layer.units
    if isinstance(layer, Conv2D):
        return out * (layer.in_shape[0] // layer.groups) * layer.kernel**2
    if isinstance(layer, Block):
        return sum(forward_cost(sub) for _, _, sub in layer.sublayers())
    if isinstance(layer, MaxPool2D):
        return out * layer.kernel**2
    if isinstance(layer, LRN):
        return out * layer.size
    if isinstance(layer, Flatten):
        return 0
    return out


def cut_stages(
    costs: list[int], has_params: list[bool], boundary: list[int], m: int, slack: float = SLACK
) -> list[int]:
    """Cuts L layers into ``m`` consecutive stages, each with a parameter layer.

    Minimises the largest stage cost B, then, among the cuts whose every stage costs at
    most (1 + ``slack``) B, the sum of ``boundary`` over the cut points; ties go to the
    earliest cut.

    Args:
        costs: (L,) per-layer cost (any unit). has_params: (L,) which layers have
            parameters. boundary: (L,) the size of layer i's output (the activation
            crossing a cut after layer i).
        m: the number of stages, 1 <= m <= sum(has_params).
        slack: relative stage cost allowed above B to save traffic.
    Returns:
        m + 1 layer indices: stage s is layers ``[b[s], b[s + 1])``; b[0] = 0, b[m] = L.
    Raises:
        ValueError: m outside [1, number of parameter layers].
    """
    n = len(costs)
    n_param = sum(bool(h) for h in has_params)
    if not 1 <= m <= n_param:
        raise ValueError(f"cannot cut {n_param} parameter layers into {m} stages")
    prefix = np.concatenate([[0], np.cumsum(costs, dtype=np.int64)]).tolist()
    params_before = np.concatenate([[0], np.cumsum([bool(h) for h in has_params])]).tolist()

    def ok(i: int, j: int) -> bool:  # layers [i, j) form a valid stage
        return j > i and params_before[j] > params_before[i]

    inf = float("inf")
    # phase 1: the bottleneck, best[k][j] = least max cost of k stages over layers [0, j)
    best = [[inf] * (n + 1) for _ in range(m + 1)]
    best[0][0] = 0
    for k in range(1, m + 1):
        for j in range(1, n + 1):
            for i in range(j):
                if best[k - 1][i] < inf and ok(i, j):
                    best[k][j] = min(best[k][j], max(best[k - 1][i], prefix[j] - prefix[i]))
    limit = best[m][n] * (1.0 + slack)
    # phase 2: least boundary traffic with every stage within the bottleneck
    traffic = [[inf] * (n + 1) for _ in range(m + 1)]
    back = [[-1] * (n + 1) for _ in range(m + 1)]
    traffic[0][0] = 0
    for k in range(1, m + 1):
        for j in range(1, n + 1):
            for i in range(j):
                if traffic[k - 1][i] < inf and ok(i, j) and prefix[j] - prefix[i] <= limit:
                    t = traffic[k - 1][i] + (boundary[i - 1] if i > 0 else 0)
                    if t < traffic[k][j]:
                        traffic[k][j], back[k][j] = t, i
    bounds = [n]
    for k in range(m, 0, -1):
        bounds.append(back[k][bounds[-1]])
    return bounds[::-1]


def plan_stages(model: Model, m: int) -> list[int]:
    """The pipeline's stage bounds for ``model`` on ``m`` partitions (see :func:`cut_stages`).

    Returns:
        m + 1 indices into ``model.layers``: stage p is ``layers[b[p]:b[p + 1]]``.
    Raises:
        ConfigError: m < 1, or m larger than the model's number of layers with parameters.
    """
    has_params = [bool(layer.param_specs()) for layer in model.layers]
    n_param = sum(has_params)
    if m < 1 or m > n_param:
        raise ConfigError(
            f"--partitions {m}: model {model.name!r} has {len(model.layers)} layers, "
            f"{n_param} with parameters, and every pipeline stage needs one; "
            f"use at most {n_param} partitions, or --partition-scheme neurons"
        )
    costs = [forward_cost(layer) for layer in model.layers]
    boundary = [int(np.prod(layer.out_shape)) for layer in model.layers]
    return cut_stages(costs, has_params, boundary, m)


def check_pipeline(model: Model, m: int) -> None:
    """Raises ConfigError unless ``model`` can be cut into ``m`` pipeline stages
    (:func:`plan_stages`); needs no communication."""
    plan_stages(model, m)


class _Rows:
    """Stands in for a Dropout layer's ``rng`` in one micro-batch: hands out that
    micro-batch's rows of the uniform draw made once for the whole batch."""

    def __init__(self, u: np.ndarray):
        self.u = u

    def random(self, shape, dtype=np.float32) -> np.ndarray:
        if tuple(shape) != self.u.shape:
            raise RuntimeError(f"dropout draw of {tuple(shape)}, expected {self.u.shape}")
        return self.u


def _dropouts(layers: list[Layer]) -> list[Dropout]:
    """Every Dropout among ``layers`` and inside their blocks, in a fixed order."""
    out: list[Dropout] = []
    for layer in layers:
        if isinstance(layer, Dropout):
            out.append(layer)
        elif isinstance(layer, Block):
            out.extend(sub for _, _, sub in layer.sublayers() if isinstance(sub, Dropout))
    return out


def _clone(layer: Layer) -> Layer:
    """A layer sharing ``layer``'s parameter and gradient views but holding its own
    forward state (one per micro-batch in flight; a layer keeps one cache slot)."""
    c = copy.copy(layer)
    if isinstance(layer, Conv2D):
        c._cache = None  # the original's pooled buffers stay the original's
    if isinstance(layer, Block):  # Towers, Residual: each inner layer its own state
        c.towers = [[_clone(sub) for sub in tower] for tower in layer.towers]
    return c


class PipelinePartition(PartitionedModel):
    """Stage ``exchange.rank`` of a GPipe pipeline over ``model`` (module docs).

    Args:
        model: the whole model, built and initialised identically on every partition.
        exchange: the counted operations on ``replica_comm`` (M = its size).
        micro_batches: m, micro-batches per training step (at most N are used).
    Raises:
        ConfigError: M larger than the model's number of layers with parameters.
        ValueError: micro_batches < 1.
    """

    scheme = "pipeline"

    def __init__(self, model: Model, exchange: Exchange, micro_batches: int):
        super().__init__(model, exchange)
        if micro_batches < 1:
            raise ValueError(f"micro_batches must be >= 1, got {micro_batches}")
        self.micro_batches = int(micro_batches)
        self.bounds = plan_stages(model, self.partitions)
        lo, hi = self.bounds[self.partition], self.bounds[self.partition + 1]
        self.layers = model.layers[lo:hi]
        self.first = self.partition == 0
        self.last = self.partition == self.partitions - 1
        self.in_shape = self.layers[0].in_shape  # per sample
        self.out_shape = self.layers[-1].out_shape
        self.owned = merge_ranges(
            [r for layer in self.layers for r in layer_ranges(model.params, layer)]
        )
        self._acc: np.ndarray | None = None  # gradient sum over micro-batches, reused
        self._buffer_mask = np.zeros(model.buffers.size)
        for b_lo, b_hi in model.buffer_ranges[lo:hi]:
            self._buffer_mask[b_lo:b_hi] = 1.0

    # ---- training --------------------------------------------------------------------
    def _loss_and_grad(self, x, y, backend, train):
        n = len(y)  # every partition gets the same batch
        if n < 1:
            raise ValueError("pipeline step needs a batch of at least one sample")
        m = min(self.micro_batches, n)
        cuts = np.cumsum([0] + [len(a) for a in np.array_split(np.arange(n), m)]).tolist()
        # one uniform draw per Dropout and step, as Dropout.forward makes on the full batch
        draws = [
            d.rng.random((n, *d.in_shape), dtype=np.float32)
            for d in _dropouts(self.layers)
            if train and d.rate > 0.0
        ]
        stages = []  # per micro-batch: this stage's layers with their own forward state
        for j in range(m):
            layers = [_clone(layer) for layer in self.layers]
            drop = [d for d in _dropouts(layers) if train and d.rate > 0.0]
            for d, u in zip(drop, draws, strict=True):
                d.rng = _Rows(u[cuts[j] : cuts[j + 1]])
            stages.append(layers)

        sends = []  # (request, buffer): buffers live until their send completes
        loss_sum, correct, dlogits = 0.0, 0, [None] * m
        for j in range(m):  # fill: forward every micro-batch in order
            nj = cuts[j + 1] - cuts[j]
            if self.first:
                h = x[cuts[j] : cuts[j + 1]]  # (n_j, *input_shape)
            else:
                h = self.ex.recv((nj, *self.in_shape), self.partition - 1, TAG_FORWARD, "fwd")
            for layer in stages[j]:
                h = layer.forward(h, backend, train)
            if self.last:
                yj = y[cuts[j] : cuts[j + 1]]
                lj, d = backend.softmax_xent(h, yj)  # mean over n_j, d (n_j, K)
                loss_sum += lj * nj
                correct += int((h.argmax(axis=1) == yj).sum())
                dlogits[j] = d * np.float32(nj / n)  # sum over j = full-batch mean gradient
            else:
                buf = np.ascontiguousarray(h, np.float32)  # (n_j, *out_shape)
                sends.append((self.ex.send(buf, self.partition + 1, TAG_FORWARD, "fwd"), buf))

        lo, hi = self.owned[0] if self.owned else (0, 0)
        if m > 1 and self._acc is None:
            self._acc = np.empty(hi - lo, np.float32)  # kept: no fresh pages every step
        for j in reversed(range(m)):  # drain: backward in reverse order
            nj = cuts[j + 1] - cuts[j]
            if self.last:
                d = dlogits[j]
                dlogits[j] = None
            else:
                d = self.ex.recv((nj, *self.out_shape), self.partition + 1, TAG_BACKWARD, "bwd")
            dx = backward_through(stages[j], d, backend, need_dx=not self.first)
            if not self.first:
                buf = np.ascontiguousarray(dx, np.float32)
                sends.append((self.ex.send(buf, self.partition - 1, TAG_BACKWARD, "bwd"), buf))
            stages[j] = None  # free the micro-batch's layer state
            if m > 1:  # each backward overwrote the stage's gradient views: sum them
                g = self.model.grads[lo:hi]
                if j == m - 1:
                    self._acc[:] = g
                else:
                    np.add(self._acc, g, out=self._acc)
        if m > 1:
            self.model.grads[lo:hi] = self._acc
        self.ex.complete([r for r, _ in sends], "pipeline sends")

        out = np.array([loss_sum / n, correct], np.float64)  # the last stage's
        self.ex.bcast(out, self.partitions - 1, "loss bcast")
        return float(out[0]), int(out[1])

    # ---- inference -------------------------------------------------------------------
    def _stage_forward(self, x, backend, train):
        """The whole batch through this stage (no micro-batching); the last stage's
        logits (N, K) float32, None elsewhere."""
        n = len(x)
        if self.first:
            h = x
        else:
            h = self.ex.recv((n, *self.in_shape), self.partition - 1, TAG_INFER, "infer")
        for layer in self.layers:
            h = layer.forward(h, backend, train)
        if self.last:
            return h
        buf = np.ascontiguousarray(h, np.float32)
        self.ex.complete([self.ex.send(buf, self.partition + 1, TAG_INFER, "infer")], "infer")
        return None

    def forward(self, x, backend, train=False):
        """x ``(N, *input_shape)`` float32 -> logits (N, K) float32 on every partition (the
        last stage broadcasts them). Collective over the replica's partitions, which all
        pass the same x (only its length matters past the first stage)."""
        logits = self._stage_forward(x, backend, train)
        if not self.last:
            logits = np.empty((len(x), *self.model.output_shape), np.float32)
        return self.ex.bcast(np.ascontiguousarray(logits, np.float32), self.partitions - 1)

    def evaluate(self, x, y, backend):
        """Sum of per-sample losses (nats) and number correct on one batch, inference mode,
        the same on every partition: the last stage broadcasts 16 bytes, not the logits.
        Collective over the replica's partitions."""
        logits = self._stage_forward(x, backend, False)
        out = np.zeros(2, np.float64)
        if self.last:
            loss, _ = backend.softmax_xent(logits, y)
            out[:] = (loss * len(y), int((logits.argmax(axis=1) == y).sum()))
        self.ex.bcast(out, self.partitions - 1, "eval bcast")
        return float(out[0]), int(out[1])

    # ---- reports ---------------------------------------------------------------------
    def buffer_mask(self) -> np.ndarray:
        """1.0 on the buffers of this stage's layers (their running statistics are
        this partition's), 0.0 elsewhere."""
        return self._buffer_mask

    def plan_text(self) -> list[str]:
        """One line per stage (all partitions, the same everywhere), then the schedule."""
        lines = []
        layers = self.model.layers
        for p in range(self.partitions):
            lo, hi = self.bounds[p], self.bounds[p + 1]
            names = ", ".join(type(layer).__name__ for layer in layers[lo:hi])
            span = f"layer {lo}" if hi - lo == 1 else f"layers {lo}-{hi - 1}"
            n = sum(int(np.prod(s)) for layer in layers[lo:hi] for _, s in layer.param_specs())
            cost = sum(forward_cost(layer) for layer in layers[lo:hi])
            lines.append(
                f"partition {p}: {span} ({names}), {n:,} params, {cost:,} multiply-adds/sample"
            )
        m, big_m = self.micro_batches, self.partitions
        bubble = (big_m - 1) / (m + big_m - 1)
        lines.append(f"pipeline: {m} micro-batches, bubble (M-1)/(m+M-1) = {bubble:.2f}")
        return lines

    def expected_bytes(self, batch: int) -> tuple[int, int]:
        """(sent, received) payload bytes of one training step at batch ``batch`` on this
        partition, from the module docs' formula (independent of the micro-batch count)."""
        act_in = batch * int(np.prod(self.in_shape)) * 4 if not self.first else 0
        act_out = batch * int(np.prod(self.out_shape)) * 4 if not self.last else 0
        pair = 16  # (loss, correct) float64
        sent = act_out + act_in + (pair * (self.partitions - 1) if self.last else 0)
        recv = act_in + act_out + (0 if self.last else pair)
        return sent, recv
