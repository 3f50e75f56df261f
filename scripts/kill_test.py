#!/usr/bin/env python
"""The checkpoint kill test: SIGKILL a run that checkpoints often at random moments
(during a checkpoint's write too), then check that the newest checkpoint on disk
opens, verifies its checksum, and that ``--resume`` finishes the run with the same
final parameters as a run never killed.

    python scripts/kill_test.py --trials 100 [--seed 0] [--keep DIR]

Prints one line per trial and a summary line ``kill test: N passed, M failed``
(a trial killed before its first checkpoint counts as passed when ``--resume``
refuses in one line, exit 2). Exit status 1 if any trial failed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py

MPIEXEC = shutil.which("mpiexec", path=os.path.dirname(sys.executable)) or "mpiexec"
# ~900 steps of 2conv on the digits (~5 s), a checkpoint every 5 steps: killed at random,
# often while a checkpoint is being written
RUN = ["train", "--model", "2conv", "--batch-size", "8", "--epochs", "10", "--threads", "1"]
RUN += ["--checkpoint-every", "5", "--keep-checkpoints", "2"]


def _run(args, out, **kw):
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcnet", *RUN, *args]
    return subprocess.run(cmd + ["--out", str(out)] if out else cmd, **kw)


def _sha(out: Path) -> str:
    with h5py.File(out / "checkpoint.h5", "r") as f:
        assert bool(f.attrs["final"])
        return hashlib.sha256(f["params"][()].tobytes()).hexdigest()


def trial(k: int, when: float, work: Path, want: str) -> tuple[bool, str]:
    from hpcnet.run.checkpoint import checkpoints, read_checkpoint

    out = work / f"t{k}"
    p = subprocess.Popen(
        [MPIEXEC, "-n", "2", sys.executable, "-m", "hpcnet", *RUN, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    time.sleep(when)
    if p.poll() is not None:
        return True, f"finished before the kill at {when:.2f} s (not a trial)"
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    found = checkpoints(out) if out.exists() else []
    info = None
    if found:
        try:
            info = read_checkpoint(found[0])
        except Exception as e:  # noqa: BLE001 - any failure to open is what we look for
            return False, f"killed at {when:.2f} s: newest {found[0].name} does not open: {e}"
        if info.get("final"):
            return True, f"finished before the kill at {when:.2f} s (not a trial)"
    resume = _run(["--resume", str(out)], None, capture_output=True, text=True, timeout=300)
    if info is None:
        why = resume.stderr  # killed before OUT was made, or before its first checkpoint
        ok = resume.returncode == 2 and ("no checkpoint" in why or "no such directory" in why)
        return ok, f"killed at {when:.2f} s before any checkpoint; resume: {resume.returncode}"
    if resume.returncode != 0:
        return False, f"resume failed ({resume.returncode}): {resume.stderr.strip()[-300:]}"
    same = _sha(out) == want
    return same, (
        f"killed at {when:.2f} s, newest checkpoint step {int(info['step'])} verified, resumed:"
        f" final parameters {'identical' if same else 'DIFFERENT'}"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=100)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep", help="keep the runs in this directory")
    a = ap.parse_args()
    work = Path(a.keep or tempfile.mkdtemp(prefix="hpcnet-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    ref = work / "whole"
    t0 = time.monotonic()
    _run([], ref, check=True, capture_output=True, timeout=300)
    span = time.monotonic() - t0
    want = _sha(ref)
    rng = random.Random(a.seed)
    passed = failed = 0
    for k in range(a.trials):
        ok, what = trial(k, rng.uniform(1.0, span), work, want)
        passed, failed = passed + ok, failed + (not ok)
        print(f"trial {k}: {'ok' if ok else 'FAILED'}: {what}", flush=True)
        shutil.rmtree(work / f"t{k}", ignore_errors=True)
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    print(f"kill test: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
