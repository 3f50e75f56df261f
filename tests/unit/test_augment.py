"""Training-time augmentation: random crop with zero padding and horizontal flip."""

from __future__ import annotations

import numpy as np
import pytest

from hpcnet.config import load_config
from hpcnet.data.format import open_dataset, write_dataset
from hpcnet.data.loader import BatchLoader, augment_images
from hpcnet.errors import ConfigError

pytestmark = pytest.mark.timeout(60)

N, SHAPE = 40, (2, 6, 5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    rng = np.random.default_rng(0)
    train = rng.integers(1, 256, (N, *SHAPE), dtype=np.uint8)  # no zero pixels
    path = tmp_path_factory.mktemp("augment") / "d.h5"
    write_dataset(
        path,
        train,
        np.arange(N) % 3,
        train[:6],
        np.arange(6) % 3,
        class_names="abc",
        source="test",
        licence="CC0",
    )
    return path, open_dataset(path), train


def _epoch(path, info, *, epoch=0, seed=5, replica=0, augment=True, crop_pad=2):
    with BatchLoader(
        path,
        replica=replica,
        n_replicas=2,
        batch_size=4,
        seed=seed,
        mean=info.mean,
        std=info.std,
        augment=augment,
        crop_pad=crop_pad,
    ) as loader:
        return [(x.copy(), y.copy()) for x, y in loader.batches(epoch)]


def _candidates(img, p):
    """Every crop of the zero-padded image, plain and mirrored."""
    c, h, w = img.shape
    padded = np.zeros((c, h + 2 * p, w + 2 * p), img.dtype)
    padded[:, p : p + h, p : p + w] = img
    for oy in range(2 * p + 1):
        for ox in range(2 * p + 1):
            crop = padded[:, oy : oy + h, ox : ox + w]
            yield crop
            yield crop[:, :, ::-1]


def test_augment_images_are_crops_and_flips_of_the_originals():
    rng = np.random.default_rng(1)
    images = rng.integers(1, 256, (64, *SHAPE), dtype=np.uint8)
    out = augment_images(images, np.random.default_rng(2), crop_pad=2)
    assert out.shape == images.shape and out.dtype == np.uint8 and out.flags.c_contiguous
    for img, aug in zip(images, out, strict=True):
        assert any(np.array_equal(aug, cand) for cand in _candidates(img, 2))
    # An image is unchanged only for the centre crop unflipped (p = 1/50): most change.
    changed = sum(not np.array_equal(a, b) for a, b in zip(images, out, strict=True))
    assert changed > 48
    flipped = sum(np.array_equal(a, b[:, :, ::-1]) for a, b in zip(images, out, strict=True))
    assert flipped > 0


def test_crop_pad_zero_only_flips():
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(1, 2, 3, 4).repeat(20, axis=0)
    out = augment_images(images, np.random.default_rng(0), crop_pad=0)
    for a in out:
        assert np.array_equal(a, images[0]) or np.array_equal(a, images[0][:, :, ::-1])


def test_loader_augmentation_is_deterministic_and_changes_images(dataset):
    path, info, _ = dataset
    a = _epoch(path, info)
    b = _epoch(path, info)
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        np.testing.assert_array_equal(xa, xb)  # same seed, epoch, replica: same batches
        np.testing.assert_array_equal(ya, yb)
    plain = _epoch(path, info, augment=False)
    for (_, ya), (_, yp) in zip(a, plain, strict=True):
        np.testing.assert_array_equal(ya, yp)  # same order, labels travel with images
    assert any(not np.array_equal(xa, xp) for (xa, _), (xp, _) in zip(a, plain, strict=True))
    stack = np.concatenate([x for x, _ in a])
    for other in (
        _epoch(path, info, epoch=1),
        _epoch(path, info, seed=6),
        _epoch(path, info, replica=1),
    ):
        assert not np.array_equal(stack, np.concatenate([x for x, _ in other]))


def test_loader_augmented_images_are_crops_of_their_rows(dataset):
    path, info, train = dataset
    lut_zero = (0.0 - info.mean) / info.std  # padding value after normalisation
    for x, _ in _epoch(path, info, crop_pad=1):
        for img in x:
            raw = np.rint(img * info.std[:, None, None] + info.mean[:, None, None])
            raw[np.isclose(img, lut_zero[:, None, None])] = 0
            raw = raw.astype(np.uint8)
            assert any(
                np.array_equal(raw, cand) for row in train[:20] for cand in _candidates(row, 1)
            )


def test_augment_flags():
    cfg = load_config(None, {"data.augment": True, "data.crop_pad": 4})
    assert cfg.data.augment and cfg.data.crop_pad == 4
    assert not load_config().data.augment
    with pytest.raises(ConfigError, match="--crop-pad"):
        load_config(None, {"data.crop_pad": -1})
