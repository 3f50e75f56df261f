"""``--val-fraction``: replicas never train on the held-out rows, and the reported
``val_accuracy`` is the final parameters' accuracy on exactly those rows (checked
against the reference backend on rows read with h5py, normalised with NumPy)."""

import h5py
import numpy as np
import pytest

from hpcnet.algos import train
from hpcnet.config import load_config
from hpcnet.data.format import open_dataset
from hpcnet.data.splits import holdout
from hpcnet.kernels import get_backend
from hpcnet.nn.zoo import build_model
from tests.mpi.ranks import first_ranks


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_val_accuracy_is_the_final_parameters_on_the_held_out_rows(comm, shared_tmp, digits_path):
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    cfg = load_config(
        None,
        {
            "data.name": str(digits_path),
            "data.val_fraction": 0.25,
            "data.val_seed": 5,
            "run.eval_every": 10,
            "run.max_steps": 30,
            "run.threads": 1,
            "run.out": str(shared_tmp / "val"),
        },
    )
    s = train(cfg, sub, verbose=False)
    sub.Free()
    info = open_dataset(digits_path)
    keep, held = holdout(digits_path, 0.25, 5)
    with h5py.File(digits_path, "r") as f:  # independent of hpcnet's readers
        x = f["train/images"][()][held]
        y = f["train/labels"][()][held]
    x = ((x - info.mean[None, :, None, None]) / info.std[None, :, None, None]).astype(np.float32)
    model = build_model(s["model"], info.image_shape, info.num_classes)
    model.params[:] = s["_params"]
    logits = model.forward(x, get_backend("reference"))
    want = float(np.mean(np.argmax(logits, axis=1) == y))
    assert abs(s["val_accuracy"] - want) <= 1.0 / len(held), (s["val_accuracy"], want)
    assert s["val_accuracy"] != s["test_accuracy"]  # another split, not a copy
    assert len(held) == round(0.25 * info.n_train) and len(keep) + len(held) == info.n_train
