"""Downpour's parameter server: its fetch and push against raw mpi4py RMA.

2 ranks (1 shard + 1 replica), float32 vectors of ``--ps-sizes`` elements (default
100 K and 2conv's 3.27 M), each side a fresh ``mpiexec`` job, on a machine that the
driver waits to be idle before every run (and whose other jobs' CPU it measures from
/proc/stat, flagging disturbed runs):

* ``hpcnet``: :func:`hpcnet.ps.windows.create_shard_windows`, a
  :class:`~hpcnet.ps.shard.ShardService` (rule ``sgd``) on rank 0, a
  :class:`~hpcnet.ps.client.ShardClient` on rank 1 timing ``fetch`` and ``push`` per
  call, with a simulated compute gap (``--gap``, 20 ms) between them so the shard
  has applied the previous push, as in training. ``--gap-kind spin`` (the default)
  keeps the replica's CPU busy through the gap, as a computing replica's is;
  ``sleep`` idles it, and then the first MPI calls after the gap pay a wake-up of
  ~0.05-0.1 ms on a virtual machine, which dominates a 100 K call;
* ``raw``: one ``MPI.Win.Allocate`` window of the same bytes (same info hints) on
  rank 0, which sits in a sleeping ``Ibarrier`` + ``Test`` poll loop; rank 1 holds
  ``Lock_all`` for the whole loop and times ``Get`` + ``Flush`` and, on alternate
  iterations, ``Put`` + ``Flush`` (what hpcnet's push does since issue 14: a
  client's slot is its own) and ``Accumulate(SUM)`` + ``Flush`` (what a shared slot
  would need).

Sides alternate hpcnet, raw, hpcnet, raw.

Usage::

    python -m hpcnet bench ps [--ps-sizes 100000,2conv] [--repeats R] [--json OUT.json]
    python benchmarks/ps_vs_rma.py --from-json OUT.json   # the table again, no runs
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import _driver
import numpy as np
from _common import (
    clean_runs,
    dispatch,
    disturbance,
    emit,
    idle_target,
    med,
    mpi_worker,
    raw_target_window,
    run_for_result,
    table_head,
)

PROG = "ps_vs_rma"
PART = "ps"  # its key in the --json file
PS_LR = 1e-4  # the hpcnet side's shard applies SGD at this rate (values do not matter)
PS_SIDES = ("hpcnet", "raw")


# --------------------------------------------------------------------------- worker
def _gap(args: argparse.Namespace) -> None:
    """The replica's compute between a fetch and a push: ``args.gap`` seconds, busy
    (``spin``: the CPU stays awake, as a computing replica's does) or idle (``sleep``)."""
    if args.gap_kind == "sleep":
        time.sleep(args.gap)
        return
    end = time.perf_counter() + args.gap
    while time.perf_counter() < end:
        pass


def worker_ps(args: argparse.Namespace) -> None:
    """One side; SPMD over 2 ranks (shard/target 0, replica/origin 1)."""
    comm, _ = mpi_worker()
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
                "gap_kind": args.gap_kind,
                "calls_s": calls[1],  # the replica's (origin's) per-call times
                "shard": shards[0],
            }
        )


def _ps_hpcnet(comm, n, grads, params, args) -> tuple[dict | None, dict | None]:
    from dataclasses import asdict

    from hpcnet.comm import barrier_polling
    from hpcnet.optim.rules import make_rule
    from hpcnet.ps import windows as W
    from hpcnet.ps.client import ShardClient
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
            _gap(args)  # the replica computes; the shard applies the last push
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

    win = raw_target_window(comm, 4 * n)
    calls = None
    if comm.Get_rank() == 0:
        idle_target(comm)
    else:
        get, acc, put = [], [], []
        win.Lock_all(MPI.MODE_NOCHECK)
        for i in range(args.warmup + 2 * args.iters):
            t0 = time.perf_counter()
            win.Get(params, 0, (0, n, MPI.FLOAT))
            win.Flush(0)
            t1 = time.perf_counter()
            _gap(args)
            t2 = time.perf_counter()
            if i % 2:  # hpcnet's push is a Put (a client's own, empty slot)
                win.Put(grads, 0, (0, n, MPI.FLOAT))
            else:  # what a slot shared by several clients would need
                win.Accumulate(grads, 0, (0, n, MPI.FLOAT), MPI.SUM)
            win.Flush(0)
            t3 = time.perf_counter()
            if i >= args.warmup:
                get.append(t1 - t0)
                (put if i % 2 else acc).append(t3 - t2)
        win.Unlock_all()
        comm.Ibarrier().Wait()
        calls = {"get": get, "accumulate": acc, "put": put}
    win.Free()
    return calls, None


# --------------------------------------------------------------------------- driver


def run_ps(side: str, n: int, args, mpiexec: str) -> dict:
    cmd = [
        mpiexec, "-n", "2", sys.executable, str(Path(__file__).resolve()),
        "--worker", "ps", "--side", side, "--n", str(n), "--iters", str(args.ps_iters),
        "--warmup", str(args.ps_warmup), "--gap", str(args.gap), "--gap-kind", args.gap_kind,
    ]  # fmt: skip
    return run_for_result(
        cmd, f"ps {side} n={n}", PROG, timeout=args.timeout, wait_idle=args.wait_idle
    )


def summarize_ps(runs: list[dict], sizes: list[int]) -> list[dict]:
    """One row per (size, operation): median over runs of the per-run median call time."""
    rows = []
    pairs = (  # (operation, hpcnet key, raw key); hpcnet's push is a Put since issue 14
        ("fetch (Get)", "fetch", "get"),
        ("push excl. wait (Put)", "push_excl_wait", "put"),
        ("push incl. wait (Put)", "push_incl_wait", "put"),
        ("push excl. wait (Accumulate)", "push_excl_wait", "accumulate"),
    )
    for n in sizes:
        by_side = {}
        for side in PS_SIDES:
            every = [r for r in runs if r["n"] == n and r["side"] == side]
            if every:
                by_side[side] = (clean_runs(every), every)
        if len(by_side) < 2:
            continue
        (hp, hp_all), (raw, raw_all) = by_side["hpcnet"], by_side["raw"]
        disturbed = not any(r["clean"] for r in hp_all) or not any(r["clean"] for r in raw_all)
        for op, hk, rk in pairs:
            if any(rk not in r["calls_s"] for r in raw):
                continue  # a --from-json file from before the raw side timed a Put
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
                    "runs": f"{len(hp)}/{len(hp_all)}+{len(raw)}/{len(raw_all)}"
                    + ("!" if disturbed else ""),
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


def print_ps(rows: list[dict]) -> None:
    table_head(
        f"{'elements':>9} {'MB':>5}  {'operation':<29} {'hpcnet ms':>9} {'raw ms':>7} "
        f"{'raw/hpcnet':>10}  runs",
        "ps: parameter-server call time against raw mpi4py RMA (2 ranks, median)",
    )
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


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        _, ps = _driver.load(args.from_json, PART, PROG)
        print_ps(summarize_ps(ps["runs"], ps["sizes"]))
        return
    sizes = ps_sizes(args.ps_sizes)
    meta, mpiexec = _driver.start(PROG, PART, args)
    runs = []
    for rep in range(args.repeats):
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
    _driver.save(args.json, meta, PART, {"sizes": sizes, "summary": rows, "runs": runs})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _driver.add_run_flags(p, repeats=3)
    p.add_argument("--ps-sizes", default="100000,2conv", help="elements (or a zoo model's count)")
    p.add_argument("--ps-iters", type=int, default=100, help="timed fetch+push pairs per run")
    p.add_argument("--ps-warmup", type=int, default=10, help="untimed pairs first")
    p.add_argument("--gap", type=float, default=0.02, help="seconds of simulated compute")
    p.add_argument(
        "--gap-kind",
        choices=("spin", "sleep"),
        default="spin",
        help="the replica's CPU through the gap: busy (spin, as while computing) or idle",
    )
    _driver.add_timeout_flags(p)
    # worker (internal)
    p.add_argument("--worker", choices=("ps",), help=argparse.SUPPRESS)
    p.add_argument("--side", choices=PS_SIDES, help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--iters", type=int, default=100, help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=10, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    dispatch(parse_args(argv), driver, ps=worker_ps)


if __name__ == "__main__":
    main()
