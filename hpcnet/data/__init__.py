"""Data sets: the HDF5 dataset format, IDX import, download, per-replica loading.

- :mod:`~hpcnet.data.format`: write, validate and read dataset files (sharded or not).
- :mod:`~hpcnet.data.idx`: import gzip IDX files (MNIST, Fashion-MNIST).
- :mod:`~hpcnet.data.fetch`: download Fashion-MNIST and check its MD5 sums.
- :mod:`~hpcnet.data.registry`: names (``digits``, ``fashion-mnist``) -> files.
- :mod:`~hpcnet.data.loader`: each replica's row block, shuffled prefetched batches.
- :mod:`~hpcnet.data.cli`: the ``python -m hpcnet data ...`` subcommands.
"""

from hpcnet.data.format import DatasetInfo, open_dataset, read_rows, write_dataset
from hpcnet.data.loader import BatchLoader, assign_rows, eval_batches, normalize
from hpcnet.data.registry import KNOWN, cache_dir, digits_path, resolve_data

__all__ = [
    "KNOWN",
    "BatchLoader",
    "DatasetInfo",
    "assign_rows",
    "cache_dir",
    "digits_path",
    "eval_batches",
    "normalize",
    "open_dataset",
    "read_rows",
    "resolve_data",
    "write_dataset",
]
