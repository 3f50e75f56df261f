"""TensorBoard event files of a run (OUT/tb), read back with TensorBoard's own reader."""

import math

import pytest

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")

from hpcnet.run.metrics import MetricsLog  # noqa: E402


def _scalars(path):
    acc = event_accumulator.EventAccumulator(str(path))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_progress_and_test_records_become_scalars_at_their_steps(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=True)
    recs = [
        {"epoch": 1, "step": s, "loss": 2.0 / s, "accuracy": 0.1 * s, "lr": 0.05,
         "samples_per_s": None if s == 1 else 1000.0 + s}
        for s in (1, 2, 3)
    ]  # fmt: skip
    for r in recs:
        log.write(r)
    log.write({"event": "resume", "step": 3, "checkpoint": "x"})  # not a scalar
    log.write({"event": "test", "step": 3, "test_loss": 0.25, "test_accuracy": 0.875})
    log.close()
    got = _scalars(tmp_path / "tb")
    assert [s for s, _ in got["train/loss"]] == [1, 2, 3]
    for (_, v), r in zip(got["train/loss"], recs, strict=True):
        assert math.isclose(v, r["loss"], rel_tol=1e-6)
    assert [s for s, _ in got["train/samples_per_s"]] == [2, 3]  # None is not a value
    assert got["test/accuracy"] == [(3, 0.875)]
    assert set(got) == {
        "train/loss", "train/accuracy", "train/lr", "train/samples_per_s", "test/loss",
        "test/accuracy",
    }  # fmt: skip


def test_no_event_files_when_switched_off(tmp_path):
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write({"epoch": 1, "step": 1, "loss": 1.0, "accuracy": 0.5, "lr": 0.1})
    log.close()
    assert not (tmp_path / "tb").exists()


def test_a_search_trial_becomes_an_hparams_session(tmp_path):
    # what TensorBoard's HParams tab reads: the trial's parameters and its metric
    from tensorboard.plugins.hparams import plugin_data_pb2

    from hpcnet.search.records import TrialRecord
    from hpcnet.search.results import write_hparams

    rec = TrialRecord(id=3, params={"optim.lr": 0.05, "model.name": "mlp"},
                      status="completed", metric=0.9375)  # fmt: skip
    assert write_hparams(tmp_path, rec, "test_accuracy")
    failed = TrialRecord(id=4, params={"optim.lr": 9.0}, status="failed", metric=None)
    assert not write_hparams(tmp_path, failed, "test_accuracy")
    acc = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "trial-0003"))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]
    ).session_start_info
    assert start.hparams["optim.lr"].number_value == 0.05
    assert start.hparams["model.name"].string_value == "mlp"
    assert _scalars(tmp_path / "tb" / "trial-0003")["hparam/test_accuracy"] == [(0, 0.9375)]
    assert not (tmp_path / "tb" / "trial-0004").exists()
