"""One loaded model as the app sees it: the library's Predictor plus what the panels need to know.

The panels never look at model classes; they ask a handle whether it has an identity feature,
gates or synthesis (``FerModel.has_*``), so a panel whose model lacks a feature can say so.
Handles are cached per (weights, device) because loading is the slow part of switching models.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, get_weights, list_weights, resolve_device

if TYPE_CHECKING:
    from ferkit.inference import Predictor


#: file suffixes of training checkpoints (anything else is a shipped name or a card)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".ckpt")


def display_name(name_or_path: str) -> str:
    """Short label of a weights entry: the shipped name, or ``run/checkpoint.pt`` for a checkpoint."""
    p = Path(name_or_path)
    if p.suffix in CHECKPOINT_SUFFIXES:
        return f"{p.parent.name}/{p.name}"
    return str(name_or_path)


@dataclass
class ModelHandle:
    key: str  # the shipped name or checkpoint path the user picked
    weights: Weights
    predictor: "Predictor"
    model: torch.nn.Module
    device: torch.device

    @property
    def name(self) -> str:
        return display_name(self.key)

    @property
    def preprocessing(self) -> Preprocessing:
        return self.weights.preprocessing

    @property
    def classes(self) -> list[str]:
        """Class names as the app shows and exports them (one canonical spelling across models)."""
        from app.core.labels import display_classes

        return display_classes(self.weights.classes)

    @property
    def has_identity(self) -> bool:
        return bool(getattr(self.model, "has_identity", False))

    @property
    def has_gates(self) -> bool:
        return bool(getattr(self.model, "has_gates", False))

    @property
    def has_synthesis(self) -> bool:
        return bool(getattr(self.model, "has_synthesis", False))

    def forward_gates(self, crops: Sequence[np.ndarray]) -> ModelOutput:
        """A forward pass that also returns the ConvFLU gate maps (FERSNet only)."""
        from ferkit.inference import crops_to_tensor

        return self.predictor.predict_tensor(crops_to_tensor([np.asarray(c) for c in crops]), return_gates=True)

    def synthesize(self, crop: np.ndarray, targets: Sequence[int]) -> np.ndarray:
        """The face re-expressed as each class in ``targets``: uint8 ``[K, H, W, C]``."""
        from ferkit.inference import crops_to_tensor, to_model_input

        batch = crops_to_tensor([np.asarray(crop)] * len(targets)).to(self.device)
        target = torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.synthesize(to_model_input(batch, self.preprocessing), target)
            images = self.preprocessing.denormalize(out.float()).mul(255.0).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


def available_devices() -> list[str]:
    """Inference devices to offer: auto and cpu, and cuda when torch sees a GPU."""
    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def configure_torch_threads() -> int:
    """One intra-op thread per worker (``$FERKIT_APP_TORCH_THREADS`` overrides).

    WHY: the app runs torch from several workers at once (live inference, gates, synthesis) and
    mediapipe has its own threads. torch's OpenMP pool spin-waits; oversubscribed on a busy
    2-core machine we measured a 48x48 TFE-JL forward at ~860 ms with 2 threads against ~26 ms
    with 1. Batch-1 inference of these small nets gains nothing from intra-op threads anyway;
    the parallelism comes from the workers.
    """
    import os

    n = int(os.environ.get("FERKIT_APP_TORCH_THREADS", "1"))
    torch.set_num_threads(max(1, n))
    return torch.get_num_threads()


class ModelCache:
    """Loads each (weights, device) once; thread-safe because workers ask for models too."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._handles: dict[tuple[str, str], ModelHandle] = {}
        #: weights that failed to load, with the error: not retried on every frame
        self._failed: dict[tuple[str, str], Exception] = {}

    def get(self, key: str, device: str = "auto") -> ModelHandle:
        dev = resolve_device(device)
        ck = (str(key), str(dev))
        with self._lock:
            if ck in self._failed:
                raise self._failed[ck]
            handle = self._handles.get(ck)
            if handle is None:
                try:
                    handle = self._handles[ck] = load_handle(str(key), dev)
                except Exception as exc:
                    self._failed[ck] = exc
                    raise
            return handle

    def clear(self) -> None:
        with self._lock:
            self._handles.clear()
            self._failed.clear()


def load_handle(key: str, device: torch.device) -> ModelHandle:
    from ferkit.inference import Predictor

    predictor = Predictor(key, device=str(device))
    return ModelHandle(key=key, weights=predictor.weights, predictor=predictor, model=predictor.model, device=device)


def shipped_weights() -> list[str]:
    return list_weights()


def default_weights() -> Optional[str]:
    """``tfe-jl`` when shipped (the spine's default), else the first shipped expression classifier."""
    from app.core.labels import is_expression_classifier

    names = list_weights()
    if "tfe-jl" in names:
        return "tfe-jl"
    for name in names:
        try:
            if is_expression_classifier(get_weights(name).classes):
                return name
        except Exception:  # a damaged card: skip it here, the selector reports it when picked
            continue
    return names[0] if names else None
