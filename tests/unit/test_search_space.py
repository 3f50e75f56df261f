"""Search spaces: SPACE.toml in both key forms, every bad space as one line, grid points,
sampling and the unit-cube encoding, and validation against train's config."""

import itertools

import numpy as np
import pytest

from hpcnet.config import load_config
from hpcnet.errors import ConfigError
from hpcnet.search.space import Categorical, Range, Space

QUOTED = """
[space]
"optim.lr" = { low = 1e-3, high = 0.3, log = true, num = 3 }
"run.batch_size" = { low = 16, high = 128, log = true, int = true, num = 4 }
"model.name" = { values = ["digits_cnn", "mlp"] }

[fixed]
"data.name" = "digits"
"run.epochs" = 2
"optim.weight_decay" = 0

[search]
strategy = "de"
population = 6
"""

NESTED = """
[space.optim]
lr = { low = 1e-3, high = 0.3, log = true, num = 3 }

[space.run]
batch_size = { low = 16, high = 128, log = true, int = true, num = 4 }

[space]
model.name = { values = ["digits_cnn", "mlp"] }

[fixed.data]
name = "digits"

[fixed]
run.epochs = 2
"optim.weight_decay" = 0

[search]
strategy = "de"
population = 6
"""


def _write(tmp_path, text, name="space.toml"):
    f = tmp_path / name
    f.write_text(text)
    return f


@pytest.mark.parametrize("text", [QUOTED, NESTED], ids=["quoted", "nested"])
def test_load_both_key_forms(tmp_path, text):
    sp = Space.load(_write(tmp_path, text))
    assert sp.keys == ["optim.lr", "run.batch_size", "model.name"]
    lr, bs, model = sp.axes
    assert isinstance(lr, Range) and lr.log and not lr.integer and (lr.low, lr.high) == (1e-3, 0.3)
    assert isinstance(bs, Range) and bs.integer and bs.num == 4
    assert isinstance(model, Categorical) and model.values == ["digits_cnn", "mlp"]
    assert sp.fixed == {"data.name": "digits", "run.epochs": 2, "optim.weight_decay": 0.0}
    assert isinstance(sp.fixed["optim.weight_decay"], float)  # a float key, as train's TOML
    assert sp.search == {"strategy": "de", "population": 6}
    assert "\n" not in sp.describe() and "optim.lr" in sp.describe()
    sp.validate()


def test_from_dict_lists_and_nested():
    sp = Space.from_dict(
        {"optim": {"lr": [0.01, 0.1]}, "algo.name": ["sync", "avg"]},
        fixed={"run.epochs": 1},
    )
    assert sp.keys == ["optim.lr", "algo.name"]
    assert sp.grid() == [
        {"optim.lr": 0.01, "algo.name": "sync"},
        {"optim.lr": 0.01, "algo.name": "avg"},
        {"optim.lr": 0.1, "algo.name": "sync"},
        {"optim.lr": 0.1, "algo.name": "avg"},
    ]


LR = '"optim.lr" = { low = 0.01, high = 0.1 }\n'


@pytest.mark.parametrize(
    "text,key,must",
    [
        ('[fixed]\n"run.epochs" = 1\n', "[space]", "no [space]"),
        ("[space]\n", "[space]", "no [space]"),
        ('[space]\n"optim.lrr" = { values = [0.1] }\n', "optim.lrr", "unknown config key"),
        ('[space]\n"optimiser.lr" = { values = [0.1] }\n', "optimiser.lr", "no section"),
        ("[space]\nlr = { values = [0.1] }\n", "lr", "not a config key"),
        ('[space]\n"optim.lr.x" = { values = [0.1] }\n', "optim.lr.x", "unknown config key"),
        ("[space]\n" + LR + '[fixed]\n"optim.lr" = 0.05\n', "optim.lr", "both searched"),
        ('[space]\n"optim.lr" = { values = [] }\n', "optim.lr", "empty"),
        ('[space]\n"optim.lr" = { values = [0.1, 0.1] }\n', "optim.lr", "twice"),
        ('[space]\n"optim.lr" = { low = 0.1, high = 0.1 }\n', "optim.lr", "must be < high"),
        ('[space]\n"optim.lr" = { low = 0.3, high = 0.1 }\n', "optim.lr", "must be < high"),
        ('[space]\n"optim.lr" = { low = 0, high = 1, log = true }\n', "optim.lr", "low > 0"),
        ('[space]\n"optim.lr" = { low = -1, high = 1, log = true }\n', "optim.lr", "low > 0"),
        ('[space]\n"optim.lr" = { low = 0.1, high = 1, num = 1 }\n', "optim.lr", "num"),
        ('[space]\n"optim.lr" = { lo = 0.1, high = 1 }\n', "optim.lr", "unknown option 'lo'"),
        ('[space]\n"optim.lr" = { low = 0.1 }\n', "optim.lr", "missing high"),
        ('[space]\n"optim.lr" = { values = [0.1], low = 0 }\n', "optim.lr", "unknown option"),
        ('[space]\n"optim.lr" = { values = ["fast"] }\n', "optim.lr", "must be float"),
        ('[space]\n"optim.lr" = { low = "a", high = 1 }\n', "optim.lr", "finite number"),
        ('[space]\n"optim.lr" = { low = 0.1, high = 1, log = "yes" }\n', "optim.lr", "log"),
        ('[space]\n"optim.lr" = 0.1\n', "optim.lr", "[fixed]"),
        ('[space]\n"run.batch_size" = { low = 8, high = 64 }\n', "run.batch_size", "int = true"),
        ('[space]\n"model.name" = { low = 1, high = 2 }\n', "model.name", "numeric"),
        ('[space]\n"run.epochs" = { values = [1.5] }\n', "run.epochs", "must be int"),
        ('[space]\n"run.out" = { values = ["a"] }\n', "run.out", "cannot be set"),
        (
            "[space]\n" + LR + '[fixed]\n"optim.lr_schedul" = "cosine"\n',
            "optim.lr_schedul",
            "unknown config key",
        ),
        ("[space]\n" + LR + '[fixed]\n"run.epochs" = "two"\n', "run.epochs", "must be int"),
        ("[space]\n" + LR + "[search]\npopsize = 6\n", "popsize", "unknown key"),
        ("[space]\n" + LR + "[search]\nstrategy = 'bayes'\n", "strategy", "choose one of"),
        ("[space]\n" + LR + "[search]\npopulation = 6.5\n", "population", "must be int"),
        ("[space]\n" + LR + "[spaces]\nx = 1\n", "[spaces]", "unknown table"),
        ("[space]\n" + LR + "[space.optim]\nlr = { values = [0.1] }\n", "optim.lr", "twice"),
        ("[space\n", "", "not valid TOML"),
    ],
)
def test_bad_space_is_one_line_naming_the_key(tmp_path, text, key, must):
    f = _write(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        Space.load(f)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(f) + ": ")
    assert key in msg and must in msg, msg


def test_missing_file_and_dict_origin(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        Space.load(tmp_path / "nope.toml")
    with pytest.raises(ConfigError) as e:
        Space.from_dict({"optim.lr": {"low": 1.0, "high": 0.5}})
    assert str(e.value).startswith("space: optim.lr:")


def test_grid_is_the_complete_cross_product():
    sp = Space.from_dict(
        {
            "optim.lr": {"low": 0.01, "high": 0.1, "num": 3},
            "run.batch_size": {"low": 1, "high": 3, "int": True, "num": 10},  # dedups to 3
            "algo.name": ["sync", "avg"],
            "optim.momentum": [0.0, 0.5, 0.9],
        }
    )
    grid = sp.grid()
    want = list(itertools.product([0.01, 0.055, 0.1], [1, 2, 3], ["sync", "avg"], [0.0, 0.5, 0.9]))
    assert len(grid) == 3 * 3 * 2 * 3
    got = [tuple(p[k] for k in sp.keys) for p in grid]
    assert len(set(got)) == len(got)  # no duplicates
    assert [g[1:] for g in got] == [w[1:] for w in want]  # first axis slowest
    np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want], rtol=1e-12)


def test_range_grid_points():
    assert Range("optim.lr", 0.0, 1.0, num=5).grid_points() == [0.0, 0.25, 0.5, 0.75, 1.0]
    log = Range("optim.lr", 1e-3, 1e-1, log=True, num=3).grid_points()
    np.testing.assert_allclose(log, [1e-3, 1e-2, 1e-1], rtol=1e-12)
    assert Range("run.batch_size", 16, 128, log=True, integer=True, num=4).grid_points() == [
        16,
        32,
        64,
        128,
    ]
    ints = Range("run.batch_size", 1, 3, integer=True, num=10).grid_points()
    assert ints == [1, 2, 3] and all(type(v) is int for v in ints)
    with pytest.raises(ConfigError) as e:
        Range("optim.lr", 1e-3, 0.3, log=True).grid_points()
    assert str(e.value) == "space: optim.lr: a range needs num = K points for grid search"


@pytest.mark.parametrize("log", [False, True])
def test_int_range_round_trips_and_covers_every_int(log):
    r = Range("run.batch_size", 3, 40, log=log, integer=True)
    for v in range(3, 41):
        u = r.encode(v)
        assert 0.0 < u < 1.0
        assert r.decode(u) == v and type(r.decode(u)) is int
    assert (r.decode(0.0), r.decode(1.0)) == (3, 40)
    assert (r.decode(-2.0), r.decode(7.0)) == (3, 40)  # u is clipped
    seen = {r.decode(u) for u in np.linspace(0, 1, 5001)}
    assert seen == set(range(3, 41))
    rng = np.random.default_rng(0)
    samples = [r.sample(rng) for _ in range(4000)]
    assert all(type(s) is int for s in samples) and set(samples) == set(range(3, 41))


def test_log_range_encodes_in_log_space():
    r = Range("optim.lr", 1e-4, 1e-0, log=True)
    assert r.encode(1e-4) == 0.0 and r.encode(1.0) == 1.0
    assert r.encode(1e-2) == pytest.approx(0.5, abs=1e-12)  # the geometric middle
    for v in (1e-4, 3e-4, 0.02, 0.7, 1.0):
        assert r.decode(r.encode(v)) == pytest.approx(v, rel=1e-12)
        assert type(r.decode(r.encode(v))) is float
    rng = np.random.default_rng(1)
    s = np.array([r.sample(rng) for _ in range(20000)])
    assert s.min() >= 1e-4 and s.max() <= 1.0
    # log-uniform: a quarter of the samples in each decade (uniform would put 90% in the last)
    for lo in (1e-4, 1e-3, 1e-2, 1e-1):
        assert np.mean((s >= lo) & (s < lo * 10)) == pytest.approx(0.25, abs=0.02)


def test_linear_range_round_trip():
    r = Range("optim.momentum", 0.0, 0.95)
    assert r.encode(0.0) == 0.0 and r.encode(0.95) == 1.0
    for u in np.linspace(0, 1, 11):
        assert r.encode(r.decode(u)) == pytest.approx(u, abs=1e-12)


def test_categorical_decode_covers_every_value():
    values = ["mlp", "lenet", "digits_cnn", "2conv", 3, 0.5]
    c = Categorical("model.name", values)
    assert {repr(c.decode(u)) for u in np.linspace(0, 1, 1001)} == {repr(v) for v in values}
    for v in values:
        assert c.decode(c.encode(v)) is v  # the original object back
    assert c.decode(1.0) == 0.5 and c.decode(0.0) == "mlp" and c.decode(-1) == "mlp"
    with pytest.raises(ConfigError, match="not one of"):
        c.encode("resnet")


def test_space_encode_decode_and_sample():
    sp = Space.from_dict(
        {
            "optim.lr": {"low": 1e-3, "high": 0.3, "log": True},
            "run.batch_size": {"low": 16, "high": 128, "log": True, "int": True},
            "model.name": ["digits_cnn", "mlp"],
        }
    )
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = sp.sample(rng)
        assert list(p) == sp.keys
        assert type(p["optim.lr"]) is float and type(p["run.batch_size"]) is int
        v = sp.encode(p)
        assert v.shape == (3,) and v.dtype == np.float64 and np.all((v >= 0) & (v <= 1))
        q = sp.decode(v)
        assert q["run.batch_size"] == p["run.batch_size"] and q["model.name"] == p["model.name"]
        assert q["optim.lr"] == pytest.approx(p["optim.lr"], rel=1e-12)
    with pytest.raises(ValueError):
        sp.decode([0.5, 0.5])


def test_validate_rejects_what_train_rejects():
    # the oracle: train's own config rejects these values
    for bad in ({"optim.momentum": 1.5}, {"run.batch_size": 0}, {"algo.name": "allreduce"}):
        with pytest.raises(ConfigError):
            load_config(None, bad)
    sp = Space.from_dict({"optim.momentum": [0.9, 1.5]})
    with pytest.raises(ConfigError) as e:
        sp.validate()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("space: optim.momentum = 1.5: ") and "[0, 1)" in msg
    # a range is checked at its ends (an int range at its rounded ends)
    with pytest.raises(ConfigError, match=r"^space: run.batch_size = 0: .*>= 1"):
        Space.from_dict({"run.batch_size": {"low": 0, "high": 64, "int": True}}).validate()
    with pytest.raises(ConfigError, match="algo.name = 'allreduce'"):
        Space.from_dict({"algo.name": ["sync", "allreduce"]}).validate()
    # the fixed config alone
    with pytest.raises(ConfigError, match=r"^space: \[fixed\]: --lr -1.0"):
        Space.from_dict({"optim.momentum": [0.5]}, fixed={"optim.lr": -1.0}).validate()
    # a space train accepts passes
    Space.from_dict({"optim.momentum": [0.0, 0.95]}, fixed={"optim.lr": 0.1}).validate()


def test_validate_with_a_custom_check():
    seen = []

    def check(overrides):
        seen.append(overrides)
        if overrides.get("optim.lr", 0) > 0.2:
            raise ConfigError("too fast")

    sp = Space.from_dict({"optim.lr": {"low": 0.01, "high": 0.3}}, fixed={"run.epochs": 1})
    with pytest.raises(ConfigError, match=r"^space: optim.lr = 0.3: too fast$"):
        sp.validate(check)
    assert seen == [
        {"run.epochs": 1},
        {"run.epochs": 1, "optim.lr": 0.01},
        {"run.epochs": 1, "optim.lr": 0.3},
    ]
