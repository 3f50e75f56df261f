"""``scale_model.py``'s fits and tables: from its raw figures (measured now or read from
``--json``) to the alpha-beta fits, the validation table, the cluster prediction and
the published-figures comparison. The arithmetic itself is :mod:`hpcnet.perfmodel`.
Not part of hpcnet; ``scale_model.py`` imports it as it imports ``_common``."""

from __future__ import annotations

import os

import numpy as np
from _common import clean_runs, fit_alpha_beta, med

from hpcnet import perfmodel as pm


def fit_ring(runs: list[dict]) -> tuple[float, float]:
    """Link alpha, beta from allreduce times at several world sizes P, fitted to the
    ring/Rabenseifner cost ``2 (P-1) alpha + 2 (P-1)/P n / beta`` (Thakur et al. 2005)
    by least squares weighted by 1 / t. Returns (alpha s, beta bytes/s)."""
    rows, ts = [], []
    for r in runs:
        p = r["world_size"]
        for n, t in zip(r["sizes"], r["times_s"], strict=True):
            rows.append([2 * (p - 1) / t, 2 * (p - 1) / p * n / t])
            ts.append(1.0)  # t / t: each equation divided by its own time
    (alpha, inv_beta), *_ = np.linalg.lstsq(np.array(rows), np.array(ts), rcond=None)
    return float(alpha), float(1.0 / inv_beta)


def fits(raw: dict) -> dict:
    """Every fit of one measurement: per-P allreduce lines, the joint ring fit, RMA
    fetch and push lines, Adagrad apply seconds per float, compute per model."""
    ar = {r["world_size"]: fit_alpha_beta(r["sizes"], r["times_s"]) for r in raw["allreduce"]}
    ours = {  # hpcnet's own allreduce (a --json file from before it was timed has none)
        r["world_size"]: fit_alpha_beta(r["sizes"], r["hpcnet_s"])
        for r in raw["allreduce"]
        if "hpcnet_s" in r
    }
    rma = raw["rma"][0]
    apply = np.polyfit(np.asarray(rma["sizes"]) / 4, rma["apply_s"], 1)[0]
    exchange = None
    if raw.get("exchange"):
        e = raw["exchange"][0]
        exchange = fit_alpha_beta(e["sizes"], e["times_s"]["exchange"])
    partition = {}
    for m in sorted({r["world_size"] for r in raw.get("partition", [])}):
        used = clean_runs([r for r in raw["partition"] if r["world_size"] == m])
        partition[m] = {
            # the slowest partition's, the median over runs
            "compute_s": med(max(r["compute_cpu_ms"]) for r in used) / 1e3,
            "exchanges": max(used[0]["n_coll"]) + max(used[0]["n_recv"]),
            "bytes": max(max(used[0]["sent"]), max(used[0]["recv"])),
        }
    return {
        "slowdown": slowdown(raw.get("shared", [])),
        "allreduce_per_p": ar,
        "allreduce_hpcnet_per_p": ours,
        "exchange": exchange,
        "partition": partition,
        "link": fit_ring(raw["allreduce"]),
        "fetch": fit_alpha_beta(rma["sizes"], rma["fetch_s"]),
        "push": fit_alpha_beta(rma["sizes"], rma["push_s"]),
        "apply_s_per_float": float(apply),
        "compute": {
            m: _median_compute(raw["compute"], m)
            for m in dict.fromkeys(c["model"] for c in raw["compute"])
        },  # fmt: skip
    }


def slowdown(runs: list[dict]) -> tuple[float, ...]:
    """``Cluster.slowdown`` from the runs of k ranks computing at once (in the order
    they ran: k = 1, 2, ... once per repeat): each run's slowest-rank wall time per
    step over that of the k = 1 run of the same repeat (minutes apart at most, so a
    host whose speed drifts over a session cancels out), the median over repeats (the
    undisturbed pairs, or all if none was), never below 1 (a rank does not compute
    faster for company; below 1 is the host's noise); as far as k runs on without a
    gap, () without a k = 1 run."""
    alone = [r for r in runs if r["ranks"] == 1]
    ratios: dict[int, list[tuple[float, bool]]] = {}
    for r in runs:
        repeat = len(ratios.get(r["ranks"], []))  # runs of this k before this one
        if repeat < len(alone):
            base = alone[repeat]  # the k = 1 run of this repeat
            clean = r["clean"] and base["clean"]
            ratios.setdefault(r["ranks"], []).append(
                (r["step_wall_s"] / base["step_wall_s"], clean)
            )
    out, k = [], 1
    while k in ratios:
        used = [x for x, ok in ratios[k] if ok] or [x for x, _ in ratios[k]]
        out.append(max(1.0, med(used)))
        k += 1
    return tuple(out)


def _median_compute(runs: list[dict], model: str) -> dict:
    """One model's compute run with the medians over its undisturbed runs (all runs if
    none was undisturbed) of forward + backward and SGD seconds."""
    every = [c for c in runs if c["model"] == model]
    used = [c for c in every if c.get("clean", True)] or every
    return {
        **used[0],
        "fwd_bwd_s": float(np.median([c["fwd_bwd_s"] for c in used])),
        "sgd_s": float(np.median([c["sgd_s"] for c in used])),
        "runs": f"{len(used)}/{len(every)}",
    }


def _us(s: float) -> str:
    return f"{s * 1e6:.1f} us"


def _gbs(b: float) -> str:
    return f"{b / 1e9:.2f} GB/s"


def print_fits(f: dict, cpu: str) -> None:
    print(f"\n## fit on this machine ({cpu}, {os.cpu_count()} CPUs)")
    print("| what | alpha (latency) | beta (bandwidth) |\n| --- | ---: | ---: |")
    for p, (a, b) in sorted(f["allreduce_per_p"].items()):
        print(f"| Allreduce P={p}, t = alpha + n/beta | {_us(a)} | {_gbs(b)} |")
    a, b = f["link"]
    print(f"| Allreduce, all P, ring 2(P-1) alpha + 2(P-1)/P n/beta | {_us(a)} | {_gbs(b)} |")
    for p, (a, b) in sorted(f["allreduce_hpcnet_per_p"].items()):
        print(f"| hpcnet allreduce_mean_ (Iallreduce, spin then sleep) P={p} | {_us(a)} | "
              f"{_gbs(b)} |")  # fmt: skip
    for k, what in (("fetch", "RMA fetch: Get + Flush"), ("push", "RMA push: Put + Flush")):
        print(f"| {what} | {_us(f[k][0])} | {_gbs(f[k][1])} |")
    if f["exchange"]:
        a, b = f["exchange"]
        print(f"| hpcnet Exchange.allgather, 2 ranks (bytes received) | {_us(a)} | {_gbs(b)} |")
    print(f"| Adagrad apply at the shard | | {f['apply_s_per_float'] * 1e9:.2f} ns/float |")
    print("\n| model | data | parameters | fwd+bwd ms/sample | SGD ms/step | samples/s (1 rank) |")
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    for m, c in f["compute"].items():
        per = (c["fwd_bwd_s"] + c["sgd_s"]) / c["batch"]
        print(f"| {m} | {c['data'].rsplit('/', 1)[-1]} | {c['n_params']:,} | "
              f"{c['fwd_bwd_s'] / c['batch'] * 1e3:.3f} | {c['sgd_s'] * 1e3:.2f} | "
              f"{1 / per:,.0f} |")  # fmt: skip
    if f["slowdown"]:
        cells = ", ".join(f"k={k}: {x:.2f}x" for k, x in enumerate(f["slowdown"], 1))
        print(f"\nk ranks computing at once (no communication), each one's step against one "
              f"rank alone: {cells} (ranks / cores would say "
              + ", ".join(f"{max(1.0, k / (os.cpu_count() or 1)):.2f}x"
                          for k in range(1, len(f["slowdown"]) + 1)) + ")")  # fmt: skip
    for m, part in sorted(f["partition"].items()):
        print(f"\nPartitioned (neurons, M={m}, 1 thread a rank): the slowest partition computes "
              f"{part['compute_s'] * 1e3:.3f} ms a step (CPU time outside the exchanges) and "
              f"takes part in {part['exchanges']} exchanges of {part['bytes']:,} bytes a step "
              "together")  # fmt: skip


def here(f: dict) -> pm.Cluster:
    """This machine as a :class:`~hpcnet.perfmodel.Cluster`: one node, the fitted link,
    its CPUs as cores."""
    a, b = f["link"]
    return pm.Cluster(latency=a, bandwidth=b, cores_per_node=os.cpu_count() or 1,
                      ranks_per_node=1 << 20, slowdown=f.get("slowdown", ()))  # fmt: skip


def rma_cost(f: dict) -> pm.RmaCost:
    return pm.RmaCost(*f["fetch"], *f["push"], f["apply_s_per_float"])


def dense_widths(model: str, shape) -> list[int]:
    """Output widths of ``model``'s dense layers (all split by neurons)."""
    from hpcnet.nn.zoo import build_model

    return [layer.units for layer in build_model(model, tuple(shape), 10).layers
            if hasattr(layer, "units")]  # fmt: skip


def predict_here(
    f: dict, algo: str, replicas: int, model: str, overhead: float = 0.0, shape=(1, 8, 8)
) -> pm.Prediction:
    """The model's prediction for this machine (``overhead``: the training loop's
    seconds per step outside the model and communication)."""
    c = f["compute"][model]
    batch, n = c["batch"], c["n_params"]
    if algo == "sync":
        per = (c["fwd_bwd_s"] + c["sgd_s"]) / batch
        ours = f.get("allreduce_hpcnet_per_p", {}).get(replicas)  # measured at this P
        t = ours[0] + pm.FLOAT32 * n / ours[1] if ours else None
        return pm.predict_sync(per, batch, n, replicas, here(f), step_overhead_s=overhead,
                               allreduce_time_s=t)  # fmt: skip
    if algo == "modelpar":  # ``replicas`` is M here; the loop's cost is not split
        per = (c["fwd_bwd_s"] + c["sgd_s"]) / batch
        part = f.get("partition", {}).get(replicas)
        if part and f.get("exchange"):
            # measured: the slowest partition's compute (+ its 1/M of the update) and
            # its exchanges, each costing the fitted alpha + bytes / beta of hpcnet's
            # allgather
            a, b = f["exchange"]
            link = pm.Cluster(latency=a, bandwidth=b, cores_per_node=os.cpu_count() or 1,
                              ranks_per_node=1 << 20, slowdown=f.get("slowdown", ()))  # fmt: skip
            mine = part["compute_s"] + c["sgd_s"] / replicas
            p = pm.predict_modelpar(per, batch, replicas, part["bytes"] / batch,
                                    part["exchanges"], link, partition_compute_s=mine)  # fmt: skip
        else:  # Amdahl's best case and the allreduce's link
            widths = dense_widths(model, shape)
            p = pm.predict_modelpar(per, batch, replicas, pm.fc_boundary_bytes(widths, replicas),
                                    2 * len(widths), here(f))  # fmt: skip
        step = p.step_s + overhead
        return pm.Prediction(step, batch / step, p.efficiency, p.bound)
    # Downpour: the replica does no update of its own; the shard applies Adagrad.
    return pm.predict_downpour(c["fwd_bwd_s"] / batch, batch, n, replicas, 1, rma_cost(f),
                               here(f), shared_cores=True, step_overhead_s=overhead)  # fmt: skip


def validation_runs(raw: dict) -> list[dict]:
    """The validation runs grouped by configuration, in first-run order: one dict per
    (algo, replicas) with ``runs`` (all of them), ``used`` (the undisturbed ones, or all
    if none was) and ``samples_per_s`` (the median of ``used``; min and max in
    ``spread``). A --json file from before repeats existed gives one run each."""
    groups: dict[tuple[str, int], list[dict]] = {}
    for r in raw["validate"]:
        groups.setdefault((r["algo"], r["replicas"]), []).append(r)
    out = []
    for (algo, replicas), runs in groups.items():
        used = clean_runs(runs)
        rates = [r["summary"]["samples_per_s"] for r in used]
        out.append({
            "algo": algo, "replicas": replicas, "procs": runs[0]["procs"], "runs": runs,
            "used": used, "samples_per_s": med(rates), "spread": (min(rates), max(rates)),
            "others": max(r["cpu_others_during"] or 0.0 for r in used),
        })  # fmt: skip
    return out


def loop_overhead(f: dict, raw: dict, model: str) -> float:
    """Seconds per step ``python -m hpcnet train`` spends outside forward, backward and
    the update (batches, metrics, Python), from the sync R = 1 runs (the calibration):
    their median step time minus the compute worker's. 0 without such a run."""
    c = f["compute"][model]
    for g in validation_runs(raw):
        if g["algo"] == "sync" and g["replicas"] == 1:
            step = c["batch"] / g["samples_per_s"]
            return max(0.0, step - c["fwd_bwd_s"] - c["sgd_s"])
    return 0.0


def print_validation(f: dict, raw: dict, model: str) -> None:
    over = loop_overhead(f, raw, model)
    print(f"\n## validation: python -m hpcnet train, {model}, batch "
          f"{f['compute'][model]['batch']}, this machine ({os.cpu_count()} cores); training "
          f"loop's own cost {over * 1e3:.3f} ms/step (from sync R=1)")  # fmt: skip
    print("| configuration | ranks | bound | predicted, model + comm only | predicted | "
          "measured samples/s (median) | min-max | runs | error | other jobs |\n"
          "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")  # fmt: skip
    for r in validation_runs(raw):
        shape = r["runs"][0]["summary"].get("input_shape", (1, 8, 8))
        bare = predict_here(f, r["algo"], r["replicas"], model, 0.0, shape)
        pred = predict_here(f, r["algo"], r["replicas"], model, over, shape)
        meas = r["samples_per_s"]
        lo, hi = r["spread"]
        name = {"sync": f"sync R={r['replicas']}", "downpour": f"downpour S=1 R={r['replicas']}",
                "modelpar": f"model parallel M={r['replicas']}"}[r["algo"]]  # fmt: skip
        err = (pred.samples_per_s - meas) / meas
        calib = r["algo"] == "sync" and r["replicas"] == 1
        flag = " (calibration)" if calib else " !" if abs(err) > 0.25 else ""
        print(f"| {name} | {r['procs']} | {pred.bound} | {bare.samples_per_s:,.0f} | "
              f"{pred.samples_per_s:,.0f} | {meas:,.0f} | {lo:,.0f}-{hi:,.0f} | "
              f"{len(r['used'])}/{len(r['runs'])} | {err:+.0%}{flag} | "
              f"{r['others']:.0%} |")  # fmt: skip
    print(
        "error = (predicted - measured) / measured; '!' beyond the 25 % target; sync R=1 "
        "sets the loop's cost, so its error is 0 by construction; measured: the median of "
        "the undisturbed runs (runs: used/all; other jobs: the most any used run saw)"
    )


def print_cluster(f: dict, args) -> None:
    cl = pm.Cluster(latency=args.latency, bandwidth=args.bandwidth,
                    nic_bandwidth=args.nic_bandwidth, cores_per_node=args.cores_per_node,
                    ranks_per_node=args.ranks_per_node)  # fmt: skip
    print(f"\n## prediction for a cluster: alpha {_us(args.latency)}, link {_gbs(args.bandwidth)}"
          f", NIC {_gbs(args.nic_bandwidth)}, {args.cores_per_node} cores and "
          f"{args.ranks_per_node} ranks per node; compute per sample as measured here; "
          f"Downpour n_fetch {args.n_fetch}, n_push {args.n_push}")  # fmt: skip
    # A replica and its shards on different nodes: fetch and push cross the NIC.
    nic = min(args.nic_bandwidth, args.bandwidth)
    rma = pm.RmaCost(args.latency, nic, args.latency, nic, f["apply_s_per_float"])
    head = "| model | R | sync samples/s (eff.) |" + "".join(
        f" downpour S={s} samples/s (eff., bound) |" for s in args.shards
    )
    print(head + "\n|" + " --- |" * (3 + len(args.shards)))
    for m, c in f["compute"].items():
        batch, n = c["batch"], c["n_params"]
        for r in args.replicas:
            sy = pm.predict_sync((c["fwd_bwd_s"] + c["sgd_s"]) / batch, batch, n, r, cl)
            cells = [f"{sy.samples_per_s:,.0f} ({sy.efficiency:.2f})"]
            for s in args.shards:
                d = pm.predict_downpour(c["fwd_bwd_s"] / batch, batch, n, r, s, rma, cl,
                                        args.n_fetch, args.n_push)  # fmt: skip
                cells.append(f"{d.samples_per_s:,.0f} ({d.efficiency:.2f}, {d.bound})")
            print(f"| {m} | {r} | " + " | ".join(cells) + " |")
    print(
        "Compute per sample and the shard's Adagrad apply rate are this machine's; fetch "
        "and push cross the NIC (alpha --latency); no training-loop cost."
    )


def report(raw: dict, args, cpu: str) -> None:
    """Prints every table of one measurement (``cpu``: the CPU model it ran on)."""
    f = fits(raw)
    print_fits(f, cpu)
    if raw["validate"]:
        print_validation(f, raw, args.val_model)
    print_cluster(f, args)
    from _published import print_published

    print_published()
