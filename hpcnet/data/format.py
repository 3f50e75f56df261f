"""The hpcnet dataset format: one HDF5 file, optionally with the train split in shard files.

A dataset file holds::

    train/images  (N, C, H, W) uint8      raw pixels
    train/labels  (N,)         int64      class index in [0, num_classes)
    test/images   (M, C, H, W) uint8
    test/labels   (M,)         int64

and root attributes ``hpcnet_format`` (= :data:`FORMAT_VERSION`), ``class_names``
(str array), ``num_classes`` (int), ``mean`` and ``std`` ((C,) float64, per channel,
in raw pixel units of the train split, so a model input is ``(img - mean[c]) / std[c]``),
``source``, ``licence`` and ``checksum`` (sha256 hex of the bytes of train images, train
labels (int64 little-endian), test images, test labels, in that order).

With ``shards=K > 1`` the train split lives in K shard files beside the main file
(``<stem>.train-00000-of-0000K.h5``, contiguous balanced row ranges) and the main
file's ``train/images`` and ``train/labels`` are HDF5 virtual datasets over them, with
relative source paths. h5py and ``h5dump`` see one dataset; reading a row range opens
only the shard files that cover it. HDF5 silently reads a *missing* source file as
zeros, so the reader checks that the covering shard files exist before every read.

data/README.md documents the same layout for people writing it with other tools.

This module is the API; the code lives in private siblings: ``_format_layout``
(version, split names, required attributes, shard paths and row ranges),
``_format_write`` (:func:`write_dataset`) and ``_format_read`` (:func:`open_dataset`,
:func:`read_rows`, ...).
"""

from hpcnet.data._format_layout import (
    FORMAT_VERSION,
    REQUIRED_ATTRS,
    SPLITS,
    row_range,
    shard_path,
)
from hpcnet.data._format_read import (
    DatasetInfo,
    open_dataset,
    read_labels,
    read_rows,
    split_size,
    verify_checksum,
)
from hpcnet.data._format_write import CHUNK_BYTES, channel_stats, write_dataset

__all__ = [
    "CHUNK_BYTES",
    "FORMAT_VERSION",
    "REQUIRED_ATTRS",
    "SPLITS",
    "DatasetInfo",
    "channel_stats",
    "open_dataset",
    "read_labels",
    "read_rows",
    "row_range",
    "shard_path",
    "split_size",
    "verify_checksum",
    "write_dataset",
]
