"""Shipped and trained weights: one entry carries the file, the preprocessing and the metadata.

In the spirit of torchvision's weights enums: the preprocessing travels with the weights, so the
app, ``ferkit predict`` and ``ferkit eval`` can never disagree on how a model is fed.

On disk a shipped entry is three files in ``resources/weights/``:
``<name>.json`` (this dataclass, machine-readable card), ``<name>.pt`` (state dict, usually fp16)
and ``<name>.md`` (the human model card). A training checkpoint stores the same JSON under the key
``"weights_meta"`` and its model under ``"modules"]["model"]``, so every command that takes
``--weights NAME`` also takes ``--checkpoint PATH``.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ferkit.errors import NotFoundError, UnavailableError, UnknownNameError, UsageError
from ferkit.paths import weights_dir
from ferkit.utils.denormals import flush_denormals


@dataclass(frozen=True)
class Preprocessing:
    """How a face crop becomes a model input. ``alignment`` names a crop style of ferkit.face."""

    input_size: int = 48
    grayscale: bool = True
    mean: float = 0.5
    std: float = 0.5
    alignment: str = "fer2013"

    @property
    def channels(self) -> int:
        return 1 if self.grayscale else 3

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (already the right size and channel count) -> float model input."""
        if images.dtype == torch.uint8:
            images = images.float().div_(255.0)
        return (images - self.mean) / self.std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Model-range float images -> [0, 1] (for showing synthesised faces)."""
        return (x * self.std + self.mean).clamp(0.0, 1.0)


def to_model_input(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` face crops (any size, 1 or 3 channels) -> normalised float model input.

    Gray <-> RGB uses ITU-R 601 luma (as OpenCV's RGB2GRAY) or channel replication; a size other
    than ``prep.input_size`` is resized bilinearly with antialiasing (area-like when shrinking).
    Crops that already match (the face pipeline makes them so) are only normalised. It lives beside
    :class:`Preprocessing`, not in :mod:`ferkit.inference`, so the export, the recipes and the evaluation
    feed a model exactly as inference does without importing the layer above them.
    """
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"expected uint8 [N, 1|3, H, W] images, got {tuple(images.shape)}")
    x = images.float().div_(255.0) if images.dtype == torch.uint8 else images.float()
    if prep.grayscale and x.shape[1] == 3:
        w = torch.tensor([0.299, 0.587, 0.114], device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        x = (x * w).sum(1, keepdim=True)
    elif not prep.grayscale and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if tuple(x.shape[-2:]) != (prep.input_size, prep.input_size):
        x = F.interpolate(x, size=(prep.input_size, prep.input_size), mode="bilinear", align_corners=False,
                          antialias=True)
    return prep.normalize(x)


def crops_to_tensor(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """``[H, W]`` / ``[H, W, C]`` uint8 crops of one size -> uint8 ``[N, C, H, W]``."""
    arrs = [c[:, :, None] if c.ndim == 2 else c for c in crops]
    return torch.from_numpy(np.ascontiguousarray(np.stack(arrs).transpose(0, 3, 1, 2)))


def measure_normalisation(images: torch.Tensor) -> tuple[float, float]:
    """Global mean and std of uint8 images in [0, 1] units (rounded: they are written into cards)."""
    x = images.float().div_(255.0)
    return round(float(x.mean()), 4), round(float(x.std()), 4)


#: test-time augmentation modes: "flip" = mean of the softmax of the image and its mirror
TTA_MODES = ("none", "flip")


def check_tta(tta: Optional[str]) -> str:
    """A TTA mode (None, "" and "off" mean "none"); a :class:`~ferkit.errors.UsageError` for any other."""
    tta = "none" if tta in (None, "", "off") else str(tta)
    if tta not in TTA_MODES:
        raise UsageError(f"--tta must be one of {', '.join(TTA_MODES)}, got {tta!r}")
    return tta


@dataclass
class Weights:
    name: str
    architecture: str
    classes: list[str]
    preprocessing: Preprocessing
    model_cfg: dict[str, Any] = field(default_factory=dict)
    file: Optional[str] = None
    #: measured numbers, each key says the data split and rule, e.g. "fer2013valid_accuracy_majority"
    metrics: dict[str, Any] = field(default_factory=dict)
    data: str = ""
    recipe: str = ""
    epochs: Optional[int] = None
    hardware: str = ""
    wall_time_s: Optional[float] = None
    #: cosine-similarity threshold of the identity feature, calibrated on held-out pairs at the
    #: false-accept rate ``identity_far`` (``ferkit eval-verification --far``); below it a face is
    #: "unknown", never a name
    identity_threshold: Optional[float] = None
    #: false-accept rate the threshold was set at, and the true-accept rate measured there
    identity_far: Optional[float] = None
    identity_tar: Optional[float] = None
    #: where the threshold was calibrated (e.g. "LFW View 2 pairs, 6000")
    identity_calibration: str = ""
    #: training precision ("bf16" autocast with fp32 master weights, or "fp32")
    precision: str = ""
    #: test-time augmentation the card's metrics were measured with and inference uses by
    #: default ("none" or "flip": mean of the softmax of the image and its mirror)
    tta: str = "none"
    #: the recipe options of the run (target, schedule, augmentation...), so a card says how it was made
    training_options: dict[str, Any] = field(default_factory=dict)
    #: ConvFLU models: per gate key, the channel whose map varies most over held-out faces
    #: (``ferkit eval-synthesis`` -> ``ferkit export-weights --gate-channels``); the app's Gates panel
    #: shows that channel, because the mean over channels cancels to a nearly flat map
    gate_channels: dict[str, int] = field(default_factory=dict)
    #: identities / subjects never trained on (held out for verification or a test fold); what
    #: ``ferkit eval-verification --identities heldout`` evaluates on
    heldout_identities: list[str] = field(default_factory=list)
    #: how the data was split: {"train", "validation", "vote", "folds", "fold", "split_seed"} as applicable
    split: dict[str, Any] = field(default_factory=dict)
    notes: str = ""
    #: where the entry was read from (json card or checkpoint); not serialised
    source: Optional[str] = None

    @property
    def identity_calibrated(self) -> bool:
        """A threshold set on held-out pairs at a stated false-accept rate (both on the card): the only
        kind of identity threshold allowed to name a face."""
        return self.identity_threshold is not None and self.identity_far is not None

    # ---- (de)serialisation -------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("source", None)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: Optional[str] = None) -> "Weights":
        d = dict(d)
        d.pop("source", None)
        pre = d.get("preprocessing", {})
        d["preprocessing"] = pre if isinstance(pre, Preprocessing) else Preprocessing(**pre)
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known}, source=source)

    def save_card(self, path: Path) -> None:
        from ferkit.utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n")

    @staticmethod
    def update_card(path: Path, fields: Optional[dict[str, Any]] = None,
                    metrics: Optional[dict[str, Any]] = None) -> None:
        """Merge measured ``fields`` and ``metrics`` into the JSON card at ``path`` (atomic replace).

        Keys the caller does not name stay as they were, including ones this version of ferkit does
        not know, so a measurement added later (a calibration, an enrolment rate) never drops
        what an earlier command wrote.
        """
        from ferkit.utils.io import atomic_write_text

        data = json.loads(Path(path).read_text())
        data.update(fields or {})
        data["metrics"] = {**(data.get("metrics") or {}), **(metrics or {})}
        atomic_write_text(Path(path), json.dumps(data, indent=2) + "\n")

    # ---- model construction ------------------------------------------------------------
    def build_model(self) -> nn.Module:
        from ferkit.models.registry import create_model

        return create_model(self.architecture, **self.model_cfg)

    def state_dict(self, map_location: Union[str, torch.device] = "cpu") -> dict[str, torch.Tensor]:
        if self.source is None:
            raise NotFoundError(f"weights {self.name!r} have no file to load")
        src = Path(self.source)
        if src.suffix == ".json":
            if not self.file:
                raise NotFoundError(f"card {src} names no weights file")
            blob = torch.load(src.parent / self.file, map_location=map_location, weights_only=True)
            return blob
        checkpoint = torch.load(src, map_location=map_location, weights_only=False)
        return checkpoint["modules"]["model"]


def float_state(state: Any) -> dict[str, torch.Tensor]:
    """A state dict with its floating-point tensors upcast to float32 (shipped files are usually fp16)."""
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def matching_tensors(model: nn.Module, state: Any) -> dict[str, torch.Tensor]:
    """The tensors of ``state`` (upcast as :func:`float_state`) whose name and shape match ``model``'s.

    For warm starts (``--init``) from a related model that differs in some layers - another class
    count, another head: load the result with ``strict=False``; the caller decides how much must match.
    """
    own = model.state_dict()
    return {k: v for k, v in float_state(state).items() if k in own and own[k].shape == v.shape}


def load_matching(model: nn.Module, source: Union[str, Path], architecture_prefix: str, what: str,
                  option: str = "--init", loaded: Optional[tuple["Weights", dict[str, Any]]] = None,
                  branches: tuple[str, ...] = ()) -> tuple[int, list[str]]:
    """Warm-start ``model`` from weights ``source``: copy every tensor whose name and shape match.

    Why a rule and not a strict load: a model trained on another data set differs in its
    class-count layers (another classifier, another subject head), which stay random. What is
    refused: a source of another architecture, or one where most learned tensors do not match
    (another width or input size: then nearly nothing would be initialised, silently). "Most" counts
    this model's tensors, except for a source whose architecture is one of ``branches`` (a part of
    this model trained alone, e.g. ``eifn_identity`` for ``eifn``): that must match most of its own.
    Returns (tensors taken, names of this model's tensors left as they were). ``loaded``: the source's
    (weights entry, state dict) when the caller has read them already and needs them again.
    """
    weights, state = loaded if loaded is not None else (get_weights(source), None)
    if not weights.architecture.startswith(architecture_prefix):
        raise UsageError(f"{option} {source} holds a {weights.architecture!r} model; it must be a {what}")
    state = weights.state_dict() if state is None else state
    take = matching_tensors(model, state)
    own = model.state_dict()
    covered = state if weights.architecture in branches else own
    learned = [k for k, v in covered.items() if v.is_floating_point()]
    if sum(k in take for k in learned) * 2 < len(learned):
        raise UsageError(f"{option} {source}: no tensor matches this model's names and shapes for most layers; "
                         "was it trained with another --width / --input-size?")
    model.load_state_dict(take, strict=False)
    return len(take), sorted(k for k in own if k not in take)


@torch.no_grad()
def transfer_class_slots(module: nn.Module, state: Any, class_pairs: list[tuple[int, int]],
                         source_classes: int, own_classes: int) -> list[str]:
    """Copy the per-class slices of ``state``'s class-count-dependent tensors into ``module``.

    Why: a warm start across data sets with other class lists (FER+'s 8 emotions -> CK+'s 7) keeps
    every tensor whose shape matches (:func:`load_matching`) but would leave the classifier rows, the
    one-hot label's input columns and a conditional discriminator's label planes random, although
    most classes exist in both lists. ``class_pairs`` holds (source index, own index) of the classes
    the two share (matched by name by the caller). A tensor qualifies when it differs from the
    source in exactly one dimension, by exactly the difference in class count; its class slots are
    the trailing ``classes`` entries of that dimension (a label concatenated after image channels,
    a classifier's rows). Returns the names of the tensors so filled.
    """
    own = module.state_dict()
    done: list[str] = []
    for name, src in float_state(state).items():
        dst = own.get(name)
        if dst is None or dst.dim() != src.dim() or dst.shape == src.shape:
            continue
        dims = [d for d in range(dst.dim()) if dst.shape[d] != src.shape[d]]
        if len(dims) != 1 or src.shape[dims[0]] - dst.shape[dims[0]] != source_classes - own_classes:
            continue
        d = dims[0]
        # entries in front of the class slots (e.g. image channels); the same count in both, since
        # the dimensions differ by exactly the class counts
        base = dst.shape[d] - own_classes
        if base < 0:
            continue
        if base:
            dst.narrow(d, 0, base).copy_(src.narrow(d, 0, base).to(dst.dtype))
        for s_idx, o_idx in class_pairs:
            dst.narrow(d, base + o_idx, 1).copy_(src.narrow(d, base + s_idx, 1).to(dst.dtype))
        done.append(name)
    return done


def list_weights() -> list[str]:
    folder = weights_dir()
    return sorted(p.stem for p in folder.glob("*.json")) if folder.is_dir() else []


def weights_with(*features: str) -> list[str]:
    """Shipped weights whose model has every one of ``features`` (``"identity"``, ``"gates"``, ``"synthesis"``).

    Read from the model each card builds (:func:`~ferkit.models.registry.model_traits`, no weights
    loaded), so the app's explainers and the bench find a new paper's weights without a list of names.
    A card that cannot be read is skipped here; it is reported where it is loaded.
    """
    from ferkit.models.registry import model_traits

    found = []
    for name in list_weights():
        try:
            w = get_weights(name)
            traits = model_traits(w.architecture, w.model_cfg)
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if all(traits.has(f) for f in features):
            found.append(name)
    return found


#: the card metric that ranks identity features for enrolment (LFW View 2, 10-fold accuracy)
IDENTITY_RANK_METRIC = "lfw_view2_accuracy"


def enrolment_identity_weights() -> Optional[str]:
    """The shipped identity feature that enrolment and "same person?" use, whatever expression model runs.

    Why not the expression model's own feature: identity decisions are only as good as the feature's
    verification quality, which the cards measure (``IDENTITY_RANK_METRIC``); the best calibrated one
    (:attr:`Weights.identity_calibrated`) wins. ``None`` when no shipped card has a calibrated identity feature.
    """
    best: tuple[float, str] | None = None
    for name in list_weights():
        try:
            w = get_weights(name)
        except (OSError, ValueError):
            continue
        score = w.metrics.get(IDENTITY_RANK_METRIC)
        if not w.identity_calibrated or score is None:
            continue
        if best is None or float(score) > best[0]:
            best = (float(score), name)
    return None if best is None else best[1]


def get_weights(name_or_path: Union[str, Path]) -> Weights:
    """A shipped entry by name, a card by path, or a training checkpoint by path."""
    path = Path(name_or_path)
    if path.suffix in {".pt", ".pth", ".ckpt"} and path.exists():
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
        if "weights_meta" not in checkpoint:
            raise UsageError(f"{path} is not a ferkit training checkpoint (no 'weights_meta' entry)")
        return Weights.from_dict(checkpoint["weights_meta"], source=str(path))
    if path.suffix == ".json" and path.exists():
        return Weights.from_dict(json.loads(path.read_text()), source=str(path))
    if path.is_file():  # a file that is neither: say so rather than "no weights named"
        raise UsageError(f"{path} is not weights ferkit can read: pass a training checkpoint (.pt), a weights "
                         "card (.json) or a shipped name")
    card = weights_dir() / f"{name_or_path}.json"
    if not card.exists():
        known = ", ".join(list_weights()) or "none"
        raise UnknownNameError(f"no weights named {str(name_or_path)!r} in {weights_dir()} (shipped: {known}); "
                               "pass a shipped name, a .json card or a training checkpoint .pt")
    return Weights.from_dict(json.loads(card.read_text()), source=str(card))


def get_weights_of(architecture: str, name_or_path: Union[str, Path], option: str, hint: str = "") -> Weights:
    """:func:`get_weights` of the option ``--<option>``, refused unless it holds an ``architecture`` model."""
    weights = get_weights(name_or_path)
    if weights.architecture != architecture:
        raise UsageError(f"--{option} {name_or_path} holds a {weights.architecture!r} model; expected "
                         f"{architecture!r}{hint}")
    return weights


@dataclass
class LoadedModel:
    model: nn.Module
    weights: Weights
    device: torch.device


def parse_device(device: Union[str, torch.device]) -> torch.device:
    """The device a spelling names (``cpu``, ``cuda``, ``cuda:1``), without asking whether it is
    present; anything else (``gpu``, ``mps``) is a :class:`UsageError`. ``--device`` parsing and
    :func:`resolve_device` share it."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise UsageError(f"{str(device)!r} is not a device ferkit runs on: use auto, cpu, cuda or cuda:N")
    return dev


def resolve_device(device: Union[str, torch.device, None] = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; an explicit ``cuda`` without a GPU is a clear error."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UnavailableError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return dev


def load_weights(name_or_path: Union[str, Path], device: Union[str, torch.device, None] = "auto") -> LoadedModel:
    """Build the model, load its weights (fp16 files are upcast) and put it in eval mode, offline."""
    weights = get_weights(name_or_path)
    dev = resolve_device(device)
    model = weights.build_model()
    state = float_state(weights.state_dict())
    model.load_state_dict(state)
    model.to(dev).eval()
    flush_denormals()  # why: ferkit.utils.denormals (a 28x faster batch-1 forward on x86)
    return LoadedModel(model=model, weights=weights, device=dev)
