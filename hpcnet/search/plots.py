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

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hpcnet.errors import ResultsError
from hpcnet.extras import require_matplotlib

if TYPE_CHECKING:
    from matplotlib.figure import Figure

from hpcnet.search.figures import (  # noqa: F401  (re-exported: the figures by name)
    FAILED_Y,
    STYLE,
    curves_figure,
    generations_figure,
    params_figure,
    trials_figure,
)
from hpcnet.search.reading import SearchResults, read_search  # noqa: F401  (re-exported)

PNGS = ("trials.png", "generations.png", "params.png", "curves.png")


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
