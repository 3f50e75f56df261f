"""The data-parallel replica loop shared by ``sync`` and ``avg``.

Every replica trains on its own rows for the same number of steps (the step
budget of :class:`hpcnet.algos.budget.StepBudget`), with SGD + momentum on
the flat parameter vector (or the entries its partition owns). A *policy*
object says what communication happens: after backward (``sync``: allreduce
the gradients), after the optimizer step (``avg``: average the parameters every
k steps) and at the end. Its hooks are collective over the replicas'
``data_comm`` when they communicate, so every replica must call them at every
step (same step count everywhere, or an allreduce hangs). After every step the
replicas also agree whether any of them got SIGTERM/SIGUSR1 (one 8-byte
allreduce, :meth:`~hpcnet.algos.lifecycle.TrainingRun.step_end`): then all write a
checkpoint at that step and stop (:class:`hpcnet.run.preempt.Preempted`).
``--checkpoint-every`` and ``--resume`` restore every rank's parameters, momentum,
Dropout streams and buffers (BatchNorm's running statistics, each replica its own), so
a resumed run continues bit for bit.

Adding an algorithm of this family is one policy class and one call of
:func:`synchronous_algorithm` (see ``tests/e2e/toy_algorithm.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
from mpi4py import MPI

from hpcnet.algos import elastic
from hpcnet.algos.lifecycle import Regroup, TrainingRun
from hpcnet.algos.registry import Algorithm
from hpcnet.comm import allreduce_sum, ft, watchdog
from hpcnet.layout import LayoutRule
from hpcnet.optim.schedules import scaled_lr
from hpcnet.optim.sgd import SGD
from hpcnet.options import Option, need, rule
from hpcnet.run.checkpoint import read_rank_state
from hpcnet.run.preempt import Preempted


class Policy(Protocol):
    """What a synchronous algorithm communicates; ``allreduces`` counts its collectives."""

    allreduces: int

    def after_backward(self, grads: np.ndarray) -> None: ...

    def after_step(self, step: int, params: np.ndarray) -> None: ...

    def finish(self, params: np.ndarray) -> None: ...

    # optional: ``resume(step)`` sets its counters as they were after ``step`` steps;
    # ``on_grad_ready``: None, or a hook the replica passes to ``Model.loss_and_grad``
    # (called during backward, e.g. to start a bucket's allreduce; whole models only)


def replica_program(
    make_policy: Callable[[TrainingRun], Policy],
) -> Callable[[TrainingRun], dict[str, Any]]:
    """The replica program of a synchronous algorithm whose policy ``make_policy(run)``
    builds (once per rank, collectively if it creates communicators)."""

    def program(run: TrainingRun) -> dict[str, Any]:
        return _train_replica(run, make_policy(run))

    return program


def _train_replica(run: TrainingRun, algo: Policy) -> dict[str, Any]:
    cfg, model, backend, part = run.cfg, run.model, run.backend, run.part
    data_comm, budget = run.comms.data_comm, run.budget
    total_steps, log_every = budget.total_steps, budget.log_every
    eval_every = cfg.run.eval_every
    model.seed_dropout(cfg.run.seed, run.role.index)
    lr_of = run.lr_schedule()
    o = cfg.optim
    opt = SGD(
        part.n_owned if part else model.n_params, momentum=o.momentum, weight_decay=o.weight_decay
    )
    net = run.net
    hook = getattr(algo, "on_grad_ready", None) if part is None else None
    grad_kw = {"on_grad_ready": hook} if hook is not None else {}
    step = _start(run, algo, opt)
    # under fault tolerance every step ends agreed (hpcnet.algos.elastic)
    survive = ft.enabled()
    loader = elastic.loader(run)
    batches = loader.batches(step)
    first_step = step + 1
    first_step_s = 0.0
    acc = np.zeros(4)  # loss sum, correct, samples, samples since the last line
    t_train = time.perf_counter()
    t_log = t_train
    last = {"loss": float("nan"), "accuracy": float("nan")}
    before = None  # the state before the step in flight (fault tolerance only)
    try:
        while step < total_steps:
            before = elastic.snapshot(model, opt, before) if survive else None
            at, signum, ok = step, 0, True
            try:
                x, y = next(batches)
                loss, correct = net.loss_and_grad(x, y, backend, **grad_kw)
                grads = part.pack(model.grads) if part else model.grads
                params = part.pack(model.params) if part else model.params
                algo.after_backward(grads)
                lr = lr_of(step)
                opt.step(params, grads, lr)
                algo.after_step(step, params)
                if part:
                    part.unpack(params, model.params)
                step += 1
                watchdog.heartbeat(step)
                acc += (loss * len(y), correct, len(y), len(y))
                if step == first_step:  # kept out of throughput: first-call costs
                    first_step_s = time.perf_counter() - t_train
                    t_log = time.perf_counter()
                    acc[3] = 0
                eval_due = eval_every > 0 and step % eval_every == 0
                if step % log_every == 0 or step == total_steps or eval_due:
                    tot = allreduce_sum(acc, data_comm)
                    now = time.perf_counter()
                    val = {}
                    if eval_due:  # every replica holds the same parameters (sync)
                        loss_v, acc_v = run.evaluate("val")
                        val = {"val_loss": loss_v, "val_accuracy": acc_v}
                    last = run.progress(
                        epoch=int(run.deal.epoch_of(step - 1)) + 1,
                        step=step,
                        total_steps=total_steps,
                        loss=tot[0] / tot[2],
                        accuracy=tot[1] / tot[2],
                        lr=lr,
                        samples_per_s=tot[3] / max(now - t_log, 1e-9) if tot[3] else None,
                        first_step_s=first_step_s,
                        **val,
                    )
                    acc[:] = 0
                    t_log = time.perf_counter() if val else now  # evaluating is not training
                due, signum = run.step_end(step)  # agreed by every rank
                if step < total_steps and (due or signum):  # the last one: the lifecycle's
                    _checkpoint(run, step, opt)
            except MPI.Exception as e:
                if not (survive and ft.failure_on(e, elastic.comms_of(run))):
                    raise
                elastic.revoke(run)  # every other replica's collective fails too
                ok = False
            if survive and not ft.agree(run.comm, ok, None, "step-end agreement"):
                if step == at:  # failed in the step: back to before it
                    elastic.restore(model, opt, before)
                    before = None
                raise Regroup(
                    {"step": step, "before": before, "opt": opt, "detected_unix": time.time()}
                )
            if signum and step < total_steps:  # preemption: every rank stops here
                raise Preempted(signum, step, str(run.prep.out / "checkpoint.h5"))
    finally:
        loader.close()
    _finish(run, algo, survive, opt)
    train_s = time.perf_counter() - t_train
    steps_here = step - first_step + 1  # this process's steps (a resumed run: since resuming)
    return {
        "epochs": run.deal.epoch_of(step),
        "steps": step,
        "steps_per_epoch": run.deal.steps_per_epoch,
        "total_batch": run.total_batch,
        "allreduces": algo.allreduces,
        "final_train_loss": last["loss"],
        "final_train_accuracy": last["accuracy"],
        # throughput after the first step (its time is reported on its own)
        "samples_per_s": (
            (steps_here - 1) * run.total_batch / (train_s - first_step_s)
            if steps_here > 1
            else steps_here * run.total_batch / max(train_s, 1e-9)
        ),
        "first_step_s": first_step_s,
        # bytes a compressed allreduce saved on this rank (sync --compress)
        **({"compression": algo.traffic.summary()} if getattr(algo, "traffic", None) else {}),
    }


def _start(run: TrainingRun, algo: Policy, opt: SGD) -> int:
    """Where this replica starts: after a regroup, a resume, or at step 0; sets the
    parameters, momentum, Dropout streams, buffers and the policy's counters."""
    model, step = run.model, 0
    if run.regrouped is not None:  # survivors of a death (hpcnet.algos.elastic)
        step = run.regrouped["step"]
        if opt.velocity is not None:
            opt.velocity[:] = run.regrouped["velocity"]
        run.regrouped = None
        elastic.reseed(run, step)
    elif run.prep.resume is not None:  # where the checkpoint left off, bit for bit
        arrays, state = read_rank_state(run.prep.resume["path"], elastic.resume_rank(run))
        model.params[:] = arrays["params"]
        if opt.velocity is not None:
            opt.velocity[:] = arrays["velocity"]
        if "buffers" in arrays:  # this replica's BatchNorm running statistics
            model.buffers[:] = arrays["buffers"]
        step = int(state["step"])
        if elastic.resized(run):  # another replica count: streams as after a regroup
            elastic.reseed(run, step)
        else:
            model.set_rng_states(state["rng"])
    if step and hasattr(algo, "resume"):
        algo.resume(step)
    return step


def _finish(run: TrainingRun, algo: Policy, survive: bool, opt: SGD) -> None:
    """The policy's last communication (avg: a last average), agreed under fault
    tolerance like a step."""
    ok, model, part = True, run.model, run.part
    try:
        if part:
            params = part.pack(model.params)
            algo.finish(params)
            part.unpack(params, model.params)
            part.assemble(model.params)  # every partition ends with the whole vector
        else:
            algo.finish(model.params)
    except MPI.Exception as e:
        if not (survive and ft.failure_on(e, elastic.comms_of(run))):
            raise
        elastic.revoke(run)
        ok = False
    if survive and not ft.agree(run.comm, ok, None, "end-of-training agreement"):
        step = run.budget.total_steps
        raise Regroup({"step": step, "before": None, "opt": opt, "detected_unix": time.time()})


def _checkpoint(run: TrainingRun, step: int, opt: SGD) -> None:
    """Saves what resuming at ``step`` needs on every rank: its parameters (with
    partitions: rank 0 also assembles the whole vector), momentum, Dropout streams and
    buffers (BatchNorm's running statistics).
    Collective over the run's communicator (every rank is a replica here)."""
    model, part = run.model, run.part
    params = model.params.copy()
    if part is not None:
        part.assemble(params)  # collective over the replica's partitions
    arrays = {"params": params}
    if opt.velocity is not None:
        arrays["velocity"] = opt.velocity.copy()
    if model.buffers.size:  # each replica its own running statistics
        arrays["buffers"] = model.buffers.copy()
    state = {"step": step, "rng": model.rng_states(), **elastic.deal_state(run)}
    run.save_checkpoint(step, run.deal.epoch_of(step), arrays, state)


def describe(run: TrainingRun) -> str:
    """The start-up line's part: steps, total batch, the learning rate after warmup."""
    o = run.cfg.optim
    lr = scaled_lr(o.lr, run.total_batch, o.reference_batch, o.lr_scaling)
    budget = run.budget.describe(run.cfg.run.epochs)
    return f"{budget}; total batch {run.total_batch}, lr {lr:g}" + run.partitions_text()


def synchronous_algorithm(
    name: str,
    doc: str,
    make_policy: Callable[[TrainingRun], Policy],
    flags: tuple[str, ...] = (),
    options: tuple[Option, ...] = (),
) -> Algorithm:
    """An algorithm whose every rank group is a replica running :func:`replica_program`
    with the policy ``make_policy(run)``; register it with
    :func:`hpcnet.algos.register`, which declares its ``options`` (the policy reads
    them from ``run.cfg``)."""
    return Algorithm(
        name=name,
        doc=doc,
        layout=LayoutRule(),
        programs={"replica": replica_program(make_policy)},
        options=options,
        flags=flags,
        describe=describe,
        resumable=True,
        survives=True,
        setup=elastic.setup,
        regroup=elastic.regroup,
    )


@rule("hpcnet.algos.data_parallel")
def _periodic_validation(cfg) -> None:
    """``--eval-every`` evaluates the validation split at step boundaries every replica
    shares with the same parameters: sync's."""
    if cfg.run.eval_every:
        need(cfg, cfg.data.val_fraction > 0, "run.eval_every", "needs --val-fraction F")
        need(
            cfg,
            cfg.algo.name == "sync",
            "run.eval_every",
            f"periodic validation is sync's (replicas in step, the same parameters), not "
            f"{cfg.algo.name}'s; every algorithm reports val_accuracy at the end",
        )


@rule("hpcnet.algos.data_parallel")
def _replacing_split_replicas(cfg) -> None:
    """``--replace-lost`` spawns one process per dead one; a sync/avg replica split into
    partitions retires whole when one dies (hpcnet.algos.elastic), so nothing would
    take its place."""
    need(
        cfg,
        not (cfg.faults.replace_lost and cfg.algo.partitions > 1 and cfg.algo.name != "downpour"),
        "faults.replace_lost",
        "cannot replace a partition of a split replica (--partitions): the replica retires "
        "whole when one of its partitions dies",
    )
