"""What every reader of :mod:`hpcnet.data.sources` returns: a :class:`Source` of
:class:`Part` s."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Part:
    """One split of a source.

    Attributes:
        labels: (n,) int64.
        read: ``read(rows, chunk_rows)`` yields, for the sorted row indices ``rows``, in
            order, chunks of at most ``chunk_rows`` images: a uint8 array (k, C, H, W)
            or a list of k images (``PIL.Image`` or (C, H, W) uint8 arrays).
        name: ``name(i)``, row ``i`` for an error message (a file, an array row).
    """

    labels: np.ndarray
    read: Callable[[np.ndarray, int], Iterator]
    name: Callable[[int], str]


@dataclass
class Source:
    """What a reader found: ``parts["train"]`` (always), ``parts["test"]`` (when the
    source has its own test split), the class names, and a description."""

    kind: str
    path: Path
    parts: dict[str, Part]
    class_names: list[str] = field(default_factory=list)
    licence: str = "unknown (the user's data)"


def chunked(rows: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """``rows`` in consecutive pieces of at most ``chunk``."""
    for lo in range(0, len(rows), chunk):
        yield rows[lo : lo + chunk]
