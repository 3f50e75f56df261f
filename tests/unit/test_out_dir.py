"""``--out``: a directory holding a run is refused unless the run resumes it or
``--overwrite`` replaces it (then only the run's files go); the default never collides."""

import os

import pytest

from hpcnet.errors import ConfigError
from hpcnet.run.metrics import make_out_dir


def test_an_existing_run_is_refused_kept_resumed_or_replaced(tmp_path):
    out = tmp_path / "run"
    assert make_out_dir(str(out)) == out  # new: made
    assert make_out_dir(str(out)) == out  # empty: fine
    for name in ("config.toml", "metrics.jsonl", "checkpoint.h5", "checkpoint-000000050.h5"):
        (out / name).write_text("x")
    (out / "tb").mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="holds a run already .*--overwrite replaces it"):
        make_out_dir(str(out))
    assert (out / "checkpoint.h5").exists()  # refused: nothing touched
    assert make_out_dir(str(out), resume=True) == out  # a resumed run goes on in it
    make_out_dir(str(out), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # only the run's files went


def test_the_default_directory_never_lands_in_another_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("time.strftime", lambda fmt: "20261207-120000")
    first = make_out_dir("")
    second = make_out_dir("")
    assert first.name == "20261207-120000" and second.name == "20261207-120000-2"
    assert os.path.isdir(second)
