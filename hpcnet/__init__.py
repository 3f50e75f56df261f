"""hpcnet: DistBelief-style distributed neural-network training as one MPI program.

See docs/design.md for the architecture: ranks take roles (replicas, parameter
shards, a coordinator), all parameters live in one flat float32 vector, and the
training data lives in sharded HDF5 files. From Python: :func:`hpcnet.train`
(:mod:`hpcnet.api`), on every rank of a script under ``mpiexec``.
"""

from hpcnet._version import __version__

__all__ = ["__version__", "train"]


def __getattr__(name: str):
    """``hpcnet.train`` loads the training code (MPI, Numba) only when first used."""
    if name == "train":
        from hpcnet.api import train

        return train
    raise AttributeError(f"module 'hpcnet' has no attribute {name!r}")
