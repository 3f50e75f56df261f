"""A search stopped by SIGUSR1 or SIGTERM (Slurm's ``--signal=USR1@120`` before the
time limit, or a preemption) keeps its work and goes on when started again.

What happens (every rank of the search gets the signal, as Slurm sends it to every
task of the job step; a signal to some ranks only reaches the others too):

- A running trial stops as any hpcnet run does (:mod:`hpcnet.run.preempt`): every rank
  of its group at the same step boundary, with a checkpoint in ``trials/NNNN/``. The
  trial is not recorded: ``--resume`` continues it from that checkpoint
  (``train --resume``), so its steps are not computed again. A trial of a
  ``train_fn`` (no checkpoints) runs again from its start.
- A group between trials agrees on the signal (:func:`group_signal`), tells the
  scheduler and leaves; the scheduler answers every other group's next question with
  the same stop, so the groups that did not get the signal finish their trial first.
- The scheduler has written ``trials.jsonl`` and ``state.json`` after every finished
  trial; every rank raises :class:`SearchPreempted` (exit status 128 + signal: 138 for
  SIGUSR1, 143 for SIGTERM), and ``search ... --resume`` continues the search
  (``jobs/hpcnet-job.sh`` requeues the job and adds ``--resume``).
"""

from __future__ import annotations

import signal
from pathlib import Path

import h5py
import numpy as np
from mpi4py import MPI

from hpcnet.comm import allreduce_sum
from hpcnet.run.preempt import SIGNALS, Preempted

CHECKPOINT = "checkpoint.h5"


class SearchPreempted(Preempted):
    """Raised on every rank of a search that stopped for a signal, after its state and
    the running trials' checkpoints were written.

    Attributes:
        signum: the signal; ``exit_code`` is ``128 + signum``.
        finished: trials finished (recorded in ``trials.jsonl``) so far, this run and before.
        out: the search directory.
    """

    def __init__(self, signum: int, out: Path, finished: int):
        self.signum, self.step, self.checkpoint = signum, finished, str(out)
        self.exit_code = 128 + signum
        self.finished, self.out = finished, out
        Exception.__init__(
            self,
            f"search stopped by {signal.Signals(signum).name}: {finished} trial(s) finished, "
            f"running trials checkpointed in {out}/trials; continue with the same command "
            f"and --resume (exit status {self.exit_code})",
        )


def group_signal(signum: int, group: MPI.Intracomm) -> int:
    """The signal any rank of ``group`` noted (``signum``: this rank's, 0 for none):
    SIGTERM before SIGUSR1; 0 if none. Collective over ``group``."""
    seen = allreduce_sum(
        np.array([signum == s for s in SIGNALS], np.float64), group, "the search's signal check"
    )
    return next((int(s) for s, n in zip(SIGNALS, seen, strict=True) if n > 0), 0)


def resumable_trial(trial_dir: Path) -> bool:
    """True when ``trial_dir`` holds a checkpoint that a stopped trial left, intact and
    not its final one (``train --resume`` continues it). A trial that finished but was
    not recorded (the scheduler's rank died first), or whose checkpoint cannot be read,
    runs again from its start."""
    path = trial_dir / CHECKPOINT
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            return not bool(f.attrs["final"])
    except (OSError, KeyError):
        return False
