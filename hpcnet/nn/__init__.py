"""Models over one flat parameter vector: the layers, the model, its sources.

The layer classes, for a model written in Python (``--model FILE.py:FUNCTION``)::

    from hpcnet.nn import Conv2D, Dense, Flatten, ReLU
"""

from hpcnet.nn.activations import LeakyReLU, Sigmoid, Tanh
from hpcnet.nn.from_torch import from_torch
from hpcnet.nn.layers import Conv2D, Dense, Dropout, Flatten, Layer, MaxPool2D, ReLU, Towers
from hpcnet.nn.norm import LRN, BatchNorm2D
from hpcnet.nn.pooling import AvgPool2D, GlobalAvgPool2D
from hpcnet.nn.residual import Residual

__all__ = [
    "AvgPool2D",
    "BatchNorm2D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "GlobalAvgPool2D",
    "LRN",
    "Layer",
    "LeakyReLU",
    "MaxPool2D",
    "ReLU",
    "Residual",
    "Sigmoid",
    "Tanh",
    "Towers",
    "from_torch",
]
