"""A model as a Python function (python -m hpcnet train --model examples/models/net.py:build).

``build(input_shape, num_classes)`` gets the data's per-sample shape (C, H, W) and class
count and returns the layers, input to output. Every rank imports this file: on a
cluster it must be on a file system every node reads.
"""

from hpcnet.nn.layers import Conv2D, Dense, Flatten, MaxPool2D, ReLU


def build(input_shape, num_classes):
    channels, height, width = input_shape
    width_factor = 2 if height >= 16 else 1  # wider on larger images
    return [
        Conv2D(16 * width_factor, 3, padding="same"),
        ReLU(),
        MaxPool2D(2),
        Flatten(),
        Dense(64),
        ReLU(),
        Dense(num_classes),
    ]
