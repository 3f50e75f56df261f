"""The first stage of every run (:mod:`hpcnet.algos.lifecycle`).

:func:`prepare` (collective) validates the layout and backend with no
communication, has rank 0 find/convert/validate the data and create the output
directory (broadcasting the result or the error), builds the model, sets the
compute threads and compiles the kernels once per node.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.algos.registry import get_algorithm
from hpcnet.algos.resume import check_resumable, find_resume_checkpoint
from hpcnet.algos.warmup import compile_kernels
from hpcnet.comm import (
    ranks_on_node,
    root_then_bcast,
    same_on_every_rank,
    set_error_report,
)
from hpcnet.config import Config, replace, save_config
from hpcnet.data.format import DatasetInfo, open_dataset, verify_checksum
from hpcnet.data.loader import BatchLoader
from hpcnet.data.registry import resolve_data
from hpcnet.data.splits import holdout
from hpcnet.errors import ConfigError
from hpcnet.kernels import Backend, get_backend
from hpcnet.kernels.threads import set_threads
from hpcnet.layout import Layout, layout_for
from hpcnet.modelpar import check_partitions
from hpcnet.nn.model import Model
from hpcnet.nn.zoo import build_model, run_model
from hpcnet.run.metrics import MetricsLog, make_out_dir
from hpcnet.run.phases import phase


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
    node_ranks: int = 1  # ranks of the run on this node (threads, exchange spin)
    resume: dict[str, Any] | None = None  # the checkpoint a resumed run starts from


def check_run(
    cfg: Config, comm: MPI.Intracomm, say: bool = False
) -> tuple[Layout, Backend, DatasetInfo, Model]:
    """Checks that ``cfg`` can run on ``comm``: layout and backend (no communication),
    the data (found, converted if need be and validated by rank 0), the model and its
    partitioning, the batch against each replica's rows. Collective over ``comm``;
    ``say``: rank 0 reports a slow data phase (:mod:`hpcnet.run.phases`).

    Returns:
        (layout, backend, dataset info, the model built).
    Raises:
        HpcnetError (every rank, same message): what does not fit.
    """
    with same_on_every_rank():  # config-only checks, before any communication
        layout = layout_for(cfg, comm.Get_size(), get_algorithm(cfg.algo.name))
        backend = get_backend(cfg.run.backend)
    with phase("opening the data set (checksum, statistics)", say and comm.Get_rank() == 0):
        info = root_then_bcast(lambda: open_run_data(cfg), comm)
    with same_on_every_rank():  # depends only on the config and the broadcast info
        model = run_model(cfg.model, cfg.data.name, info.image_shape, info.num_classes)
        if layout.partitions > 1:
            check_partitions(model, cfg.algo.partition_scheme, layout.partitions)
        per_replica = info.n_train // layout.replicas
        if per_replica < cfg.run.batch_size:
            raise ConfigError(
                f"--batch-size {cfg.run.batch_size}: larger than the {per_replica} training "
                f"rows each of the {layout.replicas} replicas gets from {info.path.name}"
            )
    return layout, backend, info, model


def prepare(cfg: Config, comm: MPI.Intracomm, verbose: bool = True) -> Prepared:
    """Validates and sets up a run. Collective over ``comm``, same config on every rank.

    Args:
        verbose: rank 0 may print (the first-run compile notice).
    Raises:
        HpcnetError (every rank, same message): bad layout, backend, data, model or
        output directory.
    """
    t_start = time.perf_counter()
    layout, backend, info, model = check_run(cfg, comm, say=verbose)
    model_name = model.name
    if cfg.run.resume:  # the run goes on in its own OUT
        with same_on_every_rank():
            if cfg.run.out and Path(cfg.run.out).resolve() != Path(cfg.run.resume).resolve():
                raise ConfigError(
                    f"--out {cfg.run.out}: a resumed run writes into its own OUT "
                    f"({cfg.run.resume}); drop --out"
                )
        cfg = replace(cfg, run={"out": cfg.run.resume})
    out = root_then_bcast(
        lambda: make_out_dir(cfg.run.out, bool(cfg.run.resume), cfg.run.overwrite), comm
    )
    set_error_report(out, str(layout.role(comm.Get_rank())))  # OUT/error-rank-K.txt
    cfg = replace(cfg, run={"out": str(out)}, model={"name": model_name})
    resume = None
    if cfg.run.resume:
        resume = root_then_bcast(lambda: find_resume_checkpoint(cfg, verbose), comm)
        with same_on_every_rank():
            check_resumable(resume, cfg, layout)
        if verbose and comm.Get_rank() == 0:
            written = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(resume["created"])))
            print(
                f"hpcnet: resuming {out} from step {int(resume['step'])} "
                f"({Path(str(resume['path'])).name} of {written})",
                flush=True,
            )
    node_ranks = ranks_on_node(comm)  # once: threads and the exchanges' spin use it
    threads = set_threads(cfg.run.threads, node_ranks)
    prep = Prepared(cfg, layout, backend, info, model, out, threads, t_start)
    prep.node_ranks = node_ranks
    prep.resume = resume
    if comm.Get_rank() == 0:
        save_config(cfg, out / "config.toml")
        prep.log = MetricsLog(out, append=resume is not None, tensorboard=cfg.run.tensorboard)
        if prep.log.tensorboard_missing and verbose:
            print(
                "hpcnet: no TensorBoard files: tensorboardX is not installed (pip install "
                "'hpcnet[tensorboard]', or --no-tensorboard to not ask)",
                flush=True,
            )
    # compile once per node, before any timing starts (throughput excludes compilation)
    # on a model of its own: a first step on the run's model would bind it to the GPU
    # (cuda backend) before rank 0 initialises the host copy that is broadcast
    scratch = build_model(model_name, info.image_shape, info.num_classes, cfg.model.layers)
    say = verbose and comm.Get_rank() == 0
    prep.compile_s = compile_kernels(scratch, backend, comm, say=say)
    return prep


def prepare_joiner(cfg: Config) -> Prepared:
    """A process spawned to replace a dead one (fault tolerance, ``--replace-lost``): the
    run's data, model and backend from its resolved config (``cfg``: OUT/config.toml,
    the dataset file given as ``--data``), with no communication; the layout is a
    placeholder until the regroup gives it its role. Kernels load from the on-disk
    cache the run's ranks compiled."""
    t_start = time.perf_counter()
    backend = get_backend(cfg.run.backend)
    info = open_run_data(cfg)
    model = build_model(cfg.model.name, info.image_shape, info.num_classes, cfg.model.layers)
    layout = Layout(1, cfg.algo.name, 0, 0, 1)
    out = Path(cfg.run.out)
    set_error_report(out, "joining process")
    threads = set_threads(cfg.run.threads, 1)
    return Prepared(cfg, layout, backend, info, model, out, threads, t_start)


VERIFY_BELOW_BYTES = 256 << 20  # --verify-data auto: files (with shards) under this size


def data_bytes(info: DatasetInfo) -> int:
    """The bytes of a dataset's files (the main file and its shard files)."""
    return sum(p.stat().st_size for p in (info.path, *info.shard_files))


def open_run_data(cfg: Config) -> DatasetInfo:
    """The run's dataset (``--data``), validated, and its checksum checked (``--verify-data``:
    ``auto`` below :data:`VERIFY_BELOW_BYTES`); with ``--val-fraction`` its train rows
    split into the rows trained on (``train_index``, counted by ``n_train``) and the
    held-out validation rows (``val_index``: :func:`hpcnet.data.splits.holdout`).

    Raises:
        DataError: the data cannot be found or read, its checksum differs from the one it
            carries (a corrupt file), or the split leaves a part empty.
    """
    info = open_dataset(resolve_data(cfg.data.name))
    if cfg.data.verify == "always" or (
        cfg.data.verify == "auto" and data_bytes(info) < VERIFY_BELOW_BYTES
    ):
        verify_checksum(info.path)  # a corrupt file trains on garbage otherwise
    if cfg.data.val_fraction <= 0:
        return info
    keep, held = holdout(info.path, cfg.data.val_fraction, cfg.data.val_seed)
    return dataclasses.replace(info, n_train=len(keep), train_index=keep, val_index=held)


def train_loader(prep: Prepared, replica: int, n_replicas: int | None = None) -> BatchLoader:
    """The training-split :class:`BatchLoader` of replica ``replica`` of ``n_replicas``
    (None: ``layout.replicas``), with the run's batch size, seed, normalisation and
    ``[data] augment`` settings."""
    cfg = prep.cfg
    return BatchLoader(
        prep.info.path,
        replica=replica,
        n_replicas=n_replicas or prep.layout.replicas,
        batch_size=cfg.run.batch_size,
        seed=cfg.run.seed,
        mean=prep.info.mean,
        std=prep.info.std,
        split="train",
        augment=cfg.data.augment,
        crop_pad=cfg.data.crop_pad,
        index=prep.info.train_index,
    )
