"""Model parallelism: step time and bytes exchanged against the number of partitions M.

For each zoo model, partitioning scheme (``neurons``, ``pipeline``) and M, the driver
launches a fresh ``mpiexec -n M python THIS --worker step ...`` and times one training
step of ONE replica split over the M ranks (``PartitionedModel.loss_and_grad``:
forward + backward, no optimizer, no data parallelism). M = 1 is the unpartitioned
``Model.loss_and_grad`` on one rank, the baseline. Ranks x threads = 2 (this machine's
cores): M = 1 runs 2 threads, M >= 2 one thread per rank, so M = 3 and 4 oversubscribe
the 2 cores (1.5x, 2x). A second M = 1 run with 1 thread (``whole-1t``) is the
reference for the per-rank work below.

Inputs are real Fashion-MNIST rows (the first ``8 x batch`` training images, normalised
with the file's mean/std, cycled), the same on every rank and every run.

Per run, from every rank and every timed step (after warm-up, an untimed barrier before
each step so that all partitions start it together):

* step time: the slowest partition's wall time of the step, median over steps;
* exchange time: wall time inside the ``Exchange`` operations (a subclass here times
  ``allgather``, ``reduce_scatter``, ``send``, ``recv``, ``complete``, ``bcast``), which
  includes waiting for a partner still computing (load imbalance, the pipeline bubble);
  compute = the slowest partition's (step - exchange), exchange = step - compute;
* per-partition compute CPU time (``time.process_time``, one thread per rank for M >= 2,
  so it is the time the partition's work takes on a core of its own, whatever the
  oversubscription);
* payload bytes sent/received per step by each partition (``Exchange.stats``), checked
  against the scheme's formula ``expected_bytes(batch)``; operations per step.

A separate worker (``--worker alphabeta``, 2 ranks x 1 thread) times an allgather across
message sizes (raw blocking ``MPI.Allgather`` and hpcnet's polling ``Exchange.allgather``)
and fits t = alpha + bytes / beta (bytes received per rank). The driver then predicts
each configuration's step time on three networks, assuming every partition has a machine
of its own as fast as this machine's 2 cores (see ``predict``).

Fairness: fresh processes per run, the same data and initial parameters, warm-up steps
(Numba compilation, first-touch allocation) not timed, configurations run in order and
then in reverse order on the next repeat (A B C ... C B A), the machine waited on until
80 % idle before each run and runs during which other jobs took > 10 % of the CPU left
out of the medians (``_common.Disturbance``).

Usage::

    python benchmarks/modelpar_bench.py [--models towers,wide_mlp] [--partitions 1,2,3,4]
        [--schemes neurons,pipeline] [--batch 64] [--steps N] [--warmup W]
        [--micro-batches m] [--repeats R] [--json OUT.json]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    add_json_flags,
    add_wait_idle,
    blas_info,
    clean_runs,
    dispatch,
    disturbance,
    emit,
    env_info,
    fit_alpha_beta,
    med,
    model_worker,
    mpi_worker,
    mpiexec_path,
    run_for_result,
    run_meta,
    versions,
)

PROG = "modelpar_bench"
SEED = 0
CORES = 2  # ranks x threads of every run (this project's machines have 2 vCPUs)
N_BATCHES = 8  # distinct input batches, cycled
WHOLE, WHOLE_1T = "whole", "whole-1t"  # the M = 1 baselines: 2 threads, 1 thread
# Networks for the prediction: name -> (alpha s, beta bytes/s); "this machine" is fitted.
NETWORKS = {"10GbE": (25e-6, 1.2e9), "IB-HDR": (1.5e-6, 23e9)}
SIZES = [1 << k for k in range(10, 25, 2)]  # alpha-beta: bytes received per rank, 1 KB-16 MB


# --------------------------------------------------------------------------- workers


def timed_exchange_class():
    """``Exchange`` with its step operations timed (wall and process CPU seconds) and
    counted by kind; built lazily so that the driver does not import mpi4py."""
    from hpcnet.comm.exchange import Exchange

    class TimedExchange(Exchange):
        """An :class:`hpcnet.comm.exchange.Exchange` that adds up, in ``wall`` and
        ``cpu`` (seconds), the time spent inside its operations, and counts collectives
        (``n_coll``) and receives (``n_recv``)."""

        def __init__(self, comm, timeout: float = 300.0, blocking: bool = False):
            super().__init__(comm, timeout)
            self.blocking = blocking
            self.wall = self.cpu = 0.0
            self.n_coll = self.n_recv = 0

        def wait(self, req, what):
            # blocking: MPI_Wait (MPICH spins inside it, driving the transfer);
            # otherwise hpcnet's wait_polling (Test, then sleep 20 us doubling to 10 ms)
            if self.blocking:
                req.Wait()
            else:
                super().wait(req, what)

        def _timed(self, fn, *args, **kwargs):
            w, c = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                self.wall += time.perf_counter() - w
                self.cpu += time.process_time() - c

        def allgather(self, *args, **kwargs):
            self.n_coll += 1
            return self._timed(super().allgather, *args, **kwargs)

        def reduce_scatter(self, *args, **kwargs):
            self.n_coll += 1
            return self._timed(super().reduce_scatter, *args, **kwargs)

        def bcast(self, *args, **kwargs):
            self.n_coll += 1
            return self._timed(super().bcast, *args, **kwargs)

        def send(self, *args, **kwargs):
            return self._timed(super().send, *args, **kwargs)

        def recv(self, *args, **kwargs):
            self.n_recv += 1
            return self._timed(super().recv, *args, **kwargs)

        def complete(self, *args, **kwargs):
            return self._timed(super().complete, *args, **kwargs)

        def snapshot(self) -> tuple:
            s = self.stats
            return (self.wall, self.cpu, s.bytes_sent, s.bytes_recv, self.n_coll, self.n_recv)

    return TimedExchange


def worker_step(args: argparse.Namespace) -> None:
    """Times ``loss_and_grad`` of one replica split over COMM_WORLD (every rank runs it
    with the same arguments; rank 0 prints the result)."""
    import numba

    from hpcnet.modelpar import partition_model

    # one replica: every partition draws the same dropout masks
    w = model_worker(
        args.model, args.data, N_BATCHES * args.batch, args.batch, args.threads, SEED, True
    )
    comm, rank, size = w.comm, w.rank, w.world_size
    backend, xs, ys, model = w.backend, w.xs, w.ys, w.model
    ex, net = None, model
    if size > 1:
        ex = timed_exchange_class()(comm, blocking=args.wait == "blocking")
        net = partition_model(model, args.scheme, ex, args.micro_batches)
    zero = (0.0, 0.0, 0, 0, 0, 0)

    def step(s: int) -> list[float]:
        comm.Barrier()  # untimed: every partition starts the step together
        e0 = ex.snapshot() if ex else zero
        w0, c0 = time.perf_counter(), time.process_time()
        net.loss_and_grad(xs[s % N_BATCHES], ys[s % N_BATCHES], backend)
        w1, c1 = time.perf_counter(), time.process_time()
        e1 = ex.snapshot() if ex else zero
        return [w1 - w0, c1 - c0, *(b - a for a, b in zip(e0, e1, strict=True))]

    for s in range(args.warmup):
        step(s)
    recs = [step(s) for s in range(args.warmup, args.warmup + args.steps)]
    # (steps, 8): wall, cpu, exchange wall, exchange cpu, sent, recv, collectives, recvs
    expected = net.expected_bytes(args.batch) if ex else (0, 0)
    plan = net.plan_text() if ex else []
    micro = getattr(net, "micro_batches", None)
    everyone = comm.gather((recs, expected), root=0)
    if rank != 0:
        return
    per = np.array([r for r, _ in everyone], np.float64)  # (M, steps, 8)
    wall, cpu, ex_wall, ex_cpu = per[..., 0], per[..., 1], per[..., 2], per[..., 3]
    compute = wall - ex_wall  # (M, steps)
    step_s = wall.max(axis=0)
    compute_s = compute.max(axis=0)
    last = per[:, -1, :]  # bytes and counts are the same every step
    emit(
        {
            "world_size": size,
            "threads": w.threads,
            "n_params": model.n_params,
            "micro_batches": micro,
            "step_ms": float(np.median(step_s) * 1e3),
            "compute_ms": float(np.median(compute_s) * 1e3),
            "exchange_ms": float(np.median(step_s - compute_s) * 1e3),
            "compute_cpu_ms": (np.median(cpu - ex_cpu, axis=1) * 1e3).tolist(),  # per rank
            "cpu_per_wall": float(np.median(cpu.sum(axis=0) / step_s)),
            "sent": last[:, 4].astype(int).tolist(),  # bytes per step, per partition
            "recv": last[:, 5].astype(int).tolist(),
            "expected": [list(map(int, e)) for _, e in everyone],
            "n_coll": last[:, 6].astype(int).tolist(),
            "n_recv": last[:, 7].astype(int).tolist(),
            "plan": plan,
            "step_s": step_s.tolist(),
            "numba_threading_layer": numba.threading_layer(),
            "blas": blas_info(),
            "env": env_info(),
        }
    )


def worker_alphabeta(args: argparse.Namespace) -> None:
    """Times a 2-rank allgather for each size in ``SIZES`` (bytes received per rank):
    raw blocking ``MPI.Allgather``, hpcnet's ``Exchange.allgather`` (polling wait) and
    the same with a blocking ``MPI_Wait``. Every rank runs it; rank 0 prints the medians
    (of the slowest rank of each repetition), in seconds."""
    from hpcnet.comm.exchange import Exchange

    comm, _ = mpi_worker(threads=1)
    rank, size = comm.Get_rank(), comm.Get_size()
    exs = {"exchange": Exchange(comm), "exchange-blocking": timed_exchange_class()(comm, 300, True)}
    out: dict[str, list[float]] = {"raw": [], "exchange": [], "exchange-blocking": []}
    for nbytes in SIZES:
        n = nbytes // 4  # float32 per rank
        local = np.full((1, n), rank, np.float32)
        bounds = [p * n for p in range(size + 1)]
        whole = np.empty(size * n, np.float32)
        reps = 60 if nbytes <= 1 << 16 else 20 if nbytes <= 1 << 20 else 8
        for kind in out:
            times = []
            for i in range(reps + 3):
                comm.Barrier()
                t0 = time.perf_counter()
                if kind == "raw":
                    comm.Allgather(local, whole)
                else:
                    exs[kind].allgather(local, bounds)
                if i >= 3:
                    times.append(time.perf_counter() - t0)
            slowest = np.max(comm.gather(times, root=0) or [times], axis=0)
            out[kind].append(float(np.median(slowest)))
    if rank == 0:
        emit({"sizes": SIZES, "world_size": size, "times_s": out})


# --------------------------------------------------------------------------- driver


def run_job(cmd: list[str], what: str, args: argparse.Namespace) -> dict:
    """Runs one worker job on a quiet machine; returns its result plus the
    disturbance figures; exits with the job's output if it fails."""
    return run_for_result(cmd, what, PROG, timeout=args.timeout, wait_idle=args.wait_idle)


def configs(args: argparse.Namespace) -> tuple[list[tuple[str, str, int, str]], list[str]]:
    """The (model, scheme, M, wait) runs, baselines first (wait "-"), and notes on the
    ones that cannot be cut (checked here, without MPI)."""
    from hpcnet.errors import ConfigError
    from hpcnet.modelpar import check_partitions
    from hpcnet.nn.zoo import build_model

    out, notes = [], []
    for name in args.models:
        model = build_model(name, (1, 28, 28), 10)
        out += [(name, WHOLE, 1, "-"), (name, WHOLE_1T, 1, "-")]
        for scheme in args.schemes:
            for m in (m for m in args.partitions if m > 1):
                try:
                    check_partitions(model, scheme, m)
                except ConfigError as e:
                    notes.append(f"{name} {scheme} M={m}: skipped ({e})")
                    continue
                out += [(name, scheme, m, wait) for wait in args.waits]
    return out, notes


def step_cmd(mpiexec: str, cfg: tuple[str, str, int, str], args: argparse.Namespace) -> list[str]:
    model, scheme, m, wait = cfg
    threads = 1 if scheme == WHOLE_1T else max(1, CORES // m)
    return [
        mpiexec, "-n", str(m), sys.executable, str(Path(__file__).resolve()),
        "--worker", "step", "--model", model, "--scheme", scheme, "--threads", str(threads),
        "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--micro-batches", str(args.micro_batches), "--data", args.data, "--wait", wait,
    ]  # fmt: skip


def summarize(runs: list[dict]) -> dict[tuple[str, str, int], dict]:
    """Per (model, scheme, M): medians over the undisturbed runs (all if none was)."""
    rows: dict[tuple[str, str, int], dict] = {}
    for key in dict.fromkeys((r["model"], r["scheme"], r["M"], r["wait"]) for r in runs):
        every = [r for r in runs if (r["model"], r["scheme"], r["M"], r["wait"]) == key]
        used = clean_runs(every)
        first = used[0]
        cpu = [med([r["compute_cpu_ms"][p] for r in used]) for p in range(key[2])]
        coll, nrecv = first["n_coll"], first["n_recv"]
        rows[key] = {
            "model": key[0],
            "scheme": key[1],
            "M": key[2],
            "wait": key[3],
            "threads": first["threads"],
            "micro_batches": first["micro_batches"],
            "step_ms": med([r["step_ms"] for r in used]),
            "step_min_ms": min(r["step_ms"] for r in used),
            "step_max_ms": max(r["step_ms"] for r in used),
            "compute_ms": med([r["compute_ms"] for r in used]),
            "exchange_ms": med([r["exchange_ms"] for r in used]),
            "compute_cpu_ms": cpu,
            "cpu_per_wall": med([r["cpu_per_wall"] for r in used]),
            "load_balance": max(cpu) / (sum(cpu) / len(cpu)),
            "max_sent": max(first["sent"]),
            "max_recv": max(first["recv"]),
            "total_sent": sum(first["sent"]),
            "formula_ok": all(
                [s, r] == e
                for s, r, e in zip(first["sent"], first["recv"], first["expected"], strict=True)
            )
            if key[2] > 1
            else None,
            # latency terms on the busiest partition: a collective as M - 1 ring rounds
            "n_alpha": max(c * (key[2] - 1) + n for c, n in zip(coll, nrecv, strict=True)),
            "ops": max(c + n for c, n in zip(coll, nrecv, strict=True)),
            "plan": first["plan"],
            "runs_used": len(used),
            "runs": len(every),
            "all_disturbed": not any(r["clean"] for r in every),
        }
    return rows


def predict(row: dict, base: dict, base_1t: dict, alpha: float, beta: float) -> float:
    """Predicted step time (seconds) of ``row``'s configuration when every partition has
    a machine of its own, as fast as this machine's 2 cores, joined by a network of
    latency ``alpha`` (s) and bandwidth ``beta`` (bytes/s):

        compute + n_alpha * alpha + max(sent, received on one partition) / beta.

    compute scales each partition's measured 1-thread CPU time w_p by this machine's
    2-thread speed-up of the whole model (base step / base_1t CPU time): for ``neurons``
    the slowest partition, max_p w_p (= compute(1) / M x load balance x splitting
    overhead); for ``pipeline`` GPipe's fill/drain with m micro-batches,
    (sum_p w_p + (m - 1) max_p w_p) / m (equal stages: the bubble factor (m + M - 1) / m).
    No overlap of communication with computation is assumed (an upper bound); every
    collective pays M - 1 latencies (a ring), every receive one.
    """
    if row["M"] == 1:
        return base["step_ms"] / 1e3
    scale = base["step_ms"] / base_1t["compute_cpu_ms"][0]
    w = row["compute_cpu_ms"]
    if row["scheme"] == "pipeline":
        m = row["micro_batches"]
        work = (sum(w) + (m - 1) * max(w)) / m
    else:
        work = max(w)
    comm = row["n_alpha"] * alpha + max(row["max_sent"], row["max_recv"]) / beta
    return (work * scale) / 1e3 + comm


def mb(nbytes: float) -> str:
    return f"{nbytes / 1e6:.2f}"


def print_measured(rows: dict, fits: dict[str, tuple[float, float]]) -> None:
    print(
        "\n| model | scheme | M | wait | ranks x threads | step ms (min-max) | speed-up vs M=1 | "
        "compute ms | exchange+wait ms | model exch. ms | ops/step | MB sent/recv (max part.) "
        "| MB sent (all) | formula | load bal. | CPU/wall | runs |"
    )
    print("|" + "---|" * 17)
    for r in rows.values():
        base = rows.get((r["model"], WHOLE, 1, "-"))
        speed = f"{base['step_ms'] / r['step_ms']:.2f}" if base else "-"
        alpha, beta = fits.get("exchange-blocking" if r["wait"] == "blocking" else "exchange")
        model_ex = r["n_alpha"] * max(alpha, 0.0) + max(r["max_sent"], r["max_recv"]) / beta
        ok = {None: "-", True: "=", False: "DIFFERS"}[r["formula_ok"]]
        used = f"{r['runs_used']}/{r['runs']}" + ("!" if r["all_disturbed"] else "")
        print(
            f"| {r['model']} | {r['scheme']} | {r['M']} | {r['wait']} | "
            f"{r['M']} x {r['threads']} | "
            f"{r['step_ms']:.1f} ({r['step_min_ms']:.1f}-{r['step_max_ms']:.1f}) | {speed} | "
            f"{r['compute_ms']:.1f} | {r['exchange_ms']:.1f} | {model_ex * 1e3:.1f} | "
            f"{r['ops']} | {mb(r['max_sent'])} / {mb(r['max_recv'])} | {mb(r['total_sent'])} | "
            f"{ok} | {r['load_balance']:.2f} | {r['cpu_per_wall']:.2f} | {used} |"
        )
    print(
        "\nstep: the slowest partition's forward + backward, median over steps and runs; "
        "compute: the slowest partition's time outside exchanges; exchange+wait = step - "
        "compute (includes waiting for partners); model exch.: n_alpha x alpha + bytes / beta "
        "with this machine's Exchange.allgather fit for that wait; formula: counted bytes = "
        "expected_bytes(batch) on every partition; load bal.: max / mean partition CPU "
        "compute time; CPU/wall: all ranks' CPU seconds per step second; runs: undisturbed "
        "runs used / all ('!': all disturbed, all used)"
    )


def print_predicted(rows: dict, networks: dict[str, tuple[float, float]]) -> list[dict]:
    out = []
    names = list(networks)
    print(
        "\n| model | scheme | M | compute ms | n_alpha | MB max part. | "
        + " | ".join(f"{n} ms (speed-up)" for n in names)
        + " |"
    )
    print("|" + "---|" * (6 + len(names)))
    for key, r in rows.items():
        if r["scheme"] == WHOLE_1T:
            continue
        if r["wait"] == "blocking" and (*key[:3], "polling") in rows:
            continue  # the same compute, counts and bytes as the polling run
        base = rows.get((r["model"], WHOLE, 1, "-"))
        base_1t = rows.get((r["model"], WHOLE_1T, 1, "-"))
        if base is None or base_1t is None:
            continue
        preds = {n: predict(r, base, base_1t, *networks[n]) for n in names}
        comp = predict(r, base, base_1t, 0.0, math.inf)
        out.append({"model": r["model"], "scheme": r["scheme"], "M": r["M"], "pred_s": preds})
        cells = " | ".join(
            f"{preds[n] * 1e3:.1f} ({base['step_ms'] / 1e3 / preds[n]:.2f})" for n in names
        )
        print(
            f"| {r['model']} | {r['scheme']} | {r['M']} | {comp * 1e3:.1f} | {r['n_alpha']} | "
            f"{mb(max(r['max_sent'], r['max_recv']))} | {cells} |"
        )
    print("\nwhere splitting stops paying (M with the least predicted step time):")
    for model in dict.fromkeys(p["model"] for p in out):
        base = next(p for p in out if p["model"] == model and p["M"] == 1)
        for scheme in dict.fromkeys(p["scheme"] for p in out if p["model"] == model):
            if scheme == WHOLE:
                continue
            series = [base] + [p for p in out if p["model"] == model and p["scheme"] == scheme]
            best = {n: min(series, key=lambda p, n=n: p["pred_s"][n])["M"] for n in names}
            top = max(p["M"] for p in series)
            print(
                f"  {model} {scheme}: "
                + ", ".join(f"{n} M={best[n]}" + ("+" if best[n] == top > 1 else "") for n in names)
            )
    print("  (+: still paying at the largest M measured)")
    return out


def driver(args: argparse.Namespace) -> None:
    from hpcnet.data.registry import resolve_data
    from hpcnet.nn.zoo import MODELS

    args.models = [m for m in args.models.split(",") if m]
    args.schemes = [s for s in args.schemes.split(",") if s]
    args.waits = [w for w in args.waits.split(",") if w]
    if not args.waits or any(w not in ("polling", "blocking") for w in args.waits):
        sys.exit(f"{PROG}: --waits: polling and/or blocking")
    try:
        args.partitions = sorted({int(m) for m in args.partitions.split(",") if m})
    except ValueError:
        sys.exit(f"{PROG}: --partitions {args.partitions!r}: comma-separated integers")
    bad = [m for m in args.models if m not in MODELS]
    if bad or not args.models:
        sys.exit(f"{PROG}: --models: unknown {bad}; choose from {', '.join(MODELS)}")
    if any(s not in ("neurons", "pipeline") for s in args.schemes):
        sys.exit(f"{PROG}: --schemes: choose from neurons, pipeline")
    if min(args.partitions, default=0) < 1 or args.repeats < 1 or args.steps < 1:
        sys.exit(f"{PROG}: need --partitions >= 1, --repeats >= 1, --steps >= 1")
    args.data = str(resolve_data(args.data))  # convert Fashion-MNIST once, here
    mpiexec = mpiexec_path(PROG)
    plan, notes = configs(args)
    meta = {
        **run_meta(),
        "versions": versions(),
        "config": {
            k: getattr(args, k)
            for k in ("models", "schemes", "partitions", "waits", "batch", "steps", "warmup")
        }
        | {"micro_batches": args.micro_batches or "2M", "data": args.data},
    }
    print(
        f"# {meta['date']}  {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), "
        f"OPENBLAS_CORETYPE={meta['env']['OPENBLAS_CORETYPE']}; batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup}, {args.repeats} repeats",
        flush=True,
    )
    for note in notes:
        print("# " + note)
    if args.wait_first > 0:
        print(f"# waiting up to {args.wait_first:.0f} s for an idle machine", flush=True)
        from _common import wait_for_idle

        idle = wait_for_idle(args.wait_first, interval=2.0)
        print(f"# idle {idle if idle is None else f'{idle:.0%}'}", flush=True)
    runs, ab_runs = [], []
    me = [sys.executable, str(Path(__file__).resolve())]
    for rep in range(args.repeats):
        ab = run_job([mpiexec, "-n", "2", *me, "--worker", "alphabeta"], "alphabeta", args)
        ab["repeat"] = rep
        ab_runs.append(ab)
        print(f"  repeat {rep} alpha-beta  ({disturbance(ab)})", flush=True)
        for cfg in plan if rep % 2 == 0 else plan[::-1]:
            r = run_job(step_cmd(mpiexec, cfg, args), " ".join(map(str, cfg)), args)
            r.update(model=cfg[0], scheme=cfg[1], M=cfg[2], wait=cfg[3], repeat=rep)
            runs.append(r)
            print(
                f"  repeat {rep} {cfg[0]:<9} {cfg[1]:<9} M={cfg[2]} {cfg[3]:<8} "
                f"step {r['step_ms']:7.1f} ms"
                f"  exchange {r['exchange_ms']:6.1f} ms  ({disturbance(r)})",
                flush=True,
            )
            if args.json:  # partial results, in case the run is cut short
                Path(args.json).write_text(
                    json.dumps({**meta, "notes": notes, "alpha_beta_runs": ab_runs, "runs": runs})
                )
    report({**meta, "notes": notes, "alpha_beta_runs": ab_runs, "runs": runs}, args.json)


def report(raw: dict, json_path: str | None) -> None:
    """Prints the alpha-beta fit, the measured and the predicted tables from the raw
    runs (``raw``: meta, ``alpha_beta_runs``, ``runs``); writes everything to
    ``json_path`` if given."""
    ab_runs, runs = raw["alpha_beta_runs"], raw["runs"]
    # alpha-beta: medians per size over the undisturbed repeats
    ab_used = clean_runs(ab_runs)
    fits = {}
    print("\n| bytes received per rank | " + " | ".join(ab_runs[0]["times_s"]) + " (us) |")
    print("|---|" + "---|" * len(ab_runs[0]["times_s"]))
    for i, size in enumerate(SIZES):
        cells = [med([r["times_s"][k][i] for r in ab_used]) * 1e6 for k in ab_runs[0]["times_s"]]
        print(f"| {size:,} | " + " | ".join(f"{c:,.0f}" for c in cells) + " |")
    for kind in ab_runs[0]["times_s"]:
        times = [med([r["times_s"][kind][i] for r in ab_used]) for i in range(len(SIZES))]
        fits[kind] = fit_alpha_beta(SIZES, times)
        print(
            f"fit {kind}: alpha {fits[kind][0] * 1e6:.1f} us, beta {fits[kind][1] / 1e9:.2f} GB/s "
            f"({len(ab_used)}/{len(ab_runs)} runs used)"
        )
    networks = {
        "here-MPI": (max(fits["raw"][0], 0.0), fits["raw"][1]),
        "here-hpcnet": (max(fits["exchange"][0], 0.0), fits["exchange"][1]),
        **NETWORKS,
    }

    rows = summarize(runs)
    print_measured(rows, fits)
    for key, r in rows.items():
        if (
            r["plan"]
            and r["wait"] != "blocking"
            and key[2] == max(k[2] for k in rows if k[:2] == key[:2])
        ):
            print(f"\nplan {key[0]} {key[1]} M={key[2]}:\n  " + "\n  ".join(r["plan"]))
    preds = print_predicted(rows, networks)
    if json_path:
        Path(json_path).write_text(
            json.dumps(
                {
                    **raw,
                    "alpha_beta_fits": {
                        k: {"alpha_s": a, "beta_Bps": b} for k, (a, b) in fits.items()
                    },
                    "networks": networks,
                    "summary": [{**r, "plan": None} for r in rows.values()],
                    "predicted": preds,
                },
                indent=1,
            )
        )
        print(f"# raw figures written to {json_path}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="towers,wide_mlp", help="comma-separated zoo models")
    p.add_argument("--partitions", default="1,2,3,4", help="comma-separated M (1: baseline)")
    p.add_argument("--schemes", default="neurons,pipeline", help="neurons and/or pipeline")
    p.add_argument("--batch", type=int, default=64, help="samples per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps per run")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--micro-batches", type=int, default=0, help="pipeline m (0: 2M)")
    p.add_argument(
        "--waits",
        default="polling,blocking",
        help="how exchanges wait: polling (hpcnet's wait_polling) and/or blocking (MPI_Wait)",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs of every configuration")
    p.add_argument("--data", default="fashion-mnist", help="data set name or .h5 path")
    p.add_argument("--timeout", type=int, default=300, help="seconds per run")
    add_wait_idle(p)
    p.add_argument(
        "--wait-first",
        type=float,
        default=0.0,
        help="seconds to wait once, before everything, for an idle machine",
    )
    add_json_flags(p, "measure nothing: print the tables again from a JSON this script wrote")
    p.add_argument("--worker", choices=("step", "alphabeta"), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--scheme", help=argparse.SUPPRESS)
    p.add_argument("--wait", default="polling", help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def replay(args: argparse.Namespace) -> None:
    """``--from-json``: the tables again from an earlier ``--json`` file; runs nothing."""
    raw = json.loads(Path(args.from_json).read_text())
    print(f"# {raw['date']}  {raw['machine']['cpu']} ({raw['machine']['cpus']} CPUs)")
    report(raw, args.json)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dispatch(
        args, replay if args.from_json else driver, step=worker_step, alphabeta=worker_alphabeta
    )


if __name__ == "__main__":
    main()
