"""TFE-JL's training stages as recipes (Li et al., section 3 and 4.2; model-details.md).

Stage 1  ``tfe-jl/deepid-identity``  DeepID2 ConvNet on identity folders (paper: CASIA-WebFace;
         here the CelebA subset + ORL): identification softmax + DeepID2 verification signal,
         SGD lr 0.01, momentum 0.9, batch 128, horizontal flips only (paper 4.3).
Stage 2  ``tfe-jl/resnet18-ferplus``  ResNet18 on FER+; the paper's SGD lr 0.1, momentum 0.9, batch
         128, flip / shift / rotation; by default the target is the vote distribution
         (``--target votes``; ``majority`` is the paper's hard label) and scale is augmented too.
         ``tfe-jl/resnet12-ckplus``  ResNet12 on CK+48, lr 0.16, subject-independent folds.
Stage 3  ``tfe-jl/joint-ferplus`` / ``tfe-jl/joint-ckplus``  both pretrained branches loaded
         (``--identity-checkpoint``, ``--emotion-checkpoint``), BN + concat + FC, the whole network
         fine-tuned on the FER data only, lr 0.001 (FER+); CK+ uses lr 0.01. By default
         (``--head-init emotion``, a deviation from the paper's fresh head) the joint model starts
         as the emotion net: BN statistics measured, FC copied, identity half zero.

Learning-rate schedule: the paper gives only initial rates and "up to 200 epochs" (100 for fine
tuning). Stages 1 and 2 use one-cycle to the paper's rate over the run's ``--epochs`` (converges in
tens of epochs, see :mod:`ferkit.recipes.base`); stage 3 starts from two converged branches and
uses a cosine decay from the paper's small rate. ``--schedule`` overrides either.

Inputs: 48x48 gray, uint8 kept on the training device; each batch is converted, augmented
(:func:`ferkit.data.augment.augment_batch`) and normalised there. Normalisation is one scalar
mean and std measured on the training images (the paper: "mean subtraction and standard deviation
normalization"; the co-author's code uses the dataset's global mean and std); the numbers travel
with the weights in their :class:`~ferkit.models.weights.Preprocessing`. The joint stage keeps the
emotion checkpoint's numbers, so its ResNet branch sees exactly the inputs it was trained on.

On CPU the models and batches use channels_last memory (measured about 1.6-2x faster for these
small ResNets on this project's CPUs); ``--channels-last off`` disables it.
"""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ferkit.data.dataset import FaceDataset
from ferkit.errors import UsageError
from ferkit.evaluation.forward import batched_forward
from ferkit.evaluation.kfold import format_fold
from ferkit.evaluation.verification import all_pairs_accuracy
from ferkit.losses.contrastive import median_negative_distance, verification_loss
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, get_weights_of, load_matching
from ferkit.recipes.base import EVAL_BATCH, INPUT_SIZE, ClassifierRecipe, option
from ferkit.recipes.data import CkplusData, FerplusData
from ferkit.recipes.identity import IdentityTrainingMixin
from ferkit.recipes.registry import register_recipe
from ferkit.training.recipe import NetSpec, TrainContext
from ferkit.utils.argtypes import non_negative_float, non_negative_int, positive_int


# ---- stage 2: emotion ResNets -------------------------------------------------------------------
class _EmotionNetRecipe(ClassifierRecipe):
    """A stage-2 emotion ResNet: its weights card is ``weights_name`` with ``num_classes`` only.

    ``--init`` warm-starts from an emotion net of the same architecture trained on another data
    set (the paper's ResNet12 starts CK+ from a stage on another expression set): every tensor
    whose name and shape match is copied (:func:`~ferkit.models.weights.load_matching`, the rule
    EIFN's and FERSNet's ``--init`` use), so FER+'s 8-class ``fc`` stays random for CK+'s 7
    classes. ``--init-checkpoint`` stays the strict same-task warm restart.
    """

    weights_name = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--init", default=None,
                            help=f"stage-1 {cls.architecture} (checkpoint .pt, card or shipped name, e.g. from "
                                 "tfe-jl/resnet12-ferplus-stage1) to start from: matching tensors only, the "
                                 "classifier of another class count stays random")

    def _build_model(self, train: FaceDataset) -> nn.Module:
        model = super()._build_model(train)
        init = self.options.get("init")
        if init:
            if self.options.get("init_checkpoint"):
                raise UsageError("--init and --init-checkpoint both name a start; pass one")
            taken, left = load_matching(model, str(init), self.architecture, f"{self.architecture} model")
            self.init_note = f"init from {init} ({taken} tensors; left random: {', '.join(left) or 'none'})"
        return model

    def weights_meta(self) -> dict[str, Any]:
        return self._meta(self.weights_name, self.architecture, {"num_classes": len(self.classes)}, self._data_desc,
                          getattr(self, "init_note", ""))


@register_recipe
class ResNet18FerplusRecipe(FerplusData, _EmotionNetRecipe):
    name = "tfe-jl/resnet18-ferplus"
    network = NetSpec("resnet18_fer", {"num_classes": 8}, 48, 128, channels_last=True)
    description = "TFE-JL stage 2: ResNet18 emotion net on FER+ (vote-distribution targets by default), SGD lr 0.1"
    default_lr = 0.1
    weights_name = "resnet18-ferplus"


@register_recipe
class ResNet12CkplusRecipe(CkplusData, _EmotionNetRecipe):
    name = "tfe-jl/resnet12-ckplus"
    network = NetSpec("resnet12_fer", {"num_classes": 7}, 48, 128, channels_last=True)
    description = "TFE-JL stage 2 (CK+): ResNet12 emotion net on CK+48, SGD lr 0.16, subject-independent folds"
    default_lr = 0.16
    weights_name = "resnet12-ckplus"


@register_recipe
class ResNet12FerplusStage1Recipe(FerplusData, _EmotionNetRecipe):
    """ResNet12 on FER+, the ``--init`` of ``tfe-jl/resnet12-ckplus``.

    The paper pre-trains its CK+ ResNet12 on another expression set before CK+ (a few hundred CK+
    training images per fold are too few for a network from random weights); FER+ is the large
    expression set here, as for EIFN (``eifn/ferplus-stage1``). The FER+ recipe defaults are
    ResNet18's (vote-distribution targets, one-cycle to 0.1); the epoch default is small because
    the stage is a start, not a shipped FER+ model.
    """

    name = "tfe-jl/resnet12-ferplus-stage1"
    network = NetSpec("resnet12_fer", {"num_classes": 8}, 48, 128, channels_last=True)
    description = "ResNet12 emotion net on FER+ (vote targets), the --init of tfe-jl/resnet12-ckplus"
    default_lr = 0.1
    default_epochs = 10
    weights_name = "resnet12-ferplus"


# ---- stage 1: DeepID identity net ---------------------------------------------------------------
@register_recipe
class DeepIdIdentityRecipe(IdentityTrainingMixin, ClassifierRecipe):
    """DeepID2 training: ``Ident + lambda * Verif`` on identity folders.

    ``Ident`` is the paper's softmax, or a CosFace / ArcFace margin head on the 160-d feature
    (``--margin-loss``, :mod:`ferkit.recipes.identity`); ``Verif`` is the contrastive signal with
    margin ``--verif-margin``.

    Split (paper 4.3 style, plus a verification hold-out): ``--holdout-identities`` identities of
    the primary root are removed entirely (never trained; ``ferkit eval-verification`` measures the
    identity feature on them, and ``evaluate`` reports best-threshold verification accuracy on all
    their pairs); of every remaining identity one image is kept for identification validation, as
    the paper does on CASIA-WebFace. Held-out identity names are written into the weights notes.
    """

    name = "tfe-jl/deepid-identity"
    network = NetSpec("deepid", {"num_classes": 300}, 48, 128, channels_last=True)
    description = "TFE-JL stage 1: DeepID2 identity net, softmax identification + contrastive verification"
    data_help = ("identity-folder root <identity>/<images> (CASIA-WebFace, VGGFace2, "
                 "e.g. ../shared/data/identity/celeba_subset); more roots with --extra-identity")
    default_lr = 0.01
    default_epochs = 200
    default_augment = "flip"
    classifier_attr = "classifier"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--extra-identity", action="append", default=None,
                            help="another identity-folder root to train on (repeatable), e.g. orl_faces")
        parser.add_argument("--holdout-identities", type=non_negative_int, default=30,
                            help="identities of --data kept out of training for verification")
        parser.add_argument("--verif-weight", type=non_negative_float, default=None,
                            help="lambda of Verif (DeepID2: 0.05; default 0.05 with softmax, 0 with a margin loss)")
        parser.add_argument("--verif-margin", type=non_negative_float, default=None,
                            help="contrastive margin of Verif (default: set from the initial feature distances)")
        cls.add_identity_arguments(parser)
        parser.add_argument("--min-images", type=positive_int, default=2, help="drop identities with fewer images")
        parser.add_argument("--split-seed", type=int, default=0, help="seed of the verification hold-out draw")

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        from ferkit.data.identity import list_identity_folders
        from ferkit.data.prepared import is_prepared

        if not is_prepared(data_dir):  # a `ferkit prepare identity` folder (aligned crops) is read as it is
            list_identity_folders(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.identity import load_identity_folders

        return load_identity_folders(data_dir, size=INPUT_SIZE, grayscale=True)

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        from ferkit.data.identity import load_identity_holdout_split

        n_hold = int(option(self.options, "holdout_identities", 30))
        split = load_identity_holdout_split(self.data_dir, self.options.get("extra_identity") or [], INPUT_SIZE,
                                            int(option(self.options, "min_images", 2)), n_hold,
                                            int(option(self.options, "split_seed", 0) or 0))
        self.heldout_names = self.heldout_subjects = split.heldout
        self.verif_set = split.verification
        self._data_desc = ("identity folders, 48x48 gray: " + "; ".join(split.sources)
                           + f"; one image per identity held for identification validation; "
                           f"{n_hold} identities of {self.data_dir.name} held out for verification")
        return split.train, split.validation

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        # with a margin head the identification term already shapes the cosine geometry; the
        # contrastive term works on raw feature distances, whose scale a margin head leaves free
        # (the norms grow), so it is off by default there (measured: NaN in the second epoch)
        self.verif_weight = float(option(self.options, "verif_weight", 0.05 if self.margin_kind == "softmax" else 0.0))
        self.verif_margin = self.options.get("verif_margin")
        if self.verif_margin is None:
            # m must be on the scale of the features; DeepID2 adapts it to the distance statistics.
            # We fix it once: the median distance between different identities at initialisation.
            with torch.no_grad():
                self.model.eval()
                idx = torch.randperm(len(self.y_train))[:256].to(ctx.device)
                f = self.model.features(self.inputs(self.x_train[idx], augment=False))
                self.model.train()
            self.verif_margin = median_negative_distance(f, self.y_train[idx])
            ctx.log(f"{self.name}: contrastive margin m = {self.verif_margin:.4f}")
        self.settings.update({"verif_weight": self.verif_weight, "verif_margin": round(float(self.verif_margin), 6)})
        self.x_verif = self.verif_set.images.to(ctx.device) if self.verif_set is not None else None

    def _build_model(self, train: FaceDataset) -> nn.Module:
        model = super()._build_model(train)
        return self._build_identity_classifier(model, model.feature_dim)

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        # live crops must be framed like the training faces: identity crops (CelebA style, eye
        # distance 0.255 of the side), not FER2013's tighter crop. Measured with the shipped
        # DeepID on LFW View 2: 80.6 % with CelebA-style crops, 70.3 % with FER2013-style ones.
        return replace(super()._preprocessing(train), alignment="celeba")

    def _loss(self, out: Any, y: torch.Tensor, soft: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ident, _ = super()._loss(out, y)  # identification: softmax (label-smoothed) or the margin head
        if self.verif_weight == 0:
            return ident, {"ident": ident.detach()}
        verif = verification_loss(out.identity.float(), y, float(self.verif_margin))
        return ident + self.verif_weight * verif, {"ident": ident.detach(), "verif": verif.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {**super().extra_state(), "verif_margin": self.verif_margin}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        super().load_extra_state(state)
        # checkpoints before the margin heads called the contrastive margin "margin"
        value = state.get("verif_margin", state.get("margin"))
        if value is not None:
            self.verif_margin = float(value)

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        metrics = super().evaluate(ctx, epoch)
        if self.x_verif is not None and len(self.x_verif) > 1:
            feats = batched_forward(self.model, self.x_verif, lambda x: self.inputs(x, augment=False),
                                    batch_size=EVAL_BATCH, select=lambda out: out.identity)
            acc, thr = all_pairs_accuracy(feats, self.verif_set.labels)
            metrics.update({"val_verification_accuracy": acc, "val_verification_threshold": thr})
        return metrics

    def weights_meta(self) -> dict[str, Any]:
        notes = ("identities held out of training for verification (from "
                 f"{self.data_dir.name}): {', '.join(self.heldout_names) or 'none'}; "
                 f"identification loss {self.margin_kind}")
        return self._meta("deepid", "deepid", {"num_classes": len(self.classes)}, self._data_desc, notes)


# ---- stage 3: joint fine-tuning ----------------------------------------------------------------
#: training images whose branch features set the BN statistics of ``--head-init emotion``
HEAD_INIT_IMAGES = 4096


class _JointRecipe(ClassifierRecipe):
    """Both pretrained branches + BN + concat + FC, fine-tuned end to end on the FER data only."""

    default_epochs = 100
    #: fine-tuning from two converged branches: cosine from the paper's small rate, no new peak
    default_schedule = "cosine"
    emotion_architecture = "resnet18_fer"
    emotion_depth = 18
    weights_name = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--identity-checkpoint", required=False, default=None,
                            help="stage-1 DeepID: a checkpoint .pt, a .json card or a shipped weights name")
        parser.add_argument("--emotion-checkpoint", required=False, default=None,
                            help=f"stage-2 {cls.emotion_architecture}: checkpoint .pt, card or shipped name "
                                 "('{fold}' or '{fold:02d}' in the path is replaced by --fold)")
        parser.add_argument("--head-init", choices=("emotion", "random"), default="emotion",
                            help="joint head start: 'emotion' = the model starts as the stage-2 emotion net "
                                 "(FC copied, identity half zero; default), 'random' = the paper's fresh head")

    def _branch_state(self, flag: str, architecture: str) -> tuple[dict[str, torch.Tensor], Any]:
        ref = self.options.get(flag.replace("-", "_"))
        if not ref:
            raise UsageError(f"{self.name} needs --{flag} (the pretrained {architecture} of the earlier stage)")
        weights = get_weights_of(architecture, format_fold(str(ref), int(option(self.options, "fold", 0))), flag)
        return weights.state_dict(), weights

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        return self.emotion_weights.preprocessing

    def setup(self, ctx: TrainContext) -> None:
        self.identity_state, self.identity_weights = self._branch_state("identity-checkpoint", "deepid")
        self.emotion_state, self.emotion_weights = self._branch_state("emotion-checkpoint", self.emotion_architecture)
        super().setup(ctx)
        self.settings["head_init"] = option(self.options, "head_init", "emotion")

    def _build_model(self, train: FaceDataset) -> nn.Module:
        model = create_model("tfe_jl", num_classes=len(train.classes), emotion_depth=self.emotion_depth)
        model.load_branches(self.identity_state, self.emotion_state)
        if option(self.options, "head_init", "emotion") == "emotion":
            fc = {k[3:]: v.float() for k, v in self.emotion_state.items() if k.startswith("fc.")}
            if set(fc) != {"weight", "bias"} or fc["weight"].shape[0] != len(train.classes):
                raise UsageError(f"--head-init emotion needs the stage-2 net's {len(train.classes)}-class fc layer; "
                                 f"{self.emotion_weights.source} has {tuple(fc.get('weight', torch.empty(0)).shape)}; "
                                 "use --head-init random")
            order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:HEAD_INIT_IMAGES]
            model.start_as_emotion_net(fc["weight"], fc["bias"], self.inputs(train.images[order], augment=False))
        return model

    def weights_meta(self) -> dict[str, Any]:
        notes = (f"joint fine-tuning of DeepID from {self.identity_weights.source} and "
                 f"{self.emotion_architecture} from {self.emotion_weights.source}")
        return self._meta(self.weights_name, "tfe_jl",
                          {"num_classes": len(self.classes), "emotion_depth": self.emotion_depth},
                          self._data_desc, notes)


@register_recipe
class JointFerplusRecipe(FerplusData, _JointRecipe):
    name = "tfe-jl/joint-ferplus"
    network = NetSpec("tfe_jl", {"num_classes": 8, "emotion_depth": 18}, 48, 128, channels_last=True)
    description = "TFE-JL stage 3: DeepID + ResNet18 joint fine-tuning on FER+ (lr 0.001)"
    default_lr = 0.001
    weights_name = "tfe-jl"


@register_recipe
class JointCkplusRecipe(CkplusData, _JointRecipe):
    name = "tfe-jl/joint-ckplus"
    network = NetSpec("tfe_jl", {"num_classes": 7, "emotion_depth": 12}, 48, 128, channels_last=True)
    description = "TFE-JL stage 3 (CK+): DeepID + ResNet12 joint fine-tuning on CK+48 folds"
    default_lr = 0.01
    emotion_architecture = "resnet12_fer"
    emotion_depth = 12
    weights_name = "tfe-jl-ckplus"

