"""Import IDX files (the MNIST / Fashion-MNIST format) into an hpcnet dataset file.

IDX (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a big-endian header -- magic
``0x0000TTDD`` with type code TT (0x08 = unsigned byte) and DD dimensions, then one
uint32 per dimension -- followed by the raw array. Parsing is done by ``idx2numpy``;
this module checks what it returns.
"""

from __future__ import annotations

import gzip
import os
import zlib
from collections.abc import Sequence
from pathlib import Path

import idx2numpy
import numpy as np

from hpcnet.data.format import write_dataset
from hpcnet.errors import DataError

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
FASHION_MNIST_SOURCE = (
    "Fashion-MNIST, Xiao, Rasul & Vollgraf 2017 (arXiv:1708.07747), Zalando Research, "
    "https://github.com/zalandoresearch/fashion-mnist"
)
FASHION_MNIST_LICENCE = "MIT (Copyright (c) 2017 Zalando SE)"

# split -> (images file, labels file)
IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read one gzip-compressed unsigned-byte IDX file.

    Args:
        path: the ``.gz`` file.
        ndim: the number of dimensions it must have (3 for images, 1 for labels).

    Returns:
        The array, uint8, of ``ndim`` dimensions (read-only).

    Raises:
        DataError: the file is missing, not gzip, has a bad magic number, is not
            unsigned-byte data, has the wrong number of dimensions or is truncated.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with gzip.open(path, "rb") as f:
            array = idx2numpy.convert_from_file(f)
    except idx2numpy.FormatError as e:
        raise DataError(f"{path}: not a valid IDX file ({e})") from e
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    magic = f"0x{0x0800 + ndim:08X}"
    if array.dtype != np.uint8:
        raise DataError(
            f"{path}: IDX data type is {array.dtype}, expected unsigned byte (magic {magic})"
        )
    if array.ndim != ndim:
        raise DataError(
            f"{path}: IDX array has {array.ndim} dimensions {array.shape}, expected {ndim} "
            f"(magic {magic})"
        )
    return array


def import_idx(
    src_dir: str | os.PathLike,
    out: str | os.PathLike,
    *,
    shards: int = 1,
    class_names: Sequence[str] = FASHION_MNIST_CLASSES,
    source: str = FASHION_MNIST_SOURCE,
    licence: str = FASHION_MNIST_LICENCE,
) -> list[Path]:
    """Convert the four gzip IDX files in ``src_dir`` into an hpcnet dataset file.

    Reads ``train-images-idx3-ubyte.gz``, ``train-labels-idx1-ubyte.gz``,
    ``t10k-images-idx3-ubyte.gz`` and ``t10k-labels-idx1-ubyte.gz``; images (N, H, W)
    become (N, 1, H, W) uint8. Holds the whole data set in memory (Fashion-MNIST:
    about 55 MB); run it on one process.

    Args:
        src_dir: directory holding the four files.
        out: the dataset file to write (atomically).
        shards: number of train shard files (see :func:`write_dataset`).
        class_names: one name per class; labels must lie in [0, len(class_names)).
        source: recorded in the file's ``source`` attribute.
        licence: recorded in the file's ``licence`` attribute.

    Returns:
        Every file written (shards, then the main file).

    Raises:
        DataError: naming the file, for a missing or malformed IDX file, image and label
            counts that differ, labels outside the class range, or an unwritable output.
    """
    src_dir = Path(src_dir)
    arrays = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(src_dir / images_name, 3)
        labels = read_idx(src_dir / labels_name, 1)
        if len(images) != len(labels):
            raise DataError(
                f"{src_dir / labels_name}: {len(labels)} labels but {images_name} has "
                f"{len(images)} images"
            )
        if labels.size and labels.max() >= len(class_names):
            raise DataError(
                f"{src_dir / labels_name}: label {int(labels.max())} is outside the "
                f"{len(class_names)} classes"
            )
        arrays[split] = (images[:, None, :, :], labels.astype(np.int64))  # (N, 1, H, W)
    return write_dataset(
        out,
        *arrays["train"],
        *arrays["test"],
        class_names=class_names,
        source=source,
        licence=licence,
        shards=shards,
    )
