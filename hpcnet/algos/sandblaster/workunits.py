"""Sandblaster's work-unit scheduler (Dean et al. 2012, sec. 4.2): pure bookkeeping,
no MPI, so it is tested on its own.

One evaluation pass cuts the rows into many small units. A replica that asks
gets the next pending unit, so faster replicas do more (load balancing). When
no unit is pending, idle replicas get *backup* copies of units still running
(MapReduce's backup tasks, Dean & Ghemawat 2004 sec. 3.6): the first result to
arrive is kept, later ones are discarded. A replica accumulates kept units'
gradients locally and asks before sending them to the shards; a push is
accepted only if every unit in it is still kept by that replica, and then its
units are *delivered*. So every unit's gradient reaches the shards exactly once.
A replica silent for ``timeout`` seconds while it holds work is declared lost
for the pass: its running units go back to pending (unless a copy runs
elsewhere) and so do its kept-but-unpushed units. If it speaks again it
rejoins; its results for units it no longer holds are then judged like any
late copy, and a push of units taken from it is refused.

Unit states: pending -> running -> kept (by one replica) -> delivered.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

PENDING, RUNNING, KEPT, DELIVERED = 0, 1, 2, 3


@dataclass
class UnitState:
    status: int = PENDING
    runners: dict[int, float] = field(default_factory=dict)  # replica -> start time
    owner: int = -1  # replica that holds the kept result
    loss: float = 0.0  # sum of per-sample losses of the kept result
    correct: int = 0


class WorkScheduler:
    """Hands out the units of one pass and decides which results count.

    Args:
        n_units: units in the pass (indices 0 .. n_units-1).
        n_replicas: replicas that may ask for work.
        timeout: seconds of silence after which a replica holding work is lost.
        clock: time source (tests pass a fake one).
    """

    def __init__(self, n_units: int, n_replicas: int, timeout: float, clock=time.monotonic):
        self.units = [UnitState() for _ in range(n_units)]
        self.pending = list(range(n_units))
        self.pending.reverse()  # pop() hands out unit 0 first
        self.timeout, self.clock = timeout, clock
        self.last_seen = [clock()] * n_replicas
        self.lost: set[int] = set()
        self.unpushed: list[list[int]] = [[] for _ in range(n_replicas)]
        self.accepted_pushes = [0] * n_replicas
        self.completed = [0] * n_replicas  # units each replica had kept (load balance)
        self.backups = 0  # backup copies handed out
        self.discarded = 0  # results thrown away (a copy had won, or lost replica)

    # --- events -------------------------------------------------------------
    def seen(self, r: int) -> None:
        """Replica r has spoken: it is alive (again). A replica declared lost that
        comes back rejoins the pass; the work taken from it stays reassigned."""
        self.last_seen[r] = self.clock()
        self.lost.discard(r)

    def on_done(self, r: int, u: int, loss: float, correct: int) -> bool:
        """Replica r finished unit u; returns True if its result is kept."""
        st = self.units[u]
        st.runners.pop(r, None)
        if r in self.lost or st.status in (KEPT, DELIVERED):
            self.discarded += 1
            return False
        st.status, st.owner, st.loss, st.correct = KEPT, r, loss, correct
        self.unpushed[r].append(u)
        self.completed[r] += 1
        return True

    def on_push_request(self, r: int, units: list[int]) -> bool:
        """Replica r asks to push the summed gradient of ``units``; True = send it.

        A refused push is dropped whole by the replica, so the units of it that r
        still keeps go back to pending: kept by nobody who can deliver them, they would
        otherwise hold the pass open for ever (r would be told to flush what it no
        longer has)."""
        ok = r not in self.lost and all(
            self.units[u].status == KEPT and self.units[u].owner == r for u in units
        )
        if ok:
            for u in units:
                self.units[u].status = DELIVERED
            self.accepted_pushes[r] += 1
        else:
            for u in units:
                st = self.units[u]
                if st.status == KEPT and st.owner == r:
                    st.status, st.owner, st.loss, st.correct = PENDING, -1, 0.0, 0
                    self.pending.append(u)
                    self.completed[r] -= 1
        self.unpushed[r] = [u for u in self.unpushed[r] if u not in set(units)]
        return ok

    def next_for(self, r: int) -> tuple[str, int]:
        """What replica r should do next: ("work", u), ("flush", -1) or ("wait", -1)."""
        while self.pending:
            u = self.pending.pop()
            if self.units[u].status == PENDING:
                self.units[u].status = RUNNING
                self.units[u].runners[r] = self.clock()
                return ("work", u)
        if self.unpushed[r]:
            return ("flush", -1)
        # backup task: the running unit started longest ago that r is not running yet
        best, best_t = -1, None
        for u, st in enumerate(self.units):
            if st.status == RUNNING and r not in st.runners and len(st.runners) < 2:
                t0 = min(st.runners.values()) if st.runners else 0.0
                if best_t is None or t0 < best_t:
                    best, best_t = u, t0
        if best >= 0:
            self.units[best].runners[r] = self.clock()
            self.backups += 1
            return ("work", best)
        return ("wait", -1)

    def check_timeouts(self) -> list[int]:
        """Declares silent replicas that hold work lost; returns the newly lost ones."""
        now = self.clock()
        newly = []
        for r in range(len(self.last_seen)):
            if r in self.lost or now - self.last_seen[r] <= self.timeout:
                continue
            holds = self.unpushed[r] or any(r in st.runners for st in self.units)
            if holds:
                self.lose(r)
                newly.append(r)
        return newly

    def lose(self, r: int) -> None:
        """Replica r is out for this pass: its work goes back to pending."""
        self.lost.add(r)
        for u, st in enumerate(self.units):
            if r in st.runners:
                del st.runners[r]
                if st.status == RUNNING and not st.runners:
                    st.status = PENDING
                    self.pending.append(u)
        for u in self.unpushed[r]:
            st = self.units[u]
            st.status, st.owner, st.loss, st.correct = PENDING, -1, 0.0, 0
            self.pending.append(u)
            self.completed[r] -= 1
        self.unpushed[r] = []

    # --- queries ------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """True when every unit's gradient has been delivered to the shards."""
        return all(st.status == DELIVERED for st in self.units)

    def totals(self) -> tuple[float, int]:
        """Summed loss and correct count over the delivered units."""
        return (
            sum(st.loss for st in self.units if st.status == DELIVERED),
            sum(st.correct for st in self.units if st.status == DELIVERED),
        )
