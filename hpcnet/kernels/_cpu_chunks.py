"""Data parallelism inside one rank: chunks of a batch on Python threads.

Winograd's 36 small GEMMs per pass run poorly on a multi-threaded BLAS (every GEMM
wakes and joins its threads) and its transformed tiles are several times larger than
the layer's input and output. Splitting the batch into chunks of samples, each thread
running transform, single-threaded GEMMs and inverse transform on its own chunk, keeps
the intermediate matrices in cache and the threads busy without a join per GEMM. The
Numba kernels called here are ``nogil`` and serial; NumPy's matmul releases the GIL.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from threadpoolctl import ThreadpoolController

CHUNK_BYTES = 4 << 20  # target size of a chunk's largest intermediate matrix

_pool: ThreadPoolExecutor | None = None
_pool_threads = 0
_blas = None
_lock = threading.Lock()


class Scratch:
    """One thread's work buffers, by name, reused between its chunks and calls."""

    def __init__(self):
        self._bufs: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        """A float32 buffer of ``shape`` (contents undefined)."""
        size = int(np.prod(shape))
        buf = self._bufs.get(name)
        if buf is None or buf.size < size:
            buf = self._bufs[name] = np.empty(size, np.float32)
        return buf[:size].reshape(shape)


_scratch = threading.local()


def _my_scratch() -> Scratch:
    s = getattr(_scratch, "s", None)
    if s is None:
        s = _scratch.s = Scratch()
    return s


def samples_per_chunk(n: int, bytes_per_sample: int) -> int:
    """Samples per chunk so that an intermediate of ``bytes_per_sample`` per sample
    stays near :data:`CHUNK_BYTES`, and every thread gets at least one chunk."""
    threads = numba.get_num_threads()
    by_size = max(1, CHUNK_BYTES // max(1, bytes_per_sample))
    return max(1, min(by_size, -(-n // threads)))


def _blas_controller():
    global _blas
    if _blas is None:
        _blas = ThreadpoolController().select(user_api="blas")
    return _blas


def run_chunks(n: int, chunk: int, work) -> None:
    """Calls ``work(b0, b1, scratch)`` for the chunks [b0, b1) of ``range(n)``, spread
    over ``numba.get_num_threads()`` threads with the BLAS limited to one thread
    meanwhile (restored after). Chunks are taken in order by whichever thread is free,
    so ``work`` must write only its own chunk's outputs (results that are summed
    over chunks: one slot per chunk, summed in chunk order afterwards, so that the
    bits do not depend on the threads' timing).

    Raises:
        Whatever ``work`` raised (the first), after every thread has stopped.
    """
    global _pool, _pool_threads
    size = numba.get_num_threads()  # the pool's; fewer run when there are fewer chunks
    threads = min(size, -(-n // chunk))
    bounds = [(b0, min(n, b0 + chunk)) for b0 in range(0, n, chunk)]
    if threads <= 1:
        s = _my_scratch()
        for b0, b1 in bounds:
            work(b0, b1, s)
        return
    with _lock:
        if _pool is None or _pool_threads != size:
            if _pool is not None:
                _pool.shutdown()
            _pool = ThreadPoolExecutor(size, thread_name_prefix="hpcnet-chunks")
            _pool_threads = size
    todo = iter(bounds)
    take = threading.Lock()

    def drain() -> None:
        s = _my_scratch()
        while True:
            with take:
                nxt = next(todo, None)
            if nxt is None:
                return
            work(nxt[0], nxt[1], s)

    blas = _blas_controller()
    with blas.limit(limits=1):
        futures = [_pool.submit(drain) for _ in range(threads)]
        errors = [f.exception() for f in futures]  # waits for every thread
    for e in errors:
        if e is not None:
            raise e
