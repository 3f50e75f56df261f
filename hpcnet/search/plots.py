"""A finished search's PNGs, drawn from its directory on one process (no MPI).

Read from ``DIR`` (see :mod:`hpcnet.search.runner`): ``trials.jsonl`` (one record per
finished trial), ``search.json`` (the metric and direction, when not given),
``state.json`` (differential evolution's population after each selection) and each
trial's ``trials/NNNN/metrics.jsonl``. Written into ``DIR``:

* ``trials.png``: the metric of every trial in trial-id order (failed trials as red
  crosses at the bottom), and the best so far in the order trials finished;
* ``generations.png`` (only when some trial has ``generation > 0``, i.e. differential
  evolution): per generation its trials' metrics, their worst-to-best band and median,
  the population's median after selection and the best so far;
* ``params.png``: the metric against each searched parameter (log x axis for a
  positive parameter spanning more than two decades or searched over a log range;
  strings and booleans as categories);
* ``curves.png``: every trial's training loss against step on shared axes (log y),
  coloured by its final metric.

"Best" is the best completed trial, as in ``results.csv`` and ``best.toml``; a trial
stopped early is drawn with its last metric but never counts as best.

Needs matplotlib (the ``plot`` extra); the figures use the Agg canvas and never touch
pyplot's global state, like :mod:`hpcnet.tools.plot`.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnet.errors import ResultsError
from hpcnet.extras import require_matplotlib
from hpcnet.run.results import METRICS, RunResults, _read_jsonl, read_results
from hpcnet.search.records import TrialRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

TRIALS = "trials.jsonl"
PNGS = ("trials.png", "generations.png", "params.png", "curves.png")
METRIC_LABELS = {
    "test_accuracy": "test accuracy (fraction correct)",
    "test_loss": "test loss (cross-entropy, nats)",
    "accuracy": "training accuracy (fraction correct)",
    "loss": "training loss (cross-entropy, nats)",
}
PARAM_LABELS = {
    "optim.lr": "learning rate",
    "optim.momentum": "momentum",
    "run.batch_size": "batch size (samples per replica per step)",
    "run.epochs": "epochs (passes over the training data)",
    "model.name": "model",
    "algo.name": "algorithm",
}
FAILED_Y = 0.03  # failed trials have no metric: drawn at this height in axes units
STYLE = {  # status -> Line2D style of its points
    "completed": {"color": "C0", "marker": "o", "ms": 6, "label": "completed"},
    "stopped": {"color": "C1", "marker": "^", "ms": 7, "label": "stopped early (last metric)"},
    "failed": {"color": "red", "marker": "x", "ms": 8, "mew": 2, "label": "failed (no metric)"},
}


@dataclass
class SearchResults:
    """A search directory as read back.

    Attributes:
        out: the search's ``--out`` directory.
        records: one per trial in trial-id order (a trial recorded twice: the last).
        finish_order: the records in the order the trials finished (``ended``, then
            their order in ``trials.jsonl``).
        metric: the metric's name (``test_accuracy``, ``test_loss``, ...).
        direction: ``max`` or ``min``.
        population: differential evolution's population after each generation's
            selection (``generation``, ``best``, ``median``, ``worst``, ``failed``, as
            :meth:`~hpcnet.search.strategies.DifferentialEvolution.generations_summary`),
            from ``state.json``; empty for other strategies.
        curves: trial id -> its run (trials without a ``metrics.jsonl`` left out).
        log_keys: the parameters searched over a log range (``search.json``'s space).
    """

    out: Path
    records: list[TrialRecord]
    finish_order: list[TrialRecord]
    metric: str
    direction: str
    population: list[dict[str, Any]] = field(default_factory=list)
    curves: dict[int, RunResults] = field(default_factory=dict)
    log_keys: set[str] = field(default_factory=set)

    def value(self, rec: TrialRecord) -> float | None:
        """``rec``'s metric, None for a failed trial or a metric that is not finite."""
        m = rec.metric
        if rec.status == "failed" or m is None or not math.isfinite(m):
            return None
        return float(m)

    def best_so_far(self, records: list[TrialRecord]) -> np.ndarray:
        """(len(records),) float64: the best metric of the completed trials among the
        first i + 1 ``records`` (NaN before the first completed one)."""
        pick = max if self.direction == "max" else min
        best, out = None, []
        for rec in records:
            m = self.value(rec) if rec.status == "completed" else None
            if m is not None:
                best = m if best is None else pick(best, m)
            out.append(np.nan if best is None else best)
        return np.array(out, np.float64)

    @property
    def best(self) -> TrialRecord | None:
        """The best completed trial (None: none completed)."""
        done = [r for r in self.records if r.status == "completed" and self.value(r) is not None]
        if not done:
            return None
        sign = 1.0 if self.direction == "max" else -1.0
        return max(done, key=lambda r: (sign * self.value(r), -r.id))

    @property
    def metric_label(self) -> str:
        return METRIC_LABELS.get(self.metric, self.metric)


def read_search(
    out: str | os.PathLike, metric: str | None = None, direction: str | None = None
) -> SearchResults:
    """Reads a search directory (see the module doc).

    Args:
        out: the search's ``--out``.
        metric, direction: the search's metric and ``max``/``min``; None: as saved in
            ``search.json``, else ``test_accuracy`` and ``max``.
    Raises:
        ResultsError: no ``trials.jsonl`` in ``out``, or a file that is not what the
            search writes.
    """
    out = Path(out)
    path = out / TRIALS
    if not path.is_file():
        raise ResultsError(f"{out}: no {TRIALS} (not a search's --out, or no trial finished)")
    names = {f.name for f in fields(TrialRecord)}
    by_id: dict[int, TrialRecord] = {}
    order: list[TrialRecord] = []
    for i, rec in enumerate(_read_jsonl(path), 1):
        try:
            r = TrialRecord(**{k: v for k, v in rec.items() if k in names})
        except TypeError as e:
            raise ResultsError(f"{path}: record {i} is not a trial record: {e}") from None
        by_id[r.id] = r
        order.append(r)
    order = [r for r in order if by_id[r.id] is r]
    settings = _json(out / "search.json")
    metric = metric or settings.get("metric") or "test_accuracy"
    direction = direction or settings.get("direction") or "max"
    if direction not in ("max", "min"):
        raise ResultsError(f"direction {direction!r}: expected max or min")
    curves = {}
    for tid in sorted(by_id):
        run_dir = out / "trials" / f"{tid:04d}"
        if (run_dir / METRICS).is_file():
            try:
                run = read_results(run_dir)
            except ResultsError:  # a trial's file spoilt: its curve only is lost
                continue
            if run.progress:
                curves[tid] = run
    return SearchResults(
        out=out,
        records=[by_id[t] for t in sorted(by_id)],
        finish_order=sorted(order, key=lambda r: r.ended),  # stable: file order on ties
        metric=metric,
        direction=direction,
        population=list(_json(out / "state.json").get("summary") or []),
        curves=curves,
        log_keys=_log_keys(str(settings.get("space", ""))),
    )


def _log_keys(space: str) -> set[str]:
    """The keys of ``Space.describe()``'s log ranges (``optim.lr in [0.005, 0.3] log``)."""
    found = (re.fullmatch(r"(\S+) in \[[^]]*\] log\b.*", part) for part in space.split("; "))
    return {m.group(1) for m in found if m}


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: cannot read it as JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def make_figures(res: SearchResults) -> dict[str, Figure]:
    """The search's figures by PNG file name (``generations.png`` only for a search
    with generations, ``curves.png`` only when a trial logged a step).

    Raises:
        MissingExtra: matplotlib is not installed.
    """
    require_matplotlib()
    figs = {"trials.png": trials_figure(res)}
    if any(r.generation > 0 for r in res.records):
        figs["generations.png"] = generations_figure(res)
    if any(r.params for r in res.records):
        figs["params.png"] = params_figure(res)
    if res.curves:
        figs["curves.png"] = curves_figure(res)
    return figs


def plot_search(
    out_dir: str | os.PathLike, metric: str | None = None, direction: str | None = None
) -> list[Path]:
    """Writes the search's PNGs (see the module doc) into ``out_dir``; returns their
    paths. ``metric``/``direction``: as :func:`read_search`.

    Raises:
        MissingExtra: matplotlib is not installed (checked before reading anything).
        ResultsError: ``out_dir`` is not a search directory, or a PNG cannot be written.
    """
    require_matplotlib()
    res = read_search(out_dir, metric, direction)
    paths = []
    for name, fig in make_figures(res).items():
        path = res.out / name
        try:
            fig.savefig(path, format="png", dpi=110)
        except OSError as e:
            raise ResultsError(f"{path}: cannot write: {e.strerror or e}") from None
        paths.append(path)
    return paths


# --- figures ------------------------------------------------------------------------------
def _figure(nrows: int, ncols: int, w: float, h: float, **kw):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w * ncols, h * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw).ravel()


def _title(res: SearchResults) -> str:
    n = {s: sum(r.status == s for r in res.records) for s in STYLE}
    counts = ", ".join(f"{k} {s}" for s, k in n.items() if k)
    best = res.best
    tail = f"; best trial {best.id}: {res.metric} {best.metric:.4f}" if best else ""
    return f"search {res.out.name}: {len(res.records)} trials ({counts}){tail}"


def _points(ax: Axes, res: SearchResults, records: list[TrialRecord], xs) -> None:
    """``records`` at x positions ``xs``: completed and stopped at their metric, failed
    ones (and non-finite metrics) as red crosses at the bottom of ``ax``."""
    xs = np.asarray(xs, np.float64)
    for status, style in STYLE.items():
        if status == "failed":
            pick = [i for i, r in enumerate(records) if res.value(r) is None]
            y = np.full(len(pick), FAILED_Y)
            kw = {"transform": ax.get_xaxis_transform(), "clip_on": False}
        else:
            pick = [
                i for i, r in enumerate(records) if r.status == status and res.value(r) is not None
            ]
            y = np.array([res.value(records[i]) for i in pick], np.float64)
            kw = {}
        if pick:
            ax.plot(xs[pick], y, ls="", gid=status, zorder=3, **style, **kw)
    best = res.best
    if best is not None and best in records:
        i = records.index(best)
        ax.plot([xs[i]], [res.value(best)], ls="", marker="*", ms=16, color="gold", mec="k",
                zorder=4, gid="best", label=f"best: trial {best.id}")  # fmt: skip


def trials_figure(res: SearchResults) -> Figure:
    """Left: each trial's metric against its id; right: every trial's metric in the
    order trials finished, with the best so far as a step line (``gid="best_so_far"``).
    Points are Line2D artists with ``gid`` ``completed``, ``stopped``, ``failed``,
    ``best``."""
    fig, (by_id, by_end) = _figure(1, 2, 6.4, 4.4)
    _points(by_id, res, res.records, [r.id for r in res.records])
    by_id.set_title("metric per trial")
    by_id.set_xlabel("trial id")
    order = res.finish_order
    k = np.arange(1, len(order) + 1)
    _points(by_end, res, order, k)
    by_end.step(k, res.best_so_far(order), where="post", color="C3", lw=2, gid="best_so_far",
                label="best so far (completed trials)")  # fmt: skip
    by_end.set_title("best so far, in the order trials finished")
    by_end.set_xlabel("trials finished")
    for ax in (by_id, by_end):
        _finish(ax, res.metric_label, integer_x=True)
        _room_for_failed(ax, res)
    fig.suptitle(_title(res))
    return fig


def generations_figure(res: SearchResults) -> Figure:
    """Per generation: its trials' metrics (``gid="trials"``), their worst-to-best band
    and median (``gid="median"``), the population's median after selection
    (``gid="population_median"``, from ``state.json``) and the best of all completed
    trials of generations up to it (``gid="best_so_far"``); failed trials as red crosses
    at the bottom."""
    fig, (ax,) = _figure(1, 1, 10.0, 4.8)
    gens = np.arange(max(r.generation for r in res.records) + 1)
    per = [[r for r in res.records if r.generation == g] for g in gens]
    vals = [np.array([m for r in rs if (m := res.value(r)) is not None], np.float64) for rs in per]
    lo = np.array([v.min() if v.size else np.nan for v in vals])
    hi = np.array([v.max() if v.size else np.nan for v in vals])
    med = np.array([np.median(v) if v.size else np.nan for v in vals])
    ax.fill_between(
        gens, lo, hi, color="C0", alpha=0.15, label="generation's trials: worst to best"
    )
    xs = np.concatenate([np.full(v.size, g, np.float64) for g, v in zip(gens, vals, strict=True)])
    ax.plot(xs, np.concatenate(vals), ls="", marker="o", ms=5, color="C0", alpha=0.6,
            gid="trials", label="a trial")  # fmt: skip
    ax.plot(gens, med, color="C0", lw=2, marker="s", gid="median", label="generation's median")
    pop = {int(s["generation"]): s.get("median") for s in res.population}
    if pop:
        y = [np.nan if pop.get(g) is None else pop[g] for g in gens]
        ax.plot(gens, y, color="C2", lw=2, ls="--", marker="D", gid="population_median",
                label="population median after selection")  # fmt: skip
    flat = [r for rs in per for r in rs]
    upto = np.append(res.best_so_far(flat), np.nan)  # [-1]: NaN, before any trial
    best = upto[[sum(len(rs) for rs in per[: g + 1]) - 1 for g in gens]]
    ax.step(gens, best, where="post", color="C3", lw=2, gid="best_so_far",
            label="best so far (completed trials)")  # fmt: skip
    failed = [g for g, rs in zip(gens, per, strict=True) for r in rs if res.value(r) is None]
    if failed:
        ax.plot(failed, np.full(len(failed), FAILED_Y), ls="", gid="failed", zorder=3,
                transform=ax.get_xaxis_transform(), clip_on=False, **STYLE["failed"])  # fmt: skip
    ax.set_title("trials per generation (generation 0: the initial random population)")
    ax.set_xlabel("generation")
    ax.set_xticks(gens)
    _finish(ax, res.metric_label, legend=False)
    _room_for_failed(ax, res)
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.suptitle(_title(res))
    return fig


def _numeric(values: list[Any]) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)


def _plain_log_formatter(**kw):
    """A log axis's tick labels as plain numbers (0.01, 20; not 1e-02, 2x10^1), on the
    ticks matplotlib's LogFormatter would label."""
    from matplotlib.ticker import LogFormatter

    class Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return f"{x:g}"

    return Plain(**kw)


def params_figure(res: SearchResults) -> Figure:
    """One Axes per searched parameter (the keys of the records' params, in order of
    first appearance), its value against the metric; points as in
    :func:`trials_figure`. A parameter whose values are all positive and span more
    than two decades (or searched over a log range) gets a log x axis; strings and
    booleans are categories (small, fixed jitter so equal points stay visible)."""
    keys = list(dict.fromkeys(k for r in res.records for k in r.params))
    ncols = min(len(keys), 3)
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = _figure(nrows, ncols, max(4.6, 9.2 / ncols), 3.8, sharey=True)
    for ax in axes[len(keys) :]:
        fig.delaxes(ax)
    jitter = np.random.default_rng(0)
    for ax, key in zip(axes, keys, strict=False):
        recs = [r for r in res.records if key in r.params]
        values = [r.params[key] for r in recs]
        label = PARAM_LABELS.get(key, key)
        if _numeric(values):
            xs = np.array(values, np.float64)
            log = xs.min() > 0 and (xs.max() > 100 * xs.min() or key in res.log_keys)
            if log:
                ax.set_xscale("log")
                ax.xaxis.set_major_formatter(_plain_log_formatter())
                ax.xaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False))
            ax.set_xlabel(label + (" (log scale)" if log else ""))
        else:
            cats = list(dict.fromkeys(str(v) for v in values))
            xs = np.array([cats.index(str(v)) for v in values], np.float64)
            xs += jitter.uniform(-0.12, 0.12, len(xs))
            ax.set_xticks(range(len(cats)), cats)
            ax.set_xlim(-0.5, len(cats) - 0.5)
            ax.set_xlabel(label)
        _points(ax, res, recs, xs)
        ax.set_title(key)
        _finish(ax, res.metric_label if ax in axes[::ncols] else None, legend=ax is axes[0])
    _room_for_failed(axes[0], res)  # the y axis is shared: once
    fig.suptitle(_title(res))
    return fig


def curves_figure(res: SearchResults) -> Figure:
    """Training loss against step of every trial with progress records, one Line2D each
    (``gid`` the trial id as text), coloured by the trial's final metric (a colorbar;
    the better end yellow); trials without a metric in grey, dashed."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    fig, (ax,) = _figure(1, 1, 8.0, 4.8)
    by_id = {r.id: r for r in res.records}
    metrics = [m for t in res.curves if t in by_id and (m := res.value(by_id[t])) is not None]
    cmap = colormaps["viridis" if res.direction == "max" else "viridis_r"]
    norm = Normalize(min(metrics, default=0.0), max(metrics, default=1.0))
    for tid, run in res.curves.items():
        m = res.value(by_id[tid]) if tid in by_id else None
        loss = run.column("loss")
        loss[~(loss > 0)] = np.nan  # a log axis: NaN, inf-free and positive only
        loss[~np.isfinite(loss)] = np.nan
        style = (
            {"color": cmap(norm(m)), "lw": 1.6} if m is not None else {"color": "0.6", "ls": "--"}
        )
        ax.plot(run.x("step"), loss, gid=str(tid), alpha=0.85, **style)
    ax.set_yscale("log")
    ax.set_title(f"training loss of {len(res.curves)} trials")
    ax.set_xlabel("step")
    ax.set_ylabel("training cross-entropy (nats, log scale)")
    ax.grid(alpha=0.3, which="both")
    if metrics:
        fig.colorbar(ScalarMappable(norm, cmap), ax=ax, label=f"final {res.metric_label}")
    if len(metrics) < len(res.curves):
        ax.legend([Line2D([], [], color="0.6", ls="--")], ["failed (no metric)"], fontsize="small")
    fig.suptitle(_title(res))
    return fig


def _room_for_failed(ax: Axes, res: SearchResults) -> None:
    """Lowers the y axis's bottom so the failed trials' crosses (at ``FAILED_Y`` in
    axes units) sit below every metric drawn."""
    if any(res.value(r) is None for r in res.records):
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo - 2 * FAILED_Y * (hi - lo), hi)


def _finish(ax: Axes, ylabel: str | None, integer_x: bool = False, legend: bool = True) -> None:
    from matplotlib.ticker import MaxNLocator

    if ylabel:
        ax.set_ylabel(ylabel)
    if integer_x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
