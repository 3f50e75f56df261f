"""SSP (``--max-staleness``): the config refuses what it cannot do, in one line, and
summary.json's ``ssp`` adds up the replicas' own figures."""

import pytest

from hpcnet.algos.downpour import _ssp_summary
from hpcnet.config import load_config
from hpcnet.errors import ConfigError


def test_default_is_plain_downpour_and_zero_is_lock_step():
    assert load_config(None, {"algo.name": "downpour"}).ps.max_staleness == -1
    cfg = load_config(None, {"algo.name": "downpour", "ps.max_staleness": 0})
    assert cfg.ps.max_staleness == 0


@pytest.mark.parametrize(
    "kv, must",
    [
        ({"algo.name": "downpour", "ps.max_staleness": -2}, "must be >= 0 steps"),
        ({"algo.name": "sync", "ps.max_staleness": 1}, "Downpour's .* not sync's"),
        ({"algo.name": "sandblaster", "ps.max_staleness": 0}, "not sandblaster's"),
        (
            {"algo.name": "downpour", "ps.max_staleness": 2, "ps.warm_start_steps": 10},
            "--warm-start-steps",
        ),
    ],
)
def test_refused_with_one_line_naming_the_flag(kv, must):
    with pytest.raises(ConfigError, match=f"^--max-staleness {kv['ps.max_staleness']}: .*{must}"):
        load_config(None, kv)


def _rep(replica, partition, wait_s, gap, waits, wall=10.0):
    return {
        "replica": replica,
        "partition": partition,
        "wall_s": wall,
        "ssp": {"max_staleness": 1, "wait_s": wait_s, "waits": waits, "reads": 0, "max_gap": gap},
    }


def test_summary_counts_a_replicas_partitions_once():
    assert _ssp_summary(-1, [_rep(0, 0, 1.0, 1, 3)]) is None
    reps = [_rep(0, 0, 1.0, 1, 3), _rep(0, 1, 1.5, 0, 4), _rep(1, 0, 0.0, 0, 0)]
    s = _ssp_summary(1, reps)
    assert s["max_staleness"] == 1 and s["max_clock_gap"] == 1
    assert s["wait_s"] == {"total": 1.5, "per_replica": [1.5, 0.0]}
    assert s["waits"] == [4, 0] and s["replicas"] == [0, 1]
    assert s["wait_fraction"] == pytest.approx(1.5 / 20.0)
