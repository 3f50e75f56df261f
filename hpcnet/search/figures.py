"""The search's figures (matplotlib, on the Agg canvas, never pyplot's global state);
:mod:`hpcnet.search.plots` draws and writes them."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnet.search.records import TrialRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

from hpcnet.search.reading import PARAM_LABELS, SearchResults

FAILED_Y = 0.03  # failed trials have no metric: drawn at this height in axes units
STYLE = {  # status -> Line2D style of its points
    "completed": {"color": "C0", "marker": "o", "ms": 6, "label": "completed"},
    "stopped": {"color": "C1", "marker": "^", "ms": 7, "label": "stopped early (last metric)"},
    "failed": {"color": "red", "marker": "x", "ms": 8, "mew": 2, "label": "failed (no metric)"},
}


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
