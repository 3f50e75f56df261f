"""Early-stopping rules against cases worked out by hand, and the curves they read."""

import json
import math

from hpcnet.search.early_stop import ASHA, MedianStopping, progress_key, read_curve


def test_median_rule_stops_a_trial_below_the_completed_median_only():
    rule = MedianStopping("max", min_completed=3)
    for i, level in enumerate((0.6, 0.7, 0.8)):  # completed: accuracy rising to its level
        rule.completed(i, [(10, level - 0.2), (20, level)])
    fresh = MedianStopping("max", min_completed=3)
    assert fresh.report(5, 10, 0.0) is False  # nothing completed yet: go on
    # running averages at step 10: 0.4, 0.5, 0.6 -> median 0.5
    assert rule.report(3, 10, 0.55) is False
    assert rule.report(4, 10, 0.45) is True
    # at step 20 the completed running averages are 0.5, 0.6, 0.7 -> median 0.6; trial 3's
    # own running average counts its earlier value too: (0.55 + 0.6) / 2 < 0.6
    assert rule.report(3, 20, 0.6) is True
    assert rule.report(7, 10, math.nan) is True  # a NaN loss stops at once


def test_median_rule_minimising_a_loss():
    rule = MedianStopping("min", min_completed=2)
    rule.completed(0, [(5, 1.0)])
    rule.completed(1, [(5, 2.0)])
    assert rule.report(2, 5, 1.4) is False  # median 1.5: better
    assert rule.report(3, 5, 1.6) is True


def test_asha_keeps_the_top_third_at_each_rung():
    rule = ASHA("max", min_steps=10, eta=3)
    assert [rule.rung_of(s) for s in (9, 10, 29, 30, 89, 90)] == [-1, 0, 0, 1, 1, 2]
    assert rule.report(0, 10, 0.5) is False  # fewer than eta at the rung: go on
    assert rule.report(1, 10, 0.9) is False
    assert rule.report(2, 10, 0.1) is True  # 3 at rung 0: only the best one goes on
    assert rule.report(3, 12, 0.95) is False  # the new best at rung 0
    assert rule.report(1, 20, 0.0) is False  # still rung 0: already judged there
    assert rule.report(0, 10, 0.0) is False  # a rung is judged once per trial


def test_progress_key_and_curves_of_a_resumed_run(tmp_path):
    assert progress_key("test_accuracy", "max") == ("accuracy", "max")
    assert progress_key("test_loss", "min") == ("loss", "min")
    recs = [
        {"step": 10, "loss": 2.0}, {"step": 20, "loss": 1.5}, {"step": 30, "loss": 1.2},
        {"event": "resume", "step": 20},
        {"step": 30, "loss": 1.1}, {"event": "test", "step": 30, "test_loss": 1.0},
    ]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text(
        "\n".join(json.dumps(r) for r in recs) + '\n{"step": 40, "lo'
    )  # the last line cut short by a kill
    assert read_curve(tmp_path, "loss") == [(10, 2.0), (20, 1.5), (30, 1.1)]
    assert read_curve(tmp_path / "none", "loss") == []
