"""Light CNN-9 ("Net B" of Wu, He & Sun, *A Lightened CNN for Deep Face Representation*) and its
transfer to expressions with the Double Activation Layer (Zhai et al., *Deep Convolutional Neural
Network for Facial Expression Recognition*, section 3, Fig. 1, eqs. 5-6).

Why MFM everywhere: the Max-Feature-Map activation (split the channels of a conv / fc output in
two halves, keep the elementwise maximum) is Light CNN's competitive activation; it halves the
width after every layer, which is what makes the face net "light".

Layout (per ``shared/notes/model-details.md``; channel counts are multiplied by ``width``):

====================  ===================  ==========
layer                 conv -> MFM          size (128)
====================  ===================  ==========
conv1 5x5, pad 2      96 -> 48             128, pool -> 64
conv2a 1x1 / conv2    96 -> 48 / 192 -> 96 64, pool -> 32
conv3a 1x1 / conv3    192 -> 96 / 384->192 32, pool -> 16
conv4a 1x1 / conv4    384->192 / 256->128  16
conv5a 1x1 / conv5    256->128 / 256->128  16, pool -> 8 (8x8x128)
fc1                   512 -> 256           identity feature
dropout, fc2          classes
====================  ===================  ==========

The paper trains on 144x144 random crops and tests at 128x128; ``input_size`` is the size the
network sees (the fc1 input is ``128*width x (input_size/16)^2``, pooling uses ``ceil_mode`` as
Light CNN does, so any size works). On CPU smaller sizes and widths are the honest cut.

Two registered builders share one class:

* ``lightcnn9``: the face-identity net (``fc2`` over subjects) used for pretraining and for the
  identity feature of the app's similarity panel.
* ``netb``: the expression-transfer net. ``head="fc"`` is the paper's "Net B" (fc2 replaced by a
  7/8-way classifier); ``head="dal"`` is "Net B_DAL": two parallel inner products IP1a, IP1b on the
  flattened last-conv features, ``max(X1, X2)`` (eq. 6), ReLU (eq. 5), IP2 to the classes. The
  loss (softmax vs Softmax-MSE, ``ferkit.losses.softmax_mse``) is the recipe's choice, so
  "Net B_DAL_MSE" is ``head="dal"`` trained with Softmax-MSE.
"""
from __future__ import annotations

import math
from typing import Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import register_model
from ferkit.models.vgg import scaled
from ferkit.models.weights import float_state

PAPER_LIGHTCNN = "Wu, He, Sun: A Lightened CNN for Deep Face Representation (2015), Net B / Light CNN-9"
PAPER_NETB = ("Zhai et al.: Deep Convolutional Neural Network for Facial Expression Recognition "
              "(ICIG 2017), Net B + DAL + Softmax-MSE")

HEADS = ("fc", "dal")


def mfm(x: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Max-Feature-Map: split ``dim`` into two equal halves and keep their elementwise maximum."""
    if x.shape[dim] % 2:
        raise ValueError(f"MFM needs an even size along dim {dim}, got {x.shape[dim]}")
    a, b = torch.chunk(x, 2, dim=dim)
    return torch.maximum(a, b)


class MFMConv2d(nn.Module):
    """Convolution to ``2*out_channels`` maps followed by MFM -> ``out_channels`` maps."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__()
        self.out_channels = out_channels
        self.conv = nn.Conv2d(in_channels, 2 * out_channels, kernel_size, stride=1, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mfm(self.conv(x), dim=1)


class MFMLinear(nn.Module):
    """Inner product to ``2*out_features`` followed by MFM -> ``out_features``."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.out_features = out_features
        self.fc = nn.Linear(in_features, 2 * out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mfm(self.fc(x), dim=1)


class DoubleActivation(nn.Module):
    """The paper's DAL activation (Fig. 1): ``ReLU(max(IP1a(x), IP1b(x)))`` (eqs. 6 then 5).

    IP2 (the classifier) follows it in :class:`LightCNN9`. Note that ``max(IP1a, IP1b)`` is
    exactly an MFM inner product of twice the width, so the identity net's fc1 is a DAL IP1 pair:
    :func:`transfer_identity_weights` initialises IP1a / IP1b from fc1's two halves, which is how
    the face net's knowledge reaches the DAL head (paper 3.2: "kept the other parameters").
    """

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.ip1_a = nn.Linear(in_features, out_features)
        self.ip1_b = nn.Linear(in_features, out_features)

    def maxout(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 6: ``Y = max(X1, X2)`` before the ReLU."""
        return torch.maximum(self.ip1_a(x), self.ip1_b(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.maxout(x))  # eq. 5


def _pooled(size: int) -> int:
    """Side after one 2x2 / stride-2 max pool with ceil_mode (Light CNN's pooling)."""
    return math.ceil(size / 2)


def feature_side(input_size: int) -> int:
    """Spatial side of the last conv block's output (four pools)."""
    side = input_size
    for _ in range(4):
        side = _pooled(side)
    return side


def _xavier_caffe(module: nn.Module) -> None:
    """Caffe's ``xavier`` filler (uniform, variance 1/fan_in, zero bias), as Light CNN was trained with.

    Why not PyTorch's default: MFM keeps the second moment of its input (for two i.i.d. zero-mean
    halves E[max(a, b)^2] = E[a^2]), so unit-gain weights keep activations at one scale through the
    11 layers; PyTorch's default (variance 1/(3 fan_in)) shrinks them ~3x per layer and the
    identity net then barely moves off chance in its first epochs.
    """
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        fan_in = module.weight[0].numel()
        bound = math.sqrt(3.0 / fan_in)
        nn.init.uniform_(module.weight, -bound, bound)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class LightCNN9(FerModel):
    """Light CNN-9 trunk with an ``fc`` (MFM fc1 + dropout + fc2) or ``dal`` (DAL + IP2) head.

    ``identity`` in the output:

    * ``head="fc"``: the 256-d MFM fc1 feature (Light CNN's face representation).
    * ``head="dal"``: the 256-d maxout ``max(IP1a, IP1b)`` before the ReLU. After transfer it
      *is* the identity net's fc1 (same weights, see :class:`DoubleActivation`), fine-tuned on
      expressions; it stays a face descriptor but drifts towards expression, so for the
      similarity panel the shipped ``lightcnn9-identity`` net is the cleaner choice (both are
      measured by ``ferkit eval-verification`` in the model cards).
    """

    has_identity = True

    def __init__(self, num_classes: int, *, head: str = "fc", input_size: int = 128, width: float = 1.0,
                 in_channels: int = 1, feature_dim: int = 256, dropout: float = 0.5):
        super().__init__()
        if head not in HEADS:
            raise ValueError(f"unknown head {head!r}; use one of {', '.join(HEADS)}")
        if input_size < 16:
            raise UsageError(f"input_size {input_size} is too small for four 2x2 poolings (need >= 16)")
        if width <= 0:
            raise UsageError(f"width must be positive, got {width}")
        self.num_classes = int(num_classes)
        self.head = head
        self.input_size = int(input_size)
        self.width = float(width)
        self.feature_dim = int(feature_dim)
        c1, c2, c3, c4, c5 = (scaled(n, width) for n in (48, 96, 192, 128, 128))
        pool = lambda: nn.MaxPool2d(2, 2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            MFMConv2d(in_channels, c1, 5, padding=2), pool(),
            MFMConv2d(c1, c1, 1), MFMConv2d(c1, c2, 3, padding=1), pool(),
            MFMConv2d(c2, c2, 1), MFMConv2d(c2, c3, 3, padding=1), pool(),
            MFMConv2d(c3, c3, 1), MFMConv2d(c3, c4, 3, padding=1),
            MFMConv2d(c4, c4, 1), MFMConv2d(c4, c5, 3, padding=1), pool(),
        )
        side = feature_side(self.input_size)
        self.flat_features = c5 * side * side
        self.dropout = nn.Dropout(dropout)
        if head == "fc":
            self.fc1 = MFMLinear(self.flat_features, self.feature_dim)
            self.fc2 = nn.Linear(self.feature_dim, self.num_classes)
        else:
            self.dal = DoubleActivation(self.flat_features, self.feature_dim)
            self.ip2 = nn.Linear(self.feature_dim, self.num_classes)
        self.apply(_xavier_caffe)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        if x.shape[-1] != self.input_size or x.shape[-2] != self.input_size:
            raise ValueError(f"{type(self).__name__} was built for {self.input_size}x{self.input_size} "
                             f"input, got {tuple(x.shape[-2:])}; resize the faces (Preprocessing.input_size)")
        h = torch.flatten(self.features(x), 1)
        if self.head == "fc":
            identity = self.fc1(h)
            embedding = identity
            logits = self.fc2(self.dropout(identity))
        else:
            identity = self.dal.maxout(h)
            embedding = F.relu(identity)
            logits = self.ip2(self.dropout(embedding))
        return ModelOutput(logits=logits, identity=identity, embedding=embedding)


@register_model("lightcnn9", paper=PAPER_LIGHTCNN, small_cfg={"width": 0.25, "input_size": 64, "num_classes": 10},
                description="Light CNN-9 face-identity net (MFM), 256-d identity feature")
def lightcnn9(num_classes: int = 10575, input_size: int = 128, width: float = 1.0, in_channels: int = 1,
              feature_dim: int = 256, dropout: float = 0.5, **_ignored) -> LightCNN9:
    """Light CNN-9 face-identity net; ``num_classes`` = number of training identities."""
    return LightCNN9(num_classes, head="fc", input_size=input_size, width=width, in_channels=in_channels,
                     feature_dim=feature_dim, dropout=dropout)


@register_model("netb", paper=PAPER_NETB, small_cfg={"width": 0.25, "input_size": 64},
                description="Net B (Light CNN-9) transferred to expressions; head fc (Net B) or dal (Net B_DAL)")
def netb(num_classes: int = 7, head: str = "dal", input_size: int = 128, width: float = 1.0, in_channels: int = 1,
         feature_dim: int = 256, dropout: float = 0.5, **_ignored) -> LightCNN9:
    """Net B for expressions: ``head="fc"`` (Net B) or ``head="dal"`` (Net B_DAL / Net B_DAL_MSE)."""
    return LightCNN9(num_classes, head=head, input_size=input_size, width=width, in_channels=in_channels,
                     feature_dim=feature_dim, dropout=dropout)


def transfer_identity_weights(model: LightCNN9, identity_state: Mapping[str, torch.Tensor]) -> list[str]:
    """Copy a pretrained ``lightcnn9`` state dict into an expression net (paper section 3.2).

    The conv trunk is copied as is. fc1 goes to ``fc1`` (``head="fc"``) or, split in its two MFM
    halves, to the DAL pair ``ip1_a`` / ``ip1_b`` (``head="dal"``). The classifier (fc2 / IP2) is
    left freshly initialised: "we changed the number of outcomes in the last fully-connected layer
    into 7". Returns the names of the parameters that were loaded; raises with a clear message if
    the two nets were built with different ``input_size`` / ``width`` (their shapes would differ).
    """
    state = float_state(identity_state)
    mapped: dict[str, torch.Tensor] = {k: v for k, v in state.items() if k.startswith("features.")}
    w1, b1 = state.get("fc1.fc.weight"), state.get("fc1.fc.bias")
    if w1 is None or b1 is None:
        raise KeyError("identity state dict has no fc1.fc.weight / fc1.fc.bias: is it a lightcnn9 checkpoint?")
    if model.head == "fc":
        mapped["fc1.fc.weight"], mapped["fc1.fc.bias"] = w1, b1
    else:
        half = w1.shape[0] // 2
        mapped["dal.ip1_a.weight"], mapped["dal.ip1_b.weight"] = w1[:half], w1[half:]
        mapped["dal.ip1_a.bias"], mapped["dal.ip1_b.bias"] = b1[:half], b1[half:]
    own = model.state_dict()
    for name, tensor in mapped.items():
        if name not in own:
            raise KeyError(f"identity weight {name} has no place in the {model.head!r} expression net")
        if own[name].shape != tensor.shape:
            raise ValueError(f"identity weight {name} has shape {tuple(tensor.shape)} but the expression net "
                             f"expects {tuple(own[name].shape)}: build both nets with the same input_size, "
                             f"width and feature_dim (expression net: input_size={model.input_size}, "
                             f"width={model.width}, feature_dim={model.feature_dim})")
    missing = [k for k in own if k.startswith("features.") and k not in mapped]
    if missing:
        raise KeyError(f"identity state dict lacks trunk weights {missing[:3]}...")
    model.load_state_dict(mapped, strict=False)
    return sorted(mapped)
