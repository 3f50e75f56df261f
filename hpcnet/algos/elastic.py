"""Synchronous data parallelism (``sync``, ``avg``) with a changing replica count: a
replica's process died (fault tolerance, :mod:`hpcnet.comm.ft`), or a run resumed from a
checkpoint with another count.

**After a death** (Open MPI, ``mpiexec --with-ft ulfm``): the replica that meets the
failure in a collective revokes the run's communicators, so that every other replica's
collective fails too (Bland et al. 2013, "Post-failure recovery of MPI communication
capability", sec. 4: ``MPI_Comm_revoke``), and raises
:class:`~hpcnet.algos.lifecycle.Regroup` with the step its state stands at. Each
replica keeps, under fault tolerance only, a copy of its state from before the step in
flight (parameters, momentum, Dropout streams, buffers): a replica may have finished
that step (its allreduce completed) while another failed in it, never more than one
step apart, since each step's allreduce needs every replica. :func:`regroup`
(collective over the survivors) agrees on the live ranks, sets every survivor back to
the lowest step any reached (those one step ahead take their copy), and goes on from
there with one replica fewer: no restart, no checkpoint read, and the step in flight
is computed again by the survivors. The rows the dead replica had not read yet are
dealt to the survivors (:class:`hpcnet.data.deal.DataDeal`); ``--lr-scaling linear``
follows the new total batch. summary.json ``lost_ranks`` and ``regroups`` say when
each death was detected and how long the regroup took.

**Resuming with another count** (``--resume OUT`` with more or fewer ranks) deals the
rest of the checkpoint's epoch the same way, so a run that lost a replica at step ``c``
and a run resumed from step ``c`` with the survivors' count compute the same thing:
what ``tests/ft`` checks bit for bit. Either way the Dropout streams start again from
``(seed, replica, step)`` (:meth:`hpcnet.nn.model.Model.seed_dropout`) and each
replica keeps its own BatchNorm statistics (a new replica takes replica 0's).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.budget import StepBudget
from hpcnet.algos.survivors import Retired, live_and_spawned, move_run, printer_of
from hpcnet.comm import allgather_objects, bcast_, bcast_object, ft
from hpcnet.data.deal import DataDeal, DealtLoader
from hpcnet.errors import RankLost
from hpcnet.layout import Layout

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import TrainingRun


def setup(run: TrainingRun) -> None:
    """Every replica's deal of the rows (``run.deal``) and the step budget it gives:
    from the checkpoint's changes of count when resuming, plus one more when this
    run's count differs from the checkpoint's. No communication."""
    start = run.layout.replicas
    events: list = []
    if run.prep.resume is not None:
        state = _resumed_state(run)
        start = int(state.get("deal_start", run.prep.resume["layout"]["replicas"]))
        events = [tuple(e) for e in state.get("deal", [])]
        if resized(run):
            events.append((int(state["step"]), run.layout.replicas))
    _use(run, _new_deal(run, start, events))


def _new_deal(run: TrainingRun, start: int, events: list) -> DataDeal:
    """The run's deal from its starting replica count and its changes of count."""
    r = run.cfg.run
    deal = DataDeal(run.info.n_train, r.batch_size, r.seed, r.epochs, start, r.max_steps)
    for step, replicas in events:
        deal.regroup(step, replicas)
    return deal


def _use(run: TrainingRun, deal: DataDeal) -> None:
    run.deal = deal
    run.budget = StepBudget(deal.steps_per_epoch, deal.total_steps, run.budget.log_every)


def _resumed_state(run: TrainingRun) -> dict[str, Any]:
    from hpcnet.run.checkpoint import read_rank_state

    return read_rank_state(run.prep.resume["path"], 0)[1]


def resume_rank(run: TrainingRun) -> int:
    """The checkpoint rank whose state this rank resumes from: its own, or (its
    partition of) replica 0's when the checkpoint had fewer replicas."""
    role = run.role
    replica = role.index if role.index < run.prep.resume["layout"]["replicas"] else 0
    return run.layout.replica_ranks(replica)[role.partition]


def resized(run: TrainingRun) -> bool:
    """Whether this run resumed with another replica count than its checkpoint's."""
    return run.prep.resume is not None and (
        run.prep.resume["layout"]["replicas"] != run.layout.replicas
    )


def deal_state(run: TrainingRun) -> dict[str, Any]:
    """What a checkpoint keeps of the deal, so a resume deals the same rows."""
    return {"deal_start": run.deal.segments[0].replicas, "deal": run.deal.events}


def loader(run: TrainingRun):
    """This replica's loader: BatchLoader's when the count never changed, else a
    :class:`~hpcnet.data.deal.DealtLoader`; either way ``batches(step)`` yields from
    global step ``step`` on."""
    if not run.deal.events:
        return _Epochs(run.loader(), run.deal.steps_per_epoch)
    p, cfg = run.prep, run.cfg
    return DealtLoader(
        run.deal,
        run.role.index,
        p.info.path,
        mean=p.info.mean,
        std=p.info.std,
        index=p.info.train_index,
        augment=cfg.data.augment,
        crop_pad=cfg.data.crop_pad,
    )


class _Epochs:
    """A BatchLoader's epochs as one stream of steps."""

    def __init__(self, batch_loader, steps_per_epoch: int):
        self.loader, self.spe = batch_loader, steps_per_epoch

    def batches(self, step: int):
        epoch, start = divmod(step, self.spe)
        while True:
            yield from self.loader.batches(epoch, start)
            epoch, start = epoch + 1, 0

    def close(self) -> None:
        self.loader.close()


def snapshot(model, opt, into: dict[str, Any] | None = None) -> dict[str, Any]:
    """A replica's state before a step (fault tolerance only): parameters, momentum,
    Dropout streams, buffers; copied into the arrays of ``into`` (an earlier snapshot)
    when given, so a step allocates nothing."""
    if into is None:
        return {
            "params": model.params.copy(),
            "velocity": None if opt.velocity is None else opt.velocity.copy(),
            "rng": model.rng_states(),
            "buffers": model.buffers.copy(),
        }
    np.copyto(into["params"], model.params)
    if opt.velocity is not None:
        np.copyto(into["velocity"], opt.velocity)
    np.copyto(into["buffers"], model.buffers)
    into["rng"] = model.rng_states()
    return into


def restore(model, opt, snap: dict[str, Any]) -> None:
    """Puts back what :func:`snapshot` saved."""
    model.params[:] = snap["params"]
    if opt.velocity is not None:
        opt.velocity[:] = snap["velocity"]
    model.set_rng_states(snap["rng"])
    model.buffers[:] = snap["buffers"]


def comms_of(run: TrainingRun) -> tuple:
    """The run's communicators a replica's step uses."""
    return (run.comm, run.comms.data_comm, run.comms.replica_comm)


def revoke(run: TrainingRun) -> None:
    """Revokes the run's communicators, so every replica's pending and next collective
    fails as this one's did (``MPI_Comm_revoke``)."""
    for comm in comms_of(run):
        if comm is not None and comm != MPI.COMM_NULL:
            try:
                comm.Revoke()
            except MPI.Exception:  # already revoked
                pass


def regroup(run: TrainingRun, carry: dict[str, Any]) -> None:
    """Collective over the live ranks of ``run.comm`` after a replica died (and, with
    ``--replace-lost``, the processes spawned in place of the dead, which join here):
    sets every survivor to the lowest step any reached, the run over the survivors
    (communicator, layout, deal, budget), and ``run.regrouped`` to what the replica
    program starts from.

    A replica split into partitions (``--partitions``) that lost one retires whole:
    its live partitions leave the run (:class:`~hpcnet.algos.survivors.Retired`), the
    others go on as above. A process that joins (``--replace-lost``) receives the
    parameters, momentum and buffers of replica 0 and the deal by broadcast, and
    trains from the same step as the others.

    Args:
        carry: this rank's ``step`` (what its state stands at), ``before`` (its
            :func:`snapshot` from before that step, or None), ``opt`` (its optimizer,
            whose momentum goes on), ``detected_unix``; a joining process
            ``{"kind": "new"}`` (``run.comm``: already merged with the others).
    Raises:
        Retired: on the live partitions of a replica that lost one.
        RankLost: a death again and again during the regroup.
    """
    t0 = time.time()
    joining = carry.get("kind") == "new"
    origin = list(range(run.comm.Get_size()))  # original rank of each rank of run.comm
    lost_all: list[int] = []
    for _ in range(64):  # a death during the regroup: agree again
        try:
            comm, lost = (run.comm, []) if joining else live_and_spawned(run, 0)
            lost_all += [origin[r] for r in lost]
            steps = allgather_objects(
                None if joining else carry["step"], comm, f"{run.algo.name} regroup: steps"
            )
            plan = bcast_object(
                _plan(run, steps, lost_all) if comm.Get_rank() == 0 else None,
                comm,
                what=f"{run.algo.name} regroup: the plan",
            )
            if not joining and carry["step"] > plan["step"]:  # one step ahead: back
                restore(run.model, carry["opt"], carry["before"])
            old = Layout(**plan["old"])
            stays = joining or old.role(run.rank).index not in plan["dead"]
            kept = comm.Split(0 if stays else MPI.UNDEFINED, comm.Get_rank())
            break
        except MPI.Exception as e:
            if not (ft.enabled() and ft.is_failure(e)) or joining:
                raise
            comm.Revoke()
            origin = [origin[r] for r in range(run.comm.Get_size()) if r not in lost]
            run.comm = comm
    else:
        raise RankLost(
            "ranks kept dying during the regroup; resume with --resume", printer=printer_of(comm)
        )
    step, record = plan["step"], plan["record"]
    record["detected_unix"] = carry["detected_unix"]
    run.lost_report += record["lost_ranks"]
    if not stays:
        raise Retired(f"{old.role(run.rank)} retired with its replica")
    size = kept.Get_size()
    layout = Layout(size, old.algo, 0, 0, size // old.partitions, old.partitions)
    if joining:  # the deal and the budget as the others hold them
        run.budget = StepBudget(0, 0, plan["log_every"])
        run.deal = _new_deal(run, plan["deal_start"], plan["deal"])
    deal = run.deal
    deal.regroup(step, layout.replicas)
    record.update(replicas=layout.replicas, epoch=deal.epoch_of(step))
    run.regroups.append(record)
    move_run(run, kept, layout)
    _use(run, deal)
    run.part = None
    run.partition()  # over the new replica communicators (collective over each)
    velocity = _hand_over(run, carry, plan["spawned"])
    run.regrouped = {"step": step, "velocity": velocity}
    tail = deal.describe_tail(step)
    run.say(
        f"{plan['text']}; going on as {layout.replicas} replica(s) from step {step}"
        + (f" ({tail})" if tail else "")
        + f", total batch {run.total_batch}"
    )
    run.write_record({"event": "regroup", **record})
    record["regroup_s"] = time.time() - t0


def _plan(run: TrainingRun, steps: list, lost: list[int]) -> dict[str, Any]:
    """Rank 0 (a survivor): the step to go on from, the dead replicas, what joining
    processes need, the record and the start of the line to print."""
    old = run.layout
    step = min(s for s in steps if s is not None)
    spawned = sum(s is None for s in steps)
    dead = sorted({old.role(r).index for r in lost})
    retired = [r for r in range(old.world_size) if r not in lost and old.role(r).index in dead]
    record = {
        "lost_ranks": [{"rank": r, "role": str(old.role(r))} for r in lost],
        "retired_ranks": [{"rank": r, "role": str(old.role(r))} for r in retired],
        "spawned": spawned,
        "step": step,
    }
    text = ", ".join(f"rank {r} ({old.role(r)})" for r in lost) + " died"
    if retired:
        text += "; " + ", ".join(f"rank {r} ({old.role(r)})" for r in retired) + " retired"
    if spawned:
        text += f"; {spawned} new process(es) spawned in their place"
    return {
        "step": step,
        "dead": dead,
        "old": old.to_dict(),
        "spawned": spawned,
        "record": record,
        "text": f"{run.algo.name}: {text}",
        "log_every": run.budget.log_every,
        **deal_state(run),
    }


def _hand_over(run: TrainingRun, carry: dict[str, Any], spawned: int):
    """The momentum this rank goes on with; with processes that joined, replica 0's
    parameters, momentum and buffers reach them (a broadcast over the new
    communicator; the others keep their own)."""
    opt = carry.get("opt")
    if not spawned:
        return opt.velocity
    model, comm = run.model, run.comm
    params = bcast_(model.params.copy(), comm, 0, "regroup: parameters for new replicas")
    buffers = bcast_(model.buffers.copy(), comm, 0, "regroup: buffers for new replicas")
    n = run.part.n_owned if run.part else model.n_params
    vel = opt.velocity if opt is not None and opt.velocity is not None else np.zeros(n, np.float32)
    vel = bcast_(vel.copy(), comm, 0, "regroup: momentum for new replicas")
    if carry.get("kind") != "new":
        return opt.velocity
    model.params[:], model.buffers[:] = params, buffers
    return vel


def reseed(run: TrainingRun, step: int) -> None:
    """The model's Dropout streams after a change of count at ``step`` (a regroup or a
    resume with another count): from ``(seed, replica, step)``."""
    run.model.seed_dropout(run.cfg.run.seed, run.role.index, restart=step + 1)
