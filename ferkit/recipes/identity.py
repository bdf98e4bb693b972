"""What the identity-training recipes share: a margin classifier and heavier augmentation.

``netb/lightcnn-identity`` (Light CNN-9) and ``tfe-jl/deepid-identity`` (DeepID2) learn the identity
feature the app's "same person?" decision rests on. With the plain softmax of their papers and a
few thousand training faces their features reached only 61-64 % on LFW View 2 (chance 50 %), so
strangers matched. Two standard fixes are options here:

* ``--margin-loss cosface|arcface`` (``--margin``, ``--scale``): the classifier becomes a
  :class:`~ferkit.losses.margin.MarginHead` on the identity feature (see that module for the
  equations and why it is a fine-tune, ``--init-checkpoint``, of a softmax-trained net: from
  scratch these BN-free nets collapse). The network's own last layer gets no gradient; after every
  step it is overwritten with ``s * W / ||W||`` of the margin head (bias 0), so the exported model
  classifies exactly as the head does and every checkpoint is self-consistent.
* heavier augmentation (``--augment`` items ``crop``, ``jitter``, ``blur`` besides the base's
  flip / shift / rotation / scale; ``heavy`` = ``flip,rotation,crop,jitter,blur``): random
  resized crops, brightness / contrast / gamma jitter and random down-up sampling, because LFW and
  the app's webcam frames differ from the training crops in framing, exposure and sharpness.
  Images are already gray (the identity nets are 1-channel), so no colour-to-gray step is needed.

The augmentations live in :mod:`ferkit.data.augment` and run on the training device on whole batches.
"""
from __future__ import annotations

import argparse
from typing import Any, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.augment import photometric_jitter, random_downsample, random_resized_crop
from ferkit.losses.margin import (MARGIN_DEFAULTS, MARGIN_LOSSES, MarginHead, margin_warmup_fraction,
                                  resolve_margin_kind)
from ferkit.recipes.base import option
from ferkit.training.recipe import TrainContext
from ferkit.utils.argtypes import non_negative_float, positive_float, probability

#: augmentation items the identity recipes add to the base's geometric ones
IDENTITY_AUGMENT_ITEMS = ("crop", "jitter", "blur")
#: what ``--augment heavy`` expands to
HEAVY_AUGMENT = "flip,rotation,crop,jitter,blur"


class IdentityTrainingMixin:
    """Margin loss and heavier augmentation for a :class:`~ferkit.recipes.base.ClassifierRecipe`
    that trains an identity net. Put it before the base in the class list; the recipe names the
    attribute of its model's last linear layer in ``classifier_attr``."""

    #: attribute of the model's final linear layer (logits = layer(dropout(identity)))
    classifier_attr = "fc2"
    augment_items: tuple[str, ...] = ("flip", "shift", "rotation", "scale") + IDENTITY_AUGMENT_ITEMS
    margin_loss_help = "classifier loss: softmax (the paper's), cosface or arcface (margin heads on the identity feature)"

    @classmethod
    def add_identity_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--margin-loss", choices=MARGIN_LOSSES, default="softmax", help=cls.margin_loss_help)
        parser.add_argument("--margin", type=non_negative_float, default=None,
                            help=f"margin m of --margin-loss (default cosface {MARGIN_DEFAULTS['cosface'][1]}, "
                                 f"arcface {MARGIN_DEFAULTS['arcface'][1]} rad)")
        parser.add_argument("--scale", type=positive_float, default=None,
                            help=f"scale s of --margin-loss (default {MARGIN_DEFAULTS['cosface'][0]})")
        parser.add_argument("--margin-warmup-epochs", type=non_negative_float, default=None,
                            help="ramp the margin linearly from 0 over this many epochs (default 2 for margin losses)")
        parser.add_argument("--crop-area", type=probability, default=None,
                            help="--augment crop: smallest window area kept, fraction of the image (default 0.7); "
                                 f"--augment heavy = {HEAVY_AUGMENT}")
        parser.add_argument("--jitter", type=non_negative_float, default=None,
                            help="--augment jitter: brightness / contrast / gamma strength (default 0.3)")
        parser.add_argument("--blur-prob", type=probability, default=None,
                            help="--augment blur: share of images down-up sampled by 0.4-1x (default 0.3)")

    # ---- ClassifierRecipe hooks ------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        self._expand_augment()
        super().setup(ctx)  # type: ignore[misc]
        self._setup_identity(ctx)

    def _after_step(self, out: Any, idx: torch.Tensor) -> None:
        super()._after_step(out, idx)  # type: ignore[misc]
        self._sync_classifier()

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        return super()._augment(self._identity_augment(x))  # type: ignore[misc]

    def _loss(self, out: Any, y: torch.Tensor, soft: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The margin head's cross-entropy on ``out.identity``, or the base's softmax on the logits."""
        margin = self._identity_loss(out, y)
        return (margin, {}) if margin is not None else super()._loss(out, y, soft)  # type: ignore[misc]

    def modules(self) -> dict[str, nn.Module]:
        modules = super().modules()  # type: ignore[misc]
        if self.margin_head is not None:
            modules["margin_head"] = self.margin_head
        return modules

    # ---- pieces ------------------------------------------------------------------------------
    def _expand_augment(self) -> None:
        """``--augment heavy`` -> its item list (before the base validates the items)."""
        if str(self.options.get("augment") or "").strip().lower() == "heavy":
            self.options["augment"] = HEAVY_AUGMENT

    def _build_identity_classifier(self, model: nn.Module, feature_dim: int) -> nn.Module:
        """Called from ``_build_model``: with a margin loss, the margin head is created (on the
        training device, so ``_param_groups`` hands its weights to the optimiser) and the model's
        own classifier is frozen (it gets no gradient; it is kept in sync instead), which also
        keeps it out of the optimiser and of DDP."""
        o = self.options
        kind = str(option(o, "margin_loss", "softmax"))
        self.margin_kind = resolve_margin_kind(kind, o.get("margin"), o.get("scale"))
        self.margin_head: Optional[MarginHead] = None
        if self.margin_kind != "softmax":
            getattr(model, self.classifier_attr).requires_grad_(False)
            self.margin_head = MarginHead(feature_dim, len(self.classes), self.margin_kind, o.get("scale"),
                                          o.get("margin")).to(self.device)
        return model

    def _param_groups(self) -> list[dict[str, Any]]:
        groups = super()._param_groups()  # type: ignore[misc]
        if self.margin_head is not None:
            groups.append({"params": list(self.margin_head.parameters())})
        return groups

    def _setup_identity(self, ctx: TrainContext) -> None:
        """After the base setup: wrap the head, the margin ramp, the augmentation settings."""
        o = self.options
        self.margin_warmup_steps = 0
        if self.margin_head is not None:
            if option(o, "init_checkpoint", None):
                # fine-tuning a softmax-trained net: its class weights are the head's starting directions
                with torch.no_grad():
                    self.margin_head.weight.copy_(getattr(self.train_model, self.classifier_attr).weight)
                ctx.log(f"{self.name}: margin head initialised from the checkpoint's classifier weights")
            self.margin_net = ctx.wrap(self.margin_head)
            if o.get("label_smoothing") is None:
                self.label_smoothing = 0.0  # the margin does the regularising; the papers use none
            self.margin_warmup_steps = max(0, int(float(option(o, "margin_warmup_epochs", 2.0)) * self.steps_per_epoch))
            self._sync_classifier()
        self.crop_area = float(option(o, "crop_area", 0.7)) if "crop" in self.aug_parts else 1.0
        self.jitter = float(option(o, "jitter", 0.3)) if "jitter" in self.aug_parts else 0.0
        self.blur_prob = float(option(o, "blur_prob", 0.3)) if "blur" in self.aug_parts else 0.0
        self.settings.update({"margin_loss": self.margin_kind, "label_smoothing": self.label_smoothing,
                              "crop_area": self.crop_area, "jitter": self.jitter, "blur_prob": self.blur_prob})
        if self.margin_head is not None:
            self.settings.update({"margin": self.margin_head.margin, "scale": self.margin_head.scale,
                                  "margin_warmup_epochs": float(option(o, "margin_warmup_epochs", 2.0))})
            ctx.log(f"{self.name}: {self.margin_kind} head s={self.margin_head.scale} m={self.margin_head.margin} "
                    f"(ramped in over {self.margin_warmup_steps} steps), label smoothing {self.label_smoothing}")

    def _sync_classifier(self) -> None:
        """The model's own last layer := ``s * W / ||W||`` of the margin head, bias 0."""
        if self.margin_head is not None:
            for model in {id(m): m for m in (self.train_model, self.model)}.values():
                self.margin_head.write_into(getattr(model, self.classifier_attr))

    def _identity_loss(self, out: Any, y: torch.Tensor) -> Optional[torch.Tensor]:
        """The margin head's loss on ``out.identity`` (None with the plain softmax)."""
        if self.margin_head is None:
            return None
        # the scheduler is stepped once per optimisation step, so its counter is the global step
        self.margin_head.margin_scale = margin_warmup_fraction(int(self.scheduler.last_epoch), self.margin_warmup_steps)
        logits = self.margin_net(out.identity.float(), y)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)

    def _identity_augment(self, x: torch.Tensor) -> torch.Tensor:
        """The identity items, before the base's geometric ones are applied by the caller (jitter and
        blur leave the batch as it is when off)."""
        if self.crop_area < 1.0:
            x = random_resized_crop(x, self.crop_area)
        return random_downsample(photometric_jitter(x, self.jitter), self.blur_prob, 0.4)
