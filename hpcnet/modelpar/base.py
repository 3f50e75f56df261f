"""What every partitioning scheme shares: parameter ownership and the replica-facing API.

A partitioned replica keeps the whole :class:`hpcnet.nn.model.Model` (its flat
``params``/``grads`` vectors) on every partition rank, but each partition computes,
and owns the gradients of, only some of the parameters: ``owned``, a list of
``[start, stop)`` ranges of the flat vector. The training algorithms work on the
owned entries only (:meth:`PartitionedModel.pack` / :meth:`PartitionedModel.unpack`):
sync allreduces them among the same partition of the other replicas (``data_comm``),
Downpour fetches and pushes only the shard ranges that hold them.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.comm.exchange import Exchange
from hpcnet.nn.model import Model


def merge_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Sorted, with touching or overlapping ``[start, stop)`` ranges merged, empty ones dropped."""
    out: list[tuple[int, int]] = []
    for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def range_of(flat: np.ndarray, view: np.ndarray) -> tuple[int, int]:
    """The ``[start, stop)`` of ``view`` (a C-contiguous view of the float32 ``flat``)."""
    if not view.flags.c_contiguous or view.base is None:
        raise ValueError("range_of needs a contiguous view into the flat vector")
    start = (view.__array_interface__["data"][0] - flat.__array_interface__["data"][0]) // 4
    if not 0 <= start <= flat.size - view.size:
        raise ValueError("view does not lie inside the flat vector")
    return int(start), int(start + view.size)


def layer_ranges(flat: np.ndarray, layer) -> list[tuple[int, int]]:
    """The flat-vector ranges of every parameter array a (bound) layer holds."""
    return [range_of(flat, a) for a in getattr(layer, "params", {}).values()]


class PartitionedModel:
    """One partition of a model replica: the API the algorithms call instead of
    :class:`~hpcnet.nn.model.Model`'s (``loss_and_grad``, ``evaluate``, ``forward``).

    Subclasses set ``scheme`` and ``owned`` and implement :meth:`loss_and_grad`,
    :meth:`forward` and :meth:`plan_text`.

    Args:
        model: the whole model, built the same way on every partition.
        exchange: the counted operations on ``replica_comm`` (rank = partition).
    """

    scheme = "none"

    def __init__(self, model: Model, exchange: Exchange):
        self.model = model
        self.ex = exchange
        self.partitions = exchange.size
        self.partition = exchange.rank
        self.owned: list[tuple[int, int]] = []
        self._all_owned: list[list[tuple[int, int]]] | None = None
        self.steps = 0  # loss_and_grad calls
        self.train_bytes = [0, 0]  # (sent, received) payload bytes over all training steps
        self.last_step_bytes = (0, 0)  # (sent, received) of the last training step

    # ---- parameters this partition owns ------------------------------------------------
    @property
    def n_owned(self) -> int:
        """Number of parameters this partition owns."""
        return sum(hi - lo for lo, hi in self.owned)

    def buffer_mask(self) -> np.ndarray:
        """(n_buffers,) 1.0 where this partition computes the buffer's layer (so its
        running statistics are its), else 0.0; every entry unless a scheme says less."""
        return np.ones(self.model.buffers.size)

    def pack(self, vec: np.ndarray) -> np.ndarray:
        """The owned entries of a flat vector ((n_params,) float32), contiguous: a view
        when this partition owns one range, else a new array."""
        if len(self.owned) == 1:
            lo, hi = self.owned[0]
            return vec[lo:hi]
        return np.concatenate([vec[lo:hi] for lo, hi in self.owned])

    def unpack(self, packed: np.ndarray, vec: np.ndarray) -> None:
        """Writes ``packed`` ((n_owned,) float32, as from :meth:`pack`) back into ``vec``."""
        at = 0
        for lo, hi in self.owned:
            if not np.shares_memory(vec[lo:hi], packed):
                vec[lo:hi] = packed[at : at + hi - lo]
            at += hi - lo

    def all_owned(self) -> list[list[tuple[int, int]]]:
        """Every partition's owned ranges (partition order). Collective the first time."""
        if self._all_owned is None:
            m = self.partitions
            counts = np.zeros(m, np.int64)
            self.ex.wait(
                self.ex.comm.Iallgather(np.array([2 * len(self.owned)], np.int64), counts),
                "allgather of owned range counts",
            )
            flat = np.zeros(int(counts.sum()), np.int64)
            displs = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(int).tolist()
            mine = np.array(self.owned, np.int64).reshape(-1)
            self.ex.wait(
                self.ex.comm.Iallgatherv(mine, [flat, (counts.tolist(), displs), MPI.INT64_T]),
                "allgather of owned ranges",
            )
            self._all_owned = [
                [tuple(map(int, r)) for r in flat[displs[p] : displs[p] + counts[p]].reshape(-1, 2)]
                for p in range(m)
            ]
            covered = merge_ranges([r for rs in self._all_owned for r in rs])
            total = sum(hi - lo for rs in self._all_owned for lo, hi in rs)
            if covered != [(0, self.model.n_params)] or total != self.model.n_params:
                raise RuntimeError(f"partitions do not own every parameter exactly once: {covered}")
        return self._all_owned

    def assemble(self, vec: np.ndarray) -> np.ndarray:
        """Fills every entry of ``vec`` ((n_params,) float32, in place) from the partition
        that owns it, so all partitions hold the whole vector (e.g. final parameters).
        Collective over the replica's partitions (not counted in the step bytes)."""
        owned = self.all_owned()
        sizes = [sum(hi - lo for lo, hi in rs) for rs in owned]
        flat = np.empty(sum(sizes), np.float32)
        displs = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(int).tolist()
        send = np.ascontiguousarray(self.pack(vec))
        self.ex.wait(self.ex.comm.Iallgatherv(send, [flat, (sizes, displs), MPI.FLOAT]), "assemble")
        for p, rs in enumerate(owned):
            at = displs[p]
            for lo, hi in rs:
                vec[lo:hi] = flat[at : at + hi - lo]
                at += hi - lo
        return vec

    # ---- the model API ---------------------------------------------------------------
    def seed_dropout(self, seed: int, replica: int) -> None:
        """The same streams as the unpartitioned model (every partition draws them alike)."""
        self.model.seed_dropout(seed, replica)

    def loss_and_grad(
        self, x: np.ndarray, y: np.ndarray, backend, train: bool = True
    ) -> tuple[float, int]:
        """One forward and backward pass of the whole replica.

        Args:
            x: ``(N, *input_shape)`` float32, the same batch on every partition.
            y: (N,) int64 labels.
        Returns:
            (loss, correct), the same on every partition (see ``Model.loss_and_grad``).
            Fills this partition's owned ranges of ``model.grads``.
        Collective over the replica's partitions.
        """
        st = self.ex.stats
        sent, recv = st.bytes_sent, st.bytes_recv
        out = self._loss_and_grad(x, y, backend, train)
        self.last_step_bytes = (st.bytes_sent - sent, st.bytes_recv - recv)
        self.train_bytes[0] += self.last_step_bytes[0]
        self.train_bytes[1] += self.last_step_bytes[1]
        self.steps += 1
        return out

    def _loss_and_grad(self, x, y, backend, train):
        raise NotImplementedError

    def forward(self, x: np.ndarray, backend, train: bool = False) -> np.ndarray:
        """x ``(N, *input_shape)`` float32 -> logits (N, K) float32, on every partition.
        Collective over the replica's partitions."""
        raise NotImplementedError

    def evaluate(self, x: np.ndarray, y: np.ndarray, backend) -> tuple[float, int]:
        """Sum of per-sample losses and number correct on one batch, inference mode,
        the same on every partition. Collective over the replica's partitions."""
        logits = self.forward(x, backend, train=False)
        loss, _ = backend.softmax_xent(logits, y)
        return loss * len(y), int((logits.argmax(axis=1) == y).sum())

    def plan_text(self) -> list[str]:
        """One line per step of this partition's plan, for reports."""
        raise NotImplementedError

    def expected_bytes(self, batch: int) -> tuple[int, int]:
        """(sent, received) payload bytes of one training step at batch ``batch`` on
        this partition, from the scheme's formula (module docs)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The partition layout, for summary.json: scheme, M, owned parameters, plan."""
        steps = max(1, self.steps)
        return {
            "scheme": self.scheme,
            "partitions": self.partitions,
            "partition": self.partition,
            "owned_params": self.n_owned,
            "owned_ranges": len(self.owned),
            "plan": self.plan_text(),
            "bytes_sent_per_step": self.train_bytes[0] / steps,
            "bytes_recv_per_step": self.train_bytes[1] / steps,
        }
