"""The training driver shared by the synchronous algorithms (``sync``, ``avg``).

:func:`train` is SPMD: every rank of the communicator calls it with the same
config. Order of events (each step's communication is the algorithm's):

1. layout and backend are validated on every rank with no communication;
2. rank 0 finds/converts and validates the data file and broadcasts its
   description (or the error, which every rank then raises);
3. rank 0 initialises the flat parameter vector from the seed and broadcasts it;
4. each replica trains on its own rows for the same number of steps;
5. the test split is evaluated in slices over the replicas and summed;
6. rank 0 writes OUT/config.toml, OUT/metrics.jsonl and OUT/summary.json.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numba
import numpy as np
from mpi4py import MPI
from threadpoolctl import threadpool_limits

from hpcnet.algos.avg import ParameterAveraging
from hpcnet.algos.sync import SyncSGD
from hpcnet.comm import (
    allreduce_sum,
    bcast_,
    ranks_on_node,
    root_then_bcast,
    same_on_every_rank,
    split_role_comms,
)
from hpcnet.config import Config, replace, save_config
from hpcnet.data.format import open_dataset
from hpcnet.data.loader import BatchLoader, eval_batches
from hpcnet.data.registry import resolve_data
from hpcnet.errors import ConfigError
from hpcnet.kernels import get_backend
from hpcnet.layout import make_layout
from hpcnet.nn.zoo import build_model, default_model
from hpcnet.optim.schedules import lr_at, scaled_lr
from hpcnet.optim.sgd import SGD
from hpcnet.run.metrics import MetricsLog, make_out_dir, progress_line, write_summary


def set_threads(threads: int, comm: MPI.Intracomm | None = None) -> int:
    """Sets the compute threads of this rank (Numba parallel loops and BLAS); returns them.

    ``threads == 0`` means this node's cores divided by its ranks of ``comm`` (at
    least 1; ``comm`` defaults to COMM_WORLD). Then it is collective over ``comm``
    (it counts the ranks per node), so every rank must call it with the same ``threads``.
    """
    if threads == 0:
        threads = max(1, (os.cpu_count() or 1) // ranks_on_node(comm or MPI.COMM_WORLD))
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    threadpool_limits(limits=threads)
    return threads


def _eval(model, backend, info, replica, n_replicas, batch, comm) -> tuple[float, float]:
    """Test loss (mean, nats) and accuracy over the whole test split, each replica
    evaluating its own rows. Collective over ``comm`` (the replicas)."""
    loss_sum = correct = count = 0.0
    for x, y in eval_batches(
        info.path,
        replica=replica,
        n_replicas=n_replicas,
        batch_size=batch,
        mean=info.mean,
        std=info.std,
        split="test",
    ):
        ls, c = model.evaluate(x, y, backend)
        loss_sum, correct, count = loss_sum + ls, correct + c, count + len(y)
    tot = allreduce_sum(np.array([loss_sum, correct, count]), comm)
    return float(tot[0] / tot[2]), float(tot[1] / tot[2])


def train(cfg: Config, comm: MPI.Intracomm, verbose: bool = True) -> dict[str, Any]:
    """Trains with ``cfg.algo.name`` (``sync`` or ``avg``) on every rank of ``comm``.

    Collective over ``comm``: every rank must call it with the same config.

    Returns:
        The summary dict (every rank gets it; only rank 0 writes files), with
        ``params`` removed; the final flat parameters are under ``"_params"``.
    Raises:
        HpcnetError (every rank, same message): bad layout, backend, data or output dir.
    """
    t_start = time.perf_counter()
    rank, size = comm.Get_rank(), comm.Get_size()
    with same_on_every_rank():  # config-only checks, before any communication
        layout = make_layout(size, cfg.algo.name)
        backend = get_backend(cfg.run.backend)
    info = root_then_bcast(lambda: open_dataset(resolve_data(cfg.data.name)), comm)
    model_name = cfg.model.name
    if model_name == "auto":
        model_name = default_model(cfg.data.name)
    with same_on_every_rank():  # depends only on the config and the broadcast info
        model = build_model(model_name, info.image_shape, info.num_classes)
        per_replica = info.n_train // layout.replicas
        if per_replica < cfg.run.batch_size:
            raise ConfigError(
                f"--batch-size {cfg.run.batch_size}: larger than the {per_replica} training "
                f"rows each of the {layout.replicas} replicas gets from {info.path.name}"
            )
    out = root_then_bcast(lambda: make_out_dir(cfg.run.out), comm)
    cfg = replace(cfg, run={"out": str(out)}, model={"name": model_name})
    threads = set_threads(cfg.run.threads, comm)
    comms = split_role_comms(layout, comm)
    role = comms.role
    data_comm = comms.data_comm
    replica, n_replicas = role.index, layout.replicas
    is_root = rank == 0

    loader = BatchLoader(
        info.path,
        replica=replica,
        n_replicas=n_replicas,
        batch_size=cfg.run.batch_size,
        seed=cfg.run.seed,
        mean=info.mean,
        std=info.std,
        split="train",
    )
    spe = loader.steps_per_epoch
    total_steps = spe * cfg.run.epochs
    if cfg.run.max_steps:
        total_steps = min(total_steps, cfg.run.max_steps)
    log_every = cfg.run.log_every or max(1, min(spe, total_steps // 20))

    if is_root:
        model.init(cfg.run.seed)
    bcast_(model.params, comm)
    model.seed_dropout(cfg.run.seed, replica)

    o = cfg.optim
    total_batch = cfg.run.batch_size * n_replicas
    target_lr = scaled_lr(o.lr, total_batch, o.reference_batch, o.lr_scaling)
    warmup_steps = round(o.warmup_epochs * spe)
    start_lr = o.lr if o.lr_scaling == "linear" else 0.1 * target_lr
    opt = SGD(model.n_params, momentum=o.momentum, weight_decay=o.weight_decay)
    if cfg.algo.name == "sync":
        algo = SyncSGD(data_comm)
    else:
        algo = ParameterAveraging(data_comm, cfg.algo.avg_every)

    log = None
    if is_root:
        save_config(cfg, out / "config.toml")
        log = MetricsLog(out)
        if verbose:
            print("# resolved config\n" + cfg.to_toml(), flush=True)
            print(
                f"hpcnet: {layout.describe()}; data {info.path.name} "
                f"({info.n_train:,} train / {info.n_test:,} test, {info.image_shape}); "
                f"{model.name} {model.n_params:,} params; backend {backend.name}, "
                f"{threads} thread(s)/rank; {spe} steps/epoch x {cfg.run.epochs} epochs "
                f"= {total_steps} steps; total batch {total_batch}, lr {target_lr:g}",
                flush=True,
            )

    step = 0
    acc_loss = acc_correct = acc_n = 0.0
    t_train = time.perf_counter()
    t_log = t_train
    n_since = 0
    last = {"loss": float("nan"), "accuracy": float("nan")}
    epoch = 0
    try:
        while step < total_steps:
            for x, y in loader.batches(epoch):
                loss, correct = model.loss_and_grad(x, y, backend)
                algo.after_backward(model.grads)
                lr = lr_at(step, target_lr, warmup_steps, start_lr, o.lr_schedule, total_steps)
                opt.step(model.params, model.grads, lr)
                algo.after_step(step, model.params)
                step += 1
                acc_loss += loss * len(y)
                acc_correct += correct
                acc_n += len(y)
                n_since += len(y)
                if step % log_every == 0 or step == total_steps:
                    tot = allreduce_sum(
                        np.array([acc_loss, acc_correct, acc_n, n_since]), data_comm
                    )
                    now = time.perf_counter()
                    rec = {
                        "epoch": epoch + 1,
                        "step": step,
                        "total_steps": total_steps,
                        "loss": tot[0] / tot[2],
                        "accuracy": tot[1] / tot[2],
                        "lr": lr,
                        "samples_per_s": tot[3] / max(now - t_log, 1e-9),
                        "elapsed_s": now - t_start,
                    }
                    last = rec
                    if log is not None:
                        log.write(rec)
                        if verbose:
                            print(progress_line(rec), flush=True)
                    acc_loss = acc_correct = acc_n = n_since = 0.0
                    t_log = now
                if step >= total_steps:
                    break
            epoch += 1
    finally:
        loader.close()
    algo.finish(model.params)
    train_s = time.perf_counter() - t_train
    samples = step * cfg.run.batch_size * n_replicas
    test_loss, test_acc = _eval(
        model, backend, info, replica, n_replicas, max(cfg.run.batch_size, 256), data_comm
    )
    wall = time.perf_counter() - t_start
    summary = {
        "algo": cfg.algo.name,
        "model": model.name,
        "dataset": cfg.data.name,
        "data_file": str(info.path),
        "world_size": size,
        "layout": layout.to_dict(),
        "layout_text": layout.describe(),
        "epochs": step / spe,
        "steps": step,
        "steps_per_epoch": spe,
        "batch_size": cfg.run.batch_size,
        "total_batch": total_batch,
        "n_params": model.n_params,
        "backend": backend.name,
        "threads_per_rank": threads,
        "allreduces": algo.allreduces,
        "final_train_loss": last["loss"],
        "final_train_accuracy": last["accuracy"],
        "test_accuracy": test_acc,
        "test_loss": test_loss,
        "samples_per_s": samples / train_s,
        "train_s": train_s,
        "wall_s": wall,
        "config": cfg.to_dict(),
        "out": str(out),
    }
    if log is not None:
        if verbose:  # print first: the result is not lost if the output dir vanished
            print(
                f"test accuracy {test_acc:.4f}  test loss {test_loss:.4f}  "
                f"({step} steps, {summary['samples_per_s']:,.0f} samples/s, "
                f"{wall:.1f} s; results in {out})",
                flush=True,
            )
        log.write(
            {
                "event": "test",
                "step": step,
                "test_loss": test_loss,
                "test_accuracy": test_acc,
                "elapsed_s": wall,
            }
        )
        log.close()
        write_summary(out, summary)
    comms.free()
    summary["_params"] = model.params
    return summary
