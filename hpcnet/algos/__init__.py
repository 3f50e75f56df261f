"""Training algorithms: one registry, name (``--algo``) -> :class:`Algorithm`.

Each algorithm declares its layout rule, its flags and one program per role
(:mod:`hpcnet.algos.registry`); the shared run lifecycle
(:mod:`hpcnet.algos.lifecycle`) drives them all. The built-in ones register
themselves when this package is imported:

- ``sync`` (:mod:`~hpcnet.algos.sync`), ``avg`` (:mod:`~hpcnet.algos.avg`): the
  data-parallel replica loop of :mod:`~hpcnet.algos.data_parallel`;
- ``downpour`` (:mod:`~hpcnet.algos.downpour`): asynchronous SGD on the parameter
  server of :mod:`hpcnet.ps`;
- ``sandblaster`` (:mod:`~hpcnet.algos.sandblaster`): batch L-BFGS with a coordinator.
"""

from hpcnet.algos.registry import Algorithm, algorithm_names, get_algorithm, register

# the built-in algorithms register themselves on import, in this order
from hpcnet.algos import sync as _sync  # noqa: E402, F401  isort: skip
from hpcnet.algos import avg as _avg  # noqa: E402, F401  isort: skip
from hpcnet.algos import downpour as _downpour  # noqa: E402, F401  isort: skip
from hpcnet.algos import sandblaster as _sandblaster  # noqa: E402, F401  isort: skip
from hpcnet.algos.lifecycle import TrainingRun, train  # noqa: E402  isort: skip

__all__ = ["Algorithm", "TrainingRun", "algorithm_names", "get_algorithm", "register", "train"]
