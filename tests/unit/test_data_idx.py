"""IDX import (synthetic and the real Debian Fashion-MNIST files) and the download path."""

from __future__ import annotations

import gzip
from pathlib import Path

import idx2numpy
import numpy as np
import pytest

from hpcnet.data.fetch import fetch_fashion_mnist
from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.idx import FASHION_MNIST_CLASSES, IDX_FILES, import_idx
from hpcnet.errors import DataError

pytestmark = pytest.mark.timeout(120)

DEBIAN = Path("/usr/share/datasets/fashion-mnist")
needs_debian = pytest.mark.skipif(
    not all((DEBIAN / n).is_file() for pair in IDX_FILES.values() for n in pair),
    reason=f"Fashion-MNIST IDX files not in {DEBIAN} (apt-get install dataset-fashion-mnist)",
)


def write_idx(path, array):
    with gzip.open(path, "wb") as f:
        idx2numpy.convert_to_file(f, array)


def make_idx_dir(path, n_train=12, n_test=5, hw=(6, 4), seed=0):
    """Four small, valid gzip IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    path.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images = rng.integers(0, 256, (n, *hw), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        write_idx(path / IDX_FILES[split][0], images)
        write_idx(path / IDX_FILES[split][1], labels)
        arrays[split] = images, labels
    return arrays


def test_import_synthetic_round_trip(tmp_path):
    arrays = make_idx_dir(tmp_path / "idx")
    written = import_idx(tmp_path / "idx", tmp_path / "out.h5", shards=2)
    assert written[-1] == tmp_path / "out.h5" and len(written) == 3
    info = open_dataset(tmp_path / "out.h5")
    assert (info.n_train, info.n_test, info.image_shape) == (12, 5, (1, 6, 4))
    assert info.class_names == FASHION_MNIST_CLASSES and info.num_classes == 10
    assert "MIT" in info.licence and "Zalando" in info.source
    for split, (images, labels) in arrays.items():
        x, y = read_rows(tmp_path / "out.h5", split, 0, len(labels))
        np.testing.assert_array_equal(x[:, 0], images)
        np.testing.assert_array_equal(y, labels)


def _bad_magic(path):
    data = bytearray(gzip.decompress(path.read_bytes()))
    data[0:2] = b"\x12\x34"
    path.write_bytes(gzip.compress(bytes(data)))


def _not_gzip(path):
    path.write_bytes(gzip.decompress(path.read_bytes()))


def _truncated(path):
    data = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(data[: len(data) - 7]))


BAD_IDX = {
    # case: (file to break, how, expected message)
    "missing": (IDX_FILES["test"][0], lambda p: p.unlink(), "no such file"),
    "bad magic": (IDX_FILES["train"][1], _bad_magic, "magic number"),
    "not gzip": (IDX_FILES["train"][0], _not_gzip, "not a readable gzip file"),
    "truncated": (IDX_FILES["test"][0], _truncated, "not a valid IDX file"),
    "images 2-D": (
        IDX_FILES["train"][0],
        lambda p: write_idx(p, np.zeros((12, 24), np.uint8)),
        "has 2 dimensions",
    ),
    "labels 3-D": (
        IDX_FILES["test"][1],
        lambda p: write_idx(p, np.zeros((5, 6, 4), np.uint8)),
        r"expected 1 \(magic 0x00000801\)",
    ),
    "int32 data": (
        IDX_FILES["train"][1],
        lambda p: write_idx(p, np.zeros(12, np.int32)),
        "expected unsigned byte",
    ),
    "count mismatch": (
        IDX_FILES["train"][1],
        lambda p: write_idx(p, np.zeros(11, np.uint8)),
        "11 labels but train-images-idx3-ubyte.gz has 12 images",
    ),
    "label out of range": (
        IDX_FILES["test"][1],
        lambda p: write_idx(p, np.full(5, 10, np.uint8)),
        "label 10 is outside the 10 classes",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_IDX))
def test_bad_idx_raises_naming_the_file(tmp_path, case):
    make_idx_dir(tmp_path / "idx")
    name, breakit, expected = BAD_IDX[case]
    breakit(tmp_path / "idx" / name)
    with pytest.raises(DataError, match=expected) as e:
        import_idx(tmp_path / "idx", tmp_path / "out.h5")
    assert str(e.value).startswith(f"{tmp_path / 'idx' / name}: ")
    assert "\n" not in str(e.value)
    assert not (tmp_path / "out.h5").exists()


@pytest.fixture(scope="module")
def debian_h5(tmp_path_factory):
    out = tmp_path_factory.mktemp("fmnist") / "fashion-mnist.h5"
    import_idx(DEBIAN, out)
    return out


@needs_debian
def test_import_real_fashion_mnist(debian_h5):
    info = open_dataset(debian_h5)
    assert (info.n_train, info.n_test, info.image_shape) == (60000, 10000, (1, 28, 28))
    _, y = read_rows(debian_h5, "train", 0, 5)
    assert y.tolist() == [9, 0, 0, 3, 0]
    assert info.class_names[y[0]] == "Ankle boot"
    assert read_rows(debian_h5, "test", 0, 1)[1][0] == 9
    # Published Fashion-MNIST statistics: mean 0.2860, std 0.3530 of [0, 1] pixels.
    np.testing.assert_allclose(info.mean / 255, [0.2860], atol=5e-4)
    np.testing.assert_allclose(info.std / 255, [0.3530], atol=5e-4)


@needs_debian
def test_fetch_via_file_url_matches_the_import(tmp_path, debian_h5):
    out = tmp_path / "cache" / "fm.h5"
    written = fetch_fashion_mnist(out, base_url=DEBIAN.as_uri())  # no trailing slash
    assert written == [out]
    assert open_dataset(out).checksum == open_dataset(debian_h5).checksum
    assert sorted(p.name for p in out.parent.iterdir()) == ["fm.h5"]  # downloads removed


@needs_debian
def test_fetch_rejects_a_corrupted_file(tmp_path):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for pair in IDX_FILES.values():
        for name in pair:
            (mirror / name).symlink_to(DEBIAN / name)
    bad = mirror / IDX_FILES["test"][1]
    data = bytearray(bad.read_bytes())
    bad.unlink()
    data[len(data) // 2] ^= 0xFF
    bad.write_bytes(bytes(data))
    url = mirror.as_uri() + "/" + bad.name
    with pytest.raises(DataError, match="MD5 checksum mismatch") as e:
        fetch_fashion_mnist(tmp_path / "out.h5", base_url=mirror.as_uri() + "/")
    assert str(e.value).startswith(f"{url}: ")
    assert not (tmp_path / "out.h5").exists()


def test_fetch_failure_names_the_url(tmp_path):
    (tmp_path / "empty").mkdir()
    base = (tmp_path / "empty").as_uri() + "/"
    with pytest.raises(DataError, match="download failed") as e:
        fetch_fashion_mnist(tmp_path / "out.h5", base_url=base)
    assert str(e.value).startswith(f"{base}train-images-idx3-ubyte.gz: ")


def test_fetch_rejects_wrong_data_with_a_valid_gzip(tmp_path):
    make_idx_dir(tmp_path / "mirror")  # valid IDX, but not Fashion-MNIST
    with pytest.raises(DataError, match="MD5 checksum mismatch"):
        fetch_fashion_mnist(tmp_path / "out.h5", base_url=(tmp_path / "mirror").as_uri())
    assert not (tmp_path / "out.h5").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name != "mirror"] == []
