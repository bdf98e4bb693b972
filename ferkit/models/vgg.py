"""VGG convolutional stacks (Simonyan & Zisserman 2014), shared by the architectures built on them.

Only the convolutional part lives here: papers that reuse VGG (EIFN takes conv1_1..conv5_3 +
ReLU + max-pool as a feature extractor) put their own heads on top. A ``width`` multiplier
scales every layer's channel count, because full VGG-16 trains at ~30 img/s on a 2-core CPU;
``width=1.0`` is the paper's network.

No ImageNet weights are loaded (nothing downloads at run time); convolutions are initialised as
torchvision initialises VGG (Kaiming normal, fan_out, zero bias), which lets the 13-layer stack
train from scratch without batch norm.
"""
from __future__ import annotations

from typing import Sequence, Union

import torch.nn as nn

from ferkit.errors import UsageError

#: VGG configuration "D" (VGG-16): channel counts of conv1_1..conv5_3, "M" = 2x2 max-pool stride 2
VGG16_CFG: tuple[Union[int, str], ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def scaled(channels: int, width: float) -> int:
    """Channel count of a layer under a width multiplier (at least 1)."""
    return max(1, int(round(channels * width)))


def vgg_features(in_channels: int, cfg: Sequence[Union[int, str]] = VGG16_CFG, width: float = 1.0,
                 final_pool: bool = True, batch_norm: bool = False) -> nn.Sequential:
    """3x3 conv (padding 1) + ReLU for every number in ``cfg``, 2x2/2 max-pool for every "M".

    ``batch_norm=True`` is the VGG-16-BN variant (BN between each conv and its ReLU), for training
    from random weights where the original network started from ImageNet weights.

    ``final_pool=False`` drops a trailing "M" (for heads that want the conv5_3 map itself).
    The result's ``out_channels`` attribute is the channel count of the last conv.
    """
    if width <= 0:
        raise UsageError(f"width must be > 0, got {width}")
    layers: list[nn.Module] = []
    channels = in_channels
    items = list(cfg)
    if not final_pool and items and items[-1] == "M":
        items = items[:-1]
    for item in items:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            continue
        out = scaled(int(item), width)
        conv = nn.Conv2d(channels, out, kernel_size=3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.BatchNorm2d(out), nn.ReLU(inplace=True)] if batch_norm else [conv, nn.ReLU(inplace=True)]
        channels = out
    stack = nn.Sequential(*layers)
    stack.out_channels = channels  # type: ignore[attr-defined]
    return stack


def count_pools(cfg: Sequence[Union[int, str]] = VGG16_CFG, final_pool: bool = True) -> int:
    """How many times the stack halves the input size."""
    n = sum(1 for item in cfg if item == "M")
    return n - (0 if final_pool or not cfg or cfg[-1] != "M" else 1)
