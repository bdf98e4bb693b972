"""Center loss (Wen, Zhang, Li & Qiao, "A Discriminative Feature Learning Approach for Deep Face
Recognition", ECCV 2016), as EIFN uses it on its identity feature.

Value (Wen et al. eq. 2, averaged over the mini-batch as their Caffe layer does, so the weight
l1 does not depend on the batch size)::

    L_C = 1/(2m) * sum_i ||x_i - c_{y_i}||^2

Gradient to the features: (x_i - c_{y_i}) / m (autograd of the value above).

The centres are NOT moved by the gradient of L_C. Wen et al. (eq. 4, Algorithm 1) update them with
their own rate alpha, independent of the loss weight l1::

    delta_c_j = sum_i [y_i = j] (c_j - x_i) / (1 + sum_i [y_i = j])
    c_j <- c_j - alpha * delta_c_j

so only the classes present in the batch move, and the "+1" damps classes seen once. This module
implements exactly that in :meth:`update_centers` (under ``no_grad``); the centres are an
``nn.Parameter`` with ``requires_grad=False`` so they are saved in state dicts and checkpoints, and
no model optimiser (weight decay, momentum) ever touches them.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class CenterLoss(nn.Module):
    def __init__(self, num_classes: int, feature_dim: int, alpha: float = 0.5) -> None:
        super().__init__()
        if num_classes < 1 or feature_dim < 1:
            raise ValueError(f"center loss needs num_classes >= 1 and feature_dim >= 1, got {num_classes}, {feature_dim}")
        # Wen et al. initialise centres at zero; they follow the features from the first update on
        self.centers = nn.Parameter(torch.zeros(num_classes, feature_dim), requires_grad=False)
        self.alpha = float(alpha)

    @property
    def num_classes(self) -> int:
        return int(self.centers.shape[0])

    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        if features.dim() != 2 or features.shape[1] != self.centers.shape[1]:
            raise ValueError(f"center loss expects features [B, {self.centers.shape[1]}], got {tuple(features.shape)}")
        if labels.shape != (features.shape[0],):
            raise ValueError(f"labels must be [B={features.shape[0]}], got {tuple(labels.shape)}")
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels outside 0..{self.num_classes - 1} (re-index subjects to the training set)")

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``1/(2m) sum_i ||x_i - c_{y_i}||^2``; differentiable in ``features`` only."""
        self._check(features, labels)
        centers = self.centers.detach().to(features.dtype)[labels]
        return 0.5 * (features - centers).pow(2).sum(dim=1).mean()

    @torch.no_grad()
    def update_centers(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        """Wen et al. eq. 4: ``c_j -= alpha * sum_{y_i=j}(c_j - x_i) / (1 + n_j)`` for every class j."""
        self._check(features, labels)
        x = features.detach().to(self.centers.dtype)
        diff = self.centers[labels] - x                                     # c_{y_i} - x_i
        delta = torch.zeros_like(self.centers).index_add_(0, labels, diff)  # sum over i with y_i = j
        counts = torch.bincount(labels, minlength=self.num_classes).to(self.centers.dtype)
        self.centers.sub_(self.alpha * delta / (1.0 + counts).unsqueeze(1))

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, feature_dim={self.centers.shape[1]}, alpha={self.alpha}"
