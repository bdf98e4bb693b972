"""Conditional PatchGAN discriminator of FERSNet (eq. 6; Isola et al.'s pix2pix discriminator).

D(z^t, I) scores every overlapping patch of face ``I`` as "a real face showing expression z^t".
The label conditions D the way pix2pix conditions on its input image: the one-hot target is
broadcast to E constant planes and concatenated to the image channels, so D sees the label at
every patch and a face with the wrong expression is as "fake" as a blurry one.

Layout (pix2pix 70x70 PatchGAN): 4x4 convolutions with stride 2 and widths 64-128-256-512 (the
last at stride 1), LeakyReLU 0.2, instance normalisation on every layer after the first, and a
final 4x4 convolution to one logit per patch. ``width`` scales the widths for the CPU config.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class PatchDiscriminator(nn.Module):
    """``forward(images [B,C,H,W], target [B] int64) -> patch logits [B,1,h,w]``."""

    def __init__(self, num_classes: int, in_channels: int = 1, width: int = 64, n_layers: int = 3) -> None:
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels + num_classes, width, 4, stride=2, padding=1),
            nn.LeakyReLU(0.2, inplace=True),
        ]
        channels = width
        for i in range(1, n_layers + 1):
            out = width * min(2 ** i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(channels, out, 4, stride=stride, padding=1, bias=False),
                       nn.InstanceNorm2d(out, affine=True),
                       nn.LeakyReLU(0.2, inplace=True)]
            channels = out
        layers.append(nn.Conv2d(channels, 1, 4, stride=1, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        planes = F.one_hot(target, self.num_classes).to(images.dtype).view(b, self.num_classes, 1, 1)
        return self.net(torch.cat([images, planes.expand(b, self.num_classes, h, w)], dim=1))
