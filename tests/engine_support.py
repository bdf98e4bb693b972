"""A tiny real recipe for the engine / inference / CLI tests (test-only names, FER+ fixture data).

It goes through every real path a paper recipe uses: ``load_ferplus`` on a fixture tree in the
FER+ on-disk layout, device-side augmentation (global RNG, so seeding is exercised), a BN model
registered with ``@register_model``, SGD + a step scheduler (state in the checkpoint), extra state
(a counter) and ``weights_meta``. Run as a module it is the ``ferkit`` CLI with this recipe
registered, so tests can start it in a subprocess (``python -m tests.engine_support train ...``)
or under ``torchrun``.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.data.augment import augment_batch
from ferkit.data.ferplus import FERPLUS_CLASSES, load_ferplus, resolve_split
from ferkit.models.base import FerModel
from ferkit.models.outputs import ModelOutput
from ferkit.models.registry import _MODELS, register_model
from ferkit.models.weights import Preprocessing
from ferkit.recipes.registry import _RECIPES, register_recipe
from ferkit.training.recipe import Recipe, StepResult, TrainContext

MODEL_NAME = "test-engine-tinycnn"
RECIPE_NAME = "test-engine/tiny"


class TinyCNN(FerModel):
    """conv-BN-ReLU x2, GAP, linear: small, but with BN buffers and an int counter to keep intact."""

    has_identity = True

    def __init__(self, num_classes: int = 8, width: int = 8, in_channels: int = 1):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor, *, return_gates: bool = False) -> ModelOutput:
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        feat = h.mean(dim=(2, 3))
        return ModelOutput(logits=self.fc(feat), embedding=feat, identity=feat)


if MODEL_NAME not in _MODELS:  # idempotent: the module may be imported under two names
    @register_model(MODEL_NAME, paper="test only", description="tiny CNN for engine tests")
    def tiny_cnn(num_classes: int = 8, width: int = 8, in_channels: int = 1) -> TinyCNN:
        return TinyCNN(num_classes, width, in_channels)


class TinyRecipe(Recipe):
    name = RECIPE_NAME
    description = "test-only tiny CNN on a FER+ layout folder"
    default_epochs = 2
    data_help = "a FER+ split folder (label.csv beside the PNGs)"

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--width", type=int, default=8)
        parser.add_argument("--batch-size", type=int, default=8)
        parser.add_argument("--lr", type=float, default=0.05)
        parser.add_argument("--sleep", type=float, default=0.0, help="seconds per step (lets tests signal)")
        parser.add_argument("--tensor-stats", action="store_true", help="yield StepResult values as tensors")

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        resolve_split(data_dir)

    def opt(self, key: str, default: Any) -> Any:
        value = self.options.get(key)
        return default if value is None else value

    def setup(self, ctx: TrainContext) -> None:
        ds = load_ferplus(self.data_dir, vote="majority", use_cache=False)
        self.images = ds.images.to(ctx.device)
        self.labels = ds.labels.to(ctx.device)
        self.prep = Preprocessing(input_size=48, grayscale=True, mean=0.5, std=0.5, alignment="fer2013")
        self.model = TinyCNN(len(FERPLUS_CLASSES), int(self.opt("width", 8))).to(ctx.device)
        self.net = ctx.wrap(self.model)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=float(self.opt("lr", 0.05)), momentum=0.9)
        self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size=1, gamma=0.7)
        self.steps_seen = 0
        self.planned_epochs = ctx.epochs  # what an LR schedule spanning the run would use

    def modules(self) -> dict[str, nn.Module]:
        return {"model": self.model}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"model": self.optimizer}

    def schedulers(self) -> dict[str, Any]:
        return {"model": self.scheduler}

    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        self.model.train()
        for idx in ctx.batches(len(self.labels), int(self.opt("batch_size", 8)), epoch):
            x = augment_batch(self.prep.normalize(self.images[idx]))
            y = self.labels[idx]
            with ctx.autocast():
                logits = self.net(x).logits
                loss = F.cross_entropy(logits.float(), y)
            ctx.step(loss, self.optimizer)
            self.steps_seen += 1
            if self.opt("sleep", 0.0):
                time.sleep(float(self.opt("sleep", 0.0)))
            if self.opt("tensor_stats", False):  # no host sync: the engine reads them when it reports
                yield StepResult(loss=loss.detach(), correct=(logits.argmax(1) == y).sum(), n=len(y),
                                 extra={"L_ce": loss.detach()})
            else:
                yield StepResult(loss=float(loss.item()), correct=int((logits.argmax(1) == y).sum()), n=len(y),
                                 extra={"L_ce": float(loss.item())})

    @torch.no_grad()
    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        self.model.eval()
        logits = self.model(self.prep.normalize(self.images)).logits
        self.model.train()
        return {"val_accuracy": float((logits.argmax(1) == self.labels).float().mean()),
                "val_loss": float(F.cross_entropy(logits, self.labels))}

    def extra_state(self) -> dict[str, Any]:
        return {"steps_seen": self.steps_seen}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.steps_seen = int(state.get("steps_seen", 0))

    def weights_meta(self) -> dict[str, Any]:
        return {"name": "test-tiny", "architecture": MODEL_NAME, "classes": list(FERPLUS_CLASSES),
                "preprocessing": asdict(self.prep), "model_cfg": {"width": int(self.opt("width", 8))},
                "data": f"FER+ fixture {self.data_dir}", "recipe": self.name}


if RECIPE_NAME not in _RECIPES:
    register_recipe(TinyRecipe)


def train_tiny(data: Path, out: Path, epochs: int = 2, **options: Any) -> Path:
    """Train the tiny recipe in process (quietly); returns ``out/checkpoint.pt``."""
    from ferkit.training.engine import train

    train(TinyRecipe(data, options), out, epochs=epochs, device="cpu", seed=0, json_lines=False)
    return Path(out) / "checkpoint.pt"


if __name__ == "__main__":
    import os
    import sys

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)) if "LOCAL_RANK" not in os.environ else 1)
    from ferkit.cli import main

    sys.exit(main())
