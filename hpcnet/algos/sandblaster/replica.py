"""Sandblaster's replica: the work loop (Dean et al. 2012, sec. 4.2).

A replica asks the coordinator for work (:mod:`hpcnet.algos.sandblaster.protocol`)
and does what it is told: for ``WORK``, it computes the summed per-sample
gradient of the unit's rows (read once, then cached) at the parameters of the
current pass, which it ``Get``s from the shards' windows when a new pass starts
(:class:`hpcnet.ps.lbfgs_service.ParameterWindows`); it reports the unit
``DONE`` and, if the result is kept, adds its gradient to a local sum. Every
``units_per_push`` kept units, or when told to ``FLUSH`` or ``STOP``, it asks to
push the sum; only if the coordinator accepts does it send each shard its slice
(:func:`hpcnet.ps.lbfgs_service.push_gradient`). ``WAIT``: it pauses (back-off
200 us .. 20 ms) and asks again. A reply of a new pass voids what it kept.

Bytes per evaluation pass and replica: one fetch of ``4 n_params`` B, ``4 n_params`` B
per accepted push, 96 B per unit with the coordinator.

Fault injection (``[faults]``): a slow replica sleeps ``slow_factor - 1`` times its
compute time after each unit; a failing one stops answering after
``fail_at_step`` units, and the coordinator reassigns its work.

Who calls what: every replica rank runs :func:`run_replica` while the coordinator
and the shards serve; it returns at the coordinator's ``STOP`` (or its own
injected failure).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
from mpi4py import MPI

from hpcnet.algos.sandblaster.protocol import Action, Ask, CoordinatorLink, Request
from hpcnet.comm import Backoff, Deadlines, ft, watchdog
from hpcnet.data.loader import normalize, read_split_rows
from hpcnet.ps.lbfgs_service import ParameterWindows, push_gradient

if TYPE_CHECKING:  # pragma: no cover
    from hpcnet.algos.prepare import Prepared


def run_replica(
    prep: Prepared,
    comm: MPI.Intracomm,
    windows: ParameterWindows,
    r: int,
    units: list[tuple[int, int]],
    deadlines: Deadlines,
    on_poll=None,
    watch=None,
) -> dict:
    """Replica ``r``'s work loop, until the coordinator says ``STOP``; returns its figures.

    Args:
        units: ``(lo, hi)`` rows of each work unit (the unit indices the coordinator
            names).
        on_poll: called before each request (e.g. forwarding a signal this rank got
            to the coordinator).
        watch: the check for the coordinator's death (``check(force=False)``, raising
            to end the wait; :class:`hpcnet.algos.sandblaster.failover.CoordinatorWatch`);
            None: the run ends when it dies (:func:`.protocol.coordinator_died`).
    """
    cfg, model, backend, info = prep.cfg, prep.model, prep.backend, prep.info
    faults = cfg.faults
    per_push = cfg.lbfgs.units_per_push
    link = CoordinatorLink(comm, prep.layout, r, deadlines.coordinator_reply, prep.out, watch)
    windows.lock()

    try:
        return _work(link, windows, comm, model, backend, info, faults, per_push, units, r, on_poll)
    except MPI.Exception as e:  # e.g. a push to a shard that left: the coordinator died?
        if ft.is_failure(e):
            link.watch.check(force=True)  # Regroup (or RankLost) if so
        raise


def _work(link, windows, comm, model, backend, info, faults, per_push, units, r, on_poll):
    """The loop of :func:`run_replica` (its arguments, unpacked)."""
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    acc = np.zeros(model.n_params, np.float32)
    kept: list[int] = []
    request = Request(Ask.WORK)
    current = -1
    done_units = fetches = pushes = 0
    compute_s = slow_s = 0.0
    failed = False
    backoff = Backoff(first=200e-6, cap=20e-3)
    while True:
        watchdog.heartbeat(done_units)
        if on_poll is not None:
            on_poll()
        reply = link.ask(request)  # WORK or DONE: asks for work
        p = reply.pass_id
        if p != current:  # a new pass: anything kept from the old one is void
            acc[:] = 0
            kept = []
        if request.ask == Ask.DONE and reply.verdict:
            acc += model.grads  # the unit's summed gradient, kept
            kept.append(request.unit)
        # STOP comes only after the last pass is complete: anything still kept then is
        # stale (taken from us while we were lost), and nobody would answer a push request
        if (
            kept
            and reply.action != Action.STOP
            and (len(kept) >= per_push or reply.action == Action.FLUSH)
        ):
            answer = link.ask(Request(Ask.PUSH, p, units=tuple(kept)))
            if answer.verdict:
                push_gradient(comm, acc, windows.shard_ranks, windows.ranges, p)
                pushes += 1
            acc[:] = 0
            kept = []
            if answer.action == Action.STOP:  # the stop arrived as the push's answer
                break
        if reply.action == Action.STOP:
            break
        if reply.action != Action.WORK:
            backoff.sleep()
            request = Request(Ask.WORK, p)
            continue
        backoff.reset()
        if p != current:
            windows.fetch(model.params)
            windows.fetched_pass = p
            fetches += 1
            current = p
        u = reply.unit
        if u not in cache:
            x, y = read_split_rows(info.path, "train", info.train_index, reply.lo, reply.hi)
            cache[u] = (normalize(x, info.mean, info.std), y)
        x, y = cache[u]
        tc = time.perf_counter()
        loss, correct = model.loss_and_grad(x, y, backend, train=False)
        model.grads *= np.float32(len(y))  # per-sample sum, not mean
        dt = time.perf_counter() - tc
        compute_s += dt
        done_units += 1
        if r == faults.slow_replica and faults.slow_factor > 1:
            time.sleep(dt * (faults.slow_factor - 1))
            slow_s += dt * (faults.slow_factor - 1)
        if r == faults.fail_replica and done_units >= faults.fail_at_step:
            failed = True  # stop answering: the coordinator must reassign our work
            break
        request = Request(Ask.DONE, p, u, loss * len(y), correct)
    windows.unlock()
    return {
        "replica": r,
        "units_computed": done_units,
        "pushes": pushes,
        "fetches": fetches,
        "compute_s": compute_s,
        "slowed_s": slow_s,
        "failed": failed,
    }
