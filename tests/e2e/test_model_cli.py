"""``--model SOURCE`` from the command line: a model file trains exactly as the built-in
it copies, a Python source trains and exports, ``info`` prints the summary table, and a
bad model is one line, exit 2, on every rank."""

from __future__ import annotations

import re

import h5py
import numpy as np
import pytest

from hpcnet.nn.zoo import MODELS
from tests.e2e.test_cli import hpcnet


@pytest.mark.timeout(300)
def test_a_model_file_of_2conv_trains_bit_for_bit_as_2conv(tmp_path):
    copy = tmp_path / "mine.toml"
    copy.write_text(MODELS["2conv"].read_text().replace('name = "2conv"', 'name = "mine"'))
    params = []
    for name, model in (("builtin", "2conv"), ("file", str(copy))):
        out = tmp_path / name
        code, _, stderr, _ = hpcnet(
            "train", "--model", model, "--max-steps", "100", "--threads", "1", "--seed", "7",
            "--out", str(out), n=2, cwd=tmp_path,
        )  # fmt: skip
        assert code == 0, stderr
        with h5py.File(out / "checkpoint.h5", "r") as f:
            params.append(f["params"][()])
    assert params[0].shape == params[1].shape and np.array_equal(params[0], params[1])


@pytest.mark.timeout(300)
def test_a_python_model_trains_exports_and_summarises(tmp_path):
    net = tmp_path / "net.py"
    net.write_text(
        "from hpcnet.nn.layers import Conv2D, Dense, Flatten, ReLU\n"
        "def build(shape, k):\n"
        "    return [Conv2D(8, 3, padding='same'), ReLU(), Flatten(), Dense(k)]\n"
    )
    code, stdout, stderr, _ = hpcnet("info", "--model", f"{net}:build", "--data", "digits", n=1)
    assert code == 0, stderr
    assert re.search(r"0  Conv2D +\(8, 8, 8\) +80 +4,608", stdout), stdout
    assert "total: 5,210 parameters, 9,728 multiply-adds per sample" in stdout
    out = tmp_path / "run"
    code, stdout, stderr, _ = hpcnet(
        "train", "--model", f"{net}:build", "--epochs", "3", "--out", str(out), n=2, cwd=tmp_path
    )
    assert code == 0, stderr
    assert "test accuracy" in stdout


@pytest.mark.timeout(120)
def test_a_bad_model_is_one_line_and_exit_2(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('layers = [{type = "dense", units = 10}]\n')
    code, _, stderr, _ = hpcnet("train", "--model", str(bad), "--out", str(tmp_path / "o"), n=2)
    assert code == 2, stderr
    lines = [x for x in stderr.splitlines() if x.startswith("hpcnet")]
    assert lines == [
        f"hpcnet: error: --model {bad}: does not fit input (1, 8, 8): layer 0 (Dense) gets "
        "input (1, 8, 8): Dense needs a flat (F,) input, got (1, 8, 8); add Flatten first"
    ], stderr
