"""Ranks -> roles (docs/design.md, "Roles").

A :class:`Layout` says which world rank is a coordinator, a parameter shard or
a partition of a model replica. It is computed from the world size and the
config alone, with no communication, so every rank validates it identically
and rejects a bad one with the same message before any MPI call. Ranks are
assigned in the order: coordinator(s), parameter shards, replicas (each
replica's partitions on consecutive ranks).
"""

from __future__ import annotations

from dataclasses import dataclass

from hpcnet.errors import LayoutError


@dataclass(frozen=True)
class Role:
    """What one rank does: ``kind`` is ``coordinator``, ``shard`` or ``replica``;
    ``index`` counts within the kind; ``partition`` is the model partition (0 if unsplit)."""

    kind: str
    index: int
    partition: int = 0

    def __str__(self) -> str:
        if self.kind == "replica":
            return f"replica {self.index}" + (
                f" partition {self.partition}" if self.partition else ""
            )
        return f"{self.kind} {self.index}"


@dataclass(frozen=True)
class Layout:
    """The role of every rank of a world.

    Attributes:
        world_size: number of MPI ranks.
        algo: the algorithm the layout serves.
        coordinators, shards, replicas, partitions: how many of each
            (``partitions`` ranks per replica).
    """

    world_size: int
    algo: str
    coordinators: int
    shards: int
    replicas: int
    partitions: int = 1

    def role(self, rank: int) -> Role:
        """The role of world rank ``rank``."""
        if not 0 <= rank < self.world_size:
            raise LayoutError(f"rank {rank} outside world of size {self.world_size}")
        if rank < self.coordinators:
            return Role("coordinator", rank)
        rank -= self.coordinators
        if rank < self.shards:
            return Role("shard", rank)
        rank -= self.shards
        return Role("replica", rank // self.partitions, rank % self.partitions)

    def replica_ranks(self, replica: int) -> list[int]:
        """World ranks of the partitions of one replica."""
        first = self.coordinators + self.shards + replica * self.partitions
        return list(range(first, first + self.partitions))

    @property
    def coordinator_rank(self) -> int | None:
        """World rank of the coordinator (None when the algorithm has none)."""
        return 0 if self.coordinators else None

    @property
    def shard_ranks(self) -> list[int]:
        """World ranks of the parameter shards, shard 0 first."""
        return list(range(self.coordinators, self.coordinators + self.shards))

    @property
    def n_clients(self) -> int:
        """Parameter-server clients: one per replica partition (``replicas x partitions``)."""
        return self.replicas * self.partitions

    def client(self, replica: int, partition: int = 0) -> int:
        """The client index of one replica partition: ``replica * partitions + partition``
        (its inbox slot and counter block at every shard)."""
        return replica * self.partitions + partition

    def describe(self) -> str:
        """One line, e.g. ``4 ranks: 4 replicas (sync)``."""
        parts = []
        if self.coordinators:
            parts.append(f"{self.coordinators} coordinator")
        if self.shards:
            parts.append(f"{self.shards} parameter shard{'s' if self.shards > 1 else ''}")
        rep = f"{self.replicas} replica{'s' if self.replicas > 1 else ''}"
        if self.partitions > 1:
            rep += f" x {self.partitions} partitions"
        parts.append(rep)
        return f"{self.world_size} ranks: {' + '.join(parts)} ({self.algo})"

    def table(self) -> list[tuple[int, str]]:
        """(rank, role) for every rank."""
        out = []
        for r in range(self.world_size):
            role = self.role(r)
            text = str(role)
            if role.kind == "replica" and self.partitions > 1:
                text = f"replica {role.index} partition {role.partition}"
            out.append((r, text))
        return out

    def to_dict(self) -> dict:
        return {
            "world_size": self.world_size,
            "algo": self.algo,
            "coordinators": self.coordinators,
            "shards": self.shards,
            "replicas": self.replicas,
            "partitions": self.partitions,
        }


@dataclass(frozen=True)
class LayoutRule:
    """Which roles an algorithm's ranks take; each algorithm declares one (see
    :mod:`hpcnet.algos`). Ranks go to coordinators first, then shards, then replicas.

    Attributes:
        coordinators: coordinator ranks (0 or 1).
        shards: whether the algorithm has parameter-shard ranks (``--shards S``, S >= 1).
            With neither, every group of ``--partitions`` ranks is a replica and
            ``--replicas`` is not used.
    """

    coordinators: int = 0
    shards: bool = False

    def roles_text(self, algo: str, shards: int, replicas: int, partitions: int) -> str:
        """e.g. ``sandblaster with 1 coordinator, 2 shard(s) and 3 replica(s)``."""
        if self.coordinators:
            head = f"{self.coordinators} coordinator, {shards} shard(s)"
            return f"{algo} with {head} and {replicas} replica(s)"
        return (
            f"{algo} with {shards} shard(s) and {replicas} replica(s) of {partitions} partition(s)"
        )


def make_layout(
    world_size: int,
    algorithm,
    *,
    shards: int = 0,
    replicas: int = 0,
    partitions: int = 1,
) -> Layout:
    """The layout of ``world_size`` ranks for ``algorithm``.

    ``algorithm`` (an :class:`hpcnet.algos.Algorithm`, or anything with a ``name`` and
    a ``layout`` :class:`LayoutRule`) says which roles it has. Without shards or a
    coordinator (``sync``, ``avg``) every rank group of ``partitions`` ranks is a
    replica. Otherwise the coordinator(s) come first, then ``shards`` parameter
    shards, then ``replicas`` replicas (0: as many as the other ranks hold).

    Raises:
        LayoutError: the world size does not fit, with how many ranks each role needs.
    """
    if world_size < 1:
        raise LayoutError(f"world size {world_size}: need at least 1 rank")
    if partitions < 1:
        raise LayoutError(f"--partitions {partitions}: must be >= 1")
    algo, rule = algorithm.name, algorithm.layout
    if not rule.coordinators and not rule.shards:
        if world_size % partitions:
            raise LayoutError(
                f"{world_size} ranks cannot hold replicas of {partitions} partitions each: "
                f"{algo} needs a multiple of {partitions} ranks"
            )
        return Layout(world_size, algo, 0, 0, world_size // partitions, partitions)
    if not rule.shards:
        shards = 0
    elif shards < 1:
        raise LayoutError(f"--shards {shards}: {algo} needs at least 1 parameter shard")
    free = world_size - rule.coordinators - shards
    if replicas == 0:
        replicas = free // partitions
    need = rule.coordinators + shards + max(replicas, 1) * partitions
    if replicas < 1 or need != world_size:
        raise LayoutError(
            f"{rule.roles_text(algo, shards, max(replicas, 1), partitions)} needs {need} "
            f"ranks, got {world_size}: run mpiexec -n {need}, or change --shards/--replicas"
        )
    return Layout(world_size, algo, rule.coordinators, shards, replicas, partitions)


def layout_for(cfg, world_size: int, algorithm) -> Layout:
    """The layout a run config asks for on ``world_size`` ranks, for the algorithm it
    names (``algorithm``, as :func:`make_layout` takes it)."""
    a = cfg.algo
    return make_layout(
        world_size, algorithm, shards=a.shards, replicas=a.replicas, partitions=a.partitions
    )
