"""Downpour's training throughput against sync on the same cores.

``python -m hpcnet train --algo downpour --shards 1`` on 3 ranks (1 shard + 2
replicas) against ``--algo sync`` on 2 ranks: same model, same batch per replica,
``--threads 1``, a fixed ``--max-steps``; samples/s from OUT/summary.json, with the
replicas' compute/fetch/push times and the shard's apply time and CPU use from the
same file. Each run is a fresh ``mpiexec`` job; sides alternate (A B A B) within each
repeat, on a machine that the driver waits to be idle before every run (and whose
other jobs' CPU it measures from /proc/stat, flagging disturbed runs). The table also
gives a *paired* ratio: side/sync over the repeats where both runs were undisturbed.

Usage::

    python -m hpcnet bench downpour [--tp-models 2conv,mlp] [--tp-sides downpour,sync]
        [--repeats R] [--json OUT.json]
    python benchmarks/downpour_vs_sync.py --from-json OUT.json   # the table again, no runs
"""

from __future__ import annotations

import argparse
import shutil
import sys

import _driver
import numpy as np
from _common import clean_runs, disturbance, med, table_head

PROG = "downpour_vs_sync"
PART = "throughput"  # its key in the --json file
# Sides: name -> (ranks, extra flags). The default sides are the first two; the others
# are diagnostics, opt-in with --tp-sides: DistBelief's n_fetch = n_push > 1 (fewer,
# larger messages), and plain SGD at the shard (a cheaper update than Adagrad).
TP_SIDES = {
    "downpour": (3, ["--algo", "downpour", "--shards", "1"]),
    "sync": (2, ["--algo", "sync"]),
    "downpour-n4": (3, ["--algo", "downpour", "--shards", "1", "--n-fetch", "4", "--n-push", "4"]),
    "downpour-sgd": (3, ["--algo", "downpour", "--shards", "1", "--ps-rule", "sgd"]),
}
DEFAULT_TP_SIDES = ("downpour", "sync")
TP_STEPS = {"2conv": 60, "mlp": 1000}  # --max-steps per replica
REPLICAS = 2  # of every side


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


def steady_rate(records: list[dict], samples_per_step: int) -> float | None:
    """Samples/s between the first and the last progress record (leaves out start-up
    and the first steps: Numba cache loading, first-touch allocation)."""
    if len(records) < 2:
        return None
    a, b = records[0], records[-1]
    dt = b["elapsed_s"] - a["elapsed_s"]
    return (b["step"] - a["step"]) * samples_per_step / dt if dt > 0 else None


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
            used = clean_runs(every)
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
                "all_disturbed": not any(r["clean"] for r in every),
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


def print_tp(rows: list[dict]) -> None:
    table_head(
        f"{'model':<6} {'side':<12} {'samples/s':>9} {'min-max':>13} {'steady':>7} "
        f"{'/sync':>6} {'steady/sync':>11} {'paired':>9} {'runs':>5} {'ms/step':>8}",
        "throughput: downpour (1 shard + 2 replicas: 3 ranks) against sync (2 ranks)",
    )
    for r in rows:
        steady = f"{r['steady_samples_per_s']:,.0f}" if r["steady_samples_per_s"] else "-"
        ratio = f"{r['vs_sync']:.2f}" if r.get("vs_sync") else "-"
        sratio = f"{r['steady_vs_sync']:.2f}" if r.get("steady_vs_sync") else "-"
        paired = (
            f"{r['paired_vs_sync']:.2f} ({r['clean_pairs']})"
            if r.get("paired_vs_sync") and r["side"] != "sync"
            else "-"
        )
        used = f"{r['runs_used']}/{r['runs']}" + ("!" if r["all_disturbed"] else "")
        print(
            f"{r['model']:<6} {r['side']:<12} {r['samples_per_s']:>9,.0f} "
            f"{r['min']:>6,.0f}-{r['max']:<6,.0f} {steady:>7} {ratio:>6} {sratio:>11} {paired:>9} "
            f"{used:>5} {r['ms_per_step']:>8.1f}"
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


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        _, tp = _driver.load(args.from_json, PART, PROG)
        print_tp(summarize_tp(tp["runs"], tp["models"], tp.get("sides", list(DEFAULT_TP_SIDES))))
        return
    models = [m for m in args.tp_models.split(",") if m]
    sides = [x for x in args.tp_sides.split(",") if x]
    bad = [x for x in sides if x not in TP_SIDES]
    if bad or "sync" not in sides:
        sys.exit(f"{PROG}: --tp-sides: need sync and any of {', '.join(TP_SIDES)}; got {bad}")
    meta, mpiexec = _driver.start(PROG, PART, args)
    runs = []
    for rep in range(args.repeats):
        for model in models:
            for side in sides:
                procs, flags = tp_flags(side, model, args)
                r = _driver.run_train(
                    PROG, side, procs, flags, f"throughput {side} {model}", mpiexec,
                    runs_dir=args.runs_dir, timeout=args.timeout, wait_idle=args.wait_idle,
                )  # fmt: skip
                s = r["summary"]
                dp = side.startswith("downpour")  # its records count steps of all replicas
                r.update(side=side, model=model, repeat=rep)
                r["steps_per_rank"] = s["steps"] / REPLICAS if dp else s["steps"]
                r["steady_samples_per_s"] = steady_rate(
                    r["records"], args.batch_size * (1 if dp else REPLICAS)
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
    result = {"models": models, "sides": sides, "summary": rows, "runs": runs}
    _driver.save(args.json, meta, PART, result)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _driver.add_run_flags(p, repeats=3)
    _driver.add_train_flags(p)
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
    _driver.add_timeout_flags(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    driver(parse_args(argv))


if __name__ == "__main__":
    main()
