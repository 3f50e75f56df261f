"""The ``plot`` and ``export`` subcommands: a finished run's (or search's) results for
people and for other tools.

Both run on a single process (``python -m hpcnet plot OUT``, no ``mpiexec``), return
an exit status, and let :class:`~hpcnet.errors.HpcnetError` (a missing OUT, no
matplotlib, no PyTorch, a corrupt checkpoint) reach the top-level CLI: one line,
exit status 2.
"""

from __future__ import annotations

import argparse
from pathlib import Path

RUNS_PNG = "runs.png"  # plot's default output for several runs, in the current directory


def add_plot_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``plot`` to a top-level ``add_subparsers()`` object; returns its parser."""
    p = subparsers.add_parser(
        "plot",
        help="loss/accuracy curves and per-algorithm panels of one or more runs, as a PNG "
        "(needs the plot extra: matplotlib)",
        description="Draws the training loss and accuracy of each run (shared axes, the "
        "final test figures as stars) and, when the runs have them, the Downpour staleness "
        "histogram and per-replica throughput, Sandblaster work units per replica and "
        "model-parallel bytes per partition, into one PNG. Given a search's directory (it "
        "has trials.jsonl), draws the search's PNGs into it instead: trials.png, "
        "generations.png (differential evolution), params.png and curves.png.",
    )
    p.add_argument(
        "out",
        nargs="+",
        type=Path,
        metavar="OUT",
        help="a run's --out directory, or one search's --out (has trials.jsonl)",
    )
    p.add_argument(
        "--x",
        choices=("step", "samples", "epoch", "time"),
        default=None,
        help="x axis of the curves: step (one replica's), training samples (all replicas), "
        "epoch, or seconds since the run started (compilation left out); default epoch "
        "when the runs differ in algorithm, else step",
    )
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE.png",
        help=f"default OUT/plot.png for one run, ./{RUNS_PNG} for several",
    )
    p.set_defaults(func=_plot)
    return p


def add_export_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Adds ``export`` to a top-level ``add_subparsers()`` object; returns its parser."""
    from hpcnet.tools.export import FORMATS

    p = subparsers.add_parser(
        "export",
        help="a run's trained weights for other tools: NumPy .npz or a PyTorch state_dict",
        description="Reads OUT/checkpoint.h5 (the final parameters), splits the flat vector "
        "into the model's named tensors and writes them as NumPy arrays (npz: names as in "
        "the model's layout, e.g. 0.Conv2D.w) or as a PyTorch state_dict for the equivalent "
        "torch.nn model (torch: hpcnet.nn.torch_equiv.torch_module builds it).",
    )
    p.add_argument("out", type=Path, metavar="OUT", help="a run's --out directory")
    p.add_argument("--format", choices=sorted(FORMATS), required=True, help="npz or torch")
    p.add_argument(
        "-o",
        "--output",
        type=Path,
        metavar="FILE",
        help="default OUT/weights.npz (npz) or OUT/weights.pt (torch)",
    )
    p.set_defaults(func=_export)
    return p


def _plot(args) -> int:
    from hpcnet.errors import ResultsError
    from hpcnet.run.results import read_results
    from hpcnet.tools.plot import default_x, plot_runs, require_matplotlib

    require_matplotlib()  # before reading anything: the one missing piece first
    if any((out / "trials.jsonl").is_file() for out in args.out):
        return _plot_search(args)
    runs = [read_results(out) for out in args.out]
    empty = [str(out) for out, r in zip(args.out, runs, strict=True) if not r.progress]
    if empty:
        raise ResultsError(f"{', '.join(empty)}: no progress records to plot (no step logged)")
    path = args.output or (args.out[0] / "plot.png" if len(runs) == 1 else Path(RUNS_PNG))
    try:
        plot_runs(runs, path, x=args.x or default_x(runs))
    except OSError as e:
        raise ResultsError(f"-o {path}: cannot write: {e.strerror or e}") from None
    print(f"wrote {path}")
    return 0


def _plot_search(args) -> int:
    from hpcnet.errors import ResultsError
    from hpcnet.search.plots import plot_search

    if len(args.out) > 1:
        raise ResultsError(
            f"plot {' '.join(map(str, args.out))}: a search directory is plotted alone "
            "(one search's --out, or run directories only)"
        )
    if args.output is not None:
        raise ResultsError(
            f"-o {args.output}: a search's PNGs are written into its directory "
            f"{args.out[0]}; drop -o"
        )
    for path in plot_search(args.out[0]):  # metric and direction from its search.json
        print(f"wrote {path}")
    return 0


def _export(args) -> int:
    from hpcnet.tools.export import export_run

    print(export_run(args.out, args.format, args.output))
    return 0
