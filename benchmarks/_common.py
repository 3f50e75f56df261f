"""Helpers shared by the benchmark drivers in this folder (not part of hpcnet).

* finding ``mpiexec``;
* a quiet machine: :func:`wait_for_idle` before a run, and :class:`Disturbance`,
  which measures from ``/proc/stat`` how much CPU other jobs took during the run
  (this project's machines have 2 vCPUs and are shared);
* running one worker job on a quiet machine: :func:`run_job`, :func:`run_for_result`;
* what the run ran on: :func:`cpu_model`, :func:`versions`, :func:`env_info`,
  :func:`blas_info`, :func:`uncommitted`;
* the ``RESULT {json}`` line a worker prints and its driver parses;
* a worker's start: :func:`mpi_worker` (abort hook, communicator, threads) and
  :func:`model_worker` (the same, plus data batches and a zoo model broadcast from
  rank 0);
* summaries: :func:`clean_runs`, :func:`med`, :func:`table_head`;
* a script's ``main``: :func:`dispatch` (worker or driver).

The scripts run as ``python benchmarks/NAME.py``, so this folder is on ``sys.path``
and they ``import _common``.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_TAG = "RESULT "
IDLE_ENOUGH = 0.8  # machine idle fraction for a run to start (and count) as undisturbed
OTHERS_TOO_MUCH = 0.1  # other jobs' share of the machine's CPU above which a run is disturbed
DEFAULT_PACKAGES = ("hpcnet", "numpy", "numba", "mpi4py", "mpich", "torch", "threadpoolctl")


def blas_info() -> list[dict]:
    """threadpoolctl's view of the loaded BLAS/OpenMP libraries (JSON-safe)."""
    from threadpoolctl import threadpool_info

    return [
        {k: v for k, v in d.items() if isinstance(v, (str, int, type(None)))}
        for d in threadpool_info()
    ]


def env_info() -> dict:
    keys = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS", "NUMBA_NUM_THREADS")
    return {k: os.environ.get(k) for k in keys}


def emit(result: dict) -> None:
    """Prints a worker's result as one ``RESULT {json}`` line for its driver."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def parse_result(stdout: str) -> dict | None:
    """The last ``RESULT {json}`` line of a worker's output, or None."""
    lines = [ln for ln in stdout.splitlines() if ln.startswith(RESULT_TAG)]
    return json.loads(lines[-1][len(RESULT_TAG) :]) if lines else None


def mpiexec_path(prog: str) -> str:
    """The ``mpiexec`` beside this Python (hpcnet's mpich extra), else the one on PATH;
    exits with a message naming ``prog`` if there is none."""
    here = Path(sys.executable).parent / "mpiexec"
    found = str(here) if here.is_file() else shutil.which("mpiexec")
    if not found:
        sys.exit(
            f"{prog}: no mpiexec beside this Python or on PATH; "
            "install hpcnet with its mpich extra (pip install -e '.[mpich]')"
        )
    return found


def cpu_ticks() -> dict[str, int] | None:
    """The whole machine's CPU time since boot, in clock ticks, from /proc/stat.

    Returns:
        ``busy`` (user, nice, system, irq, softirq), ``steal`` (the hypervisor ran
        someone else on our vCPU) and ``total`` (all of them plus idle and iowait);
        None where /proc/stat cannot be read.
    """
    try:
        v = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    v += [0] * (8 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v
    busy = user + nice + system + irq + softirq
    return {"busy": busy, "steal": steal, "total": busy + steal + idle + iowait}


def wait_for_idle(max_wait: float, interval: float = 0.5) -> float | None:
    """Waits up to ``max_wait`` seconds for the machine to be >= 80 % idle.

    Another job on this shared 2-vCPU machine halves a side's throughput, so each run
    starts on an idle machine when it can. Returns the idle fraction of the last
    ``interval`` (None if unknown).
    """
    deadline = time.monotonic() + max_wait
    while True:
        a = cpu_ticks()
        time.sleep(interval)
        b = cpu_ticks()
        if a is None or b is None:
            return None
        idle = 1.0 - (b["busy"] - a["busy"]) / max(b["total"] - a["total"], 1)
        if idle >= IDLE_ENOUGH or time.monotonic() >= deadline:
            return idle


def children_cpu_s() -> float:
    """CPU seconds used so far by this process's finished children (and theirs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class Disturbance:
    """How quiet the machine was around one child run.

    ``start()`` waits (up to ``max_wait`` s) for an idle machine and takes the
    machine's and our children's CPU counters; run the child to completion with
    ``subprocess.run``; then ``finish()`` returns the wall time and, from
    ``/proc/stat``, the share of the machine's CPU that other jobs (busy time
    minus our finished children's) and the hypervisor (steal) took meanwhile.
    """

    def __init__(self, max_wait: float):
        self.max_wait = max_wait

    def start(self) -> Disturbance:
        self.idle = wait_for_idle(self.max_wait)
        self.ticks0, self.ours0 = cpu_ticks(), children_cpu_s()
        self.t0 = time.perf_counter()
        return self

    def finish(self) -> dict:
        """``wall_s``, ``cpu_idle_before``, ``cpu_others_during``, ``cpu_steal_during``
        (fractions of the machine, None if unknown) and ``clean`` (the machine was idle
        before and other jobs took <= 10 % during)."""
        wall = time.perf_counter() - self.t0
        ticks1, ours1 = cpu_ticks(), children_cpu_s()
        others = steal = None
        if self.ticks0 and ticks1:
            # Machine-wide busy time minus our own processes' = what other jobs took.
            hz = os.sysconf("SC_CLK_TCK")
            capacity = max(ticks1["total"] - self.ticks0["total"], 1) / hz  # CPU-seconds
            others = (
                max(0.0, (ticks1["busy"] - self.ticks0["busy"]) / hz - (ours1 - self.ours0))
                / capacity
            )
            steal = (ticks1["steal"] - self.ticks0["steal"]) / hz / capacity
        idle = self.idle
        clean = (idle is None or idle >= IDLE_ENOUGH) and (
            others is None or others <= OTHERS_TOO_MUCH
        )
        return {
            "wall_s": wall,
            "cpu_idle_before": idle,
            "cpu_others_during": others,
            "cpu_steal_during": steal,
            "clean": clean,
        }


def disturbance(r: dict) -> str:
    """How quiet the machine was around one run, for the progress line."""

    def pct(v: float | None) -> str:
        return "?" if v is None else f"{v:.0%}"

    note = "" if r["clean"] else "  <- other jobs on the machine: left out of the median"
    return (
        f"run {r['wall_s']:.1f} s; idle before {pct(r['cpu_idle_before'])}, other jobs "
        f"{pct(r['cpu_others_during'])}, steal {pct(r['cpu_steal_during'])}{note}"
    )


def run_job(
    cmd: list[str],
    what: str,
    prog: str,
    *,
    timeout: float,
    wait_idle: float,
    env: dict[str, str] | None = None,
) -> tuple[subprocess.CompletedProcess, dict]:
    """Runs one child job (``mpiexec ...`` or ``python ...``) to completion on a quiet
    machine, its output captured.

    Args:
        cmd: the command line.
        what: names the job in progress and error messages (e.g. ``ps hpcnet n=100000``).
        prog: the benchmark's name, the first word of an error message.
        timeout: seconds the job may run.
        wait_idle: seconds to wait first for an idle machine (:class:`Disturbance`).
        env: the job's environment (default: this process's).

    Returns:
        (the completed process, :meth:`Disturbance.finish`'s figures).

    Exits (``sys.exit``) with the command and the tails of its output if the job times
    out or fails.
    """
    measure = Disturbance(wait_idle).start()
    try:
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{prog}: {what} did not finish in {timeout:.0f} s: " + " ".join(cmd))
    m = measure.finish()
    if proc.returncode != 0:
        sys.exit(
            f"{prog}: {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
    return proc, m


def run_for_result(cmd: list[str], what: str, prog: str, **kw) -> dict:
    """:func:`run_job` for a worker that prints a ``RESULT {json}`` line: returns that
    result with the disturbance figures added; exits if there is none. Keyword
    arguments as :func:`run_job`'s."""
    proc, m = run_job(cmd, what, prog, **kw)
    result = parse_result(proc.stdout)
    if result is None:
        sys.exit(
            f"{prog}: {what} printed no result: {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
    result.update(m)
    return result


def clean_runs(every: list[dict]) -> list[dict]:
    """The undisturbed runs (``clean``) of ``every``, or all of them if none was."""
    return [r for r in every if r["clean"]] or every


def med(values) -> float:
    """The median of ``values`` (any iterable of numbers), as a float."""
    return float(statistics.median(values))


def table_head(head: str, title: str | None = None) -> None:
    """Prints a text table's ``title`` (a blank line, then ``## title``) if given, its
    header line and a rule of dashes as long as the header."""
    if title is not None:
        print(f"\n## {title}")
    print(head)
    print("-" * len(head))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def versions(packages: tuple[str, ...] = DEFAULT_PACKAGES) -> dict:
    """Installed versions of ``packages`` and hpcnet's git commit (short hash)."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in packages:
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    try:
        out["hpcnet_git"] = (
            subprocess.run(
                ["git", "-C", str(Path(__file__).resolve().parent), "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        out["hpcnet_git"] = None
    return out


def uncommitted(folder: str = "hpcnet") -> list[str] | None:
    """Files under ``folder`` of the checkout that differ from the commit in
    :func:`versions` (``git status``): the figures were measured on this working tree.
    None where git cannot tell."""
    try:
        out = subprocess.run(
            [
                "git",
                "-C",
                str(Path(__file__).resolve().parents[1]),
                "status",
                "--porcelain",
                "--",
                folder,
            ],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines()]


def run_meta() -> dict:
    """When and on what a benchmark ran: ``date`` (UTC, ISO 8601), ``machine`` (CPU
    model, CPU count, platform, Python) and ``env`` (BLAS/threading variables), for
    the JSON a driver writes."""
    import datetime

    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "env": env_info(),
    }


def add_wait_idle(parser, default: float = 60.0) -> None:
    """Adds ``--wait-idle SECONDS`` (how long to wait, before each run, for the machine
    to be :data:`IDLE_ENOUGH` idle) to a driver's argparse parser."""
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=default,
        help="seconds to wait, before each run, for the machine to be 80%% idle",
    )


def train_batches(data: str, rows: int, batch: int):
    """The first ``rows`` training rows of an hpcnet dataset file (at most all of
    them, rounded down to whole batches), for the benchmark workers.

    Returns:
        (x, y): (rows // batch, batch, C, H, W) float32 normalised with the file's
        per-channel mean/std, and (rows // batch, batch) int64 labels.
    """
    import numpy as np

    from hpcnet.data.format import open_dataset, read_rows
    from hpcnet.data.loader import normalize

    info = open_dataset(data)
    rows = min(rows, info.n_train) // batch * batch
    images, labels = read_rows(info.path, "train", 0, rows)
    x = normalize(images, info.mean, info.std)  # (rows, C, H, W) float32
    return (
        x.reshape(rows // batch, batch, *x.shape[1:]),
        labels.reshape(rows // batch, batch).astype(np.int64),
    )


def add_json_flags(parser, replay_help: str) -> None:
    """Adds ``--json PATH`` (write every raw figure there) and ``--from-json PATH``
    (measure nothing, report from an earlier ``--json`` file; ``replay_help`` says
    what the script does then) to a driver's argparse parser."""
    parser.add_argument("--json", default=None, help="write every raw figure here")
    parser.add_argument("--from-json", default=None, help=replay_help)


def dispatch(args, driver, **workers) -> None:
    """A script's ``main``: runs ``workers[args.worker]`` in a worker process (the
    hidden ``--worker KIND`` flag with which a driver launches its own jobs), else
    ``driver``; each is called with ``args``."""
    (workers[args.worker] if getattr(args, "worker", None) else driver)(args)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def mpi_worker(threads: int | None = None) -> tuple[Any, int | None]:
    """The start of an SPMD benchmark worker: installs hpcnet's abort hook (an
    exception on one rank aborts the job instead of leaving the others waiting) and
    takes hpcnet's library communicator; with ``threads``, also sets this rank's
    compute threads (:func:`hpcnet.kernels.set_threads`; 0: the node's cores shared
    among the ranks on it).

    Every rank of the job must call it, with the same ``threads``: setting threads
    counts the ranks on this node, a collective over the communicator.

    Returns:
        (comm, threads): the communicator, and the threads set (None if not asked).
    """
    from hpcnet.comm import install_abort_hook, library_comm, ranks_on_node
    from hpcnet.kernels import set_threads

    install_abort_hook()
    comm = library_comm()
    if threads is None:
        return comm, None
    return comm, set_threads(threads, ranks_on_node(comm))


@dataclass
class ModelWorker:
    """What :func:`model_worker` set up on this rank."""

    comm: Any  # hpcnet's library communicator (mpi4py Intracomm)
    rank: int
    world_size: int
    threads: int  # compute threads of this rank
    backend: Any  # hpcnet's ``cpu`` kernel backend
    xs: Any  # (n_batches, batch, C, H, W) float32
    ys: Any  # (n_batches, batch) int64
    model: Any  # the zoo model, parameters equal on every rank


def model_worker(
    model: str,
    data: str,
    rows: int,
    batch: int,
    threads: int,
    seed: int,
    same_dropout: bool,
) -> ModelWorker:
    """The start of a worker that trains or times a zoo model on real data, SPMD:
    :func:`mpi_worker` (abort hook, communicator, ``threads``), the ``cpu`` backend,
    the first ``rows`` training rows of ``data`` in batches of ``batch``
    (:func:`train_batches`), then ``model`` built for them, initialised from ``seed``
    on rank 0 and broadcast to every rank.

    Every rank of the job must call it with the same arguments (collective: the thread
    setting and the broadcast).

    Args:
        same_dropout: every rank draws the same dropout masks (the partitions of one
            replica) rather than its own (data-parallel replicas).
    """
    from hpcnet.comm import bcast_
    from hpcnet.kernels import get_backend
    from hpcnet.nn.zoo import build_model

    comm, threads = mpi_worker(threads)
    rank = comm.Get_rank()
    backend = get_backend("cpu")
    xs, ys = train_batches(data, rows, batch)
    net = build_model(model, xs.shape[2:], 10)
    if rank == 0:
        net.init(seed)
    bcast_(net.params, comm)
    net.seed_dropout(seed, 0 if same_dropout else rank)
    return ModelWorker(comm, rank, comm.Get_size(), threads, backend, xs, ys, net)


def raw_target_window(comm, nbytes: int):
    """The raw-RMA side of the parameter-server benchmarks: an ``MPI.Win.Allocate``
    window of ``nbytes`` zeroed bytes on rank 0 (none elsewhere) with hpcnet's window
    hints (``accumulate_ordering=none``, ``same_op``). Collective over ``comm``."""
    import numpy as np
    from mpi4py import MPI

    from hpcnet.ps import windows as W

    info = W.window_info()
    win = MPI.Win.Allocate(nbytes if comm.Get_rank() == 0 else 0, 4, info, comm)
    info.Free()
    if comm.Get_rank() == 0:
        np.frombuffer(win.tomemory(), np.uint8)[:] = 0
    comm.Barrier()
    return win


def idle_target(comm) -> None:
    """Rank 0's part while the origin works: an idle process polling a barrier and
    sleeping between polls (as hpcnet's shard does when idle); returns when every other
    rank has entered ``comm.Ibarrier()``."""
    from hpcnet.comm import Backoff

    req = comm.Ibarrier()
    backoff = Backoff(first=20e-6, cap=1e-3)
    while not req.Test():
        backoff.sleep()


def fit_alpha_beta(sizes, times) -> tuple[float, float]:
    """Least-squares fit of t = alpha + bytes / beta, weighted by 1 / t (relative error,
    so the small messages decide alpha and the large ones beta).

    Returns:
        (alpha seconds, beta bytes/second).
    """
    import numpy as np

    x, t = np.asarray(sizes, np.float64), np.asarray(times, np.float64)
    slope, alpha = np.polyfit(x, t, 1, w=1.0 / t)
    return float(alpha), float(1.0 / slope)
