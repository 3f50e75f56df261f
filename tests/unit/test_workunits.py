"""The Sandblaster work-unit scheduler: load balancing, backups, exactly-once delivery."""

from hpcnet.algos.sandblaster.workunits import DELIVERED, WorkScheduler


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_every_unit_delivered_once_with_backups():
    clock = FakeClock()
    ws = WorkScheduler(3, 2, timeout=10, clock=clock)
    assert ws.next_for(0) == ("work", 0)
    assert ws.next_for(1) == ("work", 1)
    assert ws.on_done(1, 1, 2.0, 3)
    assert ws.next_for(1) == ("work", 2)
    assert ws.on_done(1, 2, 1.0, 1)
    assert ws.next_for(1) == ("flush", -1)
    assert ws.on_push_request(1, [1, 2])
    # nothing pending: replica 1 gets a backup copy of unit 0, still running on replica 0
    assert ws.next_for(1) == ("work", 0) and ws.backups == 1
    assert ws.on_done(1, 0, 5.0, 2)  # the backup finishes first: kept
    assert not ws.on_done(0, 0, 5.0, 2)  # the original arrives late: discarded
    assert ws.discarded == 1
    assert not ws.finished
    assert ws.next_for(1) == ("flush", -1) and ws.on_push_request(1, [0])
    assert ws.finished and ws.totals() == (8.0, 6)
    assert ws.accepted_pushes == [0, 2]


def test_lost_replica_work_is_reassigned_and_its_late_push_refused():
    clock = FakeClock()
    ws = WorkScheduler(2, 2, timeout=5, clock=clock)
    assert ws.next_for(0) == ("work", 0)
    assert ws.on_done(0, 0, 1.0, 1)  # kept, but not pushed yet
    assert ws.next_for(0) == ("work", 1)
    clock.t = 6.0
    ws.seen(1)
    assert ws.check_timeouts() == [0]
    # both the kept-unpushed unit 0 and the running unit 1 are pending again
    got = {ws.next_for(1)[1], ws.next_for(1)[1]}
    assert got == {0, 1}
    assert ws.on_done(1, 0, 1.0, 1)
    # replica 0 comes back: its push of unit 0, taken from it, is refused; its late
    # result for unit 1 (running on replica 1 now) counts as the first to arrive
    ws.seen(0)
    assert not ws.on_push_request(0, [0])
    assert ws.on_done(0, 1, 2.0, 0)
    assert not ws.on_done(1, 1, 2.0, 0)
    assert ws.on_push_request(0, [1])
    assert ws.on_push_request(1, [0]) and ws.finished
    assert [u.owner for u in ws.units] == [1, 0]
    assert all(u.status == DELIVERED for u in ws.units)


def test_a_refused_push_frees_the_units_it_held():
    # replica 0 keeps unit 0, is declared lost (unit 0 and its running unit 1 go back
    # to pending), comes back with unit 1 done (kept: the first result), then asks to
    # push [0, 1]: refused (unit 0 was taken from it). It drops the whole sum, so unit
    # 1 must become pending again, or the pass never ends (it would be told to flush).
    clock = FakeClock()
    ws = WorkScheduler(2, 2, timeout=5, clock=clock)
    assert ws.next_for(0) == ("work", 0)
    assert ws.on_done(0, 0, 1.0, 1)
    assert ws.next_for(0) == ("work", 1)
    clock.t = 6.0
    ws.seen(1)
    assert ws.check_timeouts() == [0]
    assert ws.next_for(1) == ("work", 0)  # the unit taken from replica 0
    ws.seen(0)
    assert ws.on_done(0, 1, 2.0, 0)  # unit 1 was pending, untaken: kept by replica 0
    assert not ws.on_push_request(0, [0, 1])  # unit 0 is no longer its own
    assert ws.units[1].status != DELIVERED and ws.units[1].owner == -1
    assert ws.next_for(0) == ("work", 1)  # not ("flush", -1) for ever
    assert ws.on_done(0, 1, 2.0, 0) and ws.on_push_request(0, [1])
    assert ws.on_done(1, 0, 1.0, 1) and ws.on_push_request(1, [0])
    assert ws.finished and ws.completed == [1, 1] and ws.totals() == (3.0, 1)


def test_lost_replica_that_comes_back_gets_work_again():
    clock = FakeClock()
    ws = WorkScheduler(3, 1, timeout=5, clock=clock)
    assert ws.next_for(0) == ("work", 0)
    clock.t = 10.0  # a slow first unit (compilation): declared lost, the only replica
    assert ws.check_timeouts() == [0]
    ws.seen(0)
    assert ws.on_done(0, 0, 1.0, 1)  # nobody else took it: still the first result
    assert ws.next_for(0) == ("work", 1)


def test_faster_replica_completes_more_units():
    clock = FakeClock()
    ws = WorkScheduler(30, 2, timeout=100, clock=clock)
    busy = {0: None, 1: None}
    finish = {0: 0.0, 1: 0.0}
    speed = {0: 1.0, 1: 3.0}  # replica 1 is 3x slower
    for _ in range(200):
        for r in (0, 1):
            if busy[r] is None or clock.t >= finish[r]:
                if busy[r] is not None:
                    ws.on_done(r, busy[r], 0.0, 0)
                    busy[r] = None
                kind, u = ws.next_for(r)
                if kind == "work":
                    busy[r], finish[r] = u, clock.t + speed[r]
                elif kind == "flush":
                    ws.on_push_request(r, list(ws.unpushed[r]))
        clock.t += 0.5
    assert ws.finished
    assert ws.completed[0] > 2 * ws.completed[1]
