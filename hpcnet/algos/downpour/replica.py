"""A Downpour replica's program: fetch every ``n_fetch`` steps, push every ``n_push``,
one-sided operations only (:mod:`hpcnet.ps.client`).

With ``--max-staleness s`` (SSP, :mod:`hpcnet.ps.ssp`; Ho et al. 2013, sec. 2-3) a
replica publishes its clock (completed steps) after every step and, before each
step, waits until every live replica is at most ``s`` steps behind it.

Fault injection (``[faults]``): the slow replica (``--slow-replica``) sleeps
``slow_factor - 1`` times its compute time after each step's forward + backward (as
Sandblaster's does); ``--fail-replica`` stops after ``--fail-at-step`` steps without
saying done.

Under fault tolerance a replica that learns at an epoch boundary that others died reads
the next epochs dealt over the survivors (:func:`_redeal`): no row block is lost with them.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.lifecycle import Regroup, TrainingRun
from hpcnet.algos.prepare import train_loader
from hpcnet.comm import ft, watchdog
from hpcnet.ps.client import ShardClient
from hpcnet.ps.ssp import ClockGate


def _redeal(run: TrainingRun, loader, redealt: list, step: int):
    """At an epoch boundary, under fault tolerance: when MPI reports replicas dead, the
    next epochs are dealt over the live replicas only (this one's index among them), so
    the dead replicas' row blocks are read by the survivors instead of never again; each
    survivor's steps (the budget) stay as they were, its epochs grow longer. The rows the
    dead replica had not read in the epoch it died in are not dealt (the replicas are not
    in step). Not for split replicas (its partitions could see the deaths at different
    boundaries). Returns the loader to read from next."""
    layout = run.layout
    if not ft.enabled() or layout.partitions > 1:
        return loader
    roles = [layout.role(r) for r in ft.failed_ranks(run.comm)]
    dead = {role.index for role in roles if role.kind == "replica"}
    live = [i for i in range(layout.replicas) if i not in dead]
    if len(live) >= loader.n_replicas or run.role.index not in live:
        return loader
    loader.close()
    redealt.append({"step": step, "replicas": len(live)})
    return train_loader(run.prep, live.index(run.role.index), len(live))


def _partner_died(run: TrainingRun, e: BaseException) -> str:
    """Why this partition stops with its replica, or "": under fault tolerance, when a
    partition of its own replica died (its exchanges fail) and no shard did. The
    replica's live partitions then stop as one client: each says done to the shards
    (its completed pushes count once; the dead one's client is lost) and goes to the
    end of the run, where the replica is left out of the evaluation."""
    layout = run.layout
    if isinstance(e, ft.PeerDied) or layout.partitions == 1 or not ft.enabled():
        return ""
    failed = set(ft.failed_ranks(run.comm))
    partners = failed & set(layout.replica_ranks(run.role.index))
    if not partners or failed & set(layout.shard_ranks):
        return ""
    named = ", ".join(f"rank {r} ({layout.role(r)})" for r in sorted(partners))
    return f"{named} died: replica {run.role.index} stopped"


def run_replica(run: TrainingRun) -> dict[str, Any]:
    """One replica partition's training loop (the whole replica when unpartitioned).
    The partitions of a replica step in lockstep: they stop together (``agree_any``)."""
    cfg, model, backend, part, role = run.cfg, run.model, run.backend, run.part, run.role
    windows, total_steps = run.shared.windows, run.budget.total_steps
    ps, faults = cfg.ps, cfg.faults
    replica = role.index
    c = run.layout.client(replica, role.partition)
    resume = run.shared.resume[c] if run.shared.resume else None
    client = ShardClient(
        windows,
        c,
        wait_timeout=run.deadlines.push_slot,
        owned=part.owned if part else None,
        report_stats=role.partition == 0,
        sent=resume.sent if resume else None,
        skip=resume.skip if resume else None,
        comm=run.comm,
    )
    net = part if part else model
    step = resume.step if resume else 0  # a resumed run: where every shard's cut holds it
    gate = None
    if ps.max_staleness >= 0:  # SSP: a resumed replica's clock starts at its step
        gate = ClockGate(
            client,
            replica,
            run.layout.partitions,
            run.layout.replicas,
            ps.max_staleness,
            # a lost replica leaves the minimum after --replica-timeout: wait longer
            timeout=run.deadlines.end_barrier,
        )
        gate.publish(step)
    slow = faults.slow_factor - 1 if replica == faults.slow_replica else 0.0
    model.seed_dropout(cfg.run.seed, replica, restart=step)
    signalled = 0  # the signal this replica stops for (its own, or the run's PREEMPT)

    def stop_now() -> bool:  # every partition of the replica gets the same answer
        nonlocal signalled
        sig = run.preempt.signum if run.preempt else 0
        if sig and not signalled:  # tell the shards: they stop every replica
            signalled = sig
            client.signal(sig)
        elif client.preempt_signal and not signalled:  # tell shard 0, which checkpoints
            signalled = client.preempt_signal
            client.signal(signalled)
        stop = client.stopped or bool(signalled)
        return part.ex.agree_any(stop) if part else stop

    loader = run.loader()
    redealt: list[dict[str, int]] = []  # epochs dealt over the live replicas only
    # n_push = 1 pushes the model's gradient buffer itself (push only reads it, and has
    # flushed it before returning): no summing into a second buffer, no zeroing it
    direct = ps.n_push == 1
    acc = None if direct else np.zeros(model.n_params, np.float32)  # summed since the push
    stats = np.zeros(3)  # loss sum, correct, samples since the last push
    since_push = 0
    epoch, start = divmod(step, run.budget.steps_per_epoch)
    fetch_now = True  # the first step fetches (a resumed run restarts between fetches)
    step0 = step
    failed = False
    compute_s = first_step_s = slowed_s = 0.0
    t0 = time.perf_counter()
    if replica != 0 and ps.warm_start_steps:
        # Warm start (sec. 4.1): replica 0 trains alone first; the others join later.
        client.wait_for_version(
            max(1, ps.warm_start_steps // ps.n_push), timeout=run.deadlines.warm_start
        )
    shard_died = False
    retired = ""  # why this partition stopped with its replica (a partner died)
    try:
        stopped = False
        while step < total_steps and not stopped and not failed:
            for x, y in loader.batches(epoch, start):
                if gate is not None:
                    gate.wait(step)  # every live replica within s steps (or a stop)
                if step % ps.n_fetch == 0 or fetch_now:
                    client.fetch(model.params, ps.read_own_writes)
                    fetch_now = False
                    stopped = stop_now()
                    if stopped:
                        break
                tc = time.perf_counter()
                loss, correct = net.loss_and_grad(x, y, backend)
                if not direct:
                    acc += model.grads
                dt = time.perf_counter() - tc
                compute_s += dt
                if slow:  # an injected straggler
                    time.sleep(dt * slow)
                    slowed_s += dt * slow
                stats += (loss * len(y), correct, len(y))
                step += 1
                watchdog.heartbeat(step)
                since_push += 1
                if step == step0 + 1:  # its forward + backward, reported apart
                    first_step_s = compute_s
                if since_push == ps.n_push:
                    client.push(model.grads if direct else acc, since_push, *stats)
                    if not direct:
                        acc[:] = 0
                    stats[:] = 0
                    since_push = 0
                if gate is not None:
                    gate.publish(step)
                if replica == faults.fail_replica and step >= faults.fail_at_step:
                    failed = True  # leave without saying done: the shards must notice
                    break
                stopped = stop_now()
                if step >= total_steps or stopped:
                    break
            epoch += 1
            start = 0
            loader = _redeal(run, loader, redealt, step)
        if since_push and not failed and not stopped:
            client.push(acc, since_push, *stats)
        if not failed:
            client.done()
    except (ft.PeerDied, MPI.Exception) as e:  # a shard died (fault tolerance): regroup
        if isinstance(e, MPI.Exception) and not ft.is_failure(e):
            raise
        retired = _partner_died(run, e)
        if retired:  # the replica is gone; the shards still count this partition's pushes
            client.done()
        else:
            shard_died = ft.enabled()  # without ULFM nobody died (grow): close as usual
            carry = {"kind": "replica", "index": replica, "step": step}
            carry.update(versions=client.versions.tolist(), detected_unix=time.time())
            raise Regroup(carry) from None
    finally:
        loader.close()
        if not shard_died:  # Unlock_all reaches the dead shard's windows too
            client.close()
    wall = time.perf_counter() - t0
    out = asdict(client.stats)
    out.update(
        {
            "client": client.client,
            "replica": replica,
            "partition": role.partition,
            "steps": step,
            "samples": (step - step0) * cfg.run.batch_size,  # by this process
            "failed": failed,
            "stopped_by_signal": signalled,
            "compute_s": compute_s,
            "slowed_s": slowed_s,
            "first_step_s": first_step_s,
            "wall_s": wall,
            "samples_per_s": (step - step0) * cfg.run.batch_size / wall if wall else 0.0,
            "ssp": asdict(gate.stats) if gate is not None else None,
            "redealt": redealt,
            "retired": retired,
        }
    )
    return out
