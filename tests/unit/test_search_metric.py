"""The search's metric: ``auto`` is val_accuracy when the trials hold out a validation
split (choosing on the test split is selecting on the test set), else test_accuracy."""

import dataclasses

from hpcnet.search.settings import SearchSettings, metric_for


def test_auto_metric_follows_the_validation_split(tmp_path):
    s = SearchSettings()
    assert s.metric == "auto"
    assert metric_for(s, {}) == "test_accuracy"
    assert metric_for(s, {"data.val_fraction": 0.2}) == "val_accuracy"
    cfg = tmp_path / "train.toml"
    cfg.write_text("[data]\nval_fraction = 0.1\n")
    assert metric_for(dataclasses.replace(s, config_file=str(cfg)), {}) == "val_accuracy"
    assert metric_for(s, {"data.val_fraction": 0.2}, train_fn=print) == "test_accuracy"
    chosen = dataclasses.replace(s, metric="test_loss")
    assert metric_for(chosen, {"data.val_fraction": 0.2}) == "test_loss"
