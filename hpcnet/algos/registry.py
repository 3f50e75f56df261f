"""The algorithm registry: a name (``--algo``) -> an :class:`Algorithm`.

An algorithm is declared, not wired in: its layout rule (which roles its ranks
take, and so the error that says how many ranks each needs), the flags it reads,
and one program per role. The shared run lifecycle
(:mod:`hpcnet.algos.lifecycle`) does everything else the same way for every
algorithm: validation, data, the model and its initial parameters, progress
records, the end-of-run meeting, evaluation and the results files. Adding an
algorithm is one module that builds an :class:`Algorithm` (with the options it reads,
:class:`hpcnet.options.Option`) and calls :func:`register`, which declares them:
``--help``, config files, the docs and ``info`` know them from then on
(tests/e2e/toy_algorithm.py does it in one file).

The options every algorithm with parameter shards reads (the replicas' heartbeat
deadline, injected faults) and the checks that need the registry (a known
``--algo``, whether it resumes or splits replicas) are declared here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import hpcnet.config  # noqa: F401  the sections every run has come first, then these
from hpcnet.errors import ConfigError
from hpcnet.layout import LayoutRule
from hpcnet.options import Option, declare, need, option, rule, section

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import TrainingRun

# the flags of every algorithm with parameter shards: the layout and losing replicas
SHARDED_FLAGS = ("--shards", "--replicas", "--replica-timeout", "--fail-replica", "--fail-at-step")

# role kind ("replica", "shard", "coordinator") -> the program that rank runs; it
# returns what this rank reports (a small picklable dict), gathered on rank 0.
RoleProgram = Callable[["TrainingRun"], dict[str, Any]]


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm, as the lifecycle drives it.

    Attributes:
        name: the ``--algo`` value.
        doc: one line: what it does, with its source (paper, section).
        layout: the roles its ranks take (:class:`hpcnet.layout.LayoutRule`).
        programs: role kind -> :data:`RoleProgram`; every role of ``layout`` needs one
            (replicas always).
        options: its own settings (:class:`hpcnet.options.Option`), declared by
            :func:`register`; their sections must be declared first
            (:func:`hpcnet.options.section`).
        flags: the flags of options declared elsewhere that it reads beyond the common
            ones (``--epochs``, ``--lr``, ...), e.g. :data:`SHARDED_FLAGS`, for ``info``.
        setup: collective over the run's communicator, after the initial parameters
            are on every rank and before any role program: builds what the roles
            share (e.g. RMA windows), kept as ``run.shared``. None: nothing.
        finish: collective, after every role program has returned and the ranks have
            met: leaves the final parameters in ``run.model.params`` on every rank
            (e.g. gathers the shards' slices) and frees what ``setup`` built. None:
            every rank keeps the parameters it has.
        summarise: rank 0 only: the algorithm's summary fields from every rank's
            ``(role, result)`` (world-rank order) and the training seconds; must give
            ``steps``, ``epochs``, ``samples_per_s``. None: the replicas' own
            ``steps``/``epochs``/``samples_per_s`` of replica 0.
        describe: the part of the start-up line that is the algorithm's (steps,
            shard ranges, ...); None: the step budget.
        supports_partitions: whether its replicas may be split (``--partitions``).
        resumable: whether its programs save their state at checkpoints and restore it
            on ``--resume`` (:meth:`hpcnet.algos.lifecycle.TrainingRun.save_checkpoint`).
        survives: whether a run goes on when a replica's process dies (under fault
            tolerance, :mod:`hpcnet.comm.ft`): its programs never wait for one replica
            without a deadline after which they go on without it, and ``finish`` and
            ``summarise`` work over the survivors (``run.comm``, ``run.live``).
        regroup: collective over the live ranks after a program raised
            :class:`~hpcnet.algos.lifecycle.Regroup` (a rank it needs died): sets the run
            up again over them; None: such a death ends the run.
    """

    name: str
    doc: str
    layout: LayoutRule
    programs: Mapping[str, RoleProgram]
    options: tuple[Option, ...] = ()
    flags: tuple[str, ...] = ()
    setup: Callable[[TrainingRun], Any] | None = None
    finish: Callable[[TrainingRun], None] | None = None
    summarise: Callable[[TrainingRun, list[tuple[str, dict]], float], dict[str, Any]] | None = None
    describe: Callable[[TrainingRun], str] | None = None
    supports_partitions: bool = True
    resumable: bool = False
    survives: bool = False
    regroup: Callable[[TrainingRun, dict[str, Any]], None] | None = None

    def __post_init__(self):
        need = {"replica"}
        if self.layout.coordinators:
            need.add("coordinator")
        if self.layout.shards:
            need.add("shard")
        missing = need - set(self.programs)
        if missing:
            raise ValueError(f"algorithm {self.name!r}: no program for role(s) {sorted(missing)}")

    @property
    def all_flags(self) -> tuple[str, ...]:
        """The flags of its own options, then the other flags it reads."""
        return tuple(o.flag for o in self.options) + self.flags


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm, *, replace: bool = False) -> Algorithm:
    """Adds ``algo`` under ``algo.name``; returns it.

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to re-register on purpose).
    """
    if algo.name in _REGISTRY and not replace and _REGISTRY[algo.name] is not algo:
        raise ValueError(f"algorithm {algo.name!r} is already registered")
    declare(*algo.options, owner=f"algorithm {algo.name}")
    _REGISTRY[algo.name] = algo
    return algo


def algorithm_names() -> tuple[str, ...]:
    """The registered names, in registration order (the built-in ones first)."""
    return tuple(_REGISTRY)


def get_algorithm(name: str) -> Algorithm:
    """The algorithm registered as ``name``.

    Raises:
        ConfigError: no such algorithm; the message lists the registered ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"--algo {name!r}: unknown algorithm; choose one of {', '.join(_REGISTRY)}"
        ) from None


section("ps", "the parameter server: Downpour's shards and replicas (Dean et al. 2012, sec. 4.1)")
section("faults", "injected faults (tests and demos) and what a run does when a process dies")
declare(
    Option("ps.replica_timeout", 60.0, "algorithms with shards: seconds without a heartbeat "
           "before a replica is lost", check=lambda v: v > 0, must="must be > 0 seconds"),
    Option("faults.fail_replica", -1, "make this replica stop (-1: none)",
           check=lambda v: v >= -1, must="must be a replica index or -1"),
    Option("faults.fail_at_step", 0, "... after this many of its steps (sandblaster: units)",
           check=lambda v: v >= 0, must="must be >= 0"),
    Option("faults.slow_replica", -1, "make this replica slower (-1: none)",
           check=lambda v: v >= -1, must="must be a replica index or -1"),
    Option("faults.slow_factor", 1.0, "... by this factor",
           check=lambda v: v >= 1.0, must="must be >= 1"),
    owner="hpcnet.algos.registry (algorithms with parameter shards)",
)  # fmt: skip


@rule("hpcnet.algos.registry")
def _algorithm_fits(cfg) -> None:
    """A registered ``--algo`` that can do what the config asks (resume, split replicas)."""
    names = algorithm_names()
    a, r = cfg.algo, cfg.run
    need(cfg, a.name in names, "algo.name", f"unknown algorithm; choose one of {', '.join(names)}")
    algo = _REGISTRY[a.name]
    key = next(
        (k for k in ("resume", "checkpoint_every", "checkpoint_every_s") if getattr(r, k)), ""
    )
    need(
        cfg,
        not key or algo.resumable,
        f"run.{key or 'resume'}",
        f"{a.name} cannot checkpoint its state or resume yet (only its final parameters are saved)",
    )
    need(
        cfg,
        a.partitions == 1 or algo.supports_partitions,
        "algo.partitions",
        f"{a.name} does not split replicas yet; use "
        + ", ".join(n for n in names if _REGISTRY[n].supports_partitions),
    )


def only_for(cfg, algo: str, key: str, whose: str) -> None:
    """In a :func:`hpcnet.options.rule`: option ``key`` is ``algo``'s alone, so another
    ``--algo`` must leave it at its default; ``whose`` says so in the error (e.g.
    "gradient buckets are sync's").

    Raises:
        ConfigError: it is set for another algorithm, naming the flag and the owner.
    """
    section_name, name = key.split(".", 1)
    unset = getattr(getattr(cfg, section_name), name) == option(key).default
    other = cfg.algo.name
    need(cfg, unset or other == algo, key, f"{whose} (--algo {algo}), not {other}'s")
