"""The cost model of ``hpcnet.perfmodel`` against hand-computed values.

Each expected figure is worked out in the comment beside it from the formulas'
sources (Thakur, Rabenseifner & Gropp 2005 for the allreduce; Dean et al. 2012 for
Downpour's shard limits), so a changed formula fails here.
"""

import math

import pytest

from hpcnet import perfmodel as pm


def test_fit_link_recovers_alpha_and_beta():
    alpha, beta = 20e-6, 5e9
    sizes = [4096, 65536, 1 << 20, 16 << 20]
    link = pm.fit_link(sizes, [alpha + n / beta for n in sizes])
    assert link.alpha_s == pytest.approx(alpha, rel=1e-6)
    assert link.beta_Bps == pytest.approx(beta, rel=1e-6)


def test_fit_link_refuses_what_it_cannot_fit():
    with pytest.raises(ValueError, match="two distinct"):
        pm.fit_link([4096, 4096], [1e-5, 2e-5])
    with pytest.raises(ValueError, match="does not grow"):
        pm.fit_link([4096, 1 << 20], [1e-3, 1e-5])


def test_allreduce_ring_and_tree_by_hand():
    link = pm.Link(1e-5, 1e9)  # 10 us, 1 GB/s
    n = 8e6  # 8 MB
    # ring, p = 4: 2 * 3 * 10 us + 2 * 3/4 * 8 ms = 0.06 ms + 12 ms
    assert pm.allreduce_s(n, 4, link, "ring") == pytest.approx(12.06e-3)
    # tree, p = 4: 2 * log2(4) * (10 us + 8 ms) = 4 * 8.01 ms
    assert pm.allreduce_s(n, 4, link, "tree") == pytest.approx(32.04e-3)
    assert pm.allreduce_s(n, 4, link) == pytest.approx(12.06e-3)  # auto: the cheaper
    # small message, p = 64: ring pays 126 latencies, tree 12: tree wins
    small = 8.0
    ring = 2 * 63 * 1e-5 + 2 * 63 / 64 * small / 1e9
    tree = 2 * 6 * (1e-5 + small / 1e9)
    assert tree < ring and pm.allreduce_s(small, 64, link) == pytest.approx(tree)
    assert pm.allreduce_s(n, 1, link) == 0.0
    with pytest.raises(ValueError, match="choose ring"):
        pm.allreduce_s(n, 4, link, "butterfly")


def test_sync_alone_is_efficiency_one_and_oversubscription_halves_it():
    m = pm.Machine(cores_per_node=2, ranks_per_node=8, link=pm.Link(0.0, 1e12))
    one = pm.predict_sync(1e-4, 32, 1, 1000, m)
    assert one.samples_per_s == pytest.approx(1e4) and one.efficiency == pytest.approx(1.0)
    # 4 ranks on 2 cores, a free network: each rank computes at half speed
    four = pm.predict_sync(1e-4, 32, 4, 1000, m)
    assert four.compute_s == pytest.approx(2 * 32e-4)
    assert four.efficiency == pytest.approx(0.5, rel=1e-3)


def test_sync_across_nodes_uses_the_network_and_its_nic():
    link = pm.Link(5e-6, 10e9)
    m = pm.Machine(cores_per_node=8, ranks_per_node=8, link=link, nic_Bps=2e9,
                   intra=pm.Link(1e-6, 50e9))  # fmt: skip
    n_params, r = 25_000_000, 64
    got = pm.predict_sync(1e-3, 32, r, n_params, m)
    # ring over 64 ranks at the NIC's 2 GB/s: 2*63*5 us + 2*63/64 * 100 MB / 2 GB/s
    want_comm = 2 * 63 * 5e-6 + 2 * 63 / 64 * 4 * n_params / 2e9
    assert got.comm_s == pytest.approx(want_comm)
    assert got.step_s == pytest.approx(32e-3 + want_comm)
    within = pm.predict_sync(1e-3, 32, 8, n_params, m)  # one node: the intra link
    assert within.comm_s == pytest.approx(2 * 7 * 1e-6 + 2 * 7 / 8 * 1e8 / 50e9)


def test_downpour_limits_kick_in_where_the_arithmetic_says():
    link = pm.Link(0.0, 1e9)  # 1 GB/s, no latency
    m = pm.Machine(cores_per_node=16, ranks_per_node=1, link=link, nic_Bps=1e9)
    n = 1_000_000  # 4 MB of parameters
    # one replica, one shard: step = compute 32 ms + fetch 4 ms + push 4 ms
    one = pm.predict_downpour(1e-3, 32, 1, 1, n, m, link, link, 0.0)
    assert one.step_s == pytest.approx(40e-3) and one.bound == "compute"
    # 100 replicas, 1 shard: its NIC moves 100 * 8 MB per replica step at 1 GB/s:
    # 0.8 s a step, slower than the replicas' 40 ms
    many = pm.predict_downpour(1e-3, 32, 100, 1, n, m, link, link, 0.0)
    assert many.bound == "shard NIC" and many.step_s == pytest.approx(0.8)
    # 10 shards: each moves a tenth: 80 ms a step, still the NIC
    ten = pm.predict_downpour(1e-3, 32, 100, 10, n, m, link, link, 0.0)
    assert ten.step_s == pytest.approx(0.08) and ten.samples_per_s > many.samples_per_s
    # apply bound: 100 replicas x 1 M parameters x 10 ns = 1 s per step at one shard
    slow = pm.predict_downpour(1e-3, 32, 100, 1, n, pm.Machine(16, 128, link), link, link, 1e-8)
    assert slow.bound == "shard apply" and slow.step_s == pytest.approx(1.0)


def test_downpour_on_an_oversubscribed_node_shares_the_cores():
    m = pm.Machine(cores_per_node=2, ranks_per_node=8, link=pm.Link(0.0, 1e12))
    free = pm.Link(0.0, 1e15)
    # 3 replicas + 1 shard on 2 cores: 3 x 3.2 ms compute + 3 x 1 M x 1 ns apply = 12.6 ms
    # of CPU per replica step on 2 cores: 6.3 ms a step
    got = pm.predict_downpour(1e-4, 32, 3, 1, 1_000_000, m, free, free, 1e-9)
    assert got.bound == "cores"
    assert got.step_s == pytest.approx((3 * 3.2e-3 + 3e-3) / 2, rel=1e-5)  # + 8 ns of copies


def test_model_parallel_amdahl_and_boundary():
    m = pm.Machine(cores_per_node=16, ranks_per_node=1, link=pm.Link(1e-4, 1e8))
    # serial 1 s a step; 4 partitions: 0.25 s + 2 * (3 * 100 us + 1 MB / 100 MB/s) = 0.2706
    got = pm.predict_model_parallel(1e-2, 100, 4, 1e4, 3, m)
    assert got.step_s == pytest.approx(0.25 + 2 * (3e-4 + 1e6 / 1e8))
    assert got.efficiency * 4 == pytest.approx(1.0 / got.step_s)  # speed-up
    half = pm.predict_model_parallel(1e-2, 100, 4, 0.0, 0, m, parallel_fraction=0.5)
    assert half.step_s == pytest.approx(0.5 + 0.125)  # Amdahl
    assert math.isclose(pm.predict_model_parallel(1e-2, 100, 1, 1e4, 3, m).step_s, 1.0)
