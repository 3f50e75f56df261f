"""hpcnet's exception types.

Every error a user can cause (a bad flag, config file, layout or data file) is
an :class:`HpcnetError`. The CLI turns it into one line on stderr and exit
status 2 on every rank; anything else is a bug and aborts the MPI job.
"""

from __future__ import annotations


class HpcnetError(Exception):
    """Base class of the errors a user can cause; exit status 2."""

    exit_code = 2


class ConfigError(HpcnetError):
    """A bad command-line flag, TOML config file or config value."""


class LayoutError(HpcnetError):
    """The world size does not fit the requested roles (replicas, shards, ...)."""


class DataError(HpcnetError):
    """A missing, unreadable or malformed data file (HDF5 or IDX)."""


class BackendError(HpcnetError):
    """The requested compute backend cannot run here (e.g. ``cuda`` without a GPU)."""


class CheckpointError(HpcnetError):
    """A missing, corrupt, truncated or incompatible checkpoint file."""
