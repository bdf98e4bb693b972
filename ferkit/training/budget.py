"""Fitting a training run to a wall-clock budget (the GPU machine is lent for minutes, not hours).

The schedules of the recipes (one-cycle, cosine) span the planned epochs, so a run that is simply
cut off ends at a high learning rate. Instead the campaign measures the network's training
throughput on the device first (a few steps, :func:`ferkit.bench.training.bench_network`), plans
the epochs that fit, and the engine's ``time_budget_s`` only guards against a wrong estimate.
"""
from __future__ import annotations

import math

from ferkit.errors import UsageError


def fit_epochs(budget_s: float, images_per_epoch: int, img_per_s: float, *, overhead: float = 0.25,
               min_epochs: int = 1, max_epochs: int | None = None) -> int:
    """Whole epochs of ``images_per_epoch`` that fit in ``budget_s`` at ``img_per_s``.

    ``overhead`` is the share of the budget kept for what the throughput probe does not see
    (evaluation, augmentation, checkpoints, start-up): 0.25 leaves a quarter spare.
    """
    if budget_s <= 0 or images_per_epoch <= 0 or img_per_s <= 0:
        raise UsageError("budget, images per epoch and throughput must be positive")
    epochs = math.floor(budget_s * (1.0 - overhead) * img_per_s / images_per_epoch)
    epochs = max(min_epochs, epochs)
    return min(epochs, max_epochs) if max_epochs is not None else epochs
