"""hpcnet from Python: :func:`train`, called on every rank of a script run under
``mpiexec``, as ``python -m hpcnet train`` runs from the command line::

    # mine.py: mpiexec -n 4 python mine.py
    import hpcnet
    from hpcnet.nn import Conv2D, Dense, Flatten, ReLU

    def build(input_shape, num_classes):
        return [Conv2D(16, 3, padding="same"), ReLU(), Flatten(), Dense(num_classes)]

    summary = hpcnet.train({"run.epochs": 3, "algo.name": "sync"}, model=build,
                           data="digits")
    print(summary["test_accuracy"])      # every rank gets rank 0's summary
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.errors import ConfigError


def train(
    config: dict[str, Any] | str | os.PathLike | None = None,
    *,
    model: str | list | Callable | None = None,
    data: str | os.PathLike | None = None,
    comm: MPI.Intracomm | None = None,
    verbose: bool = True,
    **overrides: Any,
) -> dict[str, Any]:
    """Trains on every rank of ``comm`` and returns the run's summary.

    Collective over ``comm``: every rank calls it with the same arguments.

    Args:
        config: ``{"section.key": value}`` (``{"run.epochs": 3}``) or nested tables
            (``{"run": {"epochs": 3}}``), or the path of a TOML config file (what
            ``train --config`` reads); None: the defaults.
        model: a model source (``"lenet"``, ``"net.toml"``, ``"net.py:build"``), the
            layers themselves (a list of :mod:`hpcnet.nn` layers, copied for each use),
            or a function ``build(input_shape, num_classes) -> layers``; None: the
            config's ``model.name``. Layers and functions live in this process only:
            a run they train cannot be resumed from another one.
        data: a data set name (``digits``, ``fashion-mnist``) or an hpcnet HDF5 file.
        comm: the ranks that train (default: hpcnet's world, ``MPI.COMM_WORLD``).
        verbose: rank 0 prints its progress lines.
        **overrides: more config keys with ``__`` for the dot (``run__epochs=3``).
    Returns:
        The summary (``OUT/summary.json``'s fields: ``test_accuracy``, ``steps``, ...;
        every rank gets rank 0's), with the final flat parameters ((n_params,)
        float32) under ``"params"``.
    Raises:
        ConfigError: an unknown key or section, a bad value, a bad model or data set
            (every rank, the same message); other HpcnetErrors of ``train``.
    """
    from hpcnet.algos import train as train_run
    from hpcnet.comm import library_comm, same_on_every_rank
    from hpcnet.config import load_config, resume_base, section_classes
    from hpcnet.nn.zoo import register_inline

    comm = comm or library_comm()
    with same_on_every_rank():
        path, flat = None, {}
        if isinstance(config, str | os.PathLike):
            path = str(Path(config))
        elif config is not None:
            flat = _flatten(config)
        flat.update({k.replace("__", "."): v for k, v in overrides.items()})
        if model is not None:
            flat["model.name"] = model if isinstance(model, str) else register_inline(model)
        if data is not None:
            flat["data.name"] = str(data)
        known = section_classes()
        for key in flat:
            if "." not in key or key.split(".", 1)[0] not in known:
                raise ConfigError(
                    f"hpcnet.train: {key!r} is not a config key (section.name; sections: "
                    f"{', '.join(known)})"
                )
        cfg = load_config(resume_base(path, flat.get("run.resume")), flat)
    summary = train_run(cfg, comm, verbose=verbose)
    summary["params"] = summary.pop("_params")
    return summary


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """``{"run": {"epochs": 3}, "optim.lr": 0.1}`` -> ``{"run.epochs": 3, "optim.lr": 0.1}``."""
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            for name, v in value.items():
                flat[f"{key}.{name}"] = v
        else:
            flat[key] = value
    return flat
