"""hpcnet from a Python script: every rank runs this file (mpiexec -n 2 python
examples/api/train_digits.py) and calls hpcnet.train with the same arguments."""

from mpi4py import MPI

import hpcnet
from hpcnet.nn import Conv2D, Dense, Flatten, MaxPool2D, ReLU, Residual


def build(input_shape, num_classes):
    """The model: its layers for the data's (C, H, W) and class count."""
    return [
        Conv2D(16, 3, padding="same"),
        ReLU(),
        Residual([Conv2D(16, 3, padding="same"), ReLU(), Conv2D(16, 3, padding="same")]),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(num_classes),
    ]


summary = hpcnet.train(
    {"run": {"epochs": 3, "out": "runs/api"}, "algo.name": "sync"}, model=build, data="digits"
)
if MPI.COMM_WORLD.rank == 0:  # every rank has the summary; one prints
    print(f"api: test accuracy {summary['test_accuracy']:.4f}, {len(summary['params'])} params")
