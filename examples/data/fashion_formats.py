"""Fashion-MNIST written out in the layouts users bring to ``hpcnet data import``.

    python examples/data/fashion_formats.py /usr/share/datasets/fashion-mnist OUT [--n N]

writes into OUT the first N train and N/5 test images as a Keras-style ``fm.npz``
(``x_train, y_train, x_test, y_test``), an ImageFolder of PNGs (``png/train/CLASS/``,
``png/test/CLASS/``) and CIFAR-10's python and binary files in their published layout
(https://www.cs.toronto.edu/~kriz/cifar.html: ``cifar-10-batches-py/``,
``cifar-10-batches-bin/``), the images padded to 32x32 and made RGB (each channel a
different tint). hpcnet's tests use the same functions: the CIFAR readers are tested
on files of CIFAR's exact layout holding real images, without downloading CIFAR.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np

from hpcnet.data.idx import FASHION_MNIST_CLASSES, IDX_FILES, read_idx

NAMES = [n.replace("/", "-") for n in FASHION_MNIST_CLASSES]  # usable as folder names


def fashion(idx_dir: Path, n_train: int | None = None, n_test: int | None = None):
    """Fashion-MNIST's (train images (N, 28, 28), labels, test images, labels), the first
    ``n`` rows of each split."""
    x = read_idx(idx_dir / IDX_FILES["train"][0], 3)[:n_train]
    y = read_idx(idx_dir / IDX_FILES["train"][1], 1)[:n_train]
    xt = read_idx(idx_dir / IDX_FILES["test"][0], 3)[:n_test]
    yt = read_idx(idx_dir / IDX_FILES["test"][1], 1)[:n_test]
    return x, y, xt, yt


def rgb32(x: np.ndarray) -> np.ndarray:
    """(N, 28, 28) grey -> (N, 3, 32, 32) uint8: padded by 2, channels tinted apart."""
    pad = np.pad(x, ((0, 0), (2, 2), (2, 2)))
    return np.stack([pad, pad // 2, 255 - pad], axis=1).astype(np.uint8)


def write_png_folder(root: Path, images: np.ndarray, labels: np.ndarray, names) -> None:
    """``root/CLASS/NNNNNN.png``; images (N, H, W) grey or (N, 3, H, W) RGB."""
    from PIL import Image

    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        a = img if img.ndim == 2 else img.transpose(1, 2, 0)
        Image.fromarray(a).save(root / names[int(y)] / f"{i:06d}.png")


def write_cifar_python(folder: Path, classes: int, x, y, xt, yt, names) -> None:
    """CIFAR-10 (5 train batches) or CIFAR-100 (``train``; coarse label = fine // 5)
    python version: pickled dicts with bytes keys, as the published files (Python 2
    pickles read with encoding="bytes")."""
    folder.mkdir(parents=True, exist_ok=True)

    def dump(name, d):
        with open(folder / name, "wb") as f:
            pickle.dump(d, f, protocol=2)

    def batch(xs, ys):
        rows = xs.reshape(len(xs), -1)
        if classes == 10:
            return {b"batch_label": b"x", b"labels": [int(v) for v in ys], b"data": rows}
        return {
            b"fine_labels": [int(v) for v in ys],
            b"coarse_labels": [int(v) // 5 for v in ys],
            b"data": rows,
        }

    if classes == 10:
        for i, part in enumerate(np.array_split(np.arange(len(x)), 5)):
            dump(f"data_batch_{i + 1}", batch(x[part], y[part]))
        dump("test_batch", batch(xt, yt))
        dump("batches.meta", {b"label_names": [n.encode() for n in names]})
    else:
        dump("train", batch(x, y))
        dump("test", batch(xt, yt))
        coarse = [f"super{j}".encode() for j in range((len(names) + 4) // 5)]
        dump(
            "meta",
            {b"fine_label_names": [n.encode() for n in names], b"coarse_label_names": coarse},
        )


def write_cifar_binary(folder: Path, classes: int, x, y, xt, yt, names) -> None:
    """The binary version: records of label byte(s) + 3072 pixel bytes."""
    folder.mkdir(parents=True, exist_ok=True)

    def records(xs, ys):
        labels = [ys] if classes == 10 else [ys // 5, ys]  # CIFAR-100: coarse, fine
        cols = [np.asarray(v, np.uint8)[:, None] for v in labels]
        return np.concatenate([*cols, xs.reshape(len(xs), -1)], axis=1).tobytes()

    if classes == 10:
        for i, part in enumerate(np.array_split(np.arange(len(x)), 5)):
            (folder / f"data_batch_{i + 1}.bin").write_bytes(records(x[part], y[part]))
        (folder / "test_batch.bin").write_bytes(records(xt, yt))
        (folder / "batches.meta.txt").write_text("\n".join(names) + "\n\n")
    else:
        (folder / "train.bin").write_bytes(records(x, y))
        (folder / "test.bin").write_bytes(records(xt, yt))
        (folder / "fine_label_names.txt").write_text("\n".join(names) + "\n")
        coarse = [f"super{j}" for j in range((len(names) + 4) // 5)]
        (folder / "coarse_label_names.txt").write_text("\n".join(coarse) + "\n")


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("idx_dir", type=Path, help="the Fashion-MNIST IDX files")
    p.add_argument("out", type=Path, help="where to write the formats")
    p.add_argument("--n", type=int, default=5000, help="train images (test: n/5)")
    args = p.parse_args(argv)
    x, y, xt, yt = fashion(args.idx_dir, args.n, max(1, args.n // 5))
    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "fm.npz", x_train=x, y_train=y, x_test=xt, y_test=yt)
    write_png_folder(args.out / "png" / "train", x, y, NAMES)
    write_png_folder(args.out / "png" / "test", xt, yt, NAMES)
    rgb, rgbt = rgb32(x), rgb32(xt)
    write_cifar_python(args.out / "cifar-10-batches-py", 10, rgb, y, rgbt, yt, NAMES)
    write_cifar_binary(args.out / "cifar-10-batches-bin", 10, rgb, y, rgbt, yt, NAMES)
    print(f"wrote {len(x)} train and {len(xt)} test images in 4 formats under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
