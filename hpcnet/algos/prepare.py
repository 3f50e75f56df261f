"""What every training algorithm does before and after its own loop.

:func:`prepare` (collective) validates the layout and backend with no
communication, has rank 0 find/convert/validate the data and create the output
directory (broadcasting the result or the error), builds the model and sets the
compute threads. :func:`evaluate` measures the test split, :func:`report`
prints and writes the results files on rank 0.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.warmup import compile_kernels
from hpcnet.comm import (
    allreduce_sum,
    ranks_on_node,
    root_then_bcast,
    same_on_every_rank,
    set_error_report,
)
from hpcnet.config import Config, replace, save_config
from hpcnet.data.format import DatasetInfo, open_dataset
from hpcnet.data.loader import BatchLoader, eval_batches
from hpcnet.data.registry import resolve_data
from hpcnet.errors import ConfigError
from hpcnet.kernels import Backend, get_backend
from hpcnet.kernels.threads import set_threads
from hpcnet.layout import Layout, layout_for
from hpcnet.modelpar import check_partitions
from hpcnet.nn.model import Model
from hpcnet.nn.zoo import build_model, default_model
from hpcnet.run.metrics import MetricsLog, make_out_dir, write_summary


@dataclass
class Prepared:
    """Everything a training algorithm starts from, the same on every rank."""

    cfg: Config  # resolved: model name and output directory filled in
    layout: Layout
    backend: Backend
    info: DatasetInfo
    model: Model
    out: Path
    threads: int
    t_start: float
    compile_s: float = 0.0  # kernel compilation (or cache loading) before training, seconds
    log: MetricsLog | None = None  # rank 0 only
    extra: dict[str, Any] = field(default_factory=dict)


def prepare(cfg: Config, comm: MPI.Intracomm) -> Prepared:
    """Validates and sets up a run. Collective over ``comm``, same config on every rank.

    Raises:
        HpcnetError (every rank, same message): bad layout, backend, data, model or
        output directory.
    """
    t_start = time.perf_counter()
    with same_on_every_rank():  # config-only checks, before any communication
        layout = layout_for(cfg, comm.Get_size())
        backend = get_backend(cfg.run.backend)
    info = root_then_bcast(lambda: open_dataset(resolve_data(cfg.data.name)), comm)
    model_name = cfg.model.name
    if model_name == "auto":
        model_name = default_model(cfg.data.name)
    with same_on_every_rank():  # depends only on the config and the broadcast info
        model = build_model(model_name, info.image_shape, info.num_classes)
        if layout.partitions > 1:
            check_partitions(model, cfg.algo.partition_scheme, layout.partitions)
        per_replica = info.n_train // layout.replicas
        if per_replica < cfg.run.batch_size:
            raise ConfigError(
                f"--batch-size {cfg.run.batch_size}: larger than the {per_replica} training "
                f"rows each of the {layout.replicas} replicas gets from {info.path.name}"
            )
    out = root_then_bcast(lambda: make_out_dir(cfg.run.out), comm)
    set_error_report(out, str(layout.role(comm.Get_rank())))  # OUT/error-rank-K.txt
    cfg = replace(cfg, run={"out": str(out)}, model={"name": model_name})
    node_ranks = ranks_on_node(comm)  # once: threads and the exchanges' spin use it
    threads = set_threads(cfg.run.threads, node_ranks)
    prep = Prepared(cfg, layout, backend, info, model, out, threads, t_start)
    prep.extra["node_ranks"] = node_ranks
    if comm.Get_rank() == 0:
        save_config(cfg, out / "config.toml")
        prep.log = MetricsLog(out)
    # compile once per node, before any timing starts (throughput excludes compilation)
    prep.compile_s, _ = compile_kernels(model, backend, comm, say=comm.Get_rank() == 0)
    return prep


def train_loader(prep: Prepared, replica: int) -> BatchLoader:
    """The training-split :class:`BatchLoader` of replica ``replica`` (of ``layout.replicas``),
    with the run's batch size, seed, normalisation and ``[data] augment`` settings."""
    cfg = prep.cfg
    return BatchLoader(
        prep.info.path,
        replica=replica,
        n_replicas=prep.layout.replicas,
        batch_size=cfg.run.batch_size,
        seed=cfg.run.seed,
        mean=prep.info.mean,
        std=prep.info.std,
        split="train",
        augment=cfg.data.augment,
        crop_pad=cfg.data.crop_pad,
    )


def announce(prep: Prepared, details: str, verbose: bool) -> None:
    """Rank 0: prints one line describing the run and where its config is (the whole
    resolved config too with ``--verbose``)."""
    if prep.log is None or not verbose:
        return
    info, model = prep.info, prep.model
    if prep.cfg.run.verbose:
        print("# resolved config\n" + prep.cfg.to_toml(), flush=True)
    print(
        f"hpcnet: {prep.layout.describe()}; data {info.path.name} "
        f"({info.n_train:,} train / {info.n_test:,} test, {info.image_shape}); "
        f"{model.name} {model.n_params:,} params; backend {prep.backend.name}, "
        f"{prep.threads} thread(s)/rank; {details}; config in {prep.out / 'config.toml'}",
        flush=True,
    )


def evaluate(
    prep: Prepared, replica: int | None, comm: MPI.Intracomm, net=None
) -> tuple[float, float]:
    """Test loss (mean, nats) and accuracy of ``prep.model`` over the whole test split.

    Each of the ``layout.replicas`` replicas evaluates its own slice of rows;
    ranks with ``replica=None`` (shards, coordinator) contribute nothing.
    Collective over ``comm``: every rank of it must call, and together they
    must cover replica indices ``0 .. replicas-1`` exactly once (with model
    parallelism: ``comm`` is one partition index's ``data_comm`` and ``net`` the
    :class:`~hpcnet.modelpar.PartitionedModel`, collective over its partitions too).
    """
    net = prep.model if net is None else net
    loss_sum = correct = count = 0.0
    if replica is not None:
        for x, y in eval_batches(
            prep.info.path,
            replica=replica,
            n_replicas=prep.layout.replicas,
            batch_size=max(prep.cfg.run.batch_size, 256),
            mean=prep.info.mean,
            std=prep.info.std,
            split="test",
        ):
            ls, c = net.evaluate(x, y, prep.backend)
            loss_sum, correct, count = loss_sum + ls, correct + c, count + len(y)
    tot = allreduce_sum(np.array([loss_sum, correct, count]), comm)
    return float(tot[0] / tot[2]), float(tot[1] / tot[2])


def model_parallel_summary(part, batch: int, layout: Layout, comm: MPI.Intracomm) -> dict[str, Any]:
    """The partition layout and bytes exchanged per training step, for summary.json.

    Every rank reports (gathered over ``comm``, the world: collective; ranks that
    are not replicas pass ``part=None``); the figures are replica 0's partitions
    (every replica does the same work).

    Returns:
        ``scheme``, ``partitions``, and per partition: owned parameters, plan, bytes
        sent/received per step as counted and from the scheme's formula.
    """
    mine = None
    if part is not None:
        mine = part.describe()
        mine["expected_bytes_sent_per_step"], mine["expected_bytes_recv_per_step"] = (
            part.expected_bytes(batch)
        )
    every = comm.allgather(mine)
    per = [every[r] for r in layout.replica_ranks(0)]
    return {
        "scheme": per[0]["scheme"],
        "partitions": layout.partitions,
        "bytes_sent_per_step": sum(d["bytes_sent_per_step"] for d in per),
        "bytes_expected_per_step": sum(d["expected_bytes_sent_per_step"] for d in per),
        "per_partition": per,
    }


def base_summary(prep: Prepared, comm: MPI.Intracomm) -> dict[str, Any]:
    """The summary fields every algorithm reports."""
    return {
        "algo": prep.cfg.algo.name,
        "model": prep.model.name,
        "dataset": prep.cfg.data.name,
        "data_file": str(prep.info.path),
        "world_size": comm.Get_size(),
        "layout": prep.layout.to_dict(),
        "layout_text": prep.layout.describe(),
        "batch_size": prep.cfg.run.batch_size,
        "n_params": prep.model.n_params,
        "backend": prep.backend.name,
        "threads_per_rank": prep.threads,
        "compile_s": prep.compile_s,
    }


def report(prep: Prepared, summary: dict[str, Any], verbose: bool) -> None:
    """Rank 0: prints the final line, then writes the test record and summary.json.

    The line is printed first, so the result is not lost if the output
    directory has vanished. ``summary`` must hold test_accuracy, test_loss,
    steps, samples_per_s, wall_s.
    """
    if prep.log is None:
        return
    summary.setdefault("config", prep.cfg.to_dict())
    summary.setdefault("out", str(prep.out))
    if verbose:
        print(
            f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}"
            f"  ({summary['steps']} steps, {summary['samples_per_s']:,.0f} samples/s, "
            f"{summary['wall_s']:.1f} s; results in {prep.out})",
            flush=True,
        )
    prep.log.write(
        {
            "event": "test",
            "step": summary["steps"],
            "test_loss": summary["test_loss"],
            "test_accuracy": summary["test_accuracy"],
            "elapsed_s": summary["wall_s"],
        }
    )
    prep.log.close()
    write_summary(prep.out, summary)
