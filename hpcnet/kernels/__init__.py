"""Layer compute behind one API, chosen once per run.

``get_backend(name)`` returns a :class:`Backend` whose attributes are the op
functions (``conv2d_forward``, ``maxpool2d_backward``, ...) of one
implementation: ``reference`` (NumPy, the test oracle) or ``cpu`` (NumPy BLAS +
Numba). There is no silent fallback: asking for a backend that cannot run here
raises :class:`hpcnet.errors.BackendError`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from hpcnet.errors import BackendError

OPS = (
    "conv2d_forward",
    "conv2d_backward",
    "maxpool2d_forward",
    "maxpool2d_backward",
    "relu_forward",
    "relu_backward",
    "dense_forward",
    "dense_backward",
    "softmax_xent",
)
BACKENDS = ("auto", "cpu", "cuda", "reference")


class Backend:
    """The op functions of one implementation, as attributes; ``name`` says which."""

    def __init__(self, name: str, module: ModuleType):
        self.name = name
        for op in OPS:
            setattr(self, op, getattr(module, op))

    def __repr__(self) -> str:
        return f"Backend({self.name!r})"


def cuda_available() -> bool:
    """True when Numba finds a usable CUDA GPU (never raises)."""
    try:
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:
        return False


def get_backend(name: str = "auto") -> Backend:
    """Returns the backend called ``name``: ``auto``, ``cpu``, ``cuda`` or ``reference``.

    ``auto`` is ``cpu`` until the CUDA kernels land (issue "kernels").

    Raises:
        BackendError: unknown name, or ``cuda`` where it cannot run.
    """
    if name not in BACKENDS:
        raise BackendError(
            f"--backend {name!r}: unknown backend; choose one of {', '.join(BACKENDS)}"
        )
    if name == "cuda":
        why = (
            "no CUDA GPU found by numba.cuda.is_available()"
            if not cuda_available()
            else ("hpcnet's CUDA kernels are not built yet")
        )
        raise BackendError(f"--backend cuda: {why}; use --backend cpu")
    module = "reference" if name == "reference" else "cpu"
    return Backend(
        "reference" if name == "reference" else "cpu",
        importlib.import_module(f"hpcnet.kernels.{module}"),
    )
