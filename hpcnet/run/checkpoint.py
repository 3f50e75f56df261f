"""Checkpoints: one HDF5 file per save, written atomically, verified on read.

``OUT/checkpoint.h5`` is always the newest checkpoint; the previous ones are kept
as ``OUT/checkpoint-STEP.h5`` (the newest ``keep - 1`` of them). A file holds:

* ``params``: (n_params,) float32, the flat parameters of rank 0 (replica 0): after
  the last step, the run's final parameters (``h5dump -d params OUT/checkpoint.h5``);
* ``buffers`` (a model with BatchNorm2D, the final checkpoint): (n_buffers,) float32,
  the running statistics averaged over the replicas, as evaluated;
* ``ranks/R/NAME``: each rank's own arrays (e.g. its parameters and momentum), and
  ``ranks/R`` attribute ``state``: its other state as JSON (RNG states, counters);
* attributes: ``step``, ``epoch``, ``final``, ``algo``, ``world_size``, ``layout``
  (JSON), ``config`` (the resolved config, TOML), ``hpcnet_version``, ``created``
  and ``sha256``: the checksum of every dataset's bytes and the ``ranks`` states,
  in name order.

Writing is atomic: a temporary file in the same directory, flushed and
``fsync``-ed, renamed over the old name, then the directory ``fsync``-ed. A crash
at any instant leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hpcnet._version import __version__
from hpcnet.errors import CheckpointError

NAME = "checkpoint.h5"
_OLD = re.compile(r"^checkpoint-(\d+)\.h5$")


def _checksum(f: h5py.File) -> str:
    h = hashlib.sha256()

    def visit(name: str, obj) -> None:
        if isinstance(obj, h5py.Dataset):
            h.update(name.encode())
            h.update(np.ascontiguousarray(obj[()]).tobytes())
        elif isinstance(obj, h5py.Group) and "state" in obj.attrs:
            h.update(name.encode())
            h.update(str(obj.attrs["state"]).encode())

    f.visititems(visit)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_checkpoint(
    out: str | os.PathLike,
    params: np.ndarray,
    ranks: list[tuple[dict[str, np.ndarray], dict[str, Any]]] | None,
    attrs: dict[str, Any],
    keep: int = 2,
    buffers: np.ndarray | None = None,
) -> Path:
    """Writes ``OUT/checkpoint.h5`` atomically; the one it replaces becomes
    ``OUT/checkpoint-STEP.h5``, and only the newest ``keep`` checkpoints stay.

    Args:
        out: the run's output directory.
        params: (n_params,) float32, the parameters to hand to other tools.
        ranks: per world rank, (its arrays, its JSON-able state); None: none saved
            (a checkpoint that only holds the final parameters).
        attrs: ``step``, ``epoch``, ``final``, ``algo``, ``world_size``, ``layout``,
            ``config`` (plain values, str, or dicts stored as JSON).
        keep: checkpoints kept (>= 1).
        buffers: (n_buffers,) float32 to store beside ``params`` (the model's averaged
            buffers: BatchNorm2D's running statistics), or None.
    Returns:
        The path written.
    """
    out = Path(out)
    path, tmp = out / NAME, out / f".{NAME}.tmp-{os.getpid()}"
    with h5py.File(tmp, "w") as f:
        f.create_dataset("params", data=np.asarray(params, np.float32))
        if buffers is not None and np.size(buffers):
            f.create_dataset("buffers", data=np.asarray(buffers, np.float32))
        for r, (arrays, state) in enumerate(ranks or []):
            g = f.create_group(f"ranks/{r}")
            for name, a in arrays.items():
                g.create_dataset(name, data=a)
            g.attrs["state"] = json.dumps(state)
        for k, v in {**attrs, "hpcnet_version": __version__, "created": time.time()}.items():
            f.attrs[k] = json.dumps(v) if isinstance(v, dict | list) else v
        f.attrs["sha256"] = _checksum(f)
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    if path.exists():  # the previous checkpoint stays, under its step
        try:
            with h5py.File(path, "r") as f:
                old_name = f"checkpoint-{int(f.attrs.get('step', 0)):09d}.h5"
        except OSError:  # damaged (a resume fell back past it): kept aside, never read
            old_name = f"{NAME}.damaged"
        os.replace(path, out / old_name)
    os.replace(tmp, path)
    _fsync_dir(out)
    for old in sorted(p for p in out.iterdir() if _OLD.match(p.name))[: -keep + 1 or None]:
        old.unlink()
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Opens and verifies a checkpoint; returns its attributes (``layout`` decoded),
    ``params`` and ``buffers`` (None where it holds none). Per-rank state: :func:`read_rank_state`.

    Raises:
        CheckpointError: missing, not HDF5, truncated, or its checksum does not match.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no checkpoint file")
    try:
        with h5py.File(path, "r") as f:
            if "sha256" not in f.attrs or f.attrs["sha256"] != _checksum(f):
                raise CheckpointError(f"{path}: checksum mismatch (corrupt checkpoint)")
            info = {k: f.attrs[k] for k in f.attrs}
            info["params"] = f["params"][()]
            info["buffers"] = f["buffers"][()] if "buffers" in f else None
    except (OSError, KeyError) as e:
        raise CheckpointError(f"{path}: unreadable checkpoint ({e})") from None
    info["layout"] = json.loads(info["layout"])
    info["path"] = path
    return info


def read_rank_state(path: str | os.PathLike, rank: int) -> tuple[dict[str, np.ndarray], Any]:
    """Rank ``rank``'s arrays and state from a verified checkpoint.

    Raises:
        CheckpointError: the checkpoint holds no state for that rank.
    """
    with h5py.File(path, "r") as f:
        if f"ranks/{rank}" not in f:
            raise CheckpointError(f"{path}: holds no state for rank {rank}")
        g = f[f"ranks/{rank}"]
        return {k: g[k][()] for k in g}, json.loads(g.attrs["state"])


def checkpoints(out: str | os.PathLike) -> list[Path]:
    """The checkpoints in ``out``, newest first."""
    out = Path(out)
    older = sorted((p for p in out.glob("checkpoint-*.h5") if _OLD.match(p.name)), reverse=True)
    return ([out / NAME] if (out / NAME).is_file() else []) + older
