"""Downpour with Adagrad at the shard against Downpour with plain SGD at a fixed rate.

1 shard + 3 replicas (4 ranks), Fashion-MNIST, 2conv, 1 epoch; both with a constant
learning rate and no warmup, so the update rule is the only difference. Each run is a
fresh ``mpiexec -n 4 python -m hpcnet train`` job, rules alternating (A B A B), on a
machine that the driver waits to be idle before every run (and whose other jobs' CPU
it measures from /proc/stat, flagging disturbed runs). Prints the test figures and
the last training records, and plots training accuracy and loss against wall time,
and the test figures at the end, to ``--png`` (default benchmarks/downpour_adagrad.png).

Usage::

    python -m hpcnet bench adagrad [--adagrad-lr 0.005] [--sgd-lr 0.01,0.02]
        [--repeats R] [--json OUT.json] [--png PLOT.png]
    python benchmarks/adagrad_vs_sgd.py --from-json OUT.json   # table + plot again, no runs

Needs matplotlib for the plot (a benchmark-only dependency).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import _driver
import numpy as np
from _common import disturbance, pyplot, table_head

PROG = "adagrad_vs_sgd"
PART = "adagrad"  # its key in the --json file
HERE = Path(__file__).resolve().parent


def adagrad_configs(args) -> list[tuple[str, float]]:
    """(rule, lr) of every run, rules alternating (A B A B)."""
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


def time_to(records: list[dict], acc: float) -> float | None:
    """Seconds to the first training record with accuracy >= ``acc`` (None: never)."""
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


def print_adagrad(rows: list[dict]) -> None:
    table_head(
        f"{'rule':<8} {'lr':>6} {'rep':>3} {'test acc':>8} {'test loss':>9} {'train loss':>10} "
        f"{'train acc':>9} {'train s':>7} {'samples/s':>9} {'stale':>5} {'t(acc>=.8)':>10}",
        "adagrad: downpour 1 shard + 3 replicas, Fashion-MNIST, 2conv (last records)",
    )
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
    plt = pyplot()
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


def plot_title(batch: int, epochs: int) -> str:
    return (
        f"Downpour, 1 shard + 3 replicas (2 vCPUs), Fashion-MNIST, 2conv, batch "
        f"{batch}/replica, {epochs} epoch(s), constant lr"
    )


def replay(args: argparse.Namespace) -> None:
    """Prints the table of an earlier ``--json`` file again (from its raw runs) and
    redraws its plot to ``--png``; runs nothing."""
    data, part = _driver.load(args.from_json, PART, PROG)
    runs = part["runs"]
    print_adagrad(summarize_adagrad(runs))
    cfg = data["config"]
    title = plot_title(cfg["batch_size"], cfg["adagrad_epochs"])
    plot_adagrad(runs, Path(args.png), title, cfg["batch_size"])
    print(f"# plot written to {args.png}")


def driver(args: argparse.Namespace) -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        sys.exit(f"{PROG}: the plot needs matplotlib: pip install matplotlib")
    if args.from_json:
        replay(args)
        return
    meta, mpiexec = _driver.start(PROG, PART, args)
    runs = []
    for rep in range(args.repeats):
        for rule, lr in adagrad_configs(args):
            flags = adagrad_flags(rule, lr, args)
            r = _driver.run_train(
                PROG, rule, 4, flags, f"adagrad part, rule {rule} lr {lr:g}", mpiexec,
                runs_dir=args.runs_dir, timeout=args.adagrad_timeout,
                wait_idle=args.wait_idle_adagrad,
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
    plot_adagrad(runs, png, plot_title(args.batch_size, args.adagrad_epochs), args.batch_size)
    print(f"# plot written to {png} ({png.stat().st_size / 1024:.0f} KB)")
    _driver.save(args.json, meta, PART, {"summary": rows, "runs": runs, "png": str(png)})


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    _driver.add_run_flags(
        p,
        repeats=1,
        replay="run nothing: print the table of this earlier --json file, redraw --png",
    )
    _driver.add_train_flags(p)
    p.add_argument(
        "--adagrad-lr", default="0.005", help="Adagrad's fixed lr (comma-separated: several runs)"
    )
    p.add_argument("--sgd-lr", default="0.02", help="the fixed SGD lr(s) compared")
    p.add_argument("--adagrad-epochs", type=int, default=1)
    p.add_argument(
        "--adagrad-max-steps", type=int, default=0, help="steps per replica (0: whole epochs)"
    )
    p.add_argument("--png", default=str(HERE / "downpour_adagrad.png"), help="the plot")
    p.add_argument("--adagrad-timeout", type=float, default=1200, help="seconds per run")
    p.add_argument(
        "--wait-idle-adagrad",
        type=float,
        default=600.0,
        help="seconds to wait, before each (minutes-long) run, for the machine to be 80%% idle",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    driver(parse_args(argv))


if __name__ == "__main__":
    main()
