"""A cost model of hpcnet's training: samples/s and scaling efficiency of a layout.

Communication follows the alpha-beta (Hockney) model: a message of n bytes costs
``alpha + n / beta`` seconds (alpha: latency, s; beta: bandwidth, bytes/s), fitted
from measurements by :func:`fit_link`. Collectives follow Thakur, Rabenseifner and
Gropp, "Optimization of Collective Communication Operations in MPICH" (IJHPCA 2005),
sec. 4: ring allreduce (reduce-scatter + allgather) ``2 (p-1) alpha + 2 (p-1)/p n /
beta`` (bandwidth-optimal, Patarasuk & Yuan 2009) and binomial-tree reduce +
broadcast ``2 ceil(log2 p) (alpha + n / beta)``; MPICH takes the cheaper one.

Compute is a measured time per sample of one replica on one core, scaled by
oversubscription: ``ranks_on_node / cores`` when more ranks than cores share a node.
Downpour adds the parameter shards' limits (Dean et al., NIPS 2012, sec. 4.1): each
shard's NIC carries every replica's fetches and pushes of its slice, its core applies
every push, and on an oversubscribed node the shards' applies take cores from the
replicas. Model parallelism (sec. 3) splits compute M ways and pays the activations
that cross partition boundaries, forward and backward.

All functions are pure; ``benchmarks/scale_model.py`` (``python -m hpcnet bench
scale``) measures the inputs here and checks the predictions against real runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Link:
    """alpha-beta cost of one message: ``alpha_s + nbytes / beta_Bps`` seconds."""

    alpha_s: float  # latency, seconds
    beta_Bps: float  # bandwidth, bytes/s

    def time(self, nbytes: float) -> float:
        """Seconds to move ``nbytes`` bytes in one message."""
        return self.alpha_s + nbytes / self.beta_Bps


def fit_link(nbytes, seconds) -> Link:
    """Least-squares fit of ``seconds = alpha + nbytes / beta`` in relative error (each
    point weighted by 1 / seconds, so small messages set alpha rather than vanish
    beside the large ones); alpha clipped at 0.

    Args:
        nbytes: message sizes, bytes (at least two distinct).
        seconds: the measured time of each, seconds.
    Raises:
        ValueError: fewer than two distinct sizes, or time not growing with size.
    """
    n, t = np.asarray(nbytes, np.float64), np.asarray(seconds, np.float64)
    if len(np.unique(n)) < 2:
        raise ValueError("fit_link: needs at least two distinct message sizes")
    slope, alpha = np.polyfit(n, t, 1, w=1.0 / t)
    if slope <= 0:
        raise ValueError(f"fit_link: time does not grow with size (slope {slope:.3g} s/B)")
    return Link(max(0.0, float(alpha)), float(1.0 / slope))


def allreduce_s(nbytes: float, ranks: int, link: Link, algorithm: str = "auto") -> float:
    """Seconds for an allreduce of ``nbytes`` over ``ranks`` ranks (Thakur et al. 2005).

    Args:
        algorithm: ``ring``, ``tree`` or ``auto`` (the cheaper, as MPICH chooses).
    Raises:
        ValueError: unknown algorithm.
    """
    if ranks <= 1:
        return 0.0
    ring = 2 * (ranks - 1) * link.alpha_s + 2 * (ranks - 1) / ranks * nbytes / link.beta_Bps
    tree = 2 * math.ceil(math.log2(ranks)) * link.time(nbytes)
    if algorithm == "ring":
        return ring
    if algorithm == "tree":
        return tree
    if algorithm == "auto":
        return min(ring, tree)
    raise ValueError(f"allreduce algorithm {algorithm!r}: choose ring, tree or auto")


@dataclass(frozen=True)
class Machine:
    """Where the ranks run: nodes of ``cores_per_node`` cores holding
    ``ranks_per_node`` ranks, ``link`` between nodes, ``intra`` within one (None: the
    same as ``link``), ``nic_Bps`` bytes/s per node shared by its ranks (0: no limit).
    Within a node, communication is memory copies and sums done by the ranks' own
    cores, so it slows with oversubscription like compute does."""

    cores_per_node: int
    ranks_per_node: int
    link: Link
    nic_Bps: float = 0.0
    intra: Link | None = None

    def oversubscription(self, ranks: int) -> float:
        """How many ranks share a core, >= 1, for a job of ``ranks`` ranks."""
        return max(1.0, min(ranks, self.ranks_per_node) / self.cores_per_node)

    def link_for(self, ranks: int) -> Link:
        """The link a job of ``ranks`` ranks communicates over: within a node when it
        fits in one, else between nodes, its bandwidth capped by the node's NIC (a ring
        ordered by node crosses each NIC once per step, so the NIC is not divided)."""
        if ranks <= self.ranks_per_node:
            return self.intra or self.link
        beta = self.link.beta_Bps
        if self.nic_Bps > 0:
            beta = min(beta, self.nic_Bps)
        return Link(self.link.alpha_s, beta)

    def allreduce_s(self, nbytes: float, ranks: int, algorithm: str = "auto") -> float:
        """:func:`allreduce_s` over :meth:`link_for` ``ranks``; within one node times the
        oversubscription (the copies and sums are the ranks' own work)."""
        t = allreduce_s(nbytes, ranks, self.link_for(ranks), algorithm)
        return t * self.oversubscription(ranks) if ranks <= self.ranks_per_node else t


@dataclass(frozen=True)
class Prediction:
    """A layout's predicted step (seconds, per replica) and throughput."""

    samples_per_s: float
    step_s: float  # one replica's step, seconds
    compute_s: float  # of which compute
    comm_s: float  # of which communication (what is not hidden)
    efficiency: float  # samples/s over (replicas x one replica alone on its own core)
    bound: str  # what limits it: compute, allreduce, fetch/push, shard NIC, shard apply, cores


def predict_sync(
    compute_s_per_sample: float,
    batch: int,
    replicas: int,
    n_params: int,
    machine: Machine,
    algorithm: str = "auto",
) -> Prediction:
    """``sync``: each step computes ``batch`` samples per replica, then allreduces the
    float32 gradient (4 n_params bytes)."""
    over = machine.oversubscription(replicas)
    compute = compute_s_per_sample * batch * over
    comm = machine.allreduce_s(4.0 * n_params, replicas, algorithm)
    step = compute + comm
    sps = replicas * batch / step
    alone = replicas / compute_s_per_sample
    return Prediction(
        sps, step, compute, comm, sps / alone, "allreduce" if comm > compute else "compute"
    )


def predict_downpour(
    compute_s_per_sample: float,
    batch: int,
    replicas: int,
    shards: int,
    n_params: int,
    machine: Machine,
    fetch: Link,
    push: Link,
    apply_s_per_param: float,
    n_fetch: int = 1,
    n_push: int = 1,
) -> Prediction:
    """Downpour: R replicas each fetch the parameters every ``n_fetch`` steps and push
    gradients every ``n_push`` steps to S shards (n_params / S floats each), whose
    core applies each push (``apply_s_per_param`` seconds per parameter).
    ``compute_s_per_sample`` is a replica's: forward and backward, without the update
    (the shards do it).

    The replica's step is its compute plus its share of fetch and push (``fetch``,
    ``push``: measured on one shard; the S shards are served in parallel). The rate is
    capped by each shard's NIC share (every replica's bytes to and from it), by each
    shard's core (every push applied), and, when replicas and shards together
    oversubscribe one node, by the node's cores (compute, the copies of fetch and
    push, and the applies share them).
    """
    ranks = replicas + shards
    piece = 4.0 * n_params / shards  # bytes a shard serves per fetch or push
    compute = compute_s_per_sample * batch
    comm = fetch.time(piece) / n_fetch + push.time(piece) / n_push
    if ranks > machine.ranks_per_node and machine.nic_Bps > 0:  # the replica's own NIC share
        comm = max(comm, 4.0 * n_params * (1 / n_fetch + 1 / n_push) * machine.ranks_per_node
                   / machine.nic_Bps)  # fmt: skip
    limits = {"fetch/push": 1.0 / (compute + comm)}
    apply_per_step = replicas / n_push * (n_params / shards) * apply_s_per_param
    limits["shard apply"] = 1.0 / apply_per_step if apply_per_step > 0 else math.inf
    if ranks > machine.ranks_per_node and machine.nic_Bps > 0:
        shard_bytes = replicas * piece * (1 / n_fetch + 1 / n_push)
        limits["shard NIC"] = machine.nic_Bps / machine.ranks_per_node / shard_bytes
    on_node = min(ranks, machine.ranks_per_node)
    if on_node > machine.cores_per_node:  # compute and applies share the node's cores
        cpu_per_step = replicas * (compute + comm) + shards * apply_per_step
        limits["cores"] = machine.cores_per_node / cpu_per_step
    bound = min(limits, key=limits.get)
    rate = limits[bound]  # steps/s of each replica
    step = 1.0 / rate
    sps = replicas * batch * rate
    alone = replicas / compute_s_per_sample
    if bound == "fetch/push" and comm < compute:
        bound = "compute"
    return Prediction(sps, step, compute, step - compute, sps / alone, bound)


def predict_model_parallel(
    compute_s_per_sample: float,
    batch: int,
    partitions: int,
    boundary_bytes_per_sample: float,
    messages_per_step: int,
    machine: Machine,
    parallel_fraction: float = 1.0,
) -> Prediction:
    """One replica split into M partitions (DistBelief sec. 3): the parallel fraction of
    compute runs M ways (Amdahl), and each step moves ``boundary_bytes_per_sample`` x
    batch bytes across partition boundaries forward and again backward, in
    ``messages_per_step`` messages (each paying the link's latency).

    Args:
        boundary_bytes_per_sample: bytes one partition sends and receives per sample
            per direction (for fully connected layers: the other partitions'
            activations; for locally connected ones: only the borders).
    """
    link = machine.link_for(partitions)
    serial = compute_s_per_sample * batch
    compute = serial * ((1 - parallel_fraction) + parallel_fraction / partitions)
    compute *= machine.oversubscription(partitions)
    comm = 0.0
    if partitions > 1:
        comm = 2 * (messages_per_step * link.alpha_s
                    + boundary_bytes_per_sample * batch / link.beta_Bps)  # fmt: skip
    step = compute + comm
    bound = "boundary" if comm > compute else "compute"
    return Prediction(batch / step, step, compute, comm, serial / step / partitions, bound)
