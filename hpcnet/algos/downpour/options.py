"""Downpour's settings (``[ps]`` and two of ``[faults]``) and the checks between them;
:data:`OPTIONS` is declared when the algorithm is registered."""

from __future__ import annotations

from hpcnet.algos.registry import only_for
from hpcnet.options import Option, need, rule

OPTIONS = (
    Option("ps.n_fetch", 1, "downpour: steps between parameter fetches",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("ps.n_push", 1, "downpour: steps between gradient pushes",
           check=lambda v: v >= 1, must="must be >= 1"),
    Option("ps.rule", "adagrad", "downpour: update rule at the shards", flag="--ps-rule",
           choices=("sgd", "adagrad")),
    Option("ps.warm_start_steps", 0, "downpour: replica 0 trains alone for this many steps "
           "first", check=lambda v: v >= 0, must="must be >= 0"),
    Option("ps.read_own_writes", False, "downpour: fetch only after own pushes are applied"),
    # 2 lets a replica push while the shard still applies its previous push (double
    # buffering, twice the inbox memory); 1 = wait
    Option("ps.inbox_slots", 2, "downpour: inbox slots per replica at a shard (2: push while "
           "the shard applies the previous push, at twice the inbox memory)",
           choices=(1, 2)),
    # bounded staleness (SSP, Ho et al. 2013): a replica at step c waits until every live
    # replica has reached c - max_staleness; -1 = none (plain Downpour), 0 = lock-step
    Option("ps.max_staleness", -1, "downpour: bounded staleness (SSP): a replica waits until "
           "every live replica is at most this many steps behind it (0: lock-step; -1: none, "
           "plain Downpour)", check=lambda v: v >= -1, must="must be >= 0 steps (-1: none)"),
    Option("faults.replace_lost", False, "downpour, sync, avg under mpiexec --with-ft ulfm: "
           "a new process replaces each that died"),
    Option("faults.max_replicas", 0, "downpour: the run may grow to this many replicas when "
           "asked (python -m hpcnet grow OUT); 0: never",
           check=lambda v: v >= 0, must="must be >= 0 (0: never grow)"),
)  # fmt: skip


@rule("hpcnet.algos.downpour")
def _downpour_settings_fit(cfg) -> None:
    only_for(cfg, "downpour", "ps.max_staleness", "bounded staleness is Downpour's")
    p, f = cfg.ps, cfg.faults
    need(
        cfg,
        p.max_staleness == -1 or p.warm_start_steps == 0,
        "ps.max_staleness",
        "cannot be combined with --warm-start-steps (replica 0 would wait for the others "
        "while they wait for its warm start); drop one of them",
    )
    only_for(cfg, "downpour", "faults.max_replicas", "adding replicas is Downpour's")
    need(
        cfg,
        f.max_replicas == 0 or cfg.algo.partitions == 1,
        "faults.max_replicas",
        "cannot grow a run whose replicas are split (--partitions)",
    )
