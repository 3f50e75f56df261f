"""The ask/tell interface of a search strategy, and the registry of strategies by name.

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

A new strategy is one class (a :class:`Strategy` subclass, or any object with the same
methods) and one :func:`register_strategy` call that names it and declares its options
(:mod:`hpcnet.search.settings`): ``search --strategy NAME``, its flags, a space file's
``[search]`` table and :func:`hpcnet.search.run_search` know it from then on (Ray Tune's
``Searcher``, Optuna's ask-and-tell).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hpcnet.errors import ConfigError
from hpcnet.options import Option
from hpcnet.search.settings import SEARCH, STRATEGIES, SearchSettings
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


@dataclass(frozen=True)
class StrategyEntry:
    """A registered strategy.

    Attributes:
        name: the ``--strategy`` value.
        doc: one line: what it does, with its source.
        make: ``make(space, settings) -> Strategy``; its own options are in
            ``settings.options``, the common ones (``direction``, ``seed``) in
            ``settings``.
        options: its own options (key ``search.NAME``), declared when it registers.
        seeded: whether it reads ``settings.seed`` (saved with its options, checked on
            ``--resume``).
    """

    name: str
    doc: str
    make: Callable[[Space, SearchSettings], Strategy]
    options: tuple[Option, ...] = ()
    seeded: bool = False

    def saved_options(self, settings: SearchSettings) -> dict[str, Any]:
        """What defines its trials beyond the space: saved in ``search.json`` and
        compared on ``--resume``."""
        out = dict(settings.options)
        if self.seeded:
            out["seed"] = settings.seed
        return out


_STRATEGIES: dict[str, StrategyEntry] = STRATEGIES  # the search settings check names in it


def register_strategy(
    name: str,
    make: Callable[[Space, SearchSettings], Strategy],
    *,
    doc: str,
    options: tuple[Option, ...] = (),
    seeded: bool = False,
) -> StrategyEntry:
    """Registers a strategy under ``name`` and declares its ``options`` (keys
    ``search.NAME``; flags ``--NAME``) in the search's registry; returns its entry.

    Raises:
        ValueError: the name is taken by another strategy, or an option's key or flag is.
    """
    entry = StrategyEntry(name, doc, make, tuple(options), seeded)
    old = _STRATEGIES.get(name)
    if old is not None and (old.make is not make or old.options != entry.options):
        raise ValueError(f"search strategy {name!r} is already registered")
    SEARCH.declare(*entry.options, owner=f"strategy {name}")
    _STRATEGIES[name] = entry
    return entry


def strategy_names() -> tuple[str, ...]:
    """The registered strategies, in registration order (the built-in ones first)."""
    return tuple(_STRATEGIES)


def get_strategy(name: str) -> StrategyEntry:
    """The strategy registered as ``name``.

    Raises:
        ConfigError: no such strategy; the message lists the registered ones.
    """
    try:
        return _STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"--strategy {name!r}: unknown strategy; choose one of {', '.join(_STRATEGIES)}"
        ) from None
