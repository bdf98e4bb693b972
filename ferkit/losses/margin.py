"""Additive-margin softmax heads for face identity training: CosFace and ArcFace.

Why: a plain softmax classifier only has to *separate* the training identities; it leaves the
features of one person spread over a wide cone, so the cosine similarity of two photos of one
stranger and of two different strangers overlap (the shipped identity features reached 61-64 % on
LFW View 2). Margin heads classify on the hypersphere and demand that the true class wins by a
margin, which compacts each identity and is what makes the cosine similarity a usable verification
score. Both heads replace the last linear layer during training only; the identity feature the
app and ``ferkit eval-verification`` use is the network's embedding ``x`` (``ModelOutput.identity``).

With ``x`` the feature, ``W_j`` the class weights and ``theta_j`` their angle::

    cos(theta_j) = <x / ||x||, W_j / ||W_j||>

CosFace / large-margin cosine loss (Wang et al., CVPR 2018, eq. 4), additive cosine margin ``m``::

    logit_y = s * (cos(theta_y) - m)          logit_j = s * cos(theta_j)   (j != y)

ArcFace (Deng et al., CVPR 2019, eq. 3), additive angular margin ``m`` (radians)::

    logit_y = s * cos(theta_y + m)            logit_j = s * cos(theta_j)   (j != y)

and the loss is the softmax cross-entropy over these logits. ``cos(theta + m)`` stops decreasing
once ``theta + m > pi``; as in the authors' reference implementation (insightface), the target
logit there becomes ``s * (cos(theta_y) - m * sin(m))`` (continuous at ``theta = pi - m``, still
monotonic), which only matters for badly misclassified samples early in training.

At inference (and for identification accuracy) the logits are ``s * cos(theta_j)``: no margin.
Defaults are the papers': CosFace ``s = 30, m = 0.35``, ArcFace ``s = 64, m = 0.5``; we use
``s = 30`` for ArcFace too because our identity sets have ~300 classes, not ~10,000 (a smaller
scale keeps the softmax from saturating on a few hundred classes; see the ArcFace paper's
discussion of the scale and Wang et al., NormFace).

Training from scratch: networks without batch normalisation (DeepID, Light CNN) let every face
collapse onto one direction under a margin head first (measured: all held-out pairs at cosine
~1.0 after a few epochs, feature norms growing without bound), so the reliable use is a fine-tune
of a softmax-trained net whose class weights initialise the head; the margin is ramped in
(:func:`margin_warmup_fraction`).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError

#: the classifier kinds an identity recipe accepts (``--margin-loss``)
MARGIN_LOSSES = ("softmax", "cosface", "arcface")
#: (scale s, margin m) used when the recipe options leave them unset
MARGIN_DEFAULTS = {"cosface": (30.0, 0.35), "arcface": (30.0, 0.5)}


def margin_logits(cosine: torch.Tensor, labels: torch.Tensor, kind: str, scale: float,
                  margin: float) -> torch.Tensor:
    """The training logits of a margin head from the cosines ``[B, C]`` (see the module docstring).

    Only the target column of each row changes; every other logit is ``scale * cosine``.
    """
    if kind not in ("cosface", "arcface"):
        raise ValueError(f"margin kind must be cosface or arcface, got {kind!r}")
    if cosine.dim() != 2 or labels.shape != (cosine.shape[0],):
        raise ValueError(f"cosines must be [B, C] and labels [B], got {tuple(cosine.shape)}, {tuple(labels.shape)}")
    cos = cosine.float()
    target = cos.gather(1, labels[:, None])
    if kind == "cosface":
        shifted = target - margin
    else:
        # cos(theta + m) = cos(theta) cos(m) - sin(theta) sin(m); the clamp keeps sqrt's gradient finite
        sin = torch.sqrt((1.0 - target * target).clamp_min(1e-7))
        shifted = target * math.cos(margin) - sin * math.sin(margin)
        # beyond theta = pi - m, cos(theta + m) would rise again: the reference code's linear fallback
        shifted = torch.where(target > math.cos(math.pi - margin), shifted, target - margin * math.sin(margin))
    out = cos.scatter(1, labels[:, None], shifted)
    return out * scale


class MarginHead(nn.Module):
    """Normalised-weight classifier over identity features with a CosFace or ArcFace margin.

    ``forward(features, labels)`` gives the training logits (margin on the target);
    ``logits(features)`` the margin-free ``s * cos(theta)`` for identification. ``margin_scale``
    (0..1) multiplies ``m``: recipes ramp it up over the first epochs because a small net trained
    from scratch on a few hundred identities can stall when the full margin is demanded while its
    features are still random.
    """

    def __init__(self, feature_dim: int, num_classes: int, kind: str = "cosface",
                 scale: Optional[float] = None, margin: Optional[float] = None) -> None:
        super().__init__()
        if kind not in MARGIN_DEFAULTS:
            raise ValueError(f"margin head kind must be cosface or arcface, got {kind!r}")
        if feature_dim < 1 or num_classes < 2:
            raise ValueError(f"a margin head needs feature_dim >= 1 and >= 2 classes, got {feature_dim}, {num_classes}")
        s_default, m_default = MARGIN_DEFAULTS[kind]
        self.kind = kind
        self.scale = float(s_default if scale is None else scale)
        self.margin = float(m_default if margin is None else margin)
        if self.scale <= 0:
            raise UsageError(f"--scale must be positive, got {self.scale}")
        if not 0.0 <= self.margin < (1.0 if kind == "cosface" else math.pi / 2):
            raise UsageError(f"--margin {self.margin} is outside the usable range of {kind} "
                             f"({'0 <= m < 1' if kind == 'cosface' else '0 <= m < pi/2 radians'})")
        self.margin_scale = 1.0
        self.weight = nn.Parameter(torch.empty(num_classes, feature_dim))
        nn.init.normal_(self.weight, std=0.01)  # only the direction matters: the weights are normalised

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    def cosine(self, features: torch.Tensor) -> torch.Tensor:
        """``cos(theta_j)`` for every class, ``[B, C]``, in float32."""
        if features.dim() != 2 or features.shape[1] != self.weight.shape[1]:
            raise ValueError(f"margin head expects features [B, {self.weight.shape[1]}], got {tuple(features.shape)}")
        return F.linear(F.normalize(features.float(), dim=1), F.normalize(self.weight.float(), dim=1))

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """Identification logits ``s * cos(theta_j)`` (no margin)."""
        return self.scale * self.cosine(features)

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return margin_logits(self.cosine(features), labels, self.kind, self.scale, self.margin * self.margin_scale)

    def loss(self, features: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
        """Softmax cross-entropy over the margin logits."""
        return F.cross_entropy(self(features, labels), labels, label_smoothing=label_smoothing)

    @torch.no_grad()
    def write_into(self, layer: nn.Linear) -> None:
        """``layer`` := ``s * W / ||W||``, bias 0: a plain linear layer over the identity feature that
        classifies exactly as the head does (``argmax`` of ``s ||x|| cos(theta)``)."""
        layer.weight.copy_(self.scale * F.normalize(self.weight.float(), dim=1))
        if layer.bias is not None:
            layer.bias.zero_()

    def extra_repr(self) -> str:
        return (f"kind={self.kind}, feature_dim={self.weight.shape[1]}, num_classes={self.num_classes}, "
                f"s={self.scale}, m={self.margin}")


def margin_warmup_fraction(step: int, warmup_steps: int) -> float:
    """Share of the full margin in force at ``step`` (linear ramp; 1 without warm-up)."""
    return 1.0 if warmup_steps <= 0 else min(1.0, max(0, step) / warmup_steps)


def resolve_margin_kind(kind: str, margin: Optional[float], scale: Optional[float]) -> str:
    """``--margin-loss`` checked against ``--margin`` / ``--scale`` (which only a margin head uses)."""
    if kind not in MARGIN_LOSSES:
        raise UsageError(f"--margin-loss {kind!r}: use one of {', '.join(MARGIN_LOSSES)}")
    if kind == "softmax" and (margin is not None or scale is not None):
        raise UsageError("--margin / --scale belong to --margin-loss cosface|arcface; with softmax they do nothing")
    return kind
