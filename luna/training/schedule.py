"""Learning rate as a pure function of the optimizer step: nothing to save, nothing to drift on resume."""
from __future__ import annotations

import math


def lr_at(step: int, base_lr: float, total_steps: int, warmup_steps: int, kind: str = "cosine",
          min_ratio: float = 0.0, gamma: float = 0.999, steps_per_epoch: int = 1) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine to ``base_lr·min_ratio`` at ``total_steps``
    (``constant``: flat; ``exponential``: ×gamma per epoch)."""
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    if kind == "constant":
        return base_lr
    if kind == "exponential":
        return base_lr * gamma ** (step // max(steps_per_epoch, 1))
    span = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / span, 1.0)
    return base_lr * (min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
