"""An exponential moving average (EMA) of a model's weights, evaluated and exported in its place.

The average is a separate copy of the model (a recipe saves it as ``"model"`` and the trained
weights as ``"train_model"``), updated after every optimisation step. Its batch-norm statistics
are averaged like the weights and re-measured on training batches before every evaluation
(:meth:`WeightEMA.measure_statistics`): see there for why.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Optional

import torch
import torch.nn as nn

from ferkit.errors import UsageError


class WeightEMA:
    """``model`` (a frozen copy of ``source``) := ``decay * model + (1 - decay) * source`` per update."""

    def __init__(self, source: nn.Module, decay: float) -> None:
        self.source = source
        self.decay = float(decay)
        self.model = copy.deepcopy(source).requires_grad_(False)

    @classmethod
    def from_option(cls, value: Any, source: nn.Module) -> Optional["WeightEMA"]:
        """The average asked for by ``--ema DECAY``; None when the option is unset or 0 (off)."""
        if not value:
            return None
        if not 0.0 < float(value) < 1.0:
            raise UsageError(f"--ema is a decay in (0, 1), e.g. 0.999; got {value}")
        return cls(source, float(value))

    @torch.no_grad()
    def update(self) -> None:
        """Move the average towards the source's current weights (after an optimisation step)."""
        weight = 1.0 - self.decay
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in self.source.parameters()], weight)
        # BN statistics are averaged like the weights (as timm's ModelEmaV2 does): copying the live
        # model's running estimates pairs them with weights they were not measured for, and at a
        # one-cycle peak lr of 0.1 that mismatch made the EMA model's validation loss explode (11 vs 0.6)
        for b_ema, b in zip(self.model.buffers(), self.source.buffers()):
            if b_ema.is_floating_point():
                b_ema.lerp_(b, weight)
            else:
                b_ema.copy_(b)

    @torch.no_grad()
    def measure_statistics(self, images: torch.Tensor, to_input: Callable[[torch.Tensor], torch.Tensor],
                           batch_size: int, max_batches: int) -> None:
        """Re-measure the average's BN statistics on up to ``max_batches`` training batches (SWA's
        ``update_bn``), drawn in one fixed order so every evaluation measures on the same images.

        Why: averaged weights make different activations than any live model did, so neither the
        live model's running statistics nor their average fit them; at a one-cycle peak lr of 0.1
        the EMA model's validation loss reached 5-11 with either. Run before every evaluation, so
        what is validated, checkpointed and exported is consistent.
        """
        order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
        batches = [to_input(images[order[i:i + batch_size].to(images.device)])
                   for i in range(0, min(len(order), max_batches * batch_size), batch_size)]
        torch.optim.swa_utils.update_bn(batches, self.model)
