""":class:`hpcnet.ps.client.ShardClient` against windows that complete RMA operations
only at ``Flush``, in an adversarial order (the reverse of issue), with a shard that may
apply a push between any two of them: what MPI allows and shared-memory MPICH and Open
MPI never show (they complete most operations at once, so these orderings cannot be
caught on real MPI here). Checks the protocol's invariants under the fast paths
(one-round-trip fetch, the skipped slot check):

* a push is announced (READY) only when its gradient is complete in the slot;
* a slot is never written while it holds an unconsumed push (exactly once);
* the version a fetch records is a lower bound of the parameters it got;
* every push is consumed once: applied == sent.
"""

import numpy as np
import pytest

from hpcnet.ps import windows as W
from hpcnet.ps.client import ShardClient

N = 16


class FakeWin:
    """An RMA window whose operations complete at ``Flush``, last issued first, with a
    shard step (``between``) that may run before each."""

    def __init__(self, mem: np.ndarray, name: str, shard: "HandShard"):
        self.mem, self.name, self.shard, self.pending = mem, name, shard, []

    def Lock_all(self, *_):
        pass

    def Unlock_all(self):
        pass

    def Get(self, buf, _target, spec):
        self.pending.append(("get", buf, spec[0], spec[1]))

    def Accumulate(self, buf, _target, spec, _op):
        self.pending.append(("acc", buf, spec[0], spec[1]))

    def Put(self, buf, _target, spec):
        self.pending.append(("put", buf, spec[0], spec[1]))

    def Flush(self, _target):
        ops, self.pending = self.pending[::-1], []
        for kind, buf, off, count in ops:
            self.shard.maybe_apply()
            if kind == "get":
                buf[:] = self.mem[off : off + count]
            else:
                if self.name == "inbox" and self.mem[off : off + count].any():
                    self.shard.errors.append(f"push {self.shard.ack}: slot written while busy")
                if kind == "put":
                    self.mem[off : off + count] = buf  # read at completion, as MPI may
                else:
                    self.mem[off : off + count] += buf
            self.shard.check()


class HandShard:
    """One shard with one client and ``slots`` inbox slots; its parameters all equal its
    version."""

    def __init__(self, rng, slots):
        self.rng, self.slots = rng, slots
        self.params = np.zeros(N, np.float32)
        self.inbox = np.zeros(N * slots, np.float32)
        self.ctrl = np.zeros(W.ctrl_size(1), np.float64)
        self.errors: list[str] = []
        self.ready_seen = 0

    @property
    def ack(self) -> int:
        return int(self.ctrl[W.field(0, W.ACK)])

    def slot(self, k: int) -> np.ndarray:
        """The slot push k goes to (independent of ShardWindows.slot)."""
        return self.inbox[(k % self.slots) * N : (k % self.slots + 1) * N]

    def check(self):
        ready = int(self.ctrl[W.field(0, W.READY)])
        if ready > self.ready_seen:  # just announced: its gradient must be there, whole
            self.ready_seen = ready
            if not np.array_equal(self.slot(ready - 1), grad(ready - 1)):
                self.errors.append(f"push {ready - 1} announced before its gradient was in")

    def maybe_apply(self):
        if self.rng.random() < 0.3 and self.ctrl[W.field(0, W.READY)] > self.ack:
            if not np.array_equal(self.slot(self.ack), grad(self.ack)):
                self.errors.append(f"push {self.ack}: slot holds something else")
            self.slot(self.ack)[:] = 0.0
            self.ctrl[W.VERSION] += 1
            self.params[:] = self.ctrl[W.VERSION]
            self.ctrl[W.field(0, W.ACK)] += 1


def grad(k: int) -> np.ndarray:
    return np.full(N, k + 1, np.float32)


def make(seed, slots):
    shard = HandShard(np.random.default_rng(seed), slots)
    mems = ((shard.params, "param"), (shard.inbox, "inbox"), (shard.ctrl, "ctrl"))
    wins = [FakeWin(m, name, shard) for m, name in mems]
    sw = W.ShardWindows(0, 0, 0, N, 1, *wins, slots=slots)
    return shard, ShardClient([sw], 0, wait_timeout=10.0)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("n_fetch", [1, 3])
@pytest.mark.parametrize("slots", [1, 2])
def test_invariants_hold_when_operations_complete_late_and_out_of_order(seed, n_fetch, slots):
    shard, client = make(seed, slots)
    params = np.zeros(N, np.float32)
    pushes = 30
    for k in range(pushes):
        if k % n_fetch == 0:
            client.fetch(params)
            v = client.versions[0]
            assert v <= params[0], f"fetch {k}: version {v} above the parameters' {params[0]}"
        client.push(grad(k), 1, 0.0, 0, 0)
    while shard.ack < client.sent[0]:
        shard.maybe_apply()
    assert shard.errors == [], shard.errors[:5]
    assert client.sent[0] == pushes and shard.ack == pushes == shard.ctrl[W.VERSION]
    assert client.stats.pushes == pushes
