"""Common base of every registered ferkit model: what it can explain, and one forward signature.

The app and the CLI look at the ``has_*`` flags instead of at model classes, so a panel whose
model lacks a feature can say so plainly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ferkit.models.outputs import ModelOutput


class FerModel(nn.Module):
    #: the output carries an identity feature (face-similarity panel, verification)
    has_identity: bool = False
    #: the output carries ConvFLU gate maps when ``return_gates=True``
    has_gates: bool = False
    #: :meth:`synthesize` edits the expression of a face
    has_synthesis: bool = False

    num_classes: int

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:  # pragma: no cover
        raise NotImplementedError

    def synthesize(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Face(s) ``x`` re-expressed as class indices ``target``; same range as the input."""
        raise NotImplementedError(f"{type(self).__name__} has no synthesis stream")
