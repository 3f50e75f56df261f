"""The search over rank groups with a cheap objective (``train_fn``): every trial once,
groups in parallel, failures recorded, differential evolution reproducible."""

import itertools
import math
import time

import numpy as np
import pytest

from hpcnet import search

LRS = [0.01, 0.02, 0.03]
MOMENTA = [0.0, 0.5, 0.9]


def _group_sizes(n):
    return [g for g in (1, 2) if n % g == 0]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_grid_runs_every_combination_exactly_once_over_the_groups(comm, shared_tmp):
    for gs in _group_sizes(comm.size):
        seen_sizes = []

        def objective(config, trial_comm, seen=seen_sizes):
            seen.append(trial_comm.Get_size())
            return {"test_accuracy": config["optim.lr"] * 10 + config["optim.momentum"]}

        recs = search.grid(
            {"optim.lr": LRS, "optim.momentum": MOMENTA},
            comm=comm,
            group_size=gs,
            out=shared_tmp / f"grid{gs}",
            train_fn=objective,
            verbose=False,
        )
        got = sorted((r.params["optim.lr"], r.params["optim.momentum"]) for r in recs)
        assert got == sorted(itertools.product(LRS, MOMENTA))  # all, none twice
        assert sorted(r.id for r in recs) == list(range(9))
        assert all(r.status == "completed" for r in recs)
        assert set(seen_sizes) <= {gs}  # each trial ran on its whole group
        assert {r.group for r in recs} <= set(range(comm.size // gs))
        best = max(recs, key=lambda r: r.metric)
        assert best.params == {"optim.lr": 0.03, "optim.momentum": 0.9}
        if comm.rank == 0:
            text = (shared_tmp / f"grid{gs}" / "best.toml").read_text()
            assert "[optim]" in text and "lr = 0.03" in text and "momentum = 0.9" in text
            assert len((shared_tmp / f"grid{gs}" / "results.csv").read_text().splitlines()) == 10


@pytest.mark.mpi(min_size=4)
@pytest.mark.timeout(120)
def test_two_groups_run_two_trials_at_once(comm, shared_tmp):
    from tests.mpi.ranks import first_ranks

    sub = first_ranks(comm, 4)
    if sub is None:
        return

    def slow(config, trial_comm):
        time.sleep(0.5)
        return {"test_accuracy": config["optim.lr"]}

    recs = search.grid(
        {"optim.lr": [0.1, 0.2, 0.3, 0.4]},
        comm=sub,
        group_size=2,
        out=shared_tmp / "overlap",
        train_fn=slow,
        verbose=False,
    )
    sub.Free()
    assert {r.group for r in recs} == {0, 1}
    overlapping = [
        (a.id, b.id)
        for a, b in itertools.combinations(recs, 2)
        if a.group != b.group and a.started < b.ended and b.started < a.ended
    ]
    assert overlapping, [(r.id, r.group, r.started, r.ended) for r in recs]


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
def test_failed_trials_are_recorded_and_the_search_completes(comm, shared_tmp):
    def objective(config, trial_comm):
        lr = config["optim.lr"]
        if lr == 0.02 and trial_comm.Get_rank() == 0:
            raise RuntimeError("boom")
        if lr == 0.03:
            return {"test_accuracy": math.nan}
        if lr == 0.04:  # looks at its time: returns once past the trial timeout
            t_end = time.monotonic() + 30
            while not search.trial_timed_out() and time.monotonic() < t_end:
                time.sleep(0.05)
        if lr == 0.06:  # ignores it: recorded failed when it returns
            assert search.trial_time_left() <= 2.0
            time.sleep(2.5)
        return {"test_accuracy": lr}

    gs = 2 if comm.size % 2 == 0 else 1
    t0 = time.monotonic()
    recs = search.grid(
        {"optim.lr": [0.01, 0.02, 0.03, 0.04, 0.05, 0.06]},
        comm=comm,
        group_size=gs,
        out=shared_tmp / "failures",
        train_fn=objective,
        trial_timeout=2.0,
        verbose=False,
    )
    assert time.monotonic() - t0 < 25  # the sleeping trial did not hold the search up
    by_lr = {r.params["optim.lr"]: r for r in recs}
    assert [by_lr[lr].status for lr in (0.01, 0.02, 0.03, 0.04, 0.05, 0.06)] == [
        "completed",
        "failed",
        "failed",
        "failed",
        "completed",
        "failed",
    ]
    assert "RuntimeError: boom" in by_lr[0.02].reason
    assert "nan" in by_lr[0.03].reason
    assert "trial timeout" in by_lr[0.04].reason
    assert "trial timeout" in by_lr[0.06].reason
    assert 2.0 <= by_lr[0.04].wall_s < 10  # it stopped soon after its timeout


def _bowl(config, trial_comm):
    x = np.array([config["optim.lr"], config["optim.momentum"]])
    return {"test_accuracy": -float(np.sum((x - np.array([1.2, -0.7])) ** 2))}


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(180)
def test_differential_evolution_finds_the_optimum_and_is_reproducible(comm, shared_tmp):
    space = {
        "optim.lr": {"low": -5.0, "high": 5.0},
        "optim.momentum": {"low": -5.0, "high": 5.0},
    }
    runs = []
    for i in range(2):
        recs = search.differential_evolution(
            space,
            population=10,
            generations=15,
            seed=7,
            comm=comm,
            group_size=1,
            out=shared_tmp / f"de{i}",
            train_fn=_bowl,
            verbose=False,
        )
        runs.append(sorted((r.id, tuple(sorted(r.params.items()))) for r in recs))
        assert len(recs) == 10 * 16
        best = max(r.metric for r in recs)
        assert best > -0.05, best  # within ~0.2 of the optimum (1.2, -0.7)
        # best so far per generation never falls and improves over the search
        per_gen = [max(r.metric for r in recs if r.generation <= g) for g in range(16)]
        assert per_gen == sorted(per_gen) and per_gen[-1] > per_gen[0]
    assert runs[0] == runs[1]  # the same seed: the same trials, whatever order they ended
