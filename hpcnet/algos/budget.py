"""How long each replica trains: the step budget every algorithm shares."""

from __future__ import annotations

from dataclasses import dataclass

from hpcnet.config import Config


@dataclass(frozen=True)
class StepBudget:
    """How long each replica trains: ``epochs`` passes over its own rows.

    Attributes:
        steps_per_epoch: ``(n_train // replicas) // batch_size`` (every replica the same).
        total_steps: steps per replica: ``steps_per_epoch * epochs``, capped by
            ``--max-steps``.
        log_every: steps between progress records (``--log-every``; 0: ~20 per run,
            however many epochs).
    """

    steps_per_epoch: int
    total_steps: int
    log_every: int

    @classmethod
    def of(cls, cfg: Config, n_train: int, replicas: int) -> StepBudget:
        spe = (n_train // replicas) // cfg.run.batch_size
        total = spe * cfg.run.epochs
        if cfg.run.max_steps:
            total = min(total, cfg.run.max_steps)
        return cls(spe, total, cfg.run.log_every or max(1, total // 20))

    def describe(self, epochs: int) -> str:
        return f"{self.steps_per_epoch} steps/epoch x {epochs} epochs = {self.total_steps} steps"
