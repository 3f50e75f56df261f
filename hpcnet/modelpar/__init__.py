"""Model parallelism: one model replica split across the M ranks of its ``replica_comm``.

Two schemes (``--partition-scheme``):

- ``neurons`` (:mod:`hpcnet.modelpar.neurons`): DistBelief's partitioning (Dean et
  al. 2012, sec. 3): every Dense layer split by output neurons, every Conv2D by
  output channels (by whole groups where the groups allow it), the towers of a
  ``Towers`` layer dealt out to partitions; activations cross partitions only where
  the next layer needs inputs another partition computed.
- ``pipeline`` (:mod:`hpcnet.modelpar.pipeline`): consecutive layer groups on
  consecutive partitions, the batch cut into micro-batches that flow through them
  (GPipe: Huang et al. 2019, sec. 2.2), gradients summed over micro-batches.

Both give the unpartitioned model's loss, gradients and updates to float tolerance.
"""

from __future__ import annotations

from hpcnet.comm.exchange import Exchange
from hpcnet.modelpar.base import PartitionedModel
from hpcnet.nn.model import Model
from hpcnet.options import Option, declare

declare(
    Option(
        "algo.partition_scheme",
        "neurons",
        "model parallelism: split each layer's neurons and channels, or layer groups (GPipe)",
        choices=("neurons", "pipeline"),
    ),
    Option(
        "algo.micro_batches",
        0,
        "pipeline: micro-batches per batch (0: 2 x partitions)",
        check=lambda v: v >= 0,
        must="must be >= 0 (0: 2 x partitions)",
    ),
    owner="hpcnet.modelpar",
)

SCHEMES = ("neurons", "pipeline")


def check_partitions(model: Model, scheme: str, m: int) -> None:
    """Raises ConfigError if ``model`` cannot be cut into ``m`` partitions under
    ``scheme``; needs no communication (call it alike on every rank)."""
    from hpcnet.errors import ConfigError

    if scheme == "neurons":
        from hpcnet.modelpar.neurons import check_neurons

        check_neurons(model, m)
    elif scheme == "pipeline":
        from hpcnet.modelpar.pipeline import check_pipeline

        check_pipeline(model, m)
    else:
        raise ConfigError(f"--partition-scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


def partition_model(
    model: Model, scheme: str, exchange: Exchange, micro_batches: int = 0
) -> PartitionedModel:
    """This rank's partition of ``model`` under ``scheme``.

    Args:
        model: the whole model (built identically on every partition).
        scheme: ``neurons`` or ``pipeline``.
        exchange: the counted operations on ``replica_comm`` (its size is M).
        micro_batches: pipeline only; 0 = 2 M.
    Raises:
        ConfigError: unknown scheme, or a model that cannot be cut into M partitions
            (M larger than a layer's channels, or than the number of layers).
    """
    from hpcnet.errors import ConfigError

    if scheme == "neurons":
        from hpcnet.modelpar.neurons import NeuronPartition

        return NeuronPartition(model, exchange)
    if scheme == "pipeline":
        from hpcnet.modelpar.pipeline import PipelinePartition

        return PipelinePartition(model, exchange, micro_batches or 2 * exchange.size)
    raise ConfigError(f"--partition-scheme {scheme!r}: choose one of {', '.join(SCHEMES)}")


__all__ = ["SCHEMES", "PartitionedModel", "check_partitions", "partition_model"]
