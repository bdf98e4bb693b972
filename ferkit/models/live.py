"""``resnet_live``: the architecture of ``ferkit-live``, a distilled student for the live loop.

Beyond the four papers. The live loop classifies every face of every frame on one CPU thread,
where the paper's ResNet18 (``resnet18_fer``) spends most of its time in its first stage: three
residual blocks at the full 48x48 map. This student keeps ResNet18's nine blocks and widths
16/32/64 but makes the first block a projection (stride 2), as TFE-JL's ResNet12 does, so the
blocks work on 24 -> 12 -> 6 maps: about a quarter of the multiply-adds for the same 0.27 M
parameters. It is trained by distillation from ``resnet18-ferplus``
(:mod:`ferkit.recipes.live`), which recovers most of what the smaller maps lose.
"""
from __future__ import annotations

from ferkit.models.registry import register_model
from ferkit.models.tfe_jl import ResNetFer

#: ResNet18's block list (ferkit.models.tfe_jl.RESNET_BLOCKS[18]) with the first block projecting
LIVE_BLOCKS: tuple[tuple[str, int], ...] = (
    ("project", 16), ("identity", 16), ("identity", 16),
    ("project", 32), ("identity", 32), ("identity", 32),
    ("project", 64), ("identity", 64), ("identity", 64))


@register_model("resnet_live", paper="ferkit",
                description="distilled live student: ResNet18 layout, strided first block (24/12/6 maps)")
def resnet_live(num_classes: int = 8, in_channels: int = 1) -> ResNetFer:
    """ResNet18's blocks on quarter-size maps (48x48 gray input, 64-d GAP feature, FC)."""
    return ResNetFer(LIVE_BLOCKS, num_classes=num_classes, in_channels=in_channels)
