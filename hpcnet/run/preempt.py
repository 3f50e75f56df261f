"""Preemption: SIGTERM or SIGUSR1 (what Slurm sends at the time limit with
``--signal=USR1@120``, or on preemption) asks the run to stop cleanly.

The handler only notes the signal; the training loop asks, once per step, whether
any rank got one (one small allreduce: :meth:`hpcnet.algos.lifecycle.TrainingRun.step_end`),
so every rank stops at the same step boundary, writes a checkpoint, and the job
exits with status ``128 + signal`` (143 for SIGTERM, 138 for SIGUSR1): "checkpointed,
resume me with ``--resume OUT``".
"""

from __future__ import annotations

import signal
import threading
import time

SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
# not a signal: the code of a stop the program asked for itself (a search's early
# stopping, :meth:`PreemptionWatch.request_stop`); every rank agrees on it like a signal
STOP_REQUESTED = 100
# not a signal either: the run passed the time limit it was given (a search trial's
# --trial-timeout, :class:`PreemptionWatch` ``time_limit``); agreed like a signal
TIME_LIMIT = 101
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

    @property
    def signum(self) -> int:
        """The first signal seen (or :data:`STOP_REQUESTED`), else :data:`TIME_LIMIT`
        once the time limit has passed, else 0."""
        if not self._signum and self._until is not None and time.monotonic() >= self._until:
            self._signum = TIME_LIMIT
        return self._signum

    def _note(self, signum, frame) -> None:
        if not self._signum:
            self._signum = signum

    def request_stop(self) -> None:
        """Asks the run to stop as a signal would (:data:`STOP_REQUESTED`): every rank
        stops at the same step boundary, checkpointed, and raises :class:`Preempted`."""
        self._note(STOP_REQUESTED, None)

    def close(self) -> None:
        """Puts the previous handlers back, and hands a signal seen to the previous
        handler when that is a Python function (an enclosing watch: a search whose
        trial this run is), so a signal that came as the run ended is not lost."""
        for s, old in self._old.items():
            signal.signal(s, old)
        if self._signum in self._old and callable(self._old[self._signum]):
            self._old[self._signum](self._signum, None)
        self._old.clear()
