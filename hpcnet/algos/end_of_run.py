"""The end of a run: every rank meets (surviving ranks that died under fault
tolerance), and the final parameters are evaluated on the test split. One concern of
:class:`hpcnet.algos.lifecycle.TrainingRun`, which mixes it in; it uses the run's ``comm``,
``layout``, ``algo``, ``deadlines``, ``role``, ``info``, ``net`` and ``backend``."""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from hpcnet.comm import allreduce_sum, barrier_polling, ft
from hpcnet.data.loader import eval_batches
from hpcnet.errors import RankLost
from hpcnet.run.phases import phase


class EndOfRun:
    """The end of a :class:`~hpcnet.algos.lifecycle.TrainingRun`."""

    def meet_at_end(self) -> None:
        """Every rank meets at the end of training: a barrier that sleeps while it waits,
        with a deadline, running ``on_end_poll`` between tests and once after.

        Under fault tolerance (:mod:`hpcnet.comm.ft`: Open MPI, ``mpiexec --with-ft
        ulfm``) the live ranks then agree who is left (``MPI_Comm_ishrink``); when a
        rank died, the run ends over the survivors: ``comm`` becomes their
        communicator, ``lost`` the starting ranks that died, ``live`` the others.

        Raises:
            RankLost: a rank died whose role the algorithm cannot go on without.
            StallError: the others did not arrive within the deadline.
        """
        what = f"{self.algo.name} end of run"
        failed = False
        try:
            barrier_polling(self.comm, self.deadlines.end_barrier, what, on_poll=self.on_end_poll)
        except MPI.Exception as e:  # a rank died (the barrier cannot complete without it)
            if not (ft.enabled() and ft.is_failure(e)):
                raise
            failed = True
        if ft.enabled():
            alive = ft.shrink(self.comm, self.deadlines.end_barrier, what + ": live ranks")
            lost = ft.lost_between(self.comm, alive)
            if lost:
                self._go_on_without(lost, alive)
            else:
                alive.Free()
                assert not failed, "the end barrier failed, yet every rank is alive"
        if self.on_end_poll is not None:
            self.on_end_poll()

    def _go_on_without(self, lost: list[int], alive: MPI.Intracomm) -> None:
        roles = {r: self.layout.role(r) for r in lost}
        named = ", ".join(f"rank {r} ({roles[r]})" for r in lost)
        cannot = [r for r in lost if roles[r].kind != "replica" or not self.algo.survives]
        if cannot:
            raise RankLost(
                f"{named} died; {self.algo.name} cannot go on without "
                f"{', '.join(str(roles[r]) for r in cannot)}"
                + (
                    f": resume from the newest checkpoint with --resume {self.prep.out}"
                    if self.algo.resumable
                    else ""
                )
            )
        left = [r for r in self.live if r not in lost and self.layout.role(r).kind == "replica"]
        if not left and self.layout.replicas:  # the last replica died: nothing trains
            path = self.prep.out / "checkpoint.h5"
            raise RankLost(
                f"{named} died and no replica is left; resume from the newest checkpoint "
                f"({path}{' written now' if self.algo.name == 'downpour' else ''}) with "
                f"--resume {self.prep.out}"
            )
        self.lost = lost
        self.lost_report += [{"rank": r, "role": str(roles[r])} for r in lost]
        self.live = [r for r in self.live if r not in lost]
        self.comm = alive
        self.rank = alive.Get_rank()
        self.say(f"{self.algo.name}: {named} died; the run ends on the {len(self.live)} others")

    def live_replicas(self) -> list[int]:
        """The indices of the replicas alive at the end of the run, every partition of
        them (all, unless ranks died under fault tolerance)."""
        live = set(self.live)
        return [
            i for i in range(self.layout.replicas) if live.issuperset(self.layout.replica_ranks(i))
        ]

    def evaluate(self, split: str = "test") -> tuple[float, float]:
        """Loss (mean, nats) and accuracy of the current parameters over the whole
        ``test`` split, or over the ``val`` rows (``--val-fraction``) of the train
        split: each replica (each of its partitions) evaluates its own slice of rows,
        ranks of other roles contribute nothing. Collective over ``comm``.

        A model with buffers (BatchNorm2D's running statistics, each replica its own)
        is evaluated with their average over the replicas; each replica keeps its own
        afterwards, and the average stays in ``averaged_buffers`` (the final
        checkpoint's)."""
        own = self._average_buffers()
        try:
            with phase(f"evaluating the {split} split", self.rank == 0 and self.verbose):
                return self._evaluate(split)
        finally:
            if own is not None:
                self.model.buffers[:] = own

    def _average_buffers(self) -> np.ndarray | None:
        """Sets the model's buffers to their mean over the replicas (each entry over the
        replicas' partitions that compute its layer); returns this rank's own. None
        (and no communication) for a model without buffers. Collective over ``comm``."""
        model = self.model
        if not model.buffers.size:
            return None
        mask = np.zeros(model.buffers.size)
        if self.role.kind == "replica" and self.role.index in self.live_replicas():
            mask[:] = 1.0 if self.part is None else self.part.buffer_mask()
        both = np.concatenate([model.buffers * mask, mask])
        tot = allreduce_sum(both, self.comm)
        n = model.buffers.size
        own = model.buffers.copy()
        counted = tot[n:] > 0
        model.buffers[counted] = (tot[:n][counted] / tot[n:][counted]).astype(np.float32)
        self.averaged_buffers = model.buffers.copy()
        return own

    def _evaluate(self, split: str) -> tuple[float, float]:
        loss_sum = correct = count = 0.0
        live = self.live_replicas()  # a dead replica's rows: the others share them
        if self.role.kind == "replica" and self.role.index in live:  # not a partial one
            info = self.info
            for x, y in eval_batches(
                info.path,
                replica=live.index(self.role.index),
                n_replicas=len(live),
                batch_size=max(self.cfg.run.batch_size, 256),
                mean=info.mean,
                std=info.std,
                split="test" if split == "test" else "train",
                index=None if split == "test" else info.val_index,
            ):
                ls, c = self.net.evaluate(x, y, self.backend)
                loss_sum, correct, count = loss_sum + ls, correct + c, count + len(y)
        tot = allreduce_sum(np.array([loss_sum, correct, count]), self.comm)
        return float(tot[0] / tot[2]), float(tot[1] / tot[2])
