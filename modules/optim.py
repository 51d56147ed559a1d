"""The learning-rate schedule shared by the RL loop and the SFT module."""

from __future__ import annotations

import math

LR_SCHEDULES = ("constant", "cosine")


def lr_factor(step: int, *, warmup_steps: int = 0, total_steps: int | None = None, schedule: str = "constant"
              ) -> float:
    """Learning-rate multiplier at optimiser step `step` (0-based): linear warmup over `warmup_steps`, then
    `constant` (1.0) or `cosine` decay to 0 at `total_steps` (the paper: cosine, 5% warmup, decay to 0).

    >>> [round(lr_factor(s, warmup_steps=2, total_steps=6, schedule="cosine"), 3) for s in range(6)]
    [0.5, 1.0, 1.0, 0.854, 0.5, 0.146]
    """
    if schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={schedule!r}; use one of {LR_SCHEDULES}")
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "cosine":
        if not total_steps:
            raise ValueError("the cosine schedule needs the total number of optimiser steps (set trainer.max_steps)")
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0
