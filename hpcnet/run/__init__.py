"""What a training run writes, low enough for ``algos/`` and ``comm/`` to use: metrics
and the summary (:mod:`~hpcnet.run.metrics`, read back by :mod:`~hpcnet.run.results`),
checkpoints (:mod:`~hpcnet.run.checkpoint`), preemption signals
(:mod:`~hpcnet.run.preempt`) and the rank notes a launcher reads
(:mod:`~hpcnet.run.ranks`). The tools that read them are in :mod:`hpcnet.tools`."""
