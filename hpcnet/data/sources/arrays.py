"""NumPy arrays: a ``.npz`` file or a folder of ``.npy`` files.

The arrays ``x_train, y_train, x_test, y_test`` (Keras' ``load_data`` convention) or
``images, labels``. Images (N, H, W), (N, H, W, C) (channels-last, detected: the last
axis has 1, 3 or 4 entries and axis 1 does not) or (N, C, H, W); uint8 as they are,
other integers when in [0, 255], floats when in [0, 1], mapped to ``round(255 x)``.
A ``.npz`` member is read a chunk of rows at a time from its zip stream (NumPy's
``.npy`` header readers), a ``.npy`` file is memory-mapped: memory stays one chunk.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hpcnet.data.sources.base import Part, Source, chunked
from hpcnet.errors import DataError

_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}


def read_arrays(path: Path) -> Source:
    """The ``npz`` reader (see the module doc).

    Raises:
        DataError: missing arrays (listing the ones there), counts that differ,
            non-integer labels, an images array whose channel axis is ambiguous.
    """
    members = _members(path)
    if {"x_train", "y_train"} <= members.keys():
        keys = {s: k for s, k in _KEYS.items() if set(k) <= members.keys()}
    elif {"images", "labels"} <= members.keys():
        keys = {"train": ("images", "labels")}
    else:
        raise DataError(
            f"{path}: expected the arrays x_train, y_train (and x_test, y_test) or images, "
            f"labels; it has {', '.join(sorted(members)) or 'none'}"
        )
    parts = {}
    for split, (xk, yk) in keys.items():
        images = members[xk]
        y = np.asarray(members[yk].load() if isinstance(members[yk], _Member) else members[yk])
        y = y.reshape(-1)
        if y.dtype.kind not in "iu":
            raise DataError(f"{path}: {yk} is {y.dtype}, expected integer labels")
        if len(y) != images.shape[0]:
            raise DataError(
                f"{path}: {xk} has {images.shape[0]} images but {yk} has {len(y)} labels"
            )
        layout = _layout(path, xk, images.shape)
        parts[split] = Part(
            y.astype(np.int64),
            lambda rows, chunk, x=images, k=xk, lay=layout: _chunks(path, k, x, lay, rows, chunk),
            lambda i, k=xk: f"{path}: {k}[{i}]",
        )
    return Source("npz", path, parts)


class _Member:
    """One ``.npy`` member of a ``.npz`` file: its header, and its rows from the stream."""

    def __init__(self, zf: zipfile.ZipFile, name: str):
        self.zf, self.name = zf, name
        with zf.open(name) as f:
            try:
                version = np.lib.format.read_magic(f)
                if version == (1, 0):
                    shape, self.fortran, dtype = np.lib.format.read_array_header_1_0(f)
                elif version == (2, 0):
                    shape, self.fortran, dtype = np.lib.format.read_array_header_2_0(f)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except ValueError as e:
                raise DataError(f"{zf.filename}: {name} is not a .npy array ({e})") from e
            self.shape, self.dtype, self.offset = tuple(shape), np.dtype(dtype), f.tell()
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    def load(self) -> np.ndarray:
        """The whole array (for labels: 8 bytes a row)."""
        with self.zf.open(self.name) as f:
            return np.lib.format.read_array(f)

    def blocks(self, rows: np.ndarray, chunk: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, rows[i] for each wanted i of the chunk) reading the stream once,
        in order; rows not wanted are read and dropped."""
        if self.fortran:
            where = f"{self.zf.filename}: {self.name}"
            raise DataError(f"{where} is in Fortran order; save it C-ordered")
        with self.zf.open(self.name) as f:
            f.read(self.offset)
            at = 0
            for want in chunked(rows, chunk):
                a, b = int(want[0]), int(want[-1]) + 1
                if a > at:
                    self._read(f, a - at)
                block = self._read(f, b - a)
                at = b
                yield a, block[want - a]

    def _read(self, f, n: int) -> np.ndarray:
        data = f.read(n * self.row_bytes)
        if len(data) != n * self.row_bytes:
            raise DataError(f"{self.zf.filename}: {self.name} is truncated")
        return np.frombuffer(data, self.dtype).reshape(n, *self.shape[1:])


def _members(path: Path) -> dict:
    """name -> the array (a memory map, or a :class:`_Member` of an .npz)."""
    if path.is_dir():
        found = {}
        for p in sorted(path.glob("*.npy")):
            try:
                found[p.stem] = np.load(p, mmap_mode="r")
            except ValueError as e:
                raise DataError(f"{p}: not a .npy array ({e})") from e
        return found
    if path.suffix == ".npy":
        raise DataError(
            f"{path}: one .npy file holds one array; give a folder of x_train.npy, "
            "y_train.npy, ... or an .npz file"
        )
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise DataError(f"{path}: not a readable .npz file ({e})") from e
    return {Path(m).stem: _Member(zf, m) for m in zf.namelist() if m.endswith(".npy")}


def _chunks(path: Path, key: str, images, layout: str, rows: np.ndarray, chunk: int) -> Iterator:
    if isinstance(images, _Member):
        blocks = images.blocks(rows, chunk)
    else:
        blocks = ((int(w[0]), np.asarray(images[w])) for w in chunked(rows, chunk))
    for first, x in blocks:
        yield to_uint8(path, key, to_nchw(x, layout), first)


def _layout(path: Path, key: str, shape: tuple[int, ...]) -> str:
    """``nhw``, ``nhwc`` or ``nchw`` for an images array of ``shape``."""
    if len(shape) == 3:
        return "nhw"
    if len(shape) != 4:
        raise DataError(
            f"{path}: {key} is {shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W)"
        )
    last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
    if last and not second:
        return "nhwc"
    if second and not last:
        return "nchw"
    raise DataError(
        f"{path}: {key} is {shape}: cannot tell the channel axis (1, 3 or 4 entries on "
        "axis 1 or on the last axis, not both)"
    )


def to_nchw(x: np.ndarray, layout: str) -> np.ndarray:
    """(k, C, H, W) from ``x`` in ``layout`` (``nhw``, ``nhwc``, ``nchw``)."""
    if layout == "nhw":
        return x[:, None]
    if layout == "nhwc":
        return x.transpose(0, 3, 1, 2)
    return x


def to_uint8(path: Path, key: str, x: np.ndarray, first: int) -> np.ndarray:
    """Pixels as uint8: uint8 as is; integers in [0, 255]; floats in [0, 1] ->
    ``round(255 x)``.

    Raises:
        DataError: values outside those ranges (NaN included), or another dtype.
    """
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if x.dtype.kind in "iu":
        lo, hi = int(x.min()), int(x.max())
        if lo < 0 or hi > 255:
            raise DataError(
                f"{path}: {key} holds integers in [{lo}, {hi}] (rows from {first}); pixels "
                "must lie in [0, 255]"
            )
        return x.astype(np.uint8)
    if x.dtype.kind == "f":
        lo, hi = float(np.min(x)), float(np.max(x))
        if not (lo >= 0.0 and hi <= 1.0):  # NaN fails too
            raise DataError(
                f"{path}: {key} holds floats in [{lo:g}, {hi:g}] (rows from {first}); float "
                "pixels must lie in [0, 1] (converted as round(255 x))"
            )
        return np.rint(x.astype(np.float64) * 255.0).astype(np.uint8)
    raise DataError(f"{path}: {key} is {x.dtype}; expected uint8, integer or float pixels")
