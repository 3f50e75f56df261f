"""Data set names -> dataset files: the shipped digits, Fashion-MNIST, or a path.

Environment variables are read when a function is called, never at import:

- ``HPCNET_DATA``: the cache directory (default: ``platformdirs.user_cache_dir("hpcnet")``).
- ``HPCNET_FASHION_MNIST_IDX``: where to find the Fashion-MNIST IDX files (default:
  Debian's ``/usr/share/datasets/fashion-mnist``).
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from hpcnet.data.idx import IDX_FILES, import_idx
from hpcnet.errors import DataError

KNOWN = ("digits", "fashion-mnist")
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def cache_dir() -> Path:
    """Where converted data sets are kept: ``$HPCNET_DATA`` or the user cache dir."""
    env = os.environ.get("HPCNET_DATA")
    return Path(env) if env else Path(platformdirs.user_cache_dir("hpcnet"))


def shipped_data_dir() -> Path:
    """The data sets shipped inside the package (``hpcnet/data/shipped/``: package data,
    so an installed wheel has them too)."""
    return Path(__file__).resolve().parent / "shipped"


def digits_path() -> Path:
    """The shipped UCI digits dataset file, ``hpcnet/data/shipped/digits.h5``.

    Raises:
        DataError: the file is absent (an install that dropped the package data).
    """
    path = shipped_data_dir() / "digits.h5"
    if not path.is_file():
        raise DataError(
            f"{path}: no such file; the digits data ships inside the package "
            "(re-create it with `python data/make_digits.py` in a source checkout)"
        )
    return path


def fashion_mnist_idx_dir() -> Path:
    """Where the Fashion-MNIST IDX files are looked for (``$HPCNET_FASHION_MNIST_IDX``)."""
    env = os.environ.get("HPCNET_FASHION_MNIST_IDX")
    return Path(env) if env else DEBIAN_FASHION_MNIST


def resolve_data(name_or_path: str | os.PathLike) -> Path:
    """Turn a data set name or a path into a dataset file path.

    An existing path is returned as is (validate it with
    :func:`hpcnet.data.format.open_dataset`). ``digits`` is the shipped file.
    ``fashion-mnist`` is ``cache_dir()/fashion-mnist.h5``, converted on first use
    from the IDX files in :func:`fashion_mnist_idx_dir` (written atomically).

    Single process: call it on one rank and broadcast the result; two processes
    converting at once would each write (atomically) the same file.

    Raises:
        DataError: unknown name, a path that does not exist, or Fashion-MNIST not
            available locally (says how to get it).
    """
    text = os.fspath(name_or_path)
    path = Path(text)
    if path.exists():
        return path
    if text == "digits":
        return digits_path()
    if text == "fashion-mnist":
        cached = cache_dir() / "fashion-mnist.h5"
        if cached.is_file():
            return cached
        idx_dir = fashion_mnist_idx_dir()
        if all((idx_dir / name).is_file() for pair in IDX_FILES.values() for name in pair):
            import_idx(idx_dir, cached)
            return cached
        raise DataError(
            f"{cached}: Fashion-MNIST is not available (no IDX files in {idx_dir}); install "
            "it with `apt-get install dataset-fashion-mnist` or run "
            "`python -m hpcnet data fetch fashion-mnist`"
        )
    if os.sep in text or text.endswith((".h5", ".hdf5")):
        raise DataError(f"{path}: no such file")
    raise DataError(
        f"{text}: unknown data set; give an existing .h5 file or one of: {', '.join(KNOWN)}"
    )
