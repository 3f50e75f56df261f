"""Scaling past one machine: fit a cost model here, check it here, predict elsewhere.

Three parts, each measurement a fresh ``mpiexec -n P`` job on a machine the driver waits
to be idle (other jobs' CPU measured from /proc/stat, as in the other benchmarks):

1. **fit** on this machine: a zoo model's compute time per sample (forward + backward,
   SGD with momentum; 1 rank x 1 thread, ``cpu`` backend, ``--data`` rows); blocking
   ``MPI.Allreduce`` of float32 on COMM_WORLD against bytes and world size, fitted to
   the ring formula ``2 (P-1) alpha + 2 (P-1)/P n/beta`` by weighted least squares
   (also per P as ``alpha + n/beta``), and hpcnet's own allreduce (``Iallreduce``
   completed by spinning on ``Test``, then sleeping: what ``--algo sync`` waits for)
   per P as ``alpha + n/beta``, which the validation uses at the P it measured; RMA
   ``Get`` + ``Flush`` (fetch) and ``Put`` + ``Flush`` (push) between 1 shard rank
   and 1 client, and the shard's Adagrad apply per float, each fitted as
   ``alpha + n/beta``; how much k ranks computing at once slow each other (k copies of
   the validation model, no communication, wall time per step over one alone: the
   node's measured slowdown, used in place of ranks / cores); for model parallelism,
   the validation model split over M ranks (``modelpar_bench.py``'s step worker: the
   slowest partition's CPU time outside the exchanges, and its exchanges and bytes
   per step) and hpcnet's activation allgather (``Exchange.allgather``) fitted as
   ``alpha + n/beta`` (``modelpar_bench.py --worker alphabeta``);
2. **validate**: real ``python -m hpcnet train`` runs on ``--val-data`` (the shipped
   digits) with ``--val-model``: sync with R = 1, 2, 4 ranks, Downpour with 1
   shard + R = 1, 2, 3 replicas and one replica split over M = 2 partitions,
   measured samples/s (summary.json) against
   :mod:`hpcnet.perfmodel`'s prediction for this machine (cores = ``os.cpu_count()``:
   ranks beyond the cores share them);
3. **predict**: the same model for a cluster given by flags (``--latency``,
   ``--bandwidth``, ``--nic-bandwidth``, ``--cores-per-node``, ``--ranks-per-node``)
   and beside published figures (DistBelief, Dean et al. 2012, Fig. 3; Goyal et al.
   2017), with the assumptions printed.

Usage::

    python -m hpcnet bench scale [--models mlp,2conv] [--ranks 2,4] [--json OUT.json]
    python -m hpcnet bench scale --from-json OUT.json [--latency ... cluster flags]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import _driver
import _scale_tables as tables
import numpy as np
from _common import (
    add_json_flags,
    dispatch,
    disturbance,
    emit,
    idle_target,
    model_worker,
    mpi_worker,
    raw_target_window,
    run_for_result,
)

PROG = "scale_model"
PART = "scale"  # its key in the --json file
SEED = 0
N_BATCHES = 8  # distinct batches the compute worker cycles through
SIZES = [4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20, 16 << 20]  # bytes


# --------------------------------------------------------------------------- workers


def worker_compute(args: argparse.Namespace) -> None:
    """Every rank, 1 thread each, no communication: times forward + backward and the
    momentum SGD step of ``args.model`` (medians per step), and the wall time of all
    timed steps together, the ranks starting at once (a barrier): with k ranks on the
    node, its slowest rank's wall time per step over one rank's alone is how much
    sharing the node slows compute (``Cluster.slowdown``). Rank 0 prints."""
    from hpcnet.optim.sgd import SGD

    w = model_worker(args.model, args.data, N_BATCHES * args.batch, args.batch, 1, SEED, False)
    opt = SGD(w.model.n_params, momentum=0.9)
    fb, sgd = [], []
    for s in range(args.warmup + args.steps):
        if s == args.warmup:
            w.comm.Barrier()
            start = time.perf_counter()
        t0 = time.perf_counter()
        w.model.loss_and_grad(w.xs[s % len(w.xs)], w.ys[s % len(w.ys)], w.backend)
        t1 = time.perf_counter()
        opt.step(w.model.params, w.model.grads, 0.01)
        t2 = time.perf_counter()
        if s >= args.warmup:
            fb.append(t1 - t0)
            sgd.append(t2 - t1)
    walls = w.comm.gather((time.perf_counter() - start) / args.steps, root=0)
    if w.rank == 0:
        emit(
            {
                "model": args.model,
                "n_params": w.model.n_params,
                "batch": args.batch,
                "ranks": w.world_size,
                "fwd_bwd_s": float(np.median(fb)),
                "sgd_s": float(np.median(sgd)),
                "step_wall_s": max(walls),  # the slowest rank's, per step
            }
        )


def _reps(nbytes: int) -> int:
    return 100 if nbytes <= 1 << 16 else 30 if nbytes <= 1 << 20 else 10


def worker_allreduce(args: argparse.Namespace) -> None:
    """Every rank of COMM_WORLD, float32 per size: raw blocking ``Allreduce(SUM)``
    (``times_s``) and hpcnet's :func:`~hpcnet.comm.allreduce_mean_` (``hpcnet_s``: the
    ``Iallreduce`` that ``--algo sync`` completes by spinning on ``Test``, then
    sleeping; what a training step waits for); the median over repetitions of the
    slowest rank's time (a barrier before each)."""
    from mpi4py import MPI

    from hpcnet.comm import allreduce_mean_

    comm, _ = mpi_worker(threads=1)
    out: dict[str, list[float]] = {"raw": [], "hpcnet": []}
    for nbytes in SIZES:
        buf = np.ones(nbytes // 4, np.float32)  # the mean of ones stays ones
        res = np.empty_like(buf)
        for kind, times in (("raw", []), ("hpcnet", [])):
            for i in range(_reps(nbytes) + 3):
                comm.Barrier()
                t0 = time.perf_counter()
                if kind == "raw":
                    comm.Allreduce(buf, res, op=MPI.SUM)
                else:
                    allreduce_mean_(buf, comm)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            slowest = np.max(comm.gather(times, root=0) or [times], axis=0)
            out[kind].append(float(np.median(slowest)))
    if comm.Get_rank() == 0:
        emit(
            {"world_size": comm.Get_size(), "sizes": SIZES, "times_s": out["raw"],
             "hpcnet_s": out["hpcnet"]}
        )  # fmt: skip


def worker_rma(args: argparse.Namespace) -> None:
    """2 ranks: rank 0 (the shard) first times Adagrad's apply per size, then idles in
    a sleeping ``Ibarrier`` poll (as an idle hpcnet shard); rank 1 (the replica) holds
    ``Lock_all`` and times ``Get`` + ``Flush`` and ``Put`` + ``Flush`` (hpcnet's push)
    back to back (no compute gap: the latency of a cold first call after compute, ~0.06 ms,
    is not in alpha; see ps_vs_rma.py)."""
    from mpi4py import MPI

    from hpcnet.optim.rules import make_rule

    comm, _ = mpi_worker(threads=1)
    if comm.Get_size() != 2:
        raise SystemExit(f"{PROG}: the rma worker needs exactly 2 ranks")
    rank, big = comm.Get_rank(), max(SIZES)
    win = raw_target_window(comm, big)
    apply = []
    if rank == 0:
        for nbytes in SIZES:
            n = nbytes // 4
            rule, p = make_rule("adagrad", n), np.zeros(n, np.float32)
            g = np.full(n, 1e-3, np.float32)
            times = []
            for i in range(_reps(nbytes) + 3):
                t0 = time.perf_counter()
                rule.step_and_zero(p, g, 1e-4)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            apply.append(float(np.median(times)))
    comm.Barrier()
    if rank == 0:
        idle_target(comm)
        got = comm.recv(source=1)
        emit({"sizes": SIZES, "apply_s": apply, **got})
    else:
        fetch, push = [], []
        data = np.full(big // 4, 1e-3, np.float32)
        win.Lock_all(MPI.MODE_NOCHECK)
        for nbytes in SIZES:
            n, f, p = nbytes // 4, [], []
            for i in range(_reps(nbytes) + 3):
                t0 = time.perf_counter()
                win.Get(data[:n], 0, (0, n, MPI.FLOAT))
                win.Flush(0)
                t1 = time.perf_counter()
                win.Put(data[:n], 0, (0, n, MPI.FLOAT))  # a push is a Put (ps/client.py)
                win.Flush(0)
                t2 = time.perf_counter()
                if i >= 3:
                    f.append(t1 - t0)
                    p.append(t2 - t1)
            fetch.append(float(np.median(f)))
            push.append(float(np.median(p)))
        win.Unlock_all()
        comm.Ibarrier().Wait()
        comm.send({"fetch_s": fetch, "push_s": push}, dest=0)
    win.Free()


# --------------------------------------------------------------------------- driver


def worker_cmd(mpiexec: str, procs: int, kind: str, extra: list[str]) -> list[str]:
    return [mpiexec, "-n", str(procs), sys.executable, str(Path(__file__).resolve()),
            "--worker", kind, *extra]  # fmt: skip


def val_configs(args) -> list[tuple[str, int, int, list[str]]]:
    """(algo, replicas R, ranks, train flags) of the validation runs."""
    base = ["--data", args.val_data, "--model", args.val_model, "--batch-size", str(args.batch),
            "--threads", "1", "--max-steps", str(args.val_steps), "--backend", "cpu",
            "--epochs", "100000"]  # fmt: skip
    out = [("sync", r, r, [*base, "--algo", "sync"]) for r in args.val_sync]
    out += [
        ("downpour", r, r + 1, [*base, "--algo", "downpour", "--shards", "1"])
        for r in args.val_downpour
    ]
    out += [
        ("modelpar", m, m, [*base, "--algo", "sync", "--partitions", str(m),
                            "--partition-scheme", "neurons"])
        for m in args.val_modelpar
    ]  # fmt: skip
    return out


def measure(args) -> dict:
    meta, mpiexec = _driver.start(PROG, PART, args)
    kw = {"timeout": args.timeout, "wait_idle": args.wait_idle}
    models = list(dict.fromkeys([*args.models, args.val_model]))
    raw: dict = {"meta": meta, "compute": [], "allreduce": [], "rma": [], "validate": []}
    for model in [m for _ in range(args.compute_repeats) for m in models]:
        data = args.val_data if model == args.val_model else args.data
        extra = ["--model", model, "--data", data, "--batch", str(args.batch),
                 "--steps", str(args.steps), "--warmup", str(args.warmup)]  # fmt: skip
        r = run_for_result(worker_cmd(mpiexec, 1, "compute", extra), f"compute {model}", PROG,
                           **kw)  # fmt: skip
        r["data"] = data
        raw["compute"].append(r)
        print(f"  compute {model} ({Path(data).stem}): fwd+bwd {r['fwd_bwd_s'] * 1e3:.2f} ms, "
              f"sgd {r['sgd_s'] * 1e3:.2f} ms / {r['batch']} samples ({disturbance(r)})",
              flush=True)  # fmt: skip
    for k in [k for _ in range(args.compute_repeats) for k in args.shared_ranks]:
        # k copies of the validation model computing at once, no communication
        extra = ["--model", args.val_model, "--data", args.val_data, "--batch", str(args.batch),
                 "--steps", str(args.shared_steps), "--warmup", str(args.warmup)]  # fmt: skip
        r = run_for_result(worker_cmd(mpiexec, k, "compute", extra), f"shared k={k}", PROG, **kw)
        raw.setdefault("shared", []).append(r)
        print(f"  {k} ranks computing at once: {r['step_wall_s'] * 1e3:.3f} ms a step "
              f"(slowest) ({disturbance(r)})", flush=True)  # fmt: skip
    for p in args.ranks:
        r = run_for_result(worker_cmd(mpiexec, p, "allreduce", []), f"allreduce P={p}", PROG,
                           **kw)  # fmt: skip
        raw["allreduce"].append(r)
        print(f"  allreduce P={p}: {r['times_s'][0] * 1e6:.0f} us .. "
              f"{r['times_s'][-1] * 1e3:.2f} ms ({disturbance(r)})", flush=True)  # fmt: skip
    import modelpar_bench

    mp = str(Path(__file__).with_name("modelpar_bench.py"))
    part = argparse.Namespace(batch=args.batch, steps=args.partition_steps, warmup=args.warmup,
                              micro_batches=0, data=args.val_data)  # fmt: skip
    for m in [m for _ in range(args.compute_repeats) for m in args.val_modelpar if m > 1]:
        # the slowest partition's compute, alone on its core (modelpar_bench's step
        # worker, 1 thread a rank: process CPU time outside the exchanges), and its
        # exchanges per step
        cmd = modelpar_bench.step_cmd(mpiexec, (args.val_model, "neurons", m, "polling"), part)
        r = run_for_result(cmd, f"partition M={m}", PROG, **kw)
        r.pop("step_s", None)
        raw.setdefault("partition", []).append(r)
        print(f"  partition M={m}: compute {max(r['compute_cpu_ms']):.3f} ms a step (slowest), "
              f"{max(r['n_coll'])} exchanges, {max(r['sent']):,} bytes sent "
              f"({disturbance(r)})", flush=True)  # fmt: skip
    if any(m > 1 for m in args.val_modelpar):
        # hpcnet's activation allgather (Exchange, polling wait) against bytes, 2 ranks
        r = run_for_result([mpiexec, "-n", "2", sys.executable, mp, "--worker", "alphabeta"],
                           "exchange allgather", PROG, **kw)  # fmt: skip
        raw["exchange"] = [r]
        print(f"  exchange allgather: {r['times_s']['exchange'][0] * 1e6:.0f} us .. "
              f"{r['times_s']['exchange'][-1] * 1e3:.2f} ms ({disturbance(r)})",
              flush=True)  # fmt: skip
    r = run_for_result(worker_cmd(mpiexec, 2, "rma", []), "rma", PROG, **kw)
    raw["rma"].append(r)
    print(f"  rma: fetch {r['fetch_s'][-1] * 1e3:.2f} ms, push {r['push_s'][-1] * 1e3:.2f} ms "
          f"at 16 MiB ({disturbance(r)})", flush=True)  # fmt: skip
    # every configuration once, then again (A B C A B C): a slow minute on a shared
    # machine then costs each configuration one run, not one configuration all of its
    configs = val_configs(args)
    for repeat, (algo, rep, procs, flags) in [
        (k, c) for k in range(args.val_repeats) for c in configs
    ]:
        what = f"{algo} R={rep}" + (f" (repeat {repeat})" if args.val_repeats > 1 else "")
        r = _driver.run_train(PROG, f"scale-{algo}", procs, flags, what, mpiexec,
                              runs_dir=None, **kw)  # fmt: skip
        r.pop("records", None)
        r.update(algo=algo, replicas=rep)
        raw["validate"].append(r)
        print(f"  {what}: {r['summary']['samples_per_s']:,.0f} samples/s ({disturbance(r)})",
              flush=True)  # fmt: skip
        import shutil

        shutil.rmtree(r["out"], ignore_errors=True)
    return raw


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        whole, raw = _driver.load(args.from_json, PART, PROG)
    else:
        args.data = _resolve(args.data)
        args.val_data = _resolve(args.val_data)
        raw = measure(args)
        whole = raw.pop("meta")
        _driver.save(args.json, whole, PART, raw)
    tables.report(raw, args, whole["machine"]["cpu"])


def _resolve(name: str) -> str:
    from hpcnet.data.registry import resolve_data

    return str(resolve_data(name))


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v.strip()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,2conv", type=lambda s: s.split(","),
                   help="zoo models whose compute per sample is measured")  # fmt: skip
    p.add_argument("--data", default="digits", help="data set of the compute measurement")
    p.add_argument("--ranks", default="2,4", type=_ints, help="allreduce world sizes")
    p.add_argument("--batch", type=int, default=32, help="samples per replica per step")
    p.add_argument("--steps", type=int, default=40, help="timed compute steps")
    p.add_argument("--warmup", type=int, default=5, help="untimed compute steps")
    p.add_argument("--compute-repeats", type=int, default=3,
                   help="runs of each compute, shared-node and partition measurement "
                        "(median of the undisturbed ones)")  # fmt: skip
    p.add_argument("--val-model", default="mlp", help="model of the validation runs")
    p.add_argument("--val-data", default="digits", help="data of the validation runs")
    p.add_argument("--val-steps", type=int, default=1500, help="--max-steps of each run")
    p.add_argument("--val-sync", default="1,2,4", type=_ints, help="sync replicas R")
    p.add_argument("--val-downpour", default="1,2,3", type=_ints,
                   help="Downpour replicas R (+1 shard rank)")  # fmt: skip
    p.add_argument("--val-modelpar", default="2", type=_ints,
                   help="model partitions M of one sync replica (neurons scheme)")  # fmt: skip
    p.add_argument("--shared-ranks", default="1,2,3,4", type=_ints,
                   help="k ranks computing at once, for the measured slowdown")  # fmt: skip
    p.add_argument("--shared-steps", type=int, default=400,
                   help="timed steps of each of those runs")  # fmt: skip
    p.add_argument("--partition-steps", type=int, default=200,
                   help="timed steps of the partitioned model (its compute fit)")  # fmt: skip
    p.add_argument("--val-repeats", type=int, default=3,
                   help="runs of each validation configuration (median of the undisturbed "
                        "ones)")  # fmt: skip
    g = p.add_argument_group("cluster to predict for (the 'cluster' table)")
    g.add_argument("--latency", type=float, default=20e-6, help="alpha, seconds per message")
    g.add_argument("--bandwidth", type=float, default=10e9,
                   help="beta of a link inside a node, bytes/s")  # fmt: skip
    g.add_argument("--nic-bandwidth", type=float, default=1.25e9,
                   help="a node's NIC, bytes/s one way (default 10 Gbit/s)")  # fmt: skip
    g.add_argument("--cores-per-node", type=int, default=16)
    g.add_argument("--ranks-per-node", type=int, default=1)
    g.add_argument("--replicas", default="1,2,4,8,16,32,64", type=_ints)
    g.add_argument("--shards", default="1,4", type=_ints, help="Downpour shards S")
    g.add_argument("--n-fetch", type=int, default=1)
    g.add_argument("--n-push", type=int, default=1)
    add_json_flags(p, "measure nothing: report from an earlier --json file")
    p.add_argument("--timeout", type=float, default=120, help="seconds per run")
    p.add_argument("--wait-idle", type=float, default=60, help="seconds to wait for 80%% idle")
    p.add_argument("--repeats", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--worker", choices=("compute", "allreduce", "rma"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    dispatch(
        parse_args(argv), driver, compute=worker_compute, allreduce=worker_allreduce,
        rma=worker_rma,
    )  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
