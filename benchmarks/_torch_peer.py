"""The PyTorch peer of an hpcnet zoo model, for the benchmarks that time one against
the other (``layers_vs_torch.py``, ``sync_vs_torch.py``): the same architecture with
the same parameter values, checked against hpcnet's NumPy reference before timing.
Imports torch only inside the functions (the drivers run without it).
"""

from __future__ import annotations

import importlib.util
import sys

TORCH_MISSING = (
    "{prog}: PyTorch is not installed in this Python ({exe}); it is a benchmark-only "
    "dependency, not an hpcnet one. Install the CPU build with:\n"
    "    pip install torch==2.13.0"
)


def require_torch(prog: str) -> None:
    """Exits, saying how to install it, if PyTorch is not installed (checked without
    importing it)."""
    if importlib.util.find_spec("torch") is None:
        sys.exit(TORCH_MISSING.format(prog=prog, exe=sys.executable))


def peer(name: str, in_shape: tuple, seed: int, x, y) -> tuple:
    """hpcnet's zoo model ``name`` (10 classes) initialised from ``seed``, and its
    PyTorch translation, checked against hpcnet's reference backend on the batch
    ``x`` (N, C, H, W) float32, ``y`` (N,) int64 (:func:`check_identical`).

    Returns:
        (hpcnet model, ``torch.nn.Sequential``, the check's relative errors).
    """
    from hpcnet.nn.zoo import build_model

    hp_model = build_model(name, in_shape, 10)
    hp_model.init(seed)
    net = torch_model(hp_model)
    return hp_model, net, check_identical(hp_model, net, x, y, seed)


def torch_model(hp_model):
    """hpcnet's model as a ``torch.nn.Sequential`` with the same parameter values.

    Translates Conv2D (with groups), MaxPool2D, ReLU, LRN (PyTorch's alpha is
    ``size`` times hpcnet's, which follows the paper), Dropout, Flatten, Dense and
    Towers (a module concatenating its towers' outputs along channels).
    """
    import torch
    from torch import nn

    from hpcnet.nn import layers as hl

    class Towers(nn.Module):
        def __init__(self, towers):
            super().__init__()
            self.towers = nn.ModuleList(towers)

        def forward(self, x):
            return torch.cat([t(x) for t in self.towers], dim=1)

    def one(layer):
        if isinstance(layer, hl.Conv2D):
            return nn.Conv2d(
                layer.in_shape[0],
                layer.filters,
                layer.kernel,
                layer.stride,
                layer.pad,
                groups=layer.groups,
            )
        if isinstance(layer, hl.MaxPool2D):
            return nn.MaxPool2d(layer.kernel, layer.stride)
        if isinstance(layer, hl.ReLU):
            return nn.ReLU()
        if isinstance(layer, hl.LRN):
            return nn.LocalResponseNorm(
                layer.size, alpha=layer.alpha * layer.size, beta=layer.beta, k=layer.k
            )
        if isinstance(layer, hl.Flatten):
            return nn.Flatten()
        if isinstance(layer, hl.Dense):
            return nn.Linear(layer.in_shape[0], layer.units)
        if isinstance(layer, hl.Dropout):
            return nn.Dropout(layer.rate)
        if isinstance(layer, hl.Towers):
            return Towers([nn.Sequential(*[one(sub) for sub in t]) for t in layer.towers])
        raise TypeError(f"no torch translation for hpcnet's {type(layer).__name__}")

    net = nn.Sequential(*[one(layer) for layer in hp_model.layers])
    tparams = list(net.parameters())
    shapes = [tuple(s) for layer in hp_model.layers for _, s in layer.param_specs()]
    if [tuple(p.shape) for p in tparams] != shapes:
        raise RuntimeError("torch and hpcnet parameter shapes differ")
    flat = torch.from_numpy(hp_model.params.copy())
    off = 0
    with torch.no_grad():
        for p in tparams:  # same order as hpcnet's flat vector
            p.copy_(flat[off : off + p.numel()].view_as(p))
            off += p.numel()
    return net


def check_identical(hp_model, net, x, y, seed: int = 0) -> dict:
    """Logits, loss and gradients of both on one batch (dropout off), against hpcnet's
    reference backend; raises if they differ by more than 1e-4 relative."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from hpcnet.kernels import get_backend
    from hpcnet.nn.layers import Dropout, Towers

    ref = get_backend("reference")
    # noise breaks the exact ties of max pooling, which the two break differently
    x = x + np.random.default_rng(seed).normal(0.0, 0.05, x.shape).astype(np.float32)
    drop = [m for m in hp_model.layers if isinstance(m, Dropout)]
    for t in (m for m in hp_model.layers if isinstance(m, Towers)):
        drop += [s for _, _, s in t.sublayers() if isinstance(s, Dropout)]
    rates = [(d, d.rate) for d in drop]
    for d, _ in rates:
        d.rate = 0.0
    try:
        h_loss, _ = hp_model.loss_and_grad(x, y, ref)
        h_logits = hp_model.forward(x, ref, train=False)
        h_grads = hp_model.grads.copy()
    finally:
        for d, r in rates:
            d.rate = r
    net.eval()
    net.zero_grad()
    out = net(torch.from_numpy(x))
    loss = F.cross_entropy(out, torch.from_numpy(y))
    loss.backward()
    t_grads = np.concatenate([p.grad.numpy().ravel() for p in net.parameters()])
    net.zero_grad(set_to_none=True)
    net.train()
    errs = {
        "logits_rel_err": float(
            np.abs(out.detach().numpy() - h_logits).max() / np.abs(h_logits).max()
        ),
        "grads_rel_err": float(np.abs(t_grads - h_grads).max() / np.abs(h_grads).max()),
        "loss_abs_err": abs(loss.item() - h_loss),
    }
    if max(errs.values()) > 1e-4:
        raise RuntimeError(f"torch is not hpcnet's {hp_model.name}: {errs}")
    return errs
