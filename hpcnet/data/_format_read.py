"""Reading hpcnet dataset files: validate (:func:`open_dataset`, :class:`DatasetInfo`),
count (:func:`split_size`), read row ranges (:func:`read_rows`) and check the data
against its stored checksum (:func:`verify_checksum`).

HDF5 silently reads a *missing* source file of a virtual dataset as zeros, so every
read first checks that the shard files covering its rows exist. The layout is in
:mod:`hpcnet.data.format`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from hpcnet.data._format_layout import (
    FORMAT_VERSION,
    REQUIRED_ATTRS,
    SPLITS,
    check_label_range,
    short_error,
)
from hpcnet.errors import DataError


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """What :func:`open_dataset` found in a validated dataset file.

    Attributes:
        path: the main dataset file.
        n_train: number of train rows (samples).
        n_test: number of test rows (samples).
        image_shape: (C, H, W) of one image.
        num_classes: number of classes; labels lie in [0, num_classes).
        class_names: one name per class.
        mean: (C,) float64, per-channel mean of the train images, raw pixel units.
        std: (C,) float64, per-channel standard deviation of the train images, raw pixel
            units (population std, ddof=0; a constant channel is stored as 1).
        source: where the data came from (URL or description).
        licence: the data's licence.
        checksum: sha256 hex stored in the file (see :func:`verify_checksum`).
        shard_files: the shard files the virtual datasets read from; empty if unsharded.
        train_index: the train rows a run trains on (sorted), when it holds some out
            (``--val-fraction``: :func:`hpcnet.data.splits.holdout`); None: every row.
            ``n_train`` then counts these rows.
        val_index: the train rows a run holds out for validation; None: none.
    """

    path: Path
    n_train: int
    n_test: int
    image_shape: tuple[int, int, int]
    num_classes: int
    class_names: tuple[str, ...]
    mean: np.ndarray
    std: np.ndarray
    source: str
    licence: str = ""
    checksum: str = ""
    shard_files: tuple[Path, ...] = ()
    train_index: np.ndarray | None = None
    val_index: np.ndarray | None = None


def open_dataset(path: str | os.PathLike) -> DatasetInfo:
    """Validate a dataset file completely and describe it.

    Reads the attributes, the shapes and the labels of both splits (small), never the
    image arrays. For a sharded file, checks that every shard file exists, is HDF5 and
    holds a dataset of the mapped shape.

    Args:
        path: the main dataset file.

    Returns:
        The file's :class:`DatasetInfo`.

    Raises:
        DataError: one line ``"<path>: <what is wrong>"`` for a missing file, a
            truncated or non-HDF5 file, a missing dataset or attribute, images that are
            not 4-D uint8, labels that are not 1-D integer, an image/label count
            mismatch, a label outside [0, num_classes), train and test image shapes that
            disagree, or a missing or broken shard file.
    """
    path = Path(path)
    with _open(path) as f:
        try:
            return _inspect(path, f)
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(f"{path}: unreadable dataset file ({short_error(e)})") from e


def split_size(path: str | os.PathLike, split: str) -> int:
    """Number of rows in ``split`` of a dataset file, without reading any data.

    Raises:
        DataError: the file or the split's datasets are missing or unreadable.
    """
    path = Path(path)
    _check_split_name(split)
    with _open(path) as f:
        try:
            images, labels = _split_datasets(path, f, split)
            return len(images)
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(f"{path}: unreadable dataset file ({short_error(e)})") from e


def read_rows(
    path: str | os.PathLike, split: str, start: int, stop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Read the contiguous rows ``[start, stop)`` of one split.

    For a sharded train split only the shard files covering the range are opened (and
    checked to exist first, since HDF5 would silently read a missing one as zeros).

    Args:
        path: the main dataset file.
        split: ``"train"`` or ``"test"``.
        start: first row.
        stop: one past the last row; ``start <= stop <= N``.

    Returns:
        (images, labels): (stop - start, C, H, W) uint8 and (stop - start,) int64.

    Raises:
        ValueError: unknown split or ``start > stop`` or ``start < 0``.
        DataError: the file, split or a covering shard file is missing or unreadable, or
            ``stop`` exceeds the split's row count.
    """
    path = Path(path)
    _check_split_name(split)
    if not 0 <= start <= stop:
        raise ValueError(f"bad row range [{start}, {stop})")
    with _open(path) as f:
        try:
            images, labels = _split_datasets(path, f, split)
            n = len(images)
            if stop > n:
                raise DataError(f"{path}: rows [{start}, {stop}) go past the {n} {split} rows")
            for ds in (images, labels):
                _shard_files(path, ds, (start, stop))
            return images[start:stop], labels[start:stop].astype(np.int64)
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(
                f"{path}: cannot read {split} rows [{start}, {stop}) ({short_error(e)})"
            ) from e


def read_labels(path: str | os.PathLike, split: str, chunk_rows: int = 1 << 20) -> np.ndarray:
    """Every label of ``split``, (N,) int64, read in chunks (no images).

    Raises:
        DataError: the file or split is unreadable.
    """
    path = Path(path)
    _check_split_name(split)
    with _open(path) as f:
        try:
            labels = _split_datasets(path, f, split)[1]
            _shard_files(path, labels)
            out = np.empty(len(labels), np.int64)
            for lo in range(0, len(labels), chunk_rows):
                out[lo : lo + chunk_rows] = labels[lo : lo + chunk_rows]
            return out
        except DataError:
            raise
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise DataError(f"{path}: cannot read the {split} labels ({short_error(e)})") from e


def verify_checksum(path: str | os.PathLike, chunk_rows: int = 8192) -> str:
    """Recompute the data checksum, streaming the images in row chunks, and compare.

    Unlike :func:`open_dataset` this reads every image, so use it on one process.

    Returns:
        The sha256 hex digest, equal to the stored ``checksum`` attribute.

    Raises:
        DataError: the file is invalid (see :func:`open_dataset`) or the digest differs.
    """
    info = open_dataset(path)
    digest = hashlib.sha256()
    for split, n in (("train", info.n_train), ("test", info.n_test)):
        labels = []
        for start in range(0, n, chunk_rows):
            images, lab = read_rows(info.path, split, start, min(n, start + chunk_rows))
            digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
            labels.append(lab)
        digest.update(np.concatenate(labels).astype("<i8").tobytes())
    got = digest.hexdigest()
    if got != info.checksum:
        raise DataError(
            f"{info.path}: checksum mismatch: data hash {got}, stored {info.checksum}; "
            "the file is corrupt, re-create it"
        )
    return got


@contextlib.contextmanager
def _open(path: Path) -> Iterator[h5py.File]:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    try:
        # Many ranks read at once, often on Lustre/NFS where flock() may be unsupported;
        # "best-effort" keeps HDF5's lock where it works and ignores it where it does not.
        f = h5py.File(path, "r", locking="best-effort")
    except OSError as e:
        raise DataError(
            f"{path}: not a readable HDF5 file, truncated or wrong format ({short_error(e)})"
        ) from e
    with f:
        yield f


def _inspect(path: Path, f: h5py.File) -> DatasetInfo:
    for name in REQUIRED_ATTRS:
        if name not in f.attrs:
            raise DataError(
                f"{path}: missing root attribute {name!r}; not an hpcnet dataset "
                "(write one with `python -m hpcnet data import-idx` or write_dataset)"
            )
    version = int(f.attrs["hpcnet_format"])
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: hpcnet_format is {version}, this hpcnet reads {FORMAT_VERSION}")
    class_names = tuple(_as_str(c) for c in np.atleast_1d(f.attrs["class_names"]))
    num_classes = int(f.attrs["num_classes"])
    if num_classes < 1 or num_classes != len(class_names):
        raise DataError(
            f"{path}: num_classes is {num_classes} but class_names has {len(class_names)} names"
        )

    counts, shapes, shards = {}, {}, []
    for split in SPLITS:
        images, labels = _split_datasets(path, f, split)
        for ds in (images, labels):
            shards += [s for s in _shard_files(path, ds) if s not in shards]
        check_label_range(path, split, labels[()], num_classes)
        counts[split], shapes[split] = len(images), tuple(int(d) for d in images.shape[1:])
    if shapes["train"] != shapes["test"]:
        raise DataError(
            f"{path}: train images are {shapes['train']} but test images are {shapes['test']}; "
            "both splits need the same (C, H, W)"
        )

    mean = np.asarray(f.attrs["mean"], dtype=np.float64).reshape(-1)
    std = np.asarray(f.attrs["std"], dtype=np.float64).reshape(-1)
    n_channels = shapes["train"][0]
    for name, value in (("mean", mean), ("std", std)):
        if value.shape != (n_channels,) or not np.all(np.isfinite(value)):
            raise DataError(
                f"{path}: attribute {name!r} is {value.tolist()}, expected {n_channels} "
                "finite numbers (one per channel)"
            )
    if np.any(std <= 0):
        raise DataError(f"{path}: attribute 'std' is {std.tolist()}, must be > 0")
    mean.setflags(write=False)
    std.setflags(write=False)
    return DatasetInfo(
        path=path,
        n_train=counts["train"],
        n_test=counts["test"],
        image_shape=shapes["train"],
        num_classes=num_classes,
        class_names=class_names,
        mean=mean,
        std=std,
        source=_as_str(f.attrs["source"]),
        licence=_as_str(f.attrs["licence"]),
        checksum=_as_str(f.attrs["checksum"]),
        shard_files=tuple(shards),
    )


def _split_datasets(path: Path, f: h5py.File, split: str) -> tuple[h5py.Dataset, h5py.Dataset]:
    found = []
    for kind in ("images", "labels"):
        name = f"{split}/{kind}"
        obj = f.get(name)
        if obj is None:
            raise DataError(f"{path}: missing dataset {name!r}")
        if not isinstance(obj, h5py.Dataset):
            raise DataError(f"{path}: {name!r} is a group, expected a dataset")
        found.append(obj)
    images, labels = found
    if images.ndim != 4 or images.dtype != np.uint8:
        raise DataError(
            f"{path}: {split}/images is {images.dtype} {images.shape}, expected uint8 (N, C, H, W)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{path}: {split}/labels is {labels.dtype} {labels.shape}, expected integer (N,)"
        )
    if len(images) != len(labels):
        raise DataError(f"{path}: {len(images)} {split} images but {len(labels)} labels")
    if len(images) == 0:
        raise DataError(f"{path}: the {split} split is empty")
    return images, labels


def _shard_files(path: Path, ds: h5py.Dataset, rows: tuple[int, int] | None = None) -> list[Path]:
    """Check the source files of a virtual dataset (those covering ``rows``, or all)."""
    if not ds.is_virtual:
        return []
    found = []
    for vmap in ds.virtual_sources():
        lo, hi = vmap.vspace.get_select_bounds()  # inclusive corners in the virtual dataset
        if rows is not None and (hi[0] < rows[0] or lo[0] >= rows[1]):
            continue
        if vmap.file_name == ".":
            continue
        src = Path(vmap.file_name)
        if not src.is_absolute():
            src = path.parent / src
        if not src.is_file():
            raise DataError(f"{path}: shard file {src} of {ds.name.lstrip('/')} is missing")
        expected = (hi[0] - lo[0] + 1, *ds.shape[1:])
        try:
            with h5py.File(src, "r") as sf:
                sds = sf.get(vmap.dset_name)
                shape = sds.shape if isinstance(sds, h5py.Dataset) else None
        except OSError as e:
            raise DataError(
                f"{path}: shard file {src} is not readable HDF5 ({short_error(e)})"
            ) from e
        if shape != expected:
            raise DataError(
                f"{path}: shard file {src} should hold {vmap.dset_name} of shape {expected}, "
                f"found {shape if shape is not None else 'no such dataset'}"
            )
        found.append(src)
    return found


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
