"""Recipes of Zhai et al. (Net B + DAL + Softmax-MSE): identity pretraining, then transfer.

1. ``netb/lightcnn-identity``: Light CNN-9 (``lightcnn9``) trained as a face-identity classifier
   on identity folders (SGD lr 0.01, momentum 0.9, weight decay 1e-4, batch 128, random
   flip + small shifts standing in for Light CNN's 144 -> 128 random crops). Some identities are
   held out of training entirely so the 256-d feature can be verified on unseen people.
2. ``netb/fer2013``: the face net transferred to FER2013's 7 expressions (paper section 3.2): the
   trunk and fc1 are loaded from ``--identity-checkpoint``, the last layer is replaced; ``--head``
   fc | dal and ``--loss`` softmax | softmax-mse give the paper's ablations
   (fc + softmax = Net B, dal + softmax = Net B_DAL, dal + softmax-mse = Net B_DAL_MSE). SGD with
   momentum 0.9 and a fixed learning rate (paper 4.1); no augmentation on FER2013 ("it has enough
   training images"). Evaluated on PublicTest.
3. ``netb/ferplus``: the same transfer on FER+ (8 classes, majority vote), evaluated on FER2013Valid.

Images are kept as uint8 tensors on the training device; each batch is normalised and resized
(bilinear) to the net's ``input_size`` there, so FER's 48x48 faces can feed a larger net.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.losses.softmax_mse import SoftmaxMSE
from ferkit.models.lightcnn import HEADS, LightCNN9, transfer_identity_weights
from ferkit.models.registry import create_model
from ferkit.models.weights import Preprocessing, get_weights
from ferkit.training.recipe import Recipe, StepResult, TrainContext, register_recipe

LOSSES = ("softmax", "softmax-mse")
DEFAULT_IDENTITY_SETS = "celeba_subset,orl_faces"
#: ablation names of the paper's Table 2, keyed by (head, loss)
ABLATION_NAMES = {("fc", "softmax"): "Net B", ("dal", "softmax"): "Net B_DAL",
                  ("dal", "softmax-mse"): "Net B_DAL_MSE", ("fc", "softmax-mse"): "Net B_MSE"}


def to_input(images: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> normalised float at ``pre.input_size`` (bilinear, antialiased when shrinking)."""
    x = pre.normalize(images)
    size = pre.input_size
    if x.shape[-1] != size or x.shape[-2] != size:
        shrink = x.shape[-1] > size
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=shrink)
    return x.contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def evaluate_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, pre: Preprocessing,
                        batch_size: int = 256) -> dict[str, float]:
    """Accuracy, softmax cross-entropy and the Softmax-MSE value (eqs. 1-3) over a whole split."""
    was_training = model.training
    model.eval()
    correct, ce, mse, n = 0, 0.0, 0.0, 0
    k = None
    for start in range(0, images.shape[0], batch_size):
        x = to_input(images[start:start + batch_size], pre)
        y = labels[start:start + batch_size]
        logits = model(x).logits.float()
        p = torch.softmax(logits, dim=1)
        if k is None:
            k = torch.arange(logits.shape[1], device=logits.device, dtype=torch.float32)
        correct += int((logits.argmax(1) == y).sum())
        ce += float(F.cross_entropy(logits, y, reduction="sum"))
        mse += float(((p @ k) - y.float()).pow(2).sum())
        n += int(y.shape[0])
    model.train(was_training)
    n = max(1, n)
    return {"val_accuracy": correct / n, "val_loss": ce / n, "val_softmax_mse": mse / n}


def _sgd(model: nn.Module, lr: float, momentum: float, weight_decay: float) -> torch.optim.SGD:
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


class _ClassifierRecipe(Recipe):
    """Shared training loop: one model, one SGD optimiser, a loss on the logits, uint8 data on device."""

    train_set: FaceDataset
    val_images: torch.Tensor
    val_labels: torch.Tensor
    model: LightCNN9
    optimizer: torch.optim.Optimizer
    pre: Preprocessing

    def _opt(self, key: str, default: Any) -> Any:
        value = self.options.get(key)
        return default if value is None else value

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def augment(self, x: torch.Tensor, epoch: int) -> torch.Tensor:
        return x

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        model = ctx.wrap(self.model)
        model.train()
        images, labels = self.train_images, self.train_labels
        max_steps = self.options.get("max_steps")
        for step, idx in enumerate(ctx.batches(images.shape[0], int(self._opt("batch_size", 128)), epoch)):
            if max_steps is not None and step >= int(max_steps):
                break
            x = self.augment(to_input(images[idx], self.pre), epoch)
            y = labels[idx]
            with ctx.autocast():
                logits = model(x).logits
            loss = self.loss_fn(logits.float(), y)
            ctx.step(loss, self.optimizer)
            correct = int((logits.detach().argmax(1) == y).sum())
            yield StepResult(loss=float(loss.detach()), correct=correct, n=int(y.shape[0]))

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        if self.val_images.shape[0] == 0:
            return {}
        return evaluate_classifier(self.model, self.val_images, self.val_labels, self.pre)

    def _put_on_device(self, ctx: TrainContext, train: FaceDataset, val_images: torch.Tensor,
                       val_labels: torch.Tensor) -> None:
        self.train_images = train.images.to(ctx.device)
        self.train_labels = train.labels.to(ctx.device)
        self.val_images = val_images.to(ctx.device)
        self.val_labels = val_labels.to(ctx.device)


# ---------------------------------------------------------------------------------------------
# 1. identity pretraining
# ---------------------------------------------------------------------------------------------
def split_identity_sets(data_dir: Path, sets: str) -> list[Path]:
    """The identity-folder roots named by ``--identity-sets`` (sub-folders of ``data_dir``)."""
    names = [s.strip() for s in (sets or "").split(",") if s.strip()]
    if not names:
        return [data_dir]
    roots = [data_dir / n for n in names]
    for r in roots:
        if not r.is_dir():
            raise DataError(r, "identity set folder is missing",
                            hint=f"--data must hold the sets named by --identity-sets ({sets}); "
                                 "pass --identity-sets '' to use --data itself as one identity-folder root")
    return roots


def load_identity_training_data(data_dir: Path, sets: str, size: int, holdout: int
                                ) -> tuple[FaceDataset, list[str], list[str]]:
    """All identity sets merged (labels renumbered), minus the last ``holdout`` identities of the first set.

    Returns (training identities dataset, identity names "set/name", held-out names "set/name").
    Held-out identities never reach training: they are the unseen people of the verification check.
    """
    from ferkit.data.identity import load_identity_folders

    images, labels, names, held_out = [], [], [], []
    for i, root in enumerate(split_identity_sets(Path(data_dir), sets)):
        ds = load_identity_folders(root, size=size, grayscale=True)
        keep_ids = list(range(len(ds.classes)))
        if i == 0 and holdout > 0:
            if holdout >= len(ds.classes):
                raise DataError(root, f"--holdout-identities {holdout} leaves no identity of {len(ds.classes)} to train")
            keep_ids = keep_ids[: len(ds.classes) - holdout]
            held_out += [f"{root.name}/{c}" for c in ds.classes[len(keep_ids):]]
        remap = torch.full((len(ds.classes),), -1, dtype=torch.int64)
        remap[keep_ids] = torch.arange(len(keep_ids)) + len(names)
        mask = remap[ds.labels] >= 0
        images.append(ds.images[mask])
        labels.append(remap[ds.labels[mask]])
        names += [f"{root.name}/{ds.classes[j]}" for j in keep_ids]
    all_labels = torch.cat(labels)
    merged = FaceDataset(images=torch.cat(images), labels=all_labels, classes=names, subjects=all_labels.clone(),
                         meta={"dataset": "identity-folders", "sets": sets, "size": size, "held_out": held_out})
    return merged, names, held_out


def image_holdout_split(labels: torch.Tensor, every: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every ``every``-th image of each identity (identities with >= 3 images) -> validation."""
    val = torch.zeros_like(labels, dtype=torch.bool)
    if every and every > 1:
        for c in torch.unique(labels).tolist():
            idx = (labels == c).nonzero().flatten()
            if idx.numel() >= 3:
                val[idx[every - 1::every]] = True
    return (~val).nonzero().flatten(), val.nonzero().flatten()


@register_recipe
class LightCNNIdentity(_ClassifierRecipe):
    name = "netb/lightcnn-identity"
    description = "Light CNN-9 (Net B) face-identity pretraining on identity folders (SGD 0.01, batch 128)"
    default_epochs = 30
    data_help = ("a folder holding identity-folder sets (default celeba_subset and orl_faces, each "
                 "<set>/<identity>/<images>), e.g. ../shared/data/identity")

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--identity-sets", default=DEFAULT_IDENTITY_SETS,
                            help="comma-separated sub-folders of --data, each <identity>/<images> "
                                 "('' = --data is one identity-folder root)")
        parser.add_argument("--holdout-identities", type=int, default=48,
                            help="last N identities of the first set are never trained on (verification)")
        parser.add_argument("--val-every", type=int, default=10,
                            help="every k-th image of each training identity is kept for validation")
        parser.add_argument("--input-size", type=int, default=128, help="network input side (paper 128)")
        parser.add_argument("--width", type=float, default=1.0, help="channel multiplier (1.0 = Light CNN-9)")
        parser.add_argument("--lr", type=float, default=0.01)
        parser.add_argument("--momentum", type=float, default=0.9)
        parser.add_argument("--weight-decay", type=float, default=1e-4)
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--dropout", type=float, default=0.5)
        parser.add_argument("--max-steps", type=int, default=None, help="stop every epoch after N steps (smoke runs)")

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        if not Path(data_dir).is_dir():
            raise DataError(data_dir, "identity data folder is missing", hint=cls.data_help)

    def setup(self, ctx: TrainContext) -> None:
        size = int(self._opt("input_size", 128))
        self.pre = Preprocessing(input_size=size, grayscale=True, mean=0.5, std=0.5, alignment="fer2013")
        data, self.identity_names, self.held_out = load_identity_training_data(
            self.data_dir, self._opt("identity_sets", DEFAULT_IDENTITY_SETS), size,
            int(self._opt("holdout_identities", 48)))
        tr, va = image_holdout_split(data.labels, int(self._opt("val_every", 10)))
        self.num_train_images = int(tr.numel())
        self._put_on_device(ctx, data.subset(tr), data.images[va], data.labels[va])
        self.model_cfg = {"num_classes": len(self.identity_names), "input_size": size,
                          "width": float(self._opt("width", 1.0)), "dropout": float(self._opt("dropout", 0.5))}
        self.model = create_model("lightcnn9", **self.model_cfg).to(ctx.device).to(memory_format=torch.channels_last)
        self.optimizer = _sgd(self.model, float(self._opt("lr", 0.01)), float(self._opt("momentum", 0.9)),
                              float(self._opt("weight_decay", 1e-4)))
        ctx.log(f"identity pretraining: {len(self.identity_names)} identities, {self.num_train_images} train / "
                f"{int(va.numel())} val images; {len(self.held_out)} identities held out")

    def augment(self, x: torch.Tensor, epoch: int) -> torch.Tensor:
        from ferkit.data.augment import augment_batch

        # Light CNN trains on random 128 crops of 144 faces (+-6% shifts) with horizontal flips
        return augment_batch(x, flip=True, max_shift=0.06, max_rotation_deg=0.0)

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        metrics = super().evaluate(ctx, epoch)
        metrics.pop("val_softmax_mse", None)  # an expected *identity index* means nothing
        return metrics

    def weights_meta(self) -> dict[str, Any]:
        sets = self._opt("identity_sets", DEFAULT_IDENTITY_SETS)
        return {
            "name": "lightcnn9-identity", "architecture": "lightcnn9", "classes": list(self.identity_names),
            "preprocessing": asdict(self.pre), "model_cfg": dict(self.model_cfg),
            "data": f"identity folders {sets} under {self.data_dir.name}/ ({self.num_train_images} training images, "
                    f"{len(self.identity_names)} identities)",
            "recipe": self.name,
            "notes": "held-out identities (never trained on): " + ", ".join(self.held_out),
        }


# ---------------------------------------------------------------------------------------------
# 2./3. transfer to expressions
# ---------------------------------------------------------------------------------------------
class _NetBTransfer(_ClassifierRecipe):
    default_epochs = 20
    classes: list[str]
    data_name = ""

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--identity-checkpoint", default=None,
                            help="lightcnn9 identity net: a training checkpoint .pt, a .json card or a shipped "
                                 "weights name (e.g. lightcnn9-identity); without it the net starts from scratch")
        parser.add_argument("--head", choices=HEADS, default="dal", help="fc = Net B, dal = Net B_DAL (paper Fig. 1)")
        parser.add_argument("--loss", choices=LOSSES, default="softmax-mse",
                            help="softmax, or softmax-mse (eqs. 1-4) for Net B_DAL_MSE")
        parser.add_argument("--input-size", type=int, default=None,
                            help="network input side; taken from the identity checkpoint when given")
        parser.add_argument("--width", type=float, default=None, help="channel multiplier; from the checkpoint")
        parser.add_argument("--lr", type=float, default=1e-4,
                            help="fixed learning rate (paper 4.1: base lr '10e-5', policy 'fix')")
        parser.add_argument("--momentum", type=float, default=0.9)
        parser.add_argument("--weight-decay", type=float, default=1e-4)
        parser.add_argument("--batch-size", type=int, default=128)
        parser.add_argument("--dropout", type=float, default=0.5)
        parser.add_argument("--max-steps", type=int, default=None, help="stop every epoch after N steps (smoke runs)")

    def load_splits(self) -> tuple[FaceDataset, FaceDataset]:  # pragma: no cover - abstract
        raise NotImplementedError

    def _identity_source(self) -> tuple[Optional[dict[str, torch.Tensor]], dict[str, Any]]:
        src = self.options.get("identity_checkpoint")
        if not src:
            return None, {}
        weights = get_weights(src)
        if weights.architecture != "lightcnn9":
            raise ValueError(f"--identity-checkpoint {src} holds a {weights.architecture!r} model, not lightcnn9 "
                             "(train one with `ferkit train netb/lightcnn-identity`)")
        return weights.state_dict(), dict(weights.model_cfg)

    def setup(self, ctx: TrainContext) -> None:
        state, id_cfg = self._identity_source()
        size = self.options.get("input_size") or id_cfg.get("input_size") or 128
        width = self.options.get("width") or id_cfg.get("width") or 1.0
        for key, value in (("input_size", size), ("width", width)):
            if id_cfg and key in id_cfg and float(id_cfg[key]) != float(value):
                raise ValueError(f"--{key.replace('_', '-')} {value} differs from the identity net's {id_cfg[key]}; "
                                 "the transferred weights only fit a net of the same shape")
        self.pre = Preprocessing(input_size=int(size), grayscale=True, mean=0.5, std=0.5, alignment="fer2013")
        train, val = self.load_splits()
        self.classes = list(train.classes)
        self.num_train_images = len(train)
        self._put_on_device(ctx, train, val.images, val.labels)
        self.head = self._opt("head", "dal")
        self.loss_name = self._opt("loss", "softmax-mse")
        if self.loss_name not in LOSSES:
            raise ValueError(f"--loss {self.loss_name!r}: use one of {', '.join(LOSSES)}")
        self.model_cfg = {"num_classes": len(self.classes), "head": self.head, "input_size": int(size),
                          "width": float(width), "dropout": float(self._opt("dropout", 0.5))}
        if id_cfg.get("feature_dim"):
            self.model_cfg["feature_dim"] = int(id_cfg["feature_dim"])
        model = create_model("netb", **self.model_cfg)
        self.transferred: list[str] = []
        if state is not None:
            self.transferred = transfer_identity_weights(model, state)
            ctx.log(f"transferred {len(self.transferred)} tensors from {self.options.get('identity_checkpoint')}")
        else:
            ctx.log("no --identity-checkpoint: training Net B from scratch (the paper transfers a face net)")
        self.model = model.to(ctx.device).to(memory_format=torch.channels_last)
        self.optimizer = _sgd(self.model, float(self._opt("lr", 1e-4)), float(self._opt("momentum", 0.9)),
                              float(self._opt("weight_decay", 1e-4)))
        self._softmax_mse = SoftmaxMSE()

    def loss_fn(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.loss_name == "softmax-mse":
            return self._softmax_mse(logits, labels)
        return F.cross_entropy(logits, labels)

    def weights_meta(self) -> dict[str, Any]:
        ablation = ABLATION_NAMES.get((self.head, self.loss_name), f"{self.head}+{self.loss_name}")
        src = self.options.get("identity_checkpoint")
        return {
            "name": "netb-dal-mse" if (self.head, self.loss_name) == ("dal", "softmax-mse") else
                    f"netb-{self.head}-{self.loss_name}",
            "architecture": "netb", "classes": list(self.classes), "preprocessing": asdict(self.pre),
            "model_cfg": dict(self.model_cfg),
            "data": f"{self.data_name} ({self.num_train_images} training images)",
            "recipe": self.name,
            "notes": f"{ablation}: head={self.head}, loss={self.loss_name}, identity init: {src or 'none (scratch)'}",
        }


@register_recipe
class NetBFer2013(_NetBTransfer):
    name = "netb/fer2013"
    description = "Net B / Net B_DAL / Net B_DAL_MSE transferred from the Light CNN face net to FER2013 (7 classes)"
    data_help = ("a folder holding fer2013_emotion.csv with FER2013Train/FER2013Valid PNGs beside it "
                 "(or the original fer2013.csv), e.g. ../shared/data/ferplus")
    data_name = "FER2013 Training (original 7-class labels), evaluated on PublicTest"

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        d = Path(data_dir)
        if not any((d / n).is_file() for n in ("fer2013_emotion.csv", "fer2013.csv")) and not d.is_file():
            raise DataError(d, "no fer2013_emotion.csv or fer2013.csv here", hint=cls.data_help)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.fer2013 import load_fer2013

        return load_fer2013(data_dir, usage="Training")

    def load_splits(self) -> tuple[FaceDataset, FaceDataset]:
        from ferkit.data.fer2013 import load_fer2013

        return load_fer2013(self.data_dir, usage="Training"), load_fer2013(self.data_dir, usage="PublicTest")


@register_recipe
class NetBFerPlus(_NetBTransfer):
    name = "netb/ferplus"
    description = "Net B_DAL_MSE (and ablations) transferred from the Light CNN face net to FER+ (8 classes, majority)"
    data_help = "the FER+ folder holding FER2013Train and FER2013Valid (label.csv + PNGs), e.g. ../shared/data/ferplus"
    data_name = "FER+ FER2013Train (majority vote), evaluated on FER2013Valid"

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        for split in ("FER2013Train", "FER2013Valid"):
            if not (Path(data_dir) / split / "label.csv").is_file():
                raise DataError(Path(data_dir) / split / "label.csv", "FER+ label file is missing", hint=cls.data_help)

    @classmethod
    def load_dataset(cls, data_dir: Path) -> FaceDataset:
        from ferkit.data.ferplus import load_ferplus

        return load_ferplus(Path(data_dir) / "FER2013Train", vote="majority")

    def load_splits(self) -> tuple[FaceDataset, FaceDataset]:
        from ferkit.data.ferplus import load_ferplus

        return (load_ferplus(self.data_dir / "FER2013Train", vote="majority"),
                load_ferplus(self.data_dir / "FER2013Valid", vote="majority"))
