"""The algorithm registry: a name (``--algo``) -> an :class:`Algorithm`.

An algorithm is declared, not wired in: its layout rule (which roles its ranks
take, and so the error that says how many ranks each needs), the flags it reads,
and one program per role. The shared run lifecycle
(:mod:`hpcnet.algos.lifecycle`) does everything else the same way for every
algorithm: validation, data, the model and its initial parameters, progress
records, the end-of-run meeting, evaluation and the results files. Adding an
algorithm is one module that builds an :class:`Algorithm` and calls
:func:`register` (tests/e2e/toy_algorithm.py does it in one file).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpcnet.errors import ConfigError
from hpcnet.layout import LayoutRule

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.lifecycle import Run

# the flags of every algorithm with parameter shards: the layout and losing replicas
SHARDED_FLAGS = ("--shards", "--replicas", "--replica-timeout", "--fail-replica", "--fail-at-step")

# role kind ("replica", "shard", "coordinator") -> the program that rank runs; it
# returns what this rank reports (a small picklable dict), gathered on rank 0.
RoleProgram = Callable[["Run"], dict[str, Any]]


@dataclass(frozen=True)
class Algorithm:
    """One training algorithm, as the lifecycle drives it.

    Attributes:
        name: the ``--algo`` value.
        doc: one line: what it does, with its source (paper, section).
        layout: the roles its ranks take (:class:`hpcnet.layout.LayoutRule`).
        programs: role kind -> :data:`RoleProgram`; every role of ``layout`` needs one
            (replicas always).
        flags: the command-line flags it reads beyond the common ones (``--epochs``,
            ``--lr``, ...), for ``info`` and the help text.
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
            on ``--resume`` (:meth:`hpcnet.algos.lifecycle.Run.save_checkpoint`).
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
    flags: tuple[str, ...] = ()
    setup: Callable[[Run], Any] | None = None
    finish: Callable[[Run], None] | None = None
    summarise: Callable[[Run, list[tuple[str, dict]], float], dict[str, Any]] | None = None
    describe: Callable[[Run], str] | None = None
    supports_partitions: bool = True
    resumable: bool = False
    survives: bool = False
    regroup: Callable[[Run, dict[str, Any]], None] | None = None

    def __post_init__(self):
        need = {"replica"}
        if self.layout.coordinators:
            need.add("coordinator")
        if self.layout.shards:
            need.add("shard")
        missing = need - set(self.programs)
        if missing:
            raise ValueError(f"algorithm {self.name!r}: no program for role(s) {sorted(missing)}")


_REGISTRY: dict[str, Algorithm] = {}


def register(algo: Algorithm, *, replace: bool = False) -> Algorithm:
    """Adds ``algo`` under ``algo.name``; returns it.

    Raises:
        ValueError: the name is taken (pass ``replace=True`` to re-register on purpose).
    """
    if algo.name in _REGISTRY and not replace and _REGISTRY[algo.name] is not algo:
        raise ValueError(f"algorithm {algo.name!r} is already registered")
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
