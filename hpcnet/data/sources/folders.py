"""A folder of images in the ImageFolder convention, decoded with Pillow.

``ROOT/CLASS/*`` (one split) or ``ROOT/train/CLASS/*`` and ``ROOT/test/CLASS/*``: the
classes are the train split's folder names in sorted order, the files of a class in
sorted order; any file whose extension Pillow registers is an image (others are
ignored). A part yields ``PIL.Image`` objects, decoded a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from hpcnet.data.sources.base import Part, Source, chunked
from hpcnet.errors import DataError


def image_extensions() -> set[str]:
    """The file extensions Pillow can open (lower case, with the dot)."""
    from PIL import Image

    return {ext.lower() for ext in Image.registered_extensions()}


def read_folder(path: Path) -> Source:
    """The ``images`` reader (see the module doc).

    Raises:
        DataError: not a folder, no class folders, a class with no images, a test class
            the train split does not have.
    """
    if not path.is_dir():
        raise DataError(f"{path}: not a folder (--format images reads ROOT/CLASS/*.png)")
    roots = {"train": path / "train", "test": path / "test"}
    split_layout = all(r.is_dir() for r in roots.values()) and _classes(roots["train"])
    if not split_layout:
        roots = {"train": path}
    exts = image_extensions()
    classes = _classes(roots["train"])
    if not classes:
        raise DataError(f"{path}: no class folders in it (expected ROOT/CLASS/*.png)")
    parts = {}
    for split, root in roots.items():
        found = _classes(root)
        extra = sorted(set(found) - set(classes))
        if extra:
            raise DataError(f"{root}: class folder {extra[0]!r} is not among the train classes")
        files, labels = [], []
        for k, name in enumerate(classes):
            folder = root / name
            mine = (
                sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in exts)
                if folder.is_dir()
                else []
            )
            if not mine and split == "train":
                nested = folder.is_dir() and any(p.is_dir() for p in folder.iterdir())
                hint = f" (only folders: is the data set {folder}?)" if nested else ""
                raise DataError(f"{folder}: class {name!r} has no images{hint}")
            files += mine
            labels += [k] * len(mine)
        if not files:
            raise DataError(f"{root}: no images in it")
        parts[split] = Part(
            np.asarray(labels, np.int64),
            lambda rows, chunk, files=files: _decode(files, rows, chunk),
            lambda i, files=files: str(files[i]),
        )
    return Source("images", path, parts, class_names=list(classes))


def _classes(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode(files: list[Path], rows: np.ndarray, chunk: int) -> Iterator[list]:
    """Chunks of decoded images; a file Pillow cannot read becomes a :class:`BadImage`
    (the importer stops on it, or skips it with ``--skip-bad``)."""
    for want in chunked(rows, chunk):
        yield [open_image(files[int(i)]) for i in want]


class BadImage:
    """A file that did not decode: ``why`` is Pillow's one-line reason."""

    def __init__(self, path: Path, why: str):
        self.path, self.why = path, why


def open_image(path: Path):
    """The decoded image (``PIL.Image``, loaded), or a :class:`BadImage`."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except UnidentifiedImageError:
        return BadImage(path, "not an image format Pillow reads")
    except (OSError, ValueError, SyntaxError) as e:
        return BadImage(path, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
