"""Training throughput of hpcnet ``sync`` against PyTorch CPU, measured in one run.

Sides (each a fresh process group, launched with ``mpiexec``; batch 64 per process):

* ``hpcnet-2x1``: hpcnet synchronous SGD, 2 ranks x 1 thread (total batch 128 a step);
* ``hpcnet-1x2``: hpcnet, 1 rank x 2 threads;
* ``torch-1x2``: PyTorch, 1 process x 2 threads (``torch.set_num_threads(2)``);
* ``torch-ddp-2x1``: PyTorch DistributedDataParallel, gloo over loopback, 2 processes
  x 1 thread;
* ``hpcnet-1x2-passive`` (diagnostic, only with ``--sides``): ``hpcnet-1x2`` with
  ``OMP_WAIT_POLICY=passive`` in that one command.

One step is forward + backward + gradient averaging (2-process sides) + SGD step
(momentum 0.9, lr 0.01), as in :func:`hpcnet.algos.train`. Both frameworks
train the same zoo architecture (the torch model is translated from hpcnet's layer
list, initialised from hpcnet's flat parameters and checked against hpcnet's
reference backend: logits and gradients) on the same pre-sliced batches of the first
``--rows`` Fashion-MNIST training rows. Process ``r`` of ``p`` takes batch ``s * p + r``
at step ``s``, so every side sees the same data in the same order.

Warm-up steps (Numba compilation, first-touch allocation, oneDNN primitive caches)
are excluded. The sides run in the order A B A B within each repeat (hpcnet, torch,
hpcnet, torch) and the table reports the median over repeats: the second vCPU of
this project's machines does not always deliver (in one probe, 11 % of samples ran 2
threads no faster than 1).

Usage::

    python benchmarks/sync_vs_torch.py [--models 2conv,mlp] [--steps N] [--warmup W]
        [--repeats R] [--json OUT.json]

Needs PyTorch (not an hpcnet dependency): ``pip install torch==2.13.0``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import socket
import sys
import time
from pathlib import Path

from _common import (
    add_wait_idle,
    blas_info,
    clean_runs,
    dispatch,
    disturbance,
    emit,
    env_info,
    med,
    model_worker,
    mpiexec_path,
    run_for_result,
    run_meta,
    table_head,
    train_batches,
    versions,
)
from _torch_peer import peer, require_torch

PROG = "sync_vs_torch"

BATCH = 64  # samples per process per step
SEED = 0
LR = 0.01
MOMENTUM = 0.9
DEFAULT_STEPS = {"2conv": 30, "mlp": 200}  # timed steps per run
DEFAULT_WARMUP = {"2conv": 5, "mlp": 20}
# name -> (framework, processes, threads per process, extra environment). The default
# sides are the first four, in A B A B order; the last is a diagnostic, opt-in with
# --sides: libgomp's spin-waiting threads (Numba's "omp" layer) and OpenBLAS's own
# threads take turns on 2 cores, and a passive wait policy shows what that costs.
SIDES = {
    "hpcnet-2x1": ("hpcnet", 2, 1, {}),
    "torch-ddp-2x1": ("torch", 2, 1, {}),
    "hpcnet-1x2": ("hpcnet", 1, 2, {}),
    "torch-1x2": ("torch", 1, 2, {}),
    "hpcnet-1x2-passive": ("hpcnet", 1, 2, {"OMP_WAIT_POLICY": "passive"}),
}
DEFAULT_SIDES = ("hpcnet-2x1", "torch-ddp-2x1", "hpcnet-1x2", "torch-1x2")


# --------------------------------------------------------------------------- shared


def batch_index(step: int, rank: int, world_size: int, n_batches: int) -> int:
    """Which pre-sliced batch process ``rank`` of ``world_size`` trains on at ``step``."""
    return (step * world_size + rank) % n_batches


def timed_steps(step, warmup: int, steps: int, barrier) -> tuple[list, float]:
    """Runs ``step(s)`` for ``warmup`` untimed steps, calls ``barrier()`` (every process
    starts the timed steps together), then ``steps`` timed steps.

    Returns:
        (what each timed step returned, the timed steps' wall seconds on this process).
    """
    for s in range(warmup):
        step(s)
    barrier()
    phases = []
    t0 = time.perf_counter()
    for s in range(warmup, warmup + steps):
        phases.append(step(s))
    return phases, time.perf_counter() - t0


# --------------------------------------------------------------------------- workers


def worker_hpcnet(args: argparse.Namespace) -> None:
    """One hpcnet sync run; SPMD over COMM_WORLD (every rank runs it, same arguments)."""
    import numba
    from mpi4py import MPI

    from hpcnet.algos.sync import SyncSGD
    from hpcnet.optim.sgd import SGD

    # each replica its own dropout masks
    w = model_worker(args.model, args.data, args.rows, BATCH, args.threads, SEED, False)
    comm, rank, size = w.comm, w.rank, w.world_size
    xs, ys, model = w.xs, w.ys, w.model
    algo = SyncSGD(comm)
    opt = SGD(model.n_params, momentum=MOMENTUM)

    def step(s: int) -> tuple[float, float, float]:
        b = batch_index(s, rank, size, len(xs))
        t0 = time.perf_counter()
        model.loss_and_grad(xs[b], ys[b], w.backend)
        t1 = time.perf_counter()
        algo.after_backward(model.grads)  # one Allreduce of the flat gradient
        t2 = time.perf_counter()
        opt.step(model.params, model.grads, LR)
        algo.after_step(s, model.params)
        t3 = time.perf_counter()
        return t1 - t0, t2 - t1, t3 - t2

    phases, elapsed = timed_steps(step, args.warmup, args.steps, comm.Barrier)
    slowest = comm.allreduce(elapsed, op=MPI.MAX)
    if rank == 0:
        fb, ar, sgd = (list(p) for p in zip(*phases, strict=True))
        emit(
            {
                "framework": "hpcnet",
                "world_size": size,
                "threads": w.threads,
                "n_params": model.n_params,
                "elapsed_s": slowest,
                "samples_per_s": size * BATCH * args.steps / slowest,
                "step_s": [a + b + c for a, b, c in phases],
                "phases_s": {"fwd_bwd": fb, "allreduce": ar, "sgd": sgd},
                "numba_threading_layer": numba.threading_layer(),
                "blas": blas_info(),
                "env": env_info(),
            }
        )


def worker_torch(args: argparse.Namespace) -> None:
    """One torch run: single process, or DDP (gloo) when launched as 2 processes."""
    require_torch(PROG)
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    rank = int(os.environ.get("PMI_RANK", os.environ.get("RANK", "0")))
    size = int(os.environ.get("PMI_SIZE", os.environ.get("WORLD_SIZE", "1")))
    torch.set_num_threads(args.threads)
    torch.manual_seed(SEED + rank)  # dropout masks differ per replica, as in hpcnet
    xs, ys = train_batches(args.data, args.rows, BATCH)
    # Every rank checks (same data, same seed), so a mismatch stops them all alike.
    _, net, check = peer(args.model, xs.shape[2:], SEED, xs[0, :16], ys[0, :16])
    if size > 1:
        # MASTER_ADDR=127.0.0.1 and MASTER_PORT come from the driver: loopback only.
        # A short timeout: a rank that died must not leave the other waiting 30 minutes.
        dist.init_process_group(
            "gloo",
            init_method="env://",
            rank=rank,
            world_size=size,
            timeout=datetime.timedelta(seconds=120),
        )
        net = torch.nn.parallel.DistributedDataParallel(net)
    opt = torch.optim.SGD(net.parameters(), lr=LR, momentum=MOMENTUM)
    tx, ty = torch.from_numpy(xs), torch.from_numpy(ys)

    def step(s: int) -> tuple[float, float]:
        b = batch_index(s, rank, size, len(xs))
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(net(tx[b]), ty[b])
        loss.backward()  # DDP: gradient allreduce overlapped, finished on return
        t1 = time.perf_counter()
        opt.step()
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1

    barrier = dist.barrier if size > 1 else lambda: None
    phases, elapsed = timed_steps(step, args.warmup, args.steps, barrier)
    if size > 1:
        t = torch.tensor([elapsed], dtype=torch.float64)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        elapsed = float(t[0])
        dist.destroy_process_group()
    if rank == 0:
        fb, sgd = (list(p) for p in zip(*phases, strict=True))
        emit(
            {
                "framework": "torch",
                "world_size": size,
                "threads": torch.get_num_threads(),
                "n_params": sum(p.numel() for p in net.parameters()),
                "elapsed_s": elapsed,
                "samples_per_s": size * BATCH * args.steps / elapsed,
                "step_s": [a + b for a, b in phases],
                "phases_s": {"fwd_bwd_allreduce" if size > 1 else "fwd_bwd": fb, "sgd": sgd},
                "identity_check": check,
                "torch": torch.__version__,
                "mkl": torch.backends.mkl.is_available(),
                "mkldnn": torch.backends.mkldnn.is_available(),
                "blas": blas_info(),
                "env": env_info(),
            }
        )


# --------------------------------------------------------------------------- driver


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(side: str, model: str, steps: int, warmup: int, args, mpiexec: str) -> dict:
    """Launches one side as ``mpiexec -n P python THIS --worker ...``; returns its result."""
    framework, procs, threads, extra_env = SIDES[side]
    cmd = [
        mpiexec, "-n", str(procs), sys.executable, str(Path(__file__).resolve()),
        "--worker", framework, "--model", model, "--threads", str(threads),
        "--steps", str(steps), "--warmup", str(warmup),
        "--data", args.data, "--rows", str(args.rows),
    ]  # fmt: skip
    env = {**os.environ, **extra_env}
    if framework == "torch" and procs > 1:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()))
    result = run_for_result(
        cmd, f"{side} {model}", PROG, timeout=args.timeout, wait_idle=args.wait_idle, env=env
    )
    result.update(
        side=side, extra_env=extra_env, model=model, steps=steps, warmup=warmup, procs=procs
    )
    return result


def summarize(runs: list[dict], models: list[str], sides: list[str]) -> list[dict]:
    """One row per (model, side): the median over its undisturbed runs (all runs if none
    was undisturbed), the spread, median per-step phases and the ratios to torch."""
    rows = []
    for model in models:
        medians = {}
        for side in sides:
            every = [r for r in runs if r["model"] == model and r["side"] == side]
            if not every:
                continue
            used = clean_runs(every)
            sps = [r["samples_per_s"] for r in used]
            phases = {
                k: med(med(r["phases_s"][k]) for r in used) * 1e3 for k in used[0]["phases_s"]
            }
            medians[side] = med(sps)
            rows.append(
                {
                    "model": model,
                    "side": side,
                    "samples_per_s": medians[side],
                    "min": min(sps),
                    "max": max(sps),
                    "runs_used": len(used),
                    "runs": len(every),
                    "all_disturbed": not any(r["clean"] for r in every),
                    "median_step_phases_ms": phases,
                }
            )
        t1, ddp = medians.get("torch-1x2"), medians.get("torch-ddp-2x1")
        for row in rows:
            if row["model"] != model:
                continue
            row["vs_torch_1x2"] = row["samples_per_s"] / t1 if t1 else None
            row["vs_torch_ddp_2x1"] = (
                row["samples_per_s"] / ddp if ddp and row["side"] == "hpcnet-2x1" else None
            )
    return rows


def print_table(rows: list[dict]) -> None:
    head = (
        f"{'model':<6} {'side':<18} {'samples/s':>10} {'min-max':>15} {'runs':>5} "
        f"{'/torch-1x2':>10} {'/torch-ddp':>10}  median step phases (ms)"
    )
    table_head(head)
    for r in rows:
        ratio = f"{r['vs_torch_1x2']:.2f}" if r["vs_torch_1x2"] else "-"
        ddp = f"{r['vs_torch_ddp_2x1']:.2f}" if r["vs_torch_ddp_2x1"] else "-"
        spread = f"{r['min']:,.0f}-{r['max']:,.0f}"
        used = f"{r['runs_used']}/{r['runs']}" + ("!" if r["all_disturbed"] else "")
        phases = ", ".join(f"{k} {v:.1f}" for k, v in r["median_step_phases_ms"].items())
        print(
            f"{r['model']:<6} {r['side']:<18} {r['samples_per_s']:>10,.0f} {spread:>15} "
            f"{used:>5} {ratio:>10} {ddp:>10}  {phases}"
        )
    print(
        "runs: undisturbed runs in the median / all runs ('!': every run had other jobs "
        "on the machine, so all are used and the figure is low)"
    )


def driver(args: argparse.Namespace) -> None:
    require_torch(PROG)
    from hpcnet.data.registry import resolve_data

    models = [m for m in args.models.split(",") if m]
    sides = [s for s in args.sides.split(",") if s]
    from hpcnet.nn.zoo import MODELS

    unknown = [m for m in models if m not in MODELS]
    if unknown or not models:
        sys.exit(
            f"sync_vs_torch: --models {args.models!r}: unknown or empty; choose from "
            f"{', '.join(MODELS)}"
        )
    bad = [s for s in sides if s not in SIDES]
    if bad:
        sys.exit(f"sync_vs_torch: --sides {','.join(bad)}: unknown; choose from {', '.join(SIDES)}")
    if args.repeats < 1:
        sys.exit("sync_vs_torch: --repeats must be at least 1 (2 or more for a median)")
    if args.steps < 0 or (args.warmup is not None and args.warmup < 0) or args.rows < BATCH:
        sys.exit(
            f"sync_vs_torch: need --steps >= 1 (0: the per-model default), --warmup >= 0 "
            f"and --rows >= {BATCH}; got {args.steps}, {args.warmup}, {args.rows}"
        )
    # Convert Fashion-MNIST once, here, before any worker reads it.
    args.data = str(resolve_data(args.data))
    mpiexec = mpiexec_path(PROG)
    meta = {
        **run_meta(),
        "blas_driver": blas_info(),
        "versions": versions(),
        "config": {
            "models": models,
            "sides": sides,
            "batch_per_process": BATCH,
            "repeats": args.repeats,
            "rows": args.rows,
            "data": args.data,
            "lr": LR,
            "momentum": MOMENTUM,
        },
    }
    print(
        f"# {meta['date']}  {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), "
        f"OPENBLAS_CORETYPE={meta['env']['OPENBLAS_CORETYPE']} "
        f"OPENBLAS_L2_SIZE={meta['env']['OPENBLAS_L2_SIZE']}",
        flush=True,
    )
    runs = []
    for rep in range(args.repeats):
        for model in models:
            steps = args.steps or DEFAULT_STEPS.get(model, 30)
            warmup = args.warmup if args.warmup is not None else DEFAULT_WARMUP.get(model, 5)
            for side in sides:
                r = run_side(side, model, steps, warmup, args, mpiexec)
                r["repeat"] = rep
                runs.append(r)
                print(
                    f"  repeat {rep} {model:<6} {side:<18} {r['samples_per_s']:>9,.0f} "
                    f"samples/s  ({disturbance(r)})",
                    flush=True,
                )
    rows = summarize(runs, models, list(dict.fromkeys(sides)))
    hp = [r for r in runs if r["framework"] == "hpcnet"]
    # numpy's OpenBLAS does hpcnet's GEMMs (scipy may load a second copy, unused).
    blas = [d for d in hp[0]["blas"] if "numpy" in (d.get("filepath") or "")] if hp else []
    if blas:
        print(
            f"# hpcnet BLAS: {blas[0].get('internal_api')} {blas[0].get('version')} "
            f"kernel {blas[0].get('architecture')}"
        )
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({**meta, "summary": rows, "runs": runs}, indent=1))
        print(f"# raw timings written to {args.json}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="2conv,mlp", help="comma-separated zoo models")
    p.add_argument(
        "--sides",
        default=",".join(DEFAULT_SIDES),
        help=f"comma-separated, run in this order (A B A B); any of {', '.join(SIDES)}",
    )
    p.add_argument(
        "--steps",
        type=int,
        default=0,
        help="timed steps per run (default: 30 for 2conv, 200 for mlp)",
    )
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help="untimed steps first (default: 5 for 2conv, 20 for mlp)",
    )
    p.add_argument("--repeats", type=int, default=2, help="runs of every side (median)")
    p.add_argument("--rows", type=int, default=8192, help="Fashion-MNIST train rows used")
    p.add_argument("--data", default="fashion-mnist", help="data set name or .h5 path")
    p.add_argument("--timeout", type=int, default=300, help="seconds per side run")
    add_wait_idle(p)
    p.add_argument("--json", default=None, help="write every raw timing here")
    p.add_argument("--worker", choices=("hpcnet", "torch"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    dispatch(parse_args(argv), driver, hpcnet=worker_hpcnet, torch=worker_torch)


if __name__ == "__main__":
    main()
