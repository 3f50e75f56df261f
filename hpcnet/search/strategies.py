"""Ask/tell searchers over a :class:`~hpcnet.search.space.Space`: grid, random search and
differential evolution.

The scheduler asks a strategy for the next :class:`Trial` when a rank group is free
and tells it the trial's metric when the group is done; it never waits on the
strategy. ``ask()`` returning None means "nothing to hand out until a running trial
is told" (differential evolution between generations). A failed trial is told
``None`` (NaN and infinities count as failed too): the worst metric there is.

Reproducibility: every trial a strategy will hand out is fixed by its seed and the
metrics of earlier generations, never by the order in which results arrive; so a
search of deterministic trials is the same search however the groups race.

Resume: :meth:`Strategy.state` is JSON-able; :meth:`Strategy.restore` puts every
trial that was handed out but never told back in the queue, so ``ask()`` hands it
out again with the same id and params; told trials stay told.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.search.space import Space


@dataclass
class Trial:
    """One point of the space to train.

    Attributes:
        id: 0, 1, ... in the order the strategy made the trials.
        params: ``{"section.name": value}`` (Python floats, ints and strings).
        generation: differential evolution's generation (0 for grid and random).
    """

    id: int
    params: dict[str, Any] = field(default_factory=dict)
    generation: int = 0


def _metric(value: float | None) -> float | None:
    """A told metric as a float; None for a failed trial (None, NaN, +-inf)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class Strategy:
    """The ask/tell interface every searcher has; subclasses add trials with
    :meth:`_add` and may react to results in :meth:`_told`.

    Args:
        space: what to search.
        direction: ``max`` or ``min`` (the metric's better side).
    Raises:
        ConfigError: an unknown direction.
    """

    name = "strategy"

    def __init__(self, space: Space, direction: str = "max"):
        if direction not in ("max", "min"):
            raise ConfigError(f"--direction {direction!r}: choose max or min")
        self.space, self.direction = space, direction
        self._trials: dict[int, Trial] = {}
        self._metrics: dict[int, float | None] = {}  # told trials
        self._queue: deque[int] = deque()  # made, not handed out
        self._running: set[int] = set()  # handed out, not told

    # -- what subclasses define ------------------------------------------------------
    @property
    def total(self) -> int | None:
        """How many trials the whole search runs (None: not known)."""
        return None

    def _more(self) -> bool:
        """Whether trials beyond those made so far are still to come."""
        return False

    def _told(self, trial_id: int) -> None:
        """Called after every tell (differential evolution's selection)."""

    def _options(self) -> dict[str, Any]:
        """The constructor's options, saved in the state and checked on restore."""
        return {"direction": self.direction}

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _restore_extra(self, state: dict[str, Any]) -> None:
        pass

    # -- the interface ---------------------------------------------------------------
    def _add(self, trial: Trial) -> None:
        self._trials[trial.id] = trial
        self._queue.append(trial.id)

    def ask(self) -> Trial | None:
        """The next trial to run (a copy), or None when there is none until a running
        trial is told (or none at all: see :attr:`finished`)."""
        if not self._queue:
            return None
        tid = self._queue.popleft()
        self._running.add(tid)
        t = self._trials[tid]
        return Trial(t.id, dict(t.params), t.generation)

    def tell(self, trial_id: int, metric: float | None) -> None:
        """Records a trial's result: its metric, or None (or NaN) for a failed trial.

        Raises:
            KeyError: a trial this strategy never made.
            ValueError: a trial told before.
        """
        if trial_id not in self._trials:
            raise KeyError(f"{self.name}: no trial {trial_id} was made")
        if trial_id in self._metrics:
            raise ValueError(f"{self.name}: trial {trial_id} was told already")
        self._metrics[trial_id] = _metric(metric)
        self._running.discard(trial_id)
        if trial_id in self._queue:  # told without being asked (e.g. after a restore)
            self._queue.remove(trial_id)
        self._told(trial_id)

    @property
    def finished(self) -> bool:
        """Every trial handed out and told, and no more to come."""
        return not self._queue and not self._running and not self._more()

    @property
    def running(self) -> list[int]:
        """Ids of trials handed out and not yet told."""
        return sorted(self._running)

    def metric(self, trial_id: int) -> float | None:
        """A told trial's metric (None: failed).

        Raises:
            KeyError: a trial not told yet.
        """
        return self._metrics[trial_id]

    def better(self, a: float | None, b: float | None) -> bool:
        """Whether metric ``a`` is at least as good as ``b`` (None: failed, the worst;
        a failed ``a`` is never as good)."""
        if a is None:
            return False
        if b is None:
            return True
        return a >= b if self.direction == "max" else a <= b

    def best(self) -> tuple[Trial, float] | None:
        """The best told trial and its metric (the earliest of ties); None if no trial
        has succeeded."""
        best = None
        for tid in sorted(self._metrics):
            m = self._metrics[tid]
            if m is not None and (best is None or not self.better(best[1], m)):
                best = (self._trials[tid], m)
        return best

    def trials(self) -> list[Trial]:
        """Every trial made so far, by id."""
        return [self._trials[t] for t in sorted(self._trials)]

    def state(self) -> dict[str, Any]:
        """Everything needed to continue the search, as JSON-able values."""
        return {
            "strategy": self.name,
            "options": self._options(),
            "trials": [
                {"id": t.id, "params": t.params, "generation": t.generation} for t in self.trials()
            ],
            "metrics": [[tid, m] for tid, m in sorted(self._metrics.items())],
            **self._extra_state(),
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Continues from :meth:`state` (possibly a JSON round trip of it): told trials
        stay told; every other trial made is queued again, in id order, to be handed
        out with its id and params.

        Raises:
            ConfigError: a state saved by another strategy or other options.
        """
        if state.get("strategy") != self.name:
            raise ConfigError(
                f"search state: saved by strategy {state.get('strategy')!r}, "
                f"this search is {self.name!r}"
            )
        mine = self._options()
        saved = state.get("options", {})
        for key, value in mine.items():
            if saved.get(key) != value:
                raise ConfigError(
                    f"search state: saved with {key} = {saved.get(key)!r}, "
                    f"this search has {value!r}"
                )
        self._trials = {
            int(t["id"]): Trial(int(t["id"]), dict(t["params"]), int(t["generation"]))
            for t in state["trials"]
        }
        self._metrics = {int(tid): _metric(m) for tid, m in state["metrics"]}
        self._running = set()
        self._queue = deque(t for t in sorted(self._trials) if t not in self._metrics)
        self._restore_extra(state)

    @classmethod
    def from_state(cls, space: Space, state: dict[str, Any]) -> Strategy:
        """A strategy built with the options saved in ``state``, then restored."""
        s = cls(space, **state.get("options", {}))
        s.restore(state)
        return s


class Grid(Strategy):
    """Every point of ``space.grid()`` exactly once, ids 0..n-1 in grid order.

    Raises:
        ConfigError: a range without ``num``.
    """

    name = "grid"

    def __init__(self, space: Space, direction: str = "max"):
        super().__init__(space, direction)
        for i, params in enumerate(space.grid()):
            self._add(Trial(i, params))
        self._n = len(self._trials)

    @property
    def total(self) -> int:
        return self._n


class Random(Strategy):
    """``trials`` points of ``space.sample`` from ``np.random.default_rng(seed)``, all
    drawn up front (the same seed gives the same trials, whatever the tell order).

    Raises:
        ConfigError: ``trials < 1``.
    """

    name = "random"

    def __init__(self, space: Space, trials: int = 10, seed: int = 0, direction: str = "max"):
        super().__init__(space, direction)
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ConfigError(f"--trials {trials!r}: need at least 1")
        self.n_trials, self.seed = trials, seed
        rng = np.random.default_rng(seed)
        for i in range(trials):
            self._add(Trial(i, space.sample(rng)))

    @property
    def total(self) -> int:
        return self.n_trials

    def _options(self) -> dict[str, Any]:
        return {"trials": self.n_trials, "seed": self.seed, "direction": self.direction}


class DifferentialEvolution(Strategy):
    """DE/rand/1/bin (Storn & Price 1997, J. Global Optim. 11:341-359) on the space's
    unit-cube encoding (:meth:`Space.encode`): log ranges in log space, ints rounded,
    categoricals by index.

    Generation 0 is ``population`` uniform points of the unit cube. Generation
    g = 1..``generations`` makes, for each target i, the mutant
    ``v = x_r1 + F (x_r2 - x_r3)`` (r1, r2, r3 distinct and != i, Storn & Price eq. 2),
    clipped to [0, 1], and crosses it with ``x_i`` binomially: coordinate j comes from
    ``v`` when ``rand_j < CR`` or ``j == j_rand`` (eq. 4). A generation's trials are all
    made when it starts, from ``np.random.default_rng([seed, g])`` and the population;
    when every one is told, trial i replaces target i if its metric is better or equal
    (eq. 6); a failed trial never does. The population keeps the continuous vectors,
    so ints and categoricals can drift across cell boundaries over generations.

    Args:
        space: what to search.
        population: targets per generation, >= 4 (DE/rand/1 picks 3 others).
        generations: generations after the initial one, >= 0.
        crossover: CR in [0, 1].
        mutation: F in (0, 2].
        seed: fixes every trial.
        direction: ``max`` or ``min``.
    Raises:
        ConfigError: an option out of range (one line naming its flag).
    """

    name = "de"

    def __init__(
        self,
        space: Space,
        population: int = 10,
        generations: int = 3,
        crossover: float = 0.7,
        mutation: float = 0.5,
        seed: int = 0,
        direction: str = "max",
    ):
        super().__init__(space, direction)
        if isinstance(population, bool) or not isinstance(population, int) or population < 4:
            raise ConfigError(
                f"--population {population!r}: DE needs at least 4 (each target mixes 3 others)"
            )
        if isinstance(generations, bool) or not isinstance(generations, int) or generations < 0:
            raise ConfigError(f"--generations {generations!r}: must be an int >= 0")
        if not 0 <= crossover <= 1:
            raise ConfigError(f"--crossover {crossover!r}: must be in [0, 1]")
        if not 0 < mutation <= 2:
            raise ConfigError(f"--mutation {mutation!r}: must be in (0, 2]")
        self.population, self.generations = population, generations
        self.crossover, self.mutation, self.seed = float(crossover), float(mutation), seed
        self.generation = 0  # the generation being evaluated
        self._pop_x: np.ndarray | None = None  # (population, d) targets after selection
        self._pop_ids: list[int] = []  # the trial each target is
        self._gen_x = np.empty((0, len(space.axes)))  # (population, d) this generation's trials
        self._summary: list[dict[str, Any]] = []
        self._start(0)

    @property
    def total(self) -> int:
        return self.population * (self.generations + 1)

    def _options(self) -> dict[str, Any]:
        return {
            "population": self.population,
            "generations": self.generations,
            "crossover": self.crossover,
            "mutation": self.mutation,
            "seed": self.seed,
            "direction": self.direction,
        }

    def _more(self) -> bool:
        return self.generation < self.generations or len(self._metrics) < self.total

    def _start(self, g: int) -> None:
        """Makes generation g's trials (ids g * population + i)."""
        rng = np.random.default_rng([self.seed, g])
        n, d = self.population, len(self.space.axes)
        if g == 0:
            x = rng.random((n, d))  # (population, d)
        else:
            x = np.empty((n, d))
            for i in range(n):
                others = [j for j in range(n) if j != i]
                r1, r2, r3 = rng.choice(others, size=3, replace=False)
                mutant = self._pop_x[r1] + self.mutation * (self._pop_x[r2] - self._pop_x[r3])
                mutant = np.clip(mutant, 0.0, 1.0)
                cross = rng.random(d) < self.crossover
                cross[rng.integers(d)] = True  # j_rand: at least one coordinate mutates
                x[i] = np.where(cross, mutant, self._pop_x[i])
        self.generation, self._gen_x = g, x
        for i in range(n):
            self._add(Trial(g * n + i, self.space.decode(x[i]), g))

    def _told(self, trial_id: int) -> None:
        g, n = self.generation, self.population
        ids = range(g * n, (g + 1) * n)
        if trial_id not in ids or any(t not in self._metrics for t in ids):
            return
        if g == 0:
            self._pop_x, self._pop_ids = self._gen_x.copy(), list(ids)
        else:
            for i, tid in enumerate(ids):
                if self.better(self._metrics[tid], self._metrics[self._pop_ids[i]]):
                    self._pop_x[i], self._pop_ids[i] = self._gen_x[i], tid
        self._summary.append(self._summarise(g))
        if g < self.generations:
            self._start(g + 1)

    def _summarise(self, g: int) -> dict[str, Any]:
        ok = sorted(m for m in (self._metrics[t] for t in self._pop_ids) if m is not None)
        if self.direction == "min":
            ok.reverse()
        return {
            "generation": g,
            "best": ok[-1] if ok else None,
            "median": float(statistics.median(ok)) if ok else None,
            "worst": ok[0] if ok else None,
            "failed": self.population - len(ok),
        }

    def generations_summary(self) -> list[dict[str, Any]]:
        """Per finished generation, the population after selection: ``generation``,
        ``best``, ``median``, ``worst`` metric (None: every target failed) and how many
        targets have ``failed``. ``best`` never gets worse from one generation to the
        next (a target is replaced only by a trial at least as good)."""
        return [dict(s) for s in self._summary]

    def population_trials(self) -> list[tuple[Trial, float | None]]:
        """The current targets (after the last selection) and their metrics; empty
        before generation 0 is told."""
        return [(self._trials[t], self._metrics[t]) for t in self._pop_ids]

    def _extra_state(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "population_x": None if self._pop_x is None else self._pop_x.tolist(),
            "population_ids": list(self._pop_ids),
            "generation_x": self._gen_x.tolist(),
            "summary": self.generations_summary(),
        }

    def _restore_extra(self, state: dict[str, Any]) -> None:
        d = len(self.space.axes)
        self.generation = int(state["generation"])
        px = state["population_x"]
        self._pop_x = None if px is None else np.array(px, dtype=np.float64).reshape(-1, d)
        self._pop_ids = [int(t) for t in state["population_ids"]]
        self._gen_x = np.array(state["generation_x"], dtype=np.float64).reshape(-1, d)
        self._summary = [dict(s) for s in state["summary"]]
