"""Stratified, seeded holdout splits: an import's test split (``--test-fraction``) and a
run's validation split (``--val-fraction``)."""

from __future__ import annotations

import numpy as np

from hpcnet.errors import DataError


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int, what: str = "--test-fraction"
) -> tuple[np.ndarray, np.ndarray]:
    """Splits rows ``0 .. n-1`` into (kept, held out): from every class, ``round(fraction
    * n_class)`` of its rows, drawn with ``numpy.random.default_rng(seed)``, are held
    out, so each class keeps its share in both parts (a class with one row stays in the
    kept part).

    Args:
        labels: (n,) integer class of every row.
        fraction: the held-out share, in (0, 1).
        seed: the draw's seed (the same seed and labels: the same split, everywhere).
        what: the flag named in an error.
    Returns:
        (kept rows, held-out rows): sorted int64 arrays, disjoint, together every row.
    Raises:
        DataError: ``fraction`` outside (0, 1), or a part that would be empty.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"{what} {fraction:g}: must lie strictly between 0 and 1")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        k = min(int(round(fraction * len(rows))), len(rows) - 1)
        held.append(rng.permutation(rows)[:k])
    out = np.sort(np.concatenate(held)).astype(np.int64) if held else np.empty(0, np.int64)
    keep = np.setdiff1d(np.arange(len(labels), dtype=np.int64), out)
    if not len(out) or not len(keep):
        raise DataError(
            f"{what} {fraction:g}: holds out {len(out)} of {len(labels)} rows; "
            "both parts need at least one"
        )
    return keep, out


def holdout(path, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A run's validation split (``--val-fraction``): the rows of ``path``'s train split
    it trains on and the stratified, seeded ``fraction`` it holds out
    (:func:`stratified_split` of the train labels; the same on every rank and on resume).

    Returns:
        (train rows, validation rows): sorted int64 row indices of the train split.
    Raises:
        DataError: the file is unreadable, or a bad fraction (naming ``--val-fraction``).
    """
    from hpcnet.data.format import read_labels

    return stratified_split(read_labels(path, "train"), fraction, seed, "--val-fraction")


def read_indexed(
    path, split: str, index: np.ndarray, lo: int, hi: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rows ``index[lo:hi]`` of ``split`` (``index`` sorted): one read of the range they
    span, then a selection, so memory is that range (a validation split leaves it at
    most ``1 / (1 - fraction)`` times the rows wanted).

    Returns:
        (images, labels): (hi - lo, C, H, W) uint8 and (hi - lo,) int64.
    Raises:
        DataError: the file is unreadable.
    """
    from hpcnet.data.format import read_rows

    want = np.asarray(index[lo:hi])
    if not len(want):
        images, labels = read_rows(path, split, 0, 0)
        return images, labels
    first = int(want[0])
    images, labels = read_rows(path, split, first, int(want[-1]) + 1)
    return images[want - first], labels[want - first]
