"""Where the clients of a resumed Downpour run restart (hpcnet.ps.checkpoint.resume_plan),
checked against cases worked out by hand."""

from hpcnet.ps.checkpoint import ClientResume, resume_plan


def test_restarts_at_the_oldest_cut_and_skips_what_newer_shards_applied():
    # 2 shards, 2 clients; shard 1's snapshot was taken after one more push of client 0
    plan = resume_plan([[5, 7], [6, 7]], [[True, True], [True, True]], n_push=2, total_steps=20)
    assert plan == [
        ClientResume(step=10, sent=[5, 6], skip=[0, 1]),
        ClientResume(step=14, sent=[7, 7], skip=[0, 0]),
    ]


def test_a_finished_replica_stays_finished_and_its_short_last_push_counts():
    # 9 steps with n_push 4: pushes of 4, 4, 1 steps; all three applied = finished
    plan = resume_plan([[3, 2]], [[True], [True]], n_push=4, total_steps=9)
    assert plan[0] == ClientResume(step=9, sent=[3], skip=[0])
    assert plan[1] == ClientResume(step=8, sent=[2], skip=[0])


def test_partitions_of_a_replica_restart_together_on_the_shards_they_touch():
    # 1 replica of 2 partitions (clients 0, 1): client 0 pushes to shard 0 only,
    # client 1 to shard 1 only; the replica restarts at the older of the two cuts
    plan = resume_plan([[4, 0], [0, 3]], [[True, False], [False, True]], 1, 10, partitions=2)
    assert [c.step for c in plan] == [3, 3]
    assert plan[0].skip == [1, 0] and plan[1].skip == [0, 0]
