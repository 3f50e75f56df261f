"""Checkpoint files: atomic replacement, history, checksum, clear errors."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hpcnet.algos import get_algorithm
from hpcnet.errors import CheckpointError
from hpcnet.run.checkpoint import checkpoints, read_checkpoint, read_rank_state, write_checkpoint

ATTRS = {"epoch": 0.5, "final": False, "algo": "sync", "world_size": 2, "config": "x = 1\n"}


def _write(out, step, keep=2, value=1.0):
    params = np.full(10, value, np.float32)
    ranks = [({"params": params, "velocity": params * 2}, {"step": step, "rng": [{"a": 1}]})] * 2
    attrs = {**ATTRS, "step": step, "layout": {"world_size": 2}}
    return write_checkpoint(out, params, ranks, attrs, keep=keep)


def test_write_read_and_history(tmp_path):
    for step in (10, 20, 30, 40):
        _write(tmp_path, step, keep=3, value=step)
    names = [p.name for p in checkpoints(tmp_path)]
    assert names == ["checkpoint.h5", "checkpoint-000000030.h5", "checkpoint-000000020.h5"]
    info = read_checkpoint(tmp_path / "checkpoint.h5")
    assert info["step"] == 40 and info["layout"] == {"world_size": 2}
    np.testing.assert_array_equal(info["params"], np.full(10, 40, np.float32))
    arrays, state = read_rank_state(tmp_path / "checkpoint.h5", 1)
    np.testing.assert_array_equal(arrays["velocity"], np.full(10, 80, np.float32))
    assert state == {"step": 40, "rng": [{"a": 1}]}
    assert not list(tmp_path.glob(".checkpoint*"))  # no temporary file left


def test_a_changed_value_fails_the_checksum(tmp_path):
    path = _write(tmp_path, 10)
    with h5py.File(path, "r+") as f:
        f["ranks/1/velocity"][3] = 5.0
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        read_checkpoint(path)


def test_truncated_or_missing_is_a_clear_error(tmp_path):
    path = _write(tmp_path, 10)
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"checkpoint\.h5: unreadable"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        read_checkpoint(tmp_path / "nope.h5")


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    _write(tmp_path, 10)

    def crash(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("hpcnet.run.checkpoint.os.replace", crash)
    with pytest.raises(OSError):
        _write(tmp_path, 20, value=2.0)
    monkeypatch.undo()
    info = read_checkpoint(tmp_path / "checkpoint.h5")
    assert info["step"] == 10 and info["params"][0] == 1.0


def test_only_elastic_algorithms_may_resume_with_another_replica_count():
    from hpcnet.algos.resume import check_resumable
    from hpcnet.config import load_config
    from hpcnet.errors import CheckpointError
    from hpcnet.layout import layout_for

    def _layout(cfg, n):
        return layout_for(cfg, n, get_algorithm(cfg.algo.name))

    def info(algo, n, **kv):
        cfg = load_config(None, {"algo.name": algo, **kv})
        return cfg, {"path": "OUT/checkpoint.h5", "layout": _layout(cfg, n).to_dict(),
                     "config": cfg.to_toml()}  # fmt: skip

    cfg, saved = info("downpour", 3)  # 1 shard + 2 replicas
    check_resumable(saved, cfg, _layout(cfg, 4))  # 3 replicas: allowed
    more = load_config(None, {"algo.name": "downpour", "algo.replicas": 3})
    check_resumable(saved, more, _layout(more, 4))  # --replicas itself may change
    two = load_config(None, {"algo.name": "downpour", "algo.shards": 2})
    with pytest.raises(CheckpointError, match="only the replica count may change"):
        check_resumable(saved, two, _layout(two, 4))  # 2 shards: refused
    for algo in ("sync", "avg"):  # replicas may change (hpcnet.algos.elastic) ...
        cfg, saved = info(algo, 2)
        check_resumable(saved, cfg, _layout(cfg, 3))
        check_resumable(saved, cfg, _layout(cfg, 1))
    split = load_config(None, {"algo.name": "sync", "algo.partitions": 2})
    with pytest.raises(CheckpointError, match="only the replica count may change"):
        check_resumable(saved, split, _layout(split, 4))  # ... partitions may not
    cfg, saved = info("sandblaster", 3)
    with pytest.raises(CheckpointError, match="same world size"):
        check_resumable(saved, cfg, _layout(cfg, 4))
