"""Bounded staleness (SSP) for Downpour: waiting against progress, with a straggler.

Ho et al. 2013 (NIPS, "More Effective Distributed ML via a Stale Synchronous Parallel
Parameter Server"), sec. 2-3 and fig. 3-4: a small staleness bound ``s`` makes the
fast workers wait for the slowest (``s = 0`` is lock-step); a larger one lets them run
ahead on staler parameters. Here: ``python -m hpcnet train --algo downpour --shards 1``
on 4 ranks (1 shard + 3 replicas) on the digits with replica 0 slowed
(``--slow-replica 0 --slow-factor F``), once for every ``--max-staleness s`` in
``--s-values`` (``none``: plain Downpour). From each run's OUT/summary.json: the wall
time of training, the replicas' idle fraction (seconds waiting at the SSP gate / the
replicas' wall seconds), the largest clock gap they saw (must be <= s), the final test
accuracy; from OUT/metrics.jsonl: the training time until the window training
accuracy of the progress records first reached ``--target`` (no test evaluation
happens during a run, so the fixed accuracy is a training one). One table, one PNG.

    python benchmarks/ssp_tradeoff.py [--s-values 0,1,2,4,8,none] [--slow-factor 3]
        [--epochs 12] [--lr 0.02] [--target 0.9] [--png benchmarks/ssp_tradeoff.png]
        [--json OUT.json]
    python benchmarks/ssp_tradeoff.py --from-json OUT.json   # the table again, no runs

Needs matplotlib for the plot (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import _common
import _driver
from _common import disturbance, table_head

PROG = "ssp_tradeoff"
PART = "ssp"  # its key in the --json file
HERE = Path(__file__).resolve().parent
RANKS = 4  # 1 shard + 3 replicas


def time_to(records: list[dict], target: float) -> float | None:
    """Seconds of training until the first progress record whose window training
    accuracy is >= ``target`` (None: never)."""
    for r in records:
        if r.get("accuracy", 0.0) >= target:
            return float(r["elapsed_s"])
    return None


def row_of(s_value: str, r: dict, target: float) -> dict:
    """A table row from one run (:func:`_driver.run_train`'s result)."""
    s = r["summary"]
    ssp = s.get("ssp") or {}
    reps = [x for x in s["replicas"] if x["partition"] == 0]
    wall = sum(x["wall_s"] for x in reps)
    return {
        "s": s_value,
        "train_s": s["train_s"],
        "idle_fraction": ssp.get("wait_fraction", 0.0),
        "wait_s": (ssp.get("wait_s") or {}).get("per_replica", [0.0] * len(reps)),
        "max_clock_gap": ssp.get("max_clock_gap"),
        "time_to_target_s": time_to(r["records"], target),
        "test_accuracy": s["test_accuracy"],
        "staleness_mean": s["staleness"]["mean"],
        "replica_wall_s": wall,
        "clean": r["clean"],
    }


def print_table(rows: list[dict], target: float, slow_factor: float) -> None:
    table_head(
        f"{'s':>5} {'train s':>8} {'idle':>6} {'wait s (r0 r1 r2)':>19} {'max gap':>8} "
        f"{'to ' + format(target, '.0%'):>8} {'test acc':>9} {'stale':>6}",
        f"SSP trade-off: downpour 1 shard + 3 replicas, replica 0 {slow_factor:g}x slower",
    )
    for r in rows:
        waits = " ".join(f"{w:.1f}" for w in r["wait_s"])
        gap = "-" if r["max_clock_gap"] is None else str(r["max_clock_gap"])
        tt = "-" if r["time_to_target_s"] is None else f"{r['time_to_target_s']:.1f}"
        flag = "" if r["clean"] else "  (disturbed)"
        print(
            f"{r['s']:>5} {r['train_s']:>8.1f} {r['idle_fraction']:>6.1%} {waits:>19} "
            f"{gap:>8} {tt:>8} {r['test_accuracy']:>9.4f} {r['staleness_mean']:>6.2f}{flag}"
        )
    print(
        "train s: summary.json's train_s; idle: the replicas' seconds waiting at the SSP gate "
        "/ their wall seconds;\nmax gap: the largest own clock - min live clock at a step's "
        f"start (steps, <= s); to {target:.0%}: training seconds until a progress record's "
        "window training accuracy\nreached it; test acc: the final parameters; stale: mean "
        "push staleness at the shard (versions)"
    )


def plot(rows: list[dict], png: Path, title: str) -> None:
    plt = _common.pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    xs = list(range(len(rows)))
    labels = [r["s"] for r in rows]
    ax.bar(xs, [r["idle_fraction"] for r in rows], color="tab:orange", alpha=0.6)
    ax.set(xlabel="--max-staleness s", ylabel="replicas' idle fraction (SSP wait)")
    ax.set_xticks(xs, labels)
    ax2 = ax.twinx()
    tt = [r["time_to_target_s"] for r in rows]
    ax2.plot(
        [x for x, t in zip(xs, tt, strict=True) if t is not None],
        [t for t in tt if t is not None],
        "o-",
        color="tab:blue",
        label="time to target training accuracy",
    )
    ax2.plot(xs, [r["train_s"] for r in rows], "s--", color="tab:gray", label="training wall time")
    ax2.set_ylabel("seconds")
    ax2.set_ylim(bottom=0)
    ax2.legend(loc="upper right", fontsize=8)
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        _, part = _driver.load(args.from_json, PART, PROG)
        print_table(part["rows"], part["target"], part["slow_factor"])
        return
    meta, mpiexec = _driver.start(PROG, PART, args)
    s_values = [x.strip() for x in args.s_values.split(",") if x.strip()]
    common = [
        "--algo", "downpour", "--shards", "1", "--data", args.data, "--epochs", str(args.epochs),
        "--batch-size", str(args.batch_size), "--threads", "1", "--seed", "0",
        "--slow-replica", "0", "--slow-factor", str(args.slow_factor),
        "--log-every", str(args.log_every), "--no-tensorboard", "--lr", str(args.lr),
    ]  # fmt: skip
    rows, runs = [], []
    for sv in s_values:
        flags = [*common] + ([] if sv == "none" else ["--max-staleness", sv])
        r = _driver.run_train(
            PROG, f"ssp-{sv}", RANKS, flags, f"ssp s={sv}", mpiexec,
            runs_dir=args.runs_dir, timeout=args.timeout, wait_idle=args.wait_idle,
        )  # fmt: skip
        row = row_of(sv, r, args.target)
        rows.append(row)
        runs.append(r)
        print(
            f"  s={sv:<5} train {row['train_s']:6.1f} s, idle {row['idle_fraction']:.1%}, "
            f"test accuracy {row['test_accuracy']:.4f}  ({disturbance(r)})",
            flush=True,
        )
        if not args.keep_runs:
            shutil.rmtree(r["out"], ignore_errors=True)
    print_table(rows, args.target, args.slow_factor)
    title = (
        f"SSP: downpour 1 shard + 3 replicas, digits, replica 0 {args.slow_factor:g}x slower, "
        f"{args.epochs} epochs ({meta['date'][:10]}, {meta['machine']['cpus']} CPUs, shared)"
    )
    plot(rows, Path(args.png), title)
    print(f"plot: {args.png}")
    result = {"target": args.target, "slow_factor": args.slow_factor, "rows": rows, "runs": runs}
    _driver.save(args.json, meta, PART, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _common.add_json_flags(p, "run nothing: print the table of this earlier --json file again")
    p.set_defaults(repeats=1)  # one run per s (_driver.start checks it)
    _driver.add_train_flags(p)
    p.set_defaults(data="digits")
    p.add_argument("--s-values", default="0,1,2,4,8,none", help="--max-staleness values")
    p.add_argument("--slow-factor", type=float, default=3.0, help="replica 0's slowdown")
    p.add_argument("--epochs", type=int, default=12, help="epochs per replica")
    p.add_argument(
        "--lr", type=float, default=0.02, help="Adagrad's rate (hpcnet's 0.05 diverges here)"
    )
    p.add_argument("--log-every", type=int, default=2, help="steps between progress records")
    p.add_argument("--target", type=float, default=0.9, help="training accuracy to reach")
    p.add_argument("--png", default=str(HERE / "ssp_tradeoff.png"), help="the plot")
    _driver.add_timeout_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    driver(parse_args(argv))


if __name__ == "__main__":
    main()
