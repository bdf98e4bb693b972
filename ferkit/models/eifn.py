"""EIFN: Expression-Identity Fusion Network (Zhang, Su & Wang, ICME 2019).

Two VGG-16 extractors see the same 64x64 face. The identity extractor feeds two FC layers and a
softmax over subjects (plus a center loss on the first FC's output, the identity feature); the
expression branch fuses both maps with bilinear pooling (eqs. 3-4) and classifies the
signed-square-rooted, L2-normalised bilinear vector. The loss is eq. 5::

    L = l2 * (L_softmax_id + l1 * L_center) + l3 * L_softmax_exp

What the gradient of L_softmax_exp may reach is what the paper's ablations vary, so it is an
option of this one model (``mode``) rather than three copies:

* ``"eifn"``: the paper's "special training strategy": L_exp also trains the identity extractor
  (expression-guided identity features);
* ``"eifn_star"`` (EIFN*): identity maps enter the fusion detached, so L_exp reaches only the
  expression extractor and the classifier; the identity extractor learns from L_id alone;
* ``"efn"`` (EFN baseline): l2 = 0, no identity supervision at all; the identity extractor is then
  just a second extractor trained by L_exp (the FC head and centres receive nothing).

Decisions where the paper is silent (also in the model card):

* Extractor = conv1_1..conv5_3 + ReLU + the 5th max-pool ("truncated at conv5_3, followed by ReLU
  and max pooling"), so a 64x64 input gives 2x2 maps; the bilinear vector of the paper's widths is
  512 x 512.
* The two identity FC layers follow Wen et al.'s center-loss network: FC1 -> ``id_dim`` (512) is the
  identity feature (no activation; centre loss and the app's similarity panel use it), FC2 -> the
  subjects is the softmax layer.
* Input channels: CK+48 is grayscale and no ImageNet weights are loaded, so the default is one
  gray channel (``in_channels=3`` is available for RGB data).
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.losses.center import CenterLoss
from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import register_model
from ferkit.models.vgg import VGG16_CFG, count_pools, vgg_features

MODES = ("eifn", "eifn_star", "efn")

#: CK+ 7-class protocol of the paper (alphabetical, as the CK+48 folders are named)
CKPLUS_CLASSES = ["anger", "contempt", "disgust", "fear", "happy", "sadness", "surprise"]


def signed_sqrt(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """``sign(x) * sqrt(|x| + eps)``: the paper's ``y = sign(F) sqrt(|F|)``, with ``eps`` keeping the
    gradient finite where F is 0 (sign(0) = 0 keeps the value itself exact)."""
    return torch.sign(x) * torch.sqrt(x.abs() + eps)


def bilinear_fusion(identity_maps: torch.Tensor, expression_maps: torch.Tensor,
                    eps: float = 1e-8) -> torch.Tensor:
    """Eqs. 3-4 then the paper's normalisation: ``[B, Ci, H, W] x [B, Ce, H, W] -> [B, Ci * Ce]``.

    Sum over locations l of vec(I(l) (x) E(l)) is one batched matmul ``X_i @ X_e^T`` of the
    ``[B, C, HW]`` maps; entry ``(p, q)`` of the result is sum_l I(l)_p * E(l)_q, vectorised row-major
    (identity channel major), then signed square root and L2 normalisation.
    """
    if identity_maps.shape[0] != expression_maps.shape[0] or identity_maps.shape[2:] != expression_maps.shape[2:]:
        raise ValueError(f"bilinear fusion needs maps of the same batch and spatial size, got "
                         f"{tuple(identity_maps.shape)} and {tuple(expression_maps.shape)}")
    b = identity_maps.shape[0]
    xi = identity_maps.flatten(2)               # [B, Ci, HW]
    xe = expression_maps.flatten(2)             # [B, Ce, HW]
    fused = torch.bmm(xi, xe.transpose(1, 2))   # [B, Ci, Ce] = sum over locations of outer products
    y = signed_sqrt(fused.reshape(b, -1), eps)
    return F.normalize(y, p=2.0, dim=1)


def identity_branch(in_channels: int, input_size: int, width: float, id_dim: int, num_subjects: int,
                    batch_norm: bool) -> tuple[nn.Sequential, nn.Linear, nn.Linear, int]:
    """EIFN's identity branch: (VGG-16 extractor, FC1 -> ``id_dim`` identity feature, FC2 -> subjects,
    side of the extractor's maps). Built in one place so that :class:`EIFN` and
    :class:`EIFNIdentityNet` carry the same parameter names and shapes."""
    if num_subjects < 1:
        raise ValueError(f"num_subjects must be >= 1, got {num_subjects}")
    extractor = vgg_features(in_channels, VGG16_CFG, width, batch_norm=batch_norm)
    side = input_size >> count_pools(VGG16_CFG)
    if side < 1 or input_size % (1 << count_pools(VGG16_CFG)):
        raise UsageError(f"input_size {input_size} must be a multiple of 32 (five 2x2 pools)")
    fc1 = nn.Linear(extractor.out_channels * side * side, id_dim)
    return extractor, fc1, nn.Linear(id_dim, num_subjects), side


def check_input(x: torch.Tensor, in_channels: int, input_size: int) -> None:
    """A clear error for input of the wrong shape (the FC1 layer fixes the input side)."""
    if x.shape[-1] != input_size or x.shape[-2] != input_size or x.shape[1] != in_channels:
        raise ValueError(f"EIFN expects [B, {in_channels}, {input_size}, {input_size}] "
                         f"input, got {tuple(x.shape)} (resize faces with the weights' preprocessing)")


class EIFN(FerModel):
    """Expression-identity fusion network; ``forward`` fills ``logits``, ``identity`` (FC1 feature),
    ``identity_logits`` (subjects) and ``embedding`` (the normalised bilinear vector)."""

    has_identity = True

    def __init__(self, num_classes: int = 7, num_subjects: int = 118, in_channels: int = 1,
                 input_size: int = 64, width: float = 1.0, id_dim: int = 512, mode: str = "eifn",
                 sqrt_eps: float = 1e-8, batch_norm: bool = False) -> None:
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"unknown EIFN mode {mode!r}; choose one of {', '.join(MODES)}")
        self.num_classes = num_classes
        self.num_subjects = num_subjects
        self.in_channels = in_channels
        self.input_size = input_size
        self.mode = mode
        self.sqrt_eps = sqrt_eps
        self.expression_extractor = vgg_features(in_channels, VGG16_CFG, width, batch_norm=batch_norm)
        self.identity_extractor, self.identity_fc, self.identity_classifier, self.map_size = identity_branch(
            in_channels, input_size, width, id_dim, num_subjects, batch_norm)
        channels = self.identity_extractor.out_channels
        # expression branch: the classifier on the bilinear vector
        self.expression_classifier = nn.Linear(channels * self.expression_extractor.out_channels, num_classes)

    @property
    def identity_head(self) -> list[nn.Module]:
        """Modules trained only by the identity loss L_id (not part of the extractor I)."""
        return [self.identity_fc, self.identity_classifier]

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        check_input(x, self.in_channels, self.input_size)
        f_exp = self.expression_extractor(x)
        f_id = self.identity_extractor(x)
        identity = self.identity_fc(f_id.flatten(1))
        identity_logits = self.identity_classifier(identity)
        # EIFN*: L_exp must not reach the identity extractor; EIFN / EFN let it through
        f_id_for_fusion = f_id.detach() if self.mode == "eifn_star" else f_id
        fused = bilinear_fusion(f_id_for_fusion, f_exp, self.sqrt_eps)
        logits = self.expression_classifier(fused)
        return ModelOutput(logits=logits, identity=identity, embedding=fused, identity_logits=identity_logits)


class EIFNIdentityNet(FerModel):
    """EIFN's identity branch alone: extractor, FC1 (the identity feature) and the subject softmax.

    Why a model of its own: the paper's identity extractor starts from weights that already know
    faces (ImageNet VGG-16, then a stage with Oulu-CASIA identities). Trained on identity folders
    (``eifn/identity-stage1``), this net has exactly the parameter names and shapes of ``eifn``'s
    identity branch, so ``eifn/ckplus --init`` copies its extractor and FC1 by name; the subject
    softmax (another identity count) stays per data set. ``logits`` are the subject scores.
    """

    has_identity = True

    def __init__(self, num_classes: int = 300, in_channels: int = 1, input_size: int = 64, width: float = 1.0,
                 id_dim: int = 512, batch_norm: bool = False) -> None:
        super().__init__()
        self.num_classes, self.in_channels, self.input_size, self.feature_dim = num_classes, in_channels, input_size, id_dim
        self.identity_extractor, self.identity_fc, self.identity_classifier, self.map_size = identity_branch(
            in_channels, input_size, width, id_dim, num_classes, batch_norm)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        check_input(x, self.in_channels, self.input_size)
        identity = self.identity_fc(self.identity_extractor(x).flatten(1))
        return ModelOutput(logits=self.identity_classifier(identity), identity=identity)


class EIFNLoss(nn.Module):
    """Eq. 5, ``L = l2 (L_S_id + l1 L_C_id) + l3 L_S_exp``; returns the total and its parts.

    In ``efn`` mode l2 is forced to 0 (the paper's EFN baseline), and the identity terms are not
    even added to the graph, so the identity head and the centres get no gradient (``.grad`` None).
    The centres themselves are not moved by this loss's gradient but by Wen et al.'s update rule
    (:meth:`CenterLoss.update_centers`), which the recipe calls after each step.
    """

    def __init__(self, center_loss: CenterLoss, lambda1: float = 1e-4, lambda2: float = 2.0,
                 lambda3: float = 1.0, mode: str = "eifn", label_smoothing: float = 0.0) -> None:
        super().__init__()
        if mode not in MODES:
            raise UsageError(f"unknown EIFN mode {mode!r}; choose one of {', '.join(MODES)}")
        self.center_loss = center_loss
        self.lambda1 = float(lambda1)
        self.lambda2 = 0.0 if mode == "efn" else float(lambda2)
        self.lambda3 = float(lambda3)
        self.mode = mode
        #: smoothing of the expression labels in L_S_exp (0 = the paper's plain softmax loss)
        self.label_smoothing = float(label_smoothing)

    @property
    def uses_identity(self) -> bool:
        return self.lambda2 != 0.0

    def forward(self, out: ModelOutput, labels: torch.Tensor,
                subjects: Optional[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        l_exp = F.cross_entropy(out.logits.float(), labels, label_smoothing=self.label_smoothing)
        parts = {"L_exp": l_exp.detach()}
        total = self.lambda3 * l_exp
        if self.uses_identity:
            if subjects is None or out.identity is None or out.identity_logits is None:
                raise ValueError("EIFN identity loss needs subject labels and the identity branch outputs")
            l_sid = F.cross_entropy(out.identity_logits.float(), subjects)
            l_center = self.center_loss(out.identity.float(), subjects)
            total = total + self.lambda2 * (l_sid + self.lambda1 * l_center)
            parts["L_id_softmax"] = l_sid.detach()
            parts["L_center"] = l_center.detach()
        return total, parts


@register_model("eifn", small_cfg={"width": 0.125, "num_subjects": 10},
                paper="Zhang, Su, Wang. Expression-Identity Fusion Network for Facial Expression "
                      "Recognition. ICME 2019",
                description="EIFN: VGG-16 expression + identity extractors, bilinear fusion (modes eifn/eifn_star/efn)")
def eifn(num_classes: int = 7, num_subjects: int = 118, in_channels: int = 1, input_size: int = 64,
         width: float = 1.0, id_dim: int = 512, mode: str = "eifn", sqrt_eps: float = 1e-8,
         batch_norm: bool = False) -> EIFN:
    """Expression-identity fusion network (two VGG-16 extractors, bilinear fusion)."""
    return EIFN(num_classes=num_classes, num_subjects=num_subjects, in_channels=in_channels,
                input_size=input_size, width=width, id_dim=id_dim, mode=mode, sqrt_eps=sqrt_eps,
                batch_norm=batch_norm)


@register_model("eifn_identity", small_cfg={"width": 0.125, "num_classes": 10},
                paper="Zhang, Su, Wang. Expression-Identity Fusion Network for Facial Expression "
                      "Recognition. ICME 2019",
                description="EIFN's identity branch alone (VGG-16 + FC1 + subject softmax), the identity stage 1 "
                            "whose extractor initialises eifn")
def eifn_identity(num_classes: int = 300, in_channels: int = 1, input_size: int = 64, width: float = 1.0,
                  id_dim: int = 512, batch_norm: bool = False) -> EIFNIdentityNet:
    """EIFN's identity branch as a face-identity classifier."""
    return EIFNIdentityNet(num_classes=num_classes, in_channels=in_channels, input_size=input_size,
                           width=width, id_dim=id_dim, batch_norm=batch_norm)
