"""Plan past one machine: measure here, fit the cost model, validate it, predict a cluster.

1. Measures on this machine: allreduce time against bytes at 2 and 4 ranks (fresh
   ``mpiexec`` jobs, in-place ``Allreduce`` of float32), the parameter server's
   one-sided ``Get`` + ``Flush`` (fetch) and ``Put`` + ``Flush`` (push) against bytes
   (2 ranks, the target idle in a sleeping poll, 2 ms between calls as in training),
   and the shard's update rule per parameter; fits ``alpha + n / beta`` to each
   (:func:`hpcnet.perfmodel.fit_link`).
2. Runs real ``python -m hpcnet train`` jobs: ``sync`` with R = 1, 2, 4 ranks and
   Downpour with 1 shard + R = 1, 2, 3 replicas. The 1-rank sync run gives the compute
   time per sample (the whole training loop: forward, backward, update, batching).
3. Predicts each run's samples/s from those figures alone (:mod:`hpcnet.perfmodel`:
   ring/tree allreduce, shard limits, oversubscription of this machine's cores) and
   prints predicted against measured (target: within 25 %).
4. Predicts R replicas (x S shards, x M partitions) on a cluster described by flags
   (latency, bandwidth, NIC per node, cores and ranks per node), and sets the model
   beside published figures: DistBelief (Dean et al., NIPS 2012, Fig. 3) and Goyal
   et al. 2017 (ResNet-50, 8 to 256 GPUs), with the assumptions used for each.

Usage::

    python -m hpcnet bench scale [--model mlp] [--data fashion-mnist] [--steps 300]
        [--repeats 2] [--latency 5e-6 --bandwidth 12.5e9 --nic-bandwidth 12.5e9
         --cores-per-node 32 --ranks-per-node 8] [--json F] [--from-json F]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import _driver
import numpy as np
from _common import (
    add_wait_idle,
    dispatch,
    disturbance,
    emit,
    idle_target,
    med,
    raw_target_window,
    run_for_result,
    table_head,
)

PROG = "scale_model"
SIZES = (4 << 10, 64 << 10, 1 << 20, 4 << 20, 16 << 20)  # bytes per allreduce / RMA call
REPS = 30  # timed calls per size (after 5 untimed)


# --------------------------------------------------------------------------- workers


def worker_allreduce(args: argparse.Namespace) -> None:
    """Every rank: median time of an in-place float32 ``Allreduce`` per size; rank 0
    prints the slowest rank's medians."""
    from _common import mpi_worker
    from mpi4py import MPI

    comm, _ = mpi_worker()
    out = []
    for nbytes in SIZES:
        buf = np.ones(nbytes // 4, np.float32)
        ts = []
        for i in range(5 + REPS):
            comm.Barrier()
            t0 = time.perf_counter()
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
            if i >= 5:
                ts.append(time.perf_counter() - t0)
        out.append(comm.allreduce(med(ts), op=MPI.MAX))
    if comm.Get_rank() == 0:
        emit({"ranks": comm.Get_size(), "bytes": list(SIZES), "seconds": out})


def worker_rma(args: argparse.Namespace) -> None:
    """2 ranks: rank 1 times ``Get`` + ``Flush`` and ``Put`` + ``Flush`` on rank 0's
    window (2 ms apart), rank 0 waits in a sleeping poll as an idle shard does."""
    from _common import mpi_worker
    from mpi4py import MPI

    comm, _ = mpi_worker()
    top = max(SIZES)
    win = raw_target_window(comm, top)
    res = None
    if comm.Get_rank() == 0:
        idle_target(comm)
    else:
        buf = np.ones(top // 4, np.float32)
        get, put = [], []
        win.Lock_all(MPI.MODE_NOCHECK)
        for nbytes in SIZES:
            n = nbytes // 4
            tg, tp = [], []
            for i in range(5 + REPS):
                time.sleep(0.002)
                t0 = time.perf_counter()
                win.Get(buf[:n], 0, (0, n, MPI.FLOAT))
                win.Flush(0)
                t1 = time.perf_counter()
                time.sleep(0.002)
                t2 = time.perf_counter()
                win.Put(buf[:n], 0, (0, n, MPI.FLOAT))
                win.Flush(0)
                t3 = time.perf_counter()
                if i >= 5:
                    tg.append(t1 - t0)
                    tp.append(t3 - t2)
            get.append(med(tg))
            put.append(med(tp))
        win.Unlock_all()
        comm.Ibarrier().Wait()
        res = {"bytes": list(SIZES), "get": get, "put": put}
    win.Free()
    res = comm.bcast(res, root=1)
    if comm.Get_rank() == 0:
        emit(res)


# --------------------------------------------------------------------------- driver


def apply_s_per_param(rule: str, n: int = 1 << 20) -> float:
    """Seconds per parameter of an update rule (one thread, median of 20): the shard's
    (``sgd``, ``adagrad``) or sync's (``momentum``: SGD with momentum 0.9)."""
    from hpcnet.kernels import set_threads
    from hpcnet.optim.rules import make_rule
    from hpcnet.optim.sgd import SGD

    set_threads(1)
    r = SGD(n, momentum=0.9) if rule == "momentum" else make_rule(rule, n)
    p, g = np.zeros(n, np.float32), np.full(n, 1e-3, np.float32)
    r.step(p, g, 0.01)
    ts = []
    for _ in range(20):
        t0 = time.perf_counter()
        r.step(p, g, 0.01)
        ts.append(time.perf_counter() - t0)
    return med(ts) / n


def worker_cmd(kind: str, ranks: int, mpiexec: str) -> list[str]:
    return [mpiexec, "-n", str(ranks), sys.executable, str(Path(__file__).resolve()),
            "--worker", kind]  # fmt: skip


def measure(args: argparse.Namespace) -> dict:
    """Every measurement and run of steps 1-2 (see the module)."""
    meta, mpiexec = _driver.start(PROG, "scale", args)
    kw = {"timeout": args.timeout, "wait_idle": args.wait_idle}
    res: dict = {"meta": meta, "allreduce": {}, "runs": []}
    for p in (2, 4):
        r = run_for_result(worker_cmd("allreduce", p, mpiexec), f"allreduce {p}", PROG, **kw)
        res["allreduce"][str(p)] = r
        print(f"  allreduce {p} ranks: " + ", ".join(
            f"{b >> 10} KiB {s * 1e3:.3f} ms" for b, s in zip(r["bytes"], r["seconds"], strict=True)
        ) + f" ({disturbance(r)})", flush=True)  # fmt: skip
    res["rma"] = run_for_result(worker_cmd("rma", 2, mpiexec), "rma", PROG, **kw)
    print(f"  rma: {disturbance(res['rma'])}", flush=True)
    res["apply_s_per_param"] = apply_s_per_param(args.ps_rule)
    res["momentum_s_per_param"] = apply_s_per_param("momentum")
    common = ["--data", args.data, "--model", args.model, "--batch-size", str(args.batch),
              "--epochs", "100", "--max-steps", str(args.steps), "--threads", "1",
              "--log-every", str(args.steps)]  # fmt: skip
    jobs = [("sync", r, r, []) for r in args.sync_ranks]
    jobs += [("downpour", r, r + 1, ["--shards", "1", "--ps-rule", args.ps_rule])
             for r in args.downpour_replicas]  # fmt: skip
    for rep in range(args.repeats):  # in order, then in reverse order
        for algo, reps, procs, extra in jobs if rep % 2 == 0 else jobs[::-1]:
            run = _driver.run_train(
                PROG, f"scale-{algo}{reps}", procs, ["--algo", algo, *common, *extra],
                f"{algo} R={reps}", mpiexec, runs_dir=args.runs_dir, **kw,
            )  # fmt: skip
            s = run["summary"]
            res["runs"].append({"algo": algo, "replicas": reps, "procs": procs,
                                "samples_per_s": s["samples_per_s"], "n_params": s["n_params"],
                                "clean": run.get("clean", True)})  # fmt: skip
            print(f"  {algo} R={reps}: {s['samples_per_s']:,.0f} samples/s "
                  f"({disturbance(run)})", flush=True)  # fmt: skip
    return res


def runs_by_config(runs: list[dict]) -> list[dict]:
    """One entry per (algo, replicas): the median samples/s over its undisturbed runs
    (all of them if none was undisturbed), in first-seen order."""
    out: dict[tuple, dict] = {}
    for r in runs:
        out.setdefault((r["algo"], r["replicas"]), {**r, "all": []})["all"].append(r)
    for e in out.values():
        used = [r for r in e["all"] if r["clean"]] or e["all"]
        e["samples_per_s"] = med(r["samples_per_s"] for r in used)
        e["used"] = f"{len(used)}/{len(e['all'])}"
    return sorted(out.values(), key=lambda e: (e["algo"] != "sync", e["replicas"]))


def fitted(res: dict):
    """(allreduce p2p link from the 2-rank fit, fetch link, push link, compute s/sample,
    the per-ranks effective allreduce fits) from :func:`measure`'s figures."""
    from hpcnet.perfmodel import Link, fit_link

    eff = {int(p): fit_link(r["bytes"], r["seconds"]) for p, r in res["allreduce"].items()}
    two = eff[2]  # ring at 2 ranks: 2 alpha + n / beta
    p2p = Link(two.alpha_s / 2, two.beta_Bps)
    rma = res["rma"]
    fetch, push = fit_link(rma["bytes"], rma["get"]), fit_link(rma["bytes"], rma["put"])
    one = [r for r in runs_by_config(res["runs"]) if r["algo"] == "sync" and r["replicas"] == 1]
    compute = 1.0 / one[0]["samples_per_s"]
    return p2p, fetch, push, compute, eff


def report(res: dict, args: argparse.Namespace) -> list[dict]:
    """Prints the fits, the validation table and the cluster predictions; returns the
    validation rows."""
    from hpcnet import perfmodel as pm

    p2p, fetch, push, compute, eff = fitted(res)
    n_params = res["runs"][0]["n_params"]
    # a Downpour replica does not update: the shard does (sync's update measured alone)
    replica = compute - n_params * res["momentum_s_per_param"] / args.batch
    cores = res["meta"]["machine"]["cpus"]
    here = pm.Machine(cores_per_node=cores, ranks_per_node=64, link=p2p)
    table_head(f"{'what':<34} {'alpha us':>9} {'beta GB/s':>10}", "fits: alpha + n / beta")
    for p, link in sorted(eff.items()):
        print(f"{f'allreduce, {p} ranks (effective)':<34} {link.alpha_s * 1e6:>9.1f} "
              f"{link.beta_Bps / 1e9:>10.2f}")  # fmt: skip
    for name, link in (("p2p link (from 2-rank ring)", p2p), ("fetch: Get + Flush", fetch),
                       ("push: Put + Flush", push)):  # fmt: skip
        print(f"{name:<34} {link.alpha_s * 1e6:>9.1f} {link.beta_Bps / 1e9:>10.2f}")
    print(f"compute: {compute * 1e6:.1f} us/sample (1-rank sync run, {args.model}); without "
          f"the momentum update ({res['momentum_s_per_param'] * 1e9:.2f} ns/parameter): "
          f"{replica * 1e6:.1f}; shard update ({args.ps_rule}): "
          f"{res['apply_s_per_param'] * 1e9:.2f} ns/parameter")  # fmt: skip
    rows = []
    ar4 = res["allreduce"].get("4")
    if ar4:  # the allreduce model itself, at 4 ranks, from the 2-rank fit
        for b, s in zip(ar4["bytes"], ar4["seconds"], strict=True):
            if b >= 1 << 20:
                rows.append({"what": f"allreduce {b >> 20} MiB, 4 ranks (ms)",
                             "pred": here.allreduce_s(b, 4) * 1e3, "meas": s * 1e3})  # fmt: skip
    for r in runs_by_config(res["runs"]):
        n = r["n_params"]
        if r["algo"] == "sync":
            pr = pm.predict_sync(compute, args.batch, r["replicas"], n, here)
        else:
            pr = pm.predict_downpour(replica, args.batch, r["replicas"], 1, n, here, fetch, push,
                                     res["apply_s_per_param"])  # fmt: skip
        rows.append({"what": f"{r['algo']} R={r['replicas']} ({r['procs']} ranks), samples/s",
                     "pred": pr.samples_per_s, "meas": r["samples_per_s"],
                     "bound": f"{pr.bound}; runs {r['used']}"})  # fmt: skip
    table_head(f"{'validation on this machine':<44} {'predicted':>10} {'measured':>10} "
               f"{'error':>7}  bound", f"validation ({cores} cores)")  # fmt: skip
    for row in rows:
        row["error"] = row["pred"] / row["meas"] - 1
        print(f"{row['what']:<44} {row['pred']:>10,.1f} {row['meas']:>10,.1f} "
              f"{row['error']:>+7.0%}  {row.get('bound', '')}")  # fmt: skip
    cluster(args, compute, replica, n_params, fetch, push, res["apply_s_per_param"])
    published()
    return rows


def cluster(args, compute, replica, n_params: int, fetch, push, apply_s: float) -> None:
    """Predictions for the cluster of the flags."""
    from hpcnet import perfmodel as pm

    link = pm.Link(args.latency, args.bandwidth)
    m = pm.Machine(args.cores_per_node, args.ranks_per_node, link, args.nic_bandwidth,
                   intra=pm.Link(fetch.alpha_s, fetch.beta_Bps))  # fmt: skip
    table_head(
        f"{'replicas':>8} {'sync samples/s':>15} {'eff':>5} {'downpour S':>10} "
        f"{'samples/s':>11} {'eff':>5}  bound",
        f"cluster: {args.model} ({n_params:,} parameters), {args.cores_per_node} cores and "
        f"{args.ranks_per_node} ranks per node, latency {args.latency * 1e6:g} us, "
        f"{args.bandwidth / 1e9:g} GB/s links, NIC {args.nic_bandwidth / 1e9:g} GB/s",
    )
    for r in args.predict_replicas:
        s = pm.predict_sync(compute, args.batch, r, n_params, m)
        shards = max(1, r // 8)
        net = pm.Link(args.latency + fetch.alpha_s, args.bandwidth)
        d = pm.predict_downpour(replica, args.batch, r, shards, n_params, m, net, net, apply_s)
        print(f"{r:>8} {s.samples_per_s:>15,.0f} {s.efficiency:>5.2f} {shards:>10} "
              f"{d.samples_per_s:>11,.0f} {d.efficiency:>5.2f}  {d.bound}")  # fmt: skip


PUBLISHED = """
Published figures beside the model (assumptions in brackets; the model's inputs are
public or stated, not fitted to the result):"""


def published() -> None:
    """The model against DistBelief (Dean et al. 2012, Fig. 3) and Goyal et al. 2017."""
    from hpcnet import perfmodel as pm

    print(PUBLISHED)
    table_head(f"{'case':<58} {'reported':>9} {'model':>13}", None)
    # Goyal et al. 2017: ResNet-50 (25.6 M parameters), 32 images per GPU, 8 GPUs per
    # server, 50 Gbit/s Ethernet; [P100 ~4.3 ms per image fwd+bwd; NVLink ~20 GB/s
    # within a server; 10 us latency]; efficiency of 256 GPUs relative to 8.
    eth = pm.Link(10e-6, 50e9 / 8)
    gpu = pm.Machine(8, 8, eth, 50e9 / 8, intra=pm.Link(5e-6, 20e9))
    e8 = pm.predict_sync(4.3e-3, 32, 8, 25_600_000, gpu).samples_per_s / 8
    e256 = pm.predict_sync(4.3e-3, 32, 256, 25_600_000, gpu).samples_per_s / 256
    print(f"{'Goyal 2017: ResNet-50, 256 GPUs vs 8, scaling efficiency':<58} "
          f"{'~0.90':>9} {e256 / e8:>13.2f}")  # fmt: skip
    # DistBelief, Fig. 3, model parallelism on 2012 machines [16 cores each; achieved
    # speed unknown to us: 20 and 100 GFLOP/s; 1 Gbit/s Ethernet, 100 us; minibatch 100].
    gbe = pm.Link(100e-6, 125e6)
    for name, reported, params, parts, boundary, msgs in (
        # speech: 42 M parameters, 5 fully connected layers of ~2560: a partition sends
        # and receives the other partitions' activations, ~ 5 x 2560 x 4 B per sample
        ("DistBelief speech (42 M, fully connected), 8 machines", "~2.2x", 42e6, 8,
         5 * 2560 * 4 * 7 / 8, 5 * 7),
        # image: 1.7 G parameters, locally connected: only borders cross; [1 % of the
        # ~10 M activations of a sample, 4 neighbours]
        ("DistBelief image (1.7 G, locally connected), 81 machines", ">12x", 1.7e9, 81,
         0.01 * 10e6 * 4, 3 * 4),
    ):  # fmt: skip
        machine = pm.Machine(16, 1, gbe)
        got = [
            pm.predict_model_parallel(6 * params / flops, 100, parts, boundary, msgs, machine)
            for flops in (20e9, 100e9)
        ]
        speedups = " / ".join(f"{g.efficiency * parts:.1f}x" for g in got)
        print(f"{name:<58} {reported:>9} {speedups:>13}")
    print(
        "Goyal: the model's ring allreduce of 102 MB over 32 servers adds ~30 ms to a ~140 ms\n"
        "  step; they overlap it with backward, which the model does not credit: it agrees\n"
        "  within a few points and errs low. DistBelief speech: all-to-all activations of\n"
        "  fully connected layers over 1 GbE dominate from a few machines on, as in Fig. 3;\n"
        "  the image model's local connectivity keeps boundary traffic small, so the model\n"
        "  predicts the near-linear speed-up the paper reports. Both DistBelief rows rest\n"
        "  on guessed per-machine speeds (model at 20 / 100 GFLOP/s per machine) and boundary\n"
        "  sizes: read them as the shape of the curve (saturation vs scaling), not as a fit."
    )


def driver(args: argparse.Namespace) -> None:
    if args.from_json:
        res = json.loads(Path(args.from_json).read_text())
        print(f"# {args.from_json}: measured {res['meta']['date']}")
    else:
        res = measure(args)
    rows = report(res, args)
    if args.json and not args.from_json:
        res["validation"] = rows
        Path(args.json).write_text(json.dumps(res, indent=1, default=float))
        print(f"# raw figures written to {args.json}")


def ints(spec: str) -> list[int]:
    return [int(x) for x in spec.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=("allreduce", "rma"), help=argparse.SUPPRESS)
    p.add_argument("--model", default="mlp", help="zoo model of the validation runs")
    p.add_argument("--data", default="fashion-mnist", help="data set of the validation runs")
    p.add_argument("--batch", type=int, default=32, help="samples per replica per step")
    p.add_argument("--steps", type=int, default=1500, help="steps per validation run")
    p.add_argument("--ps-rule", default="adagrad", help="the shards' rule (sgd, adagrad)")
    p.add_argument("--sync-ranks", type=ints, default=[1, 2, 4], help="sync runs (R)")
    p.add_argument("--downpour-replicas", type=ints, default=[1, 2, 3],
                   help="Downpour runs (R replicas + 1 shard)")  # fmt: skip
    p.add_argument("--latency", type=float, default=5e-6, help="cluster: seconds per message")
    p.add_argument("--bandwidth", type=float, default=12.5e9, help="cluster: bytes/s per link")
    p.add_argument("--nic-bandwidth", type=float, default=12.5e9,
                   help="cluster: bytes/s per node's NIC (0: no limit)")  # fmt: skip
    p.add_argument("--cores-per-node", type=int, default=32, help="cluster: cores per node")
    p.add_argument("--ranks-per-node", type=int, default=8, help="cluster: ranks per node")
    p.add_argument("--predict-replicas", type=ints, default=[1, 8, 64, 256],
                   help="cluster: replica counts to predict")  # fmt: skip
    p.add_argument("--runs-dir", default=None, help="where training runs write (default /tmp)")
    p.add_argument("--timeout", type=float, default=300, help="seconds per job")
    add_wait_idle(p)
    p.add_argument("--json", default=None, help="write every raw figure here")
    p.add_argument("--from-json", default=None, help="measure nothing: report this file again")
    p.add_argument("--repeats", type=int, default=2, help="runs of every validation job")
    args = p.parse_args(argv)
    if 1 not in args.sync_ranks:
        p.error("--sync-ranks must include 1 (the compute-time calibration run)")
    return args


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    dispatch(parse_args(argv), driver, allreduce=worker_allreduce, rma=worker_rma)


if __name__ == "__main__":
    main()
