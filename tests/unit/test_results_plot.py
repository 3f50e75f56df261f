"""Reading a run's OUT back (metrics.jsonl, summary.json) and the plot drawn from it:
records as the training writes them (see hpcnet/algos/lifecycle.py and report.py)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hpcnet.errors import MissingExtra, ResultsError
from hpcnet.run.results import read_results, run_labels

pytestmark = pytest.mark.timeout(60)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _progress(step, elapsed, loss=1.0, acc=0.5):
    return {"epoch": 1, "step": step, "total_steps": 8, "loss": loss, "accuracy": acc,
            "lr": 0.05, "samples_per_s": 1000.0, "elapsed_s": elapsed}  # fmt: skip


def _write_run(out, records, summary=None):
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if summary is not None:
        (out / "summary.json").write_text(json.dumps(summary))
    return out


def _sync_run(out, n=4):
    records = [_progress(2 * i, 10.0 + i, loss=2.0 / i, acc=0.2 * i) for i in range(1, n + 1)]
    records.append({"event": "test", "step": 2 * n, "test_loss": 0.4, "test_accuracy": 0.9,
                    "elapsed_s": 11.0 + n})  # fmt: skip
    summary = {"algo": "sync", "model": "mlp", "dataset": "digits", "compile_s": 9.5,
               "layout_text": "2 ranks: 2 replicas (sync)", "test_accuracy": 0.9}  # fmt: skip
    return _write_run(out, records, summary)


def _downpour_run(out):
    hist = [3, 10, 5, 1] + [0] * 60
    summary = {"algo": "downpour", "model": "mlp", "compile_s": 0.0,
               "staleness": {"mean": 1.2, "histogram": hist},
               "replicas": [{"replica": r, "partition": p, "samples_per_s": 100.0 * (r + 1)}
                            for r in range(3) for p in range(2)]}  # fmt: skip
    return _write_run(out, [_progress(s, s / 10) for s in (3, 6, 9)], summary)


def _modelpar_run(out):
    per = [{"partition": p, "bytes_sent_per_step": 1e5 * (p + 1), "bytes_recv_per_step": 2e5}
           for p in range(2)]  # fmt: skip
    summary = {"algo": "sync", "model": "mlp", "model_parallel": {"per_partition": per}}
    return _write_run(out, [_progress(s, s) for s in (1, 2)], summary)


def _sandblaster_run(out):
    summary = {"algo": "sandblaster", "model": "mlp", "units_completed": [22, 20],
               "replicas": [{"replica": 0, "units_computed": 23},
                            {"replica": 1, "units_computed": 20}]}  # fmt: skip
    return _write_run(out, [_progress(0, 1.0)], summary)


# --- reading ------------------------------------------------------------------------------
def test_reads_progress_test_record_and_summary(tmp_path):
    run = read_results(_sync_run(tmp_path / "a"))
    assert len(run.progress) == 4 and [e["event"] for e in run.events] == ["test"]
    np.testing.assert_array_equal(run.x("step"), [2, 4, 6, 8])
    np.testing.assert_allclose(run.column("loss"), [2.0, 1.0, 2 / 3, 0.5])
    np.testing.assert_allclose(run.x("time"), [1.5, 2.5, 3.5, 4.5])  # elapsed - compile_s
    assert run.test["test_accuracy"] == 0.9 and run.test_x("step") == 8.0
    assert run.test_x("time") == pytest.approx(5.5)
    assert run.summary["algo"] == "sync"
    np.testing.assert_array_equal(run.x("epoch"), run.column("epoch"))  # no "epochs" yet
    with pytest.raises(ValueError, match="step, samples, epoch, time"):
        run.x("iteration")


def test_steps_samples_and_epochs_of_sync_and_downpour_line_up(tmp_path):
    # one epoch of the same data: sync counts 937 steps of a total batch of 64, Downpour
    # (3 replicas of 32) 625 steps per replica: on the samples and epoch axes they meet
    def run(name, algo, steps, batch):
        recs = [dict(_progress(s, 1.0), samples=s * batch, epochs=s * batch / 60000) for s in steps]
        return read_results(_write_run(tmp_path / name, recs, {"algo": algo}))

    sync = run("s", "sync", [468, 937], 64)
    down = run("d", "downpour", [312, 625], 96)
    assert sync.x("step")[-1] != down.x("step")[-1]
    assert abs(sync.x("epoch")[-1] - down.x("epoch")[-1]) < 0.01
    assert abs(sync.x("samples")[-1] - down.x("samples")[-1]) < 0.01 * 60000
    from hpcnet.tools.plot import default_x

    assert default_x([sync, down]) == "epoch" and default_x([sync, sync]) == "step"


def test_a_resumed_run_keeps_the_records_after_its_checkpoint_once(tmp_path):
    records = [_progress(s, float(s)) for s in (2, 4, 6, 8)]  # killed after step 8
    records.append({"event": "resume", "step": 4, "checkpoint": "c.h5"})
    records += [_progress(s, 1.0 + s / 10) for s in (6, 8, 10)]  # a new process's clock
    run = read_results(_write_run(tmp_path / "r", records))
    np.testing.assert_array_equal(run.x("step"), [2, 4, 6, 8, 10])
    np.testing.assert_allclose(run.x("time"), [2, 4, 4 + 1.6, 4 + 1.8, 4 + 2.0])
    assert run.summary == {} and run.test is None and run.test_x("step") is None


def test_a_last_line_cut_by_a_kill_is_ignored_others_are_errors(tmp_path):
    out = _write_run(tmp_path / "k", [_progress(1, 1.0), _progress(2, 2.0)])
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 1, "step": 3, "lo')  # no newline: cut short
    assert len(read_results(out).progress) == 2
    with open(out / "metrics.jsonl", "a") as f:
        f.write("\n" + json.dumps(_progress(4, 4.0)) + "\n")
    with pytest.raises(ResultsError, match=r"metrics.jsonl: line 3 is not JSON"):
        read_results(out)


def test_missing_or_unreadable_out_is_a_results_error(tmp_path):
    with pytest.raises(ResultsError, match="no such run directory"):
        read_results(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ResultsError, match="no metrics.jsonl"):
        read_results(tmp_path / "empty")
    out = _sync_run(tmp_path / "s")
    (out / "summary.json").write_text("{not json")
    with pytest.raises(ResultsError, match="summary.json: not JSON"):
        read_results(out)


def test_labels_tell_runs_with_the_same_folder_name_apart(tmp_path):
    a = read_results(_sync_run(tmp_path / "a" / "run"))
    b = read_results(_write_run(tmp_path / "b" / "run", [_progress(1, 1.0)]))
    assert run_labels([a, b]) == ["a/run (sync, mlp)", "b/run"]
    assert run_labels([a]) == ["run (sync, mlp)"]


# --- the figure ---------------------------------------------------------------------------
@pytest.fixture
def plot():
    pytest.importorskip("matplotlib")
    from hpcnet.tools import plot

    return plot


def _titles(fig):
    return [ax.get_title() for ax in fig.axes]


def test_one_run_png_and_its_two_panels(plot, tmp_path):
    run = read_results(_sync_run(tmp_path / "a"))
    path = plot.plot_runs([run], tmp_path / "a.png")
    data = path.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000
    from matplotlib.image import imread

    h, w, _ = imread(path).shape
    assert w > h > 300
    fig = plot.make_figure([run])
    assert _titles(fig) == ["training loss", "training accuracy"]
    loss, acc = fig.axes
    assert len(loss.lines) == len(acc.lines) == 1
    np.testing.assert_array_equal(loss.lines[0].get_xdata(), [2, 4, 6, 8])
    np.testing.assert_allclose(acc.lines[0].get_ydata(), [0.2, 0.4, 0.6, 0.8])
    assert len(loss.collections) == 1  # the test loss star
    assert "a (sync, mlp)" in [t.get_text() for t in loss.get_legend().get_texts()]
    assert "test accuracy 0.9000" in fig._suptitle.get_text()


def test_two_runs_share_axes_with_one_line_each(plot, tmp_path):
    runs = [read_results(_sync_run(tmp_path / d)) for d in ("a", "b")]
    fig = plot.make_figure(runs, x="time")
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert len(ax.lines) == 2
    np.testing.assert_allclose(fig.axes[0].lines[1].get_xdata(), runs[1].time_s)
    assert "time" in fig.axes[0].get_xlabel()
    assert fig._suptitle.get_text() == "2 runs"
    path = plot.plot_runs(runs, tmp_path / "two.png", x="time")
    assert path.read_bytes().startswith(PNG_MAGIC)


def test_algorithm_panels_appear_when_a_run_has_their_data(plot, tmp_path):
    runs = [
        read_results(_downpour_run(tmp_path / "dp")),
        read_results(_modelpar_run(tmp_path / "mp")),
        read_results(_sandblaster_run(tmp_path / "sb")),
        read_results(_sync_run(tmp_path / "sync")),
    ]
    fig = plot.make_figure(runs)
    titles = _titles(fig)
    assert titles == [
        "training loss",
        "training accuracy",
        "Downpour staleness of applied pushes",
        "throughput per replica",
        "Sandblaster work units per replica",
        "model-parallel traffic per partition (replica 0)",
    ]
    assert all(len(ax.lines) == 4 for ax in fig.axes[:2])  # every run's curve
    stale, thru, units, traffic = fig.axes[2:]
    (stairs,) = stale.patches  # one run has a histogram, trimmed after its last push
    np.testing.assert_allclose(stairs.get_data().values, np.array([3, 10, 5, 1]) / 19)
    heights = [p.get_height() for p in thru.patches]
    assert heights == [100.0, 200.0, 300.0]  # partition 0 of each of the 3 replicas
    assert sorted(p.get_height() for p in units.patches) == [20, 20, 22, 23]
    assert len(traffic.patches) == 4  # sent and received, 2 partitions


def test_missing_matplotlib_is_one_clear_error(monkeypatch):
    from hpcnet.tools import plot

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(MissingExtra, match=r"pip install -e '\.\[plot\]'"):
        plot.require_matplotlib()
