"""Learning-rate rules for large minibatches (Goyal et al. 2017, "Accurate, Large
Minibatch SGD: Training ImageNet in 1 Hour").
"""

from __future__ import annotations

import math

from hpcnet.errors import ConfigError

SCHEDULES = ("constant", "cosine")


def scaled_lr(base_lr: float, total_batch: int, reference_batch: int, rule: str) -> float:
    """The target learning rate for a total (all-replica) batch.

    ``rule="linear"`` is Goyal et al.'s linear scaling rule (sec. 2.1): when the
    minibatch is multiplied by k, multiply the learning rate by k, i.e.
    ``lr = base_lr * total_batch / reference_batch``. ``rule="none"`` keeps ``base_lr``.

    Raises:
        ConfigError: unknown rule.
    """
    if rule == "none":
        return base_lr
    if rule == "linear":
        return base_lr * total_batch / reference_batch
    raise ConfigError(f"--lr-scaling {rule!r}: choose none or linear")


def lr_at(
    step: int,
    target_lr: float,
    warmup_steps: int,
    start_lr: float,
    schedule: str = "constant",
    total_steps: int = 0,
) -> float:
    """The learning rate for optimizer step ``step`` (0-based).

    Gradual warmup (Goyal et al. sec. 2.2): ramp linearly from ``start_lr`` at step
    0 to ``target_lr`` at ``warmup_steps``. After it, ``schedule="constant"`` holds
    ``target_lr``; ``schedule="cosine"`` decays it to 0 at ``total_steps`` along half
    a cosine (Loshchilov & Hutter 2017, "SGDR", eq. 5, one cycle, no restarts).

    Args:
        warmup_steps: length of the ramp in steps; 0 disables warmup.
        total_steps: steps in the whole run (needed by ``cosine``).
    """
    if warmup_steps > 0 and step < warmup_steps:
        return start_lr + (target_lr - start_lr) * step / warmup_steps
    if schedule == "cosine" and total_steps > warmup_steps:
        t = (step - warmup_steps) / (total_steps - warmup_steps)
        return target_lr * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))
    return target_lr
