"""What a finished search leaves for its user: ``results.csv``, ``best.toml`` and the
table printed at the end (rank 0 writes them)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import tomli_w

from hpcnet.search.records import TrialRecord, fmt_value

_STATUS_ORDER = {"completed": 0, "stopped": 1, "failed": 2}


def ranked(records: list[TrialRecord], direction: str) -> list[TrialRecord]:
    """The records best first (``direction`` ``max`` or ``min``); stopped trials after
    completed ones, failed ones last (in trial order)."""

    def key(r: TrialRecord):
        m = r.metric if r.metric is not None and math.isfinite(r.metric) else None
        if r.status == "failed" or m is None:
            return (2, 0.0, r.id)
        return (_STATUS_ORDER[r.status], -m if direction == "max" else m, r.id)

    return sorted(records, key=key)


def best_record(records: list[TrialRecord], direction: str) -> TrialRecord | None:
    """The best completed trial (None: none completed)."""
    done = [r for r in ranked(records, direction) if r.status == "completed"]
    return done[0] if done else None


def _nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


def write_results(
    out: Path,
    records: list[TrialRecord],
    keys: list[str],
    fixed: dict[str, Any],
    metric: str,
    direction: str,
) -> TrialRecord | None:
    """Writes ``out/results.csv`` (a row per trial, best first) and ``out/best.toml``
    (the fixed config and the best trial's parameters, nested by section: a file
    ``train --config`` accepts); returns the best record."""
    rows = ranked(records, direction)
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            ["trial", "status", metric, *keys, "steps", "wall_s", "group", "generation", "reason"]
        )
        for r in rows:
            w.writerow(
                [r.id, r.status, r.metric, *(r.params.get(k) for k in keys), r.steps,
                 round(r.wall_s, 3), r.group, r.generation, r.reason]
            )  # fmt: skip
    best = best_record(records, direction)
    if best is not None:
        conf = _nested(
            {k: v for k, v in {**fixed, **best.params}.items() if not k.startswith("run.out")}
        )
        header = f"# hpcnet search: best trial {best.id}, {metric} = {best.metric}\n"
        (out / "best.toml").write_text(header + tomli_w.dumps(conf))
    return best


def table(
    records: list[TrialRecord], keys: list[str], metric: str, direction: str, top: int = 20
) -> str:
    """The trials best first as a text table (the ``top`` best, then a count)."""
    rows = ranked(records, direction)
    head = ["trial", metric, *keys, "status", "wall s"]
    body = [
        [
            str(r.id),
            f"{r.metric:.4f}" if r.metric is not None else "-",
            *(fmt_value(r.params.get(k)) for k in keys),
            r.status if r.status != "failed" else f"failed: {r.reason}"[:48],
            f"{r.wall_s:.1f}",
        ]
        for r in rows[:top]
    ]
    widths = [
        max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(head)
    ]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in body]
    if len(rows) > top:
        lines.append(f"... and {len(rows) - top} more in results.csv")
    return "\n".join(lines)


def write_hparams(out: Path, rec: TrialRecord, metric: str) -> bool:
    """Writes trial ``rec``'s parameters and metric as TensorBoard HParams summaries in
    ``out/tb/trial-NNNN`` (tensorboardX, the ``tensorboard`` extra), so ``tensorboard
    --logdir out`` shows the trials as a table, parallel coordinates and scatter plots
    beside each trial's own curves (``out/trials/NNNN/tb``). Returns False when
    tensorboardX is missing or the trial has no metric."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return False
    if rec.metric is None or not math.isfinite(rec.metric):
        return False
    hparams = {
        k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in rec.params.items()
    }
    with SummaryWriter(logdir=str(out / "tb" / f"trial-{rec.id:04d}")) as w:
        w.add_hparams(hparams, {f"hparam/{metric}": rec.metric}, name=".")
    return True
