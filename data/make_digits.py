"""Export the UCI handwritten digits to hpcnet/data/shipped/digits.h5 (the hpcnet format).

Source: scikit-learn's bundled copy (``sklearn.datasets.load_digits``) of the test part
of the UCI "Optical Recognition of Handwritten Digits" data set (Alpaydin & Kaynak,
1998; CC BY 4.0): 1,797 images of 8x8 pixels, values 0..16, 10 classes.

Split: stratified 80/20 train/test with ``train_test_split(..., test_size=0.2,
stratify=y, random_state=0)``, giving 1,437 train and 360 test images.

scikit-learn is needed only to run this script, not by hpcnet. Run from anywhere:

    python data/make_digits.py [--out hpcnet/data/shipped/digits.h5]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

# Run as a script from a checkout: make the repository's hpcnet importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hpcnet.data.format import open_dataset, write_dataset  # noqa: E402

SOURCE = (
    "UCI ML repository, Optical Recognition of Handwritten Digits (Alpaydin & Kaynak, "
    "1998), https://archive.ics.uci.edu/dataset/80, via scikit-learn's load_digits copy; "
    "stratified 80/20 train/test split, seed 0"
)
LICENCE = "CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/)"
SEED = 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out",
        type=Path,
        default=Path(__file__).resolve().parents[1] / "hpcnet" / "data" / "shipped" / "digits.h5",
    )
    args = parser.parse_args()

    digits = load_digits()
    images = digits.images.astype(np.uint8)[:, None, :, :]  # (1797, 1, 8, 8), values 0..16
    assert np.array_equal(images[:, 0], digits.images), "pixel values are not integers"
    labels = digits.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=SEED
    )
    write_dataset(
        args.out,
        x_train,
        y_train,
        x_test,
        y_test,
        class_names=[str(d) for d in range(10)],
        source=SOURCE,
        licence=LICENCE,
    )
    info = open_dataset(args.out)
    print(
        f"wrote {args.out}: {info.n_train} train, {info.n_test} test, "
        f"mean {info.mean[0]:.4f}, std {info.std[0]:.4f}"
    )


if __name__ == "__main__":
    main()
