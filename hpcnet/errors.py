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


class ResultsError(HpcnetError):
    """A run's output directory (``OUT``) that is missing, or whose results files
    (``metrics.jsonl``, ``summary.json``) are missing or unreadable."""


class MissingExtra(HpcnetError):
    """An optional dependency is not installed (e.g. matplotlib, the ``plot`` extra,
    for ``python -m hpcnet plot``; PyTorch for ``export --format torch``)."""


class AlreadyFinished(HpcnetError):
    """``--resume OUT`` of a run that finished (its newest checkpoint is the final one):
    nothing to do, exit status 0, so a requeued job that had finished ends quietly."""

    exit_code = 0


class RankLost(HpcnetError):
    """A rank the run cannot go on without died (under fault tolerance,
    :mod:`hpcnet.comm.ft`): e.g. a Sandblaster coordinator. Raised on every surviving
    rank alike, after they agreed who is alive; the message says what to resume from.
    Exit status 3."""

    exit_code = 3
    collective = True

    def __init__(self, message: str, printer: int = 0):
        super().__init__(message)
        self.printer = printer  # the (live) world rank that prints the message


EXIT_STALLED = 124  # a wait for another rank passed its deadline (as GNU timeout's status)


class StallError(TimeoutError):
    """A wait for another rank passed its deadline (``--timeout``): the message names the
    operation, the communicator and the ranks waited for with their last heartbeats
    (:mod:`hpcnet.comm.watchdog`). Not a user error: the job aborts with exit status
    :data:`EXIT_STALLED`."""

    exit_code = EXIT_STALLED


def did_you_mean(word: str, known) -> str:
    """``" (did you mean X?)"`` for the known word closest to ``word`` (the standard
    library's difflib, ratio >= 0.6), else ``""``: the end of an "unknown" error."""
    import difflib

    close = difflib.get_close_matches(word, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
