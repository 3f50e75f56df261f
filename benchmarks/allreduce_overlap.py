"""sync's gradient allreduce: one after backward against buckets overlapped with backward.

For each zoo model, world size R and bucket size (``--bucket-mb``; 0 = today's one
``Allreduce`` of the whole flat gradient after backward), the driver launches a fresh
``mpiexec -n R python THIS --worker step ...`` whose ranks train ``sync``'s way: the
real :class:`hpcnet.algos.sync.SyncSGD` policy (its bucket hook passed to
``Model.loss_and_grad``), then SGD with momentum 0.9 on the flat vector. Every rank
times every step (no barrier between steps, as in a run):

* exposed communication: from the end of backward to all gradients averaged
  (``SyncSGD.after_backward``): the part of the allreduce that did not hide behind
  backward, plus waiting for a slower rank;
* step time: forward + backward (with the buckets' ``Iallreduce`` starts and
  ``Testall`` between layers) + exposed communication + SGD.

Per run the medians over the timed steps, per rank; the table gives the slowest
rank's step time and the range of the ranks' exposed times (the fastest rank waits
for the slowest one), median over repeats. One thread per rank: R = 2 fills this
machine's 2 cores, R = 4 oversubscribes them 2x (two ranks share a core, so MPI
progress and compute compete).

Inputs are real Fashion-MNIST rows (``N_BATCHES`` batches per rank, its own rows,
cycled). Fairness: fresh processes per run, warm-up steps not timed, configurations run
in order and then in reverse order on the next repeat, the machine waited on until
80 % idle before each run and runs during which other jobs took > 10 % of the CPU left
out of the medians (``_common.Disturbance``).

Usage::

    python benchmarks/allreduce_overlap.py [--models mlp,wide_mlp] [--ranks 2,4]
        [--bucket-mb 0,25,1,0.05] [--batch 64] [--steps N] [--repeats R] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    add_json_flags,
    add_wait_idle,
    clean_runs,
    dispatch,
    disturbance,
    emit,
    med,
    model_worker,
    mpiexec_path,
    run_for_result,
    run_meta,
    versions,
)

PROG = "allreduce_overlap"
SEED = 0
N_BATCHES = 4  # distinct batches per rank, cycled
STEPS = {"mlp": (200, 20), "wide_mlp": (20, 3)}  # default (timed, warm-up) steps per model


def worker_step(args: argparse.Namespace) -> None:
    """Times ``args.steps`` sync steps on every rank of COMM_WORLD (every rank runs it
    with the same arguments; rank 0 prints the result)."""
    from hpcnet.algos.sync import SyncSGD
    from hpcnet.optim.sgd import SGD

    r_size = int(args.world_size)
    w = model_worker(args.model, args.data, N_BATCHES * args.batch * r_size, args.batch, 1, SEED,
                     False)  # fmt: skip
    comm, rank, model, be = w.comm, w.rank, w.model, w.backend
    xs, ys = w.xs[rank::r_size], w.ys[rank::r_size]  # this rank's own batches
    policy = SyncSGD(comm, args.bucket_mb, model)
    kw = {"on_grad_ready": policy.on_grad_ready} if policy.on_grad_ready else {}
    opt = SGD(model.n_params, momentum=0.9)
    recs = []
    for s in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        model.loss_and_grad(xs[s % len(xs)], ys[s % len(ys)], be, **kw)
        t1 = time.perf_counter()
        policy.after_backward(model.grads)
        t2 = time.perf_counter()
        opt.step(model.params, model.grads, 0.01)
        t3 = time.perf_counter()
        if s >= args.warmup:
            recs.append((t3 - t0, t1 - t0, t2 - t1, t3 - t2))
    a = np.array(recs) * 1e3  # (steps, 4) ms: step, fwd+bwd, exposed, sgd
    mine = {
        "step_ms": float(np.median(a[:, 0])),
        "fwd_bwd_ms": float(np.median(a[:, 1])),
        "exposed_ms": float(np.median(a[:, 2])),
        "sgd_ms": float(np.median(a[:, 3])),
    }
    same = comm.allgather(float(model.params[: 1 << 16].sum()))  # replicas stay identical
    everyone = comm.gather(mine, root=0)
    if rank == 0:
        emit(
            {
                "ranks": everyone,
                "n_params": model.n_params,
                "buckets": policy.buckets.describe() if policy.buckets else "one allreduce",
                "n_buckets": len(policy.buckets.plan) if policy.buckets else 1,
                "replicas_equal": len(set(same)) == 1,
            }
        )


def step_cmd(mpiexec: str, model: str, r: int, mb: float, args: argparse.Namespace) -> list[str]:
    steps, warmup = STEPS.get(model, (50, 5))
    return [
        mpiexec, "-n", str(r), sys.executable, str(Path(__file__).resolve()),
        "--worker", "step", "--model", model, "--world-size", str(r), "--bucket-mb", str(mb),
        "--batch", str(args.batch), "--steps", str(args.steps or steps),
        "--warmup", str(args.warmup if args.warmup >= 0 else warmup), "--data", args.data,
    ]  # fmt: skip


def summarize(runs: list[dict]) -> list[dict]:
    """Per (model, R, bucket MiB): medians over the undisturbed runs (all if none was)."""
    rows = []
    for key in dict.fromkeys((r["model"], r["R"], r["bucket_mb"]) for r in runs):
        every = [r for r in runs if (r["model"], r["R"], r["bucket_mb"]) == key]
        used = clean_runs(every)
        rows.append(
            {
                "model": key[0],
                "R": key[1],
                "bucket_mb": key[2],
                "buckets": used[0]["n_buckets"],
                "step_ms": med(max(x["step_ms"] for x in r["ranks"]) for r in used),
                "fwd_bwd_ms": med(max(x["fwd_bwd_ms"] for x in r["ranks"]) for r in used),
                "exposed_min_ms": med(min(x["exposed_ms"] for x in r["ranks"]) for r in used),
                "exposed_max_ms": med(max(x["exposed_ms"] for x in r["ranks"]) for r in used),
                "runs_used": len(used),
                "runs": len(every),
                "all_disturbed": not any(r["clean"] for r in every),
                "others": max(r["cpu_others_during"] or 0.0 for r in every),
            }
        )
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        "\n| model | R (ranks x 1 thread) | --bucket-mb | buckets | step ms (slowest rank) "
        "| fwd+bwd ms | exposed comm ms (ranks min-max) | step vs one allreduce | runs "
        "| other jobs (max) |"
    )
    print("|" + "---|" * 10)
    for r in rows:
        base = next(
            b for b in rows if (b["model"], b["R"], b["bucket_mb"]) == (r["model"], r["R"], 0.0)
        )
        used = f"{r['runs_used']}/{r['runs']}" + ("!" if r["all_disturbed"] else "")
        mb = "0 (one after backward)" if r["bucket_mb"] == 0 else f"{r['bucket_mb']:g}"
        print(
            f"| {r['model']} | {r['R']}{' (2x oversubscribed)' if r['R'] > 2 else ''} | {mb} | "
            f"{r['buckets']} | {r['step_ms']:.1f} | {r['fwd_bwd_ms']:.1f} | "
            f"{r['exposed_min_ms']:.1f}-{r['exposed_max_ms']:.1f} | "
            f"{base['step_ms'] / r['step_ms']:.2f}x | {used} | {r['others']:.0%} |"
        )


def driver(args: argparse.Namespace) -> None:
    from hpcnet.data.registry import resolve_data

    args.data = str(resolve_data(args.data))  # convert Fashion-MNIST once, here
    mpiexec = mpiexec_path(PROG)
    sizes = [0.0, *(mb for mb in args.bucket_mb if mb > 0)]
    configs = [(m, r, mb) for m in args.models for r in args.ranks for mb in sizes]
    runs = []
    for rep in range(args.repeats):
        for model, r, mb in configs if rep % 2 == 0 else configs[::-1]:
            what = f"{model} R={r} bucket-mb={mb:g}"
            res = run_for_result(
                step_cmd(mpiexec, model, r, mb, args), what, PROG,
                timeout=args.timeout, wait_idle=args.wait_idle,
            )  # fmt: skip
            res.update(model=model, R=r, bucket_mb=mb)
            if not res["replicas_equal"]:
                sys.exit(f"{PROG}: {what}: the replicas' parameters differ")
            runs.append(res)
            slow = max(x["step_ms"] for x in res["ranks"])
            exp = [x["exposed_ms"] for x in res["ranks"]]
            print(
                f"{what}: step {slow:.1f} ms, exposed {min(exp):.1f}-{max(exp):.1f} ms "
                f"({res['buckets']}); {disturbance(res)}",
                flush=True,
            )
    report = {"meta": run_meta(), "versions": versions(), "args": vars(args), "runs": runs}
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    print_table(summarize(runs))


def replay(args: argparse.Namespace) -> None:
    print_table(summarize(json.loads(Path(args.from_json).read_text())["runs"]))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="mlp,wide_mlp", type=lambda s: s.split(","))
    p.add_argument("--ranks", default="2,4", type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument(
        "--bucket-mb",
        default="25,1,0.05",
        type=lambda s: [float(v) for v in s.split(",")],
        help="bucket sizes (MiB) to compare with one allreduce after backward (always run)",
    )
    p.add_argument("--batch", type=int, default=64, help="samples per rank per step")
    p.add_argument("--steps", type=int, default=0, help="timed steps (0: per model default)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed steps (-1: per model)")
    p.add_argument("--repeats", type=int, default=2, help="runs of every configuration")
    p.add_argument("--data", default="fashion-mnist", help="data set name or .h5 path")
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    add_wait_idle(p)
    add_json_flags(p, "print the table of an earlier --json run, measuring nothing")
    p.add_argument("--worker", choices=("step",), help=argparse.SUPPRESS)
    p.add_argument("--model", help=argparse.SUPPRESS)
    p.add_argument("--world-size", type=int, default=1, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:  # a worker's --bucket-mb is one size
        args.bucket_mb = args.bucket_mb[0]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    dispatch(args, replay if args.from_json else driver, step=worker_step)


if __name__ == "__main__":
    main()
