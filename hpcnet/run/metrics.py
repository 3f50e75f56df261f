"""Results files: OUT/metrics.jsonl (one JSON object per logged interval),
OUT/summary.json (the run's outcome) and OUT/config.toml (the resolved config).
Written by rank 0 only.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, TextIO

from hpcnet.errors import ConfigError

RUN_FILES = ("config.toml", "metrics.jsonl", "summary.json", "checkpoint.h5")
# what a run leaves in OUT: ``--overwrite`` removes these (and nothing else) first
_RUN_GLOBS = (*RUN_FILES, "checkpoint-*.h5", "weights.*", "error-rank-*.txt", "*.png", "tb")


def make_out_dir(out: str, resume: bool = False, overwrite: bool = False) -> Path:
    """Creates the output directory (``runs/<timestamp>`` when ``out`` is empty, with
    ``-2``, ``-3``, ... when that is taken, so a new run never lands in another's).

    Args:
        resume: the run continues the one in ``out`` (``--resume``).
        overwrite: ``out`` may hold a run, whose files are removed first (``--overwrite``).
    Raises:
        ConfigError: ``out`` holds a run (its config, metrics, summary or checkpoint) and
            neither ``resume`` nor ``overwrite``; the path is no directory, or cannot be
            created or written.
    """
    if out:
        path = Path(out)
    else:
        stamp = Path("runs") / time.strftime("%Y%m%d-%H%M%S")
        path, k = stamp, 1
        while path.exists():
            k += 1
            path = stamp.with_name(f"{stamp.name}-{k}")
    held = [n for n in RUN_FILES if (path / n).exists()] if path.is_dir() else []
    if held and not resume:
        if not overwrite:
            raise ConfigError(
                f"--out {path}: holds a run already ({', '.join(held)}); --resume {path} "
                "continues it, --overwrite replaces it"
            )
        for pattern in _RUN_GLOBS:
            for p in path.glob(pattern):
                shutil.rmtree(p) if p.is_dir() else p.unlink()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise ConfigError(f"--out {path}: exists and is not a directory") from None
    except OSError as e:
        raise ConfigError(f"--out {path}: cannot create: {e.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"--out {path}: not writable")
    return path


class MetricsLog:
    """Appends one JSON object per line to ``OUT/metrics.jsonl`` (flushed per record)
    and, with ``tensorboard`` and tensorboardX installed (the ``tensorboard`` extra),
    the same as TensorBoard scalars in ``OUT/tb/``: per progress record ``train/loss``,
    ``train/accuracy``, ``train/lr``, ``train/samples_per_s`` at its ``step``; the
    test record as ``test/loss`` and ``test/accuracy``."""

    def __init__(self, out_dir: Path, append: bool = False, tensorboard: bool = False):
        self.path = Path(out_dir) / "metrics.jsonl"
        self._f: TextIO = open(self.path, "a" if append else "w")  # append: a resumed run
        self._tb = _tensorboard_writer(Path(out_dir) / "tb") if tensorboard else None
        # asked for, but tensorboardX is missing: the run says so once (prepare)
        self.tensorboard_missing = tensorboard and self._tb is None

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        if self._tb is not None:
            _tensorboard_record(self._tb, record)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def _tensorboard_writer(path: Path):
    """A tensorboardX ``SummaryWriter`` into ``path``; None when it is not installed."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(logdir=str(path))


_TB_TRAIN = ("loss", "accuracy", "lr", "samples_per_s")


def _tensorboard_record(writer, rec: dict[str, Any]) -> None:
    step = rec.get("step")
    if step is None:
        return
    if "event" not in rec:
        for k in _TB_TRAIN:
            if isinstance(rec.get(k), int | float):
                writer.add_scalar(f"train/{k}", rec[k], step)
    elif rec["event"] == "test":
        writer.add_scalar("test/loss", rec["test_loss"], step)
        writer.add_scalar("test/accuracy", rec["test_accuracy"], step)
    writer.flush()  # a run killed later keeps what it wrote


def write_summary(out_dir: Path, summary: dict[str, Any]) -> Path:
    """Writes ``OUT/summary.json`` atomically (temp file + rename); returns its path."""
    path = Path(out_dir) / "summary.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def progress_line(rec: dict[str, Any]) -> str:
    """The line rank 0 prints per logged interval (``samples_per_s`` None: an interval
    holding only the first step, whose time is reported as ``first_step_s``)."""
    rate = rec.get("samples_per_s")
    speed = (
        f"{rate:,.0f} samples/s" if rate is not None else f"first step {rec['first_step_s']:.2f} s"
    )
    val = f"  val acc {rec['val_accuracy']:.3f}" if "val_accuracy" in rec else ""
    return (
        f"epoch {rec['epoch']:>3}  step {rec['step']:>6}/{rec['total_steps']}  "
        f"loss {rec['loss']:.4f}  acc {rec['accuracy']:.3f}{val}  "
        f"lr {rec['lr']:.4g}  {speed}"
    )
