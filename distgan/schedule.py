"""Learning-rate schedules as pure functions of the training step (`optim.schedule`).

| schedule   | lr factor at step s (0-based, T = total steps, W = warm-up steps, m = min lr ratio) |
|------------|---------------------------------------------------------------------------------------|
| `constant` | 1                                                                                     |
| `warmup`   | (s + 1) / W for s < W, then 1                                                         |
| `cosine`   | the warm-up above for s < W, then m + (1 - m) (1 + cos(pi (s - W) / (T - W))) / 2      |

The factor depends on the step alone, with no state of its own, so a resumed
run rebuilds its scheduler from the step count and continues exactly where it
stopped: `lr_scheduler(optimizer, schedule, base_lrs, start_step=k)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("constant", "warmup", "cosine")


@dataclass(frozen=True)
class LRSchedule:
    """The multiplicative lr factor of each step; callable as LambdaLR's lr_lambda."""

    kind: str = "constant"
    total_steps: int = 1
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.kind!r}; valid: {', '.join(SCHEDULES)}")
        if self.total_steps < 1 or not 0 <= self.warmup_steps <= self.total_steps:
            raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps; "
                             f"got {self.total_steps}, {self.warmup_steps}")
        if self.kind == "warmup" and self.warmup_steps < 1:
            raise ValueError("the warmup schedule needs warmup_steps >= 1")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")

    def __call__(self, step: int) -> float:
        if self.kind == "constant":
            return 1.0
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.kind == "warmup":
            return 1.0
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        return self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scheduler(
    optimizer: torch.optim.Optimizer, schedule: LRSchedule, base_lrs: Sequence[float], start_step: int = 0,
) -> LambdaLR:
    """A LambdaLR with the lr of `start_step` already set; call its step() once per training step.

    `base_lrs` (one per param group) are the rates the schedule scales: the
    config's (after lr_scaling). They are passed, not read from the optimizer,
    because a loaded optimizer holds the last scaled lr, or an old run's base.
    On resume, rebuild the scheduler with the step count; it needs no checkpoint.
    """
    if start_step < 0:
        raise ValueError(f"start_step must be >= 0, got {start_step}")
    if len(base_lrs) != len(optimizer.param_groups):
        raise ValueError(f"{len(base_lrs)} base lrs for {len(optimizer.param_groups)} param groups")
    for group, base in zip(optimizer.param_groups, base_lrs):
        group["initial_lr"] = base
    return LambdaLR(optimizer, schedule, last_epoch=start_step - 1)
