"""Download Fashion-MNIST, verify it, and convert it to an hpcnet dataset file.

The checksums are the MD5 sums Zalando Research publishes for the ``.gz`` files in the
fashion-mnist README. Mirrors that recompress the files (Debian's
``dataset-fashion-mnist`` does: its ``.gz`` files differ, their content does not) are
accepted when the *decompressed* IDX bytes match the MD5 of the original content, so
``base_url="file:///usr/share/datasets/fashion-mnist/"`` works.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zlib
from pathlib import Path

from hpcnet.data.idx import import_idx
from hpcnet.errors import DataError

DEFAULT_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
TIMEOUT_S = 60.0  # seconds without data before a download fails

# file -> (MD5 of the .gz as published by Zalando, MD5 of the decompressed IDX bytes)
CHECKSUMS = {
    "train-images-idx3-ubyte.gz": (
        "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "f4a8712d7a061bf5bd6d2ca38dc4d50a",
    ),
    "train-labels-idx1-ubyte.gz": (
        "25c81989df183df01b3e8a0aad5dffbe",
        "9018921c3c673c538a1fc5bad174d6f9",
    ),
    "t10k-images-idx3-ubyte.gz": (
        "bef4ecab320f06d8554ea6380940ec79",
        "8181f5470baa50b63fa0f6fddb340f0a",
    ),
    "t10k-labels-idx1-ubyte.gz": (
        "bb300cfdad3c16e7a12a480ee83cd310",
        "15d484375f8d13e6eb1aabb0c3f46965",
    ),
}


def fetch_fashion_mnist(
    out: str | os.PathLike, *, base_url: str = DEFAULT_URL, shards: int = 1
) -> list[Path]:
    """Download the four Fashion-MNIST files, check their MD5 sums, write ``out``.

    The downloads go to a temporary directory beside ``out`` that is removed
    afterwards; ``out`` is written atomically. Single process.

    Args:
        out: the dataset file to write.
        base_url: directory URL holding the four ``.gz`` files (``http(s)://`` or
            ``file://``); a missing trailing slash is added.
        shards: number of train shard files (see :func:`hpcnet.data.format.write_dataset`).

    Returns:
        Every file written (shards, then the main file).

    Raises:
        DataError: naming the URL, if a download fails or a file fails its checksum;
            or, naming the file, if the data cannot be converted or written.
    """
    out = Path(out)
    base_url = base_url if base_url.endswith("/") else base_url + "/"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"{out}: cannot create its directory ({e})") from e
    with tempfile.TemporaryDirectory(prefix=".fashion-mnist-", dir=out.parent) as tmp:
        for name, (gz_md5, raw_md5) in CHECKSUMS.items():
            url = base_url + name
            dest = Path(tmp) / name
            _download(url, dest)
            _verify(url, dest, gz_md5, raw_md5)
        return import_idx(tmp, out, shards=shards)


def _download(url: str, dest: Path) -> None:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response, open(dest, "wb") as f:
            shutil.copyfileobj(response, f, length=1 << 20)
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", None) or e
        raise DataError(
            f"{url}: download failed ({reason}); check the network or pass --base-url "
            "(e.g. file:///usr/share/datasets/fashion-mnist/)"
        ) from e


def _verify(url: str, path: Path, gz_md5: str, raw_md5: str) -> None:
    got = _md5_file(path)
    if got == gz_md5:
        return
    try:
        with gzip.open(path, "rb") as f:
            raw = _md5_stream(f)
    except (OSError, EOFError, zlib.error):
        raw = None
    if raw == raw_md5:
        return  # recompressed mirror, same content
    raise DataError(
        f"{url}: MD5 checksum mismatch (got {got}, expected {gz_md5} as published by "
        "Zalando Research); the download is corrupt or not Fashion-MNIST, try again or "
        "use another --base-url"
    )


def _md5_file(path: Path) -> str:
    with open(path, "rb") as f:
        return _md5_stream(f)


def _md5_stream(f) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    for block in iter(lambda: f.read(1 << 20), b""):
        digest.update(block)
    return digest.hexdigest()
