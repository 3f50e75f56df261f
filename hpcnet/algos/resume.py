"""``train --resume OUT``: which checkpoint a run continues from, and whether it may.

Rank 0 picks the checkpoint (:func:`find_resume_checkpoint`, its answer or error
broadcast to every rank); every rank then checks it against the run's config and
layout (:func:`check_resumable`), with no communication. The algorithm's programs
restore their own state (:meth:`hpcnet.algos.lifecycle.TrainingRun.resume_state`).
"""

from __future__ import annotations

import sys
from typing import Any

from hpcnet.config import Config, tomllib
from hpcnet.errors import AlreadyFinished, CheckpointError
from hpcnet.layout import Layout
from hpcnet.run.checkpoint import checkpoints, read_checkpoint

# settings a resumed run may change: they do not change what it computes
MAY_CHANGE = {
    ("run", "out"),
    ("run", "resume"),
    ("run", "resume_fallback"),
    ("run", "overwrite"),
    ("run", "checkpoint_every"),
    ("run", "checkpoint_every_s"),
    ("run", "timeout"),
    ("run", "keep_checkpoints"),
    ("run", "log_every"),
    ("run", "verbose"),
    ("run", "tensorboard"),
    ("run", "threads"),
    ("ps", "inbox_slots"),  # a restored shard's slots are empty: any count will do
}


# algorithms whose resume may change the replica count
ELASTIC = ("downpour", "sync", "avg")


def find_resume_checkpoint(cfg: Config, verbose: bool = True) -> dict[str, Any]:
    """The newest intact checkpoint in ``--resume OUT`` (rank 0 calls it).

    Returns:
        Its attributes (:func:`hpcnet.run.checkpoint.read_checkpoint`) without ``params``.
    Raises:
        CheckpointError: no checkpoint; the newest is damaged and ``--resume-fallback``
            is off (or none is intact).
        AlreadyFinished: the newest is a finished run's final one (exit status 0).
    """
    found = checkpoints(cfg.run.resume)
    if not found:
        raise CheckpointError(f"--resume {cfg.run.resume}: no checkpoint.h5 in it")
    for i, path in enumerate(found):
        try:
            info = read_checkpoint(path)
        except CheckpointError as e:
            if not cfg.run.resume_fallback:
                raise CheckpointError(
                    f"{e}; --resume-fallback resumes from the newest intact one instead"
                ) from None
            if verbose:
                older = found[i + 1].name if i + 1 < len(found) else "none left"
                print(f"hpcnet: {e}; falling back to {older}", file=sys.stderr, flush=True)
            continue
        if info.get("final"):
            raise AlreadyFinished(
                f"{path}: the run finished at step {int(info['step'])} (its final "
                "checkpoint); nothing to resume"
            )
        del info["params"], info["buffers"]
        return info
    raise CheckpointError(f"--resume {cfg.run.resume}: no intact checkpoint left")


def check_resumable(info: dict[str, Any], cfg: Config, layout: Layout) -> None:
    """Refuses a checkpoint written by a run that computes something else.

    Raises:
        CheckpointError: another world size or layout, or a setting outside
            :data:`MAY_CHANGE` differs; the message names it.
    """
    path = info["path"]
    if info["layout"] != layout.to_dict() and not replicas_changed(info, layout):
        raise CheckpointError(
            f"{path}: written by a run laid out as {info['layout']}, this one is "
            f"{layout.to_dict()}; resume with the same world size and roles"
            + (
                f" ({layout.algo}: only the replica count may change)"
                if layout.algo in ELASTIC
                else ""
            )
        )
    saved = tomllib.loads(str(info["config"]))
    now = cfg.to_dict()
    may_change = MAY_CHANGE | ({("algo", "replicas")} if layout.algo in ELASTIC else set())
    for section, values in now.items():
        for key, value in values.items():
            if (section, key) in may_change:
                continue
            old = saved.get(section, {}).get(key)
            if old != value:
                raise CheckpointError(
                    f"{path}: written with [{section}] {key} = {old!r}, this run has "
                    f"{value!r}; resume with the same settings"
                )


def replicas_changed(info: dict[str, Any], layout: Layout) -> bool:
    """Whether a checkpoint of an algorithm in :data:`ELASTIC` differs from this layout
    in its replica count (and world size) only: the one change a resume allows.
    Downpour's shards hold the whole model and its optimizer, its replicas nothing but
    their data position, which a resumed run with another count restarts at the
    checkpoint's position in epochs (:func:`hpcnet.ps.checkpoint.resume_plan_new_replicas`);
    sync's and avg's replicas go on from the checkpoint's step, the rest of its epoch
    dealt over the new count (:mod:`hpcnet.algos.elastic`)."""
    old, now = info["layout"], layout.to_dict()
    same = ("algo", "coordinators", "shards", "partitions")
    return (
        layout.algo in ELASTIC
        and all(old.get(k) == now[k] for k in same)
        and old.get("replicas") != now["replicas"]
    )
