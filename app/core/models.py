"""One loaded model as the app sees it: the library's Predictor plus what the panels need to know.

The panels never look at model classes; they ask a handle whether it has an identity feature,
gates or synthesis (``FerModel.has_*``), so a panel whose model lacks a feature can say so.
Handles are cached per (weights, device) because loading is the slow part of switching models.

Also which weights the app starts with when the user has chosen none (:func:`default_choice`: the
fast ``ferkit-live`` on a weak machine, :func:`is_weak_machine`), and the words the window uses to
say which model runs, why, and on which inference engine (:func:`model_status`, :func:`picker_entry`).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np
import torch

from ferkit.models.defaults import LIVE_WEIGHTS, Machine, is_weak_machine, live_default_weights, this_machine  # noqa: F401
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
        from ferkit.data.classes import display_classes

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

        face = to_model_input(crops_to_tensor([np.asarray(crop)]).to(self.device), self.preprocessing)
        with torch.inference_mode():
            # the encoder runs once for all targets (FERSNet.synthesize_all): half the time of
            # encoding one copy of the face per target (22 vs 43 ms for 7 targets on one core)
            out = self.model.synthesize_all(face)[0, list(targets)]
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


#: shipped weights the Model box marks "fast"
FAST_WEIGHTS = frozenset({LIVE_WEIGHTS})
#: the card metric the Model box shows beside each name (FER+ FER2013Valid, majority vote)
PICKER_METRIC = "fer2013valid_accuracy_majority"


@dataclass(frozen=True)
class DefaultChoice:
    """The weights the app starts with when the user has chosen none, and why, in words."""

    key: Optional[str]
    reason: str


def default_choice(machine: Optional[Machine] = None, names: Optional[Sequence[str]] = None) -> DefaultChoice:
    """The library's rule (:func:`ferkit.models.defaults.live_default_weights`: :data:`LIVE_WEIGHTS` on a
    weak machine when shipped, else ``tfe-jl``) with the reason in words; when that is not shipped
    either, the first shipped expression classifier.

    ``machine`` (default :func:`this_machine`) and ``names`` (default the shipped list) are for tests.
    """
    from ferkit.data.classes import is_expression_classifier

    machine = this_machine() if machine is None else machine
    names = list_weights() if names is None else list(names)
    weak = is_weak_machine(machine)
    cpu = f"{machine.cores}-core CPU"
    key = live_default_weights(machine, names)
    if key == LIVE_WEIGHTS:
        return DefaultChoice(LIVE_WEIGHTS, f"fast default for this {cpu}")
    why = f"default; {LIVE_WEIGHTS}, fast on this {cpu}, is not installed" if weak else "default"
    if key in names:
        return DefaultChoice(key, why)
    for name in names:
        try:
            if is_expression_classifier(get_weights(name).classes):
                return DefaultChoice(name, "first shipped expression model")
        except Exception:  # a damaged card: skip it here, the selector reports it when picked
            continue
    return DefaultChoice(names[0], "first shipped weights") if names else DefaultChoice(None, "no weights installed")


def default_weights(machine: Optional[Machine] = None) -> Optional[str]:
    """The key of :func:`default_choice`."""
    return default_choice(machine).key


#: what the status bar calls each engine of :class:`ferkit.inference.Predictor`
ENGINE_NAMES = {"onnx-int8": "ONNX int8", "onnx": "ONNX", "torch": "torch"}


def engine_text(handle: Optional[ModelHandle], device: bool = False) -> str:
    """The engine running ``handle`` in a few words: ``ONNX int8``, ``ONNX``, ``torch on cuda``
    (the device is named for torch, which may run on the GPU, or always with ``device``)."""
    if handle is None:
        return "not loaded"
    engine = str(getattr(handle.predictor, "engine", "torch"))
    text = ENGINE_NAMES.get(engine, engine)
    return f"{text} on {handle.device}" if device or engine == "torch" else text


def engine_details(handle: Optional[ModelHandle]) -> str:
    """Which engine and file run ``handle`` and why (the Predictor's ``engine_reason`` / ``engine_note``)."""
    if handle is None:
        return "The model is not loaded."
    p = handle.predictor
    lines = [f"Engine: {engine_text(handle)} (asked: {getattr(p, 'engine_requested', 'auto')})."]
    reason, note = getattr(p, "engine_reason", None), getattr(p, "engine_note", None)
    if reason:
        lines.append(f"Why: {reason}.")
    if note:
        lines.append(f"File: {note}.")
    return "\n".join(lines)


def model_status(key: Optional[str], reason: str, handle: Optional[ModelHandle],
                 loading: bool = False) -> tuple[str, str]:
    """(status-bar text, tooltip) of the selected model: its name, why it is selected, the engine.

    ``handle`` is the loaded primary model (None when none is); ``loading`` while the worker has not
    reported on ``key`` yet. A handle of another key (the previous model) is never described as ``key``.
    """
    if key is None:
        return "no model", "No weights are installed or selected."
    ready = handle is not None and handle.key == key
    engine = engine_text(handle) if ready else ("loading…" if loading else "not loaded")
    name = display_name(key)
    text = f"{name} — {reason} ({engine})" if reason else f"{name} ({engine})"
    tip = f"Model: {name}" + (f", {reason}." if reason else ".")
    return text, tip + "\n" + (engine_details(handle) if ready else f"Engine: {engine}")


def picker_entry(key: str, weights: Optional[Weights], shipped: bool) -> tuple[str, str]:
    """(text, tooltip) of a Model-box entry: the name, "fast" for :data:`FAST_WEIGHTS`, and the card's
    FER2013Valid accuracy (:data:`PICKER_METRIC`) when the card has it."""
    name = key if shipped else f"checkpoint: {display_name(key)}"
    fast = shipped and key in FAST_WEIGHTS
    acc = (weights.metrics or {}).get(PICKER_METRIC) if weights is not None else None
    notes = (["fast"] if fast else []) + ([f"FER2013Valid {acc * 100:.1f} %"] if isinstance(acc, (int, float)) else [])
    tip = f"{display_name(key)}: " + (f"{acc * 100:.2f} % on FER+ FER2013Valid (majority vote), from its card"
                                      if isinstance(acc, (int, float)) else "no FER2013Valid accuracy on its card")
    if fast:
        tip += "; the small distilled model, about twice as fast per face, a little less accurate"
    return (f"{name} — {', '.join(notes)}" if notes else name), tip
