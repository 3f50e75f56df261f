"""Gradient compression (``sync --compress fp16|bf16``) against float32 on the same
ranks, in one run: test accuracy, bytes each replica handed to the allreduce, their
ratio, seconds spent encoding and decoding, and training time, per method.

Each method runs as ``mpiexec -n RANKS python -m hpcnet train --algo sync --compress M``
on the same data, model, seed and budget, one after the other on a quiet machine
(``_common.Disturbance`` reports how quiet). On one machine the allreduce moves through
shared memory, where bytes cost little: this measures what compression costs and what
it does to accuracy, not what it saves on a network (issue 29: an emulated slow link is
the next step).

    python -m hpcnet bench compress [--ranks 2] [--model 2conv] [--epochs 2]
    python benchmarks/compress.py ...   # the same

Prints a Markdown table; ``--json FILE`` keeps every figure with the versions.
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import _common
import _driver

PROG = "compress"
METHODS = ("none", "fp16", "bf16")


def run(mpiexec: str, ranks: int, flags: list[str], out: Path, args) -> dict:
    """One sync job with ``flags``: its summary's accuracy, time and compression."""
    cmd = _driver.train_cmd(mpiexec, ranks, out, flags)
    _, d = _common.run_job(cmd, out.name, PROG, timeout=args.timeout, wait_idle=args.wait_idle)
    summary, _ = _driver.read_run(out)
    c = summary.get("compression") or {}
    return {
        "test_accuracy": summary["test_accuracy"],
        "train_s": summary["train_s"],
        "samples_per_s": summary["samples_per_s"],
        "raw_bytes": c.get("raw_bytes"),
        "sent_bytes": c.get("sent_bytes"),
        "ratio": c.get("ratio") or 1.0,
        "compress_s": c.get("compress_s", 0.0),
        **d,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=2, help="replicas (sync)")
    ap.add_argument("--model", default="2conv")
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--methods", default=",".join(METHODS), help="comma list")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds per job")
    _common.add_wait_idle(ap)
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args()
    mpiexec = _common.mpiexec_path(PROG)
    common = ["--algo", "sync", "--data", args.data, "--model", args.model, "--seed", "0"]
    common += ["--epochs", str(args.epochs), "--threads", "1"]
    tmp = Path(tempfile.mkdtemp(prefix="compress-"))
    results = {}
    try:
        for m in args.methods.split(","):
            results[m] = run(mpiexec, args.ranks, [*common, "--compress", m], tmp / m, args)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = results.get("none")
    raw = next((r["raw_bytes"] for r in results.values() if r["raw_bytes"]), None)
    print(
        f"\n## sync, {args.ranks} replicas, {args.model} on {args.data}, {args.epochs} epochs "
        f"({_common.cpu_model()})\n"
    )
    print(
        "| method | test accuracy | vs float32 (pp) | bytes sent per replica | ratio | "
        "encode+decode s | train s | machine |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for m, r in results.items():
        diff = (r["test_accuracy"] - base["test_accuracy"]) * 100 if base else float("nan")
        sent = r["sent_bytes"] if r["sent_bytes"] is not None else raw  # float32: the raw
        print(
            f"| {m} | {r['test_accuracy']:.4f} | {diff:+.2f} | "
            f"{(sent or 0) / 2**20:,.0f} MiB | {r['ratio']:.2f} | {r['compress_s']:.2f} | "
            f"{r['train_s']:.1f} | {_common.disturbance(r)} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"results": results, "meta": _common.run_meta()}, indent=1))


if __name__ == "__main__":
    main()
