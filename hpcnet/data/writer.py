"""Writing a dataset file a chunk at a time: :class:`DatasetWriter`.

The same file as :func:`hpcnet.data.format.write_dataset` writes (the layout is in
:mod:`hpcnet.data.format`: checksum, class names, per-channel mean and std, train
shard files under a virtual dataset), for data that need not fit in memory: the rows
of each split are handed over in order, a chunk at a time, and written at once. The
checksum (SHA-256 of train images, train labels, test images, test labels) and the
channel statistics are computed on the way, so nothing is read back.

Memory: one chunk of images (what the caller hands over; a copy of one channel of it
for the statistics, which come from per-channel pixel histograms, exact) plus the
labels of every row (8 bytes each: 80 MB for ten million images), whatever the
dataset's size.

Nothing is half-written: every file goes to a temporary name in its final directory;
only when every split is complete are the shard files, then the main file, moved into
place (``os.replace``). An error, or a writer left without :meth:`DatasetWriter.close`,
removes the temporary files.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from hpcnet.data._format_layout import FORMAT_VERSION, SPLITS, row_range, shard_path, short_error
from hpcnet.data._format_write import CHUNK_BYTES
from hpcnet.errors import DataError


class DatasetWriter:
    """Writes one dataset file (and its train shard files) from chunks of rows.

    Use as a context manager; hand over the train rows, then the test rows, in order::

        with DatasetWriter(path, (3, 32, 32), {"train": 50000, "test": 10000},
                           class_names=names, source=src, licence=lic) as w:
            for images, labels in train_chunks:
                w.write("train", images, labels)
            for images, labels in test_chunks:
                w.write("test", images, labels)
        w.written  # the files, once the block ended without an error

    Args:
        path: the main file; its parent directory is created.
        image_shape: (C, H, W) of every image.
        n_rows: rows per split, ``{"train": N, "test": M}`` (both >= 1).
        class_names: one name per class; labels must lie in [0, len(class_names)).
        source: the ``source`` attribute (where the data came from).
        licence: the ``licence`` attribute.
        shards: train shard files (1: one file).
    Raises:
        DataError: an empty split, ``shards`` not in [1, N], no class names, or a file
            that cannot be written.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        image_shape: tuple[int, int, int],
        n_rows: dict[str, int],
        *,
        class_names: Sequence[str],
        source: str,
        licence: str,
        shards: int = 1,
    ):
        self.path = Path(path)
        self.image_shape = tuple(int(d) for d in image_shape)
        self.n_rows = {s: int(n_rows[s]) for s in SPLITS}
        self.class_names = [str(c) for c in class_names]
        self.source, self.licence, self.shards = str(source), str(licence), int(shards)
        for split, n in self.n_rows.items():
            if n < 1:
                raise DataError(f"{self.path}: the {split} split is empty")
        if not self.class_names:
            raise DataError(f"{self.path}: class_names is empty")
        n_train = self.n_rows["train"]
        if not 1 <= self.shards <= n_train:
            raise DataError(
                f"{self.path}: shards={self.shards} must be in [1, {n_train}] (the train rows)"
            )
        self.written: list[Path] = []
        self._tmp: list[tuple[Path, Path]] = []  # (temporary, final), in the order to move
        self._files: list[h5py.File] = []
        self._labels = {s: np.empty(self.n_rows[s], np.int64) for s in SPLITS}
        self._done = dict.fromkeys(SPLITS, 0)
        self._digest = hashlib.sha256()
        # per-channel histograms of the train pixels: exact sums for the mean and std,
        # and no float copy of a chunk (8 bytes per pixel: 8x the chunk's own size)
        self._hist = np.zeros((self.image_shape[0], 256), np.int64)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._open()
        except OSError as e:
            self._abandon()
            raise DataError(f"{self.path}: cannot write the dataset ({short_error(e)})") from e

    def _new_file(self, final: Path) -> h5py.File:
        tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
        self._tmp.append((tmp, final))
        f = h5py.File(tmp, "w")
        self._files.append(f)
        return f

    def _images(self, f: h5py.File, split: str, n: int) -> h5py.Dataset:
        row_bytes = int(np.prod(self.image_shape))
        rows = max(1, min(n, CHUNK_BYTES // max(row_bytes, 1)))
        return f.create_dataset(
            f"{split}/images",
            shape=(n, *self.image_shape),
            dtype=np.uint8,
            chunks=(rows, *self.image_shape),
            track_times=False,
        )

    def _open(self) -> None:
        """Creates the shard files (if any), then the main file, with empty datasets."""
        n_train, shape = self.n_rows["train"], self.image_shape
        self._train_parts: list[tuple[int, int, h5py.Dataset, h5py.File]] = []
        if self.shards > 1:
            v_images = h5py.VirtualLayout(shape=(n_train, *shape), dtype=np.uint8)
            v_labels = h5py.VirtualLayout(shape=(n_train,), dtype=np.int64)
            for i in range(self.shards):
                start, stop = row_range(n_train, self.shards, i)
                spath = shard_path(self.path, i, self.shards)
                f = self._new_file(spath)
                f.attrs.update(
                    {
                        "hpcnet_shard_of": self.path.name,
                        "shard_index": np.int64(i),
                        "n_shards": np.int64(self.shards),
                        "row_start": np.int64(start),
                        "row_stop": np.int64(stop),
                    }
                )
                self._train_parts.append((start, stop, self._images(f, "train", stop - start), f))
                # relative source name: HDF5 looks for it beside the virtual dataset's file
                n = stop - start
                v_images[start:stop] = h5py.VirtualSource(
                    spath.name, "train/images", shape=(n, *shape)
                )
                v_labels[start:stop] = h5py.VirtualSource(spath.name, "train/labels", shape=(n,))
            self._main = self._new_file(self.path)
            self._main.create_virtual_dataset("train/images", v_images, fillvalue=0)
            self._main.create_virtual_dataset("train/labels", v_labels, fillvalue=-1)
        else:
            self._main = self._new_file(self.path)
            self._train_parts.append((0, n_train, self._images(self._main, "train", n_train), None))
        self._test_images = self._images(self._main, "test", self.n_rows["test"])

    def write(self, split: str, images: np.ndarray, labels: np.ndarray) -> None:
        """Appends rows to ``split``: ``images`` (n, C, H, W) uint8, ``labels`` (n,) any
        integer type. Every train row comes before the first test row.

        Raises:
            DataError: a shape, dtype or label out of range, more rows than announced,
                a test row before the train split is complete, or a write that failed.
        """
        if split not in SPLITS:
            raise DataError(f"{self.path}: no split {split!r}; the splits are {SPLITS}")
        images, labels = np.asarray(images), np.asarray(labels)
        n = len(images)
        if images.dtype != np.uint8 or images.shape[1:] != self.image_shape:
            raise DataError(
                f"{self.path}: {split} images are {images.dtype} {images.shape}, expected "
                f"uint8 (N, {', '.join(map(str, self.image_shape))})"
            )
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise DataError(
                f"{self.path}: {split} labels are {labels.dtype} {labels.shape}, expected "
                f"integer ({n},)"
            )
        if n and (labels.min() < 0 or labels.max() >= len(self.class_names)):
            bad, k = int(labels.min() if labels.min() < 0 else labels.max()), len(self.class_names)
            raise DataError(f"{self.path}: {split} label {bad} is outside the {k} classes [0, {k})")
        start = self._done[split]
        if start + n > self.n_rows[split]:
            raise DataError(
                f"{self.path}: more {split} rows than the {self.n_rows[split]} announced"
            )
        if split == "test" and self._done["train"] < self.n_rows["train"]:
            raise DataError(f"{self.path}: test rows before the train split is complete")
        try:
            if split == "train":
                self._write_train(start, images)
                self._count_pixels(images)
            else:
                self._test_images[start : start + n] = images
        except OSError as e:
            raise DataError(f"{self.path}: cannot write the dataset ({short_error(e)})") from e
        self._digest.update(memoryview(np.ascontiguousarray(images)).cast("B"))
        self._labels[split][start : start + n] = labels
        self._done[split] = start + n
        if self._done[split] == self.n_rows[split]:  # the split is complete
            self._digest.update(self._labels[split].astype("<i8").tobytes())

    def _count_pixels(self, images: np.ndarray) -> None:
        """Adds the images' pixels to the per-channel histograms, 1 Mi pixels at a time
        (``bincount`` works on an int64 copy of its input)."""
        rows = max(1, (1 << 20) // int(np.prod(self.image_shape[1:])))
        for lo in range(0, len(images), rows):
            block = images[lo : lo + rows]
            for ch in range(block.shape[1]):
                self._hist[ch] += np.bincount(block[:, ch].reshape(-1), minlength=256)

    def _write_train(self, start: int, images: np.ndarray) -> None:
        stop = start + len(images)
        for lo, hi, ds, _ in self._train_parts:
            a, b = max(lo, start), min(hi, stop)
            if a < b:
                ds[a - lo : b - lo] = images[a - start : b - start]

    def close(self) -> list[Path]:
        """Writes the labels and attributes, closes and moves every file into place.

        Returns:
            Every file written: the shard files in order, then the main file.
        Raises:
            DataError: a split has fewer rows than announced, or a file cannot be written.
        """
        try:
            for split in SPLITS:
                if self._done[split] != self.n_rows[split]:
                    raise DataError(
                        f"{self.path}: {self._done[split]} {split} rows written, "
                        f"{self.n_rows[split]} announced"
                    )
            labels = self._labels["train"]
            for lo, hi, _, f in self._train_parts:
                _labels(f if f is not None else self._main, "train", labels[lo:hi])
            _labels(self._main, "test", self._labels["test"])
            values = np.arange(256, dtype=np.float64)
            count = self._hist.sum(axis=1)  # (C,): N * H * W
            mean = self._hist @ values / count
            std = np.sqrt(np.maximum(self._hist @ values**2 / count - mean**2, 0.0))
            std[std == 0] = 1.0
            self._main.attrs.update(
                {
                    "hpcnet_format": np.int64(FORMAT_VERSION),
                    "class_names": np.array(self.class_names, dtype=h5py.string_dtype()),
                    "num_classes": np.int64(len(self.class_names)),
                    "mean": mean,
                    "std": std,
                    "source": self.source,
                    "licence": self.licence,
                    "checksum": self._digest.hexdigest(),
                }
            )
            for f in self._files:
                f.close()
            for tmp, final in self._tmp:  # shard files first, the main file last
                os.replace(tmp, final)
                self.written.append(final)
        except OSError as e:
            raise DataError(f"{self.path}: cannot write the dataset ({short_error(e)})") from e
        finally:
            self._abandon()
        return self.written

    def _abandon(self) -> None:
        """Closes every file and removes whatever temporary file is left."""
        for f in self._files:
            if f.id.valid:
                f.close()
        self._files.clear()
        for tmp, _ in self._tmp:
            tmp.unlink(missing_ok=True)

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, kind, value, tb) -> None:
        if kind is None:
            self.close()
        else:
            self._abandon()


def _labels(f: h5py.File, split: str, labels: np.ndarray) -> None:
    f.create_dataset(
        f"{split}/labels",
        data=np.ascontiguousarray(labels, dtype="<i8"),
        chunks=(max(1, min(len(labels), 1 << 16)),),
        track_times=False,
    )
