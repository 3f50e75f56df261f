"""The scaling cost model (hpcnet/perfmodel.py) against hand-computed values."""

import math

import pytest

from hpcnet import perfmodel as pm

ALPHA, BETA = 1e-5, 1e9  # 10 us, 1 GB/s


def test_ring_and_tree_formulas_by_hand():
    # p = 4, 1 MB: ring 2*3*1e-5 + 2*3/4*1e6/1e9 = 6e-5 + 1.5e-3
    assert pm.ring_allreduce_s(1e6, 4, ALPHA, BETA) == pytest.approx(1.56e-3)
    # tree: 2*log2(4)*(1e-5 + 1e-3) = 4 * 1.01e-3
    assert pm.tree_allreduce_s(1e6, 4, ALPHA, BETA) == pytest.approx(4.04e-3)
    # p = 5 rounds log2 up: 2*3*(alpha + n/beta)
    assert pm.tree_allreduce_s(1e6, 5, ALPHA, BETA) == pytest.approx(6 * 1.01e-3)
    assert pm.ring_allreduce_s(1e6, 1, ALPHA, BETA) == 0.0
    assert pm.tree_allreduce_s(1e6, 1, ALPHA, BETA) == 0.0


def test_tree_wins_small_messages_ring_wins_large():
    # 64 ranks, 8 bytes: ring 126 alpha, tree 12 alpha
    t, name = pm.allreduce_s(8, 64, ALPHA, BETA)
    assert name == "tree" and t == pytest.approx(12 * (ALPHA + 8 / BETA))
    t, name = pm.allreduce_s(1e8, 64, ALPHA, BETA)
    assert name == "ring" and t == pytest.approx(126 * ALPHA + 2 * 63 / 64 * 0.1)


def test_hierarchical_allreduce_crosses_the_nic_once_per_node():
    c = pm.Cluster(latency=ALPHA, bandwidth=10e9, nic_bandwidth=1e9, ranks_per_node=8)
    n = 1e8
    # 16 ranks = 2 nodes: intra ring on 8 at 10 GB/s + inter ring on 2 nodes at 1 GB/s
    intra = 2 * 7 * ALPHA + 2 * 7 / 8 * n / 10e9
    inter = min(2 * ALPHA + n / 1e9, 2 * (ALPHA + n / 1e9))
    assert pm.cluster_allreduce_s(n, 16, c) == pytest.approx(intra + inter)
    # one node: no NIC at all
    assert pm.cluster_allreduce_s(n, 8, c) == pytest.approx(intra)


def test_sync_efficiency_is_one_alone_and_falls_with_replicas():
    c = pm.Cluster(latency=ALPHA, bandwidth=BETA)
    one = pm.predict_sync(1e-3, 32, 1_000_000, 1, c)
    assert one.efficiency == 1.0 and one.step_s == pytest.approx(0.032)
    assert one.samples_per_s == pytest.approx(1000.0)
    effs = [pm.predict_sync(1e-3, 32, 1_000_000, r, c).efficiency for r in (1, 2, 4, 8, 16)]
    assert all(a > b for a, b in zip(effs, effs[1:], strict=False))
    # R = 2: ring 2 alpha + 4e6/1e9 = 4.02 ms over a 32 ms step
    two = pm.predict_sync(1e-3, 32, 1_000_000, 2, c)
    assert two.step_s == pytest.approx(0.032 + 2e-5 + 4e-3)
    assert two.samples_per_s == pytest.approx(64 / two.step_s)


def test_sync_oversubscribed_cores_slow_compute():
    c = pm.Cluster(latency=0.0, bandwidth=math.inf, cores_per_node=2, ranks_per_node=8)
    assert pm.predict_sync(1e-3, 10, 100, 2, c).step_s == pytest.approx(0.01)
    p4 = pm.predict_sync(1e-3, 10, 100, 4, c)
    assert p4.step_s == pytest.approx(0.02) and p4.bound == "cores"
    # the same samples/s as 2 ranks: the 2 cores are the limit
    assert p4.samples_per_s == pytest.approx(2000.0)


def test_sync_overlap_hides_allreduce():
    c = pm.Cluster(latency=ALPHA, bandwidth=BETA)
    full = pm.predict_sync(1e-3, 32, 1_000_000, 4, c)
    half = pm.predict_sync(1e-3, 32, 1_000_000, 4, c, overlap=0.5)
    comm = pm.ring_allreduce_s(4e6, 4, ALPHA, BETA)
    assert full.step_s - half.step_s == pytest.approx(comm / 2)


RMA = pm.RmaCost(1e-5, 1e9, 1e-5, 1e9, 1e-9)  # 1 ns per float to apply


def test_downpour_replica_bound_below_saturation():
    c = pm.Cluster(latency=ALPHA, bandwidth=BETA)
    # 1 M params, 1 shard: fetch = push = 1e-5 + 4e6/1e9 = 4.01 ms; compute 32 ms
    p = pm.predict_downpour(1e-3, 32, 1_000_000, 1, 1, RMA, c)
    assert p.step_s == pytest.approx(0.032 + 2 * 4.01e-3)
    assert p.bound == "replica" and p.efficiency == pytest.approx(1.0)


def test_downpour_shard_nic_saturates_where_the_arithmetic_says():
    c = pm.Cluster(latency=ALPHA, bandwidth=BETA)
    # per replica step the shard's NIC moves 4e6 (fetch) + 4e6 (push) bytes = 8 ms;
    # a replica step takes 40.02 ms, so the NIC saturates past R = 40.02 / 8 = 5.0
    step = 0.032 + 2 * 4.01e-3
    below = pm.predict_downpour(1e-3, 32, 1_000_000, 5, 1, RMA, c)
    above = pm.predict_downpour(1e-3, 32, 1_000_000, 6, 1, RMA, c)
    assert below.bound == "replica" and below.samples_per_s == pytest.approx(5 * 32 / step)
    assert above.bound == "shard NIC" and above.samples_per_s == pytest.approx(32 / 8e-3)
    assert above.efficiency < 1.0
    # a second shard halves the bytes per shard: 6 replicas fit again
    assert pm.predict_downpour(1e-3, 32, 1_000_000, 6, 2, RMA, c).bound == "replica"
    # n_fetch = n_push = 4 quarter the shard's bytes
    assert pm.predict_downpour(1e-3, 32, 1_000_000, 6, 1, RMA, c, 4, 4).bound == "replica"


def test_downpour_shard_apply_and_shared_cores_bounds():
    c = pm.Cluster(latency=0.0, bandwidth=math.inf, cores_per_node=2)
    slow = pm.RmaCost(0.0, math.inf, 0.0, math.inf, 1e-8)  # 10 ms per 1 M-float push
    p = pm.predict_downpour(1e-4, 10, 1_000_000, 4, 1, slow, c)  # replica step 1 ms
    assert p.bound == "shard apply" and p.samples_per_s == pytest.approx(10 / 0.01)
    fast = pm.RmaCost(0.0, math.inf, 0.0, math.inf, 0.0)
    q = pm.predict_downpour(1e-3, 10, 1000, 3, 1, fast, c, shared_cores=True)
    # 3 replicas + 1 shard on 2 cores: each 10 ms compute takes 20 ms: 150 steps/s
    assert q.bound == "replica" and q.samples_per_s == pytest.approx(1500.0)
    assert q.efficiency == pytest.approx(0.5)
    # the shard's apply slows by the same factor: 1 ms -> 2 ms a push, 500 pushes/s
    slow1 = pm.RmaCost(0.0, math.inf, 0.0, math.inf, 1e-6)  # 1 ms per 1000-float push
    r = pm.predict_downpour(1e-5, 10, 1000, 3, 1, slow1, c, shared_cores=True)
    assert r.bound == "shard apply" and r.samples_per_s == pytest.approx(5000.0)
    # on one node there is no NIC: a tiny bandwidth does not bound it
    thin = pm.Cluster(latency=0.0, bandwidth=1.0, cores_per_node=2)
    assert pm.predict_downpour(1e-3, 10, 1000, 1, 1, fast, thin, shared_cores=True).bound == (
        "replica"
    )


def test_modelpar_ideal_split_and_link_bound():
    c = pm.Cluster(latency=1e-4, bandwidth=1e8, nic_bandwidth=1e8, ranks_per_node=1)
    assert pm.predict_modelpar(1e-3, 10, 1, 0.0, 0, c).efficiency == 1.0
    # M = 4: 10 ms / 4 + 2 messages x 0.1 ms + 10 x 1e4 B / 1e8 = 2.5 + 0.2 + 1.0 ms
    p = pm.predict_modelpar(1e-3, 10, 4, 1e4, 2, c)
    assert p.step_s == pytest.approx(3.7e-3)
    assert p.efficiency == pytest.approx(0.01 / 3.7e-3 / 4)
    # fully connected boundaries: 2 x (4 * 2560 / 8 * 7) bytes per layer
    assert pm.fc_boundary_bytes([2560], 8) == pytest.approx(2 * 4 * 2560 * 7 / 8)
    assert pm.halo_bytes(200, 8, 9, 3, 1) == 0.0
    assert pm.halo_bytes(100, 1, 1, 1, 4) == pytest.approx(2 * 4 * 50 * 4)


def test_measured_allreduce_and_partition_compute_replace_the_formulas():
    c = pm.Cluster(latency=ALPHA, bandwidth=BETA, cores_per_node=2, ranks_per_node=8)
    # sync, 4 ranks on 2 cores: 1 ms of compute doubles, then the measured 3 ms allreduce
    # (the ring formula would give 6 alpha + 1.5 x 4e5 B / 1 GB/s = 0.66 ms)
    p = pm.predict_sync(1e-4, 10, 100_000, 4, c, allreduce_time_s=3e-3)
    assert p.step_s == pytest.approx(2e-3 + 3e-3)
    ring = pm.predict_sync(1e-4, 10, 100_000, 4, c)
    assert ring.step_s == pytest.approx(2e-3 + 6 * ALPHA + 1.5 * 4e5 / BETA)
    # a lone replica allreduces nothing, whatever was measured
    assert pm.predict_sync(1e-4, 10, 100, 1, c, allreduce_time_s=3e-3).step_s == 1e-3
    # model parallel: the measured 0.8 ms partition in place of the even 1 ms / 2
    apart = pm.Cluster(latency=1e-4, bandwidth=1e8, ranks_per_node=1)
    q = pm.predict_modelpar(1e-4, 10, 2, 1e3, 3, apart, partition_compute_s=0.8e-3)
    assert q.step_s == pytest.approx(0.8e-3 + 3e-4 + 10 * 1e3 / 1e8)
    even = pm.predict_modelpar(1e-4, 10, 2, 1e3, 3, apart)
    assert even.step_s == pytest.approx(0.5e-3 + 3e-4 + 10 * 1e3 / 1e8)


def test_a_measured_slowdown_replaces_ranks_over_cores():
    c = pm.Cluster(latency=0.0, bandwidth=math.inf, cores_per_node=2, ranks_per_node=8,
                   slowdown=(1.0, 1.1, 1.8, 2.4))  # fmt: skip
    assert pm.oversubscription(4, c) == 2.4 and pm.oversubscription(2, c) == 1.1
    assert pm.oversubscription(6, c) == 3.0  # beyond what was measured: 6 / 2
    assert pm.oversubscription(0, c) == 1.0
    # sync, 4 ranks: 1 ms of compute x 2.4 (ranks / cores would say x 2)
    assert pm.predict_sync(1e-4, 10, 100, 4, c).step_s == pytest.approx(2.4e-3)
    # Downpour on shared cores: 3 replicas + 1 shard are 4 ranks
    fast = pm.RmaCost(0.0, math.inf, 0.0, math.inf, 0.0)
    d = pm.predict_downpour(1e-4, 10, 100, 3, 1, fast, c, shared_cores=True)
    assert d.step_s == pytest.approx(2.4e-3) and d.bound == "replica"


def test_step_overhead_counts_as_compute():
    c = pm.Cluster(latency=0.0, bandwidth=math.inf, cores_per_node=2, ranks_per_node=8)
    # 1 ms compute + 1 ms overhead per step; 4 ranks on 2 cores: 4 ms a step
    p = pm.predict_sync(1e-4, 10, 100, 4, c, step_overhead_s=1e-3)
    assert p.step_s == pytest.approx(4e-3)
    fast = pm.RmaCost(0.0, math.inf, 0.0, math.inf, 0.0)
    q = pm.predict_downpour(1e-4, 10, 100, 1, 1, fast, c, step_overhead_s=1e-3)
    assert q.step_s == pytest.approx(2e-3)


def test_bench_scale_is_registered_and_its_help_works():
    import subprocess
    import sys
    from pathlib import Path

    from hpcnet.cli import BENCHMARKS

    assert BENCHMARKS["scale"] == "scale_model"
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "scale_model.py"
    out = subprocess.run(
        [sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "--nic-bandwidth" in out.stdout and "--from-json" in out.stdout


def test_bench_scale_takes_the_median_of_the_undisturbed_validation_runs():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import _scale_tables as tables
    finally:
        sys.path.pop(0)

    def run(algo, r, rate, clean=True):
        return {"algo": algo, "replicas": r, "procs": r, "clean": clean,
                "cpu_others_during": 0.0 if clean else 0.5,
                "summary": {"samples_per_s": rate}}  # fmt: skip

    raw = {"validate": [
        run("sync", 1, 100.0), run("sync", 2, 150.0), run("sync", 1, 90.0),
        run("sync", 2, 10.0, clean=False), run("sync", 1, 120.0), run("sync", 2, 170.0),
    ]}  # fmt: skip
    groups = tables.validation_runs(raw)
    assert [(g["algo"], g["replicas"]) for g in groups] == [("sync", 1), ("sync", 2)]
    assert groups[0]["samples_per_s"] == 100.0 and groups[0]["spread"] == (90.0, 120.0)
    # the disturbed run is left out: the median of 150 and 170, not of 10, 150, 170
    assert groups[1]["samples_per_s"] == 160.0 and len(groups[1]["used"]) == 2
    # a configuration whose runs were all disturbed still reports them all
    only = tables.validation_runs({"validate": [run("downpour", 1, 5.0, clean=False)]})
    assert only[0]["samples_per_s"] == 5.0 and only[0]["others"] == 0.5


def test_bench_scale_slowdown_pairs_each_run_with_its_repeats_lone_rank():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import _scale_tables as tables
    finally:
        sys.path.pop(0)

    def run(k, wall, clean=True):
        return {"ranks": k, "step_wall_s": wall, "clean": clean}

    # the host runs 1.5x slower in the second repeat: each k is set against its own
    # repeat's lone rank, so k = 2 is 1.1x and k = 3 2.0x in both
    runs = [run(1, 1.0), run(2, 1.1), run(3, 2.0), run(4, 2.6),
            run(1, 1.5), run(2, 1.65), run(3, 3.0), run(4, 3.6)]  # fmt: skip
    got = tables.slowdown(runs)
    assert got == pytest.approx((1.0, 1.1, 2.0, 2.5))  # k = 4: median of 2.6 and 2.4
    # a gap in k ends the tuple; no lone-rank run, no slowdown
    assert tables.slowdown([r for r in runs if r["ranks"] != 3]) == pytest.approx((1.0, 1.1))
    assert tables.slowdown([r for r in runs if r["ranks"] != 1]) == ()
    # the host's speed changing between repeats: the median of the paired ratios (1.5,
    # 1.05, 1.1 -> 1.1), not the ratio of the medians (2.1 / 2.0 = 1.05)
    drift = [run(1, 1.0), run(2, 1.5), run(1, 2.0), run(2, 2.1), run(1, 3.0), run(2, 3.3)]
    assert tables.slowdown(drift) == pytest.approx((1.0, 1.1))
    # faster in company is the host's noise: never below 1
    assert tables.slowdown([run(1, 1.0), run(2, 0.9)]) == (1.0, 1.0)
    # a disturbed pair is left out when an undisturbed one exists
    assert tables.slowdown([run(1, 1.0), run(2, 5.0, clean=False), run(1, 1.0), run(2, 1.2)]) == (
        pytest.approx((1.0, 1.2))
    )
