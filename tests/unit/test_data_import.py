"""``data import``: every source format gives the arrays it holds, streamed; bad input is
one line and leaves no file. References: the IDX import of the same Fashion-MNIST rows
(independent code: idx2numpy), and the arrays the test itself wrote."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.data import importer
from hpcnet.data.format import open_dataset, read_rows, verify_checksum
from hpcnet.data.idx import FASHION_MNIST_CLASSES
from hpcnet.data.importer import import_data
from hpcnet.data.splits import stratified_split
from hpcnet.errors import DataError
from tests.data_layouts import (
    NAMES,
    fashion,
    rgb32,
    write_cifar_binary,
    write_cifar_python,
    write_png_folder,
)

pytestmark = pytest.mark.timeout(300)


def _arrays(path, split):
    info = open_dataset(path)
    n = info.n_train if split == "train" else info.n_test
    return read_rows(path, split, 0, n)


def test_keras_npz_gives_the_idx_arrays(fashion_idx_dir, tmp_path):
    x, y, xt, yt = fashion(fashion_idx_dir)
    np.savez(tmp_path / "fm.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    rep = import_data(tmp_path / "fm.npz", tmp_path / "fm.h5", class_names=FASHION_MNIST_CLASSES)
    assert rep.rows == {"train": 60000, "test": 10000} and rep.image_shape == (1, 28, 28)
    images, labels = _arrays(tmp_path / "fm.h5", "train")
    np.testing.assert_array_equal(images[:, 0], x)
    np.testing.assert_array_equal(labels, y)
    images, labels = _arrays(tmp_path / "fm.h5", "test")
    np.testing.assert_array_equal(images[:, 0], xt)
    verify_checksum(tmp_path / "fm.h5")


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "float", "npy-folder"])
def test_array_layouts_and_float_pixels(fashion_idx_dir, tmp_path, layout, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_BYTES", 3 * 32 * 32 * 7)  # chunks of 7 rows
    x, y, xt, yt = fashion(fashion_idx_dir, 50, 20)
    rgb, rgbt = rgb32(x), rgb32(xt)
    if layout == "nhwc":
        arrays = {"x_train": rgb.transpose(0, 2, 3, 1), "x_test": rgbt.transpose(0, 2, 3, 1)}
    elif layout == "float":
        arrays = {"x_train": rgb / 255.0, "x_test": (rgbt / 255.0).astype(np.float32)}
    else:
        arrays = {"x_train": rgb, "x_test": rgbt}
    arrays.update(y_train=y.astype(np.int32), y_test=yt.astype(np.uint64))
    if layout == "npy-folder":
        src = tmp_path / "arrays"
        src.mkdir()
        for k, v in arrays.items():
            np.save(src / f"{k}.npy", v)
    else:
        src = tmp_path / "a.npz"
        np.savez_compressed(src, **arrays)
    import_data(src, tmp_path / "a.h5")
    images, labels = _arrays(tmp_path / "a.h5", "train")
    np.testing.assert_array_equal(images, rgb)  # round(255 * v / 255) is v again
    np.testing.assert_array_equal(labels, y)
    np.testing.assert_array_equal(_arrays(tmp_path / "a.h5", "test")[0], rgbt)


def test_png_folder_gives_the_idx_arrays_in_class_order(fashion_idx_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(importer, "CHUNK_BYTES", 28 * 28 * 64)  # the folder spans many chunks
    x, y, xt, yt = fashion(fashion_idx_dir, 3000, 500)
    write_png_folder(tmp_path / "png" / "train", x, y, NAMES)
    write_png_folder(tmp_path / "png" / "test", xt, yt, NAMES)
    rep = import_data(tmp_path / "png", tmp_path / "png.h5", shards=3)
    assert rep.fmt == "images" and rep.class_names == sorted(NAMES)
    for split, (xs, ys) in {"train": (x, y), "test": (xt, yt)}.items():
        # ImageFolder order: classes by sorted name, files by name (= by row here)
        rank = np.argsort(np.argsort(NAMES))  # label -> its folder's position
        order = np.lexsort((np.arange(len(ys)), rank[ys]))
        images, labels = _arrays(tmp_path / "png.h5", split)
        np.testing.assert_array_equal(images[:, 0], xs[order])
        np.testing.assert_array_equal(labels, rank[ys[order]])
    verify_checksum(tmp_path / "png.h5")


@pytest.mark.parametrize("classes", [10, 100])
def test_cifar_python_and_binary_give_the_same_arrays(fashion_idx_dir, tmp_path, classes):
    x, y, xt, yt = fashion(fashion_idx_dir, 600, 100)
    rgb, rgbt = rgb32(x), rgb32(xt)
    names = [f"c{i}" for i in range(classes)] if classes == 100 else NAMES
    published = {10: ("cifar-10-batches-py", "cifar-10-batches-bin"),
                 100: ("cifar-100-python", "cifar-100-binary")}[classes]  # fmt: skip
    write_cifar_python(tmp_path / "py" / published[0], classes, rgb, y, rgbt, yt, names)
    write_cifar_binary(tmp_path / "bin" / published[1], classes, rgb, y, rgbt, yt, names)
    for version in ("py", "bin"):
        rep = import_data(tmp_path / version, tmp_path / f"{version}.h5")
        assert rep.fmt == f"cifar{classes}" and rep.class_names == names
        images, labels = _arrays(tmp_path / f"{version}.h5", "train")
        np.testing.assert_array_equal(images, rgb)
        np.testing.assert_array_equal(labels, y)
        np.testing.assert_array_equal(_arrays(tmp_path / f"{version}.h5", "test")[0], rgbt)
    assert open_dataset(tmp_path / "py.h5").checksum == open_dataset(tmp_path / "bin.h5").checksum
    if classes == 100:
        import_data(tmp_path / "bin", tmp_path / "coarse.h5", label="coarse")
        np.testing.assert_array_equal(_arrays(tmp_path / "coarse.h5", "train")[1], y // 5)


def test_resize_channels_and_a_stratified_test_fraction(fashion_idx_dir, tmp_path):
    from PIL import Image

    x, y, _, _ = fashion(fashion_idx_dir, 200, 1)
    np.savez(tmp_path / "one.npz", images=x, labels=y)
    rep = import_data(
        tmp_path / "one.npz", tmp_path / "r.h5", size=(16, 20), channels=3,
        test_fraction=0.25, seed=3,
    )  # fmt: skip
    keep, held = stratified_split(y, 0.25, 3)
    assert rep.rows == {"train": len(keep), "test": len(held)} and rep.image_shape == (3, 16, 20)
    images, labels = _arrays(tmp_path / "r.h5", "test")
    np.testing.assert_array_equal(labels, y[held])
    want = np.asarray(Image.fromarray(x[held[0]]).convert("RGB").resize((20, 16), Image.BILINEAR))
    np.testing.assert_array_equal(images[0], want.transpose(2, 0, 1))
    # every class keeps its share in both parts
    for c in range(10):
        share = np.sum(y[held] == c) / max(np.sum(y == c), 1)
        assert abs(share - 0.25) < 0.1


def test_stratified_split_is_seeded_disjoint_and_complete():
    labels = np.repeat(np.arange(5), [10, 20, 30, 1, 39])
    keep, held = stratified_split(labels, 0.2, 7)
    assert np.array_equal(np.sort(np.concatenate([keep, held])), np.arange(100))
    assert [int(np.sum(labels[held] == c)) for c in range(5)] == [2, 4, 6, 0, 8]
    again = stratified_split(labels, 0.2, 7)[1]
    other = stratified_split(labels, 0.2, 8)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)
    with pytest.raises(DataError, match="strictly between"):
        stratified_split(labels, 1.0, 0)


def _folder(tmp_path, fashion_idx_dir, n=20):
    x, y, _, _ = fashion(fashion_idx_dir, n, 1)
    y = np.arange(n) % 2
    write_png_folder(tmp_path / "f", x, y, ["a", "b"])
    return tmp_path / "f"


def test_bad_folders_are_one_line_and_leave_no_file(fashion_idx_dir, tmp_path):
    from PIL import Image

    out = tmp_path / "o.h5"
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="class 'a' has no images"):
        import_data(tmp_path / "empty", out, test_fraction=0.5)
    src = _folder(tmp_path, fashion_idx_dir)
    with pytest.raises(DataError, match="no test split; give --test SOURCE2 or --test-fraction"):
        import_data(src, out)
    Image.new("L", (30, 28)).save(src / "b" / "zz-wide.png")
    with pytest.raises(DataError, match=r"zz-wide.png is 30x28 but .*000000.png is 28x28"):
        import_data(src, out, test_fraction=0.3)
    (src / "b" / "zz-wide.png").unlink()
    (src / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png: Pillow cannot decode it .*--skip-bad"):
        import_data(src, out, test_fraction=0.3)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".o.h5")]
    rep = import_data(src, out, test_fraction=0.3, skip_bad=True)
    assert len(rep.skipped) == 1 and "broken.png" in rep.skipped[0]
    assert sum(rep.rows.values()) == 20


def test_bad_arrays_and_cifar_files_are_one_line(fashion_idx_dir, tmp_path):
    out = tmp_path / "o.h5"
    x, y, xt, yt = fashion(fashion_idx_dir, 30, 10)
    np.savez(tmp_path / "wrong.npz", data=x, target=y)
    with pytest.raises(DataError, match="it has data, target"):
        import_data(tmp_path / "wrong.npz", out)
    np.savez(tmp_path / "short.npz", x_train=x, y_train=y[:-1], x_test=xt, y_test=yt)
    with pytest.raises(DataError, match="x_train has 30 images but y_train has 29 labels"):
        import_data(tmp_path / "short.npz", out)
    np.savez(tmp_path / "big.npz", x_train=x.astype(np.int16) * 2, y_train=y, x_test=xt, y_test=yt)
    with pytest.raises(DataError, match=r"integers in \[0, 510\]"):
        import_data(tmp_path / "big.npz", out)
    np.savez(tmp_path / "lab.npz", x_train=x, y_train=y, x_test=xt, y_test=yt + 10)
    with pytest.raises(DataError, match="--class-names: 10 names, but the labels go up to 19"):
        import_data(tmp_path / "lab.npz", out, class_names=FASHION_MNIST_CLASSES)
    rgb, rgbt = rgb32(x), rgb32(xt)
    write_cifar_binary(tmp_path / "bin", 10, rgb, y, rgbt, yt, NAMES)
    batch = tmp_path / "bin" / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DataError, match="data_batch_3.bin: .* not a whole number of 3073-byte"):
        import_data(tmp_path / "bin", out)
    write_cifar_python(tmp_path / "py", 10, rgb, y, rgbt, yt, NAMES)
    batch = tmp_path / "py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:-500])
    with pytest.raises(DataError, match="data_batch_2: not a readable CIFAR python batch"):
        import_data(tmp_path / "py", out)
    assert not out.exists()


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    import os
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                 "data_batch_5", "test_batch", "batches.meta"):  # fmt: skip
        (folder / name).write_bytes(pickle.dumps({b"data": Evil()}, protocol=2))
    with pytest.raises(DataError, match="refused to load"):
        import_data(tmp_path, tmp_path / "o.h5")
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
