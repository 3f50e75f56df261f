"""``train --dry-run``: everything a run checks first, and the plan, without training."""

from __future__ import annotations

import sys
from typing import Any

from mpi4py import MPI

from hpcnet.algos.budget import StepBudget
from hpcnet.algos.registry import get_algorithm
from hpcnet.config import Config


def dry_run(cfg: Config, comm: MPI.Intracomm) -> dict[str, Any]:
    """Checks everything a run would check first (config, data, layout for this world
    size, model, partitions, a checkpoint to resume from) and has rank 0 print the plan,
    without training or writing anything. Collective over ``comm``.

    Returns:
        The plan (every rank).
    Raises:
        HpcnetError (every rank, same message): what does not fit.
    """
    from hpcnet.algos.prepare import check_run
    from hpcnet.algos.resume import check_resumable, find_resume_checkpoint
    from hpcnet.comm import root_then_bcast, same_on_every_rank

    algo = get_algorithm(cfg.algo.name)
    layout, backend, info, model = check_run(cfg, comm)
    budget = StepBudget.of(cfg, info.n_train, layout.replicas)
    resume = None
    if cfg.run.resume:
        resume = root_then_bcast(lambda: find_resume_checkpoint(cfg, False), comm)
        with same_on_every_rank():
            check_resumable(resume, cfg, layout)
    plan = {
        "algo": algo.name,
        "layout": layout.describe(),
        "data": f"{info.path} ({info.n_train:,} train / {info.n_test:,} test, "
        f"{info.image_shape}, {info.num_classes} classes)",
        "model": f"{model.name}, {model.n_params:,} parameters",
        "backend": backend.name,
        "steps": budget.describe(cfg.run.epochs) + " per replica",
        "checkpoints": _checkpoint_plan(cfg),
        "resume": f"from step {int(resume['step'])} of {resume['path']}" if resume else "no",
        "out": cfg.run.resume or cfg.run.out or "runs/<timestamp>",
    }
    if comm.Get_rank() == 0:
        print("hpcnet: dry run: nothing trained, nothing written")
        for key, value in plan.items():
            print(f"  {key:<12} {value}")
        for rank, role in layout.table():
            print(f"  rank {rank:>4}: {role}")
        sys.stdout.flush()
    return plan


def _checkpoint_plan(cfg: Config) -> str:
    r = cfg.run
    every = [f"{r.checkpoint_every} steps"] if r.checkpoint_every else []
    every += [f"{r.checkpoint_every_s:g} s"] if r.checkpoint_every_s else []
    return f"every {' or '.join(every)}" if every else "the final one only"
