"""The training loader the algorithms build honours ``[data] augment``."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from hpcnet.algos import get_algorithm
from hpcnet.algos.prepare import train_loader
from hpcnet.config import Config, replace
from hpcnet.data.format import open_dataset
from hpcnet.data.registry import resolve_data
from hpcnet.layout import make_layout


def _prep(augment: bool):
    cfg = replace(Config(), data={"augment": augment, "crop_pad": 3})
    info = open_dataset(resolve_data(cfg.data.name))
    layout = make_layout(2, get_algorithm("sync"))
    return SimpleNamespace(cfg=cfg, info=info, layout=layout)


def test_augment_flag_reaches_the_loader():
    plain, aug = train_loader(_prep(False), 1), train_loader(_prep(True), 1)
    assert not plain.augment and aug.augment and aug.crop_pad == 3
    assert plain.n_replicas == 2 and plain.replica == 1
    (x0, y0), (x1, y1) = next(plain.batches(0)), next(aug.batches(0))
    np.testing.assert_array_equal(y0, y1)  # same rows, same order
    assert not np.array_equal(x0, x1)  # but cropped and flipped
    plain.close()
    aug.close()
