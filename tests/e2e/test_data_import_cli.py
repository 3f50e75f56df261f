"""``python -m hpcnet data import`` as a user runs it on real Fashion-MNIST written out
in the formats users have, then training on what it wrote: the IDX import of the same
data is the reference."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hpcnet.data.format import open_dataset, read_rows
from hpcnet.data.idx import FASHION_MNIST_CLASSES, import_idx
from tests.data_layouts import NAMES, fashion, rgb32, write_cifar_binary, write_png_folder
from tests.e2e.test_cli import hpcnet


def data(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hpcnet", "data", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def train(tmp_path: Path, name: str, data_file: Path, *extra: str, n: int = 2) -> dict:
    out = tmp_path / name
    code, _, stderr, _ = hpcnet(
        "train", "--data", str(data_file), "--model", "lenet", "--threads", "1",
        "--out", str(out), *extra, n=n, timeout=600, cwd=tmp_path,
    )  # fmt: skip
    assert code == 0, stderr
    return json.loads((out / "summary.json").read_text())


def _all(path: Path, split: str):
    info = open_dataset(path)
    return read_rows(path, split, 0, info.n_train if split == "train" else info.n_test)


@pytest.mark.timeout(900)
def test_fashion_mnist_as_npz_and_png_folder_imports_and_trains_as_the_idx(
    fashion_idx_dir, tmp_path
):
    idx_h5 = tmp_path / "idx.h5"
    import_idx(fashion_idx_dir, idx_h5)
    x, y, xt, yt = fashion(fashion_idx_dir)
    np.savez(tmp_path / "fm.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    write_png_folder(tmp_path / "png" / "train", x, y, NAMES)
    write_png_folder(tmp_path / "png" / "test", xt, yt, NAMES)

    p = data("import", str(tmp_path / "fm.npz"), "--out", str(tmp_path / "npz.h5"),
             "--class-names", ",".join(FASHION_MNIST_CLASSES))  # fmt: skip
    assert p.returncode == 0, p.stderr
    p = data("import", str(tmp_path / "png"), "--out", str(tmp_path / "png.h5"), "--shards", "2")
    assert p.returncode == 0, p.stderr
    assert "format:  images" in p.stdout and "rows:    60000 train, 10000 test" in p.stdout
    assert "classes: 10: " + ", ".join(sorted(NAMES)) in p.stdout
    p = data("info", str(tmp_path / "png.h5"), "--verify")
    assert p.returncode == 0 and "checksum:    verified" in p.stdout, p.stderr

    # the .npz: the IDX file's arrays in the IDX order, so the same checksum
    assert open_dataset(tmp_path / "npz.h5").checksum == open_dataset(idx_h5).checksum
    # the PNG folder: the same pixels, in ImageFolder order (class by name, then file)
    rank = np.argsort(np.argsort(NAMES))
    for split, ys in (("train", y), ("test", yt)):
        order = np.lexsort((np.arange(len(ys)), rank[ys]))
        images, labels = _all(tmp_path / "png.h5", split)
        ref_images, ref_labels = _all(idx_h5, split)
        np.testing.assert_array_equal(images, ref_images[order])
        np.testing.assert_array_equal(labels, rank[ref_labels[order]])

    steps = ("--max-steps", "300")
    ref = train(tmp_path, "idx", idx_h5, *steps)
    from_npz = train(tmp_path, "npz", tmp_path / "npz.h5", *steps)
    from_png = train(tmp_path, "png", tmp_path / "png.h5", *steps)
    assert ref["test_accuracy"] > 0.7, ref
    assert from_npz["test_accuracy"] == ref["test_accuracy"]  # the same arrays, the same run
    # the same images in another order: other batches, the same accuracy within noise
    assert abs(from_png["test_accuracy"] - ref["test_accuracy"]) < 0.03, (from_png, ref)


@pytest.mark.timeout(600)
def test_rgb_32x32_data_trains_with_sync_and_downpour(fashion_idx_dir, tmp_path):
    x, y, xt, yt = fashion(fashion_idx_dir, 6000, 1000)
    write_cifar_binary(tmp_path / "cifar-10-batches-bin", 10, rgb32(x), y, rgb32(xt), yt, NAMES)
    p = data("import", str(tmp_path), "--out", str(tmp_path / "rgb.h5"))
    assert p.returncode == 0, p.stderr
    assert "format:  cifar10" in p.stdout and "(3, 32, 32)" in p.stdout
    runs = {
        "sync": (2, ["--algo", "sync"]),
        "downpour": (3, ["--algo", "downpour"]),
        # every layer split over two ranks, and augmentation (crop and flip per channel)
        "partitions": (2, ["--algo", "sync", "--partitions", "2", "--augment"]),
    }
    for name, (n, args) in runs.items():
        s = train(tmp_path, name, tmp_path / "rgb.h5", *args, "--max-steps", "200", n=n)
        assert s["test_accuracy"] > 0.6, (name, s["test_accuracy"])
    p = subprocess.run(
        [sys.executable, "-m", "hpcnet", "export", str(tmp_path / "sync"), "--format", "npz"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 0, p.stderr


@pytest.mark.timeout(120)
def test_bad_imports_are_one_line_exit_2_and_write_nothing(tmp_path):
    p = data("import", str(tmp_path / "nothing"), "--out", str(tmp_path / "o.h5"))
    assert p.returncode == 2 and "nothing: no such file or folder" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1, p.stderr
    (tmp_path / "imgs" / "a").mkdir(parents=True)
    (tmp_path / "imgs" / "a" / "x.png").write_bytes(b"not a png")
    (tmp_path / "imgs" / "a" / "y.png").write_bytes(b"nor this")
    p = data("import", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"),
             "--test-fraction", "0.5")  # fmt: skip
    assert p.returncode == 2 and ".png: Pillow cannot decode it" in p.stderr, p.stderr
    p = data("import", str(tmp_path / "imgs"), "--out", str(tmp_path / "o.h5"), "--size", "0,3")
    assert p.returncode == 2 and "--size" in p.stderr
    assert not (tmp_path / "o.h5").exists()
