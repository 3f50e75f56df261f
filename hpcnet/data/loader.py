"""What each model replica reads: its row block, shuffled mini-batches, prefetched.

Each replica owns one contiguous block of the train split (:func:`assign_rows`) and
reads only that block, once, at construction; no rank ever loads the whole training
set. The file is never written here, so any number of ranks may read it at once.

Remainder policy: for training, every replica gets exactly ``N // n_replicas`` rows
and the last ``N % n_replicas`` rows of the split are DROPPED (never trained on), and
within a replica the last partial batch of each epoch is dropped too (a different one
each epoch, since the order is reshuffled). So every replica runs the same
``steps_per_epoch``, and a synchronous allreduce, which every replica must enter the
same number of times, can never hang waiting for a replica that ran out of data.
Evaluation (:func:`eval_batches`) drops nothing: all rows are spread over the replicas.

Augmentation (training batches only, ``augment=True``): each image is zero-padded by
``crop_pad`` pixels on every side, a random H x W window of the padded image is cut
out and, with probability 1/2, mirrored left-right (Krizhevsky et al. 2012, sec. 4.1:
random crops and horizontal reflections). The choices of batch ``step`` of ``epoch``
come from ``np.random.default_rng([seed, epoch, replica, step, 0xA9])``, so they are
reproducible and differ between epochs, replicas and batches.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np

from hpcnet.data.format import read_rows, row_range, split_size
from hpcnet.errors import DataError


def assign_rows(
    n_rows: int, n_replicas: int, replica: int, *, drop_remainder: bool = True
) -> tuple[int, int]:
    """The contiguous row block ``[start, stop)`` of one replica.

    Args:
        n_rows: rows in the split.
        n_replicas: number of replicas sharing it.
        replica: this replica's index in [0, n_replicas).
        drop_remainder: if True (training), every replica gets exactly
            ``n_rows // n_replicas`` rows and the last ``n_rows % n_replicas`` rows are
            dropped, so all replicas run the same number of steps. If False
            (evaluation), the first ``n_rows % n_replicas`` replicas get one row more
            and all rows are covered exactly once.

    Returns:
        (start, stop) with ``0 <= start <= stop <= n_rows``.

    Raises:
        ValueError: ``n_replicas < 1``, ``replica`` outside [0, n_replicas) or
            ``n_rows < 0``.
    """
    if not drop_remainder:
        return row_range(n_rows, n_replicas, replica)
    if n_replicas < 1 or not 0 <= replica < n_replicas or n_rows < 0:
        raise ValueError(
            f"bad row assignment: n_rows={n_rows}, n_replicas={n_replicas}, replica={replica}"
        )
    per = n_rows // n_replicas
    return replica * per, (replica + 1) * per


def normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """Turn raw uint8 images into model inputs ``(img - mean[c]) / std[c]``.

    Uses a 256-entry lookup table per channel, computed in float64, so each output is
    the float64 formula rounded once to float32.

    Args:
        images: (n, C, H, W) uint8.
        mean: (C,) per-channel mean, raw pixel units.
        std: (C,) per-channel standard deviation, raw pixel units, > 0.

    Returns:
        (n, C, H, W) float32, C-contiguous.
    """
    return _apply_lut(images, _lut(mean, std, images.shape[1]))


def _lut(mean: np.ndarray, std: np.ndarray, n_channels: int) -> np.ndarray:
    mean = np.asarray(mean, dtype=np.float64).reshape(-1)
    std = np.asarray(std, dtype=np.float64).reshape(-1)
    if mean.shape != (n_channels,) or std.shape != (n_channels,):
        raise ValueError(
            f"mean and std need {n_channels} values (one per channel), got "
            f"{mean.shape[0]} and {std.shape[0]}"
        )
    if np.any(std <= 0) or not np.all(np.isfinite(mean)):
        raise ValueError(f"bad normalisation: mean={mean.tolist()}, std={std.tolist()}")
    pixels = np.arange(256, dtype=np.float64)
    return ((pixels[None, :] - mean[:, None]) / std[:, None]).astype(np.float32)  # (C, 256)


def augment_images(images: np.ndarray, rng: np.random.Generator, crop_pad: int) -> np.ndarray:
    """Random crop with zero padding and random horizontal flip (Krizhevsky et al. 2012,
    sec. 4.1), one draw per image.

    Args:
        images: (n, C, H, W), any dtype (uint8 before normalisation here; the padding is 0).
        rng: the generator the choices come from (3 draws of n values, in a fixed order).
        crop_pad: pixels of zero padding on each side; the crop offset is uniform in
            [0, 2 crop_pad] on each axis.
    Returns:
        (n, C, H, W) same dtype, C-contiguous, a new array.
    """
    n, c, h, w = images.shape
    oy = rng.integers(0, 2 * crop_pad + 1, n)
    ox = rng.integers(0, 2 * crop_pad + 1, n)
    flip = rng.random(n) < 0.5
    p = crop_pad
    padded = np.zeros((n, c, h + 2 * p, w + 2 * p), images.dtype)  # (n, C, H+2p, W+2p)
    padded[:, :, p : p + h, p : p + w] = images
    rows = oy[:, None] + np.arange(h)  # (n, H)
    cols = np.where(flip[:, None], np.arange(w)[::-1], np.arange(w)) + ox[:, None]  # (n, W)
    return padded[
        np.arange(n)[:, None, None, None],
        np.arange(c)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]  # (n, C, H, W)


def _apply_lut(images: np.ndarray, lut: np.ndarray) -> np.ndarray:
    out = np.empty(images.shape, dtype=np.float32)  # (n, C, H, W)
    for c in range(images.shape[1]):
        np.take(lut[c], images[:, c], out=out[:, c])
    return out


class BatchLoader:
    """Shuffled training mini-batches from this replica's row block, prefetched.

    Reads rows ``assign_rows(N, n_replicas, replica)`` of ``split`` once, at
    construction (one :func:`read_rows` call, recorded in :attr:`rows_read`). Each
    epoch walks them in the permutation ``np.random.default_rng([seed, epoch,
    replica]).permutation(n_local)``, so the order is reproducible, differs between
    epochs and between replicas. With ``augment=True`` every image of a batch is
    randomly cropped (zero padding ``crop_pad``) and flipped, reproducibly (see the
    module doc). A background thread builds the next batch while the caller computes
    on the current one.

    Purely local: no communication, any rank may construct one independently.

    ``index``: the rows of the split to use (sorted; e.g. the train rows a validation
    split leaves, :func:`hpcnet.data.splits.holdout`); replicas then share
    ``index`` as they would the whole split, and ``start``, ``stop`` are positions in it.

    Attributes:
        start, stop: this replica's row block ``[start, stop)`` in the split.
        n_local: ``stop - start`` rows held (uint8) in memory.
        steps_per_epoch: ``n_local // batch_size``, the same on every replica.
        image_shape: (C, H, W).
        rows_read: every ``(start, stop)`` range read from the file.

    Raises (constructor):
        DataError: the file or split is unreadable, or ``batch_size`` exceeds this
            replica's rows (0 steps per epoch).
        ValueError: bad ``replica``/``n_replicas``/``batch_size``, or ``mean``/``std``
            do not have one positive value per channel.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        replica: int,
        n_replicas: int,
        batch_size: int,
        seed: int,
        mean: np.ndarray,
        std: np.ndarray,
        split: str = "train",
        augment: bool = False,
        crop_pad: int = 2,
        index: np.ndarray | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if crop_pad < 0:
            raise ValueError(f"crop_pad must be >= 0, got {crop_pad}")
        self.augment, self.crop_pad = augment, crop_pad
        self.path = path
        self.split = split
        self.replica = replica
        self.n_replicas = n_replicas
        self.batch_size = batch_size
        self.seed = seed
        self.index = index
        n_rows = split_size(path, split) if index is None else len(index)
        self.start, self.stop = assign_rows(n_rows, n_replicas, replica)
        self.n_local = self.stop - self.start
        self.steps_per_epoch = self.n_local // batch_size
        if self.steps_per_epoch == 0:
            raise DataError(
                f"{path}: the {split} split has {n_rows} rows, so each of {n_replicas} "
                f"replicas gets {self.n_local}, fewer than batch_size={batch_size}; use a "
                "smaller batch or fewer replicas"
            )
        self.rows_read: list[tuple[int, int]] = []
        self._images, self._labels = read_split_rows(path, split, index, self.start, self.stop)
        self.rows_read.append((self.start, self.stop))
        self.image_shape = tuple(int(d) for d in self._images.shape[1:])
        self._lut = _lut(mean, std, self.image_shape[0])
        self._pool: ThreadPoolExecutor | None = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix=f"hpcnet-prefetch-{replica}"
        )

    def batches(self, epoch: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield this epoch's ``steps_per_epoch`` batches (from batch ``start`` on: a
        resumed run; every batch depends only on the seed, epoch, replica and its index).

        Args:
            epoch: epoch number (>= 0); seeds the permutation.
            start: the first batch to yield (0 .. steps_per_epoch).

        Yields:
            (x, y): x (batch_size, C, H, W) float32 C-contiguous, normalised;
            y (batch_size,) int64. Each batch is a fresh array the caller may keep.
        """
        if self._pool is None:
            raise RuntimeError("BatchLoader is closed")
        order = np.random.default_rng([self.seed, epoch, self.replica]).permutation(self.n_local)
        b = self.batch_size

        def submit(step: int) -> Future:
            idx = order[step * b : (step + 1) * b]
            if not self.augment:
                return self._pool.submit(self._make, idx)
            rng = np.random.default_rng([self.seed, epoch, self.replica, step, 0xA9])
            return self._pool.submit(self._make, idx, rng)

        pending: Future | None = submit(start) if start < self.steps_per_epoch else None
        try:
            for step in range(start, self.steps_per_epoch):
                batch = pending.result()
                pending = submit(step + 1) if step + 1 < self.steps_per_epoch else None
                yield batch
        finally:
            if pending is not None:
                pending.cancel()

    def _make(
        self, idx: np.ndarray, rng: np.random.Generator | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        images = self._images[idx]  # (b, C, H, W) uint8
        if rng is not None:
            images = augment_images(images, rng, self.crop_pad)
        return _apply_lut(images, self._lut), self._labels[idx]

    def close(self) -> None:
        """Stop the prefetch thread and drop the cached rows. Idempotent."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        self._images = self._labels = None

    def __enter__(self) -> BatchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eval_batches(
    path: str | os.PathLike,
    *,
    replica: int,
    n_replicas: int,
    batch_size: int,
    mean: np.ndarray,
    std: np.ndarray,
    split: str = "test",
    index: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield this replica's evaluation slice in order, reading one batch at a time.

    The slice is ``assign_rows(N, n_replicas, replica, drop_remainder=False)``: all N
    rows are covered once across replicas, so sums of per-replica correct counts give
    the exact accuracy. Replicas may get different numbers of batches; the caller must
    not put a collective inside this loop.

    Args:
        path: the dataset file.
        replica: this replica's index in [0, n_replicas).
        n_replicas: number of replicas sharing the split.
        batch_size: rows per batch; the last batch may be smaller.
        mean, std: (C,) normalisation, raw pixel units.
        split: which split to read.
        index: only these rows of it (sorted: a validation split); None: every row.

    Yields:
        (x, y): x (b, C, H, W) float32 C-contiguous, normalised; y (b,) int64.

    Raises:
        DataError: the file or split is unreadable.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    n_rows = split_size(path, split) if index is None else len(index)
    start, stop = assign_rows(n_rows, n_replicas, replica, drop_remainder=False)
    lut = None
    for lo in range(start, stop, batch_size):
        images, labels = read_split_rows(path, split, index, lo, min(stop, lo + batch_size))
        if lut is None:
            lut = _lut(mean, std, images.shape[1])
        yield _apply_lut(images, lut), labels


def read_split_rows(
    path, split: str, index: np.ndarray | None, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``[lo, hi)`` of the split, or rows ``index[lo:hi]`` of it (a run's train rows
    when it holds out a validation split).

    Returns:
        (images, labels): (hi - lo, C, H, W) uint8 and (hi - lo,) int64.
    Raises:
        DataError: the file is unreadable.
    """
    if index is None:
        return read_rows(path, split, lo, hi)
    from hpcnet.data.splits import read_indexed

    return read_indexed(path, split, index, lo, hi)
