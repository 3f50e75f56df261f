"""Preemption: SIGTERM or SIGUSR1 (what Slurm sends at the time limit with
``--signal=USR1@120``, or on preemption), or SIGINT (Ctrl-C; ``mpiexec`` forwards it to
every rank) asks the run to stop cleanly.

The handler only notes the signal; the training loop asks, once per step, whether
any rank got one (one small allreduce: :meth:`hpcnet.algos.lifecycle.TrainingRun.step_end`),
so every rank stops at the same step boundary, writes a checkpoint, and the job
exits with status ``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1, 130 for SIGINT):
"checkpointed, resume me with ``--resume OUT``". A second SIGINT (Ctrl-C again) aborts
at once, without a checkpoint: one line from rank 0, exit status 130 (``mpiexec`` itself
ends the other ranks on a second Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
# not a signal: the code of a stop the program asked for itself (a search's early
# stopping, :meth:`PreemptionWatch.request_stop`); every rank agrees on it like a signal
STOP_REQUESTED = 100
# not a signal either: the run passed the time limit it was given (a search trial's
# --trial-timeout, :class:`PreemptionWatch` ``time_limit``); agreed like a signal
TIME_LIMIT = 101
# a SIGINT this soon after the first is the same Ctrl-C delivered twice (by the terminal
# to every process and again by mpiexec to its ranks), not a second one (seconds)
DUPLICATE_S = 0.5
_NAMES = {STOP_REQUESTED: "a stop request", TIME_LIMIT: "its time limit"}


class Preempted(Exception):
    """Raised on every rank when the run stopped for a signal, after its checkpoint.

    Attributes:
        signum: the signal; ``exit_code`` is ``128 + signum``.
        step: the step the run stopped after.
        checkpoint: where the checkpoint is.
    """

    def __init__(self, signum: int, step: int, checkpoint: str):
        self.signum, self.step, self.checkpoint = signum, step, checkpoint
        self.exit_code = 128 + signum
        name = _NAMES.get(signum) or signal.Signals(signum).name
        super().__init__(
            f"stopped by {name} after step {step}; checkpoint in {checkpoint}; "
            f"continue with --resume {checkpoint.rsplit('/', 1)[0]} (exit status {self.exit_code})"
        )


class PreemptionWatch:
    """Notes SIGTERM/SIGUSR1 while installed (main thread only; elsewhere it watches
    nothing). ``signum`` is the first signal seen, 0 for none.

    Watches nest: ``python -m hpcnet train`` and ``search`` install one for the whole
    command (so a signal during setup or after the run's end never kills a rank in the
    middle of MPI), a search one for its loop, each run one for its training. A watch
    starts with the signal an enclosing one has seen, and hands the signal it saw to
    the enclosing one when it closes.

    Args:
        time_limit: seconds from now after which the run stops as for a signal
            (:data:`TIME_LIMIT`; checked wherever ``signum`` is read, i.e. at every
            step boundary); None: no limit.
    """

    def __init__(self, time_limit: float | None = None):
        self._signum = 0
        self._first_int = 0.0  # when the first SIGINT came (time.monotonic)
        self._until = None if not time_limit else time.monotonic() + float(time_limit)
        self._old: dict[int, object] = {}
        if threading.current_thread() is threading.main_thread():
            for s in SIGNALS:
                self._old[s] = signal.signal(s, self._note)
                outer = getattr(self._old[s], "__self__", None)
                if isinstance(outer, PreemptionWatch) and outer.signum in SIGNALS:
                    # asked to stop before this watch began (a run's setup, a search
                    # between trials): the run stops at its first step boundary
                    self._signum = self._signum or outer.signum
                    self._first_int = outer._first_int

    @property
    def signum(self) -> int:
        """The first signal seen (or :data:`STOP_REQUESTED`), else :data:`TIME_LIMIT`
        once the time limit has passed, else 0."""
        if not self._signum and self._until is not None and time.monotonic() >= self._until:
            self._signum = TIME_LIMIT
        return self._signum

    def _note(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            now = time.monotonic()
            if self._signum == signal.SIGINT and now - self._first_int >= DUPLICATE_S:
                # Ctrl-C again (not the same one delivered twice): the user wants out now
                _say("interrupted again (Ctrl-C): aborting without a checkpoint")
                sys.stderr.flush()
                os._exit(128 + signal.SIGINT)
            if not self._signum:
                self._first_int = now
                _say(
                    "interrupted (Ctrl-C): every rank stops at its next step boundary with a "
                    "checkpoint; Ctrl-C again aborts without one"
                )
        if not self._signum:
            self._signum = signum

    def request_stop(self) -> None:
        """Asks the run to stop as a signal would (:data:`STOP_REQUESTED`): every rank
        stops at the same step boundary, checkpointed, and raises :class:`Preempted`."""
        self._note(STOP_REQUESTED, None)

    def close(self) -> None:
        """Puts the previous handlers back, and hands a signal seen to the previous
        handler when that is an enclosing watch (the command's, a search whose trial
        this run is), so a signal that came as the run ended is not lost."""
        for s, old in self._old.items():
            signal.signal(s, old)
        outer = getattr(self._old.get(self._signum), "__self__", None)
        if isinstance(outer, PreemptionWatch):  # noted there, as if it had come there
            if not outer._signum:
                outer._signum, outer._first_int = self._signum, self._first_int
        self._old.clear()


def _say(line: str) -> None:
    """``line`` on stderr from world rank 0 only (every rank gets the SIGINT)."""
    rank = os.environ.get("PMI_RANK") or os.environ.get("OMPI_COMM_WORLD_RANK") or "0"
    if rank == "0":
        sys.stderr.write(f"hpcnet: {line}\n")
