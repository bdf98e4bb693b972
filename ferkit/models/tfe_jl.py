"""TFE-JL: "Facial Expression Recognition with Identity and Emotion Joint Learning" (Li et al.).

Three registered architectures plus the joint model:

* ``resnet18_fer`` / ``resnet12_fer``: the emotion branch, a CIFAR-style ResNet (3x3 stem with 16
  filters, basic blocks, no max-pool, BN before ReLU, global average pooling -> the 64-d emotion
  feature Z_e, FC to the classes).
* ``deepid``: the identity branch, the DeepID2 "ConvNet" on 48x48 gray faces -> the 160-d identity
  feature Z_i (FC from the third pooled map + FC from the fourth conv map, summed).
* ``tfe_jl``: both branches; Z_i and Z_e are batch-normalised, concatenated into the 224-d TFE
  feature and classified by one FC layer (paper section 3.2).

How ResNet18 and ResNet12 are derived (section 3.1 and Fig. 3)
-----------------------------------------------------------------
The paper names two block kinds, "identity" (I_n, shortcut = input) and "project" (P_n, 1x1
stride-2 shortcut, halves the map), and says ResNet12 is ResNet18 after "removing four identity
building blocks when n = 16, 16, 32, 64 and adding one project building block when n = 16". The
authors' Keras code (the co-author's public FER+ script) builds ResNet18 as three stages of three
blocks, which fixes the list; the depth counts the 3x3 convolutions of the residual blocks (two per
block), as 9 blocks -> 18 and 6 blocks -> 12 require::

    ResNet18: stem | I16 I16 I16 | P32 I32 I32 | P64 I64 I64 | GAP FC     9 blocks, 18 conv3x3
    ResNet12: stem | P16 I16     | P32 I32     | P64 I64     | GAP FC     6 blocks, 12 conv3x3

(ResNet12 = ResNet18 minus I16, I16, I32, I64 plus P16; counting the stem conv and the FC too
gives 20 and 14 weighted layers: ResNet18 is He et al.'s CIFAR ResNet-20 layout.) On a 48x48 input
ResNet18 works on 48 -> 24 -> 12 maps; ResNet12's extra P16 starts at 24, so 24 -> 12 -> 6.

DeepID2 ConvNet (model-details, co-author's code; valid convolutions, ReLU after every conv)::

    48x48x1 -> conv4x4x20 -> 45 -> maxpool2 -> 22 -> conv3x3x40 -> 20 -> maxpool2/s1 -> 19
            -> conv3x3x60 -> 17 -> maxpool2 -> 8 (pool3: 8x8x60)
            -> conv2x2x80 -> 7 (conv4: 7x7x80)
    Z_i = ReLU(FC160(pool3) + FC160(conv4)); dropout 0.4; FC to the identities (softmax).

The ReLU on the summed DeepID2 layer follows DeepID2 (Sun et al. 2014: ReLU on the DeepID2
neurons); ``feature_relu=False`` gives the linear sum of the co-author's Keras code.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.models.base import FerModel
from ferkit.models.blocks import IdentityBlock, ProjectionBlock, conv_bn
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import register_model
from ferkit.models.weights import float_state

PAPER = "tfe-jl"

#: (kind, n) per residual block; "identity" keeps size and width, "project" halves the map to width n
RESNET_BLOCKS: dict[int, tuple[tuple[str, int], ...]] = {
    18: (("identity", 16), ("identity", 16), ("identity", 16),
         ("project", 32), ("identity", 32), ("identity", 32),
         ("project", 64), ("identity", 64), ("identity", 64)),
    12: (("project", 16), ("identity", 16),
         ("project", 32), ("identity", 32),
         ("project", 64), ("identity", 64)),
}

STEM_WIDTH = 16
EMOTION_DIM = 64
IDENTITY_DIM = 160


class ResNetFer(FerModel):
    """CIFAR-style ResNet of TFE-JL; ``num_classes=0`` builds the bare 64-d feature extractor."""

    def __init__(self, blocks: Sequence[tuple[str, int]], num_classes: int = 8, in_channels: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.block_spec = tuple(blocks)
        self.stem = conv_bn(in_channels, STEM_WIDTH, 3)
        layers: list[nn.Module] = []
        width = STEM_WIDTH
        for kind, n in self.block_spec:
            if kind == "identity":
                if n != width:
                    raise ValueError(f"identity block of width {n} after width {width}: use a project block")
                layers.append(IdentityBlock(n))
            elif kind == "project":
                layers.append(ProjectionBlock(width, n))
            else:
                raise ValueError(f"unknown block kind {kind!r} (identity | project)")
            width = n
        self.blocks = nn.Sequential(*layers)
        self.feature_dim = width
        self.fc: Optional[nn.Linear] = nn.Linear(width, num_classes) if num_classes > 0 else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Z_e: global average of the last block's map, ``[B, 64]``."""
        out = F.relu(self.stem(x), inplace=True)
        out = self.blocks(out)
        return out.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        z = self.features(x)
        if self.fc is None:
            raise RuntimeError("this ResNet was built without a classifier (num_classes=0); call features()")
        return ModelOutput(logits=self.fc(z), embedding=z)


class DeepId(FerModel):
    """DeepID2 ConvNet (identity branch); ``num_classes=0`` builds the bare 160-d feature extractor."""

    has_identity = True

    def __init__(self, num_classes: int = 10575, in_channels: int = 1, input_size: int = 48,
                 dropout: float = 0.4, feature_relu: bool = True) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.input_size = input_size
        self.feature_relu = feature_relu
        self.conv1 = nn.Conv2d(in_channels, 20, 4)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(20, 40, 3)
        self.pool2 = nn.MaxPool2d(2, stride=1)
        self.conv3 = nn.Conv2d(40, 60, 3)
        self.pool3 = nn.MaxPool2d(2)
        self.conv4 = nn.Conv2d(60, 80, 2)
        s3 = ((input_size - 3) // 2 - 2 - 1 - 2) // 2  # side of pool3 (8 on 48x48)
        s4 = s3 - 1                                       # side of conv4 (7)
        if s4 < 1:
            raise UsageError(f"DeepID needs inputs of at least 31x31 pixels, got {input_size}")
        self.pool3_side, self.conv4_side = s3, s4
        self.fc_pool3 = nn.Linear(60 * s3 * s3, IDENTITY_DIM)
        self.fc_conv4 = nn.Linear(80 * s4 * s4, IDENTITY_DIM)
        self.dropout = nn.Dropout(dropout)
        self.feature_dim = IDENTITY_DIM
        self.classifier: Optional[nn.Linear] = nn.Linear(IDENTITY_DIM, num_classes) if num_classes > 0 else None

    def trunk(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pool3 map, conv4 map): the two maps the DeepID2 layer reads."""
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"DeepID was built for {self.input_size}x{self.input_size} inputs, got "
                             f"{tuple(x.shape[-2:])}; resize the faces (the FC layers fix the size)")
        out = self.pool1(F.relu(self.conv1(x)))
        out = self.pool2(F.relu(self.conv2(out)))
        pool3 = self.pool3(F.relu(self.conv3(out)))
        conv4 = F.relu(self.conv4(pool3))
        return pool3, conv4

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Z_i: the 160-d DeepID2 layer, ``FC(pool3) + FC(conv4)`` (ReLU'd by default), before dropout."""
        pool3, conv4 = self.trunk(x)
        z = self.fc_pool3(pool3.flatten(1)) + self.fc_conv4(conv4.flatten(1))
        return F.relu(z) if self.feature_relu else z

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        z = self.features(x)
        if self.classifier is None:
            raise RuntimeError("this DeepID was built without an identity classifier (num_classes=0)")
        logits = self.classifier(self.dropout(z))
        return ModelOutput(logits=logits, identity=z, identity_logits=logits)


class TfeJl(FerModel):
    """Joint model: Z_tfe = [BN(Z_i), BN(Z_e)] (224-d) -> FC (paper section 3.2, Fig. 2).

    Each feature is batch-normalised on its own because the two networks were trained on different
    data and their features live on different scales. The DeepID dropout (0.4, "after the DeepID
    layer") is applied to the normalised identity half: after the BN, so that BN's running
    statistics are those of the undropped feature the model sees at test time.
    """

    has_identity = True

    def __init__(self, num_classes: int = 8, in_channels: int = 1, emotion_depth: int = 18,
                 input_size: int = 48, dropout: float = 0.4, feature_relu: bool = True) -> None:
        super().__init__()
        if emotion_depth not in RESNET_BLOCKS:
            raise UsageError(f"emotion_depth must be one of {sorted(RESNET_BLOCKS)}, got {emotion_depth}")
        self.num_classes = num_classes
        self.emotion_depth = emotion_depth
        self.identity_net = DeepId(num_classes=0, in_channels=in_channels, input_size=input_size,
                                   dropout=dropout, feature_relu=feature_relu)
        self.emotion_net = ResNetFer(RESNET_BLOCKS[emotion_depth], num_classes=0, in_channels=in_channels)
        self.bn_identity = nn.BatchNorm1d(IDENTITY_DIM)
        self.bn_emotion = nn.BatchNorm1d(EMOTION_DIM)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(IDENTITY_DIM + EMOTION_DIM, num_classes)

    def tfe_feature(self, z_i: torch.Tensor, z_e: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.dropout(self.bn_identity(z_i)), self.bn_emotion(z_e)], dim=1)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        z_i = self.identity_net.features(x)
        z_e = self.emotion_net.features(x)
        z = self.tfe_feature(z_i, z_e)
        return ModelOutput(logits=self.classifier(z), identity=z_i, embedding=z)

    def load_branches(self, identity_state: Optional[Mapping[str, torch.Tensor]] = None,
                      emotion_state: Optional[Mapping[str, torch.Tensor]] = None) -> None:
        """Load stage-1 DeepID and stage-2 ResNet state dicts into the branches (classifier heads dropped).

        Strict on everything else, so a checkpoint of the wrong architecture (e.g. ResNet12 into a
        ResNet18 joint model) fails loudly instead of silently leaving layers random.
        """
        if identity_state is not None:
            self.identity_net.load_state_dict(_without(identity_state, ("classifier.",)), strict=True)
        if emotion_state is not None:
            self.emotion_net.load_state_dict(_without(emotion_state, ("fc.",)), strict=True)


    @torch.no_grad()
    def start_as_emotion_net(self, fc_weight: torch.Tensor, fc_bias: torch.Tensor, images: torch.Tensor) -> None:
        """Make the joint model compute exactly the stage-2 emotion net's logits (in eval mode).

        Why: the paper's stage 3 starts the BN + FC head from scratch, so the first epochs of a short
        fine-tuning at lr 0.001 are spent re-learning a classifier the emotion net already has, and the
        joint model can end below the emotion net alone. Here each BN gets the feature statistics of
        ``images`` (normalised model input) as running estimates, the emotion BN's affine undoes its
        normalisation (so BN(Z_e) = Z_e), and the FC gets the emotion net's ``fc`` on the emotion half
        and zeros on the identity half. Joint learning then moves away from the emotion net only as
        far as the identity feature helps.
        """
        was_training = self.training
        self.eval()
        z_i = self.identity_net.features(images)
        z_e = self.emotion_net.features(images)
        self.train(was_training)
        for bn, z in ((self.bn_identity, z_i), (self.bn_emotion, z_e)):
            bn.running_mean.copy_(z.mean(0))
            bn.running_var.copy_(z.var(0, unbiased=True))
        self.bn_emotion.weight.copy_((self.bn_emotion.running_var + self.bn_emotion.eps).sqrt())
        self.bn_emotion.bias.copy_(self.bn_emotion.running_mean)
        self.classifier.weight.zero_()
        self.classifier.weight[:, IDENTITY_DIM:].copy_(fc_weight)
        self.classifier.bias.copy_(fc_bias)


def _without(state: Mapping[str, torch.Tensor], prefixes: Iterable[str]) -> dict[str, torch.Tensor]:
    prefixes = tuple(prefixes)
    return float_state({k: v for k, v in state.items() if not k.startswith(prefixes)})


@register_model("resnet18_fer", paper=PAPER)
def resnet18_fer(num_classes: int = 8, in_channels: int = 1) -> ResNetFer:
    """TFE-JL's ResNet18 emotion net (FER+): 9 basic blocks 16/32/64, GAP 64-d, FC."""
    return ResNetFer(RESNET_BLOCKS[18], num_classes=num_classes, in_channels=in_channels)


@register_model("resnet12_fer", paper=PAPER)
def resnet12_fer(num_classes: int = 7, in_channels: int = 1) -> ResNetFer:
    """TFE-JL's ResNet12 emotion net (CK+): 6 basic blocks 16/32/64, GAP 64-d, FC."""
    return ResNetFer(RESNET_BLOCKS[12], num_classes=num_classes, in_channels=in_channels)


@register_model("deepid", paper=PAPER, small_cfg={"num_classes": 20})
def deepid(num_classes: int = 10575, in_channels: int = 1, input_size: int = 48, dropout: float = 0.4,
           feature_relu: bool = True) -> DeepId:
    """DeepID2 ConvNet identity net: 48x48 gray -> 160-d identity feature, softmax over identities."""
    return DeepId(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                  dropout=dropout, feature_relu=feature_relu)


@register_model("tfe_jl", paper=PAPER, small_cfg={"emotion_depth": 12, "num_classes": 7})
def tfe_jl(num_classes: int = 8, in_channels: int = 1, emotion_depth: int = 18, input_size: int = 48,
           dropout: float = 0.4, feature_relu: bool = True) -> TfeJl:
    """TFE-JL joint model: BN(DeepID 160-d) ++ BN(ResNet 64-d) -> 224-d TFE feature -> FC."""
    return TfeJl(num_classes=num_classes, in_channels=in_channels, emotion_depth=emotion_depth,
                 input_size=input_size, dropout=dropout, feature_relu=feature_relu)
