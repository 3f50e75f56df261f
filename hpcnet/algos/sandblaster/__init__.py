"""Sandblaster L-BFGS (Dean et al. 2012, sec. 4.2): a coordinator, shard-side vector
algebra, and load-balanced work units with backup tasks.

Ranks (:class:`hpcnet.layout.Layout`): the coordinator (``coordinator_rank``),
``S`` parameter shards (``shard_ranks``), ``R`` replicas (from
``replica_ranks``). No process ever holds or moves the whole parameter vector
during the optimisation:

* the shards keep their slices of x, d, g and the L-BFGS history
  (:mod:`hpcnet.ps.lbfgs_shard`) and serve the coordinator's commands and the
  replicas' pushes (:mod:`hpcnet.ps.lbfgs_service`);
* the coordinator (:mod:`.coordinator`) runs L-BFGS on scalars (the vector-free
  two-loop recursion, :mod:`hpcnet.optim.lbfgs`) and the backtracking Armijo line
  search, and schedules the work units (:mod:`.workunits`);
* the replicas (:mod:`.replica`) compute the gradients of work units, talking to
  the coordinator by the work-unit protocol (:mod:`.protocol`).

One *evaluation pass* (function and gradient at ``x + t d`` over the L-BFGS
batch):

1. coordinator -> shards ``begin(t)``: each shard writes ``x + t d`` (float32)
   into its parameter window;
2. replicas ask the coordinator for work and ``Get`` the parameters from the
   shards' windows when a new pass starts; units go to whoever asks (faster
   replicas do more), backup copies to idle replicas near the end;
3. a replica sums the gradients of its kept units and, every
   ``units_per_push`` units (or when told to flush), asks the coordinator; if
   accepted it sends each shard its slice;
4. when every unit is delivered, coordinator -> shards ``finalize``: each shard
   waits for exactly the accepted pushes and returns three partial sums.

Messages are small float64 arrays (buffer API, :mod:`hpcnet.comm.messages`); every
wait polls with sleeps and has a named deadline (:class:`hpcnet.comm.Deadlines`).
Communication per iteration: :mod:`hpcnet.ps.lbfgs_shard` (commands),
:mod:`.protocol` (work units), :mod:`hpcnet.ps.lbfgs_service` (parameters and
gradients).

Who calls what: the lifecycle (:mod:`hpcnet.algos.lifecycle`) runs the collective
start (the initial parameters' broadcast, :func:`_setup`: the windows and a barrier)
and end (a barrier, :func:`_finish`: the gather of the shards' slices, then the
evaluation and the summary) on every rank; in between no collective runs, so a lost
replica does not stop the others. Every rank computes the units, ranges and pass
budget from the same config (:func:`_plan`).

Checkpoints and preemption: after an accepted iteration the coordinator writes
OUT/checkpoint.h5 when one is due (``--checkpoint-every`` iterations, or seconds) or
a rank got SIGTERM/SIGUSR1 (shards and replicas forward theirs to it,
:meth:`~hpcnet.algos.lifecycle.TrainingRun.forward_signal`): the shards' x, g and history
(``SNAPSHOT``), its own scalars and counters. ``--resume``: each shard restores its
slices, the coordinator its scalars, and the iterations go on.

Fault tolerance (``mpiexec --with-ft ulfm``): a dead replica's units go to the others
(:mod:`.workunits`); a dead coordinator is replaced by the lowest live replica, which goes
on from the iteration in progress with the mirror the shards keep (:mod:`.failover`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from hpcnet.algos.lifecycle import TrainingRun
from hpcnet.algos.registry import SHARDED_FLAGS, Algorithm, register
from hpcnet.algos.sandblaster.coordinator import Coordinator
from hpcnet.algos.sandblaster.failover import PeerWatch, regroup, shard_carry
from hpcnet.algos.sandblaster.options import OPTIONS
from hpcnet.algos.sandblaster.replica import run_replica
from hpcnet.comm import allgather_ranges, barrier_polling, ft, same_on_every_rank
from hpcnet.layout import LayoutRule
from hpcnet.ps.lbfgs_service import LBFGSShardService, ParameterWindows
from hpcnet.ps.lbfgs_shard import LBFGSShardState
from hpcnet.ps.windows import shard_ranges

__all__ = ["SANDBLASTER"]


@dataclass
class _Plan:
    """What every rank computes alike from the config, and the shared windows."""

    ranges: list[tuple[int, int]]  # each shard's [lo, hi) of the flat vector
    n_batch: int  # rows per evaluation pass
    unit: int  # rows per work unit
    units: list[tuple[int, int]]
    max_passes: int
    windows: ParameterWindows | None = None
    x: np.ndarray = field(default_factory=lambda: np.empty(0, np.float32))  # a shard's slice


def _plan(run: TrainingRun) -> _Plan:
    cfg, info, layout = run.cfg, run.info, run.layout
    with same_on_every_rank():
        ranges = shard_ranges(
            run.model.n_params, layout.shards, [a for _, a, _ in run.model.segments]
        )
    n_batch = min(cfg.lbfgs.batch or info.n_train, info.n_train)
    unit = cfg.lbfgs.unit_size or max(1, n_batch // (10 * layout.replicas))
    units = [(lo, min(lo + unit, n_batch)) for lo in range(0, n_batch, unit)]
    max_passes = max(2, math.ceil(cfg.run.epochs * info.n_train / n_batch))
    return _Plan(ranges, n_batch, unit, units, max_passes)


def _setup(run: TrainingRun) -> _Plan:
    """Collective: the parameter windows (memory on the shards only), then a barrier,
    so the shards hold their windows before any replica reads them."""
    plan = _plan(run)
    plan.windows = ParameterWindows(run.comm, run.layout.shard_ranks, plan.ranges)
    barrier_polling(run.comm, run.deadlines.end_barrier, "sandblaster start")
    return plan


def _describe(run: TrainingRun) -> str:
    p = run.shared
    return (
        f"{len(p.units)} work units of {p.unit} rows per pass over {p.n_batch} rows; "
        f"up to {p.max_passes} passes; L-BFGS m={run.cfg.lbfgs.m}; shard ranges {p.ranges}"
    )


def _coordinator(run: TrainingRun) -> dict:
    p = run.shared
    coordinator = Coordinator(run, p.units, p.n_batch, p.max_passes)
    run.on_end_poll = coordinator.drain  # replicas' late requests, while all meet
    coordinator.watch = PeerWatch(run, lambda: {"kind": "coordinator", "marks": coordinator.marks})
    coordinator.shards.give_up = coordinator.watch.check
    try:
        return coordinator.run()
    except MPI.Exception as e:  # e.g. a command to a shard that died
        if ft.is_failure(e):
            coordinator.watch.check(force=True)  # Regroup if so
        raise


def _shard(run: TrainingRun) -> dict:
    p, cfg = run.shared, run.cfg
    lo, hi = p.ranges[run.role.index]
    if run.regrouped is not None:  # after a failover: the state rolled back to a boundary
        state, run.regrouped = run.regrouped["state"], None
    else:
        state = LBFGSShardState(run.model.params[lo:hi], cfg.lbfgs.m, cfg.optim.weight_decay)
        resumed = run.resume_state()
        if resumed is not None:  # x, g and the history where the checkpoint left them
            state.restore(resumed[0])
    d = run.deadlines
    watch = PeerWatch(run, lambda: shard_carry(run.role.index, state))

    def on_poll() -> None:
        run.forward_signal()
        watch.check()  # the coordinator or a shard died (fault tolerance): a failover

    service = LBFGSShardService(
        run.comm,
        p.windows,
        state,
        run.layout,
        d.shard_reply,
        d.coordinator_reply,
        on_poll=on_poll,
    )
    try:
        result = service.run()
    except MPI.Exception as e:  # e.g. its reply to a coordinator that died
        if ft.is_failure(e):
            watch.check(force=True)  # Regroup if so
        raise
    p.x = result.pop("_x")
    return result


def _replica(run: TrainingRun) -> dict:
    p = run.shared
    r = run.role.index
    carry = lambda: {"kind": "replica", "index": r, "fetched": p.windows.fetched_pass}  # noqa: E731
    return run_replica(
        run.prep,
        run.comm,
        p.windows,
        r,
        p.units,
        run.deadlines,
        on_poll=run.forward_signal,
        watch=PeerWatch(run, carry),
    )


def _finish(run: TrainingRun) -> None:
    """Collective: every rank gets the shards' final slices; the windows are freed."""
    p = run.shared
    # coordinator and shards are the first ranks: a replica that died leaves their ranks
    allgather_ranges(p.x, run.layout.shard_ranks, p.ranges, run.model.params, run.comm)
    if not run.lost:  # Win_free is collective over the starting ranks, the dead too
        p.windows.free()


def _summarise(run: TrainingRun, gathered: list[tuple[str, dict]], train_s: float) -> dict:
    p, info = run.shared, run.info
    coord = next(r for kind, r in gathered if kind == "coordinator")
    reps = sorted((r for kind, r in gathered if kind == "replica"), key=lambda r: r["replica"])
    return {
        **coord,
        "replicas": reps,
        "steps": coord["iterations"],
        "epochs": coord["passes"] * p.n_batch / info.n_train,
        "samples_per_s": (coord["passes"] - coord["passes_before_resume"]) * p.n_batch / train_s
        if train_s
        else 0.0,
        "train_s": train_s,
        "units_per_pass": len(p.units),
        "unit_size": p.unit,
    }


SANDBLASTER = register(
    Algorithm(
        name="sandblaster",
        doc="batch L-BFGS with a coordinator, shard-side vector algebra and work units "
        "with backup tasks (Dean et al. 2012, sec. 4.2)",
        layout=LayoutRule(coordinators=1, shards=True),
        programs={"coordinator": _coordinator, "shard": _shard, "replica": _replica},
        options=OPTIONS,
        flags=SHARDED_FLAGS + ("--slow-replica", "--slow-factor"),
        setup=_setup,
        finish=_finish,
        summarise=_summarise,
        describe=_describe,
        supports_partitions=False,
        resumable=True,
        survives=True,
        regroup=regroup,
    )
)
