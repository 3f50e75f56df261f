"""The run lifecycle every training algorithm shares.

:func:`train` is SPMD: every rank of the communicator calls it with the same
config, and it runs the same stages for every algorithm of the registry
(:mod:`hpcnet.algos.registry`):

1. :func:`hpcnet.algos.prepare.prepare`: layout and backend checked with no
   communication, data found and validated by rank 0, model built, output
   directory made, compute threads set, kernels compiled once per node;
2. :class:`TrainingRun`: the role sub-communicators, the step budget, the deadlines;
   rank 0 initialises the flat parameter vector from the seed and broadcasts
   it; replicas of ``--partitions M > 1`` are split into partitions;
3. the algorithm's ``setup`` (collective: windows, ...);
4. each rank runs the program of its role; progress records go through
   :meth:`TrainingRun.progress`, one shape for every algorithm;
5. every rank meets (a polling barrier with a deadline), the algorithm's
   ``finish`` leaves the final parameters on every rank, the replicas evaluate
   the test split in slices, and rank 0 writes OUT/metrics.jsonl's test record
   and OUT/summary.json.

Checkpoints and the watchdog hook in here, once, for every algorithm.
"""

from __future__ import annotations

import time
from typing import Any

from mpi4py import MPI

from hpcnet.algos import report
from hpcnet.algos.budget import StepBudget
from hpcnet.algos.checkpoints import Checkpoints
from hpcnet.algos.end_of_run import EndOfRun
from hpcnet.algos.prepare import Prepared, prepare, train_loader
from hpcnet.algos.registry import Algorithm, get_algorithm
from hpcnet.algos.survivors import Retired, retire
from hpcnet.comm import (
    Deadlines,
    allreduce_max_ints,
    bcast_,
    bcast_object,
    ft,
    gather_objects,
    library_comm,
    set_error_report,
    split_role_comms,
    watchdog,
)
from hpcnet.comm.exchange import Exchange
from hpcnet.comm.messages import Channel
from hpcnet.config import Config
from hpcnet.data.loader import BatchLoader
from hpcnet.modelpar import partition_model
from hpcnet.optim.schedules import lr_at, scaled_lr
from hpcnet.run.metrics import progress_line
from hpcnet.run.preempt import Preempted, PreemptionWatch

__all__ = ["TrainingRun", "StepBudget", "train"]

TAG_SIGNAL = 41  # a rank's SIGTERM/SIGUSR1 forwarded to rank 0 (TrainingRun.forward_signal)


class Regroup(Exception):
    """Raised by a role program that cannot go on because a rank it needs died (under
    fault tolerance, :mod:`hpcnet.comm.ft`), with what this rank holds (``carry``): the
    lifecycle has the algorithm's ``regroup`` set the run up again over the live ranks,
    then runs the (new) role's program again."""

    def __init__(self, carry: dict[str, Any]):
        super().__init__("a rank this program needs died")
        self.carry = carry


class TrainingRun(Checkpoints, EndOfRun):
    """One training run as this rank sees it: what every role program starts from.

    Built collectively by :func:`train` (every rank of ``comm``).

    Attributes:
        prep: the prepared run (config, layout, data, model, backend, output).
        comm: the run's communicator (every rank).
        algo: the algorithm.
        role: this rank's role; ``comms`` its sub-communicators (``data_comm``,
            ``replica_comm``: None on non-replica ranks).
        deadlines: how long each kind of wait may last (:class:`hpcnet.comm.Deadlines`).
        budget: the step budget of every replica.
        part: this rank's partition of its replica (model parallelism), else None.
        shared: what the algorithm's ``setup`` returned.
        on_end_poll: called while this rank waits for the others at the end (e.g.
            the Sandblaster coordinator drains late requests), and once after.
    """

    def __init__(
        self,
        prep: Prepared,
        comm: MPI.Intracomm,
        algo: Algorithm,
        verbose: bool,
        joining: bool = False,
    ):
        """``joining``: a process spawned to replace a dead one (fault tolerance): no
        collective here; the algorithm's ``regroup`` sets its layout, role and
        sub-communicators with the others."""
        self.prep, self.comm, self.algo, self.verbose = prep, comm, algo, verbose
        self.rank = comm.Get_rank()
        self.deadlines = Deadlines.of(prep.cfg.run.timeout, prep.cfg.ps.replica_timeout)
        self.part = None
        self.averaged_buffers = (
            None  # (n_buffers,) float32 at the last evaluation  # at the last evaluation
        )
        if not joining:
            self.role = prep.layout.role(self.rank)
            self.budget = StepBudget.of(prep.cfg, prep.info.n_train, prep.layout.replicas)
            self.comms = split_role_comms(prep.layout, comm)  # collective
            layout = prep.layout
            watchdog.start(comm, prep.cfg.run.timeout, lambda r: str(layout.role(r)))
        self.shared: Any = None
        self.on_end_poll = None
        self.preempt: PreemptionWatch | None = None  # set by train()
        self.on_progress = None  # set by train(): rank 0's record -> True to stop the run
        self.t_train = time.perf_counter()
        self._last_checkpoint = time.monotonic()  # --checkpoint-every-s counts from here
        # (signal, step of its checkpoint): an asynchronous algorithm's program stopped
        # early for SIGTERM/SIGUSR1, checkpointed; agreed at the end of the run
        self.stopped_by = (0, 0)
        self._signals = Channel(comm, TAG_SIGNAL)
        self._forwarded = self._heard = 0
        # fault tolerance (hpcnet.comm.ft): the ranks of the starting communicator that
        # died, and the starting ranks still alive (``comm`` is theirs after the end)
        self.lost: list[int] = []
        self.live: list[int] = list(range(comm.Get_size()))
        self.lost_report: list[dict[str, Any]] = []  # {"rank", "role"} of every rank lost
        self.regroups: list[dict[str, Any]] = []  # the algorithm's regroups after a death
        self.regrouped: dict[str, Any] | None = None  # state a regroup hands to ``setup``
        self.deal = None  # sync/avg: the rows of every replica (hpcnet.algos.elastic)
        self.spawned: list[MPI.Intercomm] = []  # with processes spawned to replace dead ones

    # --- what every program reads ------------------------------------------------
    cfg = property(lambda self: self.prep.cfg)
    layout = property(lambda self: self.prep.layout)
    model = property(lambda self: self.prep.model)
    backend = property(lambda self: self.prep.backend)
    info = property(lambda self: self.prep.info)

    @property
    def net(self):
        """What a replica rank computes with: its partition, or the whole model."""
        return self.part if self.part is not None else self.prep.model

    @property
    def total_batch(self) -> int:
        """Samples per step over all replicas."""
        return self.cfg.run.batch_size * self.layout.replicas

    # --- collective set-up ---------------------------------------------------------
    def init_params(self) -> None:
        """Rank 0 initialises the flat parameters from ``--seed``; every rank receives
        them (one ``Bcast``). Collective over ``comm``."""
        if self.rank == 0:
            self.model.init(self.cfg.run.seed)
        bcast_(self.model.params, self.comm)

    def partition(self) -> None:
        """With ``--partitions M > 1``, splits this replica rank's model into its
        partition (:func:`hpcnet.modelpar.partition_model`). Collective over each
        ``replica_comm``; shards and the coordinator do nothing."""
        if self.layout.partitions > 1 and self.role.kind == "replica":
            exchange = Exchange(
                self.comms.replica_comm,
                timeout=self.deadlines.exchange,
                node_ranks=self.prep.node_ranks,
            )
            a = self.cfg.algo
            self.part = partition_model(self.model, a.partition_scheme, exchange, a.micro_batches)

    # --- services for role programs ------------------------------------------------
    def loader(self) -> BatchLoader:
        """This replica's training-split loader (its own rows, shuffled per epoch)."""
        return train_loader(self.prep, self.role.index)

    def lr_schedule(self, clients: int = 1, n_push: int = 1, scale_batch: bool = True):
        """The learning rate as a function of the update count: warmup, then
        ``--lr-schedule`` (Goyal et al. 2017 for the linear scaling and warmup).

        Args:
            clients: how many clients' updates advance the count (Downpour: the
                clients pushing to one shard); 1 for synchronous steps.
            n_push: steps per update of one client.
            scale_batch: apply ``--lr-scaling`` by the total batch (synchronous SGD).
        Returns:
            ``lr(update) -> float``, reaching its end at ``clients * total_steps //
            n_push`` updates.
        """
        o, spe = self.cfg.optim, self.budget.steps_per_epoch
        target = (
            scaled_lr(o.lr, self.total_batch, o.reference_batch, o.lr_scaling)
            if scale_batch
            else o.lr
        )
        start = o.lr if scale_batch and o.lr_scaling == "linear" else 0.1 * target
        warmup = round(o.warmup_epochs * spe * clients / n_push)
        total = max(1, clients * self.budget.total_steps // n_push)
        return lambda update: lr_at(update, target, warmup, start, o.lr_schedule, total)

    def progress(
        self,
        *,
        epoch: int,
        step: int,
        total_steps: int,
        loss: float,
        accuracy: float,
        lr: float,
        samples_per_s: float | None,
        suffix: str = "",
        **extra: Any,
    ) -> dict[str, Any]:
        """One progress record, the same shape for every algorithm; rank 0 (the rank
        holding the metrics log) writes it to OUT/metrics.jsonl and prints it.

        ``step`` and ``total_steps`` count steps of one replica (an asynchronous
        algorithm: the replicas' mean); ``extra["samples"]``, the training samples all
        replicas have taken so far, defaults to ``step`` x the total batch, and
        ``epochs`` (float) is ``samples`` / the train split's rows: the axes that compare
        runs of different algorithms (``plot --x samples|epoch``).
        ``samples_per_s`` None: an interval holding only the first step (its time is
        in ``extra["first_step_s"]``). ``extra`` holds the algorithm's own fields.
        """
        samples = extra.pop("samples", step * self.total_batch)
        rec = {
            "epoch": epoch,
            "step": step,
            "total_steps": total_steps,
            "samples": int(samples),
            "epochs": round(samples / max(1, self.info.n_train), 4),
            "loss": loss,
            "accuracy": accuracy,
            "lr": lr,
            "samples_per_s": samples_per_s,
            "elapsed_s": time.perf_counter() - self.prep.t_start,
            **extra,
        }
        if self.prep.log is not None:
            self.prep.log.write(rec)
            if self.verbose:
                print(progress_line(rec) + suffix, flush=True)
            if self.on_progress is not None and self.on_progress(rec) and self.preempt:
                self.preempt.request_stop()  # e.g. a search's early stopping
        return rec

    def partitions_text(self) -> str:
        """``; M partitions per replica (scheme)`` for the start-up line, or ``""``."""
        if self.layout.partitions == 1:
            return ""
        scheme = self.cfg.algo.partition_scheme
        return f"; {self.layout.partitions} partitions per replica ({scheme})"

    def write_record(self, rec: dict[str, Any]) -> None:
        """Rank 0: appends an event record (``{"event": ...}``) to OUT/metrics.jsonl."""
        if self.prep.log is not None:
            self.prep.log.write(rec)

    def say(self, line: str) -> None:
        """Rank 0 prints ``line`` (when the run is verbose)."""
        if self.prep.log is not None and self.verbose:
            print(line, flush=True)


def train(
    cfg: Config,
    comm: MPI.Intracomm,
    verbose: bool = True,
    on_progress=None,
    time_limit: float | None = None,
) -> dict[str, Any]:
    """Trains with the algorithm ``cfg.algo.name`` on every rank of ``comm``.

    Collective over ``comm``: every rank must call it with the same config.

    Args:
        on_progress: called on the rank writing the metrics log (rank 0) with each
            progress record; when it returns True the run stops at the next step
            boundary on every rank, checkpointed, as for SIGTERM, and ``train`` raises
            :class:`~hpcnet.run.preempt.Preempted` with ``signum`` ``STOP_REQUESTED``
            (a search's early stopping).
        time_limit: seconds after which the run stops the same way (checkpointed, at a
            step boundary every rank agrees on), raising ``Preempted`` with ``signum``
            ``TIME_LIMIT`` (a search's ``--trial-timeout``); None: no limit.
    Returns:
        The summary dict (every rank gets rank 0's; only rank 0 writes files); the
        final flat parameters ((n_params,) float32) are under ``"_params"``.
    Raises:
        HpcnetError (every rank, same message): bad layout, backend, data or output dir.
    """
    # SIGTERM/SIGUSR1 or the time limit: stop at a step boundary, checkpointed
    watch = PreemptionWatch(time_limit)
    try:
        return _train(cfg, comm, verbose, watch, on_progress)
    finally:
        watch.close()
        watchdog.abandon()  # after an error (a normal end has stopped it collectively)


def _train(cfg: Config, comm: MPI.Intracomm, verbose: bool, watch, on_progress) -> dict[str, Any]:
    algo = get_algorithm(cfg.algo.name)
    prep = prepare(cfg, comm, verbose)
    run = TrainingRun(prep, comm, algo, verbose)
    run.preempt, run.on_progress = watch, on_progress
    if prep.resume is not None:  # where the appended records start again
        run.write_record(
            {
                "event": "resume",
                "step": int(prep.resume["step"]),
                "checkpoint": str(prep.resume["path"]),
            }
        )
    run.init_params()
    run.partition()
    if algo.setup is not None:
        run.shared = algo.setup(run)
    report.announce(
        run, algo.describe(run) if algo.describe else run.budget.describe(cfg.run.epochs)
    )
    run.t_train = time.perf_counter()
    return _run_to_end(run)


def join(cfg: Config, verbose: bool = True) -> dict[str, Any]:
    """The program of a process spawned to replace a dead one (``--replace-lost``, fault
    tolerance): merges with the run that spawned it, takes the role the regroup gives
    it and runs to the end with the others. ``cfg`` is the run's (its config.toml)."""
    from hpcnet.algos.prepare import prepare_joiner

    watch = PreemptionWatch()
    try:
        library_comm()  # collective over the processes spawned together (their world)
        ft.connected()  # ends with MPI_Finalize (hpcnet.comm.ft.leave)
        parent = MPI.Comm.Get_parent()
        merged = parent.Merge(high=True)  # with the spawning ranks' Merge
        algo = get_algorithm(cfg.algo.name)
        run = TrainingRun(prepare_joiner(cfg), merged, algo, verbose, joining=True)
        run.spawned.append(parent)
        run.preempt = watch
        run.t_train = time.perf_counter()
        algo.regroup(run, {"kind": "new", "detected_unix": time.time()})
        return _run_to_end(run)
    finally:
        watch.close()
        watchdog.abandon()


def _run_to_end(run: TrainingRun) -> dict[str, Any]:
    """The role programs (again after each regroup) and the end of the run."""
    algo, prep = run.algo, run.prep
    while True:
        try:
            result = algo.programs[run.role.kind](run)
            break
        except Regroup as g:  # a rank died that this program needs (fault tolerance)
            if algo.regroup is None:
                raise
            try:
                algo.regroup(run, g.carry)  # collective over the live ranks; then again
            except Retired as r:  # this rank leaves; the others go on without it
                return retire(run, str(r))
    train_s = time.perf_counter() - run.t_train

    # the end: every rank meets (sleeping while it waits, with a deadline); under fault
    # tolerance, over the ranks still alive from here on (run.comm)
    run.meet_at_end()
    comm = run.comm
    # an asynchronous algorithm stops for a signal at its own pace (sync and avg agree
    # at every step): every rank learns it here and leaves with the checkpoint written
    signum, at = allreduce_max_ints(list(run.stopped_by), comm, "end of run: stop signal")
    if signum:
        raise Preempted(signum, at, str(prep.out / "checkpoint.h5"))
    if algo.finish is not None:
        algo.finish(run)
    test_loss, test_acc = run.evaluate()
    val = run.evaluate("val") if run.info.val_index is not None else None
    gathered = gather_objects((run.role.kind, result), comm)
    mp = report.model_parallel_summary(run) if run.layout.partitions > 1 else None
    summary = None
    if run.rank == 0:
        evals = {"test_accuracy": test_acc, "test_loss": test_loss}
        if val is not None:
            evals.update(val_loss=val[0], val_accuracy=val[1])
        summary = report.final_summary(run, gathered, train_s, mp, evals)
    summary = bcast_object(summary, comm)
    if run.lost:  # their Free is collective over communicators that hold a dead rank
        watchdog.abandon()
    else:
        watchdog.stop()
        run.comms.free()
    set_error_report(None)  # this run's OUT is no place for a later error's report
    for inter in run.spawned:  # processes spawned in place of dead ones: no longer
        inter.Disconnect()  # connected, so each side's MPI_Finalize is its own
    summary["_params"] = prep.model.params
    return summary
