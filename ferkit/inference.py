"""Inference: weights + face pipeline -> per-face expression scores, one code path for everyone.

``ferkit predict``, ``ferkit eval``, the app and the tests all go through :func:`to_model_input`
(uint8 crops -> the float tensor the weights expect, using the weights' own
:class:`~ferkit.models.weights.Preprocessing`) and :class:`Predictor`, so they cannot disagree on
how a model is fed: the app's bars and ``ferkit predict --json`` show the same numbers.

A :class:`Predictor` owns one :class:`~ferkit.face.pipeline.FacePipeline`, whose mediapipe graphs
are bound to one thread: make one Predictor per thread.
"""
from __future__ import annotations

import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ferkit.evaluation.forward import check_tta
from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, load_weights

#: the weights ``ferkit predict`` and the app use when none are named
DEFAULT_WEIGHTS = "tfe-jl"
#: file endings treated as images when a folder is given
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp", ".gif"}


class ImageReadError(ValueError):
    """A file that is missing, not an image, or cannot be decoded (message names the file)."""


def read_image(path: Union[str, Path]) -> np.ndarray:
    """RGB uint8 ``[H, W, 3]`` from any common image file (EXIF orientation applied by OpenCV).

    Gray, 16-bit and RGBA files are converted; GIF (OpenCV cannot read it) goes through Pillow.
    Raises :class:`ImageReadError` naming the file when it is missing, a folder, or not an image.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    try:
        data = np.fromfile(str(path), dtype=np.uint8)  # also works for non-ASCII paths
    except OSError as exc:
        raise ImageReadError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is not None:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    try:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                im.seek(0)
                return np.asarray(im.convert("RGB")).copy()
        except (UnidentifiedImageError, OSError, ValueError):
            pass
    except ImportError:  # pragma: no cover - Pillow comes with matplotlib
        pass
    kind = "empty file" if data.size == 0 else "not an image, or an unsupported / corrupt image format"
    raise ImageReadError(f"{path}: {kind}")


def expand_image_paths(paths: Sequence[Union[str, Path]]) -> list[Path]:
    """Files as given; folders replaced by their image files (recursively, sorted)."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ImageReadError(f"{p}: folder holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})")
            out.extend(found)
        else:
            out.append(p)
    return out


def to_model_input(images: torch.Tensor, prep: Preprocessing) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` face crops (any size, 1 or 3 channels) -> normalised float model input.

    Gray <-> RGB uses ITU-R 601 luma (as OpenCV's RGB2GRAY) or channel replication; a size other
    than ``prep.input_size`` is resized bilinearly with antialiasing (area-like when shrinking).
    Crops that already match (the face pipeline makes them so) are only normalised.
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


def merge_flip_outputs(out: ModelOutput, n: int) -> ModelOutput:
    """One result per crop from a batch of ``n`` crops followed by their ``n`` mirrors.

    Class probabilities are averaged (``logits`` become their log, so ``probabilities`` is the
    mean); the identity feature is averaged too; gates, embedding and synthesis are those of the
    unflipped crops (maps of mirrored faces would not line up with the picture).
    """
    probs = 0.5 * (out.probabilities[:n] + out.probabilities[n:])
    identity = None if out.identity is None else 0.5 * (out.identity[:n] + out.identity[n:])
    return ModelOutput(logits=probs.clamp_min(1e-12).log(), identity=identity,
                       embedding=None if out.embedding is None else out.embedding[:n],
                       gates={k: v[:n] for k, v in out.gates.items()},
                       synthesis=None if out.synthesis is None else out.synthesis[:n])


@dataclass
class FaceResult:
    """One face: where it is, what the model says, and the crop the model saw."""

    #: (x, y, w, h) in image pixels
    box: tuple[int, int, int, int]
    #: class name -> probability (sums to 1)
    scores: dict[str, float]
    label: str
    #: detector confidence; NaN when no detector ran (whole-image mode)
    detection_score: float
    #: the model-input crop, uint8 ``[H, W, C]``
    crop: np.ndarray = field(repr=False)
    #: identity feature ``[D]`` (float32) for models with an identity branch, else None
    identity: Optional[np.ndarray] = field(default=None, repr=False)
    #: eye centres (x, y) in image pixels, when known
    left_eye: Optional[tuple[float, float]] = None
    right_eye: Optional[tuple[float, float]] = None
    #: False when this "face" is the whole image (``whole_image=True`` or the no-face fallback)
    detected: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"box": [int(v) for v in self.box], "scores": {k: float(v) for k, v in self.scores.items()},
                "label": self.label,
                "detection_score": None if not np.isfinite(self.detection_score) else float(self.detection_score),
                "detected": self.detected}


@dataclass
class ImageResult:
    faces: list[FaceResult]
    #: (width, height) of the input image
    image_size: tuple[int, int]
    whole_image: bool = False

    @property
    def no_face(self) -> bool:
        return not self.faces


class Predictor:
    """A model with its preprocessing and a face pipeline, ready for images or crops.

    ``weights``: a shipped name (``resources/weights/<name>.json``), a card path, or a training
    checkpoint path. ``device``: ``auto`` (CUDA when present) / ``cpu`` / ``cuda``.
    ``pipeline``: an existing face pipeline (anything with ``detect`` and ``align``), made lazily
    otherwise so that predicting on crops never imports mediapipe.
    ``engine``: ``torch`` (eager) or ``onnx`` (ONNX Runtime on the CPU, 3-8x faster at batch 1 here
    per ``ferkit bench``; gate maps and synthesis stay torch-only).
    ``tta``: ``"flip"`` scores each crop and its mirror in one batch and averages the class
    probabilities; ``None`` (default) uses the weights' card (the setting its metrics were
    measured with), ``"none"`` switches it off.
    """

    def __init__(self, weights: Union[str, Path] = DEFAULT_WEIGHTS, device: Union[str, torch.device] = "auto",
                 max_faces: int = 5, min_confidence: float = 0.5, pipeline: Any = None, engine: str = "torch",
                 tta: Optional[str] = None):
        if engine not in ("torch", "onnx"):
            raise ValueError(f"--engine must be torch or onnx, not {engine!r}")
        try:
            loaded = load_weights(weights, device)
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{weights}: cannot be read as ferkit weights or a training checkpoint "
                             f"({type(exc).__name__}: {exc})") from None
        self.model = loaded.model
        self.weights: Weights = loaded.weights
        self.device = loaded.device
        self.preprocessing: Preprocessing = self.weights.preprocessing
        self.classes: list[str] = list(self.weights.classes)
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self._pipeline = pipeline
        n_out = getattr(self.model, "num_classes", None)
        if n_out is not None and n_out != len(self.classes):
            raise ValueError(f"{self.weights.source}: the model has {n_out} outputs but the card lists "
                             f"{len(self.classes)} classes")
        self.tta = check_tta(self.weights.tta if tta is None else tta)
        self.engine = engine
        if engine == "onnx":
            from ferkit.export.onnx import use_onnx  # lazy: onnxruntime is an optional extra

            use_onnx(self)

    @property
    def pipeline(self) -> Any:
        if self._pipeline is None:
            from ferkit.face.pipeline import FacePipeline

            self._pipeline = FacePipeline(max_faces=self.max_faces, min_confidence=self.min_confidence)
        return self._pipeline

    def close(self) -> None:
        if self._pipeline is not None and hasattr(self._pipeline, "close"):
            self._pipeline.close()
        self._pipeline = None

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- tensors ---------------------------------------------------------------------------------
    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor, return_gates: bool = False) -> ModelOutput:
        """uint8 ``[N, C, H, W]`` crops -> the model's :class:`ModelOutput` (tensors on ``self.device``).

        Crops of another size or channel count are converted per :func:`to_model_input`.
        """
        x = to_model_input(batch.to(self.device), self.preprocessing)
        if self.tta == "flip":
            n = x.shape[0]
            both = torch.cat([x, x.flip(-1)])
            out = self.model(both, return_gates=True) if return_gates else self.model(both)
            return merge_flip_outputs(out, n)
        if return_gates:
            return self.model(x, return_gates=True)
        return self.model(x)

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """``[N, K]`` float64 class probabilities of uint8 crops (the numbers every view shows)."""
        return self.predict_tensor(batch).probabilities.double().cpu().numpy()

    # ---- images ----------------------------------------------------------------------------------
    def predict_image(self, image: np.ndarray, whole_image: bool = False,
                      fallback_whole_image: bool = False) -> ImageResult:
        """Every face in ``image`` (RGB uint8 ``[H, W, 3]``, or gray ``[H, W]``) in one forward pass.

        ``whole_image=True`` scores the whole picture as one face (for pictures that already are
        face crops, like FER+ PNGs). ``fallback_whole_image=True`` does that only when no face is
        found. No face and no fallback -> an :class:`ImageResult` with no faces (never an exception).
        """
        from ferkit.face.align import whole_image_face
        from ferkit.face.pipeline import as_rgb

        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        prep = self.preprocessing
        aligned = []
        if not whole_image:
            for face in self.pipeline.detect(rgb)[: self.max_faces]:
                aligned.append((face, self.pipeline.align(rgb, face, prep), True))
        if whole_image or (fallback_whole_image and not aligned):
            wf = whole_image_face(rgb, prep.input_size, prep.grayscale)
            aligned = [(wf.face, wf.crop, False)]
        if not aligned:
            return ImageResult(faces=[], image_size=(w, h), whole_image=whole_image)
        out = self.predict_tensor(crops_to_tensor([c for _, c, _ in aligned]))
        probs = out.probabilities.double().cpu().numpy()
        ident = out.identity.float().cpu().numpy() if out.identity is not None else None
        faces = []
        for i, (face, crop, detected) in enumerate(aligned):
            p = probs[i]
            faces.append(FaceResult(
                box=tuple(int(v) for v in face.box),  # type: ignore[arg-type]
                scores={c: float(p[j]) for j, c in enumerate(self.classes)},
                label=self.classes[int(p.argmax())], detection_score=float(face.score), crop=crop,
                identity=None if ident is None else ident[i], left_eye=face.left_eye, right_eye=face.right_eye,
                detected=detected))
        return ImageResult(faces=faces, image_size=(w, h), whole_image=whole_image)

    def predict_file(self, path: Union[str, Path], whole_image: bool = False,
                     fallback_whole_image: bool = False) -> ImageResult:
        return self.predict_image(read_image(path), whole_image=whole_image,
                                  fallback_whole_image=fallback_whole_image)
