"""Hyper-parameter and architecture search over rank groups: grid, random search and
differential evolution, each trial an hpcnet training run (or your own objective).

The world is split into groups of ``group_size`` ranks; each group trains one
trial at a time on its own communicator, with any algorithm and layout that fits
in the group (:mod:`hpcnet.search.runner` has the scheduling policy and the files).
In the spirit of Hops' ``experiment.launch`` / ``experiment.evolutionary_search``::

    from hpcnet import search
    search.grid({"optim.lr": [0.01, 0.05], "model.name": ["mlp", "digits_cnn"]},
                fixed={"data.name": "digits"}, group_size=2, out="runs/grid")
    search.differential_evolution(
        {"optim.lr": {"low": 1e-3, "high": 0.3, "log": True},
         "optim.momentum": {"low": 0.0, "high": 0.95}},
        direction="max", population=6, generations=3, group_size=2, out="runs/de")

Each function is collective over ``comm`` (default: hpcnet's world) and returns
every trial's :class:`~hpcnet.search.runner.TrialRecord` on every rank. A
``train_fn(config, comm) -> metrics`` replaces hpcnet's training with your own
objective (``config``: the fixed and the trial's keys).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.search.early_stop import EARLY_STOP
from hpcnet.search.runner import TrainFn, TrialRecord, run_search
from hpcnet.search.space import Space
from hpcnet.search.strategies import DifferentialEvolution, Grid, Random

__all__ = [
    "Space",
    "TrialRecord",
    "differential_evolution",
    "grid",
    "random",
    "run",
]

STRATEGIES = ("grid", "random", "de")


def _space(space: Space | dict | str | os.PathLike, fixed: dict | None) -> Space:
    if isinstance(space, Space):
        return space
    if isinstance(space, dict):
        return Space.from_dict(space, fixed=fixed)
    return Space.load(space)


def run(
    space: Space | dict | str | os.PathLike,
    strategy: str = "grid",
    *,
    fixed: dict[str, Any] | None = None,
    comm: MPI.Intracomm | None = None,
    group_size: int = 1,
    out: str | os.PathLike = "runs/search",
    train_fn: TrainFn | None = None,
    metric: str = "test_accuracy",
    direction: str = "max",
    trials: int = 10,
    population: int = 10,
    generations: int = 3,
    crossover: float = 0.7,
    mutation: float = 0.5,
    seed: int = 0,
    trial_timeout: float | None = None,
    config_file: str | None = None,
    resume: bool = False,
    verbose: bool = True,
    early_stop: str = "none",
) -> list[TrialRecord]:
    """Runs a search with the strategy called ``strategy`` (``grid``, ``random``,
    ``de``). Collective over ``comm``; see :func:`hpcnet.search.runner.run_search`.

    Raises:
        ConfigError: a bad space or setting (one line, the same on every rank).
    """
    from hpcnet.comm import library_comm, same_on_every_rank
    from hpcnet.errors import ConfigError

    comm = comm or library_comm()
    with same_on_every_rank():  # nothing communicated yet: the same error everywhere
        sp = _space(space, fixed)
        fixed = {**sp.fixed, **(fixed or {})}
        if direction not in ("max", "min"):
            raise ConfigError(f"--direction {direction!r}: choose max or min")
        if early_stop not in EARLY_STOP:
            raise ConfigError(f"--early-stop {early_stop!r}: choose one of {', '.join(EARLY_STOP)}")
        if early_stop != "none" and train_fn is not None:
            raise ConfigError(
                f"--early-stop {early_stop}: needs trials that are hpcnet runs (their progress "
                "records), not a train_fn"
            )
        if train_fn is None:
            sp.validate()
        if strategy == "grid":
            strat = Grid(sp, direction=direction)
            options: dict[str, Any] = {}
        elif strategy == "random":
            if trials < 1:
                raise ConfigError(f"--trials {trials}: need at least 1")
            strat = Random(sp, trials=trials, seed=seed, direction=direction)
            options = {"trials": trials, "seed": seed}
        elif strategy == "de":
            strat = DifferentialEvolution(
                sp,
                population=population,
                generations=generations,
                crossover=crossover,
                mutation=mutation,
                seed=seed,
                direction=direction,
            )
            options = {
                "population": population,
                "generations": generations,
                "crossover": crossover,
                "mutation": mutation,
                "seed": seed,
            }
        else:
            raise ConfigError(f"--strategy {strategy!r}: choose one of {', '.join(STRATEGIES)}")
    settings = {
        "strategy": strategy,
        "options": options,
        "space": sp.describe(),
        "fixed": {k: v for k, v in sorted(fixed.items())},
        "metric": metric,
        "direction": direction,
        "early_stop": early_stop,
        "objective": "train" if train_fn is None else getattr(train_fn, "__name__", "train_fn"),
        "group_size": group_size,
    }
    records = run_search(
        strat,
        comm=comm,
        group_size=group_size,
        out=out,
        settings=settings,
        fixed=fixed,
        config_file=config_file,
        train_fn=train_fn,
        metric=metric,
        direction=direction,
        trial_timeout=trial_timeout,
        resume=resume,
        verbose=verbose,
        early_stop=early_stop,
    )
    if comm.Get_rank() == 0:
        from hpcnet.search.results import table, write_results

        best = write_results(Path(out), records, sp.keys, fixed, metric, direction)
        if verbose:
            from hpcnet.search.faults import lost_lines, read_lost_groups

            print(table(records, sp.keys, metric, direction), flush=True)
            for line in lost_lines(read_lost_groups(Path(out))):
                print(line, flush=True)
            if best is not None:
                print(
                    f"best: trial {best.id}, {metric} {best.metric:.4f}; "
                    f"config in {Path(out) / 'best.toml'}",
                    flush=True,
                )
        _plot(Path(out), metric, direction, verbose)
    return records


def _plot(out: Path, metric: str, direction: str, verbose: bool) -> None:
    """Rank 0, at the end: the search's PNGs (:mod:`hpcnet.search.plots`) when
    matplotlib is installed (none, silently, when not). A plot that fails is one line
    on stderr: the results files are written already, the search is not lost."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    import sys

    from hpcnet.search.plots import plot_search

    try:
        paths = plot_search(out, metric, direction)
    except Exception as e:
        print(f"hpcnet search: plots not written: {type(e).__name__}: {e}", file=sys.stderr)
        return
    if verbose:
        print("plots: " + ", ".join(str(p) for p in paths), flush=True)


def grid(space, **kw) -> list[TrialRecord]:
    """Every combination of the space's values (ranges need ``num`` points), once each,
    spread over the groups (Hops' ``experiment.launch``)."""
    return run(space, "grid", **kw)


def random(space, *, trials: int = 10, seed: int = 0, **kw) -> list[TrialRecord]:
    """``trials`` samples of the space (log ranges log-uniform), fixed by ``seed``."""
    return run(space, "random", trials=trials, seed=seed, **kw)


def differential_evolution(
    space,
    *,
    direction: str = "max",
    population: int = 10,
    generations: int = 3,
    crossover: float = 0.7,
    mutation: float = 0.5,
    seed: int = 0,
    **kw,
) -> list[TrialRecord]:
    """DE/rand/1/bin (Storn & Price 1997) over the space's unit-cube encoding:
    ``population`` x (``generations`` + 1) trials, a generation evaluated as groups free
    up (Hops' ``experiment.evolutionary_search``)."""
    return run(
        space,
        "de",
        direction=direction,
        population=population,
        generations=generations,
        crossover=crossover,
        mutation=mutation,
        seed=seed,
        **kw,
    )
