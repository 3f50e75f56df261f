"""``export``: a run's checkpoint cut into the model's named tensors (npz) or a PyTorch
state_dict, from an OUT laid out as training leaves it (checkpoint.h5, config.toml,
summary.json)."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hpcnet.config import Config, replace
from hpcnet.errors import CheckpointError, MissingExtra, ResultsError
from hpcnet.nn.zoo import build_model
from hpcnet.run.checkpoint import write_checkpoint
from hpcnet.tools.export import export_run, trained_model

pytestmark = pytest.mark.timeout(60)


def _out(tmp_path, name="digits_cnn", shape=(1, 8, 8), summary_extra=None, n_params=None):
    """A run's OUT whose checkpoint holds random parameters of zoo model ``name``."""
    out = tmp_path / "out"
    out.mkdir()
    cfg = replace(Config(), model={"name": name}, run={"out": str(out)})
    (out / "config.toml").write_text(cfg.to_toml())
    model = build_model(name, shape, 10)
    params = np.random.default_rng(0).normal(0, 1, n_params or model.n_params)
    attrs = {"step": 5, "epoch": 1.0, "final": True, "algo": "sync", "world_size": 2,
             "layout": {"world_size": 2}, "config": cfg.to_toml()}  # fmt: skip
    write_checkpoint(out, params.astype(np.float32), None, attrs)
    summary = {"model": name, "input_shape": list(shape), "num_classes": 10}
    (out / "summary.json").write_text(json.dumps({**summary, **(summary_extra or {})}))
    return out, params.astype(np.float32), model


def test_npz_holds_the_models_tensors_that_reassemble_to_the_flat_params(tmp_path):
    out, params, model = _out(tmp_path)
    line = export_run(out, "npz")
    assert line.startswith(f"wrote {out / 'weights.npz'}: 8 tensors, 38,282 parameters")
    with np.load(out / "weights.npz") as npz:
        names = list(npz.files)
        arrays = {k: npz[k] for k in names}
    assert names == [name for name, _, _ in model.segments]  # flat-vector order
    assert names[:2] == ["0.Conv2D.w", "0.Conv2D.b"] and names[-1] == "8.Dense.b"
    specs = [s for layer in model.layers for _, s in layer.param_specs()]
    assert [a.shape for a in arrays.values()] == specs
    assert arrays["0.Conv2D.w"].shape == (16, 1, 3, 3)  # (out, in, kh, kw)
    assert arrays["6.Dense.w"].shape == (64, 32 * 4 * 4)  # (out, in)
    assert all(a.dtype == np.float32 for a in arrays.values())
    flat = np.concatenate([a.ravel() for a in arrays.values()])
    np.testing.assert_array_equal(flat, params)


def test_output_path_is_taken_as_given(tmp_path):
    out, _, _ = _out(tmp_path)
    export_run(out, "npz", tmp_path / "w.bin")
    assert (tmp_path / "w.bin").is_file() and not (tmp_path / "w.bin.npz").exists()
    with pytest.raises(ResultsError, match="cannot write"):
        export_run(out, "npz", tmp_path / "no" / "such" / "dir.npz")


def test_trained_model_holds_the_checkpoint_params(tmp_path):
    out, params, _ = _out(tmp_path, "lenet", (1, 28, 28))
    model = trained_model(out)
    assert model.name == "lenet" and model.input_shape == (1, 28, 28)
    np.testing.assert_array_equal(model.params, params)


def test_a_checkpoint_of_another_length_is_refused(tmp_path):
    out, _, _ = _out(tmp_path, n_params=100)
    with pytest.raises(CheckpointError, match="has 38282 parameters"):
        export_run(out, "npz")


def test_a_corrupt_checkpoint_is_refused(tmp_path):
    out, _, _ = _out(tmp_path)
    with h5py.File(out / "checkpoint.h5", "r+") as f:
        f["params"][0] += 1.0
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        export_run(out, "npz")


def test_without_input_shape_the_data_file_named_is_read(tmp_path, digits_path):
    out, params, _ = _out(tmp_path)
    (out / "summary.json").write_text(json.dumps({"data_file": str(digits_path)}))
    np.testing.assert_array_equal(trained_model(out).params, params)
    (out / "summary.json").write_text(json.dumps({"data_file": str(tmp_path / "gone.h5")}))
    with pytest.raises(ResultsError, match="no input_shape/num_classes"):
        trained_model(out)


def test_missing_out_and_missing_checkpoint(tmp_path):
    with pytest.raises(ResultsError, match="no such run directory"):
        export_run(tmp_path / "nope", "npz")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        export_run(tmp_path / "empty", "npz")


def test_torch_export_loads_into_the_equivalent_module(tmp_path):
    torch = pytest.importorskip("torch")
    from hpcnet.nn.torch_equiv import torch_module

    out, params, _ = _out(tmp_path)
    model = trained_model(out)
    export_run(out, "torch")
    state = torch.load(out / "weights.pt")
    assert list(state) == ["0.weight", "0.bias", "3.weight", "3.bias",
                           "6.weight", "6.bias", "8.weight", "8.bias"]  # fmt: skip
    net = torch_module(model)
    net.load_state_dict(state)
    np.testing.assert_array_equal(net[6].weight.detach().numpy(), model.named_params()["6.Dense.w"])
    flat = np.concatenate([t.numpy().ravel() for t in state.values()])
    np.testing.assert_array_equal(flat, params)


def test_torch_export_without_torch_is_one_clear_error(tmp_path, monkeypatch):
    import sys

    out, _, _ = _out(tmp_path)
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingExtra, match="needs PyTorch"):
        export_run(out, "torch")
    assert not (out / "weights.pt").exists()
