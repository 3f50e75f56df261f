"""Backward through a sequence of layers: the one loop a model, a tower and a model
partition share."""

from __future__ import annotations


def backward_through(layers: list, dy, backend, need_dx: bool = True, after_layer=None):
    """Backward through a sequence of layers, last to first; returns d loss / d input
    of the first layer, or None without ``need_dx``: then the first layer with
    parameters computes only its parameter gradients (:meth:`Layer.backward_params`)
    and the parameterless layers before it (Flatten, an input Dropout) are skipped, as
    autograd skips what no parameter depends on; for an MLP that saves the first dense
    layer's input gradient, (N, I) x (I, O) multiply-adds. ``after_layer(i)``, if
    given, runs as soon as ``layers[i]``'s backward is done (i = len - 1 down to 0,
    each once): its parameter gradients are final then (the bucketed allreduce starts
    there)."""
    stop = 0
    if not need_dx:  # the first layer with parameters; none: no backward at all
        stop = next((i for i, layer in enumerate(layers) if layer.param_specs()), len(layers))
    for i in range(len(layers) - 1, stop, -1):
        dy = layers[i].backward(dy, backend)
        if after_layer is not None:
            after_layer(i)
    dx = None
    if stop < len(layers):
        if need_dx:
            dx = layers[stop].backward(dy, backend)
        else:
            layers[stop].backward_params(dy, backend)
    for i in range(min(stop, len(layers) - 1), -1, -1):  # stop and the skipped ones
        if after_layer is not None:
            after_layer(i)
    return dx
