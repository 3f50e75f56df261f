"""A new search strategy is one class and one registration, in this file alone: a
coordinate descent over a space's numeric axes, with one option of its own (the step),
registered by name and run as a search over rank groups like a built-in one."""

from __future__ import annotations

import pytest

from hpcnet import search
from hpcnet.errors import ConfigError
from hpcnet.options import Option
from hpcnet.search.strategy import Strategy, Trial, register_strategy


class Halving(Strategy):
    """Bisection towards the better end of ``[low, high]`` of the first axis: every
    trial halves the interval around the best point so far, ``rounds`` trials in all
    (its option), one at a time (each waits for the last one's metric)."""

    name = "halving"

    def __init__(self, space, rounds: int, direction: str = "max"):
        super().__init__(space, direction)
        axis = space.axes[0]
        self.key, self.low, self.high, self.rounds = axis.key, axis.low, axis.high, rounds
        self._add(Trial(0, {self.key: (self.low + self.high) / 2}))

    @property
    def total(self) -> int:
        return self.rounds

    def _more(self) -> bool:
        return len(self._trials) < self.rounds

    def _options(self):
        return {"rounds": self.rounds, "direction": self.direction}

    def _told(self, trial_id: int) -> None:
        if not self._more():
            return
        best, _ = self.best()
        x = best.params[self.key]
        width = (self.high - self.low) / 2 ** (len(self._trials) + 1)
        nxt = min(self.high, x + width) if trial_id % 2 == 0 else max(self.low, x - width)
        self._add(Trial(len(self._trials), {self.key: nxt}))


register_strategy(
    "halving",
    lambda space, s: Halving(space, rounds=s.options["halving_rounds"], direction=s.direction),
    doc="bisection on the first axis (a strategy registered by a test file)",
    options=(Option("search.halving_rounds", 6, "halving: trials in all",
                    check=lambda v: v >= 1, must="must be >= 1"),),
)  # fmt: skip


def _objective(config, trial_comm):
    # a bowl with its top at lr = 0.3, the same on every rank of the group
    x = trial_comm.bcast(config["optim.lr"], root=0)
    return {"test_accuracy": 1.0 - (x - 0.3) ** 2}


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_a_strategy_registered_here_runs_a_search_by_its_name(comm, shared_tmp):
    assert "halving" in search.strategy_names()
    recs = search.run_search(
        {"optim.lr": {"low": 0.0, "high": 1.0}},
        "halving",
        comm=comm,
        group_size=2 if comm.size % 2 == 0 else 1,
        out=shared_tmp / "halving",
        train_fn=_objective,
        halving_rounds=5,  # its own option, as a keyword
        verbose=False,
    )
    assert sorted(r.id for r in recs) == list(range(5))
    assert all(r.status == "completed" for r in recs)
    best = max(recs, key=lambda r: r.metric)
    assert abs(best.params["optim.lr"] - 0.3) < 0.1  # it searched, towards the top
    if comm.rank == 0:  # its option is saved with the search, for --resume to compare
        import json

        saved = json.loads((shared_tmp / "halving" / "search.json").read_text())
        assert saved["strategy"] == "halving" and saved["options"] == {"halving_rounds": 5}


@pytest.mark.mpi(min_size=1)
@pytest.mark.timeout(60)
def test_its_option_is_checked_and_is_its_own(comm, shared_tmp):
    space = {"optim.lr": {"low": 0.0, "high": 1.0}}
    with pytest.raises(ConfigError, match="--halving-rounds 0: must be >= 1"):
        search.run_search(space, "halving", comm=comm, train_fn=_objective, halving_rounds=0)
    with pytest.raises(ConfigError, match="--halving-rounds is not an option of strategy 'grid'"):
        search.run_search(space, "grid", comm=comm, train_fn=_objective, halving_rounds=3)
    with pytest.raises(ConfigError, match="unknown strategy; choose one of grid, random, de, "):
        search.run_search(space, "nope", comm=comm, train_fn=_objective)


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_a_strategy_object_runs_without_registering(comm, shared_tmp):
    space = search.Space.from_dict({"optim.lr": {"low": 0.0, "high": 1.0}})
    recs = search.run_search(
        space, Halving(space, rounds=3), comm=comm, out=shared_tmp / "object",
        train_fn=_objective, verbose=False,
    )  # fmt: skip
    assert sorted(r.id for r in recs) == [0, 1, 2]
