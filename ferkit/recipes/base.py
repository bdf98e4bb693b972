"""The one classifier recipe base every supervised paper recipe builds on.

A paper recipe says which data (a data mix-in of :mod:`ferkit.recipes.data`), which model
(``_build_model``) and which loss terms (``_loss``); this base owns what they share: uint8 data
resident on the training device, device-side augmentation (flip, shift, rotation, scale), SGD
with (Nesterov) momentum, per-step schedules (one-cycle, cosine with warm-up, constant), soft or
smoothed targets, an optional EMA of the weights, channels_last, batched evaluation with flip
TTA, and the weights metadata. The engine adds precision (bf16 autocast), checkpoints and resume.

Why these defaults: on FER+ they take the paper's ResNet18 past the paper's 200-epoch accuracy in
tens of epochs on a 2-core CPU (one-cycle to lr 0.1, Nesterov, wd 5e-4, batch 128, the vote
distribution as target, random affine augmentation; see resources/weights/resnet18-ferplus.md).
"""
from __future__ import annotations

import argparse
from itertools import islice
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.augment import augment_batch, parse_augment
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.errors import UsageError
from ferkit.evaluation.forward import class_probabilities, validation_metrics
from ferkit.models.registry import create_model
from ferkit.models.weights import (Preprocessing, check_tta, float_state, get_weights_of, measure_normalisation,
                                   to_model_input)
from ferkit.training.ema import WeightEMA
from ferkit.training.precision import memory_format
from ferkit.training.recipe import Recipe, StepResult, TrainContext
from ferkit.training.schedule import SCHEDULES, make_schedule, step_schedule, steps_per_epoch
from ferkit.utils.argtypes import non_negative_float, positive_float, positive_int, probability

INPUT_SIZE = 48
EVAL_BATCH = 512
#: training batches that re-measure the EMA model's BN statistics before each evaluation
EMA_BN_BATCHES = 10


def option(options: dict[str, Any], name: str, default: Any) -> Any:
    """``options[name]``, or ``default`` when absent or None (argparse leaves unset options None)."""
    value = options.get(name)
    return default if value is None else value


class ClassifierRecipe(Recipe):
    """One classifier trained with SGD (Nesterov), a per-step schedule and device-side augmentation.

    Subclasses say which data (``_load_split``, usually a mix-in of :mod:`ferkit.recipes.data`),
    which model (``_build_model``), which loss terms (``_loss``) and, where a paper needs it, which
    parameter groups (``_param_groups``); everything else (batching, targets, schedule, EMA,
    evaluation with TTA, channels_last, the weights card) is here. Class attributes
    ``default_*`` are the recipe's defaults, stated in ``--help`` and recorded in the card.
    """

    default_epochs = 200
    default_batch_size = 128
    default_lr = 0.1
    default_weight_decay = 5e-4
    default_augment = "flip,shift,rotation,scale"
    #: what --augment may list (a recipe with its own scheme adds a name and overrides _augment)
    augment_items: tuple[str, ...] = ("flip", "shift", "rotation", "scale")
    default_max_shift = 0.1
    default_max_rotation = 15.0
    default_max_scale = 0.1
    default_schedule = "onecycle"
    #: hard-label data (CK+, identities) gets 0.1; FER+ vote distributions need none
    default_label_smoothing = 0.1
    #: registered architecture this recipe trains (``modules()["model"]``): the one its
    #: ``network`` names, set by ``__init_subclass__`` so that one line of a recipe says it
    architecture = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        network = getattr(cls, "network", None)
        if network is None:
            return
        own = cls.__dict__.get("architecture")
        if own is not None and own != network.architecture:
            raise TypeError(f"{cls.__name__}: architecture {own!r} differs from its network {network.architecture!r}")
        cls.architecture = network.architecture

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--batch-size", type=positive_int, default=None,
                            help=f"mini-batch (default {cls.default_batch_size})")
        parser.add_argument("--lr", type=positive_float, default=None,
                            help=f"initial (cosine) or peak (onecycle) learning rate (paper: {cls.default_lr})")
        parser.add_argument("--momentum", type=non_negative_float, default=0.9, help="SGD momentum (paper: 0.9)")
        parser.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=True,
                            help="Nesterov momentum (default on; not in the paper)")
        parser.add_argument("--weight-decay", type=non_negative_float, default=None,
                            help=f"L2 weight decay (not in the paper; default {cls.default_weight_decay})")
        parser.add_argument("--schedule", choices=SCHEDULES, default=None,
                            help=f"one-cycle (warm-up to --lr, cosine anneal), cosine decay to 0 with a linear "
                                 f"warm-up, step (/10 every --lr-step epochs) or constant "
                                 f"(default {cls.default_schedule})")
        parser.add_argument("--lr-step", type=positive_int, default=20, help="epochs between /10 steps of --schedule step")
        parser.add_argument("--warmup-epochs", type=non_negative_float, default=None,
                            help="linear LR warm-up length of the cosine schedule (default 0.5); one-cycle "
                                 "warms up over its first 30 %%")
        parser.add_argument("--schedule-epochs", type=positive_int, default=None,
                            help="epochs the schedule spans (default: the run's --epochs)")
        parser.add_argument("--label-smoothing", type=probability, default=None,
                            help=f"label smoothing of hard-label cross-entropy (default {cls.default_label_smoothing})")
        parser.add_argument("--ema", type=probability, default=None, metavar="DECAY",
                            help="keep an exponential moving average of the weights (e.g. 0.999): it is what "
                                 "is evaluated and saved as the model (default off)")
        parser.add_argument("--tta", choices=["none", "flip"], default="flip",
                            help="test-time augmentation of the validation (and recorded in the card as the "
                                 "model's default): flip = mean of the image's and its mirror's softmax")
        parser.add_argument("--augment", default=None,
                            help=f"comma list of {','.join(cls.augment_items)} or 'none' (default {cls.default_augment})")
        parser.add_argument("--max-shift", type=non_negative_float, default=None,
                            help=f"shift range, fraction of the side (default {cls.default_max_shift})")
        parser.add_argument("--max-rotation", type=non_negative_float, default=None,
                            help=f"rotation range in degrees (default {cls.default_max_rotation})")
        parser.add_argument("--max-scale", type=non_negative_float, default=None,
                            help=f"zoom range, 0.1 = 0.9-1.1 (default {cls.default_max_scale})")
        parser.add_argument("--init-checkpoint", default=None,
                            help="start from these weights (checkpoint .pt, card or shipped name of the same "
                                 "architecture) instead of a random initialisation: a warm restart")
        parser.add_argument("--max-steps-per-epoch", type=positive_int, default=None,
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

    def _loss(self, out: Any, y: torch.Tensor, soft: Optional[torch.Tensor] = None
              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Cross-entropy against the vote distribution when there is one, else the smoothed label."""
        if soft is not None:
            return F.cross_entropy(out.logits.float(), soft), {}
        return F.cross_entropy(out.logits.float(), y, label_smoothing=self.label_smoothing), {}

    def _batch_loss(self, out: Any, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of training batch ``idx`` (a paper needing more per-sample labels overrides this)."""
        return self._loss(out, self.y_train[idx], None if self.soft_train is None else self.soft_train[idx])

    def _after_step(self, out: Any, idx: torch.Tensor) -> None:
        """Work after each optimiser step (e.g. EIFN's centre update); nothing by default."""

    def _preprocessing(self, train: FaceDataset) -> Preprocessing:
        mean, std = measure_normalisation(train.images)
        return Preprocessing(input_size=INPUT_SIZE, grayscale=True, mean=mean, std=std, alignment="fer2013")

    def _param_groups(self) -> list[dict[str, Any]]:
        return [{"params": [p for p in self.train_model.parameters() if p.requires_grad]}]

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
        self.memory_format = memory_format(option(o, "channels_last", "auto"), ctx.device)
        self.channels_last = self.memory_format == torch.channels_last

        self.x_train = train.images.to(ctx.device)
        self.y_train = train.labels.to(ctx.device)
        # vote distributions are the target only when the data mix-in asked for them (--target votes)
        self.soft_train = train.soft_labels.to(ctx.device) if getattr(self, "_soft_targets", False) else None
        self.label_smoothing = float(option(o, "label_smoothing", self.default_label_smoothing))
        if val is not None and len(val):
            self.x_val, self.y_val = val.images.to(ctx.device), val.labels.to(ctx.device)
        else:
            self.x_val = self.y_val = None
        self.tta = check_tta(option(o, "tta", "flip"))
        self.autocast = ctx.autocast

        model = self._build_model(train)
        init = option(o, "init_checkpoint", None)
        if init:
            weights = get_weights_of(self.architecture, init, "init-checkpoint")
            model.load_state_dict(float_state(weights.state_dict()))
            ctx.log(f"{self.name}: initialised from {init}")
        self.train_model = model.to(ctx.device, memory_format=self.memory_format)
        self.net = ctx.wrap(self.train_model)
        # the averaged copy is what is evaluated and exported ("model"); the raw weights train
        self.ema = WeightEMA.from_option(option(o, "ema", None), self.train_model)
        self.ema_decay = self.ema.decay if self.ema else None
        self.model = self.ema.model if self.ema else self.train_model
        self.batch_size = int(option(o, "batch_size", self.default_batch_size))
        lr = float(option(o, "lr", self.default_lr))
        wd = float(option(o, "weight_decay", self.default_weight_decay))
        momentum = float(option(o, "momentum", 0.9))
        self.optimizer = torch.optim.SGD(self._param_groups(), lr=lr, momentum=momentum, weight_decay=wd,
                                         nesterov=bool(option(o, "nesterov", True)) and momentum > 0)
        self.steps_per_epoch = steps_per_epoch(len(train), self.batch_size, ctx.world_size)
        max_steps = option(o, "max_steps_per_epoch", None)
        if max_steps is not None:
            if int(max_steps) < 1:
                raise UsageError(f"--max-steps-per-epoch must be at least 1, got {max_steps}")
            self.steps_per_epoch = min(self.steps_per_epoch, int(max_steps))
        epochs = int(option(o, "schedule_epochs", None) or getattr(ctx, "epochs", None)
                     or option(o, "epochs", None) or self.default_epochs)
        self.schedule = str(option(o, "schedule", self.default_schedule))
        self.schedule_steps = self.steps_per_epoch * epochs
        self.scheduler = make_schedule(self.optimizer, self.schedule, self.schedule_steps,
                                       int(float(option(o, "warmup_epochs", 0.5)) * self.steps_per_epoch),
                                       step_size=int(option(o, "lr_step", 20)) * self.steps_per_epoch)
        self.aug_parts = parts = parse_augment(option(o, "augment", self.default_augment), self.augment_items)
        self.aug_flip = "flip" in parts
        self.aug_shift = float(option(o, "max_shift", self.default_max_shift)) if "shift" in parts else 0.0
        self.aug_rot = float(option(o, "max_rotation", self.default_max_rotation)) if "rotation" in parts else 0.0
        self.aug_scale = float(option(o, "max_scale", self.default_max_scale)) if "scale" in parts else 0.0
        target = "vote distributions" if self.soft_train is not None else f"labels (smoothing {self.label_smoothing})"
        #: the resolved recipe settings, written into the weights card (what the defaults were)
        self.settings = {"target": "votes" if self.soft_train is not None else "labels",
                         "label_smoothing": 0.0 if self.soft_train is not None else self.label_smoothing,
                         "schedule": self.schedule, "lr": lr, "epochs_scheduled": epochs,
                         "batch_size": self.batch_size, "momentum": momentum, "weight_decay": wd,
                         "nesterov": bool(self.optimizer.param_groups[0]["nesterov"]),
                         "augment": ",".join(sorted(parts)) or "none", "max_shift": self.aug_shift,
                         "max_rotation": self.aug_rot, "max_scale": self.aug_scale, "ema": self.ema_decay,
                         "tta": self.tta}
        ctx.log(f"{self.name}: {len(train)} training images, {0 if val is None else len(val)} validation, "
                f"{len(self.classes)} classes, target {target}, {self.steps_per_epoch} steps/epoch, "
                f"{self.schedule} lr {lr} over {epochs} epochs, ema {self.ema_decay or 'off'}, tta {self.tta}, "
                f"normalisation mean {self.preprocessing.mean} std {self.preprocessing.std}, "
                f"channels_last {self.channels_last}")

    def modules(self) -> dict[str, nn.Module]:
        if self.ema_decay:
            return {"model": self.model, "train_model": self.train_model}
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.scheduler}

    def extra_state(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "schedule_steps": self.schedule_steps, "ema": self.ema_decay}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Refuse a resume whose schedule or EMA differs from the checkpoint's: a one-cycle schedule
        cannot be stretched (torch's OneCycleLR keeps its total), and EMA changes what "model" is."""
        steps = state.get("schedule_steps")
        if steps is not None and int(steps) != self.schedule_steps:
            raise UsageError(f"this run's {state.get('schedule')} schedule spans {steps} steps, the resumed one would "
                             f"span {self.schedule_steps}: resume with the same --epochs / --schedule-epochs, or "
                             "start a new run from it with --init-checkpoint")
        if "ema" in state and (state["ema"] or None) != (self.ema_decay or None):
            raise UsageError(f"the checkpoint was trained with --ema {state['ema']}, this run has "
                             f"--ema {self.ema_decay}; resume with the same --ema")

    def _augment(self, x: torch.Tensor) -> torch.Tensor:
        """Random augmentation of a float [0, 1] batch (a paper with its own scheme overrides this;
        with every item off it is the batch itself)."""
        return augment_batch(x, flip=self.aug_flip, max_shift=self.aug_shift, max_rotation_deg=self.aug_rot,
                             max_scale=self.aug_scale)

    def inputs(self, images: torch.Tensor, augment: bool) -> torch.Tensor:
        """uint8 ``[B,C,H,W]`` on the device -> augmented, normalised float model input."""
        x = images.float().div_(255.0)
        if augment:
            x = self._augment(x)
        # the same conversion live inference uses (resizes e.g. 48x48 FER faces for a 128x128 net)
        return to_model_input(x, self.preprocessing).contiguous(memory_format=self.memory_format)

    def _step_schedule(self) -> None:
        """Step the per-step schedule (see :func:`~ferkit.training.schedule.step_schedule`)."""
        step_schedule(self.scheduler)

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        self.train_model.train()
        # at most steps_per_epoch (--max-steps-per-epoch): the batches are a fresh random order every epoch
        for idx in islice(ctx.batches(len(self.y_train), self.batch_size, epoch), self.steps_per_epoch):
            x = self.inputs(self.x_train[idx], augment=True)
            y = self.y_train[idx]
            with ctx.autocast():
                out = self.net(x)
            loss, extra = self._batch_loss(out, idx)
            ctx.step(loss, self.optimizer)
            self._after_step(out, idx)
            self._step_schedule()
            if self.ema:
                self.ema.update()
            correct = (out.logits.detach().argmax(1) == y).sum()
            yield StepResult(loss=loss.detach(), correct=correct, n=int(y.numel()),
                             extra={k: v.detach() for k, v in extra.items()})

    def predict_probabilities(self, images: torch.Tensor, tta: Optional[str] = None) -> torch.Tensor:
        """Class probabilities of the evaluated model (the EMA copy when on), with the run's TTA."""
        return class_probabilities(self.model, images, lambda x: self.inputs(x, augment=False),
                                   tta=self.tta if tta is None else tta, batch_size=EVAL_BATCH,
                                   autocast=self.autocast)

    def _settle_ema_statistics(self) -> None:
        """Re-measure the EMA model's BN statistics before an evaluation (see :class:`WeightEMA`)."""
        if self.ema:
            self.ema.measure_statistics(self.x_train, lambda x: self.inputs(x, augment=False), self.batch_size,
                                        EMA_BN_BATCHES)

    def end_epoch(self, ctx: TrainContext, epoch: int) -> None:
        """The schedule is stepped after every optimisation step; only EMA statistics may need settling."""
        if self.x_val is None:
            self._settle_ema_statistics()

    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        if self.x_val is None:
            return {}
        self._settle_ema_statistics()
        return validation_metrics(lambda x: self.predict_probabilities(x, tta="none"), self.x_val, self.y_val, self.tta)

    def _meta(self, name: str, architecture: str, model_cfg: dict[str, Any], data: str, notes: str = "") -> dict[str, Any]:
        return {"name": name, "architecture": architecture, "classes": list(self.classes),
                "preprocessing": self.preprocessing, "model_cfg": model_cfg, "data": data,
                "recipe": self.name, "notes": notes, "tta": self.tta, "training_options": dict(self.settings),
                "heldout_identities": list(getattr(self, "heldout_subjects", [])),
                "split": dict(getattr(self, "_split_info", {}))}


