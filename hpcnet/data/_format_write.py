"""Writing hpcnet dataset files from arrays in memory: :func:`write_dataset` (one file,
or a main file over train shard files), through :class:`hpcnet.data.writer.DatasetWriter`,
and :func:`channel_stats`.

Every file is written to a temporary name and moved into place, shard files first,
so a reader never sees a partial file. The layout is in :mod:`hpcnet.data.format`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hpcnet.data._format_layout import check_label_range
from hpcnet.errors import DataError

CHUNK_BYTES = 1 << 20  # target size of one image chunk; HDF5's default chunk cache is 1 MiB


def write_dataset(
    path: str | os.PathLike,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    class_names: Sequence[str],
    source: str,
    licence: str,
    shards: int = 1,
) -> list[Path]:
    """Write a dataset file (and, with ``shards > 1``, its train shard files) atomically.

    Every file is written to a temporary name in its final directory and moved into
    place with ``os.replace``; shard files go first, the main file last, so a reader
    never sees a main file whose shards are missing.

    Args:
        path: the main file to write; its parent directory is created.
        train_images: (N, C, H, W) uint8.
        train_labels: (N,) any integer dtype, values in [0, len(class_names)).
        test_images: (M, C, H, W) uint8.
        test_labels: (M,) any integer dtype.
        class_names: one name per class.
        source: where the data came from (URL or description).
        licence: the data's licence.
        shards: number of train shard files; 1 writes a single file.

    Returns:
        Every file written: the shard files in order, then the main file.

    Raises:
        DataError: the arrays are malformed (wrong rank, dtype, counts, label range),
            ``shards`` is not in [1, N], or a file cannot be written.
    """
    from hpcnet.data.writer import DatasetWriter

    path = Path(path)
    splits = {
        "train": _checked_arrays(path, "train", train_images, train_labels, len(class_names)),
        "test": _checked_arrays(path, "test", test_images, test_labels, len(class_names)),
    }
    if train_images.shape[1:] != test_images.shape[1:]:
        raise DataError(
            f"{path}: train images are {train_images.shape[1:]} but test images are "
            f"{test_images.shape[1:]}; both splits need the same (C, H, W)"
        )
    with DatasetWriter(
        path,
        train_images.shape[1:],
        {split: len(images) for split, (images, _) in splits.items()},
        class_names=class_names,
        source=source,
        licence=licence,
        shards=shards,
    ) as writer:
        for split, (images, labels) in splits.items():
            writer.write(split, images, labels)
    return writer.written


def channel_stats(images: np.ndarray, chunk_rows: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and standard deviation of uint8 images, in raw pixel units.

    Accumulates in float64 over row chunks, so memory stays O(chunk) and the result is
    exact up to float64 rounding. A channel with zero spread gets std 1 so that
    normalising by it stays finite.

    Args:
        images: (N, C, H, W) uint8, N >= 1.
        chunk_rows: rows per accumulation step.

    Returns:
        (mean, std): each (C,) float64 (population std, ddof=0).
    """
    n_channels = images.shape[1]
    total = np.zeros(n_channels)
    total_sq = np.zeros(n_channels)
    for start in range(0, len(images), chunk_rows):
        block = images[start : start + chunk_rows].astype(np.float64)  # (n, C, H, W)
        total += block.sum(axis=(0, 2, 3))
        total_sq += np.square(block).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    var = np.maximum(total_sq / count - mean**2, 0.0)
    std = np.sqrt(var)
    std[std == 0] = 1.0
    return mean, std


def _checked_arrays(
    path: Path, split: str, images: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(images)
    labels = np.asarray(labels)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"{path}: {split} images are {images.dtype} {images.shape}, expected uint8 (N, C, H, W)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: {split} labels are {labels.dtype} {labels.shape}, expected integer (N,)"
        )
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{path}: the {split} split is empty")
    check_label_range(path, split, labels, num_classes)
    return images, np.ascontiguousarray(labels, dtype="<i8")
