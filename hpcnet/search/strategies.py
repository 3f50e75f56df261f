"""The built-in search strategies: grid, random search and differential evolution, each
a :class:`~hpcnet.search.strategy.Strategy` registered by name with its options
(:func:`~hpcnet.search.strategy.register_strategy`)."""

from __future__ import annotations

import inspect
import statistics
from typing import Any

import numpy as np

from hpcnet.errors import ConfigError
from hpcnet.options import Option
from hpcnet.search.space import Space
from hpcnet.search.strategy import Strategy, Trial, register_strategy

__all__ = ["DifferentialEvolution", "Grid", "Random", "Strategy", "Trial"]


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


def _default(cls: type, name: str) -> Any:
    """The default of ``cls``'s constructor argument ``name``: the one place it lives."""
    return inspect.signature(cls).parameters[name].default


register_strategy(
    "grid",
    lambda space, s: Grid(space, direction=s.direction),
    doc="every point of the space's grid once (ranges need num points)",
)
register_strategy(
    "random",
    lambda space, s: Random(space, trials=s.options["trials"], seed=s.seed, direction=s.direction),
    doc="trials drawn from the space (log ranges log-uniform), fixed by the seed",
    options=(
        Option("search.trials", _default(Random, "trials"), "random search: trials",
               check=lambda v: v >= 1, must="need at least 1"),
    ),
    seeded=True,
)  # fmt: skip
register_strategy(
    "de",
    lambda space, s: DifferentialEvolution(
        space, **s.options, seed=s.seed, direction=s.direction
    ),
    doc="differential evolution, DE/rand/1/bin (Storn & Price 1997)",
    options=(
        Option("search.population", _default(DifferentialEvolution, "population"),
               "DE: targets per generation", check=lambda v: v >= 4,
               must="DE needs at least 4 (each target mixes 3 others)"),
        Option("search.generations", _default(DifferentialEvolution, "generations"),
               "DE: generations after the first", check=lambda v: v >= 0,
               must="must be an int >= 0"),
        Option("search.crossover", _default(DifferentialEvolution, "crossover"),
               "DE: crossover rate CR", check=lambda v: 0 <= v <= 1, must="must be in [0, 1]"),
        Option("search.mutation", _default(DifferentialEvolution, "mutation"),
               "DE: differential weight F", check=lambda v: 0 < v <= 2,
               must="must be in (0, 2]"),
    ),
    seeded=True,
)  # fmt: skip
