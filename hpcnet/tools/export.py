"""``python -m hpcnet export``: a run's trained weights in forms other tools load.

The final parameters are ``params`` of ``OUT/checkpoint.h5`` (verified against its
checksum); the model is rebuilt from the zoo name in the checkpoint's config and the
input shape and class count in ``OUT/summary.json``, and the flat vector is cut into
the model's own segments (:meth:`hpcnet.nn.model.Model.named_params`):

* ``npz``: one array per parameter tensor, named by segment (``"0.Conv2D.w"``,
  ``"0.Conv2D.b"``, ...: layer index, layer type, parameter), float32, in
  flat-vector order, so concatenating the ``params`` ones (``.w``, ``.b``, ``.gamma``,
  ``.beta``) gives the flat vector again; then a BatchNorm2D model's buffers
  (``"1.BatchNorm2D.running_mean"``, ``...running_var``: the running statistics
  averaged over the replicas, ``buffers`` of the checkpoint);
* ``torch``: a ``state_dict`` (``torch.save``) for the equivalent ``torch.nn``
  model that :func:`hpcnet.nn.torch_equiv.torch_module` builds.

Either way the model expects inputs normalised as in training:
``(pixel - input_mean[c]) / input_std[c]`` per channel (``summary.json``).

Imports the model zoo (``nn``); only the command line imports this module.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from hpcnet.errors import MissingExtra, ResultsError
from hpcnet.nn.model import Model
from hpcnet.run.checkpoint import NAME as CHECKPOINT
from hpcnet.run.checkpoint import read_checkpoint
from hpcnet.run.results import read_summary

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

FORMATS = {"npz": "weights.npz", "torch": "weights.pt"}  # format -> default file in OUT


def model_spec(out: str | Path, config_toml: str | None = None) -> tuple[str, tuple, int]:
    """(zoo model name, per-sample input shape (C, H, W), number of classes) of the
    run in ``out``: the name from the run's resolved config (``config_toml``, else
    ``OUT/config.toml``), the shape and class count from ``OUT/summary.json``
    (older runs, which did not write them there: from the data file it names).

    Raises:
        ResultsError: the config or summary is missing or lacks what is needed.
    """
    out = Path(out)
    if config_toml is None:
        try:
            config_toml = (out / "config.toml").read_text()
        except OSError as e:
            raise ResultsError(f"{out}/config.toml: cannot read: {e.strerror}") from None
    try:
        name = tomllib.loads(config_toml)["model"]["name"]
    except (tomllib.TOMLDecodeError, KeyError) as e:
        raise ResultsError(f"{out}: the run's config has no model name ({e})") from None
    summary = read_summary(out)
    if "input_shape" in summary and "num_classes" in summary:
        return name, tuple(summary["input_shape"]), int(summary["num_classes"])
    data_file = summary.get("data_file")
    if data_file and Path(data_file).is_file():
        from hpcnet.data.format import open_dataset

        info = open_dataset(data_file)
        return name, tuple(info.image_shape), int(info.num_classes)
    raise ResultsError(
        f"{out}/summary.json: no input_shape/num_classes and its data file "
        f"({data_file or 'none named'}) is not here; cannot rebuild the model "
        "(training writes both into summary.json since export exists)"
    )


def trained_model(out: str | Path) -> Model:
    """The run's model holding its final parameters from ``OUT/checkpoint.h5``.

    Returns:
        A :class:`~hpcnet.nn.model.Model` whose ``params`` ((n_params,) float32) are
        the checkpoint's ``params``.
    Raises:
        ResultsError: ``out`` is not a directory, or its config/summary lack the model.
        CheckpointError: no checkpoint, a corrupt one, or one whose length is not the
            rebuilt model's.
        ConfigError: the config names a model the zoo does not have.
    """
    from hpcnet.errors import CheckpointError
    from hpcnet.nn.zoo import build_model

    out = Path(out)
    if not out.is_dir():
        raise ResultsError(f"{out}: no such run directory (expected an OUT of train --out)")
    ckpt = read_checkpoint(out / CHECKPOINT)
    name, shape, k = model_spec(out, str(ckpt["config"]))
    layers = tomllib.loads(str(ckpt["config"]))["model"].get("layers", ())
    model = build_model(name, shape, k, layers)
    params = np.asarray(ckpt["params"])
    if params.shape != (model.n_params,):
        raise CheckpointError(
            f"{out / CHECKPOINT}: params has shape {params.shape}, but model {name} for "
            f"input {shape} and {k} classes has {model.n_params} parameters"
        )
    model.params[...] = params
    if ckpt["buffers"] is not None and ckpt["buffers"].shape == model.buffers.shape:
        model.buffers[...] = ckpt["buffers"]  # BatchNorm2D's running statistics
    return model


def export_run(out: str | Path, fmt: str, path: str | Path | None = None) -> str:
    """Writes the run's trained weights as ``fmt`` (see the module doc) and returns a
    one-line description of what was written.

    Args:
        out: the run's output directory.
        fmt: ``"npz"`` or ``"torch"``.
        path: the file to write; default ``OUT/weights.npz`` or ``OUT/weights.pt``.
    Raises:
        MissingExtra: ``torch`` without PyTorch installed.
        ResultsError, CheckpointError: as :func:`trained_model`; or ``path`` cannot be
            written.
        ValueError: an unknown ``fmt``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {sorted(FORMATS)}, got {fmt!r}")
    if fmt == "torch":
        try:
            import torch
        except ImportError:
            raise MissingExtra(
                "export --format torch needs PyTorch, which is not installed: pip install "
                "torch --index-url https://download.pytorch.org/whl/cpu (the CPU build; "
                "or use --format npz)"
            ) from None
    model = trained_model(out)
    path = Path(path) if path is not None else Path(out) / FORMATS[fmt]
    try:
        if fmt == "npz":
            arrays = {**model.named_params(), **model.named_buffers()}
            with open(path, "wb") as f:  # as named: np.savez would append .npz
                np.savez(f, **arrays)
        else:
            from hpcnet.nn.torch_equiv import torch_module, torch_state_dict

            state = torch_state_dict(model)
            torch_module(model).load_state_dict(state)  # strict: names and shapes fit
            torch.save(state, path)
    except OSError as e:
        raise ResultsError(f"-o {path}: cannot write: {e.strerror or e}") from None
    return (
        f"wrote {path}: {len(model.segments) + len(model.buffer_segments)} tensors, "
        f"{model.n_params:,} parameters "
        f"({model.name}, input {model.input_shape}, {model.output_shape[0]} classes)"
    )
