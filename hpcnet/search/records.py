"""A finished trial's record (a line of ``trials.jsonl``) and the small helpers every
part of the search shares; the bottom of :mod:`hpcnet.search` (imports none of it)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TrialRecord:
    """One finished trial: a line of ``trials.jsonl``.

    ``status``: ``completed``, ``failed`` (``reason`` says why) or ``stopped`` (early
    stopping; ``metric`` is its last one). ``wall_s``: seconds; ``started``/``ended``:
    Unix times; ``group``: the rank group that ran it.
    """

    id: int
    params: dict[str, Any]
    status: str
    metric: float | None
    steps: int | None = None
    wall_s: float = 0.0
    group: int = 0
    generation: int = 0
    reason: str = ""
    started: float = 0.0
    ended: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


def one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fmt_value(v: Any) -> str:
    """A parameter value for a progress line or a table (floats to 4 digits)."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)
