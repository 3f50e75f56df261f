"""Config (TOML <- flags), layout and learning-rate rules, one process."""

import pytest

from hpcnet.algos import get_algorithm
from hpcnet.config import Config, load_config
from hpcnet.errors import ConfigError, LayoutError
from hpcnet.layout import make_layout
from hpcnet.optim.schedules import lr_at, scaled_lr


def test_defaults_toml_then_flags(tmp_path):
    assert load_config() == Config()
    f = tmp_path / "c.toml"
    f.write_text('[run]\nepochs = 3\nbatch_size = 8\n[optim]\nlr = 1\n[algo]\nname = "avg"\n')
    cfg = load_config(str(f), {"run.epochs": 5, "run.seed": None})
    assert cfg.run.epochs == 5 and cfg.run.batch_size == 8  # flag beats file beats default
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.algo.name == "avg" and cfg.run.seed == 0
    # the saved TOML loads back to the same config
    g = tmp_path / "saved.toml"
    g.write_text(cfg.to_toml())
    assert load_config(str(g)) == cfg


@pytest.mark.parametrize(
    "text,must",
    [
        ("[run]\nepoch = 3\n", "unknown key 'epoch'"),
        ("[training]\nepochs = 3\n", "unknown section [training]"),
        ("[run]\nepochs = 'three'\n", "epochs must be int"),
        ("[run]\nepochs = true\n", "epochs must be int"),
        ("[run\nepochs = 3\n", "not valid TOML"),
    ],
)
def test_bad_toml_names_the_file(tmp_path, text, must):
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(ConfigError) as e:
        load_config(str(f))
    assert str(f) in str(e.value) and must in str(e.value)


@pytest.mark.parametrize(
    "key,value,flag",
    [
        ("run.epochs", 0, "--epochs"),
        ("optim.lr", -0.1, "--lr"),
        ("optim.momentum", 1.0, "--momentum"),
        ("algo.name", "downhill", "--algo"),
        ("run.backend", "tpu", "--backend"),
        ("optim.lr_scaling", "sqrt", "--lr-scaling"),
        ("algo.bucket_mb", -1.0, "--bucket-mb"),
    ],
)
def test_bad_values_name_the_flag(key, value, flag):
    with pytest.raises(ConfigError, match=f"^{flag} "):
        load_config(None, {key: value})


def test_bucket_mb_is_sync_only():
    assert load_config(None, {"algo.bucket_mb": 25.0}).algo.bucket_mb == 25.0
    with pytest.raises(ConfigError, match="^--bucket-mb 1.0: gradient buckets are sync's"):
        load_config(None, {"algo.bucket_mb": 1.0, "algo.name": "avg"})


def test_layout_sync_every_rank_a_replica():
    lay = make_layout(4, get_algorithm("sync"))
    assert lay.replicas == 4 and [str(lay.role(r)) for r in range(4)] == [
        "replica 0",
        "replica 1",
        "replica 2",
        "replica 3",
    ]
    assert "4 replicas" in lay.describe()
    with pytest.raises(LayoutError, match="multiple of 2"):
        make_layout(3, get_algorithm("sync"), partitions=2)
    with pytest.raises(ConfigError, match="unknown algorithm"):
        get_algorithm("bogus")


def test_goyal_linear_scaling_and_warmup():
    assert scaled_lr(0.1, 1024, 256, "linear") == pytest.approx(0.4)
    assert scaled_lr(0.1, 1024, 256, "none") == 0.1
    assert lr_at(0, 0.4, 10, 0.1) == pytest.approx(0.1)
    assert lr_at(5, 0.4, 10, 0.1) == pytest.approx(0.25)
    assert lr_at(10, 0.4, 10, 0.1) == 0.4 and lr_at(3, 0.4, 0, 0.1) == 0.4


def test_cosine_schedule_after_warmup():
    import math

    assert lr_at(10, 0.4, 10, 0.1, "cosine", 110) == pytest.approx(0.4)
    assert lr_at(60, 0.4, 10, 0.1, "cosine", 110) == pytest.approx(0.2)
    assert lr_at(35, 0.4, 10, 0.1, "cosine", 110) == pytest.approx(
        0.4 * 0.5 * (1 + math.cos(math.pi / 4))
    )
    assert lr_at(110, 0.4, 10, 0.1, "cosine", 110) == pytest.approx(0.0, abs=1e-12)
    assert lr_at(5, 0.4, 10, 0.1, "cosine", 110) == pytest.approx(0.25)  # still warming up


def test_layout_downpour():
    lay = make_layout(4, get_algorithm("downpour"), shards=1)
    assert (lay.shards, lay.replicas) == (1, 3)
    assert [str(lay.role(r)) for r in range(4)] == [
        "shard 0",
        "replica 0",
        "replica 1",
        "replica 2",
    ]
    assert make_layout(5, get_algorithm("downpour"), shards=2, replicas=3).replicas == 3
    with pytest.raises(LayoutError, match="at least 1 parameter shard"):
        make_layout(4, get_algorithm("downpour"), shards=0)
    with pytest.raises(LayoutError, match="needs 2 ranks, got 1"):
        make_layout(1, get_algorithm("downpour"), shards=1)
    with pytest.raises(LayoutError, match="needs 5 ranks, got 4"):
        make_layout(4, get_algorithm("downpour"), shards=2, replicas=3)


def test_shard_ranges_balanced_and_at_boundaries():
    from hpcnet.ps.windows import shard_ranges

    r = shard_ranges(10, 3)
    assert r[0][0] == 0 and r[-1][1] == 10 and all(a < b for a, b in r)
    assert all(r[i][1] == r[i + 1][0] for i in range(2))
    assert max(b - a for a, b in r) - min(b - a for a, b in r) <= 1
    assert shard_ranges(100, 2, boundaries=[0, 48, 100]) == [(0, 48), (48, 100)]
    with pytest.raises(LayoutError, match="more shards than"):
        shard_ranges(5, 6)
    with pytest.raises(LayoutError, match="at least 1"):
        shard_ranges(5, 0)


def test_an_algorithm_that_cannot_resume_refuses_checkpoint_flags_in_one_line(monkeypatch):
    # every built-in algorithm resumes; one registered without it must say so, naming
    # the flag, instead of training without the checkpoints the user asked for
    from dataclasses import replace

    from hpcnet.algos import registry

    plain = replace(registry.get_algorithm("sync"), name="plain", resumable=False)
    monkeypatch.setitem(registry._REGISTRY, "plain", plain)
    load_config(None, {"algo.name": "plain"})  # no checkpoint flag: fine
    for key, value in (("run.checkpoint_every", 10), ("run.resume", "OUT")):
        with pytest.raises(ConfigError, match="plain cannot checkpoint its state"):
            load_config(None, {"algo.name": "plain", key: value})
