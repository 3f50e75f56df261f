"""A run's checkpoints and stop signals: when one is due, agreed by every rank; writing
and reading OUT/checkpoint.h5 (:mod:`hpcnet.run.checkpoint`). One concern of
:class:`hpcnet.algos.lifecycle.TrainingRun`, which mixes it in; it uses the run's ``comm``,
``rank``, ``cfg``, ``prep``, ``preempt``, ``layout`` and ``algo``."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from hpcnet.comm import allreduce_max_ints, gather_objects
from hpcnet.run.checkpoint import read_rank_state, write_checkpoint


class Checkpoints:
    """Checkpoints and signals of a :class:`~hpcnet.algos.lifecycle.TrainingRun`."""

    def step_end(self, step: int) -> tuple[bool, int]:
        """What every rank does after ``step``, agreed: whether it writes a checkpoint
        (every ``--checkpoint-every`` steps, or once ``--checkpoint-every-s`` seconds of
        rank 0's clock have passed since the last one) and the signal any rank got
        (SIGTERM, SIGUSR1; 0: none), after which every rank stops at this step.

        Collective over ``comm`` (one allreduce of two integers): every rank calls it
        once per step, or it hangs.
        """
        by_time = self.rank == 0 and self.due_by_time()
        signum = self.preempt.signum if self.preempt else 0
        signum, by_time = allreduce_max_ints(
            [signum, int(by_time)], self.comm, "step-end allreduce (checkpoint due, stop signal)"
        )
        return self._due_by_steps(step) or bool(by_time), signum

    def _due_by_steps(self, step: int) -> bool:
        every = self.cfg.run.checkpoint_every
        return every > 0 and step % every == 0

    def due_by_time(self) -> bool:
        """Whether ``--checkpoint-every-s`` seconds of this rank's clock have passed since
        the last checkpoint it wrote (or the start)."""
        every_s = self.cfg.run.checkpoint_every_s
        return every_s > 0 and time.monotonic() - self._last_checkpoint >= every_s

    def forward_signal(self) -> None:
        """A rank other than 0: sends the SIGTERM/SIGUSR1 it got (once) to rank 0, whose
        program stops the run (Sandblaster's coordinator). Never waits: one 8-byte send."""
        signum = self.preempt.signum if self.preempt else 0
        if signum and not self._forwarded and self.rank != 0:
            self._forwarded = signum
            self._signals.send([signum], 0)

    def signal_heard(self) -> int:
        """Rank 0: its own SIGTERM/SIGUSR1, or one another rank forwarded (0: none).
        Never waits."""
        while (got := self._signals.poll()) is not None:
            self._heard = self._heard or int(got[1][0])
        return (self.preempt.signum if self.preempt else 0) or self._heard

    def checkpoint_due(self, step: int) -> bool:
        """Whether a checkpoint is due after ``step`` by this rank's own count and clock
        (``--checkpoint-every``, ``--checkpoint-every-s``): for an algorithm one rank
        drives (Sandblaster's coordinator); :meth:`step_end` agrees it over all ranks."""
        return self._due_by_steps(step) or self.due_by_time()

    def resume_state(self) -> tuple[dict[str, np.ndarray], dict[str, Any]] | None:
        """This rank's arrays and state from the checkpoint the run resumes from (None:
        a fresh run). Reads the file itself (a file system every rank sees)."""
        if self.prep.resume is None:
            return None
        return read_rank_state(self.prep.resume["path"], self.rank)

    def save_checkpoint(
        self, step: int, epoch: int, arrays: dict[str, np.ndarray], state: dict[str, Any]
    ) -> None:
        """Writes OUT/checkpoint.h5 with every rank's ``arrays`` (rank 0's must hold
        ``params``) and JSON-able ``state``. Collective over ``comm``: every rank calls
        it at the same step, or the gather hangs."""
        gathered = gather_objects((arrays, state), self.comm, what="gather of the checkpoint")
        if self.rank == 0:
            self.write_checkpoint(step, epoch, arrays["params"], gathered)
        self._last_checkpoint = time.monotonic()

    def write_checkpoint(
        self,
        step: int,
        epoch: float,
        params: np.ndarray,
        ranks: list[tuple[dict[str, np.ndarray], dict[str, Any]]],
    ) -> None:
        """Rank 0 alone writes OUT/checkpoint.h5 at ``step``: ``params`` ((n_params,)
        float32) and per world rank its (arrays, JSON-able state), which it collected
        itself (an asynchronous algorithm: :mod:`hpcnet.ps.checkpoint`)."""
        write_checkpoint(
            self.prep.out,
            params,
            ranks,
            self._checkpoint_attrs(step, epoch, final=False),
            self.cfg.run.keep_checkpoints,
        )
        self._last_checkpoint = time.monotonic()

    def _checkpoint_attrs(self, step: int, epoch: float, final: bool) -> dict[str, Any]:
        return {
            "step": int(step),
            "epoch": float(epoch),
            "final": bool(final),
            "algo": self.algo.name,
            "world_size": self.comm.Get_size(),
            "layout": self.layout.to_dict(),
            "config": self.cfg.to_toml(),
        }
