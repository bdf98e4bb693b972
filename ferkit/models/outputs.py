"""The one result type every ferkit model returns.

Models differ in what they can explain (an identity feature, ConvFLU gates, a synthesised
face); a small typed result lets the CLI, evaluation and the app treat them uniformly and ask
"does this model have X?" instead of unpacking tuples whose meaning depends on the model.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch


@dataclass
class ModelOutput:
    #: unnormalised class scores, ``[B, num_classes]``
    logits: torch.Tensor
    #: identity feature used for face similarity (DeepID 160-d, Light CNN 256-d, EIFN id branch),
    #: ``[B, D]`` or ``None`` when the model has no identity branch
    identity: Optional[torch.Tensor] = None
    #: emotion / expression feature before the classifier, ``[B, D]``, if meaningful
    embedding: Optional[torch.Tensor] = None
    #: identity-branch class logits (subject classifier), for training losses only
    identity_logits: Optional[torch.Tensor] = None
    #: ConvFLU gate maps keyed like ``"r/fer<-fes/1"`` -> ``[B, C, H, W]`` in (0, 1)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)
    #: synthesised face(s) ``[B, C, H, W]`` in the model's input range, if requested
    synthesis: Optional[torch.Tensor] = None
    #: where the synthesis was painted by the decoder (1) rather than copied from the input (0),
    #: ``[B, 1, H, W]``; FERSNet's ``output="masked"`` only
    synthesis_mask: Optional[torch.Tensor] = None
    #: the decoder's own image before the mask blends it with the input (FERSNet), ``[B, C, H, W]``
    synthesis_painted: Optional[torch.Tensor] = None

    @property
    def probabilities(self) -> torch.Tensor:
        return torch.softmax(self.logits.float(), dim=-1)
