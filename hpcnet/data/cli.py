"""The ``data`` subcommand: ``import-idx``, ``info``, ``fetch``.

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
        "data", help="import, inspect and download data sets", description=__doc__
    )
    sub = data.add_subparsers(dest="data_command", metavar="COMMAND", required=True)

    imp = sub.add_parser("import-idx", help="convert gzip IDX files (MNIST format) to HDF5")
    imp.add_argument("dir", type=Path, help="folder with train-*/t10k-* *-ubyte.gz files")
    imp.add_argument("--out", type=Path, required=True, metavar="FILE.h5")
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
    info.add_argument("file", type=Path, metavar="FILE.h5")
    info.add_argument(
        "--verify", action="store_true", help="also recompute the checksum (reads every image)"
    )
    info.set_defaults(func=_info)

    fetch = sub.add_parser("fetch", help="download a data set and convert it")
    fetch.add_argument("name", choices=["fashion-mnist"])
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
    fetch.add_argument("--shards", type=_positive_int, default=1, metavar="K")
    fetch.set_defaults(func=_fetch)
    return data


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


def _names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"empty class name in {text!r}")
    return names
