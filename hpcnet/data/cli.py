"""The ``data`` subcommand: ``import``, ``import-idx``, ``info``, ``fetch``.

Every handler runs on a single process, returns an exit status, and lets
:class:`~hpcnet.errors.DataError` propagate to the top-level CLI (one line, exit 2).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hpcnet.data.fetch import DEFAULT_URL, fetch_fashion_mnist
from hpcnet.data.format import DatasetInfo, open_dataset, verify_checksum
from hpcnet.data.idx import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_LICENCE,
    FASHION_MNIST_SOURCE,
    import_idx,
)
from hpcnet.data.registry import cache_dir


def add_data_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data`` and its sub-subcommands to a top-level ``add_subparsers()`` object.

    Returns:
        The ``data`` parser. Each leaf parser sets ``func(args) -> int``.
    """
    data = subparsers.add_parser(
        "data",
        help="import, inspect and download data sets",
        description="Makes hpcnet dataset files (HDF5) from your data (import), checks and "
        "describes one (info), downloads Fashion-MNIST (fetch). COMMAND -h for each.",
    )
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    _add_import(sub)
    imp = sub.add_parser("import-idx", help="convert gzip IDX files (MNIST format) to HDF5")
    imp.add_argument("dir", type=Path, help="folder with train-*/t10k-* *-ubyte.gz files")
    imp.add_argument("--out", type=Path, required=True, metavar="FILE.h5", help="file to write")
    imp.add_argument(
        "--shards",
        type=_positive_int,
        default=1,
        metavar="K",
        help="write the train split as K shard files (default 1)",
    )
    imp.add_argument(
        "--class-names",
        type=_names,
        default=FASHION_MNIST_CLASSES,
        metavar="A,B,...",
        help="comma-separated class names (default: Fashion-MNIST)",
    )
    imp.add_argument("--source", default=FASHION_MNIST_SOURCE, help="source attribute")
    imp.add_argument("--licence", default=FASHION_MNIST_LICENCE, help="licence attribute")
    imp.set_defaults(func=_import_idx)

    info = sub.add_parser("info", help="validate a dataset file and describe it")
    info.add_argument("file", type=Path, metavar="FILE.h5", help="the dataset file")
    info.add_argument(
        "--verify", action="store_true", help="also recompute the checksum (reads every image)"
    )
    info.set_defaults(func=_info)

    fetch = sub.add_parser("fetch", help="download a data set and convert it")
    fetch.add_argument("name", choices=["fashion-mnist"], help="the data set")
    fetch.add_argument(
        "--out",
        type=Path,
        default=None,
        metavar="FILE.h5",
        help="default: <cache dir>/fashion-mnist.h5 ($HPCNET_DATA)",
    )
    fetch.add_argument(
        "--base-url",
        default=DEFAULT_URL,
        metavar="URL",
        help=f"where the .gz files are (default {DEFAULT_URL})",
    )
    fetch.add_argument("--shards", type=_positive_int, default=1, metavar="K",
                       help="write the train split as K shard files (default 1)")  # fmt: skip
    fetch.set_defaults(func=_fetch)
    return data


def _add_import(sub) -> None:
    from hpcnet.data.sources import FORMATS

    imp = sub.add_parser(
        "import",
        help="import NumPy arrays, an image folder, CIFAR-10/100 or IDX files (streamed)",
        description="Import an image-classification data set into an hpcnet dataset file, "
        "16 MiB of images at a time (memory stays under 300 MiB plus 8 bytes a row).",
    )
    imp.add_argument(
        "source", type=Path, metavar="SOURCE", help="an .npz file, a folder of .npy files, an "
        "image folder (ROOT/CLASS/*.png or ROOT/train|test/CLASS/...), CIFAR files, IDX files",
    )  # fmt: skip
    imp.add_argument("--out", type=Path, required=True, metavar="FILE.h5", help="file to write")
    imp.add_argument(
        "--format", default="auto", choices=("auto", *FORMATS),
        help="what SOURCE is (default auto: from its files)",
    )  # fmt: skip
    imp.add_argument("--shards", type=_positive_int, default=1, metavar="K",
                     help="write the train split as K shard files (default 1)")  # fmt: skip
    imp.add_argument("--test", type=Path, default=None, metavar="SOURCE2",
                     help="the test split from another source (same formats)")  # fmt: skip
    imp.add_argument("--test-fraction", type=float, default=None, metavar="F",
                     help="hold out a stratified, seeded share F of the train rows as the "
                     "test split (a source without a test split of its own)")  # fmt: skip
    imp.add_argument("--size", type=_size, default=None, metavar="H,W",
                     help="resize every image to H x W (Pillow, bilinear)")  # fmt: skip
    imp.add_argument("--channels", type=int, choices=(1, 3), default=None,
                     help="convert to grey (1) or RGB (3); default: the first image's")  # fmt: skip
    imp.add_argument("--class-names", type=_names, default=None, metavar="A,B,...",
                     help="names of classes 0..K-1 (default: the source's, or 0..K-1)")  # fmt: skip
    imp.add_argument("--label", choices=("fine", "coarse"), default="fine",
                     help="CIFAR-100's label set (default fine)")  # fmt: skip
    imp.add_argument("--seed", type=int, default=0, help="the --test-fraction draw (default 0)")
    imp.add_argument("--skip-bad", action="store_true",
                     help="skip and count image files Pillow cannot decode")  # fmt: skip
    imp.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from hpcnet.data.importer import import_data

    rep = import_data(
        args.source,
        args.out,
        fmt=args.format,
        test=args.test,
        test_fraction=args.test_fraction,
        size=args.size,
        channels=args.channels,
        class_names=args.class_names,
        shards=args.shards,
        seed=args.seed,
        label=args.label,
        skip_bad=args.skip_bad,
    )
    c, h, w = rep.image_shape
    n = sum(rep.rows.values())
    print(f"format:  {rep.fmt}")
    print(f"classes: {len(rep.class_names)}: " + ", ".join(rep.class_names))
    print(f"rows:    {rep.rows['train']} train, {rep.rows['test']} test; images (C, H, W) = "
          f"({c}, {h}, {w}) uint8")  # fmt: skip
    for line in rep.skipped:
        print(f"skipped {line}")
    if rep.skipped:
        print(f"skipped: {len(rep.skipped)} file(s) Pillow cannot decode")
    print(f"time:    {rep.seconds:.1f} s, {n / max(rep.seconds, 1e-9):,.0f} images/s")
    _print_written(rep.written)
    return 0


def describe(info: DatasetInfo) -> str:
    """Multi-line, human-readable summary of a :class:`DatasetInfo`."""
    c, h, w = info.image_shape
    lines = [
        f"file:        {info.path}",
        f"train:       {info.n_train} images",
        f"test:        {info.n_test} images",
        f"image shape: (C, H, W) = ({c}, {h}, {w}), uint8",
        f"classes:     {info.num_classes}: " + ", ".join(info.class_names),
        "mean:        " + ", ".join(f"{m:.4f}" for m in info.mean) + "  (raw pixel units)",
        "std:         " + ", ".join(f"{s:.4f}" for s in info.std) + "  (raw pixel units)",
        f"source:      {info.source}",
        f"licence:     {info.licence}",
        f"checksum:    sha256 {info.checksum}",
    ]
    if info.shard_files:
        lines.append(f"shard files: {len(info.shard_files)}")
        lines += [f"  {p}" for p in info.shard_files]
    else:
        lines.append("shard files: none (one file)")
    return "\n".join(lines)


def _import_idx(args: argparse.Namespace) -> int:
    written = import_idx(
        args.dir,
        args.out,
        shards=args.shards,
        class_names=args.class_names,
        source=args.source,
        licence=args.licence,
    )
    _print_written(written)
    return 0


def _info(args: argparse.Namespace) -> int:
    print(describe(open_dataset(args.file)))
    if args.verify:
        verify_checksum(args.file)
        print("checksum:    verified")
    return 0


def _fetch(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else cache_dir() / "fashion-mnist.h5"
    _print_written(fetch_fashion_mnist(out, base_url=args.base_url, shards=args.shards))
    return 0


def _print_written(paths: list[Path]) -> None:
    for path in paths:
        print(f"wrote {path}")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.split(","))
    except ValueError:
        h = w = 0
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"expected H,W (two positive integers), got {text!r}")
    return h, w


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}")
    return names
