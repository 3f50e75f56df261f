"""What a run tells the user: its start-up line, the summary fields every algorithm
reports, the final line, OUT/summary.json and the test record of OUT/metrics.jsonl."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from hpcnet.comm import allgather_objects
from hpcnet.run.checkpoint import write_checkpoint
from hpcnet.run.metrics import write_summary

if TYPE_CHECKING:
    from hpcnet.algos.lifecycle import TrainingRun


def model_parallel_summary(run: TrainingRun) -> dict[str, Any]:
    """The partition layout and bytes exchanged per training step (replica 0's
    partitions; every replica does the same work). Collective over ``comm``."""
    mine = None
    if run.part is not None:
        mine = run.part.describe()
        mine["expected_bytes_sent_per_step"], mine["expected_bytes_recv_per_step"] = (
            run.part.expected_bytes(run.cfg.run.batch_size)
        )
    every = allgather_objects(mine, run.comm)  # over the live ranks (run.live, in order)
    first = (run.live_replicas() or [0])[0]  # a replica that kept every partition
    per = [every[run.live.index(r)] for r in run.layout.replica_ranks(first)]
    return {
        "scheme": per[0]["scheme"],
        "partitions": run.layout.partitions,
        "bytes_sent_per_step": sum(d["bytes_sent_per_step"] for d in per),
        "bytes_expected_per_step": sum(d["expected_bytes_sent_per_step"] for d in per),
        "per_partition": per,
    }


def base_summary(run: TrainingRun) -> dict[str, Any]:
    """The summary fields every algorithm reports.

    ``input_shape`` (C, H, W), ``num_classes`` and the input normalisation
    ``input_mean``/``input_std`` ((C,) raw pixel units; the model sees
    ``(pixel - mean) / std``) are what ``python -m hpcnet export`` needs to rebuild
    the model and what a user of the exported weights needs to feed it.
    """
    prep = run.prep
    return {
        "algo": prep.cfg.algo.name,
        "model": prep.model.name,
        "dataset": prep.cfg.data.name,
        "data_file": str(prep.info.path),
        "input_shape": list(prep.model.input_shape),
        "num_classes": int(prep.info.num_classes),
        "class_names": list(prep.info.class_names),
        "input_mean": [float(v) for v in prep.info.mean],
        "input_std": [float(v) for v in prep.info.std],
        "world_size": run.comm.Get_size(),
        "layout": prep.layout.to_dict(),
        "layout_text": prep.layout.describe(),
        "batch_size": prep.cfg.run.batch_size,
        "n_params": prep.model.n_params,
        "backend": prep.backend.name,
        "threads_per_rank": prep.threads,
        "compile_s": prep.compile_s,
    }


def announce(run: TrainingRun, details: str) -> None:
    """Rank 0: one line describing the run and where its config is (the whole
    resolved config too with ``--verbose``)."""
    prep = run.prep
    if prep.log is None or not run.verbose:
        return
    info, model = prep.info, prep.model
    if prep.cfg.run.verbose:
        print("# resolved config\n" + prep.cfg.to_toml(), flush=True)
    print(
        f"hpcnet: {prep.layout.describe()}; data {info.path.name} "
        f"({info.n_train:,} train{_val_text(info)} / {info.n_test:,} test, "
        f"{info.image_shape}); "
        f"{model.name} {model.n_params:,} params; backend {prep.backend.name}, "
        f"{prep.threads} thread(s)/rank; {details}; config in {prep.out / 'config.toml'}",
        flush=True,
    )


def _val_text(info) -> str:
    return f" + {len(info.val_index):,} validation" if info.val_index is not None else ""


def report(run: TrainingRun, summary: dict[str, Any]) -> None:
    """Rank 0: prints the final line, then writes the test record and summary.json
    (the line first, so the result survives a vanished output directory)."""
    prep = run.prep
    if prep.log is None:
        return
    summary.setdefault("config", prep.cfg.to_dict())
    summary.setdefault("out", str(prep.out))
    if "val_accuracy" in summary:
        run.say(f"val accuracy {summary['val_accuracy']:.4f}  val loss {summary['val_loss']:.4f}")
    run.say(
        f"test accuracy {summary['test_accuracy']:.4f}  test loss {summary['test_loss']:.4f}"
        f"  ({summary['steps']} steps, {summary['samples_per_s']:,.0f} samples/s, "
        f"{summary['wall_s']:.1f} s; results in {prep.out})"
    )
    prep.log.write(
        {
            "event": "test",
            "step": summary["steps"],
            "test_loss": summary["test_loss"],
            "test_accuracy": summary["test_accuracy"],
            **{k: summary[k] for k in ("val_loss", "val_accuracy") if k in summary},
            "elapsed_s": summary["wall_s"],
        }
    )
    prep.log.close()
    write_summary(prep.out, summary)


def final_summary(
    run: TrainingRun,
    gathered: list[tuple[str, dict]],
    train_s: float,
    model_parallel: dict | None,
    evals: dict[str, float],
) -> dict[str, Any]:
    """Rank 0, at the end: the summary (the run's, the algorithm's figures from every
    rank's ``gathered`` result, ``evals``: test and validation loss and accuracy), the
    final checkpoint (OUT/checkpoint.h5 always ends holding the final parameters), the
    final line, the test record and summary.json."""
    prep = run.prep
    summary = base_summary(run)
    if model_parallel is not None:
        summary["model_parallel"] = model_parallel
    summary.update((run.algo.summarise or default_summary)(run, gathered, train_s))
    summary.update(evals, wall_s=time.perf_counter() - prep.t_start)
    if run.lost_report:
        summary["lost_ranks"] = run.lost_report
    if run.regroups:
        summary["regroups"] = run.regroups
    write_checkpoint(
        prep.out,
        prep.model.params,
        None,
        run._checkpoint_attrs(summary["steps"], summary["epochs"], final=True),
        prep.cfg.run.keep_checkpoints,
        buffers=run.averaged_buffers,
    )
    report(run, summary)
    return summary


def default_summary(run: TrainingRun, results: list[tuple[str, dict]], train_s: float) -> dict:
    """Replica 0's own figures (steps, epochs, samples/s, ...), for algorithms whose
    replicas all take the same steps."""
    return dict(results[run.layout.replica_ranks(0)[0]][1], train_s=train_s)
