"""What every algorithm that goes on after a death does with the live ranks (fault
tolerance, :mod:`hpcnet.comm.ft`): agree on them, spawn processes in place of the dead
(``--replace-lost``) or on request, and set the run up over them
(:mod:`hpcnet.algos.downpour.regroup`, :mod:`hpcnet.algos.elastic`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hpcnet.algos.budget import StepBudget
from hpcnet.comm import bcast_object, ft, split_role_comms, watchdog
from hpcnet.layout import Layout

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import TrainingRun


def live_and_spawned(run: TrainingRun, grow: int):
    """The live ranks, agreed; merged with a new process for each that died (with
    ``--replace-lost``) and ``grow`` more (shard 0's, asked for with ``python -m hpcnet
    grow``): spawned by them (``MPI_Comm_spawn``, then ``Intercomm_merge``; the new ones
    take the last ranks). Returns (communicator, ranks of ``run.comm`` lost)."""
    import sys

    if ft.enabled():
        alive = ft.shrink(
            run.comm, run.deadlines.end_barrier, f"{run.algo.name} regroup: live ranks"
        )
        lost = ft.lost_between(run.comm, alive)
    else:  # no death is survived without ULFM: this regroup adds replicas
        alive, lost = run.comm.Dup(), []
    new = len(lost) if run.cfg.faults.replace_lost else 0
    new += bcast_object(grow, alive, what=f"{run.algo.name} regroup: replicas to add")  # shard 0's
    if not new:
        return alive, lost
    args = ["-m", "hpcnet", "train", "--config", str(run.prep.out / "config.toml")]
    args += ["--data", str(run.info.path), "--out", str(run.prep.out)]
    ft.connected()  # ends with MPI_Finalize (hpcnet.comm.ft.leave)
    inter = alive.Spawn(sys.executable, args, maxprocs=new, root=0)
    merged = inter.Merge(high=False)
    run.spawned.append(inter)  # disconnected at the end of the run
    return merged, lost


def printer_of(comm) -> int:
    """The world rank of rank 0 of ``comm`` (the live ranks): who prints a
    :class:`hpcnet.errors.RankLost` line (world rank 0 may be the one that died)."""
    from mpi4py import MPI

    world = MPI.COMM_WORLD.Get_group()
    (rank,) = MPI.Group.Translate_ranks(comm.Get_group(), [0], world)
    return 0 if rank == MPI.UNDEFINED else rank


def move_run(run: TrainingRun, alive, layout: Layout) -> None:
    """``run`` as the live ranks see it from now on (every field that names ranks)."""
    from hpcnet.comm.messages import Channel
    from hpcnet.run.metrics import MetricsLog

    if ft.enabled():
        watchdog.abandon()  # its window may span a dead rank
    else:
        watchdog.stop()  # nobody died (grow): collective over the old ranks
    run.comm = alive
    run.rank = alive.Get_rank()
    run.prep.layout = layout
    run.role = layout.role(run.rank)
    run.budget = StepBudget.of(run.cfg, run.info.n_train, layout.replicas)
    run.comms = split_role_comms(layout, alive)
    watchdog.start(alive, run.cfg.run.timeout, lambda r: str(layout.role(r)))
    run._signals = Channel(alive, run._signals.tag)
    run.live = list(range(alive.Get_size()))
    run.lost = []
    if run.rank == 0 and run.prep.log is None:  # rank 0 writes the run's records now
        run.prep.log = MetricsLog(run.prep.out, append=True, tensorboard=run.cfg.run.tensorboard)


class Retired(Exception):
    """Raised by an algorithm's ``regroup`` on a live rank that leaves the run: a
    partition of a model-parallel replica that lost another partition. The rank ends
    its part of the run quietly (:func:`hpcnet.algos.lifecycle.train` returns
    ``{"retired": ...}``)."""


def retire(run: TrainingRun, why: str) -> dict[str, Any]:
    """What a retired rank does: lets go of the run's records and watchdog, abandons its
    communicators (their ``Free`` is collective over ranks that went on without it)."""
    from hpcnet.comm import set_error_report

    watchdog.abandon()
    if run.prep.log is not None:  # rank 0 retired: the new rank 0 writes the records
        run.prep.log.close()
        run.prep.log = None
    set_error_report(None)
    for inter in run.spawned:
        inter.Disconnect()
    return {"retired": why, "_params": run.prep.model.params}
