"""Run configuration: frozen dataclasses <- TOML file <- command-line flags.

A config has one section per concern (``[run]``, ``[data]``, ``[model]``,
``[optim]``, ``[algo]``). Every field can be set in the TOML file and
overridden by a typed flag (see :data:`FLAGS`); unknown keys, wrong types and
out-of-range values are :class:`hpcnet.errors.ConfigError` naming the file or
flag. Validation uses no MPI, so every rank rejects a bad config the same way
before any communication.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli_w

from hpcnet.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass(frozen=True)
class RunConfig:
    """How long and where: epochs, batch, seed, output, compute."""

    epochs: int = 30
    max_steps: int = 0  # 0 = no limit; else stop after this many steps (smoke runs)
    batch_size: int = 32  # per replica, samples
    seed: int = 0
    out: str = ""  # "" = runs/<timestamp>
    backend: str = "auto"
    threads: int = 0  # compute threads per rank; 0 = cores / ranks on this node
    log_every: int = 0  # steps between progress lines; 0 = ~20 lines per run, >= 1 per epoch
    verbose: bool = False  # print the whole resolved config at start (it is always in OUT)
    checkpoint_every: int = (
        0  # steps between checkpoints (OUT/checkpoint.h5); 0 = the final one only
    )
    checkpoint_every_s: float = 0.0  # seconds between checkpoints (rank 0's clock); 0 = off
    keep_checkpoints: int = 2  # checkpoints kept in OUT (the newest is OUT/checkpoint.h5)
    resume: str = ""  # continue the run in this OUT from its newest checkpoint
    resume_fallback: bool = False  # with resume: fall back to an older intact checkpoint
    timeout: float = 300.0  # seconds any rank may wait for another (the watchdog), > 0
    tensorboard: bool = True  # also write OUT/tb/ event files (when tensorboardX is installed)


@dataclass(frozen=True)
class DataConfig:
    """Which dataset: a path to an hpcnet .h5 file or a known name."""

    name: str = "digits"
    augment: bool = False  # random crop (zero padding crop_pad) + horizontal flip, training only
    crop_pad: int = 2  # pixels of padding on each side for the random crop


@dataclass(frozen=True)
class ModelConfig:
    """Which zoo model; ``auto`` picks the dataset's default."""

    name: str = "auto"


@dataclass(frozen=True)
class OptimConfig:
    """SGD settings and the large-minibatch rules of Goyal et al. 2017."""

    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    lr_scaling: str = "none"  # none | linear
    reference_batch: int = 256  # samples; the batch at which lr is the base lr under linear scaling
    warmup_epochs: float = 0.2
    lr_schedule: str = "cosine"  # constant | cosine (decay to 0 at the end of the run)


@dataclass(frozen=True)
class AlgoConfig:
    """The training algorithm: ``sync`` (allreduce of gradients every step) or
    ``avg`` (parameter averaging every ``avg_every`` local steps)."""

    name: str = "sync"
    avg_every: int = 8
    shards: int = 1  # downpour: parameter shard ranks
    replicas: int = 0  # downpour: replica ranks; 0 = all ranks that are not shards
    partitions: int = 1  # model parallelism: ranks per replica (Dean et al. 2012, sec. 3)
    partition_scheme: str = "neurons"  # neurons (split every layer) | pipeline (layer groups)
    micro_batches: int = 0  # pipeline: micro-batches per batch (GPipe); 0 = 2 x partitions
    # sync: MiB per gradient bucket, each allreduced as soon as backward has produced it
    # (overlap, as DDP's buckets); 0 = one allreduce of the whole vector after backward
    bucket_mb: float = 0.0


@dataclass(frozen=True)
class PSConfig:
    """Downpour's parameter server (Dean et al. 2012, sec. 4.1)."""

    n_fetch: int = 1  # steps between parameter fetches
    n_push: int = 1  # steps between gradient pushes
    rule: str = "adagrad"  # update rule at the shards: sgd | adagrad
    warm_start_steps: int = 0  # replica 0 trains alone for this many steps first
    replica_timeout: float = 60.0  # seconds without a heartbeat before a replica is lost
    read_own_writes: bool = False  # wait for own pushes to be applied before each fetch
    # inbox slots per client at each shard: 2 lets a replica push while the shard still
    # applies its previous push (double buffering, twice the inbox memory); 1 = wait
    inbox_slots: int = 2
    # bounded staleness (SSP, Ho et al. 2013): a replica at step c waits until every live
    # replica has reached c - max_staleness; -1 = none (plain Downpour), 0 = lock-step
    max_staleness: int = -1


@dataclass(frozen=True)
class LBFGSConfig:
    """Sandblaster L-BFGS (Dean et al. 2012, sec. 4.2)."""

    m: int = 10  # (s, y) pairs kept
    unit_size: int = 0  # rows per work unit; 0 = a tenth of a replica's share
    units_per_push: int = 4  # kept units a replica sums before pushing to the shards
    batch: int = 0  # rows per evaluation pass; 0 = the whole training split


@dataclass(frozen=True)
class FaultConfig:
    """Injected faults, for tests and demos."""

    fail_replica: int = -1  # replica index that stops; -1 = none
    fail_at_step: int = 0  # ... after this many of its steps (work units for sandblaster)
    slow_replica: int = -1  # replica index made slower; -1 = none
    slow_factor: float = 1.0  # ... by this factor
    # under fault tolerance (mpiexec --with-ft ulfm): spawn a new process for each one
    # that died, which joins the run (downpour)
    replace_lost: bool = False
    # downpour: the most replicas the run may grow to on request (python -m hpcnet grow
    # OUT); 0 = the run never adds replicas
    max_replicas: int = 0


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    ps: PSConfig = field(default_factory=PSConfig)
    lbfgs: LBFGSConfig = field(default_factory=LBFGSConfig)
    faults: FaultConfig = field(default_factory=FaultConfig)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The resolved config as TOML text (loadable with ``--config``)."""
        return tomli_w.dumps(self.to_dict())


# flag -> (section, field, help). Types come from the dataclass fields.
FLAGS: dict[str, tuple[str, str, str]] = {
    "--algo": (
        "algo",
        "name",
        "training algorithm: sync | avg | downpour | sandblaster (python -m hpcnet info "
        "--algo NAME shows its layout)",
    ),
    "--avg-every": ("algo", "avg_every", "avg: local steps between parameter averages"),
    "--bucket-mb": (
        "algo",
        "bucket_mb",
        "sync: MiB per gradient bucket, each allreduced while backward goes on "
        "(0: one allreduce after backward)",
    ),
    "--shards": ("algo", "shards", "downpour: parameter shard ranks"),
    "--replicas": ("algo", "replicas", "downpour: replica ranks (0: all non-shard ranks)"),
    "--partitions": ("algo", "partitions", "model parallelism: ranks per replica (M)"),
    "--partition-scheme": (
        "algo",
        "partition_scheme",
        "model parallelism: neurons (split each layer) | pipeline (layer groups)",
    ),
    "--micro-batches": ("algo", "micro_batches", "pipeline: micro-batches per batch (0: 2 M)"),
    "--n-fetch": ("ps", "n_fetch", "downpour: steps between parameter fetches"),
    "--n-push": ("ps", "n_push", "downpour: steps between gradient pushes"),
    "--ps-rule": ("ps", "rule", "downpour: update rule at the shards: sgd | adagrad"),
    "--warm-start-steps": ("ps", "warm_start_steps", "downpour: replica 0 trains alone first"),
    "--replica-timeout": ("ps", "replica_timeout", "downpour: seconds of silence = lost"),
    "--inbox-slots": ("ps", "inbox_slots", "downpour: inbox slots per replica at a shard: 1 | 2"),
    "--read-own-writes": (
        "ps",
        "read_own_writes",
        "downpour: fetch only after own pushes are applied",
    ),
    "--max-staleness": (
        "ps",
        "max_staleness",
        "downpour: bounded staleness (SSP): a replica waits until every live replica is at "
        "most this many steps behind it (0: lock-step; -1: none, plain Downpour)",
    ),
    "--lbfgs-m": ("lbfgs", "m", "sandblaster: L-BFGS history pairs"),
    "--unit-size": ("lbfgs", "unit_size", "sandblaster: rows per work unit (0: auto)"),
    "--units-per-push": ("lbfgs", "units_per_push", "sandblaster: units summed per push"),
    "--lbfgs-batch": ("lbfgs", "batch", "sandblaster: rows per evaluation pass (0: all)"),
    "--slow-replica": ("faults", "slow_replica", "make this replica slower (-1: none)"),
    "--slow-factor": ("faults", "slow_factor", "... by this factor"),
    "--fail-replica": ("faults", "fail_replica", "make this replica stop (-1: none)"),
    "--fail-at-step": ("faults", "fail_at_step", "... after this many of its steps"),
    "--replace-lost": (
        "faults",
        "replace_lost",
        "downpour under mpiexec --with-ft ulfm: a new process replaces each that died",
    ),
    "--max-replicas": (
        "faults",
        "max_replicas",
        "downpour: the run may grow to this many replicas when asked (python -m hpcnet grow "
        "OUT); 0: never",
    ),
    "--model": (
        "model",
        "name",
        "zoo model (mlp, wide_mlp, lenet, 2conv, digits_cnn, linear, alexnet, towers) or auto",
    ),
    "--data": ("data", "name", "an hpcnet .h5 file, or digits | fashion-mnist"),
    "--augment": ("data", "augment", "random crop and horizontal flip of training images"),
    "--crop-pad": ("data", "crop_pad", "augment: zero padding (pixels) for the random crop"),
    "--epochs": ("run", "epochs", "passes over the training data"),
    "--max-steps": ("run", "max_steps", "stop after this many steps (0: no limit)"),
    "--batch-size": ("run", "batch_size", "samples per replica per step"),
    "--seed": ("run", "seed", "seed for initialisation, shuffling and dropout"),
    "--out": ("run", "out", "output directory (default runs/<timestamp>)"),
    "--backend": ("run", "backend", "compute backend: auto | cpu | cuda"),
    "--threads": ("run", "threads", "compute threads per rank (0: cores / local ranks)"),
    "--log-every": (
        "run",
        "log_every",
        "steps between progress lines (0: ~20 per run, at least 1 per epoch)",
    ),
    "--verbose": ("run", "verbose", "print the whole resolved config at start"),
    "--checkpoint-every": (
        "run",
        "checkpoint_every",
        "steps between checkpoints in OUT/checkpoint.h5 (0: only the final one)",
    ),
    "--checkpoint-every-s": (
        "run",
        "checkpoint_every_s",
        "seconds between checkpoints, as agreed at a step boundary (0: off)",
    ),
    "--keep-checkpoints": ("run", "keep_checkpoints", "checkpoints kept in OUT (>= 1)"),
    "--resume": ("run", "resume", "continue the run in this OUT from its newest checkpoint"),
    "--tensorboard": (
        "run",
        "tensorboard",
        "write TensorBoard event files in OUT/tb (needs the tensorboard extra; default on)",
    ),
    "--resume-fallback": (
        "run",
        "resume_fallback",
        "with --resume: use the newest intact checkpoint if the newest is damaged",
    ),
    "--timeout": (
        "run",
        "timeout",
        "watchdog: seconds a rank may wait for another before the job ends with a stall "
        "report naming it (exit 124; 3x for the first step)",
    ),
    "--lr": ("optim", "lr", "base learning rate"),
    "--momentum": ("optim", "momentum", "SGD momentum in [0, 1)"),
    "--weight-decay": ("optim", "weight_decay", "L2 weight decay"),
    "--lr-scaling": ("optim", "lr_scaling", "none | linear (Goyal et al. 2017)"),
    "--reference-batch": ("optim", "reference_batch", "total batch at which lr is the base lr"),
    "--warmup-epochs": ("optim", "warmup_epochs", "epochs of gradual linear lr warmup"),
    "--lr-schedule": ("optim", "lr_schedule", "after warmup: constant | cosine (decay to 0)"),
}

_SECTION_CLASSES = {
    "run": RunConfig,
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "algo": AlgoConfig,
    "ps": PSConfig,
    "lbfgs": LBFGSConfig,
    "faults": FaultConfig,
}


def _field_type(section: str, name: str) -> type:
    for f in fields(_SECTION_CLASSES[section]):
        if f.name == name:
            return {"int": int, "float": float, "str": str, "bool": bool}[
                f.type if isinstance(f.type, str) else f.type.__name__
            ]
    raise KeyError(name)


def add_train_flags(parser: argparse.ArgumentParser) -> None:
    """Adds ``--config`` and every flag of :data:`FLAGS` to ``parser`` (default: unset)."""
    parser.add_argument("--config", metavar="FILE.toml", help="TOML config file; flags override it")
    for flag, (section, name, help_) in FLAGS.items():
        typ = _field_type(section, name)
        if typ is bool:  # --flag / --no-flag
            parser.add_argument(
                flag,
                dest=f"{section}.{name}",
                default=None,
                action=argparse.BooleanOptionalAction,
                help=help_,
            )
            continue
        parser.add_argument(
            flag,
            dest=f"{section}.{name}",
            type=typ,
            default=None,
            metavar=typ.__name__.upper(),
            help=help_,
        )


def read_toml(path: str | os.PathLike, kind: str = "config file") -> dict[str, Any]:
    """The TOML document in ``path`` (a ``kind``: named in errors).

    Raises:
        ConfigError: missing, unreadable or not TOML; one line naming ``path``.
    """
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: {kind} not found") from None
    except tomllib.TOMLDecodeError as e:
        first = str(e).splitlines()[0] if str(e) else "parse error"
        raise ConfigError(f"{path}: not valid TOML: {first}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read {kind}: {e.strerror}") from None


def _load_toml(path: str) -> dict[str, dict[str, Any]]:
    doc = read_toml(path)
    out: dict[str, dict[str, Any]] = {}
    for section, table in doc.items():
        if section not in _SECTION_CLASSES or not isinstance(table, dict):
            raise ConfigError(
                f"{path}: unknown section [{section}]; expected one of "
                f"{', '.join('[' + s + ']' for s in _SECTION_CLASSES)}"
            )
        for key, value in table.items():
            try:
                typ = _field_type(section, key)
            except KeyError:
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}]") from None
            if typ is float and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            if not isinstance(value, typ) or (isinstance(value, bool) and typ is not bool):
                raise ConfigError(
                    f"{path}: [{section}] {key} must be {typ.__name__}, got {value!r}"
                )
            out.setdefault(section, {})[key] = value
    return out


def load_config(config_file: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Builds and validates a Config from defaults, a TOML file, then flag overrides.

    Args:
        config_file: path of a TOML file, or None.
        overrides: ``{"section.field": value}`` (None values are ignored), as
            :func:`add_train_flags` leaves them in the argparse namespace.
    Raises:
        ConfigError: unreadable file, unknown key, wrong type or invalid value.
    """
    values = _load_toml(config_file) if config_file else {}
    for key, value in (overrides or {}).items():
        if value is None or "." not in key:
            continue
        section, name = key.split(".", 1)
        if section in _SECTION_CLASSES:
            values.setdefault(section, {})[name] = value
    cfg = Config(**{s: cls(**values.get(s, {})) for s, cls in _SECTION_CLASSES.items()})
    validate(cfg)
    return cfg


def _flag_for(section: str, name: str) -> str:
    for flag, (s, n, _) in FLAGS.items():
        if (s, n) == (section, name):
            return flag
    return f"[{section}] {name}"


def validate(cfg: Config) -> None:
    """Checks values that types alone do not; raises ConfigError naming the flag."""

    def need(ok: bool, section: str, name: str, what: str) -> None:
        if not ok:
            value = getattr(getattr(cfg, section), name)
            raise ConfigError(f"{_flag_for(section, name)} {value!r}: {what}")

    from hpcnet.algos import algorithm_names, get_algorithm  # the registry (sits above)

    r, o, a = cfg.run, cfg.optim, cfg.algo
    names = algorithm_names()
    need(a.name in names, "algo", "name", f"unknown algorithm; choose one of {', '.join(names)}")
    need(a.avg_every >= 1, "algo", "avg_every", "must be >= 1")
    need(r.epochs >= 1, "run", "epochs", "must be >= 1")
    need(r.max_steps >= 0, "run", "max_steps", "must be >= 0 (0: no limit)")
    need(r.batch_size >= 1, "run", "batch_size", "must be >= 1")
    need(r.seed >= 0, "run", "seed", "must be >= 0")
    need(r.threads >= 0, "run", "threads", "must be >= 0 (0: automatic)")
    need(r.log_every >= 0, "run", "log_every", "must be >= 0 (0: automatic)")
    need(r.backend in ("auto", "cpu", "cuda"), "run", "backend", "choose auto, cpu or cuda")
    need(r.checkpoint_every >= 0, "run", "checkpoint_every", "must be >= 0 steps (0: final only)")
    need(r.checkpoint_every_s >= 0, "run", "checkpoint_every_s", "must be >= 0 seconds (0: off)")
    need(r.keep_checkpoints >= 1, "run", "keep_checkpoints", "must be >= 1")
    need(r.timeout > 0, "run", "timeout", "must be > 0 seconds")
    need(
        not (r.resume or r.checkpoint_every or r.checkpoint_every_s)
        or get_algorithm(a.name).resumable,
        "run",
        "resume"
        if r.resume
        else "checkpoint_every"
        if r.checkpoint_every
        else "checkpoint_every_s",
        f"{a.name} cannot checkpoint its state or resume yet (only its final parameters are saved)",
    )
    need(o.lr > 0, "optim", "lr", "must be > 0")
    need(0 <= o.momentum < 1, "optim", "momentum", "must be in [0, 1)")
    need(o.weight_decay >= 0, "optim", "weight_decay", "must be >= 0")
    need(o.lr_scaling in ("none", "linear"), "optim", "lr_scaling", "choose none or linear")
    need(o.reference_batch >= 1, "optim", "reference_batch", "must be >= 1")
    need(o.warmup_epochs >= 0, "optim", "warmup_epochs", "must be >= 0")
    need(
        o.lr_schedule in ("constant", "cosine"), "optim", "lr_schedule", "choose constant or cosine"
    )
    need(bool(cfg.data.name), "data", "name", "must name a file or a dataset")
    need(cfg.data.crop_pad >= 0, "data", "crop_pad", "must be >= 0 pixels")
    p, f = cfg.ps, cfg.faults

    def only_for(algo: str, unset: bool, section: str, key: str, whose: str) -> None:
        """A setting of one algorithm's, left at its default by the others."""
        need(unset or a.name == algo, section, key, f"{whose} (--algo {algo}), not {a.name}'s")

    need(a.bucket_mb >= 0, "algo", "bucket_mb", "must be >= 0 MiB (0: one allreduce)")
    only_for("sync", a.bucket_mb == 0, "algo", "bucket_mb", "gradient buckets are sync's")
    need(a.shards >= 0, "algo", "shards", "must be >= 0")
    need(a.replicas >= 0, "algo", "replicas", "must be >= 0 (0: all non-shard ranks)")
    need(a.partitions >= 1, "algo", "partitions", "must be >= 1")
    need(
        a.partition_scheme in ("neurons", "pipeline"),
        "algo",
        "partition_scheme",
        "choose neurons or pipeline",
    )
    need(a.micro_batches >= 0, "algo", "micro_batches", "must be >= 0 (0: 2 x partitions)")
    need(
        a.partitions == 1 or get_algorithm(a.name).supports_partitions,
        "algo",
        "partitions",
        f"{a.name} does not split replicas yet; use "
        + ", ".join(n for n in names if get_algorithm(n).supports_partitions),
    )
    need(p.n_fetch >= 1, "ps", "n_fetch", "must be >= 1")
    need(p.n_push >= 1, "ps", "n_push", "must be >= 1")
    need(p.rule in ("sgd", "adagrad"), "ps", "rule", "choose sgd or adagrad")
    need(p.warm_start_steps >= 0, "ps", "warm_start_steps", "must be >= 0")
    need(p.replica_timeout > 0, "ps", "replica_timeout", "must be > 0 seconds")
    need(p.inbox_slots in (1, 2), "ps", "inbox_slots", "choose 1 or 2")
    need(p.max_staleness >= -1, "ps", "max_staleness", "must be >= 0 steps (-1: none)")
    only_for(
        "downpour", p.max_staleness == -1, "ps", "max_staleness", "bounded staleness is Downpour's"
    )
    need(
        p.max_staleness == -1 or p.warm_start_steps == 0,
        "ps",
        "max_staleness",
        "cannot be combined with --warm-start-steps (replica 0 would wait for the others "
        "while they wait for its warm start); drop one of them",
    )
    need(f.fail_replica >= -1, "faults", "fail_replica", "must be a replica index or -1")
    need(f.fail_at_step >= 0, "faults", "fail_at_step", "must be >= 0")
    need(f.slow_replica >= -1, "faults", "slow_replica", "must be a replica index or -1")
    need(f.slow_factor >= 1.0, "faults", "slow_factor", "must be >= 1")
    need(f.max_replicas >= 0, "faults", "max_replicas", "must be >= 0 (0: never grow)")
    only_for(
        "downpour", f.max_replicas == 0, "faults", "max_replicas", "adding replicas is Downpour's"
    )
    need(
        f.max_replicas == 0 or a.partitions == 1,
        "faults",
        "max_replicas",
        "cannot grow a run whose replicas are split (--partitions)",
    )
    lb = cfg.lbfgs
    need(lb.m >= 1, "lbfgs", "m", "must be >= 1")
    need(lb.unit_size >= 0, "lbfgs", "unit_size", "must be >= 0 (0: automatic)")
    need(lb.units_per_push >= 1, "lbfgs", "units_per_push", "must be >= 1")
    need(lb.batch >= 0, "lbfgs", "batch", "must be >= 0 (0: all rows)")


def replace(cfg: Config, **sections: dict[str, Any]) -> Config:
    """A copy of ``cfg`` with some fields changed, e.g. ``replace(cfg, run={"out": "x"})``."""
    return dataclasses.replace(
        cfg, **{s: dataclasses.replace(getattr(cfg, s), **kv) for s, kv in sections.items()}
    )


def save_config(cfg: Config, path: Path) -> None:
    """Writes the resolved config as TOML."""
    Path(path).write_text(cfg.to_toml())
