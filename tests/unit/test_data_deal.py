"""The deal of training rows when a synchronous run's replica count changes
(hpcnet.data.deal): against BatchLoader's own batches and a count of every row."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.data.deal import DataDeal, DealtLoader
from hpcnet.data.loader import BatchLoader, assign_rows

N, B, SEED = 1000, 16, 7


def epoch_rows(deal: DataDeal, epoch: int) -> np.ndarray:
    """Every row position read in ``epoch``, sorted (repeats kept)."""
    out = []
    for seg in deal.segments:
        if seg.epoch == epoch:
            for s in range(seg.first, seg.first + seg.n_steps):
                out += [deal.rows(j, s) for j in range(seg.replicas)]
    return np.sort(np.concatenate(out))


def blocks_rows(replicas: int) -> np.ndarray:
    """The rows an epoch of ``replicas`` replicas reads (the remainder policy's)."""
    spe = (N // replicas) // B
    return np.sort(
        np.concatenate(
            [
                assign_rows(N, replicas, j)[0]
                + np.random.default_rng([SEED, 0, j]).permutation(N // replicas)[: spe * B]
                for j in range(replicas)
            ]
        )
    )


def test_without_a_change_it_is_batchloaders_deal():
    deal = DataDeal(N, B, SEED, 2, 4)
    spe = (N // 4) // B
    assert deal.total_steps == 2 * spe and deal.steps_per_epoch == spe
    for j in (0, 3):
        start, _ = assign_rows(N, 4, j)
        order = np.random.default_rng([SEED, 1, j]).permutation(N // 4)
        np.testing.assert_array_equal(deal.rows(j, spe + 2), start + order[2 * B : 3 * B])


@pytest.mark.parametrize(
    "changes",
    [[(5, 3)], [(5, 1)], [(5, 6)], [(5, 3), (9, 2)], [(5, 3), (9, 5)], [(0, 3)], [(14, 3)]],
)
def test_every_row_of_the_epoch_is_read_once(changes):
    deal = DataDeal(N, B, SEED, 3, 4)
    want = blocks_rows(4)
    for step, replicas in changes:
        deal.regroup(step, replicas)
    got = epoch_rows(deal, 0)
    if changes[0][0] == 0:  # changed before the first step: whole epochs of the new count
        want = blocks_rows(changes[0][1])
    np.testing.assert_array_equal(got, want)
    assert len(np.unique(got)) == len(got)
    # later epochs: the last count's blocks; every replica the same number of steps
    last = changes[-1][1]
    assert deal.segments[-1].replicas == last and deal.steps_per_epoch == (N // last) // B
    for seg in deal.segments:
        if seg.tail is not None:
            lengths = {len(seg.tail[j]) for j in range(seg.replicas)}
            assert lengths == {seg.n_steps}
            assert all(0 < len(b) <= B for t in seg.tail for b in t)


def test_a_death_keeps_the_survivors_rows_and_deals_the_rest():
    deal = DataDeal(N, B, SEED, 1, 4)
    before = [np.concatenate([deal.rows(j, s) for s in range(5, 15)]) for j in range(4)]
    deal.regroup(5, 3)
    seg, _ = deal.locate(5)
    after = [np.concatenate(seg.tail[j]) for j in range(3)]
    for j in range(3):  # its own rows first, then a third of replica 3's
        np.testing.assert_array_equal(after[j][: len(before[j])], before[j])
    dealt = np.sort(np.concatenate([a[len(b) :] for a, b in zip(after, before[:3], strict=True)]))
    np.testing.assert_array_equal(dealt, np.sort(before[3]))
    assert abs(deal.epoch_of(5) - 5 / 15) < 1e-12 and deal.epoch_of(5 + seg.n_steps) == 1.0


def test_the_deal_depends_only_on_the_changes():
    a, b = DataDeal(N, B, SEED, 3, 4), DataDeal(N, B, SEED, 3, 4)
    a.regroup(7, 3)
    b.regroup(7, 3)
    assert a.total_steps == b.total_steps
    for s in range(a.total_steps):
        np.testing.assert_array_equal(a.rows(2, s), b.rows(2, s))


def test_bad_counts():
    with pytest.raises(ValueError, match="at least one replica"):
        DataDeal(N, B, SEED, 1, 2).regroup(3, 0)
    with pytest.raises(ValueError, match="fewer than one batch"):
        DataDeal(N, B, SEED, 1, 100)


def test_dealt_loader_reads_batchloaders_batches_and_the_tail(digits_path):
    from hpcnet.data.format import split_size

    n = split_size(digits_path, "train")
    mean, std = np.array([8.0]), np.array([4.0])
    deal = DataDeal(n, 32, SEED, 2, 3)
    spe = deal.steps_per_epoch
    with BatchLoader(
        digits_path, replica=1, n_replicas=3, batch_size=32, seed=SEED, mean=mean, std=std
    ) as ref:
        want = list(ref.batches(1, 0))
    got = DealtLoader(deal, 1, digits_path, mean=mean, std=std)
    for k, (x, y) in enumerate(got.batches(spe)):
        np.testing.assert_array_equal(x, want[k][0])
        np.testing.assert_array_equal(y, want[k][1])
    deal.regroup(4, 2)
    whole = BatchLoader(
        digits_path, replica=0, n_replicas=1, batch_size=n, seed=SEED, mean=mean, std=std
    )
    x_all, y_all = next(whole.batches(0))  # every row, permuted
    whole.close()
    order = np.random.default_rng([SEED, 0, 0]).permutation(n)
    loader = DealtLoader(deal, 1, digits_path, mean=mean, std=std)
    x, y = loader.batch(4)
    at = np.searchsorted(np.sort(order), deal.rows(1, 4))
    inv = np.argsort(order)[at]
    np.testing.assert_array_equal(x, x_all[inv])
    np.testing.assert_array_equal(y, y_all[inv])
    assert len(loader.rows_read) >= 1 and all(hi - lo <= n for lo, hi in loader.rows_read)
