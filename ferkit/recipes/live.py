"""``live/ferplus-distill``: the ``ferkit-live`` student, distilled from a FER+ teacher (beyond the papers).

Knowledge distillation (Hinton et al. 2015): the student learns from the teacher's softened class
probabilities as well as from the data's own targets::

    loss = (1 - alpha) * CE(student, votes) + alpha * T^2 * KL(softmax(t / T) || softmax(s / T))

The teacher's logits are computed once, before training, on the clean training images (the mean
of each image's and its mirror's logits, so they do not depend on the flip the student may get),
in the run's precision; the student then trains with the usual augmentation against them. Why
offline: an online teacher forward would cost more than the student's whole training step, and the
affine augmentation keeps the face's expression, so the clean image's soft label still describes it.

Defaults: ``--teacher resnet18-ferplus`` (the best shipped FER+ model of the same input and
normalisation), ``--alpha 0.7``, ``--temperature 2``, no TTA (the live model exists to be fast).
"""
from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as F

from ferkit.errors import UsageError
from ferkit.evaluation.forward import batched_forward
from ferkit.models.weights import load_weights, to_model_input
from ferkit.recipes.base import EVAL_BATCH, ClassifierRecipe, option
from ferkit.recipes.data import FerplusData
from ferkit.recipes.registry import register_recipe
from ferkit.training.recipe import NetSpec, TrainContext
from ferkit.utils.argtypes import positive_float


@register_recipe
class LiveDistillRecipe(FerplusData, ClassifierRecipe):
    name = "live/ferplus-distill"
    network = NetSpec("resnet_live", {"num_classes": 8}, 48, 128, channels_last=True)
    description = "ferkit-live: small ResNet (resnet_live) distilled from a FER+ teacher's soft outputs"
    default_epochs = 40
    default_lr = 0.1

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--teacher", default="resnet18-ferplus",
                            help="teacher weights (shipped name, card or checkpoint) on the same classes")
        parser.add_argument("--alpha", type=float, default=0.7, help="weight of the distillation term (0..1)")
        parser.add_argument("--temperature", type=positive_float, default=2.0, help="softmax temperature T of distillation")
        parser.set_defaults(tta="none")

    def setup(self, ctx: TrainContext) -> None:
        if self.options.get("tta") is None:  # no TTA unless asked: per-face speed is this model's point
            self.options["tta"] = "none"
        super().setup(ctx)
        self.alpha = float(option(self.options, "alpha", 0.7))
        self.temperature = float(option(self.options, "temperature", 2.0))
        if not 0.0 <= self.alpha <= 1.0 or self.temperature <= 0:
            raise UsageError(f"--alpha must be in [0, 1] and --temperature > 0; got {self.alpha}, {self.temperature}")
        teacher_name = str(option(self.options, "teacher", "resnet18-ferplus"))
        self.teacher_logits = self._teacher_logits(teacher_name, ctx)
        self.settings.update({"teacher": teacher_name, "alpha": self.alpha, "temperature": self.temperature})
        self._data_desc += f"; distilled from {teacher_name} (alpha {self.alpha}, T {self.temperature})"
        ctx.log(f"{self.name}: teacher {teacher_name}, training accuracy against the training targets "
                f"{float((self.teacher_logits.argmax(1) == self.y_train).float().mean()):.4f}")

    @torch.no_grad()
    def _teacher_logits(self, teacher_name: str, ctx: TrainContext) -> torch.Tensor:
        teacher = load_weights(teacher_name, device=ctx.device)
        if list(teacher.weights.classes) != self.classes:
            raise UsageError(f"--teacher {teacher_name} has classes {teacher.weights.classes}, the student "
                             f"{self.classes}: pick a teacher trained on the same data")
        prep = teacher.weights.preprocessing
        model = teacher.model.eval()
        kw = dict(batch_size=EVAL_BATCH, autocast=ctx.autocast)
        plain = batched_forward(model, self.x_train, lambda x: to_model_input(x.float() / 255.0, prep), **kw)
        mirror = batched_forward(model, self.x_train, lambda x: to_model_input(x.flip(-1).float() / 255.0, prep), **kw)
        return (0.5 * (plain + mirror)).float()

    def _batch_loss(self, out: Any, idx: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        data_loss, _ = self._loss(out, self.y_train[idx], None if self.soft_train is None else self.soft_train[idx])
        t = self.temperature
        student = F.log_softmax(out.logits.float() / t, dim=1)
        teacher = F.log_softmax(self.teacher_logits[idx] / t, dim=1)
        distill = F.kl_div(student, teacher, log_target=True, reduction="batchmean") * t * t
        loss = (1.0 - self.alpha) * data_loss + self.alpha * distill
        return loss, {"data_loss": data_loss.detach(), "distill_loss": distill.detach()}

    def weights_meta(self) -> dict[str, Any]:
        return self._meta("ferkit-live", self.architecture, {"num_classes": len(self.classes)}, self._data_desc,
                          notes=f"distilled from {self.settings['teacher']}")


