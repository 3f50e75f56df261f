"""A new algorithm in one file: local SGD, each replica trains alone and nothing is
communicated (the lower bound every data-parallel algorithm should beat).

Registering it is all it takes: the run lifecycle (data, initial parameters,
progress records, evaluation, results files), the layout rule, ``--algo`` and
``info`` come from hpcnet, and its one option (``--final-average``, declared in the
``register`` call) is in ``--help``, config files and the checks from then on.
``tests/e2e/test_toy_algorithm.py`` runs it under ``mpiexec`` like any built-in
algorithm::

    mpiexec -n 2 python tests/e2e/toy_algorithm.py train --algo local_sgd
"""

from __future__ import annotations

import numpy as np

from hpcnet.algos import register
from hpcnet.algos.data_parallel import synchronous_algorithm
from hpcnet.comm import allreduce_mean_
from hpcnet.options import Option


class NoCommunication:
    """The policy: no hook communicates, so each replica keeps its own parameters; with
    ``--final-average`` the replicas average their parameters once at the end
    (Zinkevich et al. 2010's one-shot averaging)."""

    def __init__(self, comm, final_average: bool):
        self.comm, self.final_average = comm, final_average
        self.allreduces = 0

    def after_backward(self, grads: np.ndarray) -> None:
        pass

    def after_step(self, step: int, params: np.ndarray) -> None:
        pass

    def finish(self, params: np.ndarray) -> None:
        if self.final_average:
            allreduce_mean_(params, self.comm)
            self.allreduces += 1


register(
    synchronous_algorithm(
        "local_sgd",
        "local SGD: every replica trains alone on its rows, nothing is communicated",
        lambda run: NoCommunication(run.comms.data_comm, run.cfg.algo.final_average),
        options=(
            Option("algo.final_average", False, "local_sgd: average the replicas' parameters "
                   "once, at the end (one-shot averaging, Zinkevich et al. 2010)"),
        ),
    )
)  # fmt: skip

if __name__ == "__main__":
    from hpcnet.cli import main

    main()
