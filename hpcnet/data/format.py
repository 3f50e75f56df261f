"""The hpcnet dataset format: one HDF5 file, optionally with the train split in shard files.

A dataset file holds::

    train/images  (N, C, H, W) uint8      raw pixels
    train/labels  (N,)         int64      class index in [0, num_classes)
    test/images   (M, C, H, W) uint8
    test/labels   (M,)         int64

and root attributes ``hpcnet_format`` (= :data:`FORMAT_VERSION`), ``class_names``
(str array), ``num_classes`` (int), ``mean`` and ``std`` ((C,) float64, per channel,
in raw pixel units of the train split, so a model input is ``(img - mean[c]) / std[c]``),
``source``, ``licence`` and ``checksum`` (sha256 hex of the bytes of train images, train
labels (int64 little-endian), test images, test labels, in that order).

With ``shards=K > 1`` the train split lives in K shard files beside the main file
(``<stem>.train-00000-of-0000K.h5``, contiguous balanced row ranges) and the main
file's ``train/images`` and ``train/labels`` are HDF5 virtual datasets over them, with
relative source paths. h5py and ``h5dump`` see one dataset; reading a row range opens
only the shard files that cover it. HDF5 silently reads a *missing* source file as
zeros, so this module checks that the covering shard files exist before every read.

data/README.md documents the same layout for people writing it with other tools.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
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
CHUNK_BYTES = 1 << 20  # target size of one image chunk; HDF5's default chunk cache is 1 MiB
_LABEL_CHUNK_ROWS = 1 << 16


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


# --------------------------------------------------------------------------- writing


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
        raise DataError(f"{path}: cannot write the dataset ({_short(e)})") from e
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
    _check_label_range(path, split, labels, num_classes)
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


# --------------------------------------------------------------------------- reading


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
            raise DataError(f"{path}: unreadable dataset file ({_short(e)})") from e


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
            raise DataError(f"{path}: unreadable dataset file ({_short(e)})") from e


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
                f"{path}: cannot read {split} rows [{start}, {stop}) ({_short(e)})"
            ) from e


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
            f"{path}: not a readable HDF5 file, truncated or wrong format ({_short(e)})"
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
        _check_label_range(path, split, labels[()], num_classes)
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
            raise DataError(f"{path}: shard file {src} is not readable HDF5 ({_short(e)})") from e
        if shape != expected:
            raise DataError(
                f"{path}: shard file {src} should hold {vmap.dset_name} of shape {expected}, "
                f"found {shape if shape is not None else 'no such dataset'}"
            )
        found.append(src)
    return found


def _check_label_range(path: Path, split: str, labels: np.ndarray, num_classes: int) -> None:
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: {split} label {i} is {int(labels[i])}, outside [0, {num_classes}) "
            f"({bad.size} bad labels in all)"
        )


def _check_split_name(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")


def _as_str(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__
