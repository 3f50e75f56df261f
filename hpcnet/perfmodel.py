"""A cost model of hpcnet's three ways to scale: sync allreduce, Downpour, model parallelism.

Pure arithmetic (no MPI, no NumPy): every function takes times in seconds, sizes in
bytes, bandwidths in bytes/s and returns seconds or samples/s, so the tests can check
it against hand-computed values. ``benchmarks/scale_model.py`` fits its inputs on one
machine (compute per sample, allreduce and RMA alpha/beta) and compares its
predictions with measured runs and with published figures.

Communication follows the alpha-beta (Hockney) model: sending ``n`` bytes over one
link costs ``alpha + n / beta`` (alpha: latency, seconds; beta: bandwidth, bytes/s).

Sources:

* Allreduce: Thakur, Rabenseifner & Gropp, "Optimization of collective
  communication operations in MPICH", IJHPCA 19(1), 2005, sec. 4.5 (recursive
  doubling, Rabenseifner's reduce-scatter + allgather, binomial trees) and
  Patarasuk & Yuan, "Bandwidth optimal all-reduce algorithms for clusters of
  workstations", JPDC 69(2), 2009 (the ring reaches the lower bound
  2 (p-1)/p n/beta). Reduction arithmetic (gamma) is left out.
* Downpour: Dean et al., "Large Scale Distributed Deep Networks", NIPS 2012,
  sec. 4.1 (replicas fetch every n_fetch steps, push every n_push steps; each
  parameter shard holds 1/S of the parameters).
* Model parallelism: Dean et al. 2012, sec. 3 and Fig. 3 (a model's layers split
  over M machines; only activations crossing a partition boundary are sent).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FLOAT32 = 4  # bytes


@dataclass(frozen=True)
class Cluster:
    """The machines a run is predicted for.

    Attributes:
        latency: alpha, seconds per message on a link.
        bandwidth: beta, bytes/s of one link between two ranks (inside a node: the
            shared-memory or NVLink copy rate).
        nic_bandwidth: bytes/s of a node's network interface, one direction
            (0: the same as ``bandwidth``; only used when ranks span nodes).
        nic_latency: alpha between nodes, seconds (0: the same as ``latency``).
        cores_per_node: processes a node runs at full speed; more ranks than cores
            share them, and compute slows by ranks / cores.
        ranks_per_node: ranks placed on each node.
        slowdown: measured, where known: ``slowdown[k - 1]`` is how many times longer
            one rank's compute step takes while k ranks compute at once on a node
            (wall time per step of k simultaneous copies over one alone; it includes
            what ranks / cores leaves out: caches refilled after every switch between
            ranks sharing a core, shared memory bandwidth, hyperthreads). Empty, or k
            beyond it: max(1, k / cores).
    """

    latency: float
    bandwidth: float
    nic_bandwidth: float = 0.0
    nic_latency: float = 0.0
    cores_per_node: int = 1 << 30
    ranks_per_node: int = 1
    slowdown: tuple[float, ...] = ()

    @property
    def nic_bw(self) -> float:
        return self.nic_bandwidth or self.bandwidth

    @property
    def nic_alpha(self) -> float:
        return self.nic_latency or self.latency


def oversubscription(ranks: int, cluster: Cluster) -> float:
    """How much slower one rank computes because ranks share a node: the measured
    ``cluster.slowdown`` for the busy ranks on a node where it is known, else
    max(1, busy ranks on a node / cores per node) (1 when every rank has a core)."""
    return node_slowdown(min(ranks, cluster.ranks_per_node), cluster)


def node_slowdown(on_node: int, cluster: Cluster) -> float:
    """How much slower one rank computes while ``on_node`` ranks compute on its node:
    ``cluster.slowdown[on_node - 1]`` where measured, else max(1, on_node / cores)."""
    on_node = max(1, on_node)
    if on_node <= len(cluster.slowdown):
        return float(cluster.slowdown[on_node - 1])
    return max(1.0, on_node / cluster.cores_per_node)


# --------------------------------------------------------------------------- allreduce


def ring_allreduce_s(n_bytes: float, p: int, alpha: float, beta: float) -> float:
    """Ring allreduce (reduce-scatter then allgather, p-1 steps each) of ``n_bytes`` on
    ``p`` ranks: 2 (p-1) alpha + 2 (p-1)/p n/beta seconds (Patarasuk & Yuan 2009; the
    same cost as Rabenseifner's algorithm's bandwidth term, Thakur et al. 2005)."""
    if p <= 1:
        return 0.0
    return 2 * (p - 1) * alpha + 2 * (p - 1) / p * n_bytes / beta


def tree_allreduce_s(n_bytes: float, p: int, alpha: float, beta: float) -> float:
    """Binomial-tree reduce then broadcast of ``n_bytes`` on ``p`` ranks:
    2 ceil(log2 p) (alpha + n/beta) seconds (Thakur et al. 2005, sec. 4.5)."""
    if p <= 1:
        return 0.0
    return 2 * math.ceil(math.log2(p)) * (alpha + n_bytes / beta)


def allreduce_s(n_bytes: float, p: int, alpha: float, beta: float) -> tuple[float, str]:
    """The cheaper of the ring and the tree for ``n_bytes`` on ``p`` ranks, and its name
    (MPICH picks by message size much the same way: trees/recursive doubling for short
    messages, where latency rules; bandwidth-optimal algorithms for long ones)."""
    ring = ring_allreduce_s(n_bytes, p, alpha, beta)
    tree = tree_allreduce_s(n_bytes, p, alpha, beta)
    return (ring, "ring") if ring <= tree else (tree, "tree")


def cluster_allreduce_s(n_bytes: float, p: int, cluster: Cluster) -> float:
    """Allreduce of ``n_bytes`` over ``p`` ranks placed ``ranks_per_node`` to a node.

    One node: :func:`allreduce_s` on the link. Several nodes: hierarchical (as Goyal
    et al. 2017, sec. 4, and NCCL do): reduce-scatter and allgather inside each node
    (ring, link bandwidth) around an allreduce between the nodes of each rank's
    1/ranks_per_node slice; all slices cross the one NIC, so the inter-node part moves
    2 (N-1)/N n bytes through it (N nodes).

    Returns:
        seconds.
    """
    rpn = min(cluster.ranks_per_node, p)
    nodes = math.ceil(p / rpn)
    if nodes <= 1:
        return allreduce_s(n_bytes, p, cluster.latency, cluster.bandwidth)[0]
    intra = ring_allreduce_s(n_bytes, rpn, cluster.latency, cluster.bandwidth)
    inter, _ = allreduce_s(n_bytes, nodes, cluster.nic_alpha, cluster.nic_bw)
    return intra + inter


# --------------------------------------------------------------------------- sync


@dataclass(frozen=True)
class Prediction:
    """A predicted configuration.

    Attributes:
        step_s: seconds per step of one replica.
        samples_per_s: all replicas together.
        efficiency: samples_per_s / (replicas x one replica's samples/s alone).
        bound: what limits it (``compute``, ``allreduce``, ``replica``, ``shard NIC``,
            ``shard apply``, ``cores``, ``link``).
    """

    step_s: float
    samples_per_s: float
    efficiency: float
    bound: str


def predict_sync(
    compute_s_per_sample: float,
    batch: int,
    n_params: int,
    replicas: int,
    cluster: Cluster,
    overlap: float = 0.0,
    step_overhead_s: float = 0.0,
    allreduce_time_s: float | None = None,
) -> Prediction:
    """Synchronous data parallelism: step = compute(batch) x oversubscription +
    (1 - overlap) x allreduce(4 n_params bytes) + the parameter update (counted in
    ``compute_s_per_sample``).

    Args:
        compute_s_per_sample: seconds of forward + backward + update per sample on one
            rank with a core of its own.
        batch: samples per replica per step.
        n_params: float32 parameters (the allreduced gradient).
        replicas: R ranks, one replica each.
        cluster: the machines.
        overlap: fraction of the allreduce hidden behind backward (0..1).
        step_overhead_s: seconds of CPU work per step outside the model and the
            communication (the training loop: batches, metrics, Python); it slows
            with oversubscription like compute.
        allreduce_time_s: seconds of the gradient allreduce measured for exactly
            ``replicas`` ranks on these machines (e.g. alpha + n/beta fitted to the
            training's own allreduce at that world size, which includes how its ranks
            wait and any sharing of cores); None: the cluster's ring/tree cost
            (:func:`cluster_allreduce_s`).
    """
    compute = compute_s_per_sample * batch + step_overhead_s
    if allreduce_time_s is None:
        allreduce_time_s = cluster_allreduce_s(FLOAT32 * n_params, replicas, cluster)
    comm = (1.0 - overlap) * allreduce_time_s if replicas > 1 else 0.0
    over = oversubscription(replicas, cluster)
    step = compute * over + comm
    shared = min(replicas, cluster.ranks_per_node) > cluster.cores_per_node
    bound = "allreduce" if comm > compute * over else "cores" if shared else "compute"
    return Prediction(step, replicas * batch / step, compute / step, bound)


# --------------------------------------------------------------------------- Downpour


@dataclass(frozen=True)
class RmaCost:
    """Alpha-beta fits of one-sided calls between a replica and a shard (seconds,
    bytes/s): ``fetch`` is ``Get`` + ``Flush``, ``push`` is ``Put`` + ``Flush``,
    plus the shard's update rule in seconds per float32 (``apply_s_per_float``)."""

    fetch_alpha: float
    fetch_beta: float
    push_alpha: float
    push_beta: float
    apply_s_per_float: float


def predict_downpour(
    compute_s_per_sample: float,
    batch: int,
    n_params: int,
    replicas: int,
    shards: int,
    rma: RmaCost,
    cluster: Cluster,
    n_fetch: int = 1,
    n_push: int = 1,
    shared_cores: bool = False,
    step_overhead_s: float = 0.0,
) -> Prediction:
    """Downpour: R replicas, S parameter shards of n_params / S floats each.

    A replica's step: compute(batch) + (fetch of all shards) / n_fetch + (push to all
    shards) / n_push, the shards reached one after the other (hpcnet's client does).
    A shard serves every replica: per replica step it sends 4 n/S / n_fetch bytes,
    receives 4 n/S / n_push bytes through its NIC and applies 1 / n_push updates of
    n/S floats. Replicas run at min(R / replica step, 1 / shard time per replica
    step) steps/s: saturation where R x (bytes per step) / S passes the NIC's bandwidth
    or R x apply / n_push passes a shard's core.

    With ``shared_cores`` (all R + S ranks on one node of ``cores_per_node`` cores,
    as on the validation machine) there is no NIC between replica and shard (a fetch
    is the replica's own copy out of shared memory), but more ranks than cores slow
    every rank's CPU work, the replicas' compute and the shard's apply, by
    :func:`node_slowdown` of R + S ranks ((R + S) / cores unless measured): a
    replica waiting for its push slot polls and stays runnable, so all ranks compete;
    and the node's cores bound the total CPU work, compute + apply / n_push per
    replica step.

    ``step_overhead_s`` is added to a replica's compute, as in :func:`predict_sync`.

    Returns:
        the prediction; ``efficiency`` against R x one replica alone with a free shard.
    """
    part = FLOAT32 * n_params / shards  # bytes per shard
    fetch = shards * (rma.fetch_alpha + part / rma.fetch_beta) / n_fetch
    push = shards * (rma.push_alpha + part / rma.push_beta) / n_push
    compute = compute_s_per_sample * batch + step_overhead_s
    alone = compute + fetch + push
    apply = rma.apply_s_per_float * n_params / shards / n_push  # s per replica step
    nic = part * (1.0 / n_fetch + 1.0 / n_push) / cluster.nic_bw  # s per replica step
    over = 1.0
    if shared_cores:
        over = node_slowdown(replicas + shards, cluster)
        nic = 0.0
    step = compute * over + fetch + push
    apply_wall = apply * over
    bounds = {
        "replica": replicas / step,
        "shard apply": 1.0 / apply_wall if apply_wall > 0 else math.inf,
        "shard NIC": 1.0 / nic if nic > 0 else math.inf,
    }
    if shared_cores:
        cpu = compute + rma.apply_s_per_float * n_params / n_push
        bounds["cores"] = cluster.cores_per_node / cpu
    bound = min(bounds, key=bounds.get)
    steps_per_s = bounds[bound]
    return Prediction(
        replicas / steps_per_s, steps_per_s * batch, steps_per_s * alone / replicas, bound
    )


# --------------------------------------------------------------------------- model parallelism


def predict_modelpar(
    compute_s_per_sample: float,
    batch: int,
    partitions: int,
    boundary_bytes_per_sample: float,
    messages_per_step: int,
    cluster: Cluster,
    imbalance: float = 1.0,
    partition_compute_s: float | None = None,
) -> Prediction:
    """Model parallelism, one replica on M partitions (Dean et al. 2012, sec. 3):
    step = compute(batch) / M x imbalance + messages x alpha + batch x bytes / beta,
    over the NIC when the partitions sit on separate nodes (``ranks_per_node`` 1),
    else over the link; oversubscribed cores slow the compute as elsewhere.

    ``compute / M x imbalance`` is Amdahl's best case: a partition's narrower matrix
    products run at the full rate and nothing is left unsplit (per-layer overheads,
    the replicated loss). Where the slowest partition's compute has been measured,
    pass it as ``partition_compute_s``.

    Args:
        boundary_bytes_per_sample: bytes one partition sends (= receives; full duplex)
            per sample, forward and backward together, for this M.
        messages_per_step: exchanges per step that each pay the latency.
        imbalance: the slowest partition's share of compute x M (1: an even split).
        partition_compute_s: seconds of forward + backward (+ its share of the update)
            of the slowest partition per step, on a core of its own; replaces
            ``compute / M x imbalance``.

    Returns:
        the prediction; ``efficiency`` is speed-up / M, speed-up = samples_per_s x
        compute_s_per_sample.
    """
    compute = compute_s_per_sample * batch
    if partitions <= 1:
        return Prediction(compute, batch / compute, 1.0, "compute")
    apart = cluster.ranks_per_node == 1
    alpha = cluster.nic_alpha if apart else cluster.latency
    beta = cluster.nic_bw if apart else cluster.bandwidth
    if partition_compute_s is None:
        partition_compute_s = compute / partitions * imbalance
    comp = partition_compute_s * oversubscription(partitions, cluster)
    comm = messages_per_step * alpha + batch * boundary_bytes_per_sample / beta
    step = comp + comm
    speedup = compute / step
    return Prediction(
        step, batch / step, speedup / partitions, "compute" if comp >= comm else "link"
    )


def fc_boundary_bytes(widths: list[int], partitions: int) -> float:
    """Bytes one partition sends per sample when every fully connected layer is split by
    neurons over M partitions: each layer's output slice (width / M floats) goes to the
    M - 1 others forward, and its input-gradient slice back; the input of the first
    layer is replicated (Dean et al. 2012, Fig. 1: edges crossing machines).

    Args:
        widths: the hidden layers' widths whose activations cross partitions.
    """
    m = partitions
    return 2 * sum(FLOAT32 * w / m * (m - 1) for w in widths)


def halo_bytes(side: int, maps: int, halo: int, layers: int, partitions: int) -> float:
    """Bytes one partition sends per sample when locally connected layers on a
    side x side map (``maps`` channels) are split into a sqrt(M) x sqrt(M) grid of
    tiles: a halo of ``halo`` pixels along the 4 tile edges, forward and backward,
    per layer (Dean et al. 2012, sec. 3: locally connected models need little
    cross-machine traffic)."""
    if partitions <= 1:
        return 0.0
    tile = side / math.sqrt(partitions)
    return 2 * layers * 4 * halo * tile * maps * FLOAT32
