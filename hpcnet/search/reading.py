"""A finished search's directory, read back (one process, no MPI): its trials, their
settings and curves, for the plots (:mod:`hpcnet.search.plots`) and for you."""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnet.errors import ResultsError
from hpcnet.run.results import METRICS, RunResults, _read_jsonl, read_results
from hpcnet.search.records import TrialRecord

if TYPE_CHECKING:
    pass

TRIALS = "trials.jsonl"
METRIC_LABELS = {
    "test_accuracy": "test accuracy (fraction correct)",
    "test_loss": "test loss (cross-entropy, nats)",
    "accuracy": "training accuracy (fraction correct)",
    "loss": "training loss (cross-entropy, nats)",
}
PARAM_LABELS = {
    "optim.lr": "learning rate",
    "optim.momentum": "momentum",
    "run.batch_size": "batch size (samples per replica per step)",
    "run.epochs": "epochs (passes over the training data)",
    "model.name": "model",
    "algo.name": "algorithm",
}


@dataclass
class SearchResults:
    """A search directory as read back.

    Attributes:
        out: the search's ``--out`` directory.
        records: one per trial in trial-id order (a trial recorded twice: the last).
        finish_order: the records in the order the trials finished (``ended``, then
            their order in ``trials.jsonl``).
        metric: the metric's name (``test_accuracy``, ``test_loss``, ...).
        direction: ``max`` or ``min``.
        population: differential evolution's population after each generation's
            selection (``generation``, ``best``, ``median``, ``worst``, ``failed``, as
            :meth:`~hpcnet.search.strategies.DifferentialEvolution.generations_summary`),
            from ``state.json``; empty for other strategies.
        curves: trial id -> its run (trials without a ``metrics.jsonl`` left out).
        log_keys: the parameters searched over a log range (``search.json``'s space).
    """

    out: Path
    records: list[TrialRecord]
    finish_order: list[TrialRecord]
    metric: str
    direction: str
    population: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[int, RunResults] = field(default_factory=dict)
    log_keys: set[str] = field(default_factory=set)

    def value(self, rec: TrialRecord) -> float | None:
        """``rec``'s metric, None for a failed trial or a metric that is not finite."""
        m = rec.metric
        if rec.status == "failed" or m is None or not math.isfinite(m):
            return None
        return float(m)

    def best_so_far(self, records: list[TrialRecord]) -> np.ndarray:
        """(len(records),) float64: the best metric of the completed trials among the
        first i + 1 ``records`` (NaN before the first completed one)."""
        pick = max if self.direction == "max" else min
        best, out = None, []
        for rec in records:
            m = self.value(rec) if rec.status == "completed" else None
            if m is not None:
                best = m if best is None else pick(best, m)
            out.append(np.nan if best is None else best)
        return np.array(out, np.float64)

    @property
    def best(self) -> TrialRecord | None:
        """The best completed trial (None: none completed)."""
        done = [r for r in self.records if r.status == "completed" and self.value(r) is not None]
        if not done:
            return None
        sign = 1.0 if self.direction == "max" else -1.0
        return max(done, key=lambda r: (sign * self.value(r), -r.id))

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)


def read_search(
    out: str | os.PathLike, metric: str | None = None, direction: str | None = None
) -> SearchResults:
    """Reads a search directory (see the module doc).

    Args:
        out: the search's ``--out``.
        metric, direction: the search's metric and ``max``/``min``; None: as saved in
            ``search.json``, else ``test_accuracy`` and ``max``.
    Raises:
        ResultsError: no ``trials.jsonl`` in ``out``, or a file that is not what the
            search writes.
    """
    out = Path(out)
    path = out / TRIALS
    if not path.is_file():
        raise ResultsError(f"{out}: no {TRIALS} (not a search's --out, or no trial finished)")
    names = {f.name for f in fields(TrialRecord)}
    by_id: dict[int, TrialRecord] = {}
    order: list[TrialRecord] = []
    for i, rec in enumerate(_read_jsonl(path), 1):
        try:
            r = TrialRecord(**{k: v for k, v in rec.items() if k in names})
        except TypeError as e:
            raise ResultsError(f"{path}: record {i} is not a trial record: {e}") from None
        by_id[r.id] = r
        order.append(r)
    order = [r for r in order if by_id[r.id] is r]
    settings = _json(out / "search.json")
    metric = metric or settings.get("metric") or "test_accuracy"
    direction = direction or settings.get("direction") or "max"
    if direction not in ("max", "min"):
        raise ResultsError(f"direction {direction!r}: expected max or min")
    curves = {}
    for tid in sorted(by_id):
        run_dir = out / "trials" / f"{tid:04d}"
        if (run_dir / METRICS).is_file():
            try:
                run = read_results(run_dir)
            except ResultsError:  # a trial's file spoilt: its curve only is lost
                continue
            if run.progress:
                curves[tid] = run
    return SearchResults(
        out=out,
        records=[by_id[t] for t in sorted(by_id)],
        finish_order=sorted(order, key=lambda r: r.ended),  # stable: file order on ties
        metric=metric,
        direction=direction,
        population=list(_json(out / "state.json").get("summary") or []),
        curves=curves,
        log_keys=_log_keys(str(settings.get("space", ""))),
    )


def _log_keys(space: str) -> set[str]:
    """The keys of ``Space.describe()``'s log ranges (``optim.lr in [0.005, 0.3] log``)."""
    found = (re.fullmatch(r"(\S+) in \[[^]]*\] log\b.*", part) for part in space.split("; "))
    return {m.group(1) for m in found if m}


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read it as JSON: {e}") from None
    return data if isinstance(data, dict) else {}
