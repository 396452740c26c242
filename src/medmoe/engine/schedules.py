"""Learning-rate schedules shared by the training pipelines (MIL, segmentation)."""

from __future__ import annotations

import math

__all__ = ["WarmupCosine"]


class WarmupCosine:
    """Learning-rate factor for :class:`torch.optim.lr_scheduler.LambdaLR`.

    ``factor(t) = (t + 1) / warmup`` for ``t < warmup`` (linear warm-up), then
    ``m + (1 - m) * (1 + cos(pi * p)) / 2`` with ``p = (t - warmup) / (total - warmup)`` clipped to 1 and
    ``m = min_lr / lr``: cosine decay from ``lr`` to ``min_lr``. ``t`` counts optimiser steps or epochs.
    With ``warmup = 0`` and epoch stepping this is ``CosineAnnealingLR(T_max=total, eta_min=min_lr)``.
    """

    def __init__(self, total: int, warmup: int, lr: float, min_lr: float) -> None:
        self.total = int(total)
        self.warmup = int(warmup)
        self.floor = float(min_lr) / float(lr)

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        p = min(1.0, (t - self.warmup) / span)
        return self.floor + (1.0 - self.floor) * 0.5 * (1.0 + math.cos(math.pi * p))
