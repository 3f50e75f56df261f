"""Shared fixtures: paths to the shipped digits data and to real Fashion-MNIST."""

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "hpcnet" / "data" / "shipped" / "digits.h5"
FASHION_IDX = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def digits_path() -> Path:
    assert DIGITS.exists(), f"{DIGITS} is shipped with the repository"
    return DIGITS


@pytest.fixture
def fashion_idx_dir() -> Path:
    if not (FASHION_IDX / "train-images-idx3-ubyte.gz").exists():
        pytest.skip(
            f"real Fashion-MNIST not installed at {FASHION_IDX} "
            "(apt-get install dataset-fashion-mnist)"
        )
    return FASHION_IDX


# Every built-in algorithm declares its own options (hpcnet.options) when it registers;
# load_config knows the options of the modules imported so far.
import hpcnet.algos  # noqa: E402, F401
