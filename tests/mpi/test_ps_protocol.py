"""The push protocol of :mod:`hpcnet.ps.client` against a hand-run shard that checks
the inbox slot at the instant a push is announced: a push is never announced before
its gradient is complete (READY after the gradient's Flush), and a slot is never
written while it holds an unconsumed push, also when the client skips its slot
check because an earlier read showed the slot empty (each push consumed exactly once).
"""

import time

import numpy as np
import pytest

from hpcnet.ps import windows as W
from hpcnet.ps.client import ShardClient
from tests.mpi.ranks import first_ranks

N_PUSH = 40
N = 1 << 20  # 4 MB a push: large enough that an unflushed gradient would show


def _grad(k: int) -> np.ndarray:
    """Push k's gradient (N,) float32: values that any sum of two pushes cannot give."""
    return np.full(N, float(k + 1), np.float32) + np.arange(N, dtype=np.float32) * 1e-3


def _serve_by_hand(sw: W.ShardWindows, rng) -> list[str]:
    """Consumes N_PUSH pushes of client 0 in order, push k from slot k % K, slowly (0-3
    ms each, so the client must find its slot busy sometimes); returns what was wrong."""
    _, inbox, ctrl = sw.local_arrays()
    ready, ack = W.field(0, W.READY), W.field(0, W.ACK)
    K = sw.slots
    errors = []
    k = 0
    while k < N_PUSH:
        sw.ctrl_win.Sync()
        sw.inbox_win.Sync()
        if ctrl[ready] <= ctrl[ack]:
            time.sleep(20e-6)
            continue
        slot = inbox[(k % K) * N : (k % K + 1) * N]  # computed here, not by sw.slot
        if ctrl[ready] > ctrl[ack] + K:
            errors.append(f"push {k}: READY {ctrl[ready]} with ACK {ctrl[ack]}, {K} slots")
        if not np.array_equal(slot, _grad(k)):  # at the instant READY was seen
            errors.append(f"push {k}: slot incomplete or summed when announced")
        time.sleep(rng.uniform(0, 3e-3))  # a slow apply: the client must wait for it
        sw.inbox_win.Sync()
        if not np.array_equal(slot, _grad(k)):  # written again before consumed
            errors.append(f"push {k}: slot written while it held an unconsumed push")
        slot[:] = 0.0
        ctrl[W.VERSION] += 1
        ctrl[ack] += 1.0
        sw.ctrl_win.Sync()
        sw.inbox_win.Sync()
        k += 1
    return errors


@pytest.mark.mpi(min_size=2)
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fetch_between", [True, False])
@pytest.mark.parametrize("slots", [1, 2])
def test_push_is_announced_complete_and_never_overwrites_a_busy_slot(comm, fetch_between, slots):
    """With a fetch between pushes the client often skips its slot check (the fetch saw
    the ACK); without, it reads the ACK each time. Either way every push reaches the
    shard whole, once, into an empty slot."""
    sub = first_ranks(comm, 2)
    if sub is None:
        return
    windows = W.create_shard_windows(sub, [0], [(0, N)], 1, slots=slots)
    sw = windows[0]
    errors = skipped = None
    if sub.rank == 0:
        sw.lock_all()
        errors = _serve_by_hand(sw, np.random.default_rng(1))
        sw.unlock_all()
    else:
        client = ShardClient(windows, 0, wait_timeout=60.0)
        params = np.empty(N, np.float32)
        skipped = 0
        for k in range(N_PUSH):
            if fetch_between:
                time.sleep(2e-3)  # compute: the shard may empty the slot meanwhile
                client.fetch(params)
            skipped += int(client.acks[0] + slots - 1 >= client.sent[0])
            client.push(_grad(k), 1, 0.0, 0, 0)
        client.close()
    errors = sub.bcast(errors, root=0)
    skipped = sub.bcast(skipped, root=1)
    sub.Barrier()
    for w in windows:
        w.free()
    sub.Free()
    assert errors == [], errors[:5]
    if fetch_between:
        assert skipped > 0  # the fast path was taken (and checked above)
