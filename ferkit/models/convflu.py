"""Convolutional feature leaky unit (ConvFLU), FERSNet eqs. 1-4 (Zhao et al., section III-B).

ConvFLU is a GRU cell turned sideways: instead of carrying a state through time it lets task
``x`` take features from task ``y`` at one depth, with two learned, per-pixel, per-channel gates:

* leaky gate   ``r = sigmoid(W_r * [F_x, F_y])``                  (eq. 1) - how much of F_y leaks in;
* candidate    ``F~ = tanh(W * (r . F_y) + U * F_x)``              (eq. 2);
* memory gate  ``z = sigmoid(W_z * [F_x, F_y])``                  (eq. 3) - how much of F_x is replaced;
* output       ``F_x' = (1 - z) . F_x + z . F~``                   (eq. 4).

Every kernel is 1x1 with padding 0 (section IV-A: "except for those in ConvFLUs, where the
kernel size is 1x1"). The equations carry no bias terms, so the convolutions have none either:
the module computes exactly eqs. 1-4 and the tests check it against them written out. The gates
are returned as well because the app shows them as heatmaps (paper Fig. 3).
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn as nn


class ConvFLUOutput(NamedTuple):
    #: F_x' of eq. 4, same shape as F_x
    features: torch.Tensor
    #: leaky gate r of eq. 1, ``[B, C, H, W]`` in (0, 1)
    r: torch.Tensor
    #: memory gate z of eq. 3, ``[B, C, H, W]`` in (0, 1)
    z: torch.Tensor


class ConvFLU(nn.Module):
    """Transfers features from task y into task x (one direction; FERSNet uses two per level)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.w_r = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)  # W_r, eq. 1
        self.w = nn.Conv2d(channels, channels, kernel_size=1, bias=False)        # W, eq. 2
        self.u = nn.Conv2d(channels, channels, kernel_size=1, bias=False)        # U, eq. 2
        self.w_z = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=False)  # W_z, eq. 3

    def forward(self, f_x: torch.Tensor, f_y: torch.Tensor) -> ConvFLUOutput:
        if f_x.shape != f_y.shape:
            raise ValueError(f"ConvFLU needs equal feature maps, got {tuple(f_x.shape)} and {tuple(f_y.shape)}")
        both = torch.cat([f_x, f_y], dim=1)
        r = torch.sigmoid(self.w_r(both))
        candidate = torch.tanh(self.w(r * f_y) + self.u(f_x))
        z = torch.sigmoid(self.w_z(both))
        return ConvFLUOutput((1 - z) * f_x + z * candidate, r, z)
