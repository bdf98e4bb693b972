"""FERSNet training (Zhao et al., eq. 10 and section IV-A) on CK+48 and on FER+.

Per batch, with a random target expression z^t drawn for every sample:

1. D step: the conditional PatchGAN learns real (I^t, z^t) vs synthesised (G(z^t, I), z^t) (eq. 6).
2. G step (G = every FERSNet module): L_cls (eq. 5) + 0.3 L_GAN (eq. 6) + 1 L_rec (eq. 7)
   + 0.5 L_cyc (eq. 8) + l4 L_idt (eq. 9), l4 ramped 0.1 -> 0.5 over the schedule.

Targets. "We randomly select a target label z^t with the corresponding facial image I^t for
each training sample". Two readings, ``--target-draw``:

* ``subject`` (default where the data has subject ids, CK+48): I^t is a random training image of
  the SAME subject and z^t its label, so every sample has an I^t and L_rec and L_idt compare
  against it. CK+ subjects show 2-3 of the 7 expressions; across subjects every target occurs.
* ``uniform``: z^t uniform over all classes, I^t a random same-subject image showing z^t where
  one exists (about 47 % of CK+ draws); L_rec is averaged over those samples and L_idt compares
  with the source face otherwise. In our CPU runs this reading taught the generator to copy its
  input (the other 53 % are constrained only by L_cyc, which copying satisfies).

The discriminator's real sample is I^t when it exists, else a random real face with expression
z^t. Without subject ids (FER+) targets are uniform, L_rec is left out and L_idt always uses the
source face. Source and target are augmented with one shared random
transform (stacked as channels for :func:`~ferkit.data.augment.augment_batch`) so L_rec compares
aligned faces.

Schedule: Adam (beta1 0.5, the usual GAN setting; the paper gives none), learning rate decayed
exponentially per epoch from 1e-3 to 1e-5 over ``--schedule-epochs`` (default: the run's planned
epochs, ``ctx.epochs``, so a shorter ``--epochs`` still completes the decay and the l4 ramp; the
paper: "within 500 epochs"), batch 64.

Options beyond the paper (off by default, named in the weights' notes when used):
``--own-target-prob P`` draws the source's own expression as the target with probability P and
then uses the source itself as I^t - the one same-subject image every dataset has, so L_rec also
works on FER+ (an autoencoding signal that teaches the FES stream to keep the person);
``--init SOURCE`` starts G from another FERSNet's matching tensors (the paper pre-trains on
BU-4DFE before CK+; ``fersnet/ferplus`` can play that part); ``--lambda-gan 0`` skips the
discriminator entirely (no D step), for such pre-training.

Ablations: ``--no-mtl`` (L_cls only, FER stream only), ``--no-convflu`` (hard sharing, see
:mod:`ferkit.models.fersnet`), ``--fes-da K`` (the last K epochs of the schedule fine-tune on the
FES-augmented set: every training face synthesised with every expression, its own expression
kept as the real face, so each class has exactly one image per training face; L_cls only; with
``--init`` a trained FERSNet, K may be the whole run: FES-DA as a fine-tuning of its own).

CPU recipe (options beyond the paper, all off by default): ``--input-size 48 --width 32
--upsample resize`` (resize-convolutions against checkerboards), ``--loss-norm mean`` (per-pixel
means, so L_rec / L_cyc / L_idt do not drown L_cls; the lambdas are raised to match) and
``--lambda-cls-fake`` (the synthesised face classified into its target by the recognition stream,
frozen for that term: StarGAN's L_cls^f, which is what makes a short run edit expressions) and
``--synthesis-output masked`` with ``--lambda-mask`` / ``--lambda-mask-tv`` (the decoder paints a mask
and the input face is copied where it is 0, so the person's own pixels survive the edit; see
:mod:`ferkit.models.fersnet`) and ``--lambda-painted`` (L_rec and L_cyc also on the painted face, so the
FES stream keeps modelling whole faces for the recognition stream to read). The
shipped model's card has the full commands: a FER+ stage without subject ids (uniform targets, no
L_rec), then CK+ with ``--init`` (shared classes carried over by name) and same-subject L_rec.

Recognition-stream options (off by default; the shipped CPU recipe uses them): ``--shield-recognition``
lets the FES stream read the FER features through a stop-gradient, so the recognition stream learns
from L_cls alone (the synthesis terms, weighted 10-30x L_cls in the CPU recipe, otherwise also train
it through the FES <- FER gates, while L_cls still trains the FES stream through the FER <- FES
gates); ``--recognition-optimizer sgd`` then trains it as ferkit's classifier recipes train ResNet12
(Nesterov SGD, per-step one-cycle to ``--recognition-lr``, weight decay 5e-4) beside G's Adam, with
``--label-smoothing`` and ``--max-scale`` zoom. Without the shield, SGD diverged (fold 0: 31 % after
4 epochs): raw synthesis gradients are what Adam's per-parameter scaling had been absorbing.

L_idt's identity network is named by ``--identity-weights`` (a shipped name or a checkpoint of a
Light CNN / DeepID; default: what the shipped cards say, see
:func:`~ferkit.evaluation.synthesis.default_identity_weights`: the calibrated Light CNN, as the
paper uses, else the calibrated identity net best on LFW, else any with an identity feature);
faces are converted to that network's own preprocessing, and ``none`` leaves the term out.

Checkpoints hold G ("model"), D ("discriminator") and both Adam states. Every epoch writes a
sample grid (held-out faces x target expressions) to ``<out>/samples/``.
"""
from __future__ import annotations

import argparse
import re
import warnings
from dataclasses import asdict
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.augment import augment_batch
from ferkit.data.classes import canonical
from ferkit.data.dataset import FaceDataset
from ferkit.data.errors import DataError
from ferkit.data.sampling import TargetSampler
from ferkit.errors import UsageError
from ferkit.evaluation.forward import check_tta, class_probabilities, validation_metrics
from ferkit.evaluation.synthesis import (FrozenIdentity, every_expression_set, grid_faces,
                                         training_sample_grid, write_image)
from ferkit.losses.gan import (LOSS_NORMS, FersnetLossWeights, discriminator_loss, generator_adversarial_loss,
                              mask_regularisers, mean_squared_norm)
from ferkit.models.fersnet import OUTPUTS, UPSAMPLING
from ferkit.models.outputs import ModelOutput
from ferkit.models.patchgan import PatchDiscriminator
from ferkit.models.registry import create_model
from ferkit.models.weights import (Preprocessing, get_weights, load_matching, matching_tensors,
                                   transfer_class_slots)
from ferkit.recipes.base import option
from ferkit.recipes.data import CkplusData, FerplusData
from ferkit.recipes.registry import register_recipe
from ferkit.training.precision import memory_format
from ferkit.training.recipe import NetSpec, Recipe, StepResult, TrainContext
from ferkit.training.schedule import exponential_decay, make_schedule, step_schedule, steps_per_epoch
from ferkit.utils.argtypes import (non_negative_float, non_negative_int, positive_float, positive_int, probability,
                                  probability_below_one)

EVAL_BATCH = 256
RECOGNITION_OPTIMIZERS = ("adam", "sgd")
#: SGD settings of ``--recognition-optimizer sgd``: the classifier recipes' (ferkit.recipes.base)
RECOGNITION_SGD_MOMENTUM, RECOGNITION_SGD_WEIGHT_DECAY = 0.9, 5e-4
RECOGNITION_SGD_LR = 0.04


class _FersnetRecipe(Recipe):
    """Everything but the data: model, D, identity net, the eq. 10 step, FES-DA, grids."""

    default_epochs = 500
    default_alignment = "ckplus48"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--arch", choices=["fersnet", "fersnet_light"], default="fersnet_light",
                            help="fersnet: paper size (256 filters, 96x96); fersnet_light: CPU size, 16 filters, 96x96, "
                                 "FES skip connections (default)")
        parser.add_argument("--width", type=positive_int, default=None, help="filters per conv layer (overrides --arch)")
        parser.add_argument("--skips", choices=["on", "off"], default=None,
                            help="FES encoder -> decoder skip connections (default: on for fersnet_light, "
                                 "off for the paper's fersnet, which has none)")
        parser.add_argument("--input-size", type=positive_int, default=None, help="face side, multiple of 16")
        parser.add_argument("--batch-size", type=positive_int, default=64, help="mini-batch (paper: 64)")
        parser.add_argument("--lr", type=positive_float, default=1e-3, help="initial Adam learning rate (paper: 1e-3)")
        parser.add_argument("--lr-end", type=positive_float, default=1e-5, help="final learning rate (paper: 1e-5)")
        parser.add_argument("--recognition-lr-mult", type=positive_float, default=1.0, metavar="M",
                            help="learning rate of the recognition stream (its encoder, the gates into it, the "
                                 "classifier) as a multiple of --lr; the synthesis stream keeps --lr (default 1: "
                                 "one rate, the paper)")
        parser.add_argument("--recognition-optimizer", choices=RECOGNITION_OPTIMIZERS, default="adam",
                            help="adam: the recognition stream trains with G's Adam and schedule (paper); sgd: its "
                                 "own Nesterov SGD (momentum 0.9, weight decay 5e-4) on a per-step one-cycle "
                                 "schedule to --recognition-lr, the classifier recipes' optimiser")
        parser.add_argument("--recognition-lr", type=positive_float, default=None,
                            help=f"peak one-cycle lr of --recognition-optimizer sgd (default {RECOGNITION_SGD_LR}, "
                                 "the CK+ ResNet12 recipe's)")
        parser.add_argument("--shield-recognition", action="store_true",
                            help="losses on the synthesised faces do not train the recognition stream (the FES "
                                 "stream reads its features through a stop-gradient): it learns from L_cls alone, "
                                 "which --recognition-optimizer sgd needs (the synthesis gradients, 10-30x L_cls "
                                 "here, made SGD diverge); paper: off")
        parser.add_argument("--label-smoothing", type=probability_below_one, default=0.0,
                            help="label smoothing of L_cls on real faces (default 0: the paper's cross-entropy)")
        parser.add_argument("--max-scale", type=probability_below_one, default=0.0,
                            help="random zoom of the training faces, 0.1 = 0.9-1.1 (default 0: the paper's "
                                 "crop, mirror and rotation only)")
        parser.add_argument("--schedule-epochs", type=positive_int, default=None,
                            help="epochs the lr decay and the l4 ramp span (default: the run's --epochs, "
                                 "paper's 500)")
        parser.add_argument("--lambda-gan", type=non_negative_float, default=0.3, help="l1 (paper 0.3)")
        parser.add_argument("--lambda-rec", type=non_negative_float, default=1.0, help="l2 (paper 1)")
        parser.add_argument("--lambda-cyc", type=non_negative_float, default=0.5, help="l3 (paper 0.5)")
        parser.add_argument("--lambda-idt-start", type=non_negative_float, default=0.1, help="l4 at the start (paper 0.1)")
        parser.add_argument("--lambda-idt-end", type=non_negative_float, default=0.5, help="l4 at the end (paper 0.5)")
        cls._add_synthesis_arguments(parser)
        parser.add_argument("--target-draw", choices=["subject", "uniform"], default=None,
                            help="subject: I^t = a random image of the same subject, z^t its label (default "
                                 "with subject ids); uniform: z^t uniform, L_rec only where the subject has it")
        parser.add_argument("--own-target-prob", type=probability, default=0.0, metavar="P",
                            help="probability of drawing the source's own expression as the target, the "
                                 "source then serving as I^t for L_rec (default 0: uniform targets, paper)")
        parser.add_argument("--init", default=None, metavar="SOURCE",
                            help="start G from this FERSNet checkpoint / card / shipped name (tensors of "
                                 "matching name and shape; class-count-dependent layers stay random)")
        parser.add_argument("--identity-weights", default=None,
                            help="identity net for L_idt: shipped name or checkpoint (Light CNN / DeepID), or none; "
                                 "default, read from the shipped cards: the calibrated Light CNN (the paper's), else "
                                 "the calibrated identity net best on LFW, else any with an identity feature")
        parser.add_argument("--no-mtl", action="store_true", help="ablation: FERSNet w/o MTL (FER stream only)")
        parser.add_argument("--no-convflu", action="store_true", help="ablation: w/o ConvFLU (hard sharing)")
        parser.add_argument("--fes-da", type=non_negative_int, default=0, metavar="K",
                            help="FES data augmentation: fine-tune the last K epochs on the balanced synthetic set")
        parser.add_argument("--augment", choices=["on", "off"], default="on",
                            help="random flip, shift and rotation (paper: crop, mirror, rotation up to 15 deg)")
        parser.add_argument("--channels-last", choices=["auto", "on", "off"], default="auto",
                            help="channels_last memory format (auto: on for CPU, where it is faster)")
        parser.add_argument("--max-steps-per-epoch", type=positive_int, default=None,
                            help="stop each epoch after this many steps (smoke runs)")
        parser.add_argument("--disc-width", type=positive_int, default=None, help="PatchGAN base width (paper 64; light 32)")
        parser.add_argument("--tta", choices=["none", "flip"], default="none",
                            help="test-time augmentation of the validation, recorded in the card as the model's "
                                 "default (flip: mean of the face's and its mirror's probabilities; paper: none)")
        cls._add_data_arguments(parser)

    @staticmethod
    def _add_synthesis_arguments(parser: argparse.ArgumentParser) -> None:
        """The options beyond the paper that shape the synthesis (all off by default): L_cls^fake, the
        loss normalisation, the upsampling and the masked output."""
        parser.add_argument("--lambda-cls-fake", type=non_negative_float, default=0.0,
                            help="weight of classifying each synthesised face as its target expression by the "
                                 "recognition stream, frozen for this term (StarGAN's L_cls^f; not in the paper: 0)")
        parser.add_argument("--loss-norm", choices=LOSS_NORMS, default="sum",
                            help="L_rec / L_cyc / L_idt per sample: sum of squared differences (the equations, "
                                 "default) or their mean (per-pixel MSE; scale the lambdas up to match)")
        parser.add_argument("--synthesis-output", choices=OUTPUTS, default="direct",
                            help="direct: the decoder paints the whole face (paper); masked: it also paints a mask "
                                 "and the input face is kept where the mask is 0 (GANimation's attention mask)")
        for flag, weighs in (("--lambda-mask", "the mask's mean (paint only what must change)"),
                             ("--lambda-mask-tv", "the mask's total variation (a smooth mask)"),
                             ("--lambda-painted", "L_rec + L_cyc on the painted face before blending (so the FES "
                                                  "stream still rebuilds whole faces)")):
            parser.add_argument(flag, type=non_negative_float, default=0.0,
                                help=f"masked output: weight of {weighs}; default 0")
        parser.add_argument("--upsample", choices=UPSAMPLING, default="transposed",
                            help="decoder upsampling: 2x2 stride-2 transposed conv (paper) or nearest x2 + 3x3 conv "
                                 "(no checkerboard artefacts)")

    # ---- setup -----------------------------------------------------------------------------
    def _model_cfg(self, num_classes: int) -> dict[str, Any]:
        o = self.options
        arch = option(o, "arch", "fersnet_light")
        light = arch == "fersnet_light"
        return {"num_classes": num_classes,
                "input_size": int(option(o, "input_size", 96)),
                "width": int(option(o, "width", 16 if light else 256)),
                "fc_dim": 128 if light else 512,
                "skips": option(o, "skips", "on" if light else "off") == "on",
                "upsample": option(o, "upsample", "transposed"),
                "output": option(o, "synthesis_output", "direct"),
                "mtl": not o.get("no_mtl", False), "convflu": not o.get("no_convflu", False)}

    def setup(self, ctx: TrainContext) -> None:
        o = self.options
        self.device = ctx.device
        arch = option(o, "arch", "fersnet_light")
        probe_cfg = self._model_cfg(1)
        size = probe_cfg["input_size"]
        train, val = self._load_split(size)
        if len(train) == 0:
            raise DataError(self.data_dir, "no training images after the split")
        self.train_set, self.val_set, self.classes = train, val, list(train.classes)
        e = len(self.classes)
        self.model_cfg = self._model_cfg(e)
        self.arch = arch
        self.preprocessing = Preprocessing(input_size=size, grayscale=True, mean=0.5, std=0.5,
                                           alignment=self.default_alignment)
        self.images = train.images.to(self.device)
        self.labels = train.labels.to(self.device)
        self.sampler = TargetSampler(train.labels, train.subjects, e)
        self.model = create_model(arch, **self.model_cfg).to(self.device)
        self.memory_format = memory_format(option(o, "channels_last", "auto"), self.device)
        self.model.to(memory_format=self.memory_format)
        self.g = ctx.wrap(self.model)
        self.mtl = self.model.mtl
        self.weights = self._loss_weights()
        self.loss_norm = option(o, "loss_norm", "sum")
        if self.weights.cls_fake and not self.mtl:
            raise UsageError("--lambda-cls-fake needs the FES stream; it cannot be combined with --no-mtl")
        # the run's planned epochs (ctx.epochs, from --epochs or the paper's 500) unless given
        self.schedule_epochs = int(option(o, "schedule_epochs", getattr(ctx, "epochs", None) or self.default_epochs))
        self.target_draw = option(o, "target_draw", "subject" if train.subjects is not None else "uniform")
        if self.target_draw not in ("subject", "uniform"):
            raise UsageError(f"--target-draw must be subject or uniform, got {self.target_draw!r}")
        if self.target_draw == "subject" and train.subjects is None:
            raise UsageError("--target-draw subject needs subject ids; this dataset has none (use uniform)")
        self.own_target_prob = float(option(o, "own_target_prob", 0.0))
        if not 0.0 <= self.own_target_prob <= 1.0:
            raise UsageError(f"--own-target-prob must lie in [0, 1], got {self.own_target_prob}")
        self.fes_da = int(option(o, "fes_da", 0))
        if self.fes_da and not self.mtl:
            raise UsageError("--fes-da needs the FES stream; it cannot be combined with --no-mtl")
        # every epoch FES-DA is a fine-tuning of a trained FERSNet (--init); from scratch the
        # synthesis stream must train first
        if self.fes_da > self.schedule_epochs or (self.fes_da == self.schedule_epochs and not o.get("init")):
            raise UsageError(f"--fes-da {self.fes_da} must be smaller than --schedule-epochs {self.schedule_epochs} "
                             "(or equal to it when --init names a trained FERSNet to fine-tune)")
        lr, lr_end = float(option(o, "lr", 1e-3)), float(option(o, "lr_end", 1e-5))
        self._read_batch_options(ctx)
        self._make_generator_optimizers(lr, lr_end)
        self.discriminator: Optional[nn.Module] = None
        self.identity: Optional[FrozenIdentity] = None
        if self.mtl:
            dwidth = int(option(o, "disc_width", 32 if arch == "fersnet_light" else 64))
            self.discriminator = PatchDiscriminator(e, in_channels=1, width=dwidth).to(self.device)
            self.discriminator.to(memory_format=self.memory_format)
            self.d = ctx.wrap(self.discriminator)
            self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=(0.5, 0.999))
            self.sched_d = exponential_decay(self.opt_d, lr, lr_end, self.schedule_epochs)
            self.identity = FrozenIdentity.from_option(o.get("identity_weights"), device=self.device)
        init = o.get("init")
        if init:
            ctx.log(self._load_init(str(init)))
        self.augment = option(o, "augment", "on") == "on"
        self.tta = check_tta(option(o, "tta", "none"))
        self.da_images: Optional[torch.Tensor] = None
        self.da_labels: Optional[torch.Tensor] = None
        self.grid_faces = grid_faces(val if val is not None and len(val) else train)
        ctx.log(f"{self.name}: {arch} {self.model_cfg}; {self._data_desc}; identity net for L_idt: "
                f"{self.identity.name if self.identity else 'none'}; lr {lr} -> {lr_end} over "
                f"{self.schedule_epochs} epochs" + (f"; FES-DA in the last {self.fes_da}" if self.fes_da else "")
                + "".join(f"; {x}" for x in self._recognition_notes()))

    def _loss_weights(self) -> FersnetLossWeights:
        """The lambdas of eq. 10 and of the options beyond it, checked against the model they train."""
        o = self.options
        weights = FersnetLossWeights(gan=float(option(o, "lambda_gan", 0.3)), rec=float(option(o, "lambda_rec", 1.0)),
                                     cyc=float(option(o, "lambda_cyc", 0.5)),
                                     idt_start=float(option(o, "lambda_idt_start", 0.1)),
                                     idt_end=float(option(o, "lambda_idt_end", 0.5)),
                                     cls_fake=float(option(o, "lambda_cls_fake", 0.0)),
                                     mask=float(option(o, "lambda_mask", 0.0)),
                                     mask_tv=float(option(o, "lambda_mask_tv", 0.0)),
                                     painted=float(option(o, "lambda_painted", 0.0)))
        if (weights.mask or weights.mask_tv or weights.painted) and self.model.output != "masked":
            raise UsageError("--lambda-mask / --lambda-mask-tv / --lambda-painted regularise the masked output: add "
                             "--synthesis-output masked (the FES stream is needed, so not with --no-mtl)")
        return weights

    def _read_batch_options(self, ctx: TrainContext) -> None:
        """Batch size, steps per epoch, label smoothing and zoom: what the optimisers' step count and
        every training batch need."""
        o = self.options
        self.label_smoothing = float(option(o, "label_smoothing", 0.0))
        self.max_scale = float(option(o, "max_scale", 0.0))
        if not 0.0 <= self.max_scale < 1.0:
            raise UsageError(f"--max-scale is a zoom range in [0, 1) (0.1 = 0.9-1.1), got {self.max_scale}")
        self.world_size = ctx.world_size
        self.batch_size = int(option(o, "batch_size", 64))
        self.max_steps = o.get("max_steps_per_epoch")  # --max-steps-per-epoch (smoke runs); None: every batch

    def _make_generator_optimizers(self, lr: float, lr_end: float) -> None:
        """G's Adam with its per-epoch decay and, with ``--recognition-optimizer sgd``, the recognition
        stream's own SGD on a per-step one-cycle (the stream's parameters then leave Adam)."""
        o = self.options
        self.recognition_lr_mult = float(option(o, "recognition_lr_mult", 1.0))
        if self.recognition_lr_mult <= 0:
            raise UsageError(f"--recognition-lr-mult must be positive, got {self.recognition_lr_mult}")
        self.recognition_optimizer = option(o, "recognition_optimizer", "adam")
        if self.recognition_optimizer not in RECOGNITION_OPTIMIZERS:
            raise UsageError(f"--recognition-optimizer must be one of {', '.join(RECOGNITION_OPTIMIZERS)}, "
                             f"got {self.recognition_optimizer!r}")
        if self.recognition_optimizer == "sgd" and self.recognition_lr_mult != 1.0:
            raise UsageError("--recognition-lr-mult scales the recognition stream's Adam rate; with "
                             "--recognition-optimizer sgd set its rate with --recognition-lr instead")
        if self.recognition_optimizer == "adam" and o.get("recognition_lr") is not None:
            raise UsageError("--recognition-lr is the peak rate of --recognition-optimizer sgd; with Adam (the "
                             "default) the recognition stream's rate is --lr x --recognition-lr-mult")
        self.shield_recognition = bool(o.get("shield_recognition", False))
        if self.shield_recognition and not self.model.convflu:
            raise UsageError("--shield-recognition needs the two ConvFLU streams; it cannot be combined with "
                             "--no-mtl or --no-convflu")
        groups = self._generator_groups(lr)
        self.opt_rec: Optional[torch.optim.Optimizer] = None
        self.sched_rec: Optional[torch.optim.lr_scheduler.LRScheduler] = None
        self.recognition_steps: Optional[int] = None  # the one-cycle's length (SGD only)
        if self.recognition_optimizer == "sgd":
            recognition = groups.pop(0)
            self.recognition_lr = float(option(o, "recognition_lr", RECOGNITION_SGD_LR))
            if self.recognition_lr <= 0:
                raise UsageError(f"--recognition-lr must be positive, got {self.recognition_lr}")
            self.opt_rec = torch.optim.SGD(recognition["params"], lr=self.recognition_lr,
                                           momentum=RECOGNITION_SGD_MOMENTUM, nesterov=True,
                                           weight_decay=RECOGNITION_SGD_WEIGHT_DECAY)
            # FES-DA epochs run over the synthetic set: one face per training face and class
            self.recognition_steps = (self._steps_per_epoch() * (self.schedule_epochs - self.fes_da)
                                      + self._steps_per_epoch(len(self.images) * len(self.classes)) * self.fes_da)
            self.sched_rec = make_schedule(self.opt_rec, "onecycle", self.recognition_steps, 0)
        # w/o MTL with the stream on SGD, nothing is left for Adam
        self.opt_g = torch.optim.Adam(groups, lr=lr, betas=(0.5, 0.999)) if groups else None
        self.sched_g = exponential_decay(self.opt_g, lr, lr_end, self.schedule_epochs) if groups else None

    def _recognition_notes(self) -> list[str]:
        """How the recognition stream's training departs from the paper (for the log and the card)."""
        notes = ["synthesis losses kept out of the recognition stream (stop-gradient)"] if self.shield_recognition else []
        if self.opt_rec is not None:
            notes.append(f"recognition stream on Nesterov SGD, one-cycle to {self.recognition_lr} over "
                         f"{self.recognition_steps} steps (weight decay {RECOGNITION_SGD_WEIGHT_DECAY})")
        if self.label_smoothing:
            notes.append(f"label smoothing {self.label_smoothing}")
        if self.max_scale:
            notes.append(f"random zoom +-{self.max_scale}")
        return notes

    #: parameter-name prefixes of the recognition stream: its encoder, the ConvFLU gates writing into
    #: it (FER <- FES) and the classifier
    RECOGNITION_PARTS = ("fer_blocks.", "flu_fer.", "classifier.")

    def _generator_groups(self, lr: float) -> list[dict[str, Any]]:
        """G's Adam parameter groups: the recognition stream at ``lr * --recognition-lr-mult``, the rest at ``lr``.

        Why: the FER stream alone (w/o MTL) learned CK+ better at 5x the GAN's rate (92.59 % against
        90.84 % over 10 folds at 1e-3 vs 2e-4), a rate the synthesis stream and its adversary are
        not tuned for; one multiple lets both run at their own pace under the one schedule. Measured
        inside FERSNet (CPU recipe, x5, folds 0 and 9) it did not help (93.94 -> 93.94 %,
        93.75 -> 87.50 %), so the default stays 1; the card's "next run" section has the numbers.
        """
        recognition, synthesis = [], []
        for name, param in self.model.named_parameters():
            (recognition if name.startswith(self.RECOGNITION_PARTS) else synthesis).append(param)
        groups = [{"params": recognition, "lr": lr * self.recognition_lr_mult, "name": "recognition"}]
        return groups + ([{"params": synthesis, "lr": lr, "name": "synthesis"}] if synthesis else [])

    def _load_init(self, source: str) -> str:
        """Copy the tensors of ``source`` whose name and shape match this model; say what was kept.

        Classes the source shares with this data set (by name: FER+'s "happiness" is CK+'s "happy")
        also bring their classifier rows, label-transformer columns and, when the source is a
        training checkpoint, the discriminator's label planes: a FER+ pre-training then starts the
        CK+ stage with every expression it already knows how to recognise and to synthesise.
        """
        source_weights = get_weights(source)
        source_state = source_weights.state_dict()
        taken, skipped = load_matching(self.model, source, "fersnet", "FERSNet", loaded=(source_weights, source_state))
        own = [canonical(c) for c in self.classes]
        theirs = [canonical(c) for c in source_weights.classes]
        pairs = [(theirs.index(c), i) for i, c in enumerate(own) if c in theirs]
        mapped = transfer_class_slots(self.model, source_state, pairs, len(theirs), len(own))
        note = ""
        if self.discriminator is not None:
            # a training checkpoint also holds the discriminator (read once more: Weights keeps the model only)
            blob = torch.load(source, map_location="cpu", weights_only=False) if str(source).endswith(".pt") else None
            d_state = blob.get("modules", {}).get("discriminator") if isinstance(blob, dict) else None
            if d_state is not None:
                take = matching_tensors(self.discriminator, d_state)
                self.discriminator.load_state_dict(take, strict=False)
                d_mapped = transfer_class_slots(self.discriminator, d_state, pairs, len(theirs), len(own))
                note = f"; discriminator: {len(take) + len(d_mapped)}/{len(self.discriminator.state_dict())} tensors"
        skipped = [k for k in skipped if k not in mapped]
        return (f"{self.name}: initialised {taken + len(mapped)}/{len(self.model.state_dict())} tensors from "
                f"{source} ({len(pairs)} shared classes){note}" + (f"; random: {', '.join(skipped)}" if skipped else ""))

    # ---- Recipe interface -------------------------------------------------------------------
    # the discriminator and its optimiser exist only with the FES stream (not with --no-mtl)
    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model, **({"discriminator": self.discriminator} if self.discriminator is not None else {})}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        optimizers = {"generator": self.opt_g, "recognition": self.opt_rec,
                      "discriminator": self.opt_d if self.discriminator is not None else None}
        return {k: v for k, v in optimizers.items() if v is not None}

    def _epoch_schedulers(self) -> dict[str, Any]:
        """The schedules stepped once per epoch (the paper's exponential decay of G's and D's Adam)."""
        schedulers = {"generator": self.sched_g,
                      "discriminator": self.sched_d if self.discriminator is not None else None}
        return {k: v for k, v in schedulers.items() if v is not None}

    def schedulers(self) -> dict[str, Any]:
        # the recognition stream's one-cycle (--recognition-optimizer sgd) is stepped per step
        return {**self._epoch_schedulers(), **({"recognition": self.sched_rec} if self.sched_rec is not None else {})}

    def _g_optimizers(self) -> list[torch.optim.Optimizer]:
        """What one G step steps: G's Adam and, with --recognition-optimizer sgd, the stream's SGD."""
        return [opt for opt in (self.opt_g, self.opt_rec) if opt is not None]

    def _step_g(self, ctx: TrainContext, loss: torch.Tensor) -> None:
        ctx.step(loss, self._g_optimizers())
        if self.sched_rec is not None:
            step_schedule(self.sched_rec)

    def _steps_per_epoch(self, n_items: Optional[int] = None) -> int:
        """Optimisation steps of one epoch over ``n_items`` faces (default: the training set): full
        batches, capped by --max-steps-per-epoch."""
        steps = steps_per_epoch(len(self.images) if n_items is None else n_items, self.batch_size, self.world_size)
        return min(steps, int(self.max_steps)) if self.max_steps else steps

    def extra_state(self) -> dict[str, Any]:
        return {"recognition_optimizer": self.recognition_optimizer, "recognition_steps": self.recognition_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Refuse a resume whose recognition optimiser or one-cycle length differs from the checkpoint's
        (torch's OneCycleLR keeps the total it was made with)."""
        saved = state.get("recognition_optimizer", "adam")
        if saved != self.recognition_optimizer:
            raise UsageError(f"the checkpoint's recognition stream trained with --recognition-optimizer {saved}, this "
                             f"run asks for {self.recognition_optimizer}; resume with the same option")
        steps = state.get("recognition_steps")
        if steps is not None and steps != self.recognition_steps:
            raise UsageError(f"the checkpoint's one-cycle schedule spans {steps} steps, this run's would span "
                             f"{self.recognition_steps}: resume with the same --epochs / --schedule-epochs / "
                             "--batch-size, or start a new run from it with --init")

    def _in_fes_da(self, epoch: int) -> bool:
        return self.fes_da > 0 and epoch >= self.schedule_epochs - self.fes_da

    def _prepare(self, x_u8: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] (C may stack several aligned faces) -> augmented, normalised floats."""
        x = x_u8.float().div_(255.0)
        if self.augment:
            # shift/rotation ranges of the paper's 110->96 random crop and +-15 degree rotations
            # (global RNG: the engine seeds it per epoch, so resumed runs draw the same transforms)
            x = augment_batch(x, flip=True, max_shift=0.07, max_rotation_deg=15.0, max_scale=self.max_scale)
        return self.preprocessing.normalize(x).contiguous(memory_format=self.memory_format)

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        self.model.train()
        if self._in_fes_da(epoch):
            yield from self._train_fes_da(ctx, epoch)
            return
        gen = torch.Generator().manual_seed(ctx.seed * 1000003 + epoch)
        l_idt = self.weights.idt(epoch, self.schedule_epochs)
        for idx in islice(ctx.batches(len(self.images), self.batch_size, epoch), self.max_steps):
            y = self.labels[idx]
            if not self.mtl:
                yield self._classifier_step(ctx, self.images[idx], y)
                continue
            drawn = self.sampler.draw(idx.cpu(), self.target_draw, self.own_target_prob, gen)
            target, pair, real_idx = (t.to(self.device) for t in drawn)
            has_pair = pair >= 0
            both = self._prepare(torch.cat([self.images[idx], self.images[real_idx]], dim=1))
            x, x_t = both[:, :1], both[:, 1:]

            # D step (eq. 6): real target faces vs synthesised ones, both with the target label
            # (lambda_GAN 0: no D step at all, e.g. for pre-training)
            use_gan = self.weights.gan > 0
            with ctx.autocast():
                out = self.g(x, target=target, shield_recognition=self.shield_recognition)
                fake = out.synthesis
                loss_d = (discriminator_loss(self.d(x_t, target).float(), self.d(fake.detach(), target).float())
                          if use_gan else torch.zeros((), device=self.device))
            if use_gan:
                ctx.step(loss_d, self.opt_d)

            # G step (eq. 10); D's weights are not trained here
            self.discriminator.requires_grad_(False)
            with ctx.autocast():
                loss_cls = F.cross_entropy(out.logits.float(), y, label_smoothing=self.label_smoothing)
                loss_gan = (generator_adversarial_loss(self.d(fake, target).float()) if use_gan
                            else torch.zeros((), device=self.device))
                loss_rec = mean_squared_norm(fake, x_t, has_pair, norm=self.loss_norm)
                cycle = self.g(fake, target=y, shield_recognition=self.shield_recognition)
                loss_cyc = mean_squared_norm(cycle.synthesis, x, norm=self.loss_norm)
                loss_mask = self._mask_loss(out.synthesis_mask, cycle.synthesis_mask)
                loss_painted = self._painted_loss(out, cycle, x, x_t, has_pair)
                if self.identity is not None:
                    # eq. 9 compares with I^t; without one, the source face shows the same person
                    reference = torch.where(has_pair.view(-1, 1, 1, 1), x_t, x)
                    loss_idt = self.identity.distance(fake, reference, self.preprocessing, norm=self.loss_norm)
                else:
                    loss_idt = torch.zeros((), device=self.device)
                loss_cls_fake = (F.cross_entropy(self._critic_logits(fake).float(), target)
                                 if self.weights.cls_fake > 0 else torch.zeros((), device=self.device))
                loss = (loss_cls + self.weights.gan * loss_gan + self.weights.rec * loss_rec
                        + self.weights.cyc * loss_cyc + l_idt * loss_idt + self.weights.cls_fake * loss_cls_fake
                        + loss_mask + loss_painted)
            self._step_g(ctx, loss)
            self.discriminator.requires_grad_(True)
            correct = (out.logits.detach().argmax(1) == y).sum()
            yield StepResult(loss.detach(), correct, len(idx), {
                "L_cls": loss_cls.detach(), "L_GAN": loss_gan.detach(), "L_rec": loss_rec.detach(),
                "L_cyc": loss_cyc.detach(), "L_idt": loss_idt.detach(), "L_D": loss_d.detach(),
                "L_cls_fake": loss_cls_fake.detach(), "L_mask": loss_mask.detach(),
                "L_painted": loss_painted.detach(),
                **({"mask_mean": out.synthesis_mask.detach().float().mean()} if out.synthesis_mask is not None else {}),
                **self._recognition_lr_extra(),
                "lambda_idt": l_idt, "rec_pairs": has_pair.float().mean()})

    def _mask_loss(self, *masks: Optional[torch.Tensor]) -> torch.Tensor:
        """The masked output's weighted regularisers, over the synthesis and its cycle (as GANimation
        regularises both); an exact zero for the direct output."""
        total = torch.zeros((), device=self.device)
        for mask in masks:
            if mask is not None and (self.weights.mask or self.weights.mask_tv):
                mean, tv = mask_regularisers(mask)
                total = total + self.weights.mask * mean + self.weights.mask_tv * tv
        return total

    def _painted_loss(self, out: ModelOutput, cycle: ModelOutput, x: torch.Tensor, x_t: torch.Tensor,
                      has_pair: torch.Tensor) -> torch.Tensor:
        """lambda_painted (lambda_rec L_rec + lambda_cyc L_cyc) on the painted images before the mask
        blends them: weighted, as :meth:`_mask_loss` is; an exact zero without the option or the masked output.

        Why: with the masked output the blended face can satisfy L_rec and L_cyc by copying the input,
        so the FES stream no longer has to model the whole face, and that whole-face model is what the
        FER stream reads through the FER <- FES gates (six CK+ folds without this term: recognition
        fell to the level of the FER stream alone, 94.0 against 95.6 %)."""
        if not self.weights.painted or out.synthesis_mask is None:
            return torch.zeros((), device=self.device)
        return self.weights.painted * (
            self.weights.rec * mean_squared_norm(out.synthesis_painted, x_t, has_pair, norm=self.loss_norm)
            + self.weights.cyc * mean_squared_norm(cycle.synthesis_painted, x, norm=self.loss_norm))

    def _critic_logits(self, fake: torch.Tensor) -> torch.Tensor:
        """The recognition stream's logits for synthesised faces, with its weights frozen for this term.

        Why frozen: if the classifier also learned from L_cls_fake, generator and classifier could
        agree on a faint code that satisfies both and shows no expression (a judge trained on real
        faces would then see none). So the weights are detached (gradients reach the synthesised
        pixels only) and BN uses its running statistics of real faces (eval mode), so neither the
        batch of fakes nor this pass changes what the recognition stream learns from real faces.
        """
        was_training = self.model.training
        self.model.eval()
        try:
            frozen = {k: v.detach() for k, v in self.model.named_parameters()}
            return torch.func.functional_call(self.model, frozen, (fake,), strict=False).logits
        finally:
            self.model.train(was_training)

    def _classifier_step(self, ctx: TrainContext, x_u8: torch.Tensor, y: torch.Tensor) -> StepResult:
        """One step of L_cls alone (the w/o-MTL ablation and the FES-DA fine-tuning)."""
        x = self._prepare(x_u8)
        with ctx.autocast():
            out = self.g(x)
            loss = F.cross_entropy(out.logits.float(), y, label_smoothing=self.label_smoothing)
        self._step_g(ctx, loss)
        return StepResult(loss.detach(), (out.logits.detach().argmax(1) == y).sum(), len(y),
                          {"L_cls": loss.detach(), **self._recognition_lr_extra()})

    def _recognition_lr_extra(self) -> dict[str, float]:
        """The recognition stream's own rate for the curves (``--recognition-optimizer sgd``): the
        logged ``lr`` is G's Adam rate, the first optimiser's."""
        return {"lr_recognition": float(self.opt_rec.param_groups[0]["lr"])} if self.opt_rec is not None else {}

    # ---- FES data augmentation (Table VI, "FERSNet w/ FES-DA") ---------------------------------
    def _train_fes_da(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        if self.da_images is None:
            self.da_images, self.da_labels = every_expression_set(self.model, self.images, self.labels,
                                                                  self.preprocessing, EVAL_BATCH)
            counts = torch.bincount(self.da_labels.cpu(), minlength=len(self.classes)).tolist()
            ctx.log(f"FES-DA: fine-tuning on {len(self.da_images)} faces ({counts} per class)")
        for idx in islice(ctx.batches(len(self.da_images), self.batch_size, epoch), self.max_steps):
            yield self._classifier_step(ctx, self.da_images[idx], self.da_labels[idx])

    # ---- evaluation and artefacts ---------------------------------------------------------------
    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        if self.val_set is None or len(self.val_set) == 0:
            return {}
        to_input = lambda x: self.preprocessing.normalize(x.to(self.device))  # noqa: E731
        return validation_metrics(lambda x: class_probabilities(self.model, x, to_input, batch_size=EVAL_BATCH),
                                  self.val_set.images, self.val_set.labels, self.tta)

    def end_epoch(self, ctx: TrainContext, epoch: int) -> None:
        with warnings.catch_warnings():
            # FES-DA epochs never step D's optimiser, yet its schedule keeps time with the run's
            warnings.filterwarnings("ignore", message=re.escape("Detected call of `lr_scheduler.step()` before"))
            for scheduler in self._epoch_schedulers().values():
                scheduler.step()
        if ctx.rank != 0 or not self.mtl:
            return
        grid = training_sample_grid(self.model, self.grid_faces.to(self.device), self.preprocessing, self.classes)
        folder = Path(ctx.out_dir) / "samples"
        write_image(folder / f"epoch_{epoch + 1:04d}.png", grid)
        write_image(folder / "latest.png", grid)

    def weights_meta(self) -> dict[str, Any]:
        ablation = [n for n, on in (("w/o MTL", not self.model_cfg["mtl"]),
                                    ("w/o ConvFLU", not self.model_cfg["convflu"]),
                                    (f"FES-DA ({self.fes_da} epochs)", self.fes_da > 0)) if on]
        extras = [f"own-target probability {self.own_target_prob}"] if self.own_target_prob > 0 else []
        extras += self._recognition_notes()
        if self.weights.cls_fake > 0:
            extras.append(f"L_cls on synthesised faces x {self.weights.cls_fake} (frozen recognition stream)")
        if self.model.output == "masked":
            extras.append(f"masked synthesis output (mask mean x {self.weights.mask}, total variation x "
                          f"{self.weights.mask_tv}, L_rec + L_cyc on the painted image x {self.weights.painted})")
        if self.loss_norm != "sum":
            extras.append(f"L_rec/L_cyc/L_idt as per-element means (lambdas: rec {self.weights.rec}, "
                          f"cyc {self.weights.cyc}, idt {self.weights.idt_start}->{self.weights.idt_end}, "
                          f"gan {self.weights.gan})")
        if self.model_cfg["mtl"]:
            extras.append(f"targets drawn: {self.target_draw}")
        if self.weights.gan == 0 and self.model_cfg["mtl"]:
            extras.append("no adversarial term (lambda_GAN 0)")
        if self.options.get("init"):
            extras.append(f"initialised from {self.options['init']}")
        return {"name": "fersnet", "architecture": self.arch, "classes": list(self.classes),
                "preprocessing": asdict(self.preprocessing), "model_cfg": dict(self.model_cfg), "tta": self.tta,
                "data": self._data_desc, "recipe": self.name, "split": dict(getattr(self, "_split_info", {})),
                "heldout_identities": list(getattr(self, "heldout_subjects", [])),
                "notes": "FERSNet" + (f" ({', '.join(ablation)})" if ablation else "")
                         + f"; identity net for L_idt: {self.identity.name if self.identity else 'none'}"
                         + "".join(f"; {x}" for x in extras)}


@register_recipe
class FersnetCkplusRecipe(CkplusData, _FersnetRecipe):
    """CK+48, 7 classes, subject-independent folds; L_rec uses same-subject target faces."""

    name = "fersnet/ckplus"
    network = NetSpec("fersnet_light", {"num_classes": 7}, 0, 64, synthesis=True)
    description = "FERSNet (eq. 10) on CK+48, 7 classes, subject-independent folds, with L_rec"
    default_alignment = "ckplus48"


@register_recipe
class FersnetFerplusRecipe(FerplusData, _FersnetRecipe):
    """FER+ (majority vote, 8 classes): no subject ids, so L_rec is left out (but see --own-target-prob)."""

    name = "fersnet/ferplus"
    network = NetSpec("fersnet_light", {"num_classes": 8}, 0, 64, synthesis=True)
    description = "FERSNet (eq. 10 without L_rec: no subject ids) on FER+ majority vote, 8 classes"
    default_alignment = "fer2013"
    supports_vote_targets = False

    def _load_split(self, size: Optional[int] = None) -> tuple[FaceDataset, Optional[FaceDataset]]:
        train, val = super()._load_split(size)
        # FER+ has no subject ids: L_rec is left out (model-details.md) except for own-expression
        # targets, whose I^t is the source itself (--own-target-prob)
        train.subjects = None
        return train, val
