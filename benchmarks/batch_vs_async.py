"""Sandblaster L-BFGS against Downpour + Adagrad and synchronous SGD on Fashion-MNIST:
training loss and test accuracy against wall time, the same ranks for all three
(the DistBelief comparison, Dean et al. 2012 fig. 4-5).

Each algorithm runs as ``mpiexec -n RANKS python -m hpcnet train`` with a few
budgets (epochs; for Sandblaster an epoch is one evaluation pass); the training
loss curve comes from the longest run's metrics.jsonl, each run adds one
(wall time, test accuracy) point from its summary.json. Runs wait for an idle
machine and record how much CPU other jobs took (``_common.Disturbance``).

    python -m hpcnet bench batch [--ranks 5] [--model mlp] [--png OUT.png]
    python benchmarks/batch_vs_async.py ...   # the same

Needs matplotlib for the plot (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import _common
import _driver

PROG = "batch_vs_async"
HERE = Path(__file__).resolve().parent


def algos(ranks: int) -> dict[str, list[str]]:
    """The three contenders on ``ranks`` ranks: flags and budgets."""
    return {
        "sync": ["--algo", "sync"],
        "downpour+adagrad": ["--algo", "downpour", "--shards", "1", "--ps-rule", "adagrad"],
        "sandblaster": ["--algo", "sandblaster", "--shards", "2"],
    }


def run(mpiexec, ranks, flags, out, timeout, wait_idle) -> dict:
    """One ``python -m hpcnet train`` job writing to ``out``: its test figures, its
    training loss curve [(elapsed s, loss)] and how quiet the machine was (whose
    ``wall_s``, the job's wall time, replaces summary.json's)."""
    cmd = _driver.train_cmd(mpiexec, ranks, out, flags)
    _, d = _common.run_job(cmd, out.name, PROG, timeout=timeout, wait_idle=wait_idle)
    summary, recs = _driver.read_run(out)
    curve = [(r["elapsed_s"], r["loss"]) for r in recs]
    return {
        "flags": flags,
        "test_accuracy": summary["test_accuracy"],
        "test_loss": summary["test_loss"],
        "wall_s": summary["wall_s"],
        "train_s": summary["train_s"],
        "loss_curve": curve,
        **d,
    }


def plot(results: dict, png: Path, title: str) -> None:
    plt = _common.pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, runs in results.items():
        longest = max(runs, key=lambda r: r["wall_s"])
        t, loss = zip(*longest["loss_curve"], strict=True)
        a1.plot(t, loss, label=name)
        pts = sorted((r["wall_s"], r["test_accuracy"]) for r in runs)
        a2.plot(*zip(*pts, strict=True), marker="o", label=name)
    a1.set(
        xlabel="wall time (s)",
        ylabel="training loss",
        yscale="log",
        title="training loss (metrics.jsonl)",
    )
    a2.set(
        xlabel="wall time of the run (s)",
        ylabel="test accuracy",
        title="test accuracy, one run per budget",
    )
    for a in (a1, a2):
        a.grid(alpha=0.3)
        a.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(png, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=5)
    ap.add_argument("--model", default="mlp")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", default="1,2,4", help="budgets for sync and downpour")
    ap.add_argument("--passes", default="4,8,16", help="budgets for sandblaster")
    ap.add_argument("--timeout", type=float, default=900)
    _common.add_wait_idle(ap)
    ap.add_argument("--png", type=Path, default=HERE / "batch_vs_async.png")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    mpiexec = _common.mpiexec_path(PROG)
    common = ["--data", args.data, "--model", args.model, "--threads", "1", "--seed", "0"]
    results: dict[str, list[dict]] = {}
    tmp = Path(tempfile.mkdtemp(prefix="bva-"))
    for name, flags in algos(args.ranks).items():
        budgets = args.passes if name == "sandblaster" else args.epochs
        for b in budgets.split(","):
            out = tmp / f"{name}-{b}"
            t = time.perf_counter()
            r = run(
                mpiexec,
                args.ranks,
                [*flags, *common, "--epochs", b],
                out,
                args.timeout,
                args.wait_idle,
            )
            r["budget_epochs"] = int(b)
            results.setdefault(name, []).append(r)
            print(
                f"{name:<18} epochs {b:>3}: test accuracy {r['test_accuracy']:.4f}  "
                f"wall {r['wall_s']:6.1f} s  ({_common.disturbance(r)}; "
                f"{time.perf_counter() - t:.0f} s)",
                flush=True,
            )
    shutil.rmtree(tmp, ignore_errors=True)
    title = f"{args.data}, {args.model}, {args.ranks} ranks, 2 vCPU ({time.strftime('%Y-%m-%d')})"
    plot(results, args.png, title)
    print(f"plot: {args.png}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {"results": results, "versions": _common.versions(), "env": _common.env_info()},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
