"""Layer compute behind one API, chosen once per run.

``get_backend(name)`` returns a :class:`Backend` whose attributes are the op
functions (``conv2d_forward``, ``maxpool2d_backward``, ...) of one
implementation: ``reference`` (NumPy, the test oracle), ``cpu`` (NumPy BLAS +
Numba) or ``cuda`` (Numba ``@cuda.jit`` kernels, from the ``numba-cuda``
package: ``pip install 'hpcnet[cuda]'``). There is no silent fallback: asking
for a backend that cannot run here raises :class:`hpcnet.errors.BackendError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

from hpcnet.errors import BackendError

OPS = (
    "conv2d_forward",
    "conv2d_backward",
    "conv2d_release",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "lrn_forward",
    "lrn_backward",
    "relu_forward",
    "relu_backward",
    "activation_forward",
    "activation_backward",
    "avgpool2d_forward",
    "avgpool2d_backward",
    "global_avgpool2d_forward",
    "global_avgpool2d_backward",
    "batchnorm2d_forward",
    "batchnorm2d_infer",
    "batchnorm2d_backward",
    "dropout_forward",
    "dropout_backward",
    "concat_forward",
    "concat_backward",
    "add",
    "dense_forward",
    "dense_backward",
    "softmax_xent",
)
BACKENDS = ("auto", "cpu", "cuda", "reference")


# Environment defaults for the BLAS under NumPy, read once when NumPy loads it.
# OpenBLAS's idle threads spin (with sched_yield) for 2**28 cycles, ~0.1 s, after each
# GEMM, on the cores that Numba's parallel loops (im2col, pooling, LRN, ...) want next;
# 2**4 cycles lets them sleep at once. Measured on 2 cores, 2 threads, batch 64, a
# quiet machine: alexnet 354 -> 474 samples/s, 2conv 609 -> 676.
BLAS_ENV_DEFAULTS = {"OPENBLAS_THREAD_TIMEOUT": "4"}


def set_blas_env_defaults() -> bool:
    """Sets :data:`BLAS_ENV_DEFAULTS` in ``os.environ`` where the user has not, if NumPy
    is not loaded yet (afterwards they would have no effect). Call it first thing in an
    entry point (``python -m hpcnet`` does).

    Returns:
        True if it was in time (NumPy not imported), else False.
    """
    if "numpy" in sys.modules:
        return False
    for key, value in BLAS_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)
    return True


class Backend:
    """The op functions of one implementation, as attributes; ``name`` says which."""

    def __init__(self, name: str, module: ModuleType):
        self.name = name
        for op in OPS:
            setattr(self, op, getattr(module, op))

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def cuda_simulator() -> bool:
    """True when Numba's CUDA simulator is switched on (``NUMBA_ENABLE_CUDASIM=1``)."""
    try:
        import numba

        return bool(numba.config.ENABLE_CUDASIM)
    except Exception:
        return False


def cuda_available() -> bool:
    """True when Numba finds a real CUDA GPU (never raises; the simulator does not count)."""
    if cuda_simulator():
        return False
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def _numba_cuda_installed() -> bool:
    return importlib.util.find_spec("numba_cuda") is not None


def get_backend(name: str = "auto", *, allow_simulator: bool = False) -> Backend:
    """Returns the backend called ``name``: ``auto``, ``cpu``, ``cuda`` or ``reference``.

    ``auto`` is ``cuda`` where a CUDA GPU is found, else ``cpu``.

    Args:
        name: the backend (``--backend``).
        allow_simulator: let ``cuda`` run on Numba's CUDA simulator when
            ``NUMBA_ENABLE_CUDASIM=1`` (tests only: it is a thousand times slower).
    Raises:
        BackendError: unknown name, or ``cuda`` where it cannot run.
    """
    if name not in BACKENDS:
        raise BackendError(
            f"--backend {name!r}: unknown backend; choose one of {', '.join(BACKENDS)}"
        )
    if name == "auto":
        name = "cuda" if cuda_available() and _numba_cuda_installed() else "cpu"
    if name == "cuda":
        if not _numba_cuda_installed():
            why = "the numba-cuda package is not installed (pip install 'hpcnet[cuda]')"
        elif cuda_simulator() and not allow_simulator:
            why = "NUMBA_ENABLE_CUDASIM=1 selects Numba's CUDA simulator, not a GPU"
        elif not cuda_simulator() and not cuda_available():
            why = "no CUDA GPU found by numba.cuda.is_available()"
        else:
            why = ""
        if why:
            raise BackendError(f"--backend cuda: {why}; use --backend cpu")
    return Backend(name, importlib.import_module(f"hpcnet.kernels.{name}"))


def set_threads(threads: int, node_ranks: int = 1) -> int:
    """Sets this rank's compute threads; see :func:`hpcnet.kernels.threads.set_threads`."""
    from hpcnet.kernels.threads import set_threads as _set

    return _set(threads, node_ranks)
