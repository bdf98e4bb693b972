"""EIFN on CK+48 (7 classes), the paper's fine-tuning stage (section 3.1).

Paper recipe: 64x64 faces; training images augmented with rotations of -15..15 degrees in steps of
5 and horizontal flips (14x); SGD, batch 100, momentum 0.9, weight decay 5e-4, learning rate 0.01
divided by 10 every 20 epochs; eq. 5 with (l1, l2, l3) = (1e-4, 2, 1) on CK+; 10-fold
subject-independent cross-validation.

What this recipe does differently, and why (also in the model card):

* The paper's stage 1 ("mutual initialisation": pre-training EIFN on Oulu-CASIA with
  l = (1e-4, 1, 6) from ImageNet VGG-16 weights) cannot be run here: Oulu-CASIA is not available
  and nothing is downloaded. ``--init CHECKPOINT`` loads such a stage-1 model when one exists
  (every tensor whose name and shape match; the subject classifier and the centres are per data
  set and are skipped); without it the extractors start from random (Kaiming) weights. The closest
  substitute here is ``eifn/ferplus-stage1``: EIFN pre-trained on FER+ expressions (EFN mode, as
  FER+ has no identities). Its identity half is ``eifn/identity-stage1`` (the identity branch alone
  on identity folders, softmax + centre loss); ``--init`` is repeatable, so
  ``--init FER+STAGE1 --init IDENTITY-STAGE1`` starts CK+ with an expression extractor that knows
  expressions and an identity extractor that knows faces.
* The 14x offline augmentation is drawn on the fly (``--augment paper``, the default): each
  training image gets one of the 7 angles and a flip with probability 1/2 per step, which samples
  the same 14 variants uniformly.
* 48x48 CK+48 faces are resized to 64x64 (bilinear) on the training device.
* The loop, schedule, precision and TTA are the shared classifier recipe's
  (:mod:`ferkit.recipes.base`): one-cycle by default (``--schedule step --lr-step 20`` is the
  paper's), label smoothing 0.1 on L_exp, flip TTA at evaluation.
* Identity labels are the CK+ subjects of the TRAINING images re-indexed 0..S-1: held-out
  subjects are strangers to the identity softmax, as in the subject-independent protocol.
* Centres: Wen et al.'s update rule with alpha = 0.5 (their face setting; EIFN gives none).
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ferkit.data.augment import random_flip_and_rotation_from
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.losses.center import CenterLoss
from ferkit.models.eifn import MODES, EIFNLoss
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, load_matching
from ferkit.recipes.base import ClassifierRecipe, option
from ferkit.recipes.data import CkplusData, FerplusData, IdentitySetsData
from ferkit.recipes.identity import IdentityTrainingMixin
from ferkit.recipes.registry import register_recipe
from ferkit.training.recipe import NetSpec, TrainContext
from ferkit.utils.argtypes import non_negative_float, positive_float, positive_int

#: the paper's rotation set (degrees); with horizontal flips the training set grows 14x
PAPER_ANGLES = (-15.0, -10.0, -5.0, 0.0, 5.0, 10.0, 15.0)

#: the paper's (l1, l2, l3) for fine-tuning on CK+ (its stage 1 on Oulu-CASIA used 1e-4, 1, 6)
CKPLUS_LAMBDAS = (1e-4, 2.0, 1.0)

PREPROCESSING = Preprocessing(input_size=64, grayscale=True, mean=0.5, std=0.5, alignment="ckplus48")
#: stage 1 on FER+: the same input and normalisation, FER2013's crop style
FERPLUS_PREPROCESSING = Preprocessing(input_size=64, grayscale=True, mean=0.5, std=0.5, alignment="fer2013")


def paper_augment(x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Rotate each image of ``[N, C, H, W]`` by one of :data:`PAPER_ANGLES` and flip half of them."""
    return random_flip_and_rotation_from(x, PAPER_ANGLES, generator)


def init_sources(value: Any) -> list[str]:
    """``--init`` as a list, in the order given (one string from older callers and checkpoints)."""
    if not value:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def add_identity_branch_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of the VGG-16 extractors and the identity branch, shared by the CK+ / FER+ stages and
    the identity stage (an identity stage must use the settings of the CK+ stage it initialises)."""
    parser.add_argument("--width", type=positive_float, default=1.0,
                        help="channel multiplier of the VGG-16 extractors (1.0 = the paper; CPU runs use less)")
    parser.add_argument("--batch-norm", action="store_true", default=None,
                        help="VGG-16-BN extractors (BN after each conv) for training from random weights; "
                             "the paper's VGG-16 has none")
    parser.add_argument("--id-dim", type=positive_int, default=512, help="identity feature size (FC1 of the identity branch)")
    parser.add_argument("--lambda1", type=non_negative_float, default=CKPLUS_LAMBDAS[0], help="center-loss weight inside L_id")
    parser.add_argument("--alpha", type=float, default=0.5, help="centre learning rate (Wen et al.)")


def identity_branch_cfg(options: dict[str, Any]) -> dict[str, Any]:
    """The model_cfg entries those options set (width, id_dim, batch_norm), with their defaults."""
    return {"width": float(option(options, "width", 1.0)), "id_dim": int(option(options, "id_dim", 512)),
            "batch_norm": bool(option(options, "batch_norm", False))}


class _EIFNRecipe(ClassifierRecipe):
    """EIFN's model, eq. 5 loss, centre update and parameter groups; the data comes from a mix-in."""

    #: the paper gives the step (20 epochs) but no total; three steps reach lr 1e-4
    default_epochs = 60
    default_lr = 0.01
    default_batch_size = 100
    default_augment = "paper"
    augment_items = ClassifierRecipe.augment_items + ("paper",)
    default_mode = "eifn"
    weights_name = "eifn"
    #: what the model reads (the same for every data set, so a stage-1 model can initialise the next)
    input_preprocessing = PREPROCESSING

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--mode", choices=MODES, default=cls.default_mode,
                            help="eifn: L_exp also trains the identity extractor (paper); eifn_star: identity maps "
                                 "detached from L_exp (EIFN*); efn: lambda2 = 0 (EFN baseline)")
        add_identity_branch_arguments(parser)
        parser.add_argument("--lambda2", type=non_negative_float, default=CKPLUS_LAMBDAS[1],
                            help="identity-loss weight (0 in efn mode)")
        parser.add_argument("--lambda3", type=non_negative_float, default=CKPLUS_LAMBDAS[2], help="expression-loss weight")
        parser.add_argument("--classifier-lr-mult", type=positive_float, default=1.0,
                            help="learning-rate multiplier of the expression classifier (it sees an L2-normalised "
                                 "input)")
        parser.add_argument("--init", action="append", default=None,
                            help="stage-1 checkpoint or weights card to start from (matching tensors only); "
                                 "repeatable, a later one overriding the tensors it has: e.g. the FER+ stage 1, "
                                 "then an eifn/identity-stage1 run for the identity extractor")

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        return self.input_preprocessing

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return super()._augment(paper_augment(x) if "paper" in self.aug_parts else x)

    def _build_model(self, train: FaceDataset) -> nn.Module:
        o = self.options
        self.mode = str(option(o, "mode", self.default_mode))
        if train.subjects is None:
            if self.mode != "efn":
                raise DataError(self.data_dir, f"the data set has no subject ids, and --mode {self.mode} trains the "
                                               "identity branch on them; use --mode efn (no identity loss)")
            # EFN never reads the subject labels: one placeholder class keeps the model's shape valid
            num_subjects, self.s_train = 1, None
        else:
            # identity softmax over the TRAINING subjects only (held-out subjects are strangers)
            subject_ids, subjects = torch.unique(train.subjects, return_inverse=True)
            num_subjects, self.s_train = len(subject_ids), subjects.to(self.device)
        pre = self.input_preprocessing
        self.model_cfg = {
            "num_classes": len(train.classes), "num_subjects": num_subjects,
            "in_channels": pre.channels, "input_size": pre.input_size,
            **identity_branch_cfg(o), "mode": self.mode,
        }
        model = create_model("eifn", **self.model_cfg)
        for ref in init_sources(o.get("init")):
            load_matching(model, ref, "eifn", "EIFN", branches=("eifn_identity",))
        self.center_loss = CenterLoss(num_subjects, self.model_cfg["id_dim"],
                                      alpha=float(option(o, "alpha", 0.5))).to(self.device)
        self.loss_fn = EIFNLoss(self.center_loss, lambda1=float(option(o, "lambda1", CKPLUS_LAMBDAS[0])),
                                lambda2=float(option(o, "lambda2", CKPLUS_LAMBDAS[1])),
                                lambda3=float(option(o, "lambda3", CKPLUS_LAMBDAS[2])), mode=self.mode,
                                label_smoothing=self.label_smoothing)
        if not self.loss_fn.uses_identity:
            # EFN: nothing supervises the identity head; freezing it says so and keeps DDP from
            # waiting for gradients that never come
            for module in model.identity_head:
                module.requires_grad_(False)
        return model

    def _param_groups(self) -> list[dict[str, Any]]:
        # the classifier sees an L2-normalised vector (unit norm spread over Ci*Ce entries), so at the
        # base rate its logits move by ~lr per step; from random weights a higher rate for this layer
        # (Caffe's lr_mult) is what lets it leave the class prior within a CPU budget (measured)
        lr = float(option(self.options, "lr", self.default_lr))
        head = [p for p in self.train_model.expression_classifier.parameters() if p.requires_grad]
        head_ids = {id(p) for p in head}
        rest = [p for p in self.train_model.parameters() if id(p) not in head_ids and p.requires_grad]
        return [{"params": rest, "lr": lr},
                {"params": head, "lr": lr * float(option(self.options, "classifier_lr_mult", 1.0))}]

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        ctx.log(f"{self.name}: mode={self.mode} width={self.model_cfg['width']} "
                f"{self.model_cfg['num_subjects']} training subjects; lambdas=({self.loss_fn.lambda1}, "
                f"{self.loss_fn.lambda2}, {self.loss_fn.lambda3})")

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "center_loss": self.center_loss}

    def _batch_loss(self, out: Any, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss_fn(out, self.y_train[idx], None if self.s_train is None else self.s_train[idx])

    def _after_step(self, out: Any, idx: torch.Tensor) -> None:
        if self.loss_fn.uses_identity:  # Wen et al.'s centre update, after the gradient step
            self.center_loss.update_centers(out.identity.detach().float(), self.s_train[idx])

    def weights_meta(self) -> dict[str, Any]:
        init = init_sources(self.options.get("init"))
        notes = (f"mode={self.mode}; lambdas=({self.loss_fn.lambda1}, {self.loss_fn.lambda2}, {self.loss_fn.lambda3}); "
                 + (f"init from {', then '.join(init)}" if init else "random init (no ImageNet / Oulu-CASIA stage 1)"))
        ids = ("no identity labels (EFN)" if self.s_train is None
               else f"identity labels = {self.model_cfg['num_subjects']} training subjects")
        return self._meta(self.weights_name, "eifn", dict(self.model_cfg), f"{self._data_desc}; {ids}", notes)


@register_recipe
class EIFNCKPlus(CkplusData, _EIFNRecipe):
    name = "eifn/ckplus"
    network = NetSpec("eifn", {"num_classes": 7, "num_subjects": 118}, 64, 100)
    description = ("EIFN (expression-identity fusion, bilinear) on CK+48, 7 classes, identity = CK+ subjects; "
                   "--mode eifn|eifn_star|efn for the ablations")


@register_recipe
class EIFNFerplusStage1(FerplusData, _EIFNRecipe):
    """The paper's stage 1 pre-trains on another expression set (Oulu-CASIA, with identities). Here
    that is FER+, which has no subject labels, hence EFN mode (L_exp alone trains both extractors
    through the fusion), hard majority labels (eq. 5's softmax L_exp) and the CK+ stage's input.
    ``eifn/ckplus --init`` takes both extractors and the identity FC; the heads do not match."""

    name = "eifn/ferplus-stage1"
    network = NetSpec("eifn", {"num_classes": 8, "num_subjects": 1, "mode": "efn"}, 64, 100)
    description = ("EIFN stage 1 on FER+ (EFN mode: no identity labels there), majority labels; the --init of "
                   "eifn/ckplus")
    supports_vote_targets = False
    default_mode = "efn"
    default_epochs = 10
    input_preprocessing = FERPLUS_PREPROCESSING
    weights_name = "eifn-ferplus-stage1"


@register_recipe
class EIFNIdentityStage1(IdentitySetsData, IdentityTrainingMixin, ClassifierRecipe):
    """EIFN's identity branch pre-trained on identity folders: the identity half of the paper's stage 1.

    The paper's identity extractor knows faces before CK+ (ImageNet VGG-16, then Oulu-CASIA's 80
    identities); here the FER+ stage 1 has no identities, so both extractors start CK+ as expression
    extractors. This stage trains :class:`~ferkit.models.eifn.EIFNIdentityNet` (the identity
    extractor, FC1 and a subject softmax, with EIFN's parameter names) with EIFN's own identity loss,
    ``L_id = softmax + lambda1 * centre`` (eq. 5 without the expression term; Wen et al.'s centre
    update). ``eifn/ckplus --init FER+STAGE1 --init THIS`` then takes the expression extractor from
    the FER+ stage and the identity extractor and FC1 from this one. Input: EIFN's 64x64 gray,
    normalised as the CK+ stage reads it; the crops keep the identity sets' CelebA framing (CK+48's
    are tighter), softened by random resized crops.
    """

    name = "eifn/identity-stage1"
    network = NetSpec("eifn_identity", {"num_classes": 338}, 64, 100)
    description = ("EIFN's identity branch (VGG-16 + FC1, softmax + centre loss) on identity folders; the "
                   "identity half of eifn/ckplus --init")
    default_epochs = 30
    default_lr = 0.05
    default_batch_size = 100
    default_augment = "flip,shift,crop"
    default_max_shift = 0.06
    default_holdout_identities = "0"
    identity_image_size = PREPROCESSING.input_size
    classifier_attr = "identity_classifier"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        add_identity_branch_arguments(parser)
        cls.add_identity_arguments(parser)

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        return replace(PREPROCESSING, alignment="celeba")

    def _build_model(self, train: FaceDataset) -> nn.Module:
        o = self.options
        self.model_cfg = {"num_classes": len(self.identity_names), "in_channels": PREPROCESSING.channels,
                          "input_size": PREPROCESSING.input_size, **identity_branch_cfg(o)}
        model = create_model("eifn_identity", **self.model_cfg)
        self.lambda1 = float(option(o, "lambda1", CKPLUS_LAMBDAS[0]))
        self.center_loss = CenterLoss(len(self.identity_names), self.model_cfg["id_dim"],
                                      alpha=float(option(o, "alpha", 0.5))).to(self.device)
        return self._build_identity_classifier(model, self.model_cfg["id_dim"])

    def _loss(self, out: Any, y: torch.Tensor, soft: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        softmax, _ = super()._loss(out, y, soft)  # the subject softmax (or the margin head)
        center = self.center_loss(out.identity.float(), y)
        return softmax + self.lambda1 * center, {"L_id_softmax": softmax.detach(), "L_center": center.detach()}

    def _after_step(self, out: Any, idx: torch.Tensor) -> None:
        super()._after_step(out, idx)
        self.center_loss.update_centers(out.identity.detach().float(), self.y_train[idx])

    def modules(self) -> dict[str, nn.Module]:
        return {**super().modules(), "center_loss": self.center_loss}

    def weights_meta(self) -> dict[str, Any]:
        return self._meta("eifn-identity", "eifn_identity", dict(self.model_cfg), self._data_desc,
                          f"{len(self.heldout_subjects)} identities held out of training; L_id = "
                          f"{self.margin_kind} + {self.lambda1} x centre")
