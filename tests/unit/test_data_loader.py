"""Per-replica row assignment, shuffled prefetched batches, evaluation batches."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest

from hpcnet.data.format import open_dataset, read_rows, write_dataset
from hpcnet.data.loader import BatchLoader, assign_rows, eval_batches, normalize
from hpcnet.data.splits import holdout
from hpcnet.errors import DataError

pytestmark = pytest.mark.timeout(60)

N_TRAIN, N_TEST, SHAPE = 103, 31, (2, 3, 3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Train image r has every pixel of channel c equal to (r + 100 * c) % 256: rows are
    recognisable from their pixels, so a batch tells which rows it came from."""
    rows = np.arange(N_TRAIN)
    train = np.empty((N_TRAIN, *SHAPE), np.uint8)
    for c in range(SHAPE[0]):
        train[:, c] = ((rows + 100 * c) % 256)[:, None, None]
    test = np.arange(N_TEST * 18, dtype=np.int64).reshape(N_TEST, *SHAPE).astype(np.uint8)
    path = tmp_path_factory.mktemp("loader") / "d.h5"
    write_dataset(
        path,
        train,
        rows % 4,
        test,
        np.arange(N_TEST) % 4,
        class_names="abcd",
        source="test",
        licence="CC0",
        shards=3,
    )
    return path, open_dataset(path)


def rows_of(x, info):
    """Recover the train row index of each normalised image from channel 0."""
    raw = x[:, 0, 0, 0].astype(np.float64) * info.std[0] + info.mean[0]
    return np.rint(raw).astype(int)


@pytest.mark.parametrize("n_rows", [0, 1, 5, 16, 103])
@pytest.mark.parametrize("n_replicas", [1, 2, 3, 7])
def test_assign_rows(n_rows, n_replicas):
    drop = [assign_rows(n_rows, n_replicas, r) for r in range(n_replicas)]
    assert {b - a for a, b in drop} == {n_rows // n_replicas}  # equal sizes
    covered = [i for a, b in drop for i in range(a, b)]
    assert len(covered) == len(set(covered))  # no overlap
    assert covered == list(range(n_rows - n_rows % n_replicas))  # only the tail is dropped

    keep = [assign_rows(n_rows, n_replicas, r, drop_remainder=False) for r in range(n_replicas)]
    assert [i for a, b in keep for i in range(a, b)] == list(range(n_rows))
    sizes = [b - a for a, b in keep]
    assert max(sizes) - min(sizes) <= 1


def test_assign_rows_rejects_bad_arguments():
    for args in [(10, 0, 0), (10, 2, 2), (10, 2, -1), (-1, 2, 0)]:
        with pytest.raises(ValueError):
            assign_rows(*args)


def test_each_replica_reads_and_serves_only_its_rows(dataset):
    path, info = dataset
    n_replicas, batch = 3, 5
    seen = []
    for replica in range(n_replicas):
        start, stop = assign_rows(N_TRAIN, n_replicas, replica)
        with BatchLoader(
            path,
            replica=replica,
            n_replicas=n_replicas,
            batch_size=batch,
            seed=1,
            mean=info.mean,
            std=info.std,
        ) as loader:
            assert loader.rows_read == [(start, stop)]
            assert loader.steps_per_epoch == (N_TRAIN // n_replicas) // batch == 6
            for epoch in range(2):
                rows = []
                for x, y in loader.batches(epoch):
                    assert x.shape == (batch, *SHAPE) and y.shape == (batch,)
                    assert x.dtype == np.float32 and x.flags.c_contiguous
                    assert y.dtype == np.int64
                    r = rows_of(x, info)
                    np.testing.assert_array_equal(y, r % 4)  # labels travel with images
                    rows += r.tolist()
                assert len(rows) == len(set(rows)) == 6 * batch  # no row twice per epoch
                assert all(start <= r < stop for r in rows)
            seen.append(set(range(start, stop)))
    assert not (seen[0] & seen[1] or seen[1] & seen[2] or seen[0] & seen[2])
    assert all(len(s) == N_TRAIN // n_replicas for s in seen)


def loader_rows(path, info, epoch, seed=7, replica=0, n_replicas=2):
    with BatchLoader(
        path,
        replica=replica,
        n_replicas=n_replicas,
        batch_size=4,
        seed=seed,
        mean=info.mean,
        std=info.std,
    ) as loader:
        return np.concatenate([rows_of(x, info) for x, _ in loader.batches(epoch)])


def test_shuffling_is_reproducible_and_differs_by_epoch_seed_and_replica(dataset):
    path, info = dataset
    e0, e1 = loader_rows(path, info, 0), loader_rows(path, info, 1)
    np.testing.assert_array_equal(e0, loader_rows(path, info, 0))  # same seed, same order
    assert not np.array_equal(e0, e1)
    assert not np.array_equal(e0, loader_rows(path, info, 0, seed=8))
    assert not np.array_equal(e0 + 51, loader_rows(path, info, 0, replica=1))
    # The documented permutation, so other code (and people) can reproduce it.
    expected = np.random.default_rng([7, 1, 0]).permutation(51)[:48]
    np.testing.assert_array_equal(e1, expected)


def test_normalisation_matches_numpy(dataset):
    path, info = dataset
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (6, *SHAPE), dtype=np.uint8)
    mean, std = np.array([10.5, 200.25]), np.array([3.0, 0.7])
    expected = (images - mean[None, :, None, None]) / std[None, :, None, None]
    got = normalize(images, mean, std)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)

    # Through the loader, with the file's own statistics.
    first = eval_batches(
        path, replica=0, n_replicas=1, batch_size=4, mean=info.mean, std=info.std, split="train"
    )
    x, _ = next(first)
    raw = np.empty((4, *SHAPE))
    for c in range(SHAPE[0]):
        raw[:, c] = ((np.arange(4) + 100 * c) % 256)[:, None, None]
    np.testing.assert_allclose(
        x, (raw - info.mean[None, :, None, None]) / info.std[None, :, None, None], rtol=1e-6
    )


def test_batches_are_prefetched_on_another_thread(dataset, monkeypatch):
    path, info = dataset
    threads = []
    second_started = threading.Event()
    original = BatchLoader._make

    def spy(self, idx):
        threads.append(threading.current_thread())
        if len(threads) == 2:
            second_started.set()
        return original(self, idx)

    monkeypatch.setattr(BatchLoader, "_make", spy)
    loader = BatchLoader(
        path, replica=0, n_replicas=1, batch_size=10, seed=0, mean=info.mean, std=info.std
    )
    batches = loader.batches(0)
    next(batches)
    # The second batch is built while the caller still holds the first, without asking.
    assert second_started.wait(timeout=10)
    assert all(t is not threading.main_thread() for t in threads)
    batches.close()  # stopping early must not hang
    loader.close()
    loader.close()
    with pytest.raises(RuntimeError, match="closed"):
        next(loader.batches(1))


def test_batch_larger_than_the_replica_share_is_an_error(dataset):
    path, info = dataset
    with pytest.raises(DataError, match="fewer than batch_size=35") as e:
        BatchLoader(
            path, replica=0, n_replicas=3, batch_size=35, seed=0, mean=info.mean, std=info.std
        )
    assert str(e.value).startswith(f"{path}: ")


def test_eval_batches_cover_the_split_in_order(dataset):
    path, info = dataset
    images, labels = read_rows(path, "test", 0, N_TEST)
    xs, ys, sizes = [], [], []
    for replica in range(4):  # 31 rows -> 8, 8, 8, 7
        for x, y in eval_batches(
            path, replica=replica, n_replicas=4, batch_size=3, mean=info.mean, std=info.std
        ):
            xs.append(x)
            ys.append(y)
            sizes.append(len(y))
    np.testing.assert_array_equal(np.concatenate(ys), labels)
    np.testing.assert_allclose(np.concatenate(xs), normalize(images, info.mean, info.std))
    assert sizes == [3, 3, 2] * 3 + [3, 3, 1]


def test_replicas_read_only_the_rows_the_validation_split_leaves(digits_path):
    keep, held = holdout(digits_path, 0.2, 0)
    with h5py.File(digits_path, "r") as f:
        everything = f["train/images"][()]
    seen = []
    for r in range(3):
        kw = dict(replica=r, n_replicas=3, batch_size=8, seed=0, mean=[0.0], std=[1.0])
        with BatchLoader(digits_path, index=keep, **kw) as loader:
            assert loader.n_local == len(keep) // 3
            rows = keep[loader.start : loader.stop]
            np.testing.assert_array_equal(loader._images, everything[rows])
            seen.append(rows)
    seen = np.concatenate(seen)
    assert not np.intersect1d(seen, held).size  # no replica holds a validation row
    assert len(seen) == 3 * (len(keep) // 3)
