"""Building blocks shared by the architectures (one place, so every paper's ResNet means the same thing).

The residual blocks are the two of TFE-JL Fig. 4 (He et al.'s CIFAR "basic" blocks):

* identity block: ``x + BN(conv3x3(ReLU(BN(conv3x3(x)))))`` then ReLU; input and output have
  the same size and width, so the shortcut is the input itself;
* projection block: the first 3x3 convolution has stride 2 and the shortcut is a 1x1 stride-2
  convolution + BN, "to ensure the same output size of feature maps ... while doing the
  element-wise sum" (TFE-JL section 3.1). It halves the map and sets the width to ``n``.

Batch normalisation sits after every convolution and before the ReLU (TFE-JL 3.1, "We adopt
batch normalization after each convolution and before the rectified linear unit"). Convolutions
that feed a BN have no bias: BN's shift makes it redundant (the authors' Keras code keeps one;
it is the same function with one redundant parameter per channel).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def conv_bn(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1) -> nn.Sequential:
    """Convolution ("same" padding for odd kernels) followed by batch normalisation."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class IdentityBlock(nn.Module):
    """Basic residual block whose shortcut is the input (width ``n`` in, width ``n`` out)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.branch1 = conv_bn(n, n, 3)
        self.branch2 = conv_bn(n, n, 3)
        self.in_channels = self.out_channels = n
        self.stride = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.branch1(x), inplace=True)
        return F.relu(self.branch2(out) + x, inplace=True)


class ProjectionBlock(nn.Module):
    """Basic residual block that halves the map (stride 2) and projects the shortcut by 1x1 stride 2."""

    def __init__(self, in_channels: int, n: int, stride: int = 2) -> None:
        super().__init__()
        self.branch1 = conv_bn(in_channels, n, 3, stride=stride)
        self.branch2 = conv_bn(n, n, 3)
        self.shortcut = conv_bn(in_channels, n, 1, stride=stride)
        self.in_channels, self.out_channels, self.stride = in_channels, n, stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.branch1(x), inplace=True)
        return F.relu(self.branch2(out) + self.shortcut(x), inplace=True)
