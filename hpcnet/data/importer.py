"""``data import``: any image-classification data set into an hpcnet dataset file, streamed.

A source (:mod:`hpcnet.data.sources`) is read a chunk of rows at a time, each image
brought to one shape (``--size H,W``: resized with Pillow's bilinear filter;
``--channels 1|3``: converted with Pillow's ``L`` / ``RGB`` modes, ITU-R 601-2 luma for
grey), and written at once (:class:`hpcnet.data.writer.DatasetWriter`). Memory: about
:data:`CHUNK_BYTES` of images (plus Pillow's decoded chunk of a folder's images at
their own size) and 8 bytes per row for the labels, whatever the data set's size.

The test split is the source's own (Keras ``x_test``, ``ROOT/test/``, CIFAR's
``test_batch``, IDX ``t10k``), another source (``--test SOURCE2``, whose classes are
matched to the train classes by name when both have names), or a stratified, seeded
share of the train rows (``--test-fraction F``, :func:`hpcnet.data.splits.stratified_split`).
Rows keep the source's order.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hpcnet.data.sources import BadImage, Part, Source, detect_format, read_source
from hpcnet.data.splits import stratified_split
from hpcnet.data.writer import DatasetWriter
from hpcnet.errors import DataError

# the images an import holds at once, brought to one shape; the peak grows by about five
# times this (in one process, 70,000 64x64 RGB PNGs: chunks of 8 MiB 138, 16 MiB 176,
# 32 MiB 277, 64 MiB 478 MiB peak, at the same speed): benchmarks/data_import_memory.py
CHUNK_BYTES = 16 << 20


@dataclass
class ImportReport:
    """What ``data import`` wrote: the files, the rows per split, the image shape
    (C, H, W), the class names, the files skipped (``--skip-bad``), seconds taken."""

    written: list[Path]
    rows: dict[str, int]
    image_shape: tuple[int, int, int]
    class_names: list[str]
    fmt: str
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0


def import_data(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    fmt: str = "auto",
    test: str | os.PathLike | None = None,
    test_fraction: float | None = None,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    class_names: Sequence[str] | None = None,
    shards: int = 1,
    seed: int = 0,
    label: str = "fine",
    skip_bad: bool = False,
    progress: bool | None = None,
) -> ImportReport:
    """Imports ``source`` into the dataset file ``out`` (see the module doc).

    Args:
        fmt: ``auto`` (:func:`hpcnet.data.sources.detect_format`) or a format name.
        test: a second source for the test split (same formats).
        test_fraction: hold out this stratified share of the train rows as the test split.
        size: (H, W) to resize every image to; None: the images' own (all the same).
        channels: 1 or 3; None: the first image's (grey -> 1, anything else -> 3).
        class_names: names of the classes 0 .. K-1; None: the source's, or "0" .. "K-1".
        shards: train shard files.
        seed: the ``--test-fraction`` draw.
        label: CIFAR-100's ``fine`` or ``coarse`` labels.
        skip_bad: skip (and count) files Pillow cannot decode instead of stopping.
        progress: show a progress bar (None: when stderr is a terminal).
    Returns:
        An :class:`ImportReport`.
    Raises:
        DataError: one line naming the file or flag and what is wrong; nothing is written.
    """
    t0 = time.perf_counter()
    src_path = Path(source)
    src = read_source(src_path, detect_format(src_path) if fmt == "auto" else fmt, label=label)
    if channels not in (None, 1, 3):
        raise DataError(f"--channels {channels}: choose 1 (grey) or 3 (RGB)")
    if size is not None and (len(size) != 2 or min(size) < 1):
        raise DataError(f"--size {size}: expected H,W, two positive integers")
    splits = _splits(src, test, test_fraction, seed, label)
    names = _class_names(src, splits, class_names)
    skipped: list[str] = []
    if skip_bad:
        for split, (part, rows) in splits.items():
            splits[split] = (part, _good_rows(part, rows, skipped))
    rows_n = {s: len(r) for s, (_, r) in splits.items()}
    first_part, first_rows = splits["train"]
    shape, name0 = _first_shape(first_part, first_rows, size, channels)
    chunk = max(1, CHUNK_BYTES // int(np.prod(shape)))
    from tqdm import tqdm

    bar = tqdm(
        total=sum(rows_n.values()),
        unit="img",
        desc=f"import {Path(out).name}",
        disable=(not sys.stderr.isatty()) if progress is None else not progress,
        leave=False,
    )
    with (
        bar,
        DatasetWriter(
            out,
            shape,
            rows_n,
            class_names=names,
            source=f"{src.kind}: {src_path.resolve()}",
            licence=src.licence,
            shards=shards,
        ) as writer,
    ):
        for split, (part, rows) in splits.items():
            labels = part.labels[rows]
            done = 0
            for items in part.read(rows, chunk):
                k = len(items)
                images = conform(items, shape, name0, part, rows[done : done + k], size is not None)
                writer.write(split, images, labels[done : done + k])
                done += k
                bar.update(k)
    return ImportReport(
        writer.written, rows_n, shape, names, src.kind, skipped, time.perf_counter() - t0
    )


def _splits(src: Source, test, test_fraction, seed: int, label: str) -> dict:
    """split -> (part, sorted rows of it)."""
    train = src.parts["train"]
    every = np.arange(len(train.labels), dtype=np.int64)
    if test is not None and test_fraction is not None:
        raise DataError("--test and --test-fraction: give one of them")
    if test is not None:
        t_path = Path(test)
        other = read_source(t_path, detect_format(t_path), label=label)
        part = other.parts.get("test", other.parts["train"])
        if src.class_names and other.class_names and other.class_names != src.class_names:
            part = _renamed(part, other.class_names, src.class_names, t_path)
        return {"train": (train, every), "test": (part, np.arange(len(part.labels)))}
    if test_fraction is not None:
        if "test" in src.parts:
            raise DataError(
                f"--test-fraction: {src.path} has a test split of its own (drop the flag)"
            )
        keep, held = stratified_split(train.labels, test_fraction, seed)
        return {"train": (train, keep), "test": (train, held)}
    if "test" not in src.parts:
        raise DataError(f"{src.path}: has no test split; give --test SOURCE2 or --test-fraction F")
    test_part = src.parts["test"]
    return {"train": (train, every), "test": (test_part, np.arange(len(test_part.labels)))}


def _renamed(part: Part, names: list[str], to: list[str], path: Path) -> Part:
    missing = [n for n in names if n not in to]
    if missing:
        raise DataError(f"{path}: class {missing[0]!r} is not among the train classes")
    lut = np.array([to.index(n) for n in names], np.int64)
    return Part(lut[part.labels], part.read, part.name)


def _class_names(src: Source, splits: dict, given: Sequence[str] | None) -> list[str]:
    top = max(int(part.labels[rows].max()) for part, rows in splits.values() if len(rows))
    low = min(int(part.labels[rows].min()) for part, rows in splits.values() if len(rows))
    if low < 0:
        raise DataError(f"{src.path}: label {low} is negative; labels are 0 .. K-1")
    if given is not None:
        if len(given) <= top:
            raise DataError(
                f"--class-names: {len(given)} names, but the labels go up to {top} "
                f"({top + 1} classes)"
            )
        return list(given)
    if src.class_names:
        return list(src.class_names)
    return [str(k) for k in range(top + 1)]


def _good_rows(part: Part, rows: np.ndarray, skipped: list[str]) -> np.ndarray:
    """``--skip-bad``: the rows whose image decodes (a first pass that decodes each once)."""
    good = []
    for at, items in _walk(part, rows):
        for i, item in zip(at, items, strict=True):
            if isinstance(item, BadImage):
                skipped.append(f"{item.path}: {item.why}")
            else:
                good.append(i)
    if not good:
        raise DataError(f"{part.name(int(rows[0]))}: no image of this split decodes")
    return np.asarray(good, np.int64)


def _walk(part: Part, rows: np.ndarray, chunk: int = 256):
    done = 0
    for items in part.read(rows, chunk):
        yield rows[done : done + len(items)], items
        done += len(items)


def _first_shape(part: Part, rows: np.ndarray, size, channels) -> tuple[tuple[int, int, int], str]:
    """The (C, H, W) every image is brought to, from the first image and the flags."""
    (first,) = next(iter(part.read(rows[:1], 1)))[:1]
    name = part.name(int(rows[0]))
    if isinstance(first, BadImage):
        raise DataError(f"{first.path}: Pillow cannot decode it ({first.why}); --skip-bad skips it")
    c, h, w = _shape_of(first)
    c = channels or (1 if c == 1 else 3)
    h, w = size if size is not None else (h, w)
    return (c, int(h), int(w)), name


def _shape_of(item) -> tuple[int, int, int]:
    if isinstance(item, np.ndarray):
        return tuple(item.shape)  # (C, H, W)
    return (1 if item.mode in ("1", "L", "LA", "I", "I;16", "F") else 3, item.height, item.width)


def conform(
    items, shape: tuple[int, int, int], first: str, part: Part, rows, resize: bool
) -> np.ndarray:
    """A chunk of images (a (k, C, H, W) uint8 array or a list of images) as (k, C, H, W)
    uint8 of ``shape``; ``first`` names the image that set the shape; ``resize``: bring
    every image to ``shape``'s H x W (``--size``), else a different size is an error.

    Raises:
        DataError: an image that does not decode, or whose size differs from the first's
            without ``--size`` (naming both and their sizes).
    """
    c, h, w = shape
    if isinstance(items, np.ndarray) and items.shape[1:] == shape:
        return items
    out = np.empty((len(items), c, h, w), np.uint8)
    for j, item in enumerate(items):
        out[j] = _one(item, shape, first, part, int(rows[j]), resize)
    return out


def _one(item, shape, first: str, part: Part, row: int, resize: bool) -> np.ndarray:
    from PIL import Image

    c, h, w = shape
    if isinstance(item, BadImage):
        raise DataError(f"{item.path}: Pillow cannot decode it ({item.why}); --skip-bad skips it")
    if isinstance(item, np.ndarray):
        if item.shape == shape:
            return item
        item = Image.fromarray(item[0] if item.shape[0] == 1 else item.transpose(1, 2, 0))
    im = item.convert("L" if c == 1 else "RGB")
    if im.size != (w, h):
        if resize:
            im = im.resize((w, h), Image.BILINEAR)
        else:
            raise DataError(
                f"{part.name(row)} is {im.width}x{im.height} but {first} is {w}x{h}; "
                "--size H,W resizes every image"
            )
    a = np.asarray(im, np.uint8)
    return a[None] if c == 1 else a.transpose(2, 0, 1)
