"""Readers of the image data sets users have: NumPy arrays, image folders, CIFAR, IDX.

Each reader returns a :class:`~hpcnet.data.sources.base.Source`: its class names and
one :class:`~hpcnet.data.sources.base.Part` per split it holds (``train``, and
``test`` when it has its own). A part knows its labels at once (8 bytes a row) and
reads its images on demand, a chunk of rows at a time, so an import holds one chunk
of images whatever the data set's size (:mod:`hpcnet.data.importer`).

Formats (``data import --format``): ``npz`` (:mod:`~hpcnet.data.sources.arrays`),
``images`` (:mod:`~hpcnet.data.sources.folders`), ``cifar10`` and ``cifar100``, ``idx``
(:mod:`~hpcnet.data.sources.cifar`).
"""

from __future__ import annotations

from pathlib import Path

from hpcnet.data.sources.arrays import read_arrays
from hpcnet.data.sources.base import Part, Source
from hpcnet.data.sources.cifar import DIRS as CIFAR_DIRS
from hpcnet.data.sources.cifar import read_cifar, read_idx_folder
from hpcnet.data.sources.folders import BadImage, read_folder
from hpcnet.errors import DataError

__all__ = ["FORMATS", "BadImage", "Part", "Source", "detect_format", "read_source"]

FORMATS = ("npz", "images", "cifar10", "cifar100", "idx")


def detect_format(path: Path) -> str:
    """The format of ``path`` for ``--format auto``: ``.npz``/``.npy`` -> npz; a folder
    with CIFAR's batch files (or the folder an archive extracts to) -> cifar10 or
    cifar100; the four IDX files -> idx; ``.npy`` files -> npz; else images.

    Raises:
        DataError: no such path, or a file that is not an array file.
    """
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        if path.suffix in (".npz", ".npy"):
            return "npz"
        raise DataError(f"{path}: not a folder or an .npz file; give --format")
    for folder in (path, *(path / d for d in CIFAR_DIRS)):
        names = {p.name for p in folder.iterdir()} if folder.is_dir() else set()
        if {"train", "meta"} <= names or "train.bin" in names:
            return "cifar100"
        if "data_batch_1" in names or "data_batch_1.bin" in names:
            return "cifar10"
    names = {p.name for p in path.iterdir()}
    if "train-images-idx3-ubyte.gz" in names:
        return "idx"
    if any(n.endswith(".npy") for n in names):
        return "npz"
    return "images"


def read_source(path: Path, fmt: str, *, label: str = "fine") -> Source:
    """Opens ``path`` as ``fmt`` (one of :data:`FORMATS`; ``label``: CIFAR-100's
    ``fine`` or ``coarse`` labels).

    Raises:
        DataError: one line naming the file and what is wrong with it.
    """
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if fmt == "npz":
        return read_arrays(path)
    if fmt == "images":
        return read_folder(path)
    if fmt in ("cifar10", "cifar100"):
        return read_cifar(path, int(fmt[5:]), label)
    if fmt == "idx":
        return read_idx_folder(path)
    raise DataError(f"--format {fmt}: unknown; choose auto or one of {', '.join(FORMATS)}")
