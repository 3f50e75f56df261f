"""Writing hpcnet dataset files: :func:`write_dataset` (one file, or a main file over
train shard files) and :func:`channel_stats`.

Every file is written to a temporary name and moved into place, shard files first,
so a reader never sees a partial file. The layout is in :mod:`hpcnet.data.format`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np

from hpcnet.data._format_layout import (
    FORMAT_VERSION,
    SPLITS,
    check_label_range,
    row_range,
    shard_path,
    short_error,
)
from hpcnet.errors import DataError

CHUNK_BYTES = 1 << 20  # target size of one image chunk; HDF5's default chunk cache is 1 MiB
_LABEL_CHUNK_ROWS = 1 << 16


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
    n_train = len(train_images)
    if not 1 <= shards <= n_train:
        raise DataError(f"{path}: shards={shards} must be in [1, {n_train}] (the train rows)")
    if len(class_names) < 1:
        raise DataError(f"{path}: class_names is empty")

    mean, std = channel_stats(splits["train"][0])
    attrs = {
        "hpcnet_format": np.int64(FORMAT_VERSION),
        "class_names": np.array([str(c) for c in class_names], dtype=h5py.string_dtype()),
        "num_classes": np.int64(len(class_names)),
        "mean": mean,
        "std": std,
        "source": str(source),
        "licence": str(licence),
        "checksum": _checksum(splits),
    }

    written: list[Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if shards == 1:
            with _atomic_h5(path) as f:
                for split, (images, labels) in splits.items():
                    _write_arrays(f, split, images, labels)
                f.attrs.update(attrs)
        else:
            images, labels = splits["train"]
            layout_images = h5py.VirtualLayout(shape=images.shape, dtype=np.uint8)
            layout_labels = h5py.VirtualLayout(shape=labels.shape, dtype=np.int64)
            for i in range(shards):
                start, stop = row_range(n_train, shards, i)
                spath = shard_path(path, i, shards)
                with _atomic_h5(spath) as f:
                    _write_arrays(f, "train", images[start:stop], labels[start:stop])
                    f.attrs.update(
                        {
                            "hpcnet_shard_of": path.name,
                            "shard_index": np.int64(i),
                            "n_shards": np.int64(shards),
                            "row_start": np.int64(start),
                            "row_stop": np.int64(stop),
                        }
                    )
                written.append(spath)
                # Relative source name: HDF5 looks for it beside the virtual dataset's file.
                n = stop - start
                layout_images[start:stop] = h5py.VirtualSource(
                    spath.name, "train/images", shape=(n, *images.shape[1:])
                )
                layout_labels[start:stop] = h5py.VirtualSource(
                    spath.name, "train/labels", shape=(n,)
                )
            with _atomic_h5(path) as f:
                f.create_virtual_dataset("train/images", layout_images, fillvalue=0)
                f.create_virtual_dataset("train/labels", layout_labels, fillvalue=-1)
                _write_arrays(f, "test", *splits["test"])
                f.attrs.update(attrs)
        written.append(path)
    except OSError as e:
        raise DataError(f"{path}: cannot write the dataset ({short_error(e)})") from e
    return written


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


def _write_arrays(f: h5py.File, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    row_bytes = int(np.prod(images.shape[1:]))
    rows = max(1, min(len(images), CHUNK_BYTES // max(row_bytes, 1)))
    f.create_dataset(
        f"{split}/images", data=images, chunks=(rows, *images.shape[1:]), track_times=False
    )
    f.create_dataset(
        f"{split}/labels",
        data=labels,
        chunks=(min(len(labels), _LABEL_CHUNK_ROWS),),
        track_times=False,
    )


def _checksum(splits: dict[str, tuple[np.ndarray, np.ndarray]]) -> str:
    digest = hashlib.sha256()
    for split in SPLITS:
        images, labels = splits[split]
        digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        digest.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return digest.hexdigest()


@contextlib.contextmanager
def _atomic_h5(path: Path) -> Iterator[h5py.File]:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            yield f
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
