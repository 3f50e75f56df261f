"""The parameter shard's service loop (Downpour, Dean et al. 2012 sec. 4.1).

The shard's unit is the *client*: one replica partition, ``client = replica * M +
partition`` (one client per replica without model parallelism; see
:mod:`hpcnet.ps.windows`). How a push is consumed exactly once: client c owns
K inbox slots (:mod:`hpcnet.ps.windows`; K = 2 by default) and the two counters
READY[c] (written only by the client, += 1 per completed push) and ACK[c]
(written only by the shard). Push number k of client c (counted from 0) goes to
c's slot ``k % K``, and only when ``ACK[c] > k - K`` (push k - K, the slot's last
occupant, was consumed; read now, or known from an earlier read: ACK only grows
and only client c fills c's slots): it ``Put``s its gradient into the empty slot
(nobody else writes it, so no accumulate is needed: a 400 KB ``Put`` costs half
an ``Accumulate`` on MPICH's shared memory), ``Flush``es (the data is complete at
the shard), then adds 1 to READY[c] and flushes again. The shard applies c's
pushes in order: when ``READY[c] > ACK[c]`` it applies push ``ACK[c]`` from slot
``ACK[c] % K``, zeroes the slot, and only then adds 1 to ACK[c]. So a slot is
never written while the shard reads it, never read twice, and never skipped:
pushes applied == pushes sent, per client (tested). With K = 2 a client that
fetched after its last push usually knows its next slot empty without asking.

Consistency hpcnet guarantees (and what it does not):

* each push is applied whole, in one update, in the order clients' pushes are
  found (the slot is read only after READY, whose ``Flush`` followed the ``Put``'s);
* a client's ``Get`` of the parameters may race with an update and see some
  elements before and some after it (DistBelief accepts this; so do we);
* the version a client records at a fetch is never newer than the parameters it
  gets: it is the version from a head read that completed before the parameters'
  ``Get`` was issued (the previous push's or fetch's, in the same epoch as the
  parameters' since issue 14; it may lag by the updates applied in between), so
  measured staleness is an upper bound;
* with ``read_own_writes`` a client fetches only after all its own pushes were
  applied (with one replica this is exactly serial SGD / Adagrad).

Progress: MPICH may complete passive-target operations only when the target
enters MPI, so the loop calls ``Win.Sync`` and ``Iprobe`` on every pass and
sleeps with exponential back-off (20 us .. 1 ms) only when nothing arrived.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from mpi4py import MPI

from hpcnet.comm import Backoff, ft, watchdog
from hpcnet.ps import windows as W

STALENESS_BINS = 64  # histogram bins 0..63, the last one also counts larger values


@dataclass
class ShardStats:
    """What one shard did, for metrics.jsonl and summary.json."""

    shard: int
    lo: int
    hi: int
    version: int = 0
    pushes_applied: list[int] = field(default_factory=list)  # per client
    bytes_in: int = 0  # gradient bytes consumed from the inbox
    staleness_hist: list[int] = field(default_factory=list)  # count per staleness 0..63+
    lost_clients: list[int] = field(default_factory=list)  # silent too long, in order lost
    # per lost client: {"client", "after_s" (seconds into serving), "at_unix" (time.time()
    # then), "version" (this shard's then), "pushes_applied" (then), "cause": "process
    # failed" (MPI reported it dead, under ULFM) | "silent" (no heartbeat for the timeout)}
    lost_at: list[dict] = field(default_factory=list)
    pushes_announced: list[int] = field(default_factory=list)  # per client: READY at the end
    first_apply_unix: float = 0.0  # time.time() of this service's first apply (0: none)
    done_clients: list[int] = field(default_factory=list)  # said done by the end
    serve_s: float = 0.0  # wall seconds in the service loop
    cpu_s: float = 0.0  # CPU seconds (user + system) the loop used
    idle_cpu_fraction: float = 0.0  # CPU seconds / wall seconds while nothing arrived
    apply_s: float = 0.0  # seconds applying updates

    def staleness_summary(self) -> dict[str, float]:
        h = np.array(self.staleness_hist, dtype=np.float64)
        n = h.sum()
        if n == 0:
            return {"mean": 0.0, "max": 0, "p50": 0, "p90": 0}
        idx = np.arange(len(h))
        cdf = np.cumsum(h) / n
        return {
            "mean": float((h * idx).sum() / n),
            "max": int(idx[h > 0].max()),
            "p50": int(np.searchsorted(cdf, 0.5)),
            "p90": int(np.searchsorted(cdf, 0.9)),
        }


class ShardService:
    """Serves one parameter shard until every client is done or lost.

    Args:
        sw: this shard's windows (this rank must be their owner).
        rule: update rule (:func:`hpcnet.optim.rules.make_rule`) whose
            ``step(params, grads, lr)`` updates the shard's slice in place.
        lr_at: learning rate as a function of this shard's version.
        replica_timeout: seconds without a heartbeat after which a client
            that has not said done is declared lost (``--replica-timeout``).
        comm: the library communicator (for ``Iprobe`` progress).
        on_pass: called on every pass of the loop with the control counters (float64
            view), between applies: progress records, checkpoints
            (:mod:`hpcnet.ps.checkpoint`).
        signal_of: this rank's own stop signal (SIGTERM, SIGUSR1; 0: none). With a
            client's (its SIGNAL counter) it sets PREEMPT: every client stops.
        client_ranks: each client's rank in ``comm``: under fault tolerance
            (:mod:`hpcnet.comm.ft`) a client whose process MPI reports dead is lost at
            once, without waiting ``replica_timeout`` seconds.
        peer_ranks: the other shards' ranks: when one dies (fault tolerance) this shard
            stops serving (between applies) and :meth:`serve` raises
            :class:`hpcnet.comm.ft.PeerDied`.
        regroup_on_death: a dead client too ends serving that way (``--replace-lost``:
            the run regroups with a new process in its place); the REGROUP counter
            tells the clients to leave.
    """

    def __init__(
        self,
        sw: W.ShardWindows,
        rule,
        lr_at: Callable[[int], float],
        replica_timeout: float,
        comm: MPI.Intracomm,
        on_pass: Callable[[np.ndarray], None] | None = None,
        signal_of: Callable[[], int] = lambda: 0,
        client_ranks: list[int] | None = None,
        peer_ranks: list[int] | None = None,
        regroup_on_death: bool = False,
    ):
        self.regroup_on_death = regroup_on_death
        self.sw, self.rule, self.lr_at = sw, rule, lr_at
        self.client_ranks, self.peer_ranks = client_ranks, peer_ranks or []
        self.timeout = replica_timeout
        self.comm = comm
        self.on_pass, self.signal_of = on_pass, signal_of
        # Numba loads a cached kernel at its first call (~0.4 s here): do it now, while
        # the clients start, not at the first push (one element of scratch, lr 0)
        one = np.zeros(1, np.float32)
        type(rule)(1).step_and_zero(one, one.copy(), 0.0)
        self.stats = ShardStats(
            sw.shard,
            sw.lo,
            sw.hi,
            pushes_applied=[0] * sw.n_clients,
            staleness_hist=[0] * STALENESS_BINS,
        )

    # --- checkpoints ---------------------------------------------------------------
    def snapshot(self) -> tuple[dict[str, np.ndarray], dict]:
        """This shard's state between two applies: arrays ``slice`` ((n,) float32, its
        parameters) and, with Adagrad, ``accum`` ((n,) float32); state ``version`` and
        ``acks`` (per client: the pushes applied, so none is applied twice after a
        resume). A push in flight (written but not yet applied) is not in it."""
        params, _, ctrl = self.sw.local_arrays()
        arrays = {"slice": params.copy()}
        if getattr(self.rule, "accum", None) is not None:
            arrays["accum"] = self.rule.accum.copy()
        acks = [int(ctrl[W.field(c, W.ACK)]) for c in range(self.sw.n_clients)]
        return arrays, {"shard": self.sw.shard, "version": int(ctrl[W.VERSION]), "acks": acks}

    def restore(self, arrays: dict[str, np.ndarray], state: dict, steps: list[int]) -> None:
        """Puts a :meth:`snapshot` back into this shard's windows and update rule, before
        any client reaches in: parameters, accumulators, version, and per client
        READY = ACK = its pushes applied (an empty slot) and STEPS = ``steps[c]`` (the
        steps its applied pushes hold, for progress lines)."""
        params, _, ctrl = self.sw.local_arrays()
        params[:] = arrays["slice"]
        if "accum" in arrays:
            self.rule.accum[:] = arrays["accum"]
        ctrl[W.VERSION] = ctrl[W.APPLIED] = state["version"]
        for c, ack in enumerate(state["acks"]):
            ctrl[W.field(c, W.READY)] = ctrl[W.field(c, W.ACK)] = ack
            ctrl[W.field(c, W.STEPS)] = steps[c]
            self.stats.pushes_applied[c] = ack
        self.stats.version = state["version"]

    def _apply(self, c: int, params, inbox, ctrl) -> None:
        """Applies client ``c``'s oldest pending push (number ACK[c]) and empties its slot."""
        sw = self.sw
        k = int(ctrl[W.field(c, W.ACK)])
        at = sw.slot(c, k)
        slot = inbox[at : at + sw.n]
        base = W.field(c, W.BASE_VERSION + k % sw.slots)
        version = int(ctrl[W.VERSION])
        stale = version - int(ctrl[base])
        t = time.perf_counter()
        self.rule.step_and_zero(params, slot, self.lr_at(version))  # one pass: apply, empty
        self.stats.apply_s += time.perf_counter() - t
        ctrl[base] = 0.0
        ctrl[W.VERSION] = version + 1
        ctrl[W.APPLIED] += 1
        ctrl[W.field(c, W.ACK)] += 1.0  # last: the slot is empty again
        self.stats.pushes_applied[c] += 1
        self.stats.first_apply_unix = self.stats.first_apply_unix or time.time()
        self.stats.bytes_in += slot.nbytes
        self.stats.staleness_hist[min(max(stale, 0), STALENESS_BINS - 1)] += 1

    def serve(self) -> ShardStats:
        """Runs the service loop; returns the shard's statistics when it finishes."""
        sw, st = self.sw, self.stats
        params, inbox, ctrl = sw.local_arrays()
        C = sw.n_clients
        sw.lock_all()
        backoff = Backoff(first=20e-6, cap=1e-3)
        t0 = time.perf_counter()
        ru0 = resource.getrusage(resource.RUSAGE_SELF)
        last_hb = np.full(C, -1.0)
        last_seen = np.full(C, time.monotonic())
        lost: set[int] = set()
        dead: set[int] = set()  # clients whose process MPI reports failed (never back)
        next_failure_check = 0.0
        idle_wall = idle_cpu = 0.0
        while True:
            c_iter, w_iter = time.process_time(), time.perf_counter()
            sw.ctrl_win.Sync()
            sw.inbox_win.Sync()
            applied = 0
            for c in range(C):
                if ctrl[W.field(c, W.READY)] > ctrl[W.field(c, W.ACK)]:
                    self._apply(c, params, inbox, ctrl)
                    applied += 1
            if applied:
                sw.param_win.Sync()
                sw.ctrl_win.Sync()
            now = time.monotonic()
            watchdog.heartbeat(int(ctrl[W.VERSION]))  # a shard's step: the pushes it applied
            if not ctrl[W.PREEMPT]:  # a signal here or at a client's replica: all stop
                signum = max(self.signal_of(), int(ctrl[W.HEAD + W.SIGNAL :: W.PER_CLIENT].max()))
                if signum:
                    ctrl[W.PREEMPT] = signum
                    sw.ctrl_win.Sync()
            if self.on_pass is not None:
                self.on_pass(ctrl)
            if self.client_ranks is not None and now >= next_failure_check:
                dead |= self._dead_clients()  # local knowledge: no communication
                next_failure_check = now + 0.05
                if dead and self.regroup_on_death:
                    ctrl[W.REGROUP] = 1.0  # every client leaves at its next read
                    sw.ctrl_win.Sync()
                    raise ft.PeerDied([self.client_ranks[c] for c in sorted(dead)])
            done = []
            for c in range(C):
                hb = ctrl[W.field(c, W.HEARTBEAT)]
                if hb != last_hb[c] and c not in dead:
                    last_hb[c], last_seen[c] = hb, now
                    if c in lost:  # back: SSP waits for it again (hpcnet.ps.ssp)
                        ctrl[W.field(c, W.LOST)] = 0.0
                        sw.ctrl_win.Sync()
                    lost.discard(c)
                if ctrl[W.field(c, W.DONE)] > 0:
                    done.append(c)
                elif (c in dead or now - last_seen[c] > self.timeout) and c not in lost:
                    lost.add(c)
                    ctrl[W.field(c, W.LOST)] = 1.0  # SSP's minimum clock leaves it out
                    sw.ctrl_win.Sync()
                    if c not in st.lost_clients:
                        st.lost_clients.append(c)
                        st.lost_at.append(
                            {
                                "client": c,
                                "after_s": time.perf_counter() - t0,
                                "at_unix": time.time(),
                                "version": int(ctrl[W.VERSION]),
                                "pushes_applied": st.pushes_applied[c],
                                "cause": "process failed" if c in dead else "silent",
                            }
                        )
            pending = any(ctrl[W.field(c, W.READY)] > ctrl[W.field(c, W.ACK)] for c in range(C))
            if len(done) + len(lost) >= C and not pending:
                st.done_clients = done
                break
            if applied:
                backoff.reset()
            else:
                # let MPI make progress on passive-target operations (a dead rank's
                # failure, under ULFM, is acknowledged here and found below)
                ft.iprobe(self.comm)
                backoff.sleep()
                idle_cpu += time.process_time() - c_iter  # whole idle passes: polls + sleep
                idle_wall += time.perf_counter() - w_iter
        ctrl[W.STOP] = 1.0
        sw.ctrl_win.Sync()
        sw.unlock_all()
        ru1 = resource.getrusage(resource.RUSAGE_SELF)
        st.serve_s = time.perf_counter() - t0
        st.cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
        st.idle_cpu_fraction = idle_cpu / idle_wall if idle_wall else 0.0
        st.version = int(ctrl[W.VERSION])
        st.pushes_announced = [int(ctrl[W.field(c, W.READY)]) for c in range(C)]
        return st

    def _dead_clients(self) -> set[int]:
        """The clients whose process MPI reports failed (fault tolerance only).

        Raises:
            PeerDied: a peer shard's process failed.
        """
        failed = set(ft.failed_ranks(self.comm))
        if failed & set(self.peer_ranks):
            raise ft.PeerDied(sorted(failed & set(self.peer_ranks)))
        return {c for c, r in enumerate(self.client_ranks) if r in failed}
