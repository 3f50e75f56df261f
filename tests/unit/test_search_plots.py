"""A search directory's PNGs (hpcnet/search/plots.py), drawn from a directory written
here by hand as the search runner writes it (trials.jsonl, search.json, state.json,
trials/NNNN/metrics.jsonl)."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from hpcnet.errors import MissingExtra, ResultsError

pytestmark = pytest.mark.timeout(60)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (id, generation, status, metric, lr, model); listed in the order they finished
TRIALS = [
    (1, 0, "completed", 0.80, 0.001, "mlp"),
    (0, 0, "completed", 0.70, 0.1, "digits_cnn"),
    (2, 0, "failed", None, 1.0, "mlp"),
    (3, 0, "completed", 0.90, 0.01, "digits_cnn"),
    (4, 1, "completed", 0.85, 0.003, "mlp"),
    (5, 1, "stopped", 0.60, 0.3, "digits_cnn"),
    (7, 1, "completed", 0.95, 0.02, "digits_cnn"),
    (6, 1, "failed", None, 0.5, "mlp"),
]
N_FAILED = 2


def _record(tid, gen, status, metric, lr, model, k):
    return {"id": tid, "params": {"optim.lr": lr, "model.name": model}, "status": status,
            "metric": metric, "steps": 10, "wall_s": 1.0, "group": tid % 2, "generation": gen,
            "reason": "ValueError: boom" if status == "failed" else "", "started": 100.0 + k,
            "ended": 101.0 + k, "extra": {}}  # fmt: skip


def _write_curve(out, tid, losses, test_accuracy):
    run = out / "trials" / f"{tid:04d}"
    run.mkdir(parents=True)
    recs = [{"epoch": 1, "step": 5 * (i + 1), "loss": loss, "accuracy": 0.5, "lr": 0.1,
             "elapsed_s": float(i)} for i, loss in enumerate(losses)]  # fmt: skip
    recs.append({"event": "test", "step": 5 * len(losses), "test_loss": 0.3,
                 "test_accuracy": test_accuracy, "elapsed_s": 9.0})  # fmt: skip
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


@pytest.fixture
def search_dir(tmp_path):
    out = tmp_path / "de"
    out.mkdir()
    lines = [json.dumps(_record(*t, k)) for k, t in enumerate(TRIALS)]
    (out / "trials.jsonl").write_text("\n".join(lines) + "\n")
    space = "optim.lr in [0.001, 1] log; model.name in {'digits_cnn', 'mlp'}"
    (out / "search.json").write_text(
        json.dumps(
            {"strategy": "de", "metric": "test_accuracy", "direction": "max", "space": space}
        )  # fmt: skip
    )
    summary = [
        {"generation": 0, "best": 0.9, "median": 0.8, "worst": 0.7, "failed": 1},
        {"generation": 1, "best": 0.95, "median": 0.85, "worst": 0.8, "failed": 0},
    ]
    (out / "state.json").write_text(json.dumps({"summary": summary}))
    _write_curve(out, 1, [2.0, 1.0, 0.5, 0.4], 0.80)
    _write_curve(out, 7, [2.2, 0.8, 0.3, 0.1], 0.95)
    return out


@pytest.fixture
def plots():
    pytest.importorskip("matplotlib")
    from hpcnet.search import plots

    return plots


def _by_gid(ax, gid):
    found = [a for a in ax.lines if a.get_gid() == gid]
    assert len(found) <= 1, gid
    return found[0] if found else None


def _n(ax, gid):
    line = _by_gid(ax, gid)
    return 0 if line is None else len(line.get_xdata())


def test_reads_the_search_back(plots, search_dir):
    res = plots.read_search(search_dir)
    assert [r.id for r in res.records] == list(range(8))
    assert [r.id for r in res.finish_order] == [t[0] for t in TRIALS]
    assert (res.metric, res.direction) == ("test_accuracy", "max")
    assert res.best.id == 7 and set(res.curves) == {1, 7}
    assert res.log_keys == {"optim.lr"} and len(res.population) == 2
    best = res.best_so_far(res.finish_order)
    np.testing.assert_allclose(best, [0.8, 0.8, 0.8, 0.9, 0.9, 0.9, 0.95, 0.95])
    assert plots.read_search(search_dir, "test_loss", "min").best.id == 0  # stopped: never best
    with pytest.raises(ResultsError, match="no trials.jsonl"):
        plots.read_search(search_dir / "trials")


def test_writes_four_pngs_into_the_search_directory(plots, search_dir):
    from matplotlib.image import imread

    paths = plots.plot_search(search_dir)
    assert [p.name for p in paths] == list(plots.PNGS)
    for path in paths:
        assert path.parent == search_dir
        assert path.read_bytes().startswith(PNG_MAGIC)
        h, w, _ = imread(path).shape
        assert w > h > 300


def test_trials_figure_points_failed_trials_and_best_so_far(plots, search_dir):
    res = plots.read_search(search_dir)
    fig = plots.trials_figure(res)
    by_id, by_end = fig.axes
    for ax in (by_id, by_end):  # every trial once: completed + stopped + failed
        assert _n(ax, "completed") + _n(ax, "stopped") + _n(ax, "failed") == len(TRIALS)
        assert _n(ax, "failed") == N_FAILED and _n(ax, "stopped") == 1
        fail = _by_gid(ax, "failed")  # at the bottom, in axes units
        assert fail.get_transform() == ax.get_xaxis_transform()
        np.testing.assert_allclose(fail.get_ydata(), plots.FAILED_Y)
    np.testing.assert_array_equal(_by_gid(by_id, "failed").get_xdata(), [2, 6])
    np.testing.assert_array_equal(_by_gid(by_id, "completed").get_xdata(), [0, 1, 3, 4, 7])
    np.testing.assert_allclose(_by_gid(by_id, "best").get_ydata(), [0.95])
    best = _by_gid(by_end, "best_so_far")
    np.testing.assert_array_equal(best.get_xdata(), np.arange(1, len(TRIALS) + 1))
    assert np.all(np.diff(best.get_ydata()) >= 0)  # monotone for direction max
    assert best.get_ydata()[-1] == 0.95
    assert "trial id" in by_id.get_xlabel() and "fraction correct" in by_id.get_ylabel()
    assert "8 trials" in fig._suptitle.get_text()


def test_best_so_far_falls_for_a_minimised_metric(plots, search_dir):
    res = plots.read_search(search_dir, "test_loss", "min")
    best = _by_gid(plots.trials_figure(res).axes[1], "best_so_far").get_ydata()
    assert np.all(np.diff(best) <= 0) and best[-1] == 0.7
    assert "nats" in plots.trials_figure(res).axes[0].get_ylabel()


def test_generations_figure(plots, search_dir):
    res = plots.read_search(search_dir)
    (ax,) = plots.generations_figure(res).axes
    assert _n(ax, "trials") == len(TRIALS) - N_FAILED and _n(ax, "failed") == N_FAILED
    np.testing.assert_allclose(_by_gid(ax, "median").get_ydata(), [0.8, 0.85])
    np.testing.assert_allclose(_by_gid(ax, "population_median").get_ydata(), [0.8, 0.85])
    best = _by_gid(ax, "best_so_far").get_ydata()
    assert np.all(np.diff(best) >= 0)
    np.testing.assert_allclose(best, [0.9, 0.95])
    (band,) = ax.collections  # worst to best of each generation's trials
    assert band.get_paths()[0].vertices[:, 1].min() == pytest.approx(0.6)


def test_no_generations_png_without_generations(plots, search_dir):
    lines = (search_dir / "trials.jsonl").read_text().splitlines()
    recs = [{**json.loads(line), "generation": 0} for line in lines]
    (search_dir / "trials.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    names = [p.name for p in plots.plot_search(search_dir)]
    assert names == ["trials.png", "params.png", "curves.png"]


def test_params_figure_log_and_categorical_axes(plots, search_dir):
    res = plots.read_search(search_dir)
    fig = plots.params_figure(res)
    lr, model = fig.axes
    assert lr.get_title() == "optim.lr" and lr.get_xscale() == "log"  # 3 decades
    assert model.get_xscale() == "linear"
    assert [t.get_text() for t in model.get_xticklabels()] == ["digits_cnn", "mlp"]
    for ax in (lr, model):
        assert _n(ax, "completed") + _n(ax, "stopped") + _n(ax, "failed") == len(TRIALS)
    np.testing.assert_allclose(
        sorted(_by_gid(lr, "completed").get_xdata()), [0.001, 0.003, 0.01, 0.02, 0.1]
    )
    x = _by_gid(model, "failed").get_xdata()  # both failed trials are mlp (index 1)
    assert np.all(np.abs(x - 1) < 0.2)


def test_log_axis_only_for_positive_values_over_two_decades(plots, search_dir):
    res = plots.read_search(search_dir)
    res.log_keys = set()
    for r in res.records:
        r.params["optim.momentum"] = 0.1 * (r.id % 4)  # includes 0: linear
        r.params["run.batch_size"] = 8 * 2**r.id  # 8 .. 1024: over two decades
    axes = {ax.get_title(): ax for ax in plots.params_figure(res).axes}
    assert axes["optim.lr"].get_xscale() == "log"  # 0.001 .. 1
    assert axes["optim.momentum"].get_xscale() == "linear"
    assert axes["run.batch_size"].get_xscale() == "log"
    for r in res.records:
        r.params["optim.lr"] = 0.01 + 0.001 * r.id
    assert plots.params_figure(res).axes[0].get_xscale() == "linear"


def test_curves_figure_one_line_per_trial_with_metrics(plots, search_dir):
    res = plots.read_search(search_dir)
    fig = plots.curves_figure(res)
    ax, cbar = fig.axes
    assert sorted(line.get_gid() for line in ax.lines) == ["1", "7"]
    np.testing.assert_allclose(ax.lines[1].get_ydata(), [2.2, 0.8, 0.3, 0.1])
    np.testing.assert_array_equal(ax.lines[1].get_xdata(), [5, 10, 15, 20])
    assert ax.get_yscale() == "log"
    assert "test accuracy" in cbar.get_ylabel()
    worse, better = (line.get_color() for line in ax.lines)
    assert worse != better


def test_missing_matplotlib_is_one_clear_error(search_dir, monkeypatch):
    from hpcnet.search import plots

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib fails
    with pytest.raises(MissingExtra, match=r"pip install -e '\.\[plot\]'") as err:
        plots.plot_search(search_dir)
    assert "\n" not in str(err.value)
    assert not list(search_dir.glob("*.png"))


def test_the_plot_subcommand_detects_a_search_directory(plots, search_dir, capsys):
    import argparse

    from hpcnet.tools.cli import add_plot_parser

    parser = argparse.ArgumentParser()
    add_plot_parser(parser.add_subparsers())
    args = parser.parse_args(["plot", str(search_dir)])
    assert args.func(args) == 0
    assert capsys.readouterr().out.count("wrote ") == 4
    assert (search_dir / "curves.png").is_file()
    args = parser.parse_args(["plot", str(search_dir), "-o", "x.png"])
    with pytest.raises(ResultsError, match="drop -o"):
        args.func(args)


def test_the_end_of_a_search_plots_when_matplotlib_is_there(search_dir, monkeypatch, capsys):
    from hpcnet.search import _plot

    with monkeypatch.context() as m:
        m.setitem(sys.modules, "matplotlib", None)
        _plot(search_dir, "test_accuracy", "max", verbose=True)  # silently nothing
    assert not list(search_dir.glob("*.png")) and capsys.readouterr().out == ""
    pytest.importorskip("matplotlib")
    _plot(search_dir, "test_accuracy", "max", verbose=True)
    assert "curves.png" in capsys.readouterr().out
    assert len(list(search_dir.glob("*.png"))) == 4
    (search_dir / "trials.jsonl").write_text('{"id": "x"}\n{"id": 1}\n')  # not records
    _plot(search_dir, "test_accuracy", "max", verbose=True)  # one line, no exception
    assert "plots not written" in capsys.readouterr().err
