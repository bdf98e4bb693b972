"""One loaded model as the app sees it: the library's Predictor plus what the panels need to know.

The panels never look at model classes; they ask a handle whether it has an identity feature,
gates or synthesis (``FerModel.has_*``), so a panel whose model lacks a feature can say so.
Handles are cached per (weights, device) because loading is the slow part of switching models.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, get_weights, list_weights, resolve_device


def display_name(name_or_path: str) -> str:
    """Short label of a weights entry: the shipped name, or ``run/checkpoint.pt`` for a checkpoint."""
    p = Path(name_or_path)
    if p.suffix in {".pt", ".pth", ".ckpt"}:
        return f"{p.parent.name}/{p.name}"
    return str(name_or_path)


def crops_to_batch(crops: Sequence[np.ndarray], pp: Preprocessing) -> torch.Tensor:
    """Aligned uint8 crops -> uint8 ``[N,C,H,W]``, exactly as ``ferkit predict`` batches them."""
    from ferkit.inference import crops_to_tensor

    if not crops:
        return torch.zeros((0, pp.channels, pp.input_size, pp.input_size), dtype=torch.uint8)
    return crops_to_tensor([np.asarray(c) for c in crops])


@dataclass
class ModelHandle:
    key: str  # the shipped name or checkpoint path the user picked
    weights: Weights
    predictor: object
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
        return list(self.weights.classes)

    @property
    def has_identity(self) -> bool:
        return bool(getattr(self.model, "has_identity", False))

    @property
    def has_gates(self) -> bool:
        return bool(getattr(self.model, "has_gates", False))

    @property
    def has_synthesis(self) -> bool:
        return bool(getattr(self.model, "has_synthesis", False))

    @property
    def identity_threshold(self) -> Optional[float]:
        return self.weights.identity_threshold

    def run(self, crops: Sequence[np.ndarray]) -> ModelOutput:
        """Scores (and identity feature) of aligned crops, through the library's Predictor."""
        batch = crops_to_batch(crops, self.preprocessing)
        with torch.inference_mode():
            return self.predictor.predict_tensor(batch)

    def forward_gates(self, crops: Sequence[np.ndarray]) -> ModelOutput:
        """A forward pass that also returns the ConvFLU gate maps (FERSNet only)."""
        batch = crops_to_batch(crops, self.preprocessing)
        with torch.inference_mode():
            return self.predictor.predict_tensor(batch, return_gates=True)

    def synthesize(self, crop: np.ndarray, targets: Sequence[int]) -> np.ndarray:
        """The face re-expressed as each class in ``targets``: uint8 ``[K, H, W, C]``."""
        from ferkit.inference import to_model_input

        batch = crops_to_batch([crop] * len(targets), self.preprocessing).to(self.device)
        target = torch.as_tensor(list(targets), dtype=torch.long, device=self.device)
        with torch.inference_mode():
            out = self.model.synthesize(to_model_input(batch, self.preprocessing), target)
            images = self.preprocessing.denormalize(out.float()).mul(255.0).round().to(torch.uint8)
        return images.permute(0, 2, 3, 1).cpu().numpy()


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
    weights = getattr(predictor, "weights", None) or get_weights(key)
    model = getattr(predictor, "model", None)
    if model is None:
        raise RuntimeError("ferkit.inference.Predictor exposes no .model; the app needs it for gates/synthesis")
    return ModelHandle(key=key, weights=weights, predictor=predictor, model=model, device=device)


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
