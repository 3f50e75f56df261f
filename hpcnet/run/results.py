"""Reading a run's results back from its output directory, on one process (no MPI).

``python -m hpcnet plot`` and ``export`` start here. A run directory ``OUT`` holds
(see :mod:`hpcnet.run.metrics`):

* ``metrics.jsonl``: progress records (``step``, ``epoch``, ``loss``, ``accuracy``,
  ``elapsed_s``, ... one per logged interval) and event records (``{"event": "test",
  ...}`` at the end, ``{"event": "resume", "step": S}`` where a resumed run appended);
* ``summary.json``: the run's outcome; absent while a run is going or after a crash,
  so only the curves are known then;
* ``checkpoint.h5``: the final parameters (:mod:`hpcnet.run.checkpoint`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hpcnet.errors import ResultsError

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"


@dataclass
class RunResults:
    """One run's results as read from its ``OUT``.

    Attributes:
        out: the run's output directory.
        progress: the progress records in the order the run made them; where a
            resumed run appended, the records it superseded (steps after the
            checkpoint it resumed from) are dropped, so steps increase.
        time_s: (len(progress),) float64, seconds since the run started at each
            progress record, kernel compilation left out: ``elapsed_s - compile_s``
            (``compile_s`` from the summary, 0 without one), continued across a
            resume from the last record kept (the time the run spent stopped is not
            counted; the resumed process's own compilation, from Numba's cache, is).
        events: the event records (``"event"`` key), in file order.
        summary: ``summary.json``, or ``{}`` when the run wrote none (yet).
        test_time_s: the test record's time, as :attr:`time_s`; None without one.
    """

    out: Path
    progress: list[dict[str, Any]]
    time_s: np.ndarray
    events: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    test_time_s: float | None = None

    def column(self, key: str) -> np.ndarray:
        """(len(progress),) float64: ``key`` of every progress record (NaN where absent
        or None)."""
        vals = [rec.get(key) for rec in self.progress]
        return np.array([np.nan if v is None else float(v) for v in vals], np.float64)

    def x(self, kind: str) -> np.ndarray:
        """(len(progress),) float64: the x coordinate of each progress record, its
        ``step`` (``kind="step"``: one replica's steps; Sandblaster's step is its L-BFGS
        iteration), the training ``samples`` all replicas took, the (fractional)
        ``epoch``, or its time in seconds (``kind="time"``, see :attr:`time_s`).

        Raises:
            ValueError: another ``kind``.
        """
        if kind in ("step", "samples"):
            return self.column(kind)
        if kind == "epoch":  # fractional; runs older than the field: the epoch's number
            return (
                self.column("epochs")
                if self.progress and "epochs" in self.progress[0]
                else self.column("epoch")
            )
        if kind == "time":
            return self.time_s
        raise ValueError(f"x must be one of {', '.join(X_KINDS)}, got {kind!r}")

    @property
    def test(self) -> dict[str, Any] | None:
        """The last ``{"event": "test"}`` record (``test_loss`` in nats, ``test_accuracy``
        in [0, 1], ``step``, ``elapsed_s``), or None for a run that did not finish."""
        tests = [e for e in self.events if e.get("event") == "test"]
        return tests[-1] if tests else None

    def test_x(self, kind: str) -> float | None:
        """Where the test record lies on the x axis ``kind`` (see :meth:`x`), or None."""
        if self.test is None:
            return None
        if kind in ("samples", "epoch"):  # the end of the run: its last record's
            xs = self.x(kind)
            return float(xs[-1]) if len(xs) and not np.isnan(xs[-1]) else None
        return float(self.test["step"]) if kind == "step" else self.test_time_s


X_KINDS = ("step", "samples", "epoch", "time")  # what :meth:`RunResults.x` takes


def read_results(out: str | Path) -> RunResults:
    """Reads ``OUT/metrics.jsonl`` and, when present, ``OUT/summary.json``.

    A last line of ``metrics.jsonl`` cut short (a run killed while writing it) is
    ignored; any other line that is not a JSON object is an error.

    Raises:
        ResultsError: ``out`` is not a directory, has no ``metrics.jsonl``, or a file
            is unreadable or not JSON.
    """
    out = Path(out)
    if not out.is_dir():
        raise ResultsError(f"{out}: no such run directory (expected an OUT of train --out)")
    path = out / METRICS
    if not path.is_file():
        raise ResultsError(f"{out}: no {METRICS} (not a run's OUT, or it never logged a step)")
    records = _read_jsonl(path)
    summary = read_summary(out)
    compile_s = float(summary.get("compile_s") or 0.0)
    progress: list[dict[str, Any]] = []
    times: list[float] = []
    events: list[dict[str, Any]] = []
    offset, test_time = 0.0, None
    for rec in records:
        if "event" in rec:
            events.append(rec)
            if rec["event"] == "resume":  # later records redo the steps after the checkpoint
                keep = sum(1 for r in progress if r.get("step", 0) <= rec.get("step", 0))
                del progress[keep:], times[keep:]
                offset = times[-1] if times else 0.0
            elif rec["event"] == "test":
                test_time = offset + max(0.0, float(rec.get("elapsed_s", 0.0)) - compile_s)
        elif "step" in rec and "loss" in rec:
            progress.append(rec)
            times.append(offset + max(0.0, float(rec.get("elapsed_s", 0.0)) - compile_s))
    return RunResults(
        out=out,
        progress=progress,
        time_s=np.array(times, np.float64),
        events=events,
        summary=summary,
        test_time_s=test_time,
    )


def read_summary(out: str | Path) -> dict[str, Any]:
    """``OUT/summary.json``, or ``{}`` when there is none (an unfinished run).

    Raises:
        ResultsError: the file exists but is unreadable or not a JSON object.
    """
    path = Path(out) / SUMMARY
    if not path.exists():
        return {}
    try:
        summary = json.loads(path.read_text())
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ResultsError(f"{path}: not JSON ({e})") from None
    if not isinstance(summary, dict):
        raise ResultsError(f"{path}: expected a JSON object, got {type(summary).__name__}")
    return summary


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text().split("\n")
    except OSError as e:
        raise ResultsError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError:
        raise ResultsError(f"{path}: not text (expected one JSON object per line)") from None
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines):  # no newline after it: a record cut short by a kill
                break
            raise ResultsError(f"{path}: line {i} is not JSON") from None
        if not isinstance(rec, dict):
            raise ResultsError(f"{path}: line {i} is not a JSON object")
        records.append(rec)
    return records


def run_labels(runs: list[RunResults], detail: bool = True) -> list[str]:
    """A short, distinct name per run for legends: the OUT folder's name, with as many
    parent folders as it takes to tell the runs apart, then (``detail``) ``(algo,
    model)`` when the summary says so."""
    paths = [r.out.resolve() for r in runs]
    depth = 1
    while depth < max(len(p.parts) for p in paths):
        names = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(names)) == len(names):
            break
        depth += 1
    names = ["/".join(p.parts[-depth:]) for p in paths]
    if not detail:
        return names
    labels = []
    for name, run in zip(names, runs, strict=True):
        s = run.summary
        what = ", ".join(str(s[k]) for k in ("algo", "model") if k in s)
        labels.append(f"{name} ({what})" if what else name)
    return labels
