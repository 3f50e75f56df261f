"""Which training rows each replica of a synchronous run reads at each step, when the
replica count changes mid-run: a replica died (fault tolerance) or a run resumed with
another count (elastic resume).

A run starts as :class:`~hpcnet.data.loader.BatchLoader` deals it: epoch ``e`` gives
replica ``j`` of ``R`` the block ``assign_rows(N, R, j)`` walked in the permutation
``default_rng([seed, e, j])``, ``(N // R) // b`` batches of ``b`` rows. When the
count becomes ``R'`` after ``c`` steps (:meth:`DataDeal.regroup`), the rows of the
current epoch no replica has read yet are dealt over the ``R'`` replicas (a *tail* of
that epoch), and the epochs after it are dealt to ``R'`` replicas as above:

- ``R' <= R``: new replica ``i`` reads old replica ``i``'s remaining rows, and the
  remaining rows of old replicas ``R' .. R-1`` are dealt round-robin over all ``R'``;
- ``R' > R``: every remaining row is dealt round-robin over the ``R'``.

Each replica's tail is cut into the same number of batches (``ceil(longest / b)``;
``numpy.array_split``, so a tail's batches may hold fewer than ``b`` rows). So every
training row of the epoch is read exactly once (the rows the remainder policy drops
stay dropped), the replicas still take the same number of steps, and the deal depends
on nothing but ``(N, b, seed, epochs)`` and the list of ``(step, count)`` changes: a
run that lost replica 1 of 4 at step ``c`` and a run resumed from step ``c`` with 3
replicas read the same rows (:mod:`hpcnet.algos.elastic`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from hpcnet.data.loader import _apply_lut, _lut, assign_rows, augment_images, read_split_rows


@dataclass
class Segment:
    """A run of steps dealt one way.

    Attributes:
        epoch: the epoch it belongs to.
        first: the global index of its first step.
        n_steps: its steps.
        replicas: the replicas it is dealt to.
        start_frac: the share of the epoch read before it (0 for a whole epoch).
        tail: None for a whole epoch dealt in blocks; else per replica the row positions
            of each of its ``n_steps`` batches (int64 arrays).
    """

    epoch: int
    first: int
    n_steps: int
    replicas: int
    start_frac: float = 0.0
    tail: list[list[np.ndarray]] | None = field(default=None, repr=False)


class DataDeal:
    """The rows of every replica at every step (see the module doc).

    Args:
        n_rows: training rows N (positions ``0 .. N-1`` of the train split, or of the
            run's train index when it holds out a validation split).
        batch_size: rows per batch b.
        seed: ``--seed`` (the permutations).
        epochs: passes over the data.
        replicas: the starting replica count.
        max_steps: cap on the total steps (0: none).
    Raises:
        ValueError: fewer rows than a batch per replica.
    """

    def __init__(
        self, n_rows: int, batch_size: int, seed: int, epochs: int, replicas: int, max_steps=0
    ):
        self.n_rows, self.batch_size, self.seed = n_rows, batch_size, seed
        self.epochs, self.max_steps = epochs, max_steps
        self.events: list[tuple[int, int]] = []  # (step, replicas from it on)
        self._perm: tuple | None = None  # ((epoch, replicas, replica), permutation)
        self.segments = self._epochs(0, 0, replicas)

    def _epochs(self, epoch: int, first: int, replicas: int) -> list[Segment]:
        spe = (self.n_rows // replicas) // self.batch_size
        if spe < 1:
            raise ValueError(
                f"{self.n_rows} training rows give each of {replicas} replicas fewer than "
                f"one batch of {self.batch_size}"
            )
        return [
            Segment(e, first + (e - epoch) * spe, spe, replicas) for e in range(epoch, self.epochs)
        ]

    @property
    def total_steps(self) -> int:
        """Steps every replica takes in the whole run (capped by ``max_steps``)."""
        end = self.segments[-1].first + self.segments[-1].n_steps if self.segments else 0
        return min(end, self.max_steps) if self.max_steps else end

    @property
    def replicas(self) -> int:
        """The replica count now (after the last change)."""
        return self.events[-1][1] if self.events else self.segments[0].replicas

    @property
    def steps_per_epoch(self) -> int:
        """Steps of a whole epoch dealt to the current replica count."""
        return (self.n_rows // self.replicas) // self.batch_size

    def locate(self, step: int) -> tuple[Segment, int]:
        """The segment holding global step ``step`` and the step's offset in it.

        Raises:
            IndexError: ``step`` is past the last segment.
        """
        for seg in self.segments:
            if seg.first <= step < seg.first + seg.n_steps:
                return seg, step - seg.first
        raise IndexError(f"step {step} is past the deal's {self.total_steps} steps")

    def epoch_of(self, step: int) -> float:
        """Epochs completed after ``step`` steps (fractional)."""
        if step >= self.segments[-1].first + self.segments[-1].n_steps:
            return float(self.epochs)
        seg, k = self.locate(step)
        return seg.epoch + seg.start_frac + (1 - seg.start_frac) * k / seg.n_steps

    def rows(self, replica: int, step: int) -> np.ndarray:
        """The row positions replica ``replica`` reads at global step ``step``, in batch
        order: (b,) int64 (a tail's batch may be shorter)."""
        seg, k = self.locate(step)
        if seg.tail is not None:
            return seg.tail[replica][k]
        start, _ = assign_rows(self.n_rows, seg.replicas, replica)
        return start + self._order(seg, replica)[k * self.batch_size : (k + 1) * self.batch_size]

    def _order(self, seg: Segment, replica: int) -> np.ndarray:
        """BatchLoader's permutation of the replica's block in the segment's epoch (the
        last one kept: a loader asks for it at every step of the epoch)."""
        key = (seg.epoch, seg.replicas, replica)
        if self._perm is None or self._perm[0] != key:
            n_local = self.n_rows // seg.replicas
            order = np.random.default_rng([self.seed, seg.epoch, replica]).permutation(n_local)
            self._perm = (key, order)
        return self._perm[1]

    def regroup(self, step: int, replicas: int) -> None:
        """From global step ``step`` on (steps ``0 .. step-1`` done by the old
        replicas), ``replicas`` replicas: the rest of the current epoch is dealt to
        them as a tail, the epochs after it in blocks.

        Raises:
            ValueError: ``replicas < 1``, or too few rows for a batch per replica.
        """
        if replicas < 1:
            raise ValueError(f"a deal needs at least one replica, not {replicas}")
        self.events.append((int(step), int(replicas)))
        if step >= self.segments[-1].first + self.segments[-1].n_steps:
            return  # nothing left to deal
        seg, k = self.locate(step)
        kept = self.segments[: self.segments.index(seg)]
        if seg.tail is None and k == 0:  # at an epoch's start: whole epochs from here
            self.segments = kept + self._epochs(seg.epoch, step, replicas)
            return
        rest = [
            np.concatenate([self.rows(j, s) for s in range(step, seg.first + seg.n_steps)])
            for j in range(seg.replicas)
        ]
        done = None if seg.tail is None else [t[:k] for t in seg.tail]
        kept.append(dataclasses.replace(seg, n_steps=k, tail=done))  # its steps before ``step``
        frac = seg.start_frac + (1 - seg.start_frac) * k / seg.n_steps
        tail = _deal_tail(rest, replicas, self.batch_size)
        new = [Segment(seg.epoch, step, len(tail[0]), replicas, frac, tail)] if tail else []
        after = step + (len(tail[0]) if tail else 0)
        self.segments = kept + new
        if seg.epoch + 1 < self.epochs:
            self.segments += self._epochs(seg.epoch + 1, after, replicas)

    def describe_tail(self, step: int) -> str:
        """``"N rows of epoch E dealt over R replicas in S steps"`` for the tail that
        starts at ``step`` ("" when none does)."""
        for seg in self.segments:
            if seg.first == step and seg.tail is not None and seg.n_steps:
                n = sum(len(b) for batches in seg.tail for b in batches)
                return (
                    f"the {n} rows of epoch {seg.epoch + 1} not yet read dealt over "
                    f"{seg.replicas} replica(s) in {seg.n_steps} step(s)"
                )
        return ""


def _deal_tail(rest: list[np.ndarray], replicas: int, batch: int) -> list[list[np.ndarray]]:
    """Each new replica's batches of the remaining rows ``rest`` (per old replica); []
    when fewer rows are left than replicas (dropped, as the remainder policy drops)."""
    every = np.concatenate(rest) if rest else np.empty(0, np.int64)
    if len(every) < replicas:
        return []
    if replicas <= len(rest):
        orphans = np.concatenate(rest[replicas:]) if len(rest) > replicas else every[:0]
        mine = [np.concatenate([rest[i], orphans[i::replicas]]) for i in range(replicas)]
    else:
        mine = [every[i::replicas] for i in range(replicas)]
    steps = math.ceil(max(len(m) for m in mine) / batch)
    if min(len(m) for m in mine) < steps:  # some would get an empty batch: deal evenly
        mine = [every[i::replicas] for i in range(replicas)]
        steps = math.ceil(max(len(m) for m in mine) / batch)
    return [np.array_split(m.astype(np.int64), steps) for m in mine]


class DealtLoader:
    """Replica ``replica``'s training batches as a :class:`DataDeal` deals them:
    a whole epoch from its block (read once per replica count, as
    :class:`~hpcnet.data.loader.BatchLoader` reads it), a tail from the rows it names
    (read in spans, then selected). Without a change of replica count it yields exactly
    BatchLoader's batches.

    Attributes:
        rows_read: every ``[lo, hi)`` span of positions read from the file.
        GAP: rows between two named rows above which a tail is read as two spans.

    Args:
        deal: the run's deal; read, never changed.
        replica: this replica's index under the deal's current count.
        path, split, index, mean, std, augment, crop_pad: as for BatchLoader.
    """

    def __init__(
        self,
        deal: DataDeal,
        replica: int,
        path: str | os.PathLike,
        *,
        mean: np.ndarray,
        std: np.ndarray,
        split: str = "train",
        index: np.ndarray | None = None,
        augment: bool = False,
        crop_pad: int = 2,
    ):
        self.deal, self.replica, self.path, self.split, self.index = (
            deal,
            replica,
            path,
            split,
            index,
        )
        self.mean, self.std, self.augment, self.crop_pad = mean, std, augment, crop_pad
        self._held: tuple | None = None  # (segment key, (positions, images, labels))
        self._lut: np.ndarray | None = None  # (C, 256) float32, from the first batch
        self.rows_read: list[tuple[int, int]] = []

    GAP = 4096

    def batches(self, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (x, y) for global steps ``step .. deal.total_steps - 1``: x (n, C, H,
        W) float32 normalised, y (n,) int64 (n = b, or fewer in a tail)."""
        for s in range(step, self.deal.total_steps):
            yield self.batch(s)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Global step ``step``'s batch (see :meth:`batches`)."""
        seg, k = self.deal.locate(step)
        pos, images, labels = self._rows_of(seg)
        at = np.searchsorted(pos, self.deal.rows(self.replica, step))
        images, labels = images[at], labels[at]
        if self.augment:  # as BatchLoader: per (seed, epoch, replica, batch) of a whole epoch
            key = [self.deal.seed, seg.epoch, self.replica, k, 0xA9]
            if seg.tail is not None:
                key += [seg.first]
            images = augment_images(images, np.random.default_rng(key), self.crop_pad)
        if self._lut is None:
            self._lut = _lut(self.mean, self.std, images.shape[1])
        return _apply_lut(images, self._lut), labels

    def _rows_of(self, seg: Segment) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted positions, images, labels) of every row this replica reads in ``seg``:
        its block for a whole epoch (kept while the count stays), its tail rows read in
        spans (a gap of over ``GAP`` rows starts a new read) for a tail."""
        key = (seg.replicas, None if seg.tail is None else seg.first)
        if self._held is not None and self._held[0] == key:
            return self._held[1]
        if seg.tail is None:
            lo, hi = assign_rows(self.deal.n_rows, seg.replicas, self.replica)
            spans = [(lo, hi)]
            pos = np.arange(lo, hi, dtype=np.int64)
        else:
            pos = np.unique(np.concatenate(seg.tail[self.replica]))
            cuts = np.flatnonzero(np.diff(pos) > self.GAP) + 1
            spans = [(int(p[0]), int(p[-1]) + 1) for p in np.split(pos, cuts) if len(p)]
        parts = [read_split_rows(self.path, self.split, self.index, lo, hi) for lo, hi in spans]
        self.rows_read += spans
        images = np.concatenate([p[0] for p in parts])  # (rows in the spans, C, H, W) uint8
        labels = np.concatenate([p[1] for p in parts])
        if seg.tail is not None:  # keep only the rows named
            every = np.concatenate([np.arange(lo, hi) for lo, hi in spans])
            at = np.searchsorted(every, pos)
            images, labels = images[at], labels[at]
        self._held = (key, (pos, images, labels))
        return self._held[1]

    def close(self) -> None:
        """Drops the rows held."""
        self._held = None
