"""What a dataset file holds, shared by the writer and the reader of the format.

The format version, the split names, the required root attributes, where the train
shard files live and which rows each holds, and the label check both sides apply.
The layout itself is described in :mod:`hpcnet.data.format`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from hpcnet.errors import DataError

FORMAT_VERSION = 1
SPLITS = ("train", "test")
REQUIRED_ATTRS = (
    "hpcnet_format",
    "class_names",
    "num_classes",
    "mean",
    "std",
    "source",
    "licence",
    "checksum",
)


def row_range(n_rows: int, n_parts: int, part: int) -> tuple[int, int]:
    """The contiguous, balanced row block ``[start, stop)`` of one of ``n_parts`` parts.

    The first ``n_rows % n_parts`` parts get one row more; all rows are covered once.

    Raises:
        ValueError: ``n_parts < 1``, ``part`` outside [0, n_parts) or ``n_rows < 0``.
    """
    if n_parts < 1 or not 0 <= part < n_parts or n_rows < 0:
        raise ValueError(f"bad row split: n_rows={n_rows}, n_parts={n_parts}, part={part}")
    base, extra = divmod(n_rows, n_parts)
    start = part * base + min(part, extra)
    return start, start + base + (1 if part < extra else 0)


def shard_path(path: str | os.PathLike, index: int, n_shards: int) -> Path:
    """Path of train shard ``index`` of ``n_shards`` beside the main file ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.train-{index:05d}-of-{n_shards:05d}.h5")


def check_label_range(path: Path, split: str, labels: np.ndarray, num_classes: int) -> None:
    """Raises DataError naming the first label of ``split`` outside [0, num_classes)."""
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: {split} label {i} is {int(labels[i])}, outside [0, {num_classes}) "
            f"({bad.size} bad labels in all)"
        )


def short_error(e: BaseException) -> str:
    """The first line of an exception's message (h5py's run to many), for DataError."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
