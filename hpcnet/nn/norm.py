"""Normalization layers: local response normalization across neighbouring channels
(Krizhevsky et al. 2012, sec. 3.3), and batch normalization (Ioffe and Szegedy 2015,
"Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
Shift", Algorithm 1 and sec. 3.2 for convolutions: one mean and variance per channel,
over the batch and both spatial axes).

BatchNorm2D's ``gamma`` and ``beta`` are parameters (in the flat vector, trained like any
weight); the running mean and variance are *buffers*: they live in the model's flat
``buffers`` vector beside the parameters, are never gradients, and every replica keeps
its own (each sees its own batches). A data-parallel run averages them over the
replicas before every evaluation and saves each rank's in its checkpoints
(:mod:`hpcnet.algos.end_of_run`, :mod:`hpcnet.algos.data_parallel`).
"""

from __future__ import annotations

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.nn.layers import Layer


class LRN(Layer):
    """Local response normalization across channels (Krizhevsky et al. 2012, sec. 3.3).

    ``y[c] = x[c] / (k + alpha * sum_{|j-c| <= size//2} x[j]**2) ** beta`` at every
    (n, h, w): the paper's formula, its defaults (size 5, k 2, alpha 1e-4, beta 0.75).
    PyTorch's ``LocalResponseNorm`` divides alpha by ``size``: ours is its ``alpha / size``.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1 or size % 2 == 0:
            raise ConfigError(f"LRN size must be odd and >= 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"LRN needs a (C, H, W) input, got {in_shape}")
        return in_shape

    def forward(self, x, backend, train):
        self._x = x  # (N, C, H, W)
        self._y, self._scale = backend.lrn_forward(x, self.size, self.alpha, self.beta, self.k)
        return self._y

    def backward(self, dy, backend):
        dx = backend.lrn_backward(
            dy, self._x, self._y, self._scale, self.size, self.alpha, self.beta, self.k
        )
        self._x = self._y = self._scale = None
        return dx


class BatchNorm2D(Layer):
    """Per-channel batch normalization of a (C, H, W) input, PyTorch's ``BatchNorm2d``:
    ``y = gamma (x - mean) / sqrt(var + eps) + beta``.

    In training (and whenever a backward follows: :meth:`hpcnet.nn.model.Model.loss_and_grad`)
    mean and var are the batch's (biased var), and the running statistics move
    ``running = (1 - momentum) running + momentum batch`` (the variance unbiased, m/(m-1)
    with m = N H W, as PyTorch); in evaluation the running statistics stand in.
    Parameters: gamma (C,) (initially 1), beta (C,) (0). Buffers: running_mean (C,) (0),
    running_var (C,) (1).
    """

    def __init__(self, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        if not eps > 0:
            raise ConfigError(f"BatchNorm2D eps must be > 0, got {eps}")
        if not 0.0 <= momentum <= 1.0:
            raise ConfigError(f"BatchNorm2D momentum must be in [0, 1], got {momentum}")
        self.eps, self.momentum = float(eps), float(momentum)
        self.buffers: dict[str, np.ndarray] = {}
        self.batch_stats = False  # set by the model while a backward will follow

    def _out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ConfigError(f"BatchNorm2D needs a (C, H, W) input, got {in_shape}")
        return in_shape

    def param_specs(self):
        c = self.in_shape[0]
        return [("gamma", (c,)), ("beta", (c,))]

    def buffer_specs(self):
        c = self.in_shape[0]
        return [("running_mean", (c,)), ("running_var", (c,))]

    def init(self, rng):
        self.params["gamma"][...] = 1.0
        self.params["beta"][...] = 0.0

    def init_buffers(self):
        self.buffers["running_mean"][...] = 0.0
        self.buffers["running_var"][...] = 1.0

    def forward(self, x, backend, train):
        g, b = self.params["gamma"], self.params["beta"]
        if not (train or self.batch_stats):
            self._xhat = None
            rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
            return backend.batchnorm2d_infer(x, g, b, rm, rv, self.eps)
        y, self._xhat, mean, self._var = backend.batchnorm2d_forward(x, g, b, self.eps)
        m = x.shape[0] * x.shape[2] * x.shape[3]
        mom = self.momentum
        rm, rv = self.buffers["running_mean"], self.buffers["running_var"]
        rm[...] = (1.0 - mom) * rm + mom * mean
        rv[...] = (1.0 - mom) * rv + mom * self._var * (m / max(m - 1, 1))
        return y

    def backward(self, dy, backend, need_dx=True):
        if self._xhat is None:
            raise RuntimeError("BatchNorm2D.backward after an evaluation-mode forward")
        dx = backend.batchnorm2d_backward(
            dy,
            self._xhat,
            self.params["gamma"],
            self._var,
            self.eps,
            self.grads["gamma"],
            self.grads["beta"],
            need_dx,
        )
        self._xhat = None
        return dx

    def backward_params(self, dy, backend):
        self.backward(dy, backend, need_dx=False)
