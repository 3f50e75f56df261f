#!/usr/bin/env python
"""The Ctrl-C test: SIGINT to ``mpiexec`` (what a terminal's Ctrl-C sends it; it passes
the signal to every rank) at a random moment of a run (loading, compiling, training),
then check that the job ended with exit status 130, one "stopped by SIGINT after step
N" line (or none, when it came before training began), a checkpoint of step N that
verifies, and no crash (``malloc()``, a traceback, MPICH's ``BAD TERMINATION``).

    python scripts/interrupt_test.py --trials 50 [--seed 0] [--algos sync,downpour]

Prints one line per trial and a summary line ``interrupt test: N passed, M failed``.
Exit status 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
RANKS = {"sync": 2, "avg": 2, "downpour": 3, "sandblaster": 3}
# long enough never to finish within a trial (~40 s of training on the digits)
RUN = ["train", "--model", "2conv", "--data", "digits", "--epochs", "60", "--threads", "1"]
RUN += ["--batch-size", "8", "--checkpoint-every", "200"]
CRASH = ("malloc", "Traceback", "BAD TERMINATION", "Segmentation", "core dumped")


def trial(k: int, algo: str, when: float, work: Path) -> tuple[bool, str]:
    """One run of ``algo`` interrupted ``when`` seconds after its start."""
    from hpcnet.run.checkpoint import read_checkpoint

    out = work / f"t{k}"
    extra = ["--shards", "1"] if algo in ("downpour", "sandblaster") else []
    p = subprocess.Popen(
        [MPIEXEC, "-n", str(RANKS[algo]), sys.executable, "-m", "hpcnet", *RUN, "--algo", algo]
        + extra
        + ["--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    time.sleep(when)
    if p.poll() is not None:
        return False, f"ended before the interrupt at {when:.1f} s: {p.stderr.read()[-300:]}"
    os.killpg(p.pid, signal.SIGINT)  # a terminal's Ctrl-C: mpiexec's process group
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        return False, f"{algo} at {when:.1f} s: still running 120 s after SIGINT"
    what = f"{algo} at {when:.1f} s"
    if p.returncode != 130:
        return False, f"{what}: exit status {p.returncode}: {err[-400:]}"
    crash = [c for c in CRASH if c in err]
    if crash:
        return False, f"{what}: {crash}: {err[-400:]}"
    stopped = re.findall(r"stopped by SIGINT after step (\d+)", err)
    if not stopped:  # before training began: no run to checkpoint, no line but the note
        ok = "interrupted (Ctrl-C)" in err and not (out / "checkpoint.h5").exists()
        return ok, f"{what}: stopped before training" + ("" if ok else f": {err[-300:]}")
    if len(stopped) != 1:
        return False, f"{what}: {len(stopped)} 'stopped by' lines"
    step = int(stopped[0])
    ckpt = read_checkpoint(out / "checkpoint.h5")
    if int(ckpt["step"]) != step or ckpt["final"]:
        return False, f"{what}: checkpoint of step {int(ckpt['step'])}, the line says {step}"
    return True, f"{what}: stopped after step {step}, checkpointed"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=50, help="runs to interrupt")
    ap.add_argument("--seed", type=int, default=0, help="of the moments and algorithms")
    ap.add_argument("--algos", default="sync,avg,downpour,sandblaster", help="comma list")
    ap.add_argument("--latest", type=float, default=12.0, help="latest moment (seconds)")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    algos = args.algos.split(",")
    passed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.trials):
            algo = algos[k % len(algos)]
            ok, line = trial(k, algo, rng.uniform(0.3, args.latest), Path(tmp))
            passed += ok
            print(f"trial {k}: {'ok' if ok else 'FAILED'}: {line}", flush=True)
    print(f"interrupt test: {passed} passed, {args.trials - passed} failed")
    return 0 if passed == args.trials else 1


if __name__ == "__main__":
    sys.exit(main())
