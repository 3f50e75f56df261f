"""CIFAR-10 / CIFAR-100 (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html)
in their published files, and the gzip IDX files of MNIST / Fashion-MNIST.

Python version: pickled dicts (``data``: (10000, 3072) uint8, each row 1024 red, 1024
green, 1024 blue values of a 32x32 image in row-major order; ``labels``, or CIFAR-100's
``fine_labels`` / ``coarse_labels``) in ``data_batch_1..5`` and ``test_batch`` with
``batches.meta`` (``label_names``), or ``train`` and ``test`` with ``meta``
(``fine_label_names``, ``coarse_label_names``). Read by an unpickler that builds NumPy
arrays and nothing else (a pickle can run code; these may not).

Binary version: fixed-size records, one label byte (CIFAR-100: coarse, then fine) and
the 3072 pixel bytes, in ``data_batch_1..5.bin`` and ``test_batch.bin`` with
``batches.meta.txt``, or ``train.bin`` and ``test.bin`` with ``fine_label_names.txt``
and ``coarse_label_names.txt``; memory-mapped.

SOURCE is the folder holding the files or the one the archive was extracted in
(``cifar-10-batches-py/``, ``cifar-10-batches-bin/``, ``cifar-100-python/``,
``cifar-100-binary/``).
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from hpcnet.data.sources.base import Part, Source, chunked
from hpcnet.errors import DataError

DIRS = ("cifar-10-batches-py", "cifar-10-batches-bin", "cifar-100-python", "cifar-100-binary")
CIFAR_SOURCE = "CIFAR-%d, Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html"
_PIXELS = 3 * 32 * 32
_FILES = {  # classes -> version -> (train files, test files, names file)
    10: {
        "python": ([f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "batches.meta"),
        "binary": (
            [f"data_batch_{i}.bin" for i in range(1, 6)],
            ["test_batch.bin"],
            "batches.meta.txt",
        ),
    },
    100: {
        "python": (["train"], ["test"], "meta"),
        "binary": (["train.bin"], ["test.bin"], "fine_label_names.txt"),
    },
}


def read_cifar(path: Path, classes: int, label: str = "fine") -> Source:
    """The ``cifar10`` (``classes`` 10) or ``cifar100`` (100; ``label`` ``fine`` or
    ``coarse``) reader.

    Raises:
        DataError: a missing file (named), a truncated batch, a pickle that holds
            something other than arrays, labels and names.
    """
    if label not in ("fine", "coarse"):
        raise DataError(f"--label {label}: choose fine or coarse (CIFAR-100's two label sets)")
    folder, version = _locate(path, classes)
    train, test, names_file = _FILES[classes][version]
    read = _python_batch if version == "python" else _binary_batch
    parts = {}
    for split, files in (("train", train), ("test", test)):
        batches = [read(folder / f, classes, label) for f in files]
        labels = np.concatenate([b[1] for b in batches])
        starts = np.cumsum([0] + [len(b[1]) for b in batches])
        parts[split] = Part(
            labels,
            lambda rows, chunk, bs=batches, st=starts: _chunks(bs, st, rows, chunk),
            lambda i, fs=files, st=starts: _row_name(folder, fs, st, i),
        )
    names = _names(folder, version, classes, label, names_file)
    if len(names) < int(max(p.labels.max() for p in parts.values())) + 1:
        raise DataError(f"{folder / names_file}: fewer class names than the labels use")
    return Source(
        f"cifar{classes}",
        folder,
        parts,
        class_names=names,
        licence="see https://www.cs.toronto.edu/~kriz/cifar.html",
    )


def _locate(path: Path, classes: int) -> tuple[Path, str]:
    for folder in (path, *(path / d for d in DIRS)):
        for version in ("python", "binary"):
            train, test, names = _FILES[classes][version]
            if (folder / train[0]).is_file():
                for f in (*train, *test, names):
                    if not (folder / f).is_file():
                        raise DataError(f"{folder / f}: missing (a CIFAR-{classes} {version} file)")
                return folder, version
    want = _FILES[classes]["python"][0][0], _FILES[classes]["binary"][0][0]
    raise DataError(f"{path}: no CIFAR-{classes} files in it (looked for {want[0]} or {want[1]})")


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists, strings, numbers and NumPy arrays; refuses any other class."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused to load {module}.{name}")


def _unpickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _ArraysOnly(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
        raise DataError(f"{path}: not a readable CIFAR python batch ({e or 'truncated'})") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a CIFAR python batch (a {type(obj).__name__})")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in obj.items()}


def _python_batch(path: Path, classes: int, label: str):
    """(data accessor, labels) of one pickled batch; the pixels stay on disk until read."""
    d = _unpickle(path)
    key = "labels" if classes == 10 else f"{label}_labels"
    if "data" not in d or key not in d:
        raise DataError(f"{path}: has {', '.join(sorted(d))}; a CIFAR batch has data and {key}")
    labels = np.asarray(d[key], np.int64).reshape(-1)
    data = np.asarray(d["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _PIXELS:
        raise DataError(f"{path}: data is {data.dtype} {data.shape}, expected uint8 (N, 3072)")
    if len(data) != len(labels):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels (truncated?)")
    del data  # read again, a batch at a time, when the rows are wanted
    return (lambda: np.asarray(_unpickle(path)["data"])), labels


def _binary_batch(path: Path, classes: int, label: str):
    record = _PIXELS + (1 if classes == 10 else 2)
    size = path.stat().st_size
    if size == 0 or size % record:
        raise DataError(
            f"{path}: {size} bytes is not a whole number of {record}-byte records (truncated?)"
        )
    rec = np.memmap(path, np.uint8, mode="r").reshape(-1, record)
    col = 0 if classes == 10 or label == "coarse" else 1
    labels = np.asarray(rec[:, col], np.int64)
    return (lambda: rec[:, record - _PIXELS :]), labels


def _chunks(batches, starts: np.ndarray, rows: np.ndarray, chunk: int):
    """Chunks of (k, 3, 32, 32) uint8 images; one batch's pixels in memory at a time."""
    loaded, data = -1, None
    for want in chunked(rows, chunk):
        out = np.empty((len(want), 3, 32, 32), np.uint8)
        which = np.searchsorted(starts, want, side="right") - 1
        for b in np.unique(which):
            if b != loaded:
                loaded, data = b, batches[b][0]()
            sel = which == b
            out[sel] = np.asarray(data[want[sel] - starts[b]]).reshape(-1, 3, 32, 32)
        yield out


def _row_name(folder: Path, files: list[str], starts: np.ndarray, i: int) -> str:
    b = int(np.searchsorted(starts, i, side="right") - 1)
    return f"{folder / files[b]}: row {i - starts[b]}"


def _names(folder: Path, version: str, classes: int, label: str, names_file: str) -> list[str]:
    if version == "binary":
        file = folder / (names_file if classes == 10 else f"{label}_label_names.txt")
        if not file.is_file():
            raise DataError(f"{file}: missing (the class names)")
        return [line.strip() for line in file.read_text().splitlines() if line.strip()]
    meta = _unpickle(folder / names_file)
    key = "label_names" if classes == 10 else f"{label}_label_names"
    if key not in meta:
        raise DataError(f"{folder / names_file}: has no {key}")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[key]]


def read_idx_folder(path: Path) -> Source:
    """The ``idx`` reader: the four gzip IDX files of MNIST / Fashion-MNIST in ``path``
    (Fashion-MNIST's class names unless ``--class-names``)."""
    from hpcnet.data.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_LICENCE, IDX_FILES, read_idx

    if not path.is_dir():
        raise DataError(f"{path}: not a folder (--format idx reads the four .gz IDX files)")
    parts = {}
    for split, (images_name, labels_name) in IDX_FILES.items():
        images = read_idx(path / images_name, 3)
        labels = read_idx(path / labels_name, 1).astype(np.int64)
        if len(images) != len(labels):
            raise DataError(
                f"{path / labels_name}: {len(labels)} labels but {images_name} has "
                f"{len(images)} images"
            )
        parts[split] = Part(
            labels,
            lambda rows, chunk, x=images: (x[w][:, None] for w in chunked(rows, chunk)),
            lambda i, n=images_name: f"{path / n}: image {i}",
        )
    return Source(
        "idx", path, parts, class_names=list(FASHION_MNIST_CLASSES), licence=FASHION_MNIST_LICENCE
    )
