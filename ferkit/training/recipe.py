"""What a training recipe is: the paper's model, data, losses, optimiser and schedule.

The engine (:mod:`ferkit.training.engine`) runs any recipe and owns everything that is the same
for all of them: device choice, AMP, DDP, seeding, atomic checkpoints, resume, Ctrl-C, progress
events. A recipe owns only what the paper decides. It performs its own optimisation steps through
``ctx.step(loss, optimizer)`` because some papers need more than one optimiser per batch (GAN
alternation in FERSNet, centre-loss centres with their own learning rate in EIFN).

Contract for ``modules()``: the key ``"model"`` is the registered inference architecture described
by ``weights_meta()``; it is what ``--checkpoint PATH`` loads everywhere.
"""
from __future__ import annotations

import abc
import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, ContextManager, Iterator, Optional, Protocol, Sequence, Union

import torch
import torch.nn as nn


@dataclass
class StepResult:
    """One optimisation step, as the engine aggregates and reports it.

    ``loss``, ``correct`` and ``extra`` values may also be 0-dim tensors (still on the device):
    the engine then sums them on the device and reads them only when it reports (every
    ``progress_interval`` seconds and at the epoch end), saving a host sync per step on a GPU.
    """

    loss: float
    #: correctly classified samples in the batch and batch size (accuracy = correct / n)
    correct: int = 0
    n: int = 0
    #: extra scalar losses worth seeing (e.g. {"L_cls": .., "L_GAN": ..})
    extra: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class NetSpec:
    """A recipe's main network at the recipe's defaults: what one training step of it costs is what
    ``ferkit bench --only training`` measures (and ``scripts/gpu_campaign.py`` probes)."""

    architecture: str
    cfg: dict[str, Any] = field(default_factory=dict)
    #: the recipe's input side; 0 = the model's own ``input_size``
    input_size: int = 48
    batch: int = 128
    #: the recipe trains in channels_last on the CPU
    channels_last: bool = False
    #: a step also trains the synthesis stream (``model(x, target=y)``)
    synthesis: bool = False


class TrainContext(Protocol):
    """What the engine hands a recipe. Implemented in :mod:`ferkit.training.engine`."""

    device: torch.device
    rank: int
    world_size: int
    amp: bool
    seed: int
    out_dir: Path
    #: planned total epochs of the run (``--epochs`` or the paper's), known before ``setup``
    epochs: int

    def autocast(self) -> ContextManager[Any]:
        """bf16/fp16 autocast on CUDA when AMP is on; a no-op on CPU."""

    def step(self, loss: torch.Tensor, optimizer: Union[torch.optim.Optimizer, Sequence[torch.optim.Optimizer]],
             parameters: Optional[list[nn.Parameter]] = None, clip_grad: Optional[float] = None) -> None:
        """zero_grad, (scaled) backward, optional clipping, a step of each optimiser, scaler update."""

    def wrap(self, module: nn.Module) -> nn.Module:
        """DistributedDataParallel under torchrun, the module itself otherwise."""

    def batches(self, n_items: int, batch_size: int, epoch: int, shuffle: bool = True,
                drop_last: bool = True) -> Iterator[torch.Tensor]:
        """Index tensors for one epoch, seeded by (seed, epoch), sharded across DDP ranks."""

    def log(self, message: str) -> None:
        """A human line on stderr (rank 0 only)."""


class Recipe(abc.ABC):
    """Base class of every training recipe. Subclasses are registered with :func:`register_recipe`."""

    #: registry name, e.g. "tfe-jl/resnet18-ferplus"
    name: str = ""
    #: one line for `ferkit train --list` and the app's training dialog
    description: str = ""
    #: the paper's epoch count; `--epochs` overrides it
    default_epochs: int = 1
    #: what `--data` must point at, said in plain words for error messages and the app
    data_help: str = ""
    #: the main network at this recipe's defaults, declared here so the training bench needs no table
    network: ClassVar[Optional[NetSpec]] = None

    def __init__(self, data_dir: Path, options: argparse.Namespace | dict[str, Any] | None = None):
        self.data_dir = Path(data_dir)
        self.options = dict(vars(options) if isinstance(options, argparse.Namespace) else (options or {}))

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        """Recipe-specific CLI options (ablation switches, lambdas, batch size...)."""

    @classmethod
    def validate_data(cls, data_dir: Path) -> None:
        """Raise ``ferkit.data.errors.DataError`` with the path and what is wrong before any training."""

    #: True when the recipe takes ``folds`` / ``fold`` / ``split_seed`` options and holds out
    #: fold ``fold`` of ``ferkit.evaluation.kfold.subject_kfold(subjects, folds, split_seed)``
    #: (subject-independent protocol; ``evaluate`` then reports on the held-out fold)
    supports_folds: bool = False

    @classmethod
    def load_dataset(cls, data_dir: Path) -> "Any":
        """The full labelled ``FaceDataset`` this recipe trains on (``ferkit cv`` splits it the same way)."""
        raise NotImplementedError(f"recipe {cls.name!r} does not expose its dataset")

    @abc.abstractmethod
    def setup(self, ctx: TrainContext) -> None:
        """Load data (onto ``ctx.device`` where it fits), build modules, optimisers, schedulers."""

    @abc.abstractmethod
    def modules(self) -> dict[str, nn.Module]:
        """Everything with parameters or buffers that a checkpoint must hold; must include "model"."""

    @abc.abstractmethod
    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        ...

    def schedulers(self) -> dict[str, Any]:
        return {}

    @abc.abstractmethod
    def train_epoch(self, ctx: TrainContext, epoch: int) -> Iterator[StepResult]:
        """Run one epoch, yielding after each optimisation step (the engine reports and may stop)."""

    @abc.abstractmethod
    def evaluate(self, ctx: TrainContext, epoch: int) -> dict[str, float]:
        """Validation metrics after an epoch, e.g. {"val_accuracy": .., "val_loss": ..}."""

    def end_epoch(self, ctx: TrainContext, epoch: int) -> None:
        """Scheduler steps and per-epoch artefacts (sample grids...). Default: step every scheduler."""
        for scheduler in self.schedulers().values():
            scheduler.step()

    def extra_state(self) -> dict[str, Any]:
        """Recipe state outside modules/optimisers that resume needs (e.g. a ramped lambda)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    @abc.abstractmethod
    def weights_meta(self) -> dict[str, Any]:
        """The :class:`ferkit.models.weights.Weights` fields of ``modules()["model"]`` (as a dict)."""
