"""The training loop of the synchronous algorithms (``sync``, ``avg``), and
:func:`train`, which dispatches to the algorithm a config names.

:func:`train` is SPMD: every rank of the communicator calls it with the same
config. For ``sync``/``avg`` (after :func:`hpcnet.algos.common.prepare`):

1. rank 0 initialises the flat parameter vector from the seed and broadcasts it;
2. each replica trains on its own rows for the same number of steps; the
   algorithm's hooks do the communication (an allreduce per step or per k steps);
3. the test split is evaluated in slices over the replicas and summed;
4. rank 0 writes OUT/config.toml, OUT/metrics.jsonl and OUT/summary.json.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.avg import ParameterAveraging
from hpcnet.algos.common import (
    Prepared,
    announce,
    base_summary,
    evaluate,
    model_parallel_summary,
    prepare,
    report,
    train_loader,
)
from hpcnet.algos.sync import SyncSGD
from hpcnet.comm import allreduce_sum, bcast_, split_role_comms
from hpcnet.comm.exchange import Exchange
from hpcnet.config import Config
from hpcnet.modelpar import partition_model
from hpcnet.optim.schedules import lr_at, scaled_lr
from hpcnet.optim.sgd import SGD
from hpcnet.run.metrics import progress_line

__all__ = ["train"]


def train(cfg: Config, comm: MPI.Intracomm, verbose: bool = True) -> dict[str, Any]:
    """Trains with the algorithm ``cfg.algo.name`` on every rank of ``comm``.

    Collective over ``comm``: every rank must call it with the same config.

    Returns:
        The summary dict (every rank gets it; only rank 0 writes files); the
        final flat parameters ((n_params,) float32) are under ``"_params"``.
    Raises:
        HpcnetError (every rank, same message): bad layout, backend, data or output dir.
    """
    prep = prepare(cfg, comm)
    if prep.cfg.algo.name == "downpour":
        from hpcnet.algos.downpour import train_downpour

        return train_downpour(prep, comm, verbose)
    if prep.cfg.algo.name == "sandblaster":
        from hpcnet.algos.sandblaster import train_sandblaster

        return train_sandblaster(prep, comm, verbose)
    return _train_synchronous(prep, comm, verbose)


def _train_synchronous(prep: Prepared, comm: MPI.Intracomm, verbose: bool) -> dict[str, Any]:
    cfg, layout, model, backend = prep.cfg, prep.layout, prep.model, prep.backend
    comms = split_role_comms(layout, comm)
    data_comm = comms.data_comm
    replica, n_replicas = comms.role.index, layout.replicas
    loader = train_loader(prep, replica)
    spe = loader.steps_per_epoch
    total_steps = spe * cfg.run.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    log_every = cfg.run.log_every or max(1, min(spe, total_steps // 20))

    if comm.Get_rank() == 0:
        model.init(cfg.run.seed)
    bcast_(model.params, comm)
    model.seed_dropout(cfg.run.seed, replica)

    o = cfg.optim
    total_batch = cfg.run.batch_size * n_replicas
    target_lr = scaled_lr(o.lr, total_batch, o.reference_batch, o.lr_scaling)
    warmup_steps = round(o.warmup_epochs * spe)
    start_lr = o.lr if o.lr_scaling == "linear" else 0.1 * target_lr
    net, part = model, None  # part: this rank's partition of a split replica
    if layout.partitions > 1:
        exchange = Exchange(comms.replica_comm, node_ranks=prep.extra["node_ranks"])
        part = partition_model(model, cfg.algo.partition_scheme, exchange, cfg.algo.micro_batches)
        net = part
    n_train = part.n_owned if part else model.n_params  # the entries this rank updates
    opt = SGD(n_train, momentum=o.momentum, weight_decay=o.weight_decay)
    if cfg.algo.name == "sync":
        algo = SyncSGD(data_comm)
    else:
        algo = ParameterAveraging(data_comm, cfg.algo.avg_every)
    announce(
        prep,
        f"{spe} steps/epoch x {cfg.run.epochs} epochs = {total_steps} steps; "
        f"total batch {total_batch}, lr {target_lr:g}"
        + (f"; {layout.partitions} partitions per replica ({part.scheme})" if part else ""),
        verbose,
    )

    step = 0
    first_step_s = 0.0
    acc = np.zeros(4)  # loss sum, correct, samples, samples since the last line
    t_train = time.perf_counter()
    t_log = t_train
    last = {"loss": float("nan"), "accuracy": float("nan")}
    epoch = 0
    try:
        while step < total_steps:
            for x, y in loader.batches(epoch):
                loss, correct = net.loss_and_grad(x, y, backend)
                grads = part.pack(model.grads) if part else model.grads
                params = part.pack(model.params) if part else model.params
                algo.after_backward(grads)
                lr = lr_at(step, target_lr, warmup_steps, start_lr, o.lr_schedule, total_steps)
                opt.step(params, grads, lr)
                algo.after_step(step, params)
                if part:
                    part.unpack(params, model.params)
                step += 1
                acc += (loss * len(y), correct, len(y), len(y))
                if step == 1:  # kept out of throughput: first-call costs (buffers, caches)
                    first_step_s = time.perf_counter() - t_train
                    t_log = time.perf_counter()
                    acc[3] = 0
                if step % log_every == 0 or step == total_steps:
                    tot = allreduce_sum(acc, data_comm)
                    now = time.perf_counter()
                    last = {
                        "epoch": epoch + 1,
                        "step": step,
                        "total_steps": total_steps,
                        "loss": tot[0] / tot[2],
                        "accuracy": tot[1] / tot[2],
                        "lr": lr,
                        "samples_per_s": tot[3] / max(now - t_log, 1e-9) if tot[3] else None,
                        "first_step_s": first_step_s,
                        "elapsed_s": now - prep.t_start,
                    }
                    if prep.log is not None:
                        prep.log.write(last)
                        if verbose:
                            print(progress_line(last), flush=True)
                    acc[:] = 0
                    t_log = now
                if step >= total_steps:
                    break
            epoch += 1
    finally:
        loader.close()
    if part:
        params = part.pack(model.params)
        algo.finish(params)
        part.unpack(params, model.params)
    else:
        algo.finish(model.params)
    train_s = time.perf_counter() - t_train
    test_loss, test_acc = evaluate(prep, replica, data_comm, net)
    summary = base_summary(prep, comm)
    if part:
        part.assemble(model.params)  # every partition ends with the whole vector
        summary["model_parallel"] = model_parallel_summary(part, cfg.run.batch_size, layout, comm)
    summary.update(
        {
            "epochs": step / spe,
            "steps": step,
            "steps_per_epoch": spe,
            "total_batch": total_batch,
            "allreduces": algo.allreduces,
            "final_train_loss": last["loss"],
            "final_train_accuracy": last["accuracy"],
            "test_accuracy": test_acc,
            "test_loss": test_loss,
            # throughput after the first step (its time is reported on its own)
            "samples_per_s": (
                (step - 1) * total_batch / (train_s - first_step_s)
                if step > 1
                else step * total_batch / train_s
            ),
            "first_step_s": first_step_s,
            "train_s": train_s,
            "wall_s": time.perf_counter() - prep.t_start,
        }
    )
    report(prep, summary, verbose)
    comms.free()
    summary["_params"] = model.params
    return summary
