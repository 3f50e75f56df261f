"""Data set names -> files, the shipped digits file, and the ``data`` subcommands."""

from __future__ import annotations

import argparse
import gzip
from pathlib import Path

import idx2numpy
import numpy as np
import platformdirs
import pytest

from hpcnet.data.cli import add_data_parser
from hpcnet.data.format import open_dataset, read_rows, verify_checksum
from hpcnet.data.idx import IDX_FILES
from hpcnet.data.registry import KNOWN, cache_dir, digits_path, resolve_data
from hpcnet.errors import DataError

pytestmark = pytest.mark.timeout(60)


def make_idx_dir(path, n_train=12, n_test=5):
    rng = np.random.default_rng(0)
    path.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        for name, array in zip(
            IDX_FILES[split],
            (rng.integers(0, 256, (n, 5, 5), dtype=np.uint8), np.arange(n, dtype=np.uint8) % 10),
            strict=True,
        ):
            with gzip.open(path / name, "wb") as f:
                idx2numpy.convert_to_file(f, array)
    return path


@pytest.fixture
def env(tmp_path, monkeypatch):
    monkeypatch.setenv("HPCNET_DATA", str(tmp_path / "cache"))
    monkeypatch.setenv("HPCNET_FASHION_MNIST_IDX", str(tmp_path / "idx"))
    return tmp_path


def test_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("HPCNET_DATA", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("HPCNET_DATA")
    assert cache_dir() == Path(platformdirs.user_cache_dir("hpcnet"))


def test_shipped_digits():
    path = digits_path()
    assert path.name == "digits.h5" and path.parent.name == "shipped"
    info = open_dataset(path)
    assert (info.n_train, info.n_test, info.image_shape) == (1437, 360, (1, 8, 8))
    assert info.class_names == tuple("0123456789")
    assert "CC BY 4.0" in info.licence and "UCI" in info.source
    verify_checksum(path)
    images, labels = read_rows(path, "test", 0, info.n_test)
    assert images.max() <= 16
    assert np.bincount(labels, minlength=10).min() >= 35  # stratified: ~36 per class
    np.testing.assert_allclose(
        info.mean, read_rows(path, "train", 0, info.n_train)[0].mean(), rtol=1e-12
    )


def test_resolve_paths_and_names(tmp_path):
    assert resolve_data("digits") == digits_path()
    assert resolve_data(str(digits_path())) == digits_path()  # an existing path is itself
    with pytest.raises(DataError, match="unknown data set") as e:
        resolve_data("cifar-10")
    assert all(name in str(e.value) for name in KNOWN)
    with pytest.raises(DataError, match="no such file") as e:
        resolve_data(tmp_path / "absent.h5")
    assert str(e.value).startswith(str(tmp_path / "absent.h5"))


def test_resolve_fashion_mnist_converts_once_into_the_cache(env):
    make_idx_dir(env / "idx")
    path = resolve_data("fashion-mnist")
    assert path == env / "cache" / "fashion-mnist.h5"
    assert open_dataset(path).n_train == 12
    for f in (env / "idx").iterdir():  # now served from the cache alone
        f.unlink()
    assert resolve_data("fashion-mnist") == path


def test_resolve_fashion_mnist_absent_says_how_to_get_it(env):
    with pytest.raises(DataError) as e:
        resolve_data("fashion-mnist")
    message = str(e.value)
    assert "dataset-fashion-mnist" in message and "data fetch fashion-mnist" in message
    assert "\n" not in message


def run_cli(*argv):
    parser = argparse.ArgumentParser(prog="hpcnet")
    add_data_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return args.func(args)


def test_cli_import_info_fetch(env, capsys):
    make_idx_dir(env / "idx")
    out = env / "x.h5"
    assert run_cli("data", "import-idx", str(env / "idx"), "--out", str(out), "--shards", "2") == 0
    assert "x.train-00001-of-00002.h5" in capsys.readouterr().out
    assert run_cli("data", "info", str(out), "--verify") == 0
    text = capsys.readouterr().out
    for expected in (
        "12 images",
        "5 images",
        "(1, 5, 5)",
        "Ankle boot",
        "shard files: 2",
        "verified",
    ):
        assert expected in text
    with pytest.raises(DataError, match="download failed"):
        run_cli("data", "fetch", "fashion-mnist", "--base-url", (env / "idx").as_uri() + "/nope")
    with pytest.raises(SystemExit):
        run_cli("data", "import-idx", str(env / "idx"), "--out", str(out), "--shards", "0")
    with pytest.raises(DataError, match="no such file"):
        run_cli("data", "info", str(env / "missing.h5"))
