"""A new algorithm in one file: local SGD, each replica trains alone and nothing is
communicated (the lower bound every data-parallel algorithm should beat).

Registering it is all it takes: the run lifecycle (data, initial parameters,
progress records, evaluation, results files), the layout rule, ``--algo`` and
``info`` come from hpcnet. ``tests/e2e/test_toy_algorithm.py`` runs it under
``mpiexec`` like any built-in algorithm::

    mpiexec -n 2 python tests/e2e/toy_algorithm.py train --algo local_sgd
"""

from __future__ import annotations

import numpy as np

from hpcnet.algos import register
from hpcnet.algos.synchronous import synchronous_algorithm


class NoCommunication:
    """The policy: no hook communicates, so each replica keeps its own parameters."""

    allreduces = 0

    def after_backward(self, grads: np.ndarray) -> None:
        pass

    def after_step(self, step: int, params: np.ndarray) -> None:
        pass

    def finish(self, params: np.ndarray) -> None:
        pass


register(
    synchronous_algorithm(
        "local_sgd",
        "local SGD: every replica trains alone on its rows, nothing is communicated",
        lambda run: NoCommunication(),
    )
)

if __name__ == "__main__":
    from hpcnet.cli import main

    main()
