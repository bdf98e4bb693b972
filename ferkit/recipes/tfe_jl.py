"""TFE-JL's training stages as recipes (Li et al., section 3 and 4.2; model-details.md).

Stage 1  ``tfe-jl/deepid-identity``  DeepID2 ConvNet on identity folders (paper: CASIA-WebFace;
         here the CelebA subset + ORL): identification softmax + DeepID2 verification signal,
         SGD lr 0.01, momentum 0.9, batch 128, horizontal flips only (paper 4.3).
Stage 2  ``tfe-jl/resnet18-ferplus``  ResNet18 on FER+ (majority vote), SGD lr 0.1, momentum 0.9,
         batch 128, flip / shift / rotation on the training device.
         ``tfe-jl/resnet12-ckplus``  ResNet12 on CK+48, lr 0.16, subject-independent folds.
Stage 3  ``tfe-jl/joint-ferplus`` / ``tfe-jl/joint-ckplus``  both pretrained branches loaded
         (``--identity-checkpoint``, ``--emotion-checkpoint``), BN + concat + FC, the whole network
         fine-tuned on the FER data only, lr 0.001 (FER+); CK+ uses lr 0.01.

Learning-rate schedule: the paper gives only initial rates and "up to 200 epochs" (100 for fine
tuning). We use a per-step cosine decay from the paper's initial rate to zero with a short linear
warm-up, over however many epochs the run is given (``--epochs``), so a short run still completes
its schedule instead of stopping at a high learning rate. ``--schedule constant`` keeps the rate.

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
import math
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.augment import augment_batch
from ferkit.data.dataset import FaceDataset, concat
from ferkit.data.errors import DataError
from ferkit.evaluation.kfold import add_fold_arguments, split_dataset_fold
from ferkit.losses.contrastive import verification_loss
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, float_state, get_weights
from ferkit.training.recipe import Recipe, StepResult, TrainContext, register_recipe

INPUT_SIZE = 48
EVAL_BATCH = 512


# ---- shared helpers -------------------------------------------------------------------------
def measure_normalisation(images: torch.Tensor) -> tuple[float, float]:
    """Global mean and std of uint8 images in [0, 1] units (rounded: they are written into cards)."""
    x = images.float().div_(255.0)
    return round(float(x.mean()), 4), round(float(x.std()), 4)


def cosine_warmup(step: int, total: int, warmup: int) -> float:
    """LR multiplier: linear warm-up over ``warmup`` steps, then cosine from 1 to 0 at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def best_threshold_accuracy(sim: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """Verification accuracy at the best threshold on balanced classes: max over t of (TPR+TNR)/2."""
    order = np.argsort(-sim)
    s, y = sim[order], same[order].astype(bool)
    n_pos, n_neg = max(1, int(y.sum())), max(1, int((~y).sum()))
    tp = np.cumsum(y) / n_pos            # accept the first k pairs (similarity >= s[k-1])
    tn = 1.0 - np.cumsum(~y) / n_neg
    bal = 0.5 * (tp + tn)
    k = int(np.argmax(bal))
    return float(bal[k]), float(s[k])


def _option(options: dict[str, Any], name: str, default: Any) -> Any:
    value = options.get(name)
    return default if value is None else value


class _SupervisedRecipe(Recipe):
    """One classifier trained with SGD + momentum, cosine schedule, device-side augmentation.

    Subclasses say which data (``_load_split``), which model (``_build_model``) and which loss
    terms (``_loss``); everything else (batching, schedule, evaluation, channels_last) is here.
    """

    default_epochs = 200
    default_lr = 0.1
    default_weight_decay = 5e-4
    default_augment = "flip,shift,rotation"
    #: registered architecture this recipe trains (``modules()["model"]``)
    architecture = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--batch-size", type=int, default=128, help="mini-batch (paper: 128)")
        parser.add_argument("--lr", type=float, default=None, help=f"initial learning rate (paper: {cls.default_lr})")
        parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (paper: 0.9)")
        parser.add_argument("--weight-decay", type=float, default=None,
                            help=f"L2 weight decay (not in the paper; default {cls.default_weight_decay})")
        parser.add_argument("--schedule", choices=["cosine", "constant"], default="cosine",
                            help="cosine decay to 0 over the run's epochs, or a constant rate")
        parser.add_argument("--warmup-epochs", type=float, default=0.5, help="linear LR warm-up length")
        parser.add_argument("--schedule-epochs", type=int, default=None,
                            help="epochs the cosine spans; set it equal to --epochs (default: the engine's "
                                 "planned epochs when it tells the recipe, else the paper's count)")
        parser.add_argument("--augment", default=None,
                            help=f"comma list of flip,shift,rotation or 'none' (default {cls.default_augment})")
        parser.add_argument("--max-shift", type=float, default=0.08, help="shift range, fraction of the side")
        parser.add_argument("--max-rotation", type=float, default=20.0, help="rotation range in degrees")
        parser.add_argument("--init-checkpoint", default=None,
                            help="start from these weights (checkpoint .pt, card or shipped name of the same "
                                 "architecture) instead of a random initialisation: a warm restart")
        parser.add_argument("--max-steps-per-epoch", type=int, default=None,
                            help="stop each epoch after this many steps (a random subset of the batches; "
                                 "for short CPU runs of the joint stage)")
        parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                            help="channels_last memory format (auto: on for CPU)")
        add_data = getattr(cls, "_add_data_arguments", None)
        if add_data is not None:
            add_data(parser)

    # ---- hooks for subclasses --------------------------------------------------------------
    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        raise NotImplementedError

    def _build_model(self, train: FaceDataset) -> nn.Module:
        return create_model(self.architecture, num_classes=len(train.classes))

    def _loss(self, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return F.cross_entropy(out.logits.float(), y), {}

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        mean, std = measure_normalisation(train.images)
        return Preprocessing(input_size=INPUT_SIZE, grayscale=True, mean=mean, std=std, alignment="fer2013")

    def _param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.model.parameters() if p.requires_grad]}]

    # ---- Recipe ----------------------------------------------------------------------------
    def setup(self, ctx: TrainContext) -> None:
        o = self.options
        self.device = ctx.device
        train, val = self._load_split()
        if len(train) == 0:
            raise DataError(self.data_dir, "no training images after the split")
        self.train_set, self.val_set = train, val
        self.classes = list(train.classes)
        self.preprocessing = self._preprocessing(train)
        cl = _option(o, "channels_last", "auto")
        self.channels_last = cl == "on" or (cl == "auto" and ctx.device.type == "cpu")
        self.memory_format = torch.channels_last if self.channels_last else torch.contiguous_format

        self.x_train = train.images.to(ctx.device)
        self.y_train = train.labels.to(ctx.device)
        if val is not None and len(val):
            self.x_val, self.y_val = val.images.to(ctx.device), val.labels.to(ctx.device)
        else:
            self.x_val = self.y_val = None

        model = self._build_model(train)
        init = _option(o, "init_checkpoint", None)
        if init:
            weights = get_weights(init)
            if weights.architecture != self.architecture:
                raise ValueError(f"--init-checkpoint {init} holds a {weights.architecture!r} model, "
                                 f"this recipe trains {self.architecture!r}")
            model.load_state_dict(float_state(weights.state_dict()))
            ctx.log(f"{self.name}: initialised from {init}")
        self.model = model.to(ctx.device, memory_format=self.memory_format)
        self.net = ctx.wrap(self.model)
        self.batch_size = int(_option(o, "batch_size", 128))
        lr = float(_option(o, "lr", self.default_lr))
        wd = float(_option(o, "weight_decay", self.default_weight_decay))
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=lr, momentum=float(_option(o, "momentum", 0.9)),
                                         weight_decay=wd)
        per_rank = max(1, self.batch_size // ctx.world_size)
        self.steps_per_epoch = max(1, len(train) // (per_rank * ctx.world_size))
        max_steps = _option(o, "max_steps_per_epoch", None)
        if max_steps is not None:
            if int(max_steps) < 1:
                raise ValueError(f"--max-steps-per-epoch must be at least 1, got {max_steps}")
            self.steps_per_epoch = min(self.steps_per_epoch, int(max_steps))
        # the engine's planned epoch count when it exposes one (ctx.epochs), else the option / paper value
        epochs = int(_option(o, "schedule_epochs", None) or getattr(ctx, "epochs", None)
                     or _option(o, "epochs", None) or self.default_epochs)
        total = self.steps_per_epoch * epochs
        warmup = int(float(_option(o, "warmup_epochs", 0.5)) * self.steps_per_epoch)
        if _option(o, "schedule", "cosine") == "cosine":
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(
                self.optimizer, lambda s: cosine_warmup(s, total, warmup))
        else:
            self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: 1.0)
        aug = str(_option(o, "augment", self.default_augment)).lower()
        parts = set() if aug in {"", "none"} else {a.strip() for a in aug.split(",")}
        unknown = parts - {"flip", "shift", "rotation"}
        if unknown:
            raise ValueError(f"--augment: unknown item(s) {sorted(unknown)}; use flip, shift, rotation or none")
        self.aug_flip = "flip" in parts
        self.aug_shift = float(_option(o, "max_shift", 0.08)) if "shift" in parts else 0.0
        self.aug_rot = float(_option(o, "max_rotation", 20.0)) if "rotation" in parts else 0.0
        ctx.log(f"{self.name}: {len(train)} training images, {0 if val is None else len(val)} validation, "
                f"{len(self.classes)} classes, {self.steps_per_epoch} steps/epoch, lr {lr}, "
                f"schedule over {epochs} epochs, normalisation mean {self.preprocessing.mean} "
                f"std {self.preprocessing.std}, channels_last {self.channels_last}")

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.scheduler}

    def end_epoch(self, ctx: TrainContext, epoch: int) -> None:
        """Nothing: the schedule is stepped after every optimisation step."""

    def inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 ``[B,C,H,W]`` on the device -> augmented, normalised float model input."""
        x = images.float().div_(255.0)
        if augment and (self.aug_flip or self.aug_shift > 0 or self.aug_rot > 0):
            x = augment_batch(x, flip=self.aug_flip, max_shift=self.aug_shift, max_rotation_deg=self.aug_rot)
        x = self.preprocessing.normalize(x)
        return x.contiguous(memory_format=self.memory_format)

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        self.model.train()
        for step, idx in enumerate(ctx.batches(len(self.y_train), self.batch_size, epoch)):
            if step >= self.steps_per_epoch:
                break  # --max-steps-per-epoch: the batches are a fresh random order every epoch
            x = self.inputs(self.x_train[idx], augment=True)
            y = self.y_train[idx]
            with ctx.autocast():
                out = self.net(x)
            loss, extra = self._loss(out, y)
            ctx.step(loss, self.optimizer)
            self.scheduler.step()
            correct = (out.logits.detach().argmax(1) == y).sum()
            yield StepResult(loss=loss.detach(), correct=correct, n=int(y.numel()),
                             extra={k: v.detach() for k, v in extra.items()})

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        outs = []
        for start in range(0, images.shape[0], EVAL_BATCH):
            x = self.inputs(images[start:start + EVAL_BATCH], augment=False)
            outs.append(self.model(x).logits.float())
        self.model.train()
        return torch.cat(outs) if outs else torch.zeros(0, len(self.classes), device=images.device)

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        if self.x_val is None:
            return {}
        logits = self.predict_logits(self.x_val)
        return {"val_accuracy": float((logits.argmax(1) == self.y_val).float().mean()),
                "val_loss": float(F.cross_entropy(logits, self.y_val))}

    def _meta(self, name: str, architecture: str, model_cfg: dict[str, Any], data: str, notes: str = "") -> dict[str, Any]:
        return {"name": name, "architecture": architecture, "classes": list(self.classes),
                "preprocessing": self.preprocessing, "model_cfg": model_cfg, "data": data,
                "recipe": self.name, "notes": notes}


# ---- data mix-ins -----------------------------------------------------------------------------
class _FerplusData:
    """FER+ majority vote: ``--data`` is the folder holding FER2013Train (+ FER2013Valid), or FER2013Train."""

    data_help = "FER+ folder with FER2013Train/ and FER2013Valid/ (label.csv + PNGs), e.g. ../shared/data/ferplus"
    data_dir: Path
    options: dict[str, Any]

    @staticmethod
    def _train_folder(data_dir: Path) -> Path:
        from ferkit.data.ferplus import resolve_split

        data_dir = Path(data_dir)
        if (data_dir / "FER2013Train" / "label.csv").is_file():
            return resolve_split(data_dir, "train")
        return resolve_split(data_dir)

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        cls._train_folder(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path, vote: str = "majority") -> FaceDataset:
        from ferkit.data.ferplus import load_ferplus

        return load_ferplus(cls._train_folder(data_dir), vote=vote)

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--vote", choices=["majority", "plurality"], default="majority",
                            help="FER+ label rule (papers: majority)")
        parser.add_argument("--valid", default=None,
                            help="validation folder (default: FER2013Valid beside the training folder)")

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        from ferkit.data.ferplus import load_ferplus

        vote = _option(self.options, "vote", "majority")
        train_dir = self._train_folder(self.data_dir)
        train = load_ferplus(train_dir, vote=vote)
        valid_dir = self.options.get("valid")
        if valid_dir is None:
            candidate = train_dir.parent / "FER2013Valid"
            valid_dir = candidate if (candidate / "label.csv").is_file() else None
        val = load_ferplus(valid_dir, vote=vote) if valid_dir is not None else None
        self._data_desc = (f"FER+ {train_dir.name} ({len(train)} images, {vote} vote); validation "
                           f"{Path(valid_dir).name if valid_dir else 'none'}")
        return train, val


class _CkplusData:
    """CK+48 with subject-independent folds (``--folds K --fold I --split-seed S``)."""

    data_help = "CK+48 folder (CK+48/<class>/S###_###_########.png), e.g. ../shared/data/ckplus48"
    supports_folds = True
    data_dir: Path
    options: dict[str, Any]

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        cls.load_dataset(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.ckplus import load_ckplus48

        ds = load_ckplus48(data_dir)
        if ds.image_shape != (1, INPUT_SIZE, INPUT_SIZE):
            ds = load_ckplus48(data_dir, size=INPUT_SIZE)
        return ds

    @classmethod
    def _add_data_arguments(cls, parser: argparse.ArgumentParser) -> None:
        add_fold_arguments(parser)

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        train, test, desc = split_dataset_fold(self.load_dataset(self.data_dir), _option(self.options, "folds", 10),
                                               _option(self.options, "fold", 0), _option(self.options, "split_seed", 0))
        self._data_desc = ("CK+48 7-class, " if test is not None else "CK+48 ") + desc
        return train, test


# ---- stage 2: emotion ResNets -------------------------------------------------------------------
class _EmotionNetRecipe(_SupervisedRecipe):
    """A stage-2 emotion ResNet: its weights card is ``weights_name`` with ``num_classes`` only."""

    weights_name = ""

    def weights_meta(self) -> dict[str, Any]:
        return self._meta(self.weights_name, self.architecture, {"num_classes": len(self.classes)}, self._data_desc)


@register_recipe
class ResNet18FerplusRecipe(_FerplusData, _EmotionNetRecipe):
    name = "tfe-jl/resnet18-ferplus"
    description = "TFE-JL stage 2: ResNet18 emotion net on FER+ (majority vote), SGD lr 0.1"
    default_lr = 0.1
    architecture = "resnet18_fer"
    weights_name = "resnet18-ferplus"


@register_recipe
class ResNet12CkplusRecipe(_CkplusData, _EmotionNetRecipe):
    name = "tfe-jl/resnet12-ckplus"
    description = "TFE-JL stage 2 (CK+): ResNet12 emotion net on CK+48, SGD lr 0.16, subject-independent folds"
    default_lr = 0.16
    architecture = "resnet12_fer"
    weights_name = "resnet12-ckplus"


# ---- stage 1: DeepID identity net ---------------------------------------------------------------
@register_recipe
class DeepIdIdentityRecipe(_SupervisedRecipe):
    """DeepID2 training: ``Ident + lambda * Verif`` on identity folders.

    Split (paper 4.3 style, plus a verification hold-out): ``--holdout-identities`` identities of
    the primary root are removed entirely (never trained; ``ferkit eval-verification`` measures the
    identity feature on them, and ``evaluate`` reports best-threshold verification accuracy on all
    their pairs); of every remaining identity one image is kept for identification validation, as
    the paper does on CASIA-WebFace. Held-out identity names are written into the weights notes.
    """

    name = "tfe-jl/deepid-identity"
    description = "TFE-JL stage 1: DeepID2 identity net, softmax identification + contrastive verification"
    data_help = ("identity-folder root <identity>/<images> (CASIA-WebFace, VGGFace2, "
                 "e.g. ../shared/data/identity/celeba_subset); more roots with --extra-identity")
    default_lr = 0.01
    default_epochs = 200
    default_augment = "flip"
    architecture = "deepid"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--extra-identity", action="append", default=None,
                            help="another identity-folder root to train on (repeatable), e.g. orl_faces")
        parser.add_argument("--holdout-identities", type=int, default=30,
                            help="identities of --data kept out of training for verification")
        parser.add_argument("--verif-weight", type=float, default=0.05, help="lambda of Verif (DeepID2: 0.05)")
        parser.add_argument("--margin", type=float, default=None,
                            help="contrastive margin m (default: set from the initial feature distances)")
        parser.add_argument("--min-images", type=int, default=2, help="drop identities with fewer images")
        parser.add_argument("--split-seed", type=int, default=0, help="seed of the verification hold-out draw")

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        from ferkit.data.identity import list_identity_folders

        list_identity_folders(data_dir)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.identity import load_identity_folders

        return load_identity_folders(data_dir, size=INPUT_SIZE, grayscale=True)

    def _load_split(self) -> tuple[FaceDataset, Optional[FaceDataset]]:
        from ferkit.data.identity import load_identity_folders

        min_images = int(_option(self.options, "min_images", 2))
        primary = load_identity_folders(self.data_dir, size=INPUT_SIZE, grayscale=True, min_images=min_images)
        n_ids = len(primary.classes)
        n_hold = int(_option(self.options, "holdout_identities", 30))
        if not 0 <= n_hold < n_ids:
            raise ValueError(f"--holdout-identities must be in 0..{n_ids - 1} ({self.data_dir} has {n_ids} identities)")
        rng = np.random.default_rng(int(_option(self.options, "split_seed", 0) or 0))
        held = set(rng.choice(n_ids, size=n_hold, replace=False).tolist()) if n_hold else set()
        self.heldout_names = sorted(primary.classes[i] for i in held)
        is_held = torch.tensor([int(s) in held for s in primary.subjects.tolist()])
        self.verif_set = primary.subset(is_held) if n_hold else None

        parts = [_relabel(primary.subset(~is_held), prefix="")]
        sources = [f"{self.data_dir.name}: {n_ids - n_hold} identities"]
        for extra in self.options.get("extra_identity") or []:
            ds = load_identity_folders(extra, size=INPUT_SIZE, grayscale=True, min_images=min_images)
            parts.append(_relabel(ds, prefix=f"{Path(extra).name}/"))
            sources.append(f"{Path(extra).name}: {len(ds.classes)} identities")
        full = _concat_identities(parts)
        # one image per identity for identification validation (the paper's CASIA protocol)
        gen = torch.Generator().manual_seed(0)
        perm = torch.randperm(len(full), generator=gen)
        first = {}
        for i in perm.tolist():
            first.setdefault(int(full.labels[i]), i)
        val_mask = torch.zeros(len(full), dtype=torch.bool)
        val_mask[list(first.values())] = True
        self._data_desc = ("identity folders, 48x48 gray: " + "; ".join(sources)
                           + f"; one image per identity held for identification validation; "
                           f"{n_hold} identities of {self.data_dir.name} held out for verification")
        return full.subset(~val_mask), full.subset(val_mask)

    def setup(self, ctx: TrainContext) -> None:
        super().setup(ctx)
        self.verif_weight = float(_option(self.options, "verif_weight", 0.05))
        self.margin = self.options.get("margin")
        if self.margin is None:
            # m must be on the scale of the features; DeepID2 adapts it to the distance statistics.
            # We fix it once: the median distance between different identities at initialisation.
            with torch.no_grad():
                self.model.eval()
                idx = torch.randperm(len(self.y_train))[:256].to(ctx.device)
                f = self.model.features(self.inputs(self.x_train[idx], augment=False))
                self.model.train()
                d = torch.cdist(f, f)
                diff = self.y_train[idx][:, None] != self.y_train[idx][None, :]
                self.margin = float(d[diff].median()) if diff.any() else 1.0
            ctx.log(f"{self.name}: contrastive margin m = {self.margin:.4f}")
        self.x_verif = self.verif_set.images.to(ctx.device) if self.verif_set is not None else None

    def _loss(self, out: Any, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        ident = F.cross_entropy(out.logits.float(), y)
        verif = verification_loss(out.identity.float(), y, float(self.margin))
        return ident + self.verif_weight * verif, {"ident": ident.detach(), "verif": verif.detach()}

    def extra_state(self) -> dict[str, Any]:
        return {"margin": self.margin}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state.get("margin") is not None:
            self.margin = float(state["margin"])

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        metrics = super().evaluate(ctx, epoch)
        if self.x_verif is not None and len(self.x_verif) > 1:
            with torch.no_grad():
                self.model.eval()
                feats = torch.cat([self.model.features(self.inputs(self.x_verif[s:s + EVAL_BATCH], augment=False))
                                   for s in range(0, len(self.x_verif), EVAL_BATCH)])
                self.model.train()
            f = F.normalize(feats.float(), dim=1)
            sim = f @ f.T
            iu = torch.triu_indices(len(f), len(f), offset=1)
            labels = self.verif_set.labels.to(f.device)
            same = (labels[:, None] == labels[None, :])[iu[0], iu[1]].cpu().numpy()
            acc, thr = best_threshold_accuracy(sim[iu[0], iu[1]].cpu().numpy(), same)
            metrics.update({"val_verification_accuracy": acc, "val_verification_threshold": thr})
        return metrics

    def weights_meta(self) -> dict[str, Any]:
        notes = ("identities held out of training for verification (from "
                 f"{self.data_dir.name}): {', '.join(self.heldout_names) or 'none'}")
        return self._meta("deepid", "deepid", {"num_classes": len(self.classes)}, self._data_desc, notes)


def _relabel(ds: FaceDataset, prefix: str) -> FaceDataset:
    """Identity labels renumbered 0..n-1 over the identities present, names prefixed by their source."""
    present = torch.unique(ds.labels)
    remap = torch.full((int(ds.labels.max()) + 1 if len(ds) else 1,), -1, dtype=torch.int64)
    remap[present] = torch.arange(len(present))
    names = [prefix + ds.classes[i] for i in present.tolist()]
    labels = remap[ds.labels]
    return FaceDataset(images=ds.images, labels=labels, classes=names, subjects=labels.clone(),
                       paths=list(ds.paths), subject_names=names, meta=dict(ds.meta))


def _concat_identities(parts: list[FaceDataset]) -> FaceDataset:
    """Stack identity sets with disjoint label ranges (so ORL's s1 is not CelebA's first identity)."""
    offset, shifted, names = 0, [], []
    for ds in parts:
        labels = ds.labels + offset
        names.extend(ds.classes)
        shifted.append((ds, labels))
        offset += len(ds.classes)
    merged = [FaceDataset(images=ds.images, labels=labels, classes=list(names), subjects=labels.clone(),
                          paths=list(ds.paths), subject_names=list(names), meta=dict(ds.meta))
              for ds, labels in shifted]
    return concat(merged)


# ---- stage 3: joint fine-tuning ----------------------------------------------------------------
class _JointRecipe(_SupervisedRecipe):
    """Both pretrained branches + BN + concat + FC, fine-tuned end to end on the FER data only."""

    default_epochs = 100
    architecture = "tfe_jl"
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
                                 "('{fold}' in the path is replaced by --fold)")

    def _branch_state(self, option: str, architecture: str) -> tuple[dict[str, torch.Tensor], Any]:
        ref = self.options.get(option.replace("-", "_"))
        if not ref:
            raise ValueError(f"{self.name} needs --{option} (the pretrained {architecture} of the earlier stage)")
        ref = str(ref).replace("{fold}", str(_option(self.options, "fold", 0)))
        weights = get_weights(ref)
        if weights.architecture != architecture:
            raise ValueError(f"--{option} {ref} holds a {weights.architecture!r} model; expected {architecture!r}")
        return weights.state_dict(), weights

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        return self.emotion_weights.preprocessing

    def setup(self, ctx: TrainContext) -> None:
        self.identity_state, self.identity_weights = self._branch_state("identity-checkpoint", "deepid")
        self.emotion_state, self.emotion_weights = self._branch_state("emotion-checkpoint", self.emotion_architecture)
        super().setup(ctx)

    def _build_model(self, train: FaceDataset) -> nn.Module:
        model = create_model("tfe_jl", num_classes=len(train.classes), emotion_depth=self.emotion_depth)
        model.load_branches(self.identity_state, self.emotion_state)
        return model

    def weights_meta(self) -> dict[str, Any]:
        notes = (f"joint fine-tuning of DeepID from {self.identity_weights.source} and "
                 f"{self.emotion_architecture} from {self.emotion_weights.source}")
        return self._meta(self.weights_name, "tfe_jl",
                          {"num_classes": len(self.classes), "emotion_depth": self.emotion_depth},
                          self._data_desc, notes)


@register_recipe
class JointFerplusRecipe(_FerplusData, _JointRecipe):
    name = "tfe-jl/joint-ferplus"
    description = "TFE-JL stage 3: DeepID + ResNet18 joint fine-tuning on FER+ (lr 0.001)"
    default_lr = 0.001
    weights_name = "tfe-jl"



@register_recipe
class JointCkplusRecipe(_CkplusData, _JointRecipe):
    name = "tfe-jl/joint-ckplus"
    description = "TFE-JL stage 3 (CK+): DeepID + ResNet12 joint fine-tuning on CK+48 folds"
    default_lr = 0.01
    emotion_architecture = "resnet12_fer"
    emotion_depth = 12
    weights_name = "tfe-jl-ckplus"

