"""Learning-rate schedules: linear warm-up, then MultiStep or cosine decay.

The rate is a pure function of the iteration, so resuming needs nothing but the iteration count
and the schedule's settings (both in the training state).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any


def learning_rate(iteration: int, base_lr: float, schedule: Mapping[str, Any], iterations: int) -> float:
    """The rate for `iteration` (1-based: the first update is iteration 1).

    Warm-up (BasicSR's): `base_lr * iteration / warmup` while iteration <= warmup. MultiStep: `base_lr
    * gamma ** (milestones passed)`, a milestone m counting from iteration m + 1 on, as `MultiStepLR`
    stepped after each update does. Cosine: from base_lr at the end of warm-up to `min_lr` at the last
    iteration.
    """
    warmup = int(schedule.get("warmup") or 0)
    if iteration <= warmup:
        return base_lr * iteration / warmup
    if schedule["type"] == "multistep":
        passed = sum(1 for m in schedule.get("milestones") or () if iteration > int(m))
        return base_lr * float(schedule.get("gamma", 0.5)) ** passed
    min_lr = float(schedule.get("min_lr") or 0.0)
    progress = (iteration - 1 - warmup) / max(1, iterations - 1 - warmup)
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
