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

import dataclasses
import os
from pathlib import Path
from typing import Any

from mpi4py import MPI

from hpcnet.search import strategies as _strategies  # noqa: F401  registers grid, random, de
from hpcnet.search.runner import TrainFn, TrialRecord, search_on_groups
from hpcnet.search.settings import SearchSettings, default, metric_for, resolve
from hpcnet.search.space import Space
from hpcnet.search.strategy import Strategy, get_strategy, register_strategy, strategy_names
from hpcnet.search.trials import trial_time_left, trial_timed_out

__all__ = [
    "SearchSettings",
    "Space",
    "Strategy",
    "TrialRecord",
    "differential_evolution",
    "grid",
    "random",
    "register_strategy",
    "run_search",
    "trial_time_left",
    "trial_timed_out",
    "strategy_names",
]


def _space(space: Space | dict | str | os.PathLike, fixed: dict | None) -> Space:
    if isinstance(space, Space):
        return space
    if isinstance(space, dict):
        return Space.from_dict(space, fixed=fixed)
    return Space.load(space)


def _trial_check(config_file: str | None, group_size: int, fixed: dict):
    """``check(overrides)``, raising ConfigError where ``train`` would refuse a trial's
    config: its options, its layout on a group of ``group_size`` ranks, its model for its
    data (opened once per data set; rank 0 only: a data set may be converted on first use)."""
    from hpcnet.algos import get_algorithm
    from hpcnet.config import load_config
    from hpcnet.data.format import open_dataset
    from hpcnet.data.registry import resolve_data
    from hpcnet.layout import layout_for
    from hpcnet.nn.zoo import run_model

    shapes: dict[str, tuple] = {}

    def check(overrides: dict) -> None:
        cfg = load_config(config_file, {**fixed, **overrides})
        layout_for(cfg, group_size, get_algorithm(cfg.algo.name))
        if cfg.data.name not in shapes:
            info = open_dataset(resolve_data(cfg.data.name))
            shapes[cfg.data.name] = (info.image_shape, info.num_classes)
        run_model(cfg.model, cfg.data.name, *shapes[cfg.data.name])

    return check


def run_search(
    space: Space | dict | str | os.PathLike,
    strategy: str | Strategy | None = None,
    settings: SearchSettings | None = None,
    *,
    fixed: dict[str, Any] | None = None,
    comm: MPI.Intracomm | None = None,
    train_fn: TrainFn | None = None,
    **changes: Any,
) -> list[TrialRecord]:
    """Runs a search. Collective over ``comm`` (default: hpcnet's world); see
    :func:`hpcnet.search.runner.search_on_groups`.

    Args:
        space: a :class:`Space`, a dict of axes, or a SPACE.toml path.
        strategy: a registered strategy's name (``grid``, ``random``, ``de``, or one
            registered with :func:`hpcnet.search.strategy.register_strategy`), or a
            strategy object (ask/tell, :class:`hpcnet.search.strategy.Strategy`); None:
            ``settings.strategy`` (default ``grid``).
        settings: how the search runs; None: the declared defaults
            (:mod:`hpcnet.search.settings`).
        fixed: train config keys every trial shares (beside the space's ``[fixed]``).
        comm: the ranks of the search.
        train_fn: ``train_fn(config, comm) -> metrics`` instead of hpcnet training.
        **changes: settings to change (``group_size=2``, ``out="runs/de"``) and the
            strategy's own options (``trials=20``, ``population=8``).
    Returns:
        Every finished trial's record (every rank).
    Raises:
        ConfigError: a bad space, setting or option (one line, the same on every rank).
    """
    from hpcnet.comm import library_comm, root_then_bcast, same_on_every_rank
    from hpcnet.errors import ConfigError

    comm = comm or library_comm()
    with same_on_every_rank():  # nothing communicated yet: the same error everywhere
        sp = _space(space, fixed)
        fixed = {**sp.fixed, **(fixed or {})}
        base = dataclasses.asdict(settings) if settings is not None else {}
        given = {**base.pop("options", {}), **base, **changes}
        if strategy is None or isinstance(strategy, str):
            entry = get_strategy(strategy or given.get("strategy") or default("strategy"))
            given["strategy"] = entry.name
        else:  # an object: its own options are its business
            entry = None
            given.pop("strategy", None)
        if "out" in given:
            given["out"] = str(given["out"])
        resolved = resolve(given, strategy_options=entry.options if entry else ())
        if entry is None:
            name = getattr(strategy, "name", type(strategy).__name__)
            resolved = dataclasses.replace(resolved, strategy=name)
        if resolved.early_stop != "none" and train_fn is not None:
            raise ConfigError(
                f"--early-stop {resolved.early_stop}: needs trials that are hpcnet runs (their "
                "progress records), not a train_fn"
            )
        size, gs = comm.Get_size(), resolved.group_size
        if gs < 1 or size % gs:
            raise ConfigError(f"--group-size {gs}: {size} ranks do not split into groups of it")
        resolved = dataclasses.replace(resolved, metric=metric_for(resolved, fixed, train_fn))
        strat = entry.make(sp, resolved) if entry is not None else strategy
    if train_fn is None:  # every value train would refuse: one line, before any trial
        check = _trial_check(resolved.config_file, resolved.group_size, fixed)
        root_then_bcast(lambda: sp.validate(check), comm)
    saved = {
        "strategy": resolved.strategy,
        "options": entry.saved_options(resolved) if entry else {},
        "space": sp.describe(),
        "fixed": {k: v for k, v in sorted(fixed.items())},
        "metric": resolved.metric,
        "direction": resolved.direction,
        "early_stop": resolved.early_stop,
        "objective": "train" if train_fn is None else getattr(train_fn, "__name__", "train_fn"),
        "group_size": resolved.group_size,
    }
    records = search_on_groups(
        strat, resolved, comm=comm, saved=saved, fixed=fixed, train_fn=train_fn
    )
    out, metric, direction, verbose = (
        Path(resolved.out),
        resolved.metric,
        resolved.direction,
        resolved.verbose,
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
                    f"best: trial {best.id}, {metric} {best.metric:.4f}{_beside(out, best)}; "
                    f"config in {Path(out) / 'best.toml'}",
                    flush=True,
                )
        _plot(Path(out), metric, direction, verbose)
    return records


def _beside(out, best: TrialRecord) -> str:
    """``, test_accuracy 0.91`` for a best trial chosen on another metric (its summary)."""
    path = Path(out) / "trials" / f"{best.id:04d}" / "summary.json"
    if not path.is_file():
        return ""
    import json

    summary = json.loads(path.read_text())
    if "test_accuracy" not in summary or "val_accuracy" not in summary:
        return ""
    return f" (test_accuracy {summary['test_accuracy']:.4f} beside it)"


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
    return run_search(space, "grid", **kw)


def random(space, **kw) -> list[TrialRecord]:
    """``trials`` samples of the space (log ranges log-uniform), fixed by ``seed``
    (keywords as :func:`run_search` takes them: ``trials=20, seed=1, group_size=2``)."""
    return run_search(space, "random", **kw)


def differential_evolution(space, **kw) -> list[TrialRecord]:
    """DE/rand/1/bin (Storn & Price 1997) over the space's unit-cube encoding:
    ``population`` x (``generations`` + 1) trials, a generation evaluated as groups free
    up (Hops' ``experiment.evolutionary_search``); keywords as :func:`run_search` takes them
    (``population``, ``generations``, ``crossover``, ``mutation``, ``seed``, ...)."""
    return run_search(space, "de", **kw)
