"""Downpour SGD, measured: parameter-server cost, throughput against sync, Adagrad.

Three parts (``--parts ps,throughput,adagrad``), each run as fresh ``mpiexec`` jobs,
on a machine that the driver waits to be idle before every run (and whose other
jobs' CPU it measures from /proc/stat, flagging disturbed runs):

* ``ps`` - the parameter server's push and fetch against raw mpi4py RMA, 2 ranks
  (1 shard + 1 replica), float32 vectors of ``--ps-sizes`` elements (default 100 K
  and 2conv's 3.27 M). hpcnet side: :func:`hpcnet.ps.windows.create_shard_windows`,
  a :class:`~hpcnet.ps.shard.ShardService` (rule ``sgd``) on rank 0, a
  :class:`~hpcnet.ps.client.ShardClient` on rank 1 timing ``fetch`` and ``push`` per
  call, with a simulated compute gap (``--gap``, 20 ms of sleep) between them so
  the shard has applied the previous push, as in training. Raw side: one
  ``MPI.Win.Allocate`` window of the same bytes (same info hints) on rank 0, which
  sits in a sleeping ``Ibarrier`` + ``Test`` poll loop; rank 1 holds ``Lock_all``
  for the whole loop and times ``Get`` + ``Flush`` and ``Accumulate(SUM)`` +
  ``Flush``. Sides alternate hpcnet, raw, hpcnet, raw.
* ``throughput`` - ``python -m hpcnet train --algo downpour --shards 1`` on 3 ranks
  (1 shard + 2 replicas) against ``--algo sync`` on 2 ranks: same model, same batch
  per replica, ``--threads 1``, a fixed ``--max-steps``; samples/s from
  OUT/summary.json, with the replicas' compute/fetch/push times and the shard's
  apply time and CPU use from the same file.
* ``adagrad`` - Downpour with Adagrad at the shard against Downpour with plain SGD
  at a fixed learning rate, 1 shard + 3 replicas (4 ranks), Fashion-MNIST, 2conv,
  1 epoch; both with a constant learning rate and no warmup, so the update rule is
  the only difference. Plots training accuracy and loss against wall time, and the
  test figures at the end, to ``--png`` (default benchmarks/downpour_adagrad.png).

Usage::

    python benchmarks/downpour_bench.py [--parts ps,throughput,adagrad] [--repeats R]
        [--json OUT.json] [--png PLOT.png]
    python benchmarks/downpour_bench.py --from-json OUT.json   # tables + plot again, no runs

Needs matplotlib for the ``adagrad`` plot (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import (
    Disturbance,
    add_wait_idle,
    blas_info,
    disturbance,
    emit,
    mpiexec_path,
    parse_result,
    run_meta,
    versions,
)

PROG = "downpour_bench"
PARTS = ("ps", "throughput", "adagrad")
PS_LR = 1e-4  # the hpcnet side's shard applies SGD at this rate (values do not matter)
PS_SIDES = ("hpcnet", "raw")
# Throughput sides: name -> (ranks, extra flags). The default sides are the first two;
# the others are diagnostics, opt-in with --tp-sides: DistBelief's n_fetch = n_push > 1
# (fewer, larger messages), and plain SGD at the shard (a cheaper update than Adagrad).
TP_SIDES = {
    "downpour": (3, ["--algo", "downpour", "--shards", "1"]),
    "sync": (2, ["--algo", "sync"]),
    "downpour-n4": (3, ["--algo", "downpour", "--shards", "1", "--n-fetch", "4", "--n-push", "4"]),
    "downpour-sgd": (3, ["--algo", "downpour", "--shards", "1", "--ps-rule", "sgd"]),
}
DEFAULT_TP_SIDES = ("downpour", "sync")
TP_STEPS = {"2conv": 60, "mlp": 1000}  # --max-steps per replica in the throughput part
HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------- ps worker


def worker_ps(args: argparse.Namespace) -> None:
    """One side of the ``ps`` part; SPMD over 2 ranks (shard/target 0, replica/origin 1)."""
    from hpcnet.comm.world import install_abort_hook, library_comm

    install_abort_hook()  # an exception on one rank aborts the job instead of hanging it
    comm = library_comm()
    if comm.Get_size() != 2:
        raise SystemExit(f"{PROG}: the ps worker needs exactly 2 ranks")
    n = args.n
    rng = np.random.default_rng(0)
    grads = (rng.standard_normal(n) * 1e-3).astype(np.float32)
    params = np.empty(n, np.float32)
    if args.side == "hpcnet":
        mine, shard = _ps_hpcnet(comm, n, grads, params, args)
    else:
        mine, shard = _ps_raw(comm, n, grads, params, args)
    calls = comm.gather(mine, root=0)
    shards = comm.gather(shard, root=0)
    if comm.Get_rank() == 0:
        emit(
            {
                "side": args.side,
                "n": n,
                "bytes": 4 * n,
                "iters": args.iters,
                "warmup": args.warmup,
                "gap_s": args.gap,
                "calls_s": calls[1],  # the replica's (origin's) per-call times
                "shard": shards[0],
            }
        )


def _ps_hpcnet(comm, n, grads, params, args) -> tuple[dict | None, dict | None]:
    from dataclasses import asdict

    from hpcnet.comm import barrier_polling
    from hpcnet.ps import windows as W
    from hpcnet.ps.client import ShardClient
    from hpcnet.ps.rules import make_rule
    from hpcnet.ps.shard import ShardService

    windows = W.create_shard_windows(comm, [0], [(0, n)], 1)  # collective; zeroed
    calls = shard = None
    if comm.Get_rank() == 0:
        service = ShardService(
            windows[0], make_rule("sgd", n), lambda _v: PS_LR, replica_timeout=60.0, comm=comm
        )
        st = asdict(service.serve())  # returns once the client has said done
        st.pop("staleness_hist", None)
        shard = st
    else:
        client = ShardClient(windows, 0, wait_timeout=60.0)
        fetch, push, wait = [], [], []
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            client.fetch(params)
            t1 = time.perf_counter()
            time.sleep(args.gap)  # the replica computes; the shard applies the last push
            w0 = client.stats.push_wait_s
            t2 = time.perf_counter()
            client.push(grads, 1, 0.0, 0, 0)
            t3 = time.perf_counter()
            if i >= args.warmup:
                fetch.append(t1 - t0)
                push.append(t3 - t2)
                wait.append(client.stats.push_wait_s - w0)
        client.done()
        client.close()
        calls = {
            "fetch": fetch,
            "push_incl_wait": push,
            "push_wait": wait,
            "push_excl_wait": [p - w for p, w in zip(push, wait, strict=True)],
        }
    # As at the end of train_downpour: meet (sleeping, time-limited), then free collectively.
    barrier_polling(comm, timeout=120.0, what="ps bench end barrier")
    for sw in windows:
        sw.free()
    return calls, shard


def _ps_raw(comm, n, grads, params, args) -> tuple[dict | None, dict | None]:
    from mpi4py import MPI

    from hpcnet.comm import Backoff
    from hpcnet.ps import windows as W

    info = W._info()  # the same hints as hpcnet's windows (accumulate_ordering=none, same_op)
    win = MPI.Win.Allocate(4 * n if comm.Get_rank() == 0 else 0, 4, info, comm)
    info.Free()
    if comm.Get_rank() == 0:
        np.frombuffer(win.tomemory(), np.uint8)[:] = 0
    comm.Barrier()
    calls = None
    if comm.Get_rank() == 0:
        # An idle process: poll a barrier and sleep (as hpcnet's shard does when idle).
        req = comm.Ibarrier()
        backoff = Backoff(first=20e-6, cap=1e-3)
        while not req.Test():
            backoff.sleep()
    else:
        get, acc = [], []
        win.Lock_all(MPI.MODE_NOCHECK)
        for i in range(args.warmup + args.iters):
            t0 = time.perf_counter()
            win.Get(params, 0, (0, n, MPI.FLOAT))
            win.Flush(0)
            t1 = time.perf_counter()
            time.sleep(args.gap)
            t2 = time.perf_counter()
            win.Accumulate(grads, 0, (0, n, MPI.FLOAT), MPI.SUM)
            win.Flush(0)
            t3 = time.perf_counter()
            if i >= args.warmup:
                get.append(t1 - t0)
                acc.append(t3 - t2)
        win.Unlock_all()
        comm.Ibarrier().Wait()
        calls = {"get": get, "accumulate": acc}
    win.Free()
    return calls, None


# --------------------------------------------------------------------------- driver: runs


def run_job(cmd: list[str], what: str, timeout: float, wait_idle: float) -> tuple:
    """Runs one ``mpiexec`` job on an idle machine; returns (completed process, the
    machine's disturbance figures). Exits with the job's output if it fails."""
    measure = Disturbance(wait_idle).start()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        sys.exit(f"{PROG}: {what} did not finish in {timeout:.0f} s: " + " ".join(cmd))
    m = measure.finish()
    if proc.returncode != 0:
        sys.exit(
            f"{PROG}: {what} failed (exit {proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
        )
    return proc, m


def run_ps(side: str, n: int, args, mpiexec: str) -> dict:
    cmd = [
        mpiexec, "-n", "2", sys.executable, str(Path(__file__).resolve()),
        "--worker", "ps", "--side", side, "--n", str(n), "--iters", str(args.ps_iters),
        "--warmup", str(args.ps_warmup), "--gap", str(args.gap),
    ]  # fmt: skip
    proc, m = run_job(cmd, f"ps {side} n={n}", args.timeout, args.wait_idle)
    result = parse_result(proc.stdout)
    if result is None:
        sys.exit(f"{PROG}: ps {side} n={n} printed no result:\n{proc.stdout[-3000:]}")
    result.update(m)
    return result


def train_cmd(mpiexec: str, procs: int, out: Path, flags: list[str]) -> list[str]:
    return [
        mpiexec, "-n", str(procs), sys.executable, "-m", "hpcnet", "train",
        "--out", str(out), *flags,
    ]  # fmt: skip


def read_run(out: Path) -> tuple[dict, list[dict]]:
    """OUT/summary.json (without the config) and OUT/metrics.jsonl's training records."""
    summary = json.loads((out / "summary.json").read_text())
    records = []
    for line in (out / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        if "event" not in rec and "loss" in rec and "elapsed_s" in rec:
            records.append(rec)
    return summary, records


def steady_rate(records: list[dict], samples_per_step: int) -> float | None:
    """Samples/s between the first and the last progress record (leaves out start-up
    and the first steps: Numba cache loading, first-touch allocation)."""
    if len(records) < 2:
        return None
    a, b = records[0], records[-1]
    dt = b["elapsed_s"] - a["elapsed_s"]
    return (b["step"] - a["step"]) * samples_per_step / dt if dt > 0 else None


def run_train(kind: str, procs: int, flags: list[str], what: str, args, mpiexec, **kw) -> dict:
    """One ``python -m hpcnet train`` job; returns its summary, records and disturbance."""
    out = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=args.runs_dir))
    shutil.rmtree(out)  # hpcnet creates it
    proc, m = run_job(train_cmd(mpiexec, procs, out, flags), what, **kw)
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


def tp_flags(side: str, model: str, args) -> tuple[int, list[str]]:
    procs, flags = TP_SIDES[side]
    common = [
        "--data", args.data, "--model", model, "--batch-size", str(args.batch_size),
        "--max-steps", str(args.tp_steps.get(model, 60)), "--epochs", "1", "--threads", "1",
        "--seed", "0",
    ]  # fmt: skip
    if flags[1] == "downpour" and "--ps-rule" not in flags:
        flags = [*flags, "--ps-rule", args.tp_rule]
    return procs, [*flags, *common]


def adagrad_configs(args) -> list[tuple[str, float]]:
    """(rule, lr) of every run of the adagrad part, rules alternating (A B A B)."""
    specs = {"adagrad": args.adagrad_lr, "sgd": args.sgd_lr}
    lrs = {rule: [float(x) for x in spec.split(",") if x] for rule, spec in specs.items()}
    out = []
    for i in range(max(len(v) for v in lrs.values())):
        out += [(rule, v[i]) for rule, v in lrs.items() if i < len(v)]
    return out


def adagrad_flags(rule: str, lr: float, args) -> list[str]:
    return [
        "--algo", "downpour", "--shards", "1", "--ps-rule", rule, "--lr", str(lr),
        "--lr-schedule", "constant", "--warmup-epochs", "0",
        "--data", args.data, "--model", "2conv", "--epochs", str(args.adagrad_epochs),
        "--batch-size", str(args.batch_size), "--threads", "1", "--seed", "0",
        "--max-steps", str(args.adagrad_max_steps),
    ]  # fmt: skip


# --------------------------------------------------------------------------- summaries


def used_runs(every: list[dict]) -> tuple[list[dict], bool]:
    """The undisturbed runs (all of them, flagged, if none was undisturbed)."""
    clean = [r for r in every if r["clean"]]
    return (clean or every), not clean


def med(xs) -> float:
    return statistics.median(xs)


def summarize_ps(runs: list[dict], sizes: list[int]) -> list[dict]:
    """One row per (size, operation): median over runs of the per-run median call time."""
    rows = []
    pairs = (  # (operation, hpcnet key, raw key)
        ("fetch (Get)", "fetch", "get"),
        ("push excl. wait (Accumulate)", "push_excl_wait", "accumulate"),
        ("push incl. wait", "push_incl_wait", "accumulate"),
    )
    for n in sizes:
        by_side = {}
        for side in PS_SIDES:
            every = [r for r in runs if r["n"] == n and r["side"] == side]
            if every:
                by_side[side] = used_runs(every) + (len(every),)
        if len(by_side) < 2:
            continue
        (hp, hp_dis, hp_all), (raw, raw_dis, raw_all) = by_side["hpcnet"], by_side["raw"]
        for op, hk, rk in pairs:
            h = [med(r["calls_s"][hk]) for r in hp]
            w = [med(r["calls_s"][rk]) for r in raw]
            rows.append(
                {
                    "n": n,
                    "mbytes": 4 * n / 1e6,
                    "op": op,
                    "hpcnet_ms": med(h) * 1e3,
                    "hpcnet_range_ms": [min(h) * 1e3, max(h) * 1e3],
                    "raw_ms": med(w) * 1e3,
                    "raw_range_ms": [min(w) * 1e3, max(w) * 1e3],
                    "raw_over_hpcnet": med(w) / med(h),
                    "runs": f"{len(hp)}/{hp_all}+{len(raw)}/{raw_all}"
                    + ("!" if hp_dis or raw_dis else ""),
                }
            )
        # What the shard did meanwhile (hpcnet side).
        shard = [r["shard"] for r in hp if r.get("shard")]
        if shard:
            rows[-1]["shard"] = {
                "apply_ms_per_push": med(
                    s["apply_s"] / max(1, sum(s["pushes_applied"])) for s in shard
                )
                * 1e3,
                "cpu_share": med(s["cpu_s"] / s["serve_s"] for s in shard if s["serve_s"]),
                "push_wait_ms": med(med(r["calls_s"]["push_wait"]) for r in hp) * 1e3,
            }
    return rows


def replica_breakdown(s: dict) -> dict:
    """Per-step milliseconds of a Downpour run's replicas (mean over replicas) and what
    the shard(s) did, from summary.json."""
    reps = s.get("replicas") or []
    shards = s.get("shards") or []

    def per(r, key, count):
        return r.get(key, 0.0) / max(1, r.get(count, 0)) * 1e3

    out = {}
    if reps:
        out.update(
            compute_ms=np.mean([per(r, "compute_s", "steps") for r in reps]),
            fetch_ms=np.mean([per(r, "fetch_s", "fetches") for r in reps]),
            push_ms=np.mean(
                [(r["push_s"] - r["push_wait_s"]) / max(1, r["pushes"]) * 1e3 for r in reps]
            ),
            push_wait_ms=np.mean([per(r, "push_wait_s", "pushes") for r in reps]),
            other_ms=np.mean(
                [
                    (r["wall_s"] - r["compute_s"] - r["fetch_s"] - r["push_s"])
                    / max(1, r["steps"])
                    * 1e3
                    for r in reps
                ]
            ),
            replica_wall_ms=np.mean([per(r, "wall_s", "steps") for r in reps]),
        )
    if shards:
        applied = sum(sum(sh["pushes_applied"]) for sh in shards)
        out.update(
            apply_ms=sum(sh["apply_s"] for sh in shards) / max(1, applied) * 1e3,
            shard_cpu_share=np.mean([sh["cpu_s"] / sh["serve_s"] for sh in shards]),
            shard_apply_share=np.mean([sh["apply_s"] / sh["serve_s"] for sh in shards]),
            shard_idle_cpu_fraction=np.mean([sh["idle_cpu_fraction"] for sh in shards]),
        )
    if "staleness" in s:
        out["staleness_mean"] = s["staleness"].get("mean")
    return {k: float(v) for k, v in out.items()}


def summarize_tp(runs: list[dict], models: list[str], sides: list[str]) -> list[dict]:
    rows = []
    for model in models:
        meds = {}
        for side in sides:
            every = [r for r in runs if r["model"] == model and r["side"] == side]
            if not every:
                continue
            used, dis = used_runs(every)
            sps = [r["summary"]["samples_per_s"] for r in used]
            steady = [r["steady_samples_per_s"] for r in used if r["steady_samples_per_s"]]
            meds[side] = med(sps)
            meds[side + "/steady"] = med(steady) if steady else None
            row = {
                "model": model,
                "side": side,
                "samples_per_s": med(sps),
                "min": min(sps),
                "max": max(sps),
                "steady_samples_per_s": med(steady) if steady else None,
                "runs_used": len(used),
                "runs": len(every),
                "all_disturbed": dis,
                "ms_per_step": med(r["summary"]["train_s"] / r["steps_per_rank"] for r in used)
                * 1e3,
            }
            if side.startswith("downpour"):
                parts = [replica_breakdown(r["summary"]) for r in used]
                row["breakdown"] = {k: med(p[k] for p in parts) for k in parts[0]}
            rows.append(row)
        for row in rows:
            if row["model"] == model and "sync" in meds:
                row["vs_sync"] = row["samples_per_s"] / meds["sync"]
                st, ref = row["steady_samples_per_s"], meds.get("sync/steady")
                row["steady_vs_sync"] = st / ref if st and ref else None
                # Same repeat, both undisturbed: the ratio least touched by other jobs.
                pairs = [
                    a["summary"]["samples_per_s"] / b["summary"]["samples_per_s"]
                    for a in runs
                    for b in runs
                    if a["model"] == b["model"] == model
                    and a["side"] == row["side"]
                    and b["side"] == "sync"
                    and a["repeat"] == b["repeat"]
                    and a["clean"]
                    and b["clean"]
                ]
                row["paired_vs_sync"] = med(pairs) if pairs else None
                row["clean_pairs"] = len(pairs)
    return rows


def time_to(records: list[dict], acc: float) -> float | None:
    for rec in records:
        if rec["accuracy"] >= acc:
            return rec["elapsed_s"]
    return None


def summarize_adagrad(runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        s, recs = r["summary"], r["records"]
        last = recs[-3:] if recs else []
        rows.append(
            {
                "rule": r["rule"],
                "lr": r["lr"],
                "repeat": r["repeat"],
                "test_accuracy": s["test_accuracy"],
                "test_loss": s["test_loss"],
                "train_loss_last": float(np.mean([x["loss"] for x in last])) if last else None,
                "train_acc_last": float(np.mean([x["accuracy"] for x in last])) if last else None,
                "train_s": s["train_s"],
                "wall_s": s["wall_s"],
                "samples_per_s": s["samples_per_s"],
                "staleness_mean": s.get("staleness", {}).get("mean"),
                "t_to_train_acc_0.8_s": time_to(recs, 0.8),
                "clean": r["clean"],
                "cpu_idle_before": r["cpu_idle_before"],
                "cpu_others_during": r["cpu_others_during"],
            }
        )
    return rows


# --------------------------------------------------------------------------- tables


def _flag(r: dict) -> str:
    return f"{r['runs_used']}/{r['runs']}" + ("!" if r["all_disturbed"] else "")


def print_ps(rows: list[dict]) -> None:
    head = (
        f"{'elements':>9} {'MB':>5}  {'operation':<29} {'hpcnet ms':>9} {'raw ms':>7} "
        f"{'raw/hpcnet':>10}  runs"
    )
    print("\n## ps: parameter-server call time against raw mpi4py RMA (2 ranks, median)")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(
            f"{r['n']:>9,} {r['mbytes']:>5.1f}  {r['op']:<29} {r['hpcnet_ms']:>9.3f} "
            f"{r['raw_ms']:>7.3f} {r['raw_over_hpcnet']:>10.2f}  {r['runs']}"
        )
        if "shard" in r:
            sh = r["shard"]
            print(
                f"{'':>17}shard: apply {sh['apply_ms_per_push']:.2f} ms/push, CPU "
                f"{sh['cpu_share']:.0%} of a core; replica waited {sh['push_wait_ms']:.3f} ms "
                "a push for its slot"
            )
    print(
        "runs: undisturbed runs used, hpcnet+raw ('!': some side had no undisturbed run; "
        "all its runs are used)"
    )


def print_tp(rows: list[dict]) -> None:
    head = (
        f"{'model':<6} {'side':<12} {'samples/s':>9} {'min-max':>13} {'steady':>7} "
        f"{'/sync':>6} {'steady/sync':>11} {'paired':>9} {'runs':>5} {'ms/step':>8}"
    )
    print("\n## throughput: downpour (1 shard + 2 replicas: 3 ranks) against sync (2 ranks)")
    print(head)
    print("-" * len(head))
    for r in rows:
        steady = f"{r['steady_samples_per_s']:,.0f}" if r["steady_samples_per_s"] else "-"
        ratio = f"{r['vs_sync']:.2f}" if r.get("vs_sync") else "-"
        sratio = f"{r['steady_vs_sync']:.2f}" if r.get("steady_vs_sync") else "-"
        paired = (
            f"{r['paired_vs_sync']:.2f} ({r['clean_pairs']})"
            if r.get("paired_vs_sync") and r["side"] != "sync"
            else "-"
        )
        print(
            f"{r['model']:<6} {r['side']:<12} {r['samples_per_s']:>9,.0f} "
            f"{r['min']:>6,.0f}-{r['max']:<6,.0f} {steady:>7} {ratio:>6} {sratio:>11} {paired:>9} "
            f"{_flag(r):>5} {r['ms_per_step']:>8.1f}"
        )
        b = r.get("breakdown")
        if b:
            print(
                f"{'':>7}replica ms/step: compute {b['compute_ms']:.1f}, fetch "
                f"{b['fetch_ms']:.2f}, push {b['push_ms']:.2f} (+ wait {b['push_wait_ms']:.2f}), "
                f"other {b['other_ms']:.1f}; shard: apply {b['apply_ms']:.1f} ms/push, CPU "
                f"{b['shard_cpu_share']:.0%} of a core (applying {b['shard_apply_share']:.0%}); "
                f"staleness {b.get('staleness_mean', float('nan')):.1f}"
            )
    print(
        "samples/s: OUT/summary.json (whole training loop), median of undisturbed runs; steady: "
        "between the first and last progress records;\npaired: median of side/sync over "
        "repeats where both runs were undisturbed (how many); ms/step: train_s / steps per "
        "replica"
    )


def print_adagrad(rows: list[dict]) -> None:
    head = (
        f"{'rule':<8} {'lr':>6} {'rep':>3} {'test acc':>8} {'test loss':>9} {'train loss':>10} "
        f"{'train acc':>9} {'train s':>7} {'samples/s':>9} {'stale':>5} {'t(acc>=.8)':>10}"
    )
    print("\n## adagrad: downpour 1 shard + 3 replicas, Fashion-MNIST, 2conv (last records)")
    print(head)
    print("-" * len(head))
    for r in rows:
        t80 = f"{r['t_to_train_acc_0.8_s']:.0f} s" if r["t_to_train_acc_0.8_s"] else "-"
        note = (
            ""
            if r["clean"]
            else f"  <- disturbed (idle before {r['cpu_idle_before']:.0%}, other jobs "
            f"{r['cpu_others_during']:.0%})"
        )
        print(
            f"{r['rule']:<8} {r['lr']:>6g} {r['repeat']:>3} {r['test_accuracy']:>8.4f} "
            f"{r['test_loss']:>9.4f} {r['train_loss_last']:>10.4f} {r['train_acc_last']:>9.3f} "
            f"{r['train_s']:>7.1f} {r['samples_per_s']:>9,.0f} {r['staleness_mean']:>5.1f} "
            f"{t80:>10}{note}"
        )


def plot_adagrad(runs: list[dict], png: Path, title: str, batch: int) -> None:
    """Three panels: training accuracy and loss against wall time (what the issue asks),
    and training accuracy against samples seen (independent of the machine's speed).
    The stars are the test set's figures, measured after training (at ``wall_s``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = {
        "adagrad": ["tab:blue", "tab:cyan", "tab:purple"],
        "sgd": ["tab:orange", "tab:red", "tab:brown"],
    }
    configs = list(dict.fromkeys((r["rule"], r["lr"]) for r in runs))
    colors = {}
    for rule, lr in configs:
        pal = palette.get(rule, ["tab:gray"])
        colors[rule, lr] = pal[sum(k[0] == rule for k in colors) % len(pal)]
    fig, (ax_acc, ax_loss, ax_smp) = plt.subplots(1, 3, figsize=(14, 4.4), dpi=90)
    for r in runs:
        recs = r["records"]
        t = [x["elapsed_s"] for x in recs]
        acc = [x["accuracy"] for x in recs]
        c = colors[r["rule"], r["lr"]]
        s = r["summary"]
        label = f"{r['rule']} lr {r['lr']:g}" + (f" (run {r['repeat'] + 1})" if r["repeat"] else "")
        label += f": test acc {s['test_accuracy']:.3f}, {s['samples_per_s']:,.0f} samples/s"
        if not r["clean"]:
            label += " [disturbed]"
        ls = "-" if r["repeat"] % 2 == 0 else "--"
        ax_acc.plot(t, acc, ls, color=c, lw=1.1, label=label)
        ax_loss.plot(t, [x["loss"] for x in recs], ls, color=c, lw=1.1, label=label)
        ax_smp.plot([x["step"] * batch / 1e3 for x in recs], acc, ls, color=c, lw=1.1)
        ax_acc.plot([s["wall_s"]], [s["test_accuracy"]], "*", color=c, ms=12, mec="k")
        ax_loss.plot([s["wall_s"]], [s["test_loss"]], "*", color=c, ms=12, mec="k")
        ax_smp.plot([s["steps"] * batch / 1e3], [s["test_accuracy"]], "*", color=c, ms=12, mec="k")
    for ax in (ax_acc, ax_smp):
        ax.set_ylim(0.5, 0.95)
        ax.set_yticks(np.arange(0.5, 0.951, 0.05))
        ax.set_ylabel("training accuracy (per ~2 s interval)")
    ax_acc.set_xlabel("wall time since start (s)")
    ax_acc.set_title("accuracy against wall time", fontsize=10)
    ax_loss.set(xlabel="wall time since start (s)", ylabel="training loss (per ~2 s interval)")
    ax_loss.set_title("loss against wall time (log scale)", fontsize=10)
    ax_loss.set_yscale("log")
    ax_loss.set_ylim(0.25, 3.0)
    ticks = [0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0]
    ax_loss.set_yticks(ticks, [f"{v:g}" for v in ticks])
    ax_loss.minorticks_off()
    ax_smp.set_xlabel("training samples seen, all replicas (thousands)")
    ax_smp.set_title("accuracy against samples (machine speed left out)", fontsize=10)
    for ax in (ax_acc, ax_loss, ax_smp):
        ax.grid(alpha=0.3)
    ax_acc.legend(
        loc="lower right",
        fontsize=7.5,
        title="star: test set, after training",
        title_fontsize=8,
        framealpha=0.9,
    )
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png, dpi=90)
    plt.close(fig)


# --------------------------------------------------------------------------- driver


def ps_sizes(spec: str) -> list[int]:
    """``100000,2conv`` -> element counts; a zoo model name stands for its parameter
    count on Fashion-MNIST's (1, 28, 28) images."""
    out = []
    for item in (x.strip() for x in spec.split(",") if x.strip()):
        if item.replace("_", "").isdigit():
            out.append(int(item))
        else:
            from hpcnet.nn.zoo import MODELS, build_model

            if item not in MODELS:
                sys.exit(f"{PROG}: --ps-sizes {item!r}: neither a number nor a zoo model")
            out.append(build_model(item, (1, 28, 28), 10).n_params)
    return out


def part_ps(args, mpiexec: str) -> dict:
    sizes = ps_sizes(args.ps_sizes)
    runs = []
    for rep in range(repeats_of(args, "ps")):
        for n in sizes:
            for side in PS_SIDES:
                r = run_ps(side, n, args, mpiexec)
                r["repeat"] = rep
                runs.append(r)
                key = "push_excl_wait" if side == "hpcnet" else "accumulate"
                fk = "fetch" if side == "hpcnet" else "get"
                push_ms, fetch_ms = (med(r["calls_s"][k]) * 1e3 for k in (key, fk))
                print(
                    f"  ps repeat {rep} n={n:>9,} {side:<6} push {push_ms:7.3f} ms, fetch "
                    f"{fetch_ms:7.3f} ms  ({disturbance(r)})",
                    flush=True,
                )
    rows = summarize_ps(runs, sizes)
    print_ps(rows)
    return {"sizes": sizes, "summary": rows, "runs": runs}


def part_throughput(args, mpiexec: str) -> dict:
    models = [m for m in args.tp_models.split(",") if m]
    sides = [x for x in args.tp_sides.split(",") if x]
    bad = [x for x in sides if x not in TP_SIDES]
    if bad or "sync" not in sides:
        sys.exit(f"{PROG}: --tp-sides: need sync and any of {', '.join(TP_SIDES)}; got {bad}")
    runs = []
    for rep in range(repeats_of(args, "throughput")):
        for model in models:
            for side in sides:
                procs, flags = tp_flags(side, model, args)
                r = run_train(
                    side, procs, flags, f"throughput {side} {model}", args, mpiexec,
                    timeout=args.timeout, wait_idle=args.wait_idle,
                )  # fmt: skip
                s = r["summary"]
                replicas = 2
                dp = side.startswith("downpour")  # its records count steps of all replicas
                r.update(side=side, model=model, repeat=rep)
                r["steps_per_rank"] = s["steps"] / replicas if dp else s["steps"]
                r["steady_samples_per_s"] = steady_rate(
                    r["records"], args.batch_size * (1 if dp else replicas)
                )
                print(
                    f"  throughput repeat {rep} {model:<6} {side:<12} "
                    f"{s['samples_per_s']:>8,.0f} samples/s  ({disturbance(r)})",
                    flush=True,
                )
                if not args.keep_runs:
                    shutil.rmtree(r["out"], ignore_errors=True)
                runs.append(r)
    rows = summarize_tp(runs, models, sides)
    print_tp(rows)
    return {"models": models, "sides": sides, "summary": rows, "runs": runs}


def part_adagrad(args, mpiexec: str) -> dict:
    runs = []
    for rep in range(repeats_of(args, "adagrad")):
        for rule, lr in adagrad_configs(args):
            flags = adagrad_flags(rule, lr, args)
            r = run_train(
                rule, 4, flags, f"adagrad part, rule {rule} lr {lr:g}", args, mpiexec,
                timeout=args.adagrad_timeout, wait_idle=args.wait_idle_adagrad,
            )  # fmt: skip
            r.update(rule=rule, lr=lr, repeat=rep)
            s = r["summary"]
            print(
                f"  adagrad repeat {rep} {rule:<8} lr {lr:<6g} test accuracy "
                f"{s['test_accuracy']:.4f}, {s['samples_per_s']:,.0f} samples/s  "
                f"({disturbance(r)})",
                flush=True,
            )
            if not args.keep_runs:
                shutil.rmtree(r["out"], ignore_errors=True)
            runs.append(r)
    rows = summarize_adagrad(runs)
    print_adagrad(rows)
    png = Path(args.png)
    title = (
        f"Downpour, 1 shard + 3 replicas (2 vCPUs), Fashion-MNIST, 2conv, batch "
        f"{args.batch_size}/replica, {args.adagrad_epochs} epoch(s), constant lr"
    )
    plot_adagrad(runs, png, title, args.batch_size)
    print(f"# plot written to {png} ({png.stat().st_size / 1024:.0f} KB)")
    return {"summary": rows, "runs": runs, "png": str(png)}


def replay(args: argparse.Namespace) -> None:
    """Prints the tables of an earlier ``--json`` file again (from its raw runs) and
    redraws its adagrad plot to ``--png``; runs nothing."""
    data = json.loads(Path(args.from_json).read_text())
    print(
        f"# {args.from_json}: measured {data.get('date')}, hpcnet {data['versions']['hpcnet_git']}"
    )
    if "ps" in data:
        print_ps(summarize_ps(data["ps"]["runs"], data["ps"]["sizes"]))
    if "throughput" in data:
        tp = data["throughput"]
        print_tp(summarize_tp(tp["runs"], tp["models"], tp.get("sides", list(DEFAULT_TP_SIDES))))
    if "adagrad" in data:
        runs = data["adagrad"]["runs"]
        print_adagrad(summarize_adagrad(runs))
        cfg = data["config"]
        title = (
            f"Downpour, 1 shard + 3 replicas (2 vCPUs), Fashion-MNIST, 2conv, batch "
            f"{cfg['batch_size']}/replica, {cfg['adagrad_epochs']} epoch(s), constant lr"
        )
        plot_adagrad(runs, Path(args.png), title, cfg["batch_size"])
        print(f"# plot written to {args.png}")


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        replay(args)
        return
    parts = [p for p in args.parts.split(",") if p]
    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        sys.exit(f"{PROG}: --parts {args.parts!r}: choose from {', '.join(PARTS)}")
    if args.repeats is not None and args.repeats < 1:
        sys.exit(f"{PROG}: --repeats must be at least 1")
    if "adagrad" in parts:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            sys.exit(f"{PROG}: the adagrad part plots with matplotlib: pip install matplotlib")
    from hpcnet.data.registry import resolve_data

    args.data = str(resolve_data(args.data))  # convert Fashion-MNIST once, before any run
    mpiexec = mpiexec_path(PROG)
    if args.runs_dir:
        Path(args.runs_dir).mkdir(parents=True, exist_ok=True)
    meta = {
        **run_meta(),
        "blas_driver": blas_info(),
        "versions": versions(
            ("hpcnet", "numpy", "numba", "mpi4py", "mpich", "matplotlib", "threadpoolctl")
        ),
        "config": {k: v for k, v in vars(args).items() if not k.startswith("worker")},
        "hpcnet_uncommitted": uncommitted(),
    }
    print(
        f"# {meta['date']}  {meta['machine']['cpu']} ({meta['machine']['cpus']} CPUs), hpcnet "
        f"{meta['versions']['hpcnet_git']}"
        + (" + uncommitted changes" if meta["hpcnet_uncommitted"] else "")
        + f", parts {','.join(parts)}",
        flush=True,
    )
    out: dict = {**meta}
    done = {"ps": part_ps, "throughput": part_throughput, "adagrad": part_adagrad}
    for part in parts:
        out[part] = done[part](args, mpiexec)
        if args.json:  # after every part: a later part's failure keeps the earlier figures
            Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    if args.json:
        print(f"# raw figures written to {args.json}")


def uncommitted() -> list[str] | None:
    """Files of hpcnet/ that differ from the commit in ``versions`` (``git status``): the
    figures were measured on this working tree."""
    try:
        out = subprocess.run(
            ["git", "-C", str(HERE.parent), "status", "--porcelain", "--", "hpcnet"],
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return [line[3:] for line in out.splitlines()]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--parts", default=",".join(PARTS), help="comma-separated: ps,throughput,adagrad"
    )
    p.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="runs of every side (default: 3 for ps and throughput, 1 for adagrad)",
    )
    p.add_argument("--data", default="fashion-mnist", help="data set name or .h5 path")
    p.add_argument("--batch-size", type=int, default=32, help="samples per replica per step")
    # ps
    p.add_argument("--ps-sizes", default="100000,2conv", help="elements (or a zoo model's count)")
    p.add_argument("--ps-iters", type=int, default=100, help="timed fetch+push pairs per run")
    p.add_argument("--ps-warmup", type=int, default=10, help="untimed pairs first")
    p.add_argument("--gap", type=float, default=0.02, help="seconds of simulated compute")
    # throughput
    p.add_argument("--tp-models", default="2conv,mlp", help="zoo models, comma-separated")
    p.add_argument(
        "--tp-steps",
        type=lambda s: {k: int(v) for k, v in (kv.split("=") for kv in s.split(","))},
        default=dict(TP_STEPS),
        help="steps per replica, e.g. 2conv=60,mlp=1000",
    )
    p.add_argument(
        "--tp-sides",
        default=",".join(DEFAULT_TP_SIDES),
        help=f"comma-separated, run in this order (A B A B); any of {', '.join(TP_SIDES)}",
    )
    p.add_argument("--tp-rule", default="adagrad", help="downpour's rule (hpcnet's default)")
    # adagrad
    p.add_argument(
        "--adagrad-lr", default="0.005", help="Adagrad's fixed lr (comma-separated: several runs)"
    )
    p.add_argument("--sgd-lr", default="0.02", help="the fixed SGD lr(s) compared")
    p.add_argument("--adagrad-epochs", type=int, default=1)
    p.add_argument(
        "--adagrad-max-steps", type=int, default=0, help="steps per replica (0: whole epochs)"
    )
    p.add_argument("--png", default=str(HERE / "downpour_adagrad.png"), help="the adagrad plot")
    # machine
    p.add_argument("--timeout", type=float, default=300, help="seconds per ps/throughput run")
    p.add_argument("--adagrad-timeout", type=float, default=1200, help="seconds per adagrad run")
    add_wait_idle(p)
    p.add_argument(
        "--wait-idle-adagrad",
        type=float,
        default=600.0,
        help="the same before each (minutes-long) adagrad run",
    )
    p.add_argument("--runs-dir", default=None, help="where training runs write (default: /tmp)")
    p.add_argument("--keep-runs", action="store_true", help="keep the runs' OUT directories")
    p.add_argument("--json", default=None, help="write every raw figure here")
    p.add_argument(
        "--from-json",
        default=None,
        help="run nothing: print the tables of this earlier --json file, redraw --png",
    )
    # worker (internal)
    p.add_argument("--worker", choices=("ps",), help=argparse.SUPPRESS)
    p.add_argument("--side", choices=PS_SIDES, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def repeats_of(args: argparse.Namespace, part: str) -> int:
    """``--repeats``, or the part's default: 3 for ps and throughput, 1 for adagrad."""
    return args.repeats or {"ps": 3, "throughput": 3, "adagrad": 1}[part]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker == "ps":
        worker_ps(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
