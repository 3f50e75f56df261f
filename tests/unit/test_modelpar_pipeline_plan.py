"""Pipeline stage cutting (pure, one process): against brute force, and the error
for more partitions than the model has layers with parameters."""

import itertools

import numpy as np
import pytest

from hpcnet.errors import ConfigError
from hpcnet.modelpar.pipeline import cut_stages, forward_cost, plan_stages
from hpcnet.nn.zoo import build_model


def _brute(costs, has_params, boundary, m, slack):
    """Every cut, the same two objectives, earliest cut on ties (itertools order)."""
    n = len(costs)
    cands = []
    for cuts in itertools.combinations(range(1, n), m - 1):
        b = [0, *cuts, n]
        if all(any(has_params[b[s] : b[s + 1]]) for s in range(m)):
            cands.append(b)
    bottleneck = min(max(sum(costs[b[s] : b[s + 1]]) for s in range(m)) for b in cands)
    ok = [
        b
        for b in cands
        if max(sum(costs[b[s] : b[s + 1]]) for s in range(m)) <= bottleneck * (1 + slack)
    ]
    return bottleneck, min(sum(boundary[c - 1] for c in b[1:-1]) for b in ok)


@pytest.mark.parametrize("seed", range(30))
def test_cut_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 9))
    costs = rng.integers(0, 100, n).tolist()
    has_params = (rng.random(n) < 0.6).tolist()
    has_params[int(rng.integers(n))] = True
    boundary = rng.integers(1, 50, n).tolist()
    slack = float(rng.choice([0.0, 0.05, 0.3]))
    for m in range(1, sum(has_params) + 1):
        b = cut_stages(costs, has_params, boundary, m, slack)
        assert b[0] == 0 and b[-1] == n and len(b) == m + 1
        assert all(any(has_params[b[s] : b[s + 1]]) for s in range(m))
        want_bottleneck, want_traffic = _brute(costs, has_params, boundary, m, slack)
        got = max(sum(costs[b[s] : b[s + 1]]) for s in range(m))
        assert got <= want_bottleneck * (1 + slack)
        assert sum(boundary[c - 1] for c in b[1:-1]) == want_traffic


def test_cut_is_balanced_and_lands_after_pooling():
    model = build_model("lenet", (1, 28, 28), 10)
    # conv-relu-pool | conv-relu-pool-... : the cut follows the pooling layer
    assert plan_stages(model, 2) == [0, 3, 12]
    assert plan_stages(model, 1) == [0, 12]


@pytest.mark.parametrize(
    "name, most", [("lenet", 5), ("mlp", 3), ("towers", 3), ("alexnet", 8), ("linear", 1)]
)
def test_too_many_partitions_is_a_config_error(name, most):
    model = build_model(name, (1, 28, 28), 10)
    b = plan_stages(model, most)
    assert len(b) == most + 1
    with pytest.raises(ConfigError, match=rf"^--partitions {most + 1}: model '{name}'") as e:
        plan_stages(model, most + 1)
    assert "\n" not in str(e.value) and f"at most {most}" in str(e.value)


def test_forward_cost_counts_multiply_adds():
    model = build_model("lenet", (1, 28, 28), 10)
    conv1, dense = model.layers[0], model.layers[7]
    assert forward_cost(conv1) == 6 * 28 * 28 * 1 * 5 * 5
    assert forward_cost(dense) == 400 * 120
    towers = build_model("towers", (1, 28, 28), 10).layers[0]
    assert forward_cost(towers) == sum(forward_cost(s) for _, _, s in towers.sublayers())
