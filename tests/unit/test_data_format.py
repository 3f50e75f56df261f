"""The hpcnet HDF5 dataset format: round trips, shards (virtual datasets), bad files."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import h5py
import numpy as np
import pytest

from hpcnet.data.format import (
    open_dataset,
    read_rows,
    row_range,
    shard_path,
    split_size,
    verify_checksum,
    write_dataset,
)
from hpcnet.errors import DataError

pytestmark = pytest.mark.timeout(60)

CLASSES = ("a", "b", "c", "d", "e")


def make_arrays(n_train=23, n_test=7, shape=(3, 4, 5), seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        rng.integers(0, len(CLASSES), n_train).astype(np.uint8),  # any integer dtype
        rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        rng.integers(0, len(CLASSES), n_test).astype(np.int32),
    )


def write(path, arrays, **kw):
    return write_dataset(path, *arrays, class_names=CLASSES, source="test", licence="CC0", **kw)


@pytest.fixture
def good(tmp_path):
    arrays = make_arrays()
    path = tmp_path / "good.h5"
    write(path, arrays)
    return path, arrays


def test_round_trip(good):
    path, (xtr, ytr, xte, yte) = good
    info = open_dataset(path)
    assert (info.n_train, info.n_test, info.image_shape) == (23, 7, (3, 4, 5))
    assert info.num_classes == 5 and info.class_names == CLASSES
    assert (info.source, info.licence, info.shard_files) == ("test", "CC0", ())

    # Oracle: NumPy over the whole train split, per channel, raw pixel units.
    pixels = xtr.astype(np.float64)
    np.testing.assert_allclose(info.mean, pixels.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(info.std, pixels.std(axis=(0, 2, 3)), rtol=1e-10)

    digest = hashlib.sha256()
    for a in (xtr, ytr.astype("<i8"), xte, yte.astype("<i8")):
        digest.update(a.tobytes())
    assert info.checksum == digest.hexdigest() == verify_checksum(path)

    for split, x, y in (("train", xtr, ytr), ("test", xte, yte)):
        images, labels = read_rows(path, split, 0, len(x))
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, x)
        np.testing.assert_array_equal(labels, y)
    images, labels = read_rows(path, "train", 5, 9)
    np.testing.assert_array_equal(images, xtr[5:9])
    np.testing.assert_array_equal(labels, ytr[5:9])
    assert read_rows(path, "test", 3, 3)[0].shape == (0, 3, 4, 5)
    assert split_size(path, "train") == 23


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path):
    arrays = make_arrays()
    write(tmp_path / "d.h5", arrays, shards=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "d.h5",
        "d.train-00000-of-00003.h5",
        "d.train-00001-of-00003.h5",
        "d.train-00002-of-00003.h5",
    ]
    bad = list(arrays)
    bad[1] = bad[1].copy()
    bad[1][0] = len(CLASSES)  # label out of range: nothing may be written
    with pytest.raises(DataError, match="outside"):
        write(tmp_path / "bad.h5", bad)
    assert not (tmp_path / "bad.h5").exists()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())


def test_row_range_is_balanced_and_covers_all():
    for n in (0, 1, 7, 10, 23):
        for k in (1, 2, 3, 4, 7):
            ranges = [row_range(n, k, i) for i in range(k)]
            assert ranges[0][0] == 0 and ranges[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
            sizes = [b - a for a, b in ranges]
            assert max(sizes) - min(sizes) <= 1


def test_sharded_round_trip_equals_unsharded(tmp_path):
    arrays = make_arrays()
    plain, sharded = tmp_path / "plain.h5", tmp_path / "sharded.h5"
    write(plain, arrays)
    written = write(sharded, arrays, shards=3)
    shards = [shard_path(sharded, i, 3) for i in range(3)]
    assert written == [*shards, sharded]
    assert shards[0].name == "sharded.train-00000-of-00003.h5"

    a, b = open_dataset(plain), open_dataset(sharded)
    assert b.shard_files == tuple(shards)
    for field in ("n_train", "n_test", "image_shape", "class_names", "checksum"):
        assert getattr(a, field) == getattr(b, field)
    np.testing.assert_array_equal(a.mean, b.mean)
    np.testing.assert_array_equal(a.std, b.std)
    assert verify_checksum(sharded) == a.checksum

    # Balanced contiguous shards (23 rows -> 8, 8, 7), one virtual dataset in the main file.
    with h5py.File(sharded) as f:
        ds = f["train/images"]
        assert ds.is_virtual and ds.shape == (23, 3, 4, 5)
        names = [m.file_name for m in ds.virtual_sources()]
        assert names == [p.name for p in shards]  # relative, so the folder can move
    for i, p in enumerate(shards):
        with h5py.File(p) as f:
            assert len(f["train/images"]) == [8, 8, 7][i]

    # Every row range, including ones that straddle shard boundaries, reads the same.
    for start, stop in [(0, 23), (7, 9), (15, 17), (0, 1), (22, 23), (3, 20)]:
        for x, y in zip(
            read_rows(plain, "train", start, stop),
            read_rows(sharded, "train", start, stop),
            strict=True,
        ):
            np.testing.assert_array_equal(x, y)


def test_sharded_dataset_survives_a_move_and_another_cwd(tmp_path, monkeypatch):
    arrays = make_arrays()
    write(tmp_path / "a" / "d.h5", arrays, shards=2)
    shutil.move(tmp_path / "a", tmp_path / "b")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    images, _ = read_rows(tmp_path / "b" / "d.h5", "train", 0, 23)
    np.testing.assert_array_equal(images, arrays[0])


def test_read_touches_only_covering_shards(tmp_path):
    arrays = make_arrays()
    path = tmp_path / "d.h5"
    write(path, arrays, shards=3)
    missing = shard_path(path, 2, 3)  # rows [16, 23)
    missing.unlink()
    images, _ = read_rows(path, "train", 0, 16)  # shards 0 and 1 only
    np.testing.assert_array_equal(images, arrays[0][:16])
    # HDF5 would silently return zeros for the missing shard: we must refuse.
    with pytest.raises(DataError, match="missing") as e:
        read_rows(path, "train", 15, 17)
    assert str(e.value).startswith(f"{path}: ") and str(missing) in str(e.value)
    with pytest.raises(DataError, match="missing") as e:
        open_dataset(path)
    assert str(missing) in str(e.value)


def test_sharded_shard_of_wrong_shape_is_refused(tmp_path):
    path = tmp_path / "d.h5"
    write(path, make_arrays(), shards=2)
    with h5py.File(shard_path(path, 1, 2), "w") as f:
        f["train/images"] = np.zeros((3, 3, 4, 5), np.uint8)
        f["train/labels"] = np.zeros(3, np.int64)
    with pytest.raises(DataError, match="shape"):
        open_dataset(path)


# ------------------------------------------------------------------------- bad files


def _replace(name, data):
    def edit(f):
        del f[name]
        f[name] = data

    return edit


def _del_attr(name):
    def edit(f):
        del f.attrs[name]

    return edit


BAD_EDITS = {
    "missing dataset": (lambda f: f.__delitem__("test/labels"), "missing dataset 'test/labels'"),
    "missing attribute": (_del_attr("mean"), "missing root attribute 'mean'"),
    "images 3-D": (_replace("train/images", np.zeros((23, 4, 5), np.uint8)), "expected uint8"),
    "images float": (_replace("train/images", np.zeros((23, 3, 4, 5), np.float32)), "float32"),
    "labels 2-D": (_replace("train/labels", np.zeros((23, 1), np.int64)), "expected integer"),
    "labels float": (_replace("test/labels", np.zeros(7, np.float64)), "expected integer"),
    "count mismatch": (_replace("train/labels", np.zeros(22, np.int64)), "23 train images but 22"),
    "label too big": (_replace("test/labels", np.full(7, 5, np.int64)), r"outside \[0, 5\)"),
    "label negative": (_replace("train/labels", -np.ones(23, np.int64)), "is -1, outside"),
    "shapes disagree": (
        _replace("test/images", np.zeros((7, 3, 5, 4), np.uint8)),
        r"train images are \(3, 4, 5\) but test images are \(3, 5, 4\)",
    ),
    "mean wrong length": (lambda f: f.attrs.__setitem__("mean", np.zeros(2)), "'mean'"),
    "class names mismatch": (lambda f: f.attrs.__setitem__("num_classes", 4), "num_classes"),
}


@pytest.mark.parametrize("case", sorted(BAD_EDITS))
def test_bad_file_raises_one_line_naming_it(good, case):
    path, _ = good
    edit, expected = BAD_EDITS[case]
    with h5py.File(path, "r+") as f:
        edit(f)
    with pytest.raises(DataError, match=expected) as e:
        open_dataset(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message


def test_missing_truncated_and_not_hdf5_files(good, tmp_path):
    path, _ = good
    cases = {tmp_path / "nope.h5": "no such file"}
    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    cases[truncated] = "not a readable HDF5 file"
    text = tmp_path / "text.h5"
    text.write_text("hello\n")
    cases[text] = "not a readable HDF5 file"
    for bad, expected in cases.items():
        for call in (
            lambda p: open_dataset(p),
            lambda p: read_rows(p, "train", 0, 1),
            lambda p: split_size(p, "train"),
        ):
            with pytest.raises(DataError, match=expected) as e:
                call(bad)
            assert str(e.value).startswith(f"{bad}: ") and "\n" not in str(e.value)


def test_read_rows_past_the_end(good):
    path, _ = good
    with pytest.raises(DataError, match="go past the 7 test rows"):
        read_rows(path, "test", 5, 8)
    with pytest.raises(ValueError, match="unknown split"):
        read_rows(path, "valid", 0, 1)


def test_verify_checksum_detects_a_changed_pixel(good):
    path, _ = good
    with h5py.File(path, "r+") as f:
        f["test/images"][0, 0, 0, 0] ^= 1
    open_dataset(path)  # structurally fine
    with pytest.raises(DataError, match="checksum mismatch"):
        verify_checksum(path)


def test_write_rejects_bad_shards_and_arrays(tmp_path):
    arrays = make_arrays()
    with pytest.raises(DataError, match="shards=24"):
        write(tmp_path / "x.h5", arrays, shards=24)
    with pytest.raises(DataError, match="expected uint8"):
        write(tmp_path / "x.h5", (arrays[0].astype(np.float32), *arrays[1:]))
    with pytest.raises(DataError, match="23 train images but 22 labels"):
        write(tmp_path / "x.h5", (arrays[0], arrays[1][:22], *arrays[2:]))


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="h5dump not installed (hdf5-tools)")
def test_h5dump_sees_one_train_dataset(tmp_path):
    path = tmp_path / "d.h5"
    arrays = make_arrays()
    write(path, arrays, shards=3)
    out = subprocess.run(
        ["h5dump", "-y", "-w", "0", "-d", "/train/labels", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",  # the shard paths are relative to the main file, not the cwd
    ).stdout
    assert "SIMPLE { ( 23 ) / ( 23 ) }" in out
    values = [int(v) for v in out.split("DATA {")[1].split("}")[0].split(",")]
    assert values == arrays[1].tolist()
