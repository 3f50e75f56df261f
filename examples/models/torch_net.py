"""A PyTorch model for hpcnet (python -m hpcnet train --model examples/models/torch_net.py:build).

``build(input_shape, num_classes)`` returns a ``torch.nn.Sequential``; hpcnet converts
it, with its initial weights, to its own layers (:func:`hpcnet.nn.from_torch`), trains
it with any algorithm, and ``python -m hpcnet export OUT --format torch`` writes a
``state_dict`` that this same ``build`` loads again::

    net = build((1, 28, 28), 10).eval()
    net.load_state_dict(torch.load("OUT/weights.pt"))

Needs PyTorch (``pip install torch``). Every rank imports this file: on a cluster it
must be on a file system every node reads.
"""

import torch.nn as nn


def build(input_shape, num_classes):
    channels = input_shape[0]
    return nn.Sequential(
        nn.Conv2d(channels, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, num_classes),
    )
