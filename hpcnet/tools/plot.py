"""``python -m hpcnet plot``: one PNG figure of one or several runs' results.

Panels, in this order, each only when at least one run has the data:

1. training loss (mean cross-entropy over the logged interval, nats) against step or
   time, one line per run, the final test loss as a star;
2. training accuracy, likewise, the final test accuracy as a star;
3. Downpour staleness: the fraction of pushes applied s versions after the
   parameters they were computed from were fetched (``summary["staleness"]
   ["histogram"]``, summed over shards; the last bin holds 63 and more);
4. throughput per replica, samples/s (``summary["replicas"][i]["samples_per_s"]``,
   Downpour);
5. Sandblaster work units per replica: computed (backup copies included) and
   accepted by the coordinator (``summary["replicas"][i]["units_computed"]``,
   ``summary["units_completed"]``);
6. model-parallel bytes sent and received per training step by each partition of
   replica 0 (``summary["model_parallel"]["per_partition"]``).

Needs matplotlib (the ``plot`` extra). The figure is drawn with the Agg canvas and
never touches pyplot's global state, so plotting from a notebook or a headless job
behaves the same.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hpcnet.extras import require_matplotlib
from hpcnet.run.results import RunResults, run_labels

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

X_LABELS = {
    "step": "step (of one replica)",
    "samples": "training samples (all replicas)",
    "epoch": "epoch",
    "time": "time since the run started (s, kernel compilation left out)",
}


def default_x(runs: list[RunResults]) -> str:
    """``epoch`` when the runs differ in algorithm (their steps mean different amounts
    of data), else ``step``."""
    return "epoch" if len({r.summary.get("algo") for r in runs}) > 1 else "step"


def _replicas(run: RunResults) -> list[dict[str, Any]]:
    """Per-replica entries of the summary (partition 0 of each under model parallelism)."""
    reps = run.summary.get("replicas") or []
    return [r for r in reps if isinstance(r, dict) and r.get("partition", 0) == 0]


def _staleness(run: RunResults) -> np.ndarray | None:
    hist = (run.summary.get("staleness") or {}).get("histogram")
    return np.asarray(hist, np.float64) if hist and sum(hist) > 0 else None


def _throughput(run: RunResults) -> list[float] | None:
    reps = _replicas(run)
    if not reps or any("samples_per_s" not in r for r in reps):
        return None
    return [float(r["samples_per_s"]) for r in reps]


def _units(run: RunResults) -> tuple[list[int], list[int]] | None:
    accepted = run.summary.get("units_completed")
    computed = [r.get("units_computed") for r in _replicas(run)]
    if accepted is None or not computed or None in computed:
        return None
    return computed, list(accepted)


def _partition_bytes(run: RunResults) -> tuple[list[float], list[float]] | None:
    per = (run.summary.get("model_parallel") or {}).get("per_partition")
    if not per:
        return None
    return (
        [float(p["bytes_sent_per_step"]) for p in per],
        [float(p["bytes_recv_per_step"]) for p in per],
    )


def make_figure(runs: list[RunResults], x: str = "step") -> Figure:
    """Draws the figure of ``runs`` (see the module doc for its panels).

    Args:
        runs: one or more runs, as :func:`hpcnet.run.results.read_results` gives them.
        x: the curves' x axis: ``"step"`` (one replica's), ``"samples"``, ``"epoch"`` or
            ``"time"`` (seconds, see :attr:`RunResults.time_s`).
    Returns:
        A matplotlib Figure with an Agg canvas, one Axes per panel drawn; the loss and
        accuracy Axes hold one line per run that logged a step.
    Raises:
        MissingExtra: matplotlib is not installed.
        ValueError: no runs, or another ``x``.
    """
    if not runs:
        raise ValueError("make_figure needs at least one run")
    if x not in X_LABELS:
        raise ValueError(f"x must be one of {', '.join(X_LABELS)}, got {x!r}")
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = run_labels(runs)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    extras = [
        (_staleness, _draw_staleness),
        (_throughput, _draw_throughput),
        (_units, _draw_units),
        (_partition_bytes, _draw_bytes),
    ]
    panels = [(lambda r: r, _draw_loss), (lambda r: r, _draw_accuracy)]
    panels += [(get, draw) for get, draw in extras if any(get(r) is not None for r in runs)]
    ncols = 2
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(6.4 * ncols, 4.2 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(panels) :]:
        fig.delaxes(ax)
    for ax, (get, draw) in zip(axes, panels, strict=False):
        data = [(get(r), lab, c) for r, lab, c in zip(runs, labels, colors, strict=True)]
        draw(ax, [(d, lab, c) for d, lab, c in data if d is not None], x)
    fig.suptitle(_title(runs))
    return fig


def plot_runs(runs: list[RunResults], path: str | Path, x: str = "step") -> Path:
    """Draws :func:`make_figure` of ``runs`` into the PNG file ``path``; returns it.

    Raises:
        MissingExtra: matplotlib is not installed.
        OSError: the file cannot be written.
    """
    path = Path(path)
    make_figure(runs, x).savefig(path, format="png", dpi=110)
    return path


def _title(runs: list[RunResults]) -> str:
    if len(runs) > 1:
        return f"{len(runs)} runs"
    s, test = runs[0].summary, runs[0].test
    title = run_labels(runs, detail=False)[0]
    if "model" in s:
        title += f": {s['model']} on {s.get('dataset', '?')}, {s.get('layout_text', '')}"
    if test is not None:
        title += f"; test accuracy {test['test_accuracy']:.4f}"
    elif not s:
        title += ": unfinished (no summary.json)"
    return title


def _curves(ax: Axes, runs, x: str, key: str, test_key: str) -> None:
    from matplotlib.lines import Line2D

    for run, label, color in runs:
        few = len(run.progress) <= 3  # a line needs 2 points: mark each one
        ax.plot(
            run.x(x), run.column(key), color=color, label=label, lw=1.5, marker="o" if few else None
        )
        tx = run.test_x(x)
        if tx is not None:
            ax.scatter([tx], [run.test[test_key]], color=color, marker="*", s=140, zorder=3)
    iterations = x == "step" and any(r.summary.get("algo") == "sandblaster" for r, _, _ in runs)
    ax.set_xlabel(X_LABELS[x] + (" (Sandblaster: L-BFGS iteration)" if iterations else ""))
    ax.grid(alpha=0.3)
    handles, names = ax.get_legend_handles_labels()
    if any(run.test is not None for run, _, _ in runs):
        star = Line2D([], [], color="0.3", marker="*", ls="", markersize=11)
        handles, names = handles + [star], names + ["test set, end of run"]
    ax.legend(handles, names, fontsize="small")


def _draw_loss(ax: Axes, runs, x: str) -> None:
    _curves(ax, runs, x, "loss", "test_loss")
    ax.set_title("training loss")
    ax.set_ylabel("cross-entropy (nats, log scale)")
    ax.set_yscale("log")


def _draw_accuracy(ax: Axes, runs, x: str) -> None:
    _curves(ax, runs, x, "accuracy", "test_accuracy")
    ax.set_title("training accuracy")
    ax.set_ylabel("accuracy (fraction correct)")
    ax.set_ylim(0.0, 1.02)


def _draw_staleness(ax: Axes, runs, x: str) -> None:
    last = max(int(np.flatnonzero(h).max()) for h, _, _ in runs)
    edges = np.arange(last + 2) - 0.5
    for hist, label, color in runs:
        frac = hist[: last + 1] / hist.sum()
        ax.stairs(frac, edges, color=color, fill=len(runs) == 1, alpha=0.6, label=label, lw=2)
    ax.set_title("Downpour staleness of applied pushes")
    ax.set_xlabel("staleness (updates applied between a replica's fetch and its push)")
    ax.set_ylabel("fraction of pushes")
    ax.set_xticks(range(last + 1) if last < 20 else ax.get_xticks())
    ax.set_xlim(edges[0], edges[-1])
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def _grouped_bars(ax: Axes, groups: list[tuple[list[float], str, dict]], what: str) -> None:
    """Bars side by side per index: ``groups`` is (values, legend label, bar style)."""
    n = max(len(v) for v, _, _ in groups)
    width = 0.8 / len(groups)
    for i, (values, label, style) in enumerate(groups):
        pos = np.arange(len(values)) + (i - (len(groups) - 1) / 2) * width
        ax.bar(pos, values, width, label=label, **style)
    ax.set_xticks(range(n), [f"{what} {i}" for i in range(n)])
    ax.set_ylim(0, 1.25 * max(max(v) for v, _, _ in groups))  # room for the legend
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def _draw_throughput(ax: Axes, runs, x: str) -> None:
    _grouped_bars(ax, [(v, label, {"color": c}) for v, label, c in runs], "replica")
    ax.set_title("throughput per replica")
    ax.set_ylabel("training samples/s")


def _draw_units(ax: Axes, runs, x: str) -> None:
    groups = []
    for (computed, accepted), label, color in runs:
        groups.append((computed, f"{label}: computed", {"color": color, "alpha": 0.45}))
        groups.append((accepted, f"{label}: accepted", {"color": color}))
    _grouped_bars(ax, groups, "replica")
    ax.set_title("Sandblaster work units per replica")
    ax.set_ylabel("work units (computed: backup copies included)")


def _draw_bytes(ax: Axes, runs, x: str) -> None:
    from matplotlib.ticker import EngFormatter

    groups = []
    for (sent, recv), label, color in runs:
        groups.append((sent, f"{label}: sent", {"color": color}))
        groups.append((recv, f"{label}: received", {"color": color, "hatch": "//", "alpha": 0.5}))
    _grouped_bars(ax, groups, "partition")
    ax.set_title("model-parallel traffic per partition (replica 0)")
    ax.set_ylabel("bytes per training step")
    ax.yaxis.set_major_formatter(EngFormatter(unit="B"))
