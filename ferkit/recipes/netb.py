"""Recipes of Zhai et al. (Net B + DAL + Softmax-MSE): identity pretraining, then transfer.

1. ``netb/lightcnn-identity``: Light CNN-9 (``lightcnn9``) trained as a face-identity classifier
   on identity folders (SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 128, random
   flip + small shifts standing in for Light CNN's 144 -> 128 random crops). Some identities are
   held out of training entirely so the 256-d feature can be verified on unseen people.
2. ``netb/fer2013``: the face net transferred to FER2013's 7 expressions (paper section 3.2): the
   trunk and fc1 are loaded from ``--identity-checkpoint``, the last layer is replaced; ``--head``
   fc | dal and ``--loss`` softmax | softmax-mse give the paper's ablations
   (fc + softmax = Net B, dal + softmax = Net B_DAL, dal + softmax-mse = Net B_DAL_MSE).
   Evaluated on PublicTest.
3. ``netb/ferplus``: the same transfer on FER+ (8 classes, hard ``--vote`` labels: eq. 3 needs
   one), evaluated on FER2013Valid.

All three are :class:`~ferkit.recipes.base.ClassifierRecipe` s: the training loop, schedule,
augmentation, precision and TTA are the shared ones. The paper's own settings (fixed lr "10e-5"
in Caffe, no augmentation on FER2013) remain available as ``--schedule constant --lr 1e-4
--augment none``; the defaults are the base's one-cycle recipe, which converges in tens of
epochs on a CPU. Images are resized on the device to the net's ``input_size``, so FER's 48x48
faces can feed a 128x128 net.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
import torch.nn as nn

from ferkit.data.dataset import FaceDataset
from ferkit.errors import UsageError
from ferkit.losses.softmax_mse import SoftmaxMSE, expected_class_mse
from ferkit.models.lightcnn import HEADS, transfer_identity_weights
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, get_weights_of
from ferkit.recipes.base import ClassifierRecipe, option
from ferkit.recipes.data import Fer2013Data, FerplusData, IdentitySetsData
from ferkit.recipes.identity import IdentityTrainingMixin
from ferkit.recipes.registry import register_recipe
from ferkit.training.recipe import NetSpec, TrainContext
from ferkit.utils.argtypes import positive_float, positive_int, probability

LOSSES = ("softmax", "softmax-mse")
#: ablation names of the paper's Table 2, keyed by (head, loss)
ABLATION_NAMES = {("fc", "softmax"): "Net B", ("dal", "softmax"): "Net B_DAL",
                  ("dal", "softmax-mse"): "Net B_DAL_MSE", ("fc", "softmax-mse"): "Net B_MSE"}


def _add_net_arguments(parser: argparse.ArgumentParser, size_default: Optional[int]) -> None:
    parser.add_argument("--input-size", type=positive_int, default=size_default,
                        help="network input side (paper 128)" + ("" if size_default else
                                                                 "; taken from the identity checkpoint"))
    parser.add_argument("--width", type=positive_float, default=None,
                        help="channel multiplier (1.0 = Light CNN-9)" + ("" if size_default else
                                                                         "; from the identity checkpoint"))
    parser.add_argument("--dropout", type=probability, default=0.5)


# ---------------------------------------------------------------------------------------------
# 1. identity pretraining (the identity-set assembly lives in ferkit.data.identity)
# ---------------------------------------------------------------------------------------------
@register_recipe
class LightCNNIdentity(IdentitySetsData, IdentityTrainingMixin, ClassifierRecipe):
    name = "netb/lightcnn-identity"
    network = NetSpec("lightcnn9", {"num_classes": 338}, 128, 128, channels_last=True)
    description = "Light CNN-9 (Net B) face-identity pretraining on identity folders (SGD 0.01, batch 128)"
    default_epochs = 30
    default_lr = 0.01
    default_weight_decay = 1e-4
    # Light CNN trains on random 128 crops of 144 faces (+-6 % shifts) with horizontal flips
    default_augment = "flip,shift"
    default_max_shift = 0.06

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        _add_net_arguments(parser, 128)
        cls.add_identity_arguments(parser)
        parser.add_argument("--alignment", default="celeba",
                            help="crop style recorded for live inference (ferkit.face.align; default celeba, the "
                                 "framing of the CelebA training crops)")

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        # the face crop the app must cut for this net is the framing of its training faces: the
        # CelebA crops (eye distance 0.255 of the side), not FER2013's tighter one
        from ferkit.face.align import get_crop_style

        get_crop_style(str(option(self.options, "alignment", "celeba")))  # unknown style: a clear KeyError now
        return Preprocessing(input_size=int(option(self.options, "input_size", 128)), grayscale=True,
                             mean=0.5, std=0.5, alignment=str(option(self.options, "alignment", "celeba")))

    def _build_model(self, train: FaceDataset) -> nn.Module:
        self.model_cfg = {"num_classes": len(self.identity_names),
                          "input_size": int(option(self.options, "input_size", 128)),
                          "width": float(option(self.options, "width", 1.0)),
                          "dropout": float(option(self.options, "dropout", 0.5))}
        model = create_model("lightcnn9", **self.model_cfg)
        return self._build_identity_classifier(model, model.feature_dim)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        ctx.log(f"identity pretraining: {len(self.identity_names)} identities; {len(self.heldout_subjects)} identities "
                "held out")

    def weights_meta(self) -> dict[str, Any]:
        return self._meta("lightcnn9-identity", "lightcnn9", dict(self.model_cfg), self._data_desc,
                          f"{len(self.heldout_subjects)} identities held out of training (heldout_identities); "
                          f"classifier loss {self.margin_kind}")


# ---------------------------------------------------------------------------------------------
# 2./3. transfer to expressions
# ---------------------------------------------------------------------------------------------
class _NetBTransfer(ClassifierRecipe):
    """Net B: the identity net's trunk and fc1 loaded, a new classifier, then the shared loop."""

    default_epochs = 20

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--identity-checkpoint", default=None,
                            help="lightcnn9 identity net: a training checkpoint .pt, a .json card or a shipped "
                                 "weights name (e.g. lightcnn9-identity); without it the net starts from scratch")
        parser.add_argument("--head", choices=HEADS, default="dal", help="fc = Net B, dal = Net B_DAL (paper Fig. 1)")
        parser.add_argument("--loss", choices=LOSSES, default="softmax-mse",
                            help="softmax, or softmax-mse (eqs. 1-4) for Net B_DAL_MSE")
        _add_net_arguments(parser, None)

    def _identity_source(self) -> tuple[Optional[dict[str, torch.Tensor]], dict[str, Any]]:
        src = self.options.get("identity_checkpoint")
        if not src:
            return None, {}
        weights = get_weights_of("lightcnn9", src, "identity-checkpoint",
                                 " (train one with `ferkit train netb/lightcnn-identity`)")
        return weights.state_dict(), dict(weights.model_cfg)

    def setup(self, ctx: TrainContext) -> None:
        self.identity_state, id_cfg = self._identity_source()
        size = self.options.get("input_size") or id_cfg.get("input_size") or 128
        width = self.options.get("width") or id_cfg.get("width") or 1.0
        for key, value in (("input_size", size), ("width", width)):
            if id_cfg and key in id_cfg and float(id_cfg[key]) != float(value):
                raise UsageError(f"--{key.replace('_', '-')} {value} differs from the identity net's {id_cfg[key]}; "
                                 "the transferred weights only fit a net of the same shape")
        self.input_size, self.width = int(size), float(width)
        self.feature_dim = id_cfg.get("feature_dim")
        self.head = option(self.options, "head", "dal")
        self.loss_name = option(self.options, "loss", "softmax-mse")
        if self.loss_name not in LOSSES:
            raise UsageError(f"--loss {self.loss_name!r}: use one of {', '.join(LOSSES)}")
        self._softmax_mse = SoftmaxMSE()
        super().setup(ctx)
        if self.identity_state is not None:
            ctx.log(f"transferred {len(self.transferred)} tensors from {self.options.get('identity_checkpoint')}")
        else:
            ctx.log("no --identity-checkpoint: training Net B from scratch (the paper transfers a face net)")

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        return Preprocessing(input_size=self.input_size, grayscale=True, mean=0.5, std=0.5, alignment="fer2013")

    def _build_model(self, train: FaceDataset) -> nn.Module:
        self.model_cfg = {"num_classes": len(train.classes), "head": self.head, "input_size": self.input_size,
                          "width": self.width, "dropout": float(option(self.options, "dropout", 0.5))}
        if self.feature_dim:
            self.model_cfg["feature_dim"] = int(self.feature_dim)
        model = create_model("netb", **self.model_cfg)
        self.transferred: list[str] = []
        if self.identity_state is not None:
            self.transferred = transfer_identity_weights(model, self.identity_state)
        return model

    def _loss(self, out: Any, y: torch.Tensor, soft: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.loss_name == "softmax-mse" and soft is None:
            # eq. 3's value, eq. 4's gradient (against the smoothed label when smoothing is on)
            return self._softmax_mse(out.logits.float(), y, self.label_smoothing), {}
        return super()._loss(out, y, soft)

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        metrics = super().evaluate(ctx, epoch)
        if metrics and self.loss_name == "softmax-mse":  # eq. 3 on the validation set (no TTA)
            probs = self.predict_probabilities(self.x_val, tta="none")
            metrics["val_softmax_mse"] = float(expected_class_mse(probs, self.y_val))
        return metrics

    def weights_meta(self) -> dict[str, Any]:
        ablation = ABLATION_NAMES.get((self.head, self.loss_name), f"{self.head}+{self.loss_name}")
        src = self.options.get("identity_checkpoint")
        name = ("netb-dal-mse" if (self.head, self.loss_name) == ("dal", "softmax-mse")
                else f"netb-{self.head}-{self.loss_name}")
        return self._meta(name, "netb", dict(self.model_cfg), self._data_desc,
                          f"{ablation}: head={self.head}, loss={self.loss_name}, "
                          f"identity init: {src or 'none (scratch)'}")


@register_recipe
class NetBFer2013(Fer2013Data, _NetBTransfer):
    name = "netb/fer2013"
    network = NetSpec("netb", {"num_classes": 7, "head": "dal"}, 128, 128, channels_last=True)
    description = "Net B / Net B_DAL / Net B_DAL_MSE transferred from the Light CNN face net to FER2013 (7 classes)"


@register_recipe
class NetBFerPlus(FerplusData, _NetBTransfer):
    name = "netb/ferplus"
    network = NetSpec("netb", {"num_classes": 8, "head": "dal"}, 128, 128, channels_last=True)
    description = "Net B_DAL_MSE (and ablations) transferred from the Light CNN face net to FER+ (8 classes, --vote labels)"
    #: Softmax-MSE (eq. 3) is defined on a hard label, so FER+ is read with the --vote rule
    supports_vote_targets = False
