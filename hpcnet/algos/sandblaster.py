"""Sandblaster L-BFGS (Dean et al. 2012, sec. 4.2): a coordinator, shard-side vector
algebra, and load-balanced work units with backup tasks.

Ranks: the coordinator (rank 0), ``S`` parameter shards (ranks 1..S), ``R``
replicas. No process ever holds or moves the whole parameter vector during
the optimisation: the shards keep their slices of x, d, g and the L-BFGS
history (:mod:`hpcnet.ps.lbfgs_shard`); the coordinator runs L-BFGS on scalars
(the vector-free two-loop recursion, :mod:`hpcnet.optim.lbfgs`) and the
backtracking Armijo line search; the replicas compute gradients of work units.

One *evaluation pass* (function and gradient at ``x + t d`` over the L-BFGS
batch):

1. coordinator -> shards ``begin(t)``: each shard writes ``x + t d`` (float32)
   into its parameter window;
2. replicas ask the coordinator for work and ``Get`` the parameters from the
   shards' windows when a new pass starts; units go to whoever asks (faster
   replicas do more), backup copies to idle replicas near the end
   (:mod:`hpcnet.algos.workunits`);
3. a replica sums the gradients of its kept units and, every
   ``units_per_push`` units (or when told to flush), asks the coordinator; if
   accepted it ``Send``s each shard its slice;
4. when every unit is delivered, coordinator -> shards ``finalize``: each shard
   waits for exactly the accepted pushes and returns three partial sums.

Messages are small float64 arrays (buffer API); every wait polls with sleeps
and has a time limit. Communication per iteration: see the shard module.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
from mpi4py import MPI

from hpcnet.algos.common import Prepared, announce, base_summary, evaluate, report
from hpcnet.algos.workunits import WorkScheduler
from hpcnet.comm import Backoff, allgather_ranges, barrier_polling, bcast_, same_on_every_rank
from hpcnet.data.format import read_rows
from hpcnet.data.loader import normalize
from hpcnet.optim.lbfgs import (
    ARMIJO_C1,
    CURVATURE_EPS,
    MAX_TRIALS,
    SHRINK,
    first_step,
    two_loop_coefficients,
)
from hpcnet.ps import lbfgs_shard as L
from hpcnet.ps.windows import shard_ranges

TAG_REQ, TAG_WORK = 21, 22
# replica -> coordinator message kinds
REQ, DONE, PUSHREQ = 1.0, 2.0, 3.0
# coordinator -> replica actions (NONE: the answer to a push request)
WORK, FLUSH, WAIT, STOP, NONE = 1.0, 2.0, 3.0, 4.0, 5.0
REPLY_LEN = 6  # [verdict, action, pass, unit, lo, hi]


def _recv_polling(comm, buf, source, tag, timeout, what):
    """Irecv + Test with sleeps: a waiting rank leaves the core to others; times out."""
    req = comm.Irecv(buf, source=source, tag=tag)
    deadline = time.monotonic() + timeout
    backoff = Backoff(first=20e-6, cap=5e-3)
    while not req.Test():
        if time.monotonic() > deadline:
            req.Cancel()
            raise TimeoutError(f"rank {comm.Get_rank()}: {what} timed out after {timeout:.0f} s")
        backoff.sleep()


def train_sandblaster(prep: Prepared, comm: MPI.Intracomm, verbose: bool = True) -> dict:
    """Runs Sandblaster L-BFGS. Collective over ``comm`` at its start and end only."""
    cfg, layout, model = prep.cfg, prep.layout, prep.model
    rank = comm.Get_rank()
    role = layout.role(rank)
    S, R = layout.shards, layout.replicas
    with same_on_every_rank():
        ranges = shard_ranges(model.n_params, S, [a for _, a, _ in model.segments])
    n_batch = cfg.lbfgs.batch or prep.info.n_train
    n_batch = min(n_batch, prep.info.n_train)
    unit = cfg.lbfgs.unit_size or max(1, n_batch // (10 * R))
    units = [(lo, min(lo + unit, n_batch)) for lo in range(0, n_batch, unit)]
    max_passes = max(2, math.ceil(cfg.run.epochs * prep.info.n_train / n_batch))

    if rank == 0:
        model.init(cfg.run.seed)
    bcast_(model.params, comm)
    # one parameter window per shard, memory on the shard only (replicas Get from it)
    wins = []
    for s, (lo, hi) in enumerate(ranges):
        mine = role.kind == "shard" and role.index == s
        wins.append(MPI.Win.Allocate((hi - lo) * 4 if mine else 0, 4, MPI.INFO_NULL, comm))
    announce(
        prep,
        f"{len(units)} work units of {unit} rows per pass over {n_batch} rows; "
        f"up to {max_passes} passes; L-BFGS m={cfg.lbfgs.m}; shard ranges {ranges}",
        verbose,
    )
    comm.Barrier()
    t_train = time.perf_counter()
    result: dict[str, Any] = {}
    drain = None
    if role.kind == "coordinator":
        coordinator = _Coordinator(prep, comm, units, n_batch, max_passes, verbose)
        result = coordinator.run()
        drain = coordinator.drain
    elif role.kind == "shard":
        result = _serve_shard(prep, comm, wins[role.index], role.index, ranges[role.index])
    else:
        result = _replica(prep, comm, wins, ranges, role.index, units)
    train_s = time.perf_counter() - t_train

    barrier_polling(
        comm,
        timeout=max(120.0, 4 * cfg.ps.replica_timeout),
        what="sandblaster end barrier",
        on_poll=drain,
    )
    if drain is not None:
        drain()
    mine = result.pop("_x") if role.kind == "shard" else np.empty(0, np.float32)
    shard_ranks = [1 + s for s in range(len(ranges))]  # after the coordinator
    allgather_ranges(mine, shard_ranks, ranges, model.params, comm)
    for w in wins:
        w.Free()
    test_loss, test_acc = evaluate(prep, role.index if role.kind == "replica" else None, comm)
    gathered = comm.gather((role.kind, role.index, result), root=0)
    summary = base_summary(prep, comm)
    if rank == 0:
        coord = result
        reps = sorted((g[2] for g in gathered if g[0] == "replica"), key=lambda r: r["replica"])
        summary.update(coord)
        summary.update(
            {
                "replicas": reps,
                "test_accuracy": test_acc,
                "test_loss": test_loss,
                "steps": coord["iterations"],
                "epochs": coord["passes"] * n_batch / prep.info.n_train,
                "samples_per_s": coord["passes"] * n_batch / train_s if train_s else 0.0,
                "train_s": train_s,
                "wall_s": time.perf_counter() - prep.t_start,
                "units_per_pass": len(units),
                "unit_size": unit,
            }
        )
        report(prep, summary, verbose)
    summary = comm.bcast(summary if rank == 0 else None, root=0)
    summary["_params"] = model.params
    return summary


# --------------------------------------------------------------------------- shard
def _serve_shard(prep, comm, win, s, rng) -> dict:
    lo, hi = rng
    cfg = prep.cfg
    R = prep.layout.replicas
    first_replica = 1 + prep.layout.shards
    state = L.LBFGSShardState(prep.model.params[lo:hi], cfg.lbfgs.m, cfg.optim.weight_decay)
    served = np.frombuffer(win.tomemory(), np.float32)
    win.Lock_all(MPI.MODE_NOCHECK)
    buf = np.empty(hi - lo, np.float32)
    received = np.zeros(R, np.int64)
    current = -1
    status = MPI.Status()
    backoff = Backoff(first=20e-6, cap=2e-3)
    pushes = 0
    timeout = max(120.0, 4 * cfg.ps.replica_timeout)

    def take_push(st):
        nonlocal pushes
        comm.Recv(buf, source=st.Get_source(), tag=st.Get_tag())
        if st.Get_tag() == L.push_tag(current):
            state.add(buf)
            received[st.Get_source() - first_replica] += 1
            pushes += 1

    while True:
        if not comm.Iprobe(MPI.ANY_SOURCE, MPI.ANY_TAG, status):
            backoff.sleep()
            continue
        backoff.reset()
        tag = status.Get_tag()
        if tag >= L.TAG_PUSH0:
            take_push(status)
            continue
        if tag != L.TAG_CMD:  # not ours: leave it (cannot happen in a correct run)
            raise RuntimeError(f"shard {s}: unexpected message tag {tag}")
        cmd = np.empty(status.Get_count(MPI.DOUBLE), np.float64)
        comm.Recv(cmd, source=0, tag=L.TAG_CMD)
        op = int(cmd[0])
        if op == L.STOP:
            break
        if op == L.BEGIN:
            current = int(cmd[1])
            served[:] = state.begin(float(cmd[2]))
            win.Sync()
            received[:] = 0
            reply = np.ones(1)
        elif op == L.FINALIZE:
            expected = cmd[3 : 3 + R].astype(np.int64)
            deadline = time.monotonic() + timeout
            while (received < expected).any():
                st = MPI.Status()
                if comm.Iprobe(MPI.ANY_SOURCE, L.push_tag(current), st):
                    take_push(st)
                elif time.monotonic() > deadline:
                    raise TimeoutError(
                        f"shard {s}: pushes {received.tolist()} of "
                        f"{expected.tolist()} after {timeout:.0f} s"
                    )
                else:
                    backoff.sleep()
            reply = state.finalize(int(cmd[2]))
        elif op == L.GRAM:
            reply = state.gram()
        elif op == L.DIRECTION:
            state.direction(cmd[1:])
            reply = np.ones(1)
        elif op == L.ACCEPT:
            reply = state.accept()
        elif op == L.COMMIT:
            state.commit(bool(cmd[1]))
            reply = np.ones(1)
        elif op == L.RESET:
            state.reset()
            reply = np.ones(1)
        else:
            raise RuntimeError(f"shard {s}: unknown command {op}")
        comm.Send(np.ascontiguousarray(reply, np.float64), dest=0, tag=L.TAG_REPLY)
    win.Unlock_all()
    return {"shard": s, "lo": lo, "hi": hi, "pushes_received": pushes, "_x": state.x}


# --------------------------------------------------------------------------- coordinator
class _Coordinator:
    def __init__(self, prep, comm, units, n_batch, max_passes, verbose):
        self.prep, self.comm, self.units = prep, comm, units
        self.n_batch, self.max_passes, self.verbose = n_batch, max_passes, verbose
        self.S, self.R = prep.layout.shards, prep.layout.replicas
        self.first_replica = 1 + self.S
        self.timeout = prep.cfg.ps.replica_timeout
        self.passes = 0
        self.completed = np.zeros(self.R, np.int64)
        self.backups = self.discarded = 0
        self.lost_events: list[tuple[int, int]] = []  # (pass, replica)
        self.history: list[dict] = []
        self._msg = np.empty(8 + prep.cfg.lbfgs.units_per_push + len(units), np.float64)

    # shards ---------------------------------------------------------------
    def shards(self, *cmd) -> np.ndarray:
        """Sends one command to every shard and returns the sum of their replies."""
        msg = np.array(cmd, np.float64)
        reqs = [self.comm.Isend(msg, dest=1 + s, tag=L.TAG_CMD) for s in range(self.S)]
        if cmd[0] == L.STOP:  # the one command without a reply
            MPI.Request.Waitall(reqs)
            return np.zeros(0)
        total = None
        for s in range(self.S):
            st = MPI.Status()
            deadline = time.monotonic() + max(120.0, 4 * self.timeout)
            backoff = Backoff(first=20e-6, cap=2e-3)
            while not self.comm.Iprobe(1 + s, L.TAG_REPLY, st):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"coordinator: shard {s} did not answer command {cmd[0]}")
                backoff.sleep()
            part = np.empty(st.Get_count(MPI.DOUBLE), np.float64)
            self.comm.Recv(part, source=1 + s, tag=L.TAG_REPLY)
            total = part if total is None else total + part
        MPI.Request.Waitall(reqs)
        return total

    # one evaluation pass --------------------------------------------------
    def evaluate(self, t: float) -> tuple[float, float, float, float]:
        """f, g.d, g.g and training accuracy at x + t d (one pass over the batch)."""
        self.passes += 1
        p = self.passes
        self.shards(L.BEGIN, p, t)
        ws = WorkScheduler(len(self.units), self.R, self.timeout)
        status = MPI.Status()
        backoff = Backoff(first=20e-6, cap=2e-3)
        while not ws.finished:
            for r in ws.check_timeouts():
                self.lost_events.append((p, r))
            if not self.comm.Iprobe(MPI.ANY_SOURCE, TAG_REQ, status):
                backoff.sleep()
                continue
            backoff.reset()
            self._answer(ws, status, p)
        self.completed += ws.completed
        self.backups += ws.backups
        self.discarded += ws.discarded
        sums = self.shards(L.FINALIZE, p, self.n_batch, *ws.accepted_pushes)
        loss, correct = ws.totals()
        wd = self.prep.cfg.optim.weight_decay
        f = loss / self.n_batch + 0.5 * wd * sums[0]
        return f, float(sums[1]), float(sums[2]), correct / self.n_batch

    def _answer(self, ws, status, p) -> int:
        src = status.Get_source()
        n = status.Get_count(MPI.DOUBLE)
        msg = self._msg[:n]
        self.comm.Recv(msg, source=src, tag=TAG_REQ)
        r = src - self.first_replica
        verdict, unit = 0.0, -1
        ws.seen(r)
        kind, mp = msg[0], int(msg[1])
        if kind == DONE and mp == p:
            verdict = float(ws.on_done(r, int(msg[2]), float(msg[3]), int(msg[4])))
        if kind == PUSHREQ:  # a push request does not ask for work: no assignment
            if mp == p:
                verdict = float(ws.on_push_request(r, [int(u) for u in msg[6 : 6 + int(msg[5])]]))
            action = NONE
        else:
            what, unit = ws.next_for(r)
            action = {"work": WORK, "flush": FLUSH, "wait": WAIT}[what]
        lo, hi = self.units[unit] if unit >= 0 else (0, 0)
        reply = np.array([verdict, action, p, unit, lo, hi], np.float64)
        self.comm.Send(reply, dest=src, tag=TAG_WORK)
        return r

    def stop_replicas(self) -> None:
        """Tells every replica to stop, unasked: a replica busy with a (backup)
        unit receives it as the answer to its next message; a stopped replica
        never receives it, which costs nothing (an eager send)."""
        stop = np.array([0.0, STOP, self.passes, -1, 0, 0], np.float64)
        reqs = [
            self.comm.Isend(stop, dest=self.first_replica + r, tag=TAG_WORK) for r in range(self.R)
        ]
        MPI.Request.Waitall(reqs)

    def drain(self) -> None:
        """Receives and drops replica messages sent before they saw STOP."""
        status = MPI.Status()
        while self.comm.Iprobe(MPI.ANY_SOURCE, TAG_REQ, status):
            self.comm.Recv(
                self._msg[: status.Get_count(MPI.DOUBLE)], source=status.Get_source(), tag=TAG_REQ
            )

    # L-BFGS ---------------------------------------------------------------
    def run(self) -> dict:
        cfg = self.prep.cfg
        m = cfg.lbfgs.m
        t0 = time.perf_counter()
        f, _, gg, acc = self.evaluate(0.0)
        self.shards(L.ACCEPT)
        self.shards(L.COMMIT, 0)
        self._record(0, f, acc, 0.0, gg, t0)
        k = 0  # pairs stored
        while self.passes < self.max_passes:
            if k:
                gram = self.shards(L.GRAM).reshape(2 * k + 1, 2 * k + 1)
                delta = two_loop_coefficients(gram, k)
                gd = float(delta @ gram[:, 2 * k])
            else:
                delta, gd = np.array([-1.0]), -gg
            if gd >= 0:  # not a descent direction: forget the history
                self.shards(L.RESET)
                k, delta, gd = 0, np.array([-1.0]), -gg
            self.shards(L.DIRECTION, *delta)
            t = 1.0 if k else first_step(math.sqrt(gg))
            accepted = False
            for _ in range(MAX_TRIALS):
                if self.passes >= self.max_passes:
                    break
                f_t, _, gg_t, acc_t = self.evaluate(t)
                if f_t <= f + ARMIJO_C1 * t * gd:
                    accepted = True
                    break
                t *= SHRINK
            if not accepted:
                if not k:
                    break
                self.shards(L.RESET)
                k = 0
                continue
            sy, yy = self.shards(L.ACCEPT)
            store = sy > CURVATURE_EPS * yy
            self.shards(L.COMMIT, float(store))
            if store:
                k = min(k + 1, m)
            f, gg, acc = f_t, gg_t, acc_t
            self._record(len(self.history), f, acc, t, gg, t0)
        self.stop_replicas()
        self.shards(L.STOP)
        return {
            "iterations": len(self.history) - 1,
            "passes": self.passes,
            "loss_history": [h["loss"] for h in self.history],
            "units_completed": self.completed.tolist(),
            "backup_units": self.backups,
            "discarded_results": self.discarded,
            "lost_replicas": sorted({r for _, r in self.lost_events}),
            "lost_events": self.lost_events,
            "final_train_loss": f,
            "final_train_accuracy": acc,
        }

    def _record(self, it, f, acc, t, gg, t0):
        now = time.perf_counter()
        rec = {
            "iteration": it,
            "passes": self.passes,
            "loss": f,
            "accuracy": acc,
            "step": t,
            "grad_norm": math.sqrt(gg),
            "elapsed_s": now - self.prep.t_start,
            "units_completed": self.completed.tolist(),
        }
        self.history.append(rec)
        if self.prep.log is not None:
            self.prep.log.write(rec)
            if self.verbose:
                print(
                    f"iteration {it:>4}  passes {self.passes:>4}/{self.max_passes}  "
                    f"loss {f:.5f}  acc {acc:.3f}  step {t:.3g}  |g| {math.sqrt(gg):.3g}  "
                    f"units/replica {self.completed.tolist()}",
                    flush=True,
                )


# --------------------------------------------------------------------------- replica
def _replica(prep, comm, wins, ranges, r, units) -> dict:
    cfg, model, backend, info = prep.cfg, prep.model, prep.backend, prep.info
    faults = cfg.faults
    per_push = cfg.lbfgs.units_per_push
    timeout = max(600.0, 10 * cfg.ps.replica_timeout)
    for w in wins:
        w.Lock_all(MPI.MODE_NOCHECK)
    cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    acc = np.zeros(model.n_params, np.float32)
    kept: list[int] = []
    reply = np.empty(REPLY_LEN, np.float64)
    msg = np.array([REQ, -1, -1, 0, 0, 0], np.float64)
    current = -1
    done_units = fetches = pushes = 0
    compute_s = slow_s = 0.0
    failed = False
    backoff = Backoff(first=200e-6, cap=20e-3)
    shard_ranks = [1 + s for s in range(len(ranges))]

    def fetch():
        for w, rank_, (a, b) in zip(wins, shard_ranks, ranges, strict=True):
            w.Get(model.params[a:b], rank_, (0, b - a, MPI.FLOAT))
        for w, rank_ in zip(wins, shard_ranks, strict=True):
            w.Flush(rank_)

    def ask(message):
        comm.Send(message, dest=0, tag=TAG_REQ)
        _recv_polling(comm, reply, 0, TAG_WORK, timeout, f"replica {r} waiting for the coordinator")
        return reply[0], reply[1], int(reply[2]), int(reply[3]), int(reply[4]), int(reply[5])

    while True:
        verdict, action, p, u, lo, hi = ask(msg)  # REQ or DONE: asks for work
        if p != current:  # a new pass: anything kept from the old one is void
            acc[:] = 0
            kept = []
        if msg[0] == DONE and verdict == 1.0:
            acc += model.grads  # the unit's summed gradient, kept
            kept.append(int(msg[2]))
        if kept and (len(kept) >= per_push or action in (FLUSH, STOP)):
            ok, *_ = ask(np.array([PUSHREQ, p, -1, 0, 0, len(kept), *kept], np.float64))
            if ok == 1.0:
                for (a, b), rank_ in zip(ranges, shard_ranks, strict=True):
                    comm.Send(acc[a:b], dest=rank_, tag=L.push_tag(p))
                pushes += 1
            acc[:] = 0
            kept = []
        if action == STOP:
            break
        if action != WORK:
            backoff.sleep()
            msg = np.array([REQ, p, -1, 0, 0, 0], np.float64)
            continue
        backoff.reset()
        if p != current:
            fetch()
            fetches += 1
            current = p
        if u not in cache:
            x, y = read_rows(info.path, "train", lo, hi)
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
        msg = np.array([DONE, p, u, loss * len(y), correct, 0], np.float64)
    for w in wins:
        w.Unlock_all()
    return {
        "replica": r,
        "units_computed": done_units,
        "pushes": pushes,
        "fetches": fetches,
        "compute_s": compute_s,
        "slowed_s": slow_s,
        "failed": failed,
    }
