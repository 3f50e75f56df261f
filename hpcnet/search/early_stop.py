"""Early stopping of search trials, driven by their own progress records.

The scheduler (:mod:`hpcnet.search.runner`) asks a rule at each progress record a
running trial reports (its ``step`` and the record's value of the *progress key*:
``accuracy`` when the search maximises ``test_accuracy``, else ``loss``); a trial
told to stop ends at its next step boundary, checkpointed, and is recorded as
``stopped`` with its last value.

* :class:`MedianStopping`: the median stopping rule of Google Vizier (Golovin et al.
  2017, sec. 3.2.2): stop a trial whose running average of the progress value up to
  step t is worse than the median of the completed trials' running averages up to t
  (once ``min_completed`` trials have completed).
* :class:`ASHA`: asynchronous successive halving (Li et al. 2018, "A System for
  Massively Parallel Hyperparameter Tuning", Alg. 2) used as a stopping rule: rungs
  at ``min_steps * eta**k`` steps; a trial reaching a rung continues only if its value
  there is in the top ``1/eta`` of every value recorded at that rung so far (with
  fewer than ``eta`` recorded, it continues).

Both rebuild their state from the trials' metrics.jsonl files, so a resumed search
has its rungs and completed curves back.
"""

from __future__ import annotations

import json
import math
import statistics
from bisect import bisect_right
from pathlib import Path

EARLY_STOP = ("none", "median", "asha")


def progress_key(metric: str, direction: str) -> tuple[str, str]:
    """The progress record's field that stands for ``metric`` during training, and its
    direction: ``accuracy`` (max) for an accuracy metric maximised, else ``loss`` (min)."""
    if "accuracy" in metric and direction == "max":
        return "accuracy", "max"
    return "loss", "min"


def read_curve(run_dir: Path, key: str) -> list[tuple[int, float]]:
    """(step, value of ``key``) of a run's progress records, in order (a resumed run's
    records from its resume on replace the older ones from that step)."""
    path = Path(run_dir) / "metrics.jsonl"
    out: list[tuple[int, float]] = []
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if rec.get("event") == "resume":
            out = [(s, v) for s, v in out if s <= rec["step"]]
        elif "event" not in rec and isinstance(rec.get(key), int | float):
            out.append((int(rec["step"]), float(rec[key])))
    return out


class _Rule:
    def __init__(self, direction: str):
        self.sign = 1.0 if direction == "max" else -1.0  # larger sign * value is better

    def completed(self, trial_id: int, curve: list[tuple[int, float]]) -> None:
        """A trial finished with this progress curve."""

    def report(self, trial_id: int, step: int, value: float) -> bool:
        """A running trial's progress value at ``step``; True: stop it."""
        raise NotImplementedError


class MedianStopping(_Rule):
    """Vizier's median stopping rule (see the module)."""

    def __init__(self, direction: str, min_completed: int = 3):
        super().__init__(direction)
        self.min_completed = min_completed
        self.done: list[tuple[list[int], list[float]]] = []  # steps, running averages
        self.seen: dict[int, list[float]] = {}  # running trial -> its values so far

    @staticmethod
    def _running(curve):
        steps, avgs, total = [], [], 0.0
        for i, (s, v) in enumerate(curve, start=1):
            total += v
            steps.append(s)
            avgs.append(total / i)
        return steps, avgs

    def completed(self, trial_id, curve) -> None:
        self.seen.pop(trial_id, None)
        if curve:
            self.done.append(self._running(curve))

    def report(self, trial_id, step, value) -> bool:
        vals = self.seen.setdefault(trial_id, [])
        vals.append(value)
        if len(self.done) < self.min_completed or not math.isfinite(value):
            return not math.isfinite(value)  # a NaN loss: stop at once
        mine = sum(vals) / len(vals)
        others = []
        for steps, avgs in self.done:
            i = bisect_right(steps, step)
            if i:
                others.append(avgs[i - 1])
        if len(others) < self.min_completed:
            return False
        return self.sign * mine < self.sign * statistics.median(others)


class ASHA(_Rule):
    """Asynchronous successive halving as a stopping rule (see the module)."""

    def __init__(self, direction: str, min_steps: int | None = None, eta: int = 3):
        super().__init__(direction)
        self.min_steps, self.eta = min_steps, eta  # None: the first step reported
        self.rungs: dict[int, dict[int, float]] = {}  # rung -> trial -> value there
        self.reached: dict[int, int] = {}  # trial -> the highest rung it has reached

    def rung_of(self, step: int) -> int:
        """The highest rung at or below ``step`` (-1: below the first)."""
        k = -1
        while self.min_steps * self.eta ** (k + 1) <= step:
            k += 1
        return k

    def report(self, trial_id, step, value) -> bool:
        if not math.isfinite(value):
            return True
        if self.min_steps is None:
            self.min_steps = max(1, step)
        k = self.rung_of(step)
        if k < 0 or self.reached.get(trial_id, -1) >= k:
            return False
        self.reached[trial_id] = k
        at = self.rungs.setdefault(k, {})
        at[trial_id] = value
        if len(at) < self.eta:
            return False
        ranked = sorted(at.values(), key=lambda v: -self.sign * v)
        keep = max(1, len(ranked) // self.eta)
        return self.sign * value < self.sign * ranked[keep - 1]

    def completed(self, trial_id, curve) -> None:
        for step, value in curve:  # a resumed search: the rungs it had reached
            self.report(trial_id, step, value)


def make_rule(name: str, direction: str) -> _Rule | None:
    """The rule called ``name`` (``none``: None); ``direction`` of the progress key."""
    if name == "median":
        return MedianStopping(direction)
    if name == "asha":
        return ASHA(direction)
    return None
