"""The driver side of the Downpour benchmarks (``ps_vs_rma.py``, ``downpour_vs_sync.py``,
``adagrad_vs_sgd.py``), which launch whole MPI jobs and compare what they report:

* their common flags (:func:`add_run_flags`, :func:`add_train_flags`);
* the run's header line and metadata (:func:`start`), the ``--json`` file
  (:func:`save`: ``{meta..., PART: {...}}``, the layout of the former combined
  ``downpour_bench.py``, whose files each script still reads) and ``--from-json``
  (:func:`load`);
* ``python -m hpcnet train`` jobs and their OUT/summary.json and metrics.jsonl
  (:func:`run_train`, :func:`read_run`; ``batch_vs_async.py`` uses them too).

Not part of hpcnet; the scripts ``import _driver`` as they ``import _common``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

from _common import (
    add_json_flags,
    add_wait_idle,
    blas_info,
    mpiexec_path,
    run_job,
    run_meta,
    uncommitted,
    versions,
)

PACKAGES = ("hpcnet", "numpy", "numba", "mpi4py", "mpich", "matplotlib", "threadpoolctl")


def add_run_flags(
    p: argparse.ArgumentParser,
    repeats: int,
    replay: str = "run nothing: print the tables of this earlier --json file again",
) -> None:
    """``--repeats`` (runs of every side, default ``repeats``), ``--json`` and
    ``--from-json`` (``replay``: its help)."""
    p.add_argument("--repeats", type=int, default=repeats, help="runs of every side (median)")
    add_json_flags(p, replay)


def add_timeout_flags(p: argparse.ArgumentParser) -> None:
    """``--timeout`` (seconds per job, default 300) and ``--wait-idle``."""
    p.add_argument("--timeout", type=float, default=300, help="seconds per run")
    add_wait_idle(p)


def add_train_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a driver that launches ``python -m hpcnet train`` jobs: ``--data``,
    ``--batch-size``, ``--runs-dir`` and ``--keep-runs``."""
    p.add_argument("--data", default="fashion-mnist", help="data set name or .h5 path")
    p.add_argument("--batch-size", type=int, default=32, help="samples per replica per step")
    p.add_argument("--runs-dir", default=None, help="where training runs write (default: /tmp)")
    p.add_argument("--keep-runs", action="store_true", help="keep the runs' OUT directories")


def start(prog: str, part: str, args: argparse.Namespace) -> tuple[dict, str]:
    """Checks the common flags, converts ``--data`` (if any) once before any run, prints
    the header line and returns (the run's metadata, the ``mpiexec`` to launch with)."""
    if args.repeats < 1:
        sys.exit(f"{prog}: --repeats must be at least 1")
    if getattr(args, "data", None):
        from hpcnet.data.registry import resolve_data

        args.data = str(resolve_data(args.data))  # convert Fashion-MNIST once, before any run
    if getattr(args, "runs_dir", None):
        Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    mpiexec = mpiexec_path(prog)
    meta = {
        **run_meta(),
        "blas_driver": blas_info(),
        "versions": versions(PACKAGES),
        "config": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "hpcnet_uncommitted": uncommitted(),
    }
    print(
        f"# {meta['date']}  {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), hpcnet "
        f"{meta['versions']['hpcnet_git']}"
        + (" + uncommitted changes" if meta["hpcnet_uncommitted"] else "")
        + f", part {part}",
        flush=True,
    )
    return meta, mpiexec


def save(path: str | None, meta: dict, part: str, result: dict) -> None:
    """Writes ``{**meta, part: result}`` to ``path`` (``--json``; nothing if None)."""
    if path:
        Path(path).write_text(json.dumps({**meta, part: result}, indent=1, default=float))
        print(f"# raw figures written to {path}")


def load(path: str, part: str, prog: str) -> tuple[dict, dict]:
    """An earlier ``--json`` file (this script's, or the combined ``downpour_bench.py``
    file): prints where and when it was measured; returns (the whole file, its ``part``).
    Exits if the file has no such part."""
    data = json.loads(Path(path).read_text())
    print(f"# {path}: measured {data.get('date')}, hpcnet {data['versions']['hpcnet_git']}")
    if part not in data:
        sys.exit(f"{prog}: {path} has no {part!r} part (it has: {', '.join(data)})")
    return data, data[part]


def train_cmd(mpiexec: str, procs: int, out: Path, flags: list[str]) -> list[str]:
    """``mpiexec -n procs python -m hpcnet train --out OUT flags...``."""
    return [
        mpiexec, "-n", str(procs), sys.executable, "-m", "hpcnet", "train",
        "--out", str(out), *flags,
    ]  # fmt: skip


def read_run(out: Path) -> tuple[dict, list[dict]]:
    """OUT/summary.json and OUT/metrics.jsonl's training records (those with ``loss`` and
    ``elapsed_s``, no ``event``)."""
    summary = json.loads((out / "summary.json").read_text())
    records = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "event" not in rec and "loss" in rec and "elapsed_s" in rec:
            records.append(rec)
    return summary, records


def run_train(
    prog: str, kind: str, procs: int, flags: list[str], what: str, mpiexec: str, **kw
) -> dict:
    """One ``python -m hpcnet train`` job on a quiet machine, writing to a fresh
    directory under ``runs_dir`` (keyword; None: the system's temporary folder).

    Args:
        prog: the benchmark's name (error messages).
        kind: the OUT directory's prefix.
        procs: ranks of the job.
        flags: ``train``'s flags (without ``--out``).
        what: names the job in error messages.
        mpiexec: the launcher.
        kw: ``runs_dir``, then ``timeout`` and ``wait_idle`` as :func:`_common.run_job`.

    Returns:
        ``out`` (the directory), ``cmd_flags``, ``procs``, ``summary`` (summary.json
        without its config), ``records`` (:func:`read_run`) and the disturbance figures.
    """
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=kw.pop("runs_dir", None)))
    shutil.rmtree(out)  # hpcnet creates it
    _, m = run_job(train_cmd(mpiexec, procs, out, flags), what, prog, **kw)
    summary, records = read_run(out)
    summary.pop("config", None)
    summary.pop("_params", None)
    return {
        "out": str(out),
        "cmd_flags": flags,
        "procs": procs,
        "summary": summary,
        "records": records,
        **m,
    }
