"""Learning-rate schedules of the training recipes.

The classifier recipes' schedules (one-cycle, cosine with warm-up, step, constant) are stepped after
every optimisation step (not every epoch), so a run's whole length is known in steps when the
schedule is made; :func:`step_schedule` keeps a resumed run from stepping past it. FERSNet's
:func:`exponential_decay` is stepped once per epoch.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ferkit.errors import UsageError

SCHEDULES = ("onecycle", "cosine", "step", "constant")


def make_schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int, warmup_steps: int,
                  step_size: int = 0) -> torch.optim.lr_scheduler.LRScheduler:
    """A per-step LR schedule spanning ``total_steps``: ``onecycle`` (torch's OneCycleLR: from lr/25,
    warm-up over 30 % to the optimiser's lr, cosine anneal to lr/2.5e5 -- converges in tens of epochs),
    ``cosine`` (linear warm-up, cosine to 0), ``step`` (/10 every ``step_size`` steps) or
    ``constant``."""
    if kind == "onecycle":
        peak = [g["lr"] for g in optimizer.param_groups]
        # +1: the scheduler is stepped after every optimisation step, the last one included
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peak, total_steps=max(2, total_steps + 1),
                                                   pct_start=0.3, cycle_momentum=False)
    if kind == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_warmup(s, total_steps, warmup_steps))
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    if kind == "step":  # the paper's "divided by 10 every N epochs" (N * steps per epoch = step_size)
        size = max(1, int(step_size))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.1 ** (s // size))
    raise UsageError(f"--schedule must be onecycle, cosine, step or constant, got {kind!r}")


def steps_per_epoch(n_items: int, batch_size: int, world_size: int = 1) -> int:
    """Optimisation steps of one epoch as :meth:`EngineContext.batches` cuts it: ``batch_size //
    world_size`` items per rank, full global batches only, one smaller batch when the set holds less
    than one. Per-step schedules are sized with it before the first batch exists."""
    per_rank = max(1, batch_size // world_size)
    return max(1, n_items // (per_rank * world_size))


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def exponential_decay(optimizer: torch.optim.Optimizer, lr: float, lr_end: float,
                      epochs: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A per-epoch schedule: epoch e runs at ``lr * decay**e``, ``lr`` at the first epoch and
    ``lr_end`` from epoch ``epochs - 1`` on (FERSNet's "1e-3 to 1e-5 within 500 epochs")."""
    span = max(1, epochs - 1)
    decay = (lr_end / lr) ** (1.0 / span)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda ep: decay ** min(ep, span))


def step_schedule(scheduler: Any) -> None:
    """Step a per-step schedule, holding its last lr once a one-cycle schedule is complete.

    Why: an epoch interrupted after a mid-epoch checkpoint restarts from its first batch, so a
    resumed run replays up to one epoch of steps the scheduler already counted; torch's
    OneCycleLR raises on the step past its total (a resumed 40-epoch run died in epoch 40).
    """
    limit = getattr(scheduler, "total_steps", None)
    if limit is None or scheduler.last_epoch < limit:
        scheduler.step()
