"""Ask/tell searchers: grid and random hand out their trials once each; differential
evolution finds a shifted quadratic bowl's optimum, is reproducible whatever the tell
order, never keeps a failed trial, and resumes mid-generation to the same end."""

import json

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.search.space import Space
from hpcnet.search.strategies import DifferentialEvolution, Grid, Random, Trial

C = np.array([1.2, -0.7, 3.1])  # the bowl's centre
KEYS = ["optim.lr", "optim.momentum", "optim.weight_decay"]  # three float config keys


def bowl_space() -> Space:
    return Space.from_dict({k: {"low": -5.0, "high": 5.0} for k in KEYS})


def bowl(params: dict) -> float:
    """-|x - c|^2: maximum 0 at c."""
    x = np.array([params[k] for k in KEYS])
    return -float(np.sum((x - C) ** 2))


def run_all(strategy, objective, rng=None, workers=3) -> list[Trial]:
    """Drives ``strategy`` to the end like the scheduler: up to ``workers`` trials run at
    once and, with ``rng``, a random one of them finishes next. Returns the trials in
    the order they were handed out."""
    handed, running = [], []
    while not strategy.finished:
        while len(running) < workers:
            t = strategy.ask()
            if t is None:
                break
            handed.append(t)
            running.append(t)
        assert running, "nothing running and nothing to ask: the search is stuck"
        t = running.pop(int(rng.integers(len(running))) if rng is not None else 0)
        strategy.tell(t.id, objective(t.params))
    assert strategy.ask() is None
    return handed


def small_space() -> Space:
    return Space.from_dict(
        {"optim.lr": [0.01, 0.1, 0.5], "model.name": ["mlp", "lenet"], "run.seed": [1, 2]}
    )


def test_grid_hands_out_every_point_once():
    sp = small_space()
    g = Grid(sp)
    assert g.total == 12 and not g.finished
    handed = [g.ask() for _ in range(12)]
    assert [t.id for t in handed] == list(range(12))
    assert [t.params for t in handed] == sp.grid()
    assert g.ask() is None and not g.finished  # all handed out, none told
    for t in handed[:-1]:
        g.tell(t.id, t.params["optim.lr"])
    assert not g.finished and g.running == [11]
    g.tell(11, None)  # failed
    assert g.finished and g.ask() is None
    best, m = g.best()
    assert m == 0.5 and best.params["optim.lr"] == 0.5 and best.id == 8  # earliest of ties
    with pytest.raises(ValueError):
        g.tell(3, 1.0)  # told twice
    with pytest.raises(KeyError):
        g.tell(99, 1.0)
    assert Grid(sp, direction="min").total == 12
    with pytest.raises(ConfigError, match="num = K"):
        Grid(Space.from_dict({"optim.lr": {"low": 0.1, "high": 1.0}}))
    with pytest.raises(ConfigError, match="--direction"):
        Grid(sp, direction="up")


def test_best_honours_direction_and_failures():
    g = Grid(small_space(), direction="min")
    for t in iter(g.ask, None):
        g.tell(t.id, float("nan") if t.id == 0 else float(t.id))
    assert g.best()[0].id == 1 and g.best()[1] == 1.0  # NaN is failed, not best
    g = Grid(small_space())
    assert g.best() is None
    for t in iter(g.ask, None):
        g.tell(t.id, None)
    assert g.finished and g.best() is None


def test_random_same_seed_same_trials_whatever_the_tell_order():
    sp = bowl_space()
    a = run_all(Random(sp, trials=20, seed=7), bowl)
    b = run_all(Random(sp, trials=20, seed=7), bowl, rng=np.random.default_rng(3), workers=5)
    c = run_all(Random(sp, trials=20, seed=8), bowl)
    assert [(t.id, t.params) for t in a] == [(t.id, t.params) for t in b]
    assert [t.params for t in a] != [t.params for t in c]
    assert [t.id for t in a] == list(range(20))
    assert all(-5.0 <= v <= 5.0 for t in a for v in t.params.values())
    with pytest.raises(ConfigError, match="--trials 0"):
        Random(sp, trials=0)


@pytest.mark.parametrize("kind", ["grid", "random"])
def test_restore_rehands_only_untold_trials(kind):
    sp = small_space()
    make = (lambda: Grid(sp)) if kind == "grid" else (lambda: Random(sp, trials=12, seed=1))
    s = make()
    asked = [s.ask() for _ in range(7)]
    for t in asked[:4]:
        s.tell(t.id, 1.0)
    state = json.loads(json.dumps(s.state()))
    r = type(s).from_state(sp, state)
    again = list(iter(r.ask, None))
    assert [t.id for t in again] == list(range(4, 12))  # 4..6 handed out before, never told
    assert [t.params for t in again[:3]] == [t.params for t in asked[4:]]
    for t in again:
        r.tell(t.id, 0.0)
    assert r.finished and r.metric(0) == 1.0


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_de_finds_the_bowl_optimum(seed):
    de = DifferentialEvolution(bowl_space(), population=12, generations=30, seed=seed)
    assert de.total == 12 * 31
    handed = run_all(de, bowl)
    assert len(handed) == de.total and len({t.id for t in handed}) == de.total
    summary = de.generations_summary()
    assert [s["generation"] for s in summary] == list(range(31))
    best = [s["best"] for s in summary]
    assert all(b1 >= b0 for b0, b1 in zip(best, best[1:], strict=False))  # never worse
    assert all(s["worst"] <= s["median"] <= s["best"] for s in summary)
    # early on, the best strictly improves within every 5 generations (DE/rand/1 moves
    # the whole population, so the best alone can stall for ~8 generations later on)
    improved = [g for g in range(1, 11) if best[g] > best[g - 1]]
    assert improved and max(np.diff([0, *improved, 10])) <= 5, improved
    # ... while the population contracts around the optimum
    assert summary[20]["median"] > 0.01 * summary[0]["median"]
    # the best of the population is the best of every trial told
    assert best[-1] == max(bowl(t.params) for t in handed) == de.best()[1]
    assert de.best()[1] >= -0.05  # the optimum is 0
    np.testing.assert_allclose([de.best()[0].params[k] for k in KEYS], C, atol=np.sqrt(0.05))


def test_de_same_seed_same_trials_in_any_tell_order():
    sp = Space.from_dict(
        {
            "optim.lr": {"low": 1e-3, "high": 1.0, "log": True},
            "run.batch_size": {"low": 8, "high": 256, "log": True, "int": True},
            "model.name": ["mlp", "lenet", "digits_cnn"],
            "optim.momentum": {"low": 0.0, "high": 0.95},
        }
    )

    def objective(p):
        return (
            -((np.log10(p["optim.lr"]) + 1.5) ** 2)
            - (p["model.name"] == "mlp")
            + (p["optim.momentum"] - p["run.batch_size"] / 256)
        )

    def trials(order_seed, workers):
        de = DifferentialEvolution(sp, population=8, generations=5, seed=11)
        rng = None if order_seed is None else np.random.default_rng(order_seed)
        handed = run_all(de, objective, rng=rng, workers=workers)
        return sorted((t.id, json.dumps(t.params), t.generation) for t in handed), de

    ref, de_ref = trials(None, 1)
    for order_seed, workers in ((1, 3), (2, 8), (3, 5)):
        got, de = trials(order_seed, workers)
        assert got == ref
        assert de.generations_summary() == de_ref.generations_summary()
    other, _ = trials(None, 1)
    assert other == ref
    assert trials(None, 1)[0] != sorted(
        (t.id, json.dumps(t.params), t.generation)
        for t in run_all(DifferentialEvolution(sp, population=8, generations=5, seed=12), objective)
    )


def test_de_waits_for_the_whole_generation():
    de = DifferentialEvolution(bowl_space(), population=5, generations=1)
    gen0 = [de.ask() for _ in range(5)]
    assert all(t.generation == 0 for t in gen0) and de.ask() is None
    for t in gen0[:4]:
        de.tell(t.id, bowl(t.params))
        assert de.ask() is None and not de.finished
    de.tell(gen0[4].id, bowl(gen0[4].params))
    gen1 = list(iter(de.ask, None))
    assert [t.id for t in gen1] == [5, 6, 7, 8, 9] and all(t.generation == 1 for t in gen1)
    for t in gen1:
        de.tell(t.id, bowl(t.params))
    assert de.finished and len(de.generations_summary()) == 2


def test_de_failed_trial_never_replaces_its_target():
    de = DifferentialEvolution(bowl_space(), population=6, generations=2, seed=5)
    gen0 = list(iter(de.ask, None))
    for t in gen0:  # targets 0 and 1 fail in generation 0
        de.tell(t.id, None if t.id in (0, 1) else bowl(t.params))
    gen1 = list(iter(de.ask, None))
    # trial 6 (target 0) succeeds with the worst metric yet; trial 7 (target 1) fails too;
    # every other trial fails although its target succeeded
    for t in gen1:
        de.tell(t.id, -1e9 if t.id == 6 else None)
    pop = de.population_trials()
    assert [t.id for t, _ in pop] == [6, 1, 2, 3, 4, 5]
    assert pop[0][1] == -1e9 and pop[1][1] is None
    assert de.generations_summary()[1]["failed"] == 1
    # equal metrics replace (Storn & Price's <=): a flat objective swaps every target
    gen2 = list(iter(de.ask, None))
    for t in gen2:
        de.tell(t.id, None if t.id == 13 else de.metric(pop[t.id - 12][0].id))
    assert [t.id for t, _ in de.population_trials()] == [12, 1, 14, 15, 16, 17]
    assert de.finished


def test_de_validates_its_options():
    sp = bowl_space()
    for kw, must in (
        ({"population": 3}, "--population 3: DE needs at least 4"),
        ({"generations": -1}, "--generations -1"),
        ({"crossover": 1.5}, "--crossover 1.5"),
        ({"mutation": 0.0}, "--mutation 0.0"),
        ({"mutation": 2.5}, "--mutation 2.5"),
    ):
        with pytest.raises(ConfigError) as e:
            DifferentialEvolution(sp, **kw)
        assert str(e.value).startswith(must) and "\n" not in str(e.value)
    de = DifferentialEvolution(sp, population=4, generations=0)
    assert de.total == 4 and len(run_all(de, bowl)) == 4 and de.finished


def test_de_restore_mid_generation_completes_like_an_uninterrupted_run():
    sp = bowl_space()

    def fresh():
        return DifferentialEvolution(sp, population=6, generations=4, seed=3, mutation=0.8)

    whole = fresh()
    ref = run_all(whole, bowl)

    de = fresh()
    running = []
    for _ in range(6 * 2):  # generations 0 and 1
        t = de.ask()
        de.tell(t.id, bowl(t.params))
    for _ in range(4):  # generation 2: four handed out, two of them told
        running.append(de.ask())
    for t in running[:2]:
        de.tell(t.id, bowl(t.params))
    state = json.loads(json.dumps(de.state()))  # as state.json holds it

    back = DifferentialEvolution.from_state(sp, state)
    again = list(iter(back.ask, None))
    assert [t.id for t in again] == [14, 15, 16, 17]  # 12 and 13 stay told
    by_id = {t.id: t for t in ref}
    assert all(t.params == by_id[t.id].params and t.generation == 2 for t in again)
    for t in again:
        back.tell(t.id, bowl(t.params))
    rest = run_all(back, bowl)
    assert back.finished
    assert [(t.id, t.params) for t in rest] == [(t.id, t.params) for t in ref[18:]]
    assert back.best() == whole.best()
    assert back.generations_summary() == whole.generations_summary()
    # restore also works in place, and refuses a state of another search
    same = fresh()
    same.restore(state)
    assert [t.id for t in iter(same.ask, None)] == [14, 15, 16, 17]
    with pytest.raises(ConfigError, match="seed"):
        DifferentialEvolution(sp, population=6, generations=4, seed=4, mutation=0.8).restore(state)
    with pytest.raises(ConfigError, match="strategy"):
        Grid(Space.from_dict({"optim.lr": [0.1]})).restore(state)
