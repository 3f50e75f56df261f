"""Compute threads of one rank: Numba's parallel loops and the BLAS under NumPy."""

from __future__ import annotations

import os

import numba
from threadpoolctl import threadpool_limits


def set_threads(threads: int, node_ranks: int = 1) -> int:
    """Sets the compute threads of this rank (Numba parallel loops and BLAS); returns them.

    Args:
        threads: threads wanted; 0 means this node's cores divided by ``node_ranks``
            (at least 1).
        node_ranks: the ranks sharing this node (``hpcnet.comm.ranks_on_node``; 1 for a
            single process).
    """
    import hpcnet.kernels.cpu  # noqa: F401  (picks Numba's threading layer before it starts)

    if threads == 0:
        threads = max(1, (os.cpu_count() or 1) // max(1, node_ranks))
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(limits=threads)
    return threads
