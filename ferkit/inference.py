"""Inference: weights + face pipeline -> per-face expression scores, one code path for everyone.

``ferkit predict``, ``ferkit eval``, the app and the tests all go through
:func:`~ferkit.models.weights.to_model_input` (uint8 crops -> the float tensor the weights expect,
using the weights' own :class:`~ferkit.models.weights.Preprocessing`; it lives beside them so the
export and the models need not import this module) and :class:`Predictor`, so they cannot disagree on
how a model is fed: the app's bars and ``ferkit predict --json`` show the same numbers.

A :class:`Predictor` owns one :class:`~ferkit.face.pipeline.FacePipeline`, whose mediapipe graphs
are bound to one thread: make one Predictor per thread.

Speed (issue 14): the network runs in ONNX Runtime where it is installed (``engine="auto"``, see
:func:`choose_engine`), and a frame's few faces run with **one** intra-op thread
(``Predictor(threads=1)``, :func:`intra_op_threads`): at batch 1 more threads gain nothing, and
with one core busy elsewhere torch's default of one thread per core made a 5 ms TFE-JL forward
take 258 ms (spin-waiting threads). Bigger batches (``ferkit eval``) run with whatever the caller
set.
"""
from __future__ import annotations

import logging
import pickle
import time
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from ferkit.data.images import ImageReadError, read_image  # noqa: F401 - ImageReadError: what predict_file raises
from ferkit.errors import UsageError
from ferkit.face.types import DetectedFace, FacePath, left_to_right
from ferkit.models.defaults import DEFAULT_WEIGHTS
from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing, Weights, check_tta, crops_to_tensor, load_weights, to_model_input

#: inference engines: ``auto`` = ONNX Runtime when it can serve the request, else torch
ENGINES = ("auto", "torch", "onnx", "onnx-int8")
#: what a request may need beyond class scores and identity features (torch-only: not in the ONNX export)
TORCH_ONLY_NEEDS = ("gates", "synthesis")
#: forwards of at most this many crops (a frame's faces and their mirrors) run with ``Predictor.threads``;
#: larger batches (evaluation) keep the caller's thread setting
SMALL_BATCH = 16

log = logging.getLogger(__name__)
_SAID: set[str] = set()


def _say_once(message: str, level: int = logging.INFO) -> None:
    """Log ``message`` the first time only: a fallback is worth one line, not one per frame."""
    if message not in _SAID:
        _SAID.add(message)
        log.log(level, message)


@contextmanager
def intra_op_threads(n: Optional[int]) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the caller's setting.

    ``torch.set_num_threads`` sets the calling thread's OpenMP/MKL pool size (and the default of
    threads that have not run torch yet): setting and restoring it around a forward in the same
    thread leaves every other thread, and the caller's own later work, as it was. ``None`` leaves
    the setting alone. Setting the same value is skipped (changing it clears oneDNN's primitive
    cache, so toggling on every frame is avoided when the process already runs with ``n``).
    """
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    n = max(1, int(n))
    if n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def onnxruntime_available() -> Optional[str]:
    """None when ONNX Runtime (and onnx, for exporting) import; else why not, in words."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        return f"onnxruntime is not installed ({exc.name or exc}); pip install 'ferkit[onnx]' for the faster engine"
    return None


def choose_engine(requested: str, model: Any, device: torch.device,
                  needs: Optional[Iterable[str]] = None) -> tuple[str, Optional[str]]:
    """(engine to use, why it is not the one requested, or None) for a request.

    ``auto`` picks ONNX Runtime unless: the device is not the CPU (torch runs on the GPU), the
    request ``needs`` gate maps or synthesis (not in the ONNX export), ``needs`` is None (not
    said) and the model offers gates or synthesis (a FERSNet predictor keeps all it can do), or
    onnxruntime is missing. ``torch`` / ``onnx`` / ``onnx-int8`` are taken as asked.
    """
    if requested not in ENGINES:
        raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {requested!r}")
    if requested != "auto":
        return requested, None
    if device.type != "cpu":
        return "torch", f"device {device.type}: torch runs on the GPU (ONNX Runtime is used on the CPU)"
    wanted = set(needs or ())
    unknown = wanted - set(TORCH_ONLY_NEEDS)
    if unknown:
        raise ValueError(f"needs may hold {', '.join(TORCH_ONLY_NEEDS)}, not {', '.join(sorted(unknown))}")
    if needs is None:
        offered = {k for k in TORCH_ONLY_NEEDS if getattr(model, f"has_{k}", False)}
        if offered:
            return "torch", (f"the model offers {' and '.join(sorted(offered))}, which the ONNX export lacks, so the "
                             "torch engine is used (pass needs=() to run scores only in ONNX Runtime)")
    if wanted:
        return "torch", (f"{' and '.join(sorted(wanted))} requested: the ONNX export holds the recognition path "
                         "only, so the torch engine is used")
    missing = onnxruntime_available()
    if missing:
        return "torch", missing
    return "onnx", None


def faces_in_photos(paths: Sequence[Union[str, Path]], preprocessing: Preprocessing, *, all_faces: bool = True,
                    whole_image: bool = False, no_face_hint: str = "",
                    max_faces: int = 10) -> list[tuple[Path, list[Any]]]:
    """(photo, its aligned faces cut in ``preprocessing``'s crop style, left to right) per photo; a
    folder among ``paths`` stands for its pictures, as in ``ferkit predict``.

    One door for the commands that take photos rather than a stream (``ferkit synthesize``,
    ``ferkit eval-synthesis --photos``): one face pipeline for all photos; ``all_faces=False`` keeps
    the largest face, the subject of the picture. A photo named without a face is a
    :class:`~ferkit.errors.UsageError` naming it, followed by ``no_face_hint``; a folder's faceless
    pictures come back with no faces (a folder of photos holds some without one), and no face at all
    is an error.
    """
    from ferkit.data.images import expand_image_paths
    from ferkit.face.pipeline import FacePipeline

    named = {Path(p) for p in paths if not Path(p).is_dir()}
    out: list[tuple[Path, list[Any]]] = []
    with FacePipeline(max_faces=max_faces) as pipeline:
        for path in expand_image_paths(paths):
            faces = pipeline.process(read_image(path), preprocessing, whole_image=whole_image)
            if not faces and path in named:  # a picture the user named: say so; a folder's: skip it
                raise UsageError(f"{path}: no face found" + (f"; {no_face_hint}" if no_face_hint else ""))
            if faces and not all_faces:
                faces = [max(faces, key=lambda f: f.face.box[2] * f.face.box[3])]
            out.append((path, left_to_right(faces, box=lambda f: f.face.box)))
    if not any(faces for _, faces in out):
        raise UsageError(f"no face found in {', '.join(str(p) for p in paths)}"
                         + (f"; {no_face_hint}" if no_face_hint else ""))
    return out


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


@dataclass
class ScoredFaces:
    """A frame's faces scored by one :class:`Predictor` (:meth:`Predictor.score_faces`)."""

    #: the faces after the face path's check (a re-detected face replaces its followed one)
    faces: list[DetectedFace]
    #: per preprocessing (the predictor's own, then the ``also`` ones), one model-input crop per face
    crops: dict[Preprocessing, list[np.ndarray]]
    #: class probabilities ``[F, K]`` (float64) and the identity feature ``[F, D]`` when the model has one
    probs: np.ndarray
    identity: Optional[np.ndarray]
    #: indices of the faces that were detected again, aligned again and scored again
    changed: list[int]


class Predictor:
    """A model with its preprocessing and a face pipeline, ready for images or crops.

    ``weights``: a shipped name (``resources/weights/<name>.json``), a card path, or a training
    checkpoint path. ``device``: ``auto`` (CUDA when present) / ``cpu`` / ``cuda``.
    ``pipeline``: an existing face pipeline (anything with ``detect`` and ``align``, e.g. a
    :class:`~ferkit.face.pipeline.TrackedFacePipeline` for video streams), made lazily otherwise so
    that predicting on crops never imports mediapipe.
    ``engine``: ``auto`` (default: ONNX Runtime on the CPU where installed, see
    :func:`choose_engine`, with the int8 file shipped beside the weights when it was validated
    within 0.5 points, see :func:`ferkit.export.onnx.shipped_int8`; :attr:`engine` says what runs,
    :attr:`engine_reason` why it is not what was asked, :attr:`engine_note` which file), ``torch``,
    ``onnx``, or ``onnx-int8`` (the shipped int8 file, or static int8 quantised here on the face
    crops in ``calibration``, default FER2013Valid of the shared data).
    ``needs``: what the caller will ask beyond scores (``"gates"``, ``"synthesis"``); None = all
    the model offers. Gate maps always come from the torch model (:attr:`torch_model`).
    ``threads``: intra-op threads of forwards of up to :data:`SMALL_BATCH` crops (a frame's faces):
    1 by default (see the module docstring); None uses the caller's setting. Larger batches always
    use the caller's setting. torch's setting is restored after every forward.
    ``tta``: ``"flip"`` scores each crop and its mirror in one batch and averages the class
    probabilities; ``None`` (default) uses the weights' card (the setting its metrics were
    measured with), ``"none"`` switches it off.
    ``onnx_file``: an exported file of these weights to run instead of choosing an engine (how
    ``ferkit eval --onnx`` judges an int8 file); its classes and preprocessing must be the card's.
    """

    def __init__(self, weights: Union[str, Path] = DEFAULT_WEIGHTS, device: Union[str, torch.device] = "auto",
                 max_faces: int = 5, min_confidence: float = 0.5, pipeline: Any = None, engine: str = "auto",
                 tta: Optional[str] = None, threads: Optional[int] = 1, needs: Optional[Iterable[str]] = None,
                 calibration: Union[str, Path, None] = None, onnx_file: Union[str, Path, None] = None):
        if engine not in ENGINES:
            raise UsageError(f"--engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        try:
            loaded = load_weights(weights, device)
        except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile) as exc:
            raise UsageError(f"{weights}: cannot be read as ferkit weights or a training checkpoint "
                             f"({type(exc).__name__}: {exc})") from None
        #: the torch module (always loaded: training engine, gate maps, synthesis, the fallback)
        self.torch_model = loaded.model
        #: what runs the recognition forward: the torch module or an :class:`~ferkit.export.onnx.OnnxModel`
        self.model: Any = loaded.model
        self.weights: Weights = loaded.weights
        self.device = loaded.device
        self.preprocessing: Preprocessing = self.weights.preprocessing
        self.classes: list[str] = list(self.weights.classes)
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self.threads = None if threads is None else max(1, int(threads))
        self._pipeline = pipeline
        n_out = getattr(self.model, "num_classes", None)
        if n_out is not None and n_out != len(self.classes):
            raise UsageError(f"{self.weights.source}: the model has {n_out} outputs but the card lists "
                             f"{len(self.classes)} classes")
        self.tta = check_tta(self.weights.tta if tta is None else tta)
        self.engine_requested = engine
        chosen, reason = choose_engine(engine, self.torch_model, self.device, needs)
        self.engine = "torch"
        #: why :attr:`engine` is not what was asked (None when it is)
        self.engine_reason: Optional[str] = reason
        #: what the engine runs, in words (e.g. which int8 file and what it costs in accuracy)
        self.engine_note: Optional[str] = None
        if onnx_file is not None:
            self._use_onnx_file(onnx_file)
        elif chosen in ("onnx", "onnx-int8"):
            try:
                self._use_onnx(int8=chosen == "onnx-int8", calibration=calibration, auto=engine == "auto")
            except Exception as exc:  # noqa: BLE001 - auto falls back; an explicit request reports the failure
                if engine != "auto":
                    raise
                self.engine_reason = f"ONNX export/session failed ({type(exc).__name__}: {exc}); using torch"
        if self.engine_reason:
            level = logging.WARNING if self.engine_reason.startswith(("onnxruntime is not", "ONNX export")) \
                else logging.INFO
            _say_once(f"{self.weights.name}: engine {self.engine} (asked {engine}): {self.engine_reason}", level)

    def _use_onnx(self, int8: bool, calibration: Union[str, Path, None], auto: bool = False) -> None:
        """Run the recognition path in ONNX Runtime. ``auto`` also takes a shipped int8 file
        (:func:`~ferkit.export.onnx.shipped_int8`: made from these weights, validated within 0.5 points)."""
        from ferkit.export.onnx import OnnxModel, cached_export, cached_int8_export, shipped_int8  # lazy: optional

        source = self.weights.source
        if source is None:
            raise UsageError("these weights have no file to export to ONNX")
        shipped = None
        if auto or (int8 and calibration is None):  # a shipped, validated int8 file first
            try:
                shipped, self.engine_note = shipped_int8(self.weights)
            except Exception as exc:  # noqa: BLE001 - a damaged int8 file must not cost the float engine
                shipped, self.engine_note = None, f"shipped int8 file unusable ({type(exc).__name__}: {exc})"
        if auto:
            int8 = shipped is not None
            path = shipped or cached_export(source)
        elif int8:
            path = shipped or cached_int8_export(source, calibration)
            if shipped is None:
                self.engine_note = f"int8 quantised here from {calibration or 'the default calibration crops'}"
        else:
            path = cached_export(source)
        self.model = OnnxModel(path, threads=self.threads or torch.get_num_threads())
        self.device = torch.device("cpu")
        self.engine = "onnx-int8" if int8 else "onnx"

    def _use_onnx_file(self, path: Union[str, Path]) -> None:
        """Run the recognition path from an exported file of these weights (e.g. an int8 file being
        judged by ``ferkit eval``); refused when its classes or preprocessing are not the card's."""
        from ferkit.export.onnx import OnnxModel  # lazy: optional

        # a file under evaluation scores whole batches: every thread the caller allows
        model = OnnxModel(path, threads=torch.get_num_threads())
        if list(model.weights.classes) != self.classes or model.preprocessing != self.preprocessing:
            raise UsageError(f"{path} was not exported from {self.weights.name} (other classes or preprocessing)")
        self.model, self.device = model, torch.device("cpu")
        self.engine = "onnx-int8" if model.quantized else "onnx"
        self.engine_reason = None

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
    def forward_threads(self, n_crops: int) -> Optional[int]:
        """Intra-op threads a forward of ``n_crops`` network inputs runs with (None: the caller's)."""
        return self.threads if n_crops <= SMALL_BATCH else None

    @torch.inference_mode()
    def predict_tensor(self, batch: torch.Tensor, return_gates: bool = False) -> ModelOutput:
        """uint8 ``[N, C, H, W]`` crops -> the model's :class:`ModelOutput` (tensors on ``self.device``).

        All crops go through the network in one forward (with their mirrors when ``tta`` is flip).
        Crops of another size or channel count are converted per :func:`to_model_input`.
        ``return_gates`` runs the torch model whatever the engine (gate maps are torch-only).
        """
        model = self.torch_model if return_gates else self.model
        device = next(self.torch_model.parameters()).device if return_gates else self.device
        x = to_model_input(batch.to(device), self.preprocessing)
        n = x.shape[0]
        if self.tta == "flip":
            x = torch.cat([x, x.flip(-1)])
        threads = self.forward_threads(x.shape[0])
        if self.engine != "torch" and not return_gates:
            out = model(x, threads=threads or torch.get_num_threads())
        else:
            with intra_op_threads(threads):
                out = model(x, return_gates=True) if return_gates else model(x)
        return merge_flip_outputs(out, n) if self.tta == "flip" else out

    def probabilities(self, batch: torch.Tensor) -> np.ndarray:
        """``[N, K]`` float64 class probabilities of uint8 crops (the numbers every view shows)."""
        return self.predict_tensor(batch).probabilities.double().cpu().numpy()

    # ---- images ----------------------------------------------------------------------------------
    def score_faces(self, rgb: np.ndarray, faces: Sequence[DetectedFace], pipe: FacePath,
                    also: Iterable[Preprocessing] = (), timings: Optional[dict[str, float]] = None) -> ScoredFaces:
        """Score a frame's detected ``faces``: align, forward, and let ``pipe`` detect again the followed
        faces whose label is ambiguous (:meth:`FacePath.check`), which are aligned and scored again.

        The one frame-scoring loop: :meth:`predict_image`, the app's frame analyzer and ``ferkit bench
        --only pipeline`` all call it, so the bench times what the app runs. ``also``: further
        preprocessings to crop every face for (other models, the explainers), re-cropped with the rest.
        ``timings`` (seconds) gets ``align``, ``infer`` and ``verify`` (the re-detection and re-scoring).
        """
        preps = [self.preprocessing] + [p for p in dict.fromkeys(also) if p != self.preprocessing]
        t0 = time.perf_counter()
        faces = list(faces)
        crops = {p: [np.asarray(pipe.align(rgb, f, p)) for f in faces] for p in preps}
        t1 = time.perf_counter()
        probs = np.zeros((0, len(self.classes)))
        ident: Optional[np.ndarray] = None
        changed: list[int] = []
        if faces:
            out = self.predict_tensor(crops_to_tensor(crops[self.preprocessing]))
            probs = out.probabilities.double().cpu().numpy()
            ident = out.identity.float().cpu().numpy() if out.identity is not None else None
        t2 = time.perf_counter()
        if faces:
            faces, changed = pipe.check(rgb, faces, probs)
        if changed:
            for i in changed:
                for p in preps:
                    crops[p][i] = np.asarray(pipe.align(rgb, faces[i], p))
            again = self.predict_tensor(crops_to_tensor([crops[self.preprocessing][i] for i in changed]))
            probs[changed] = again.probabilities.double().cpu().numpy()
            if ident is not None and again.identity is not None:
                ident[changed] = again.identity.float().cpu().numpy()
        if timings is not None:
            timings.update(align=t1 - t0, infer=t2 - t1, verify=time.perf_counter() - t2)
        return ScoredFaces(faces, crops, probs, ident, changed)

    def predict_image(self, image: np.ndarray, whole_image: bool = False,
                      fallback_whole_image: bool = False, pipeline: Optional[FacePath] = None) -> ImageResult:
        """Every face in ``image`` (RGB uint8 ``[H, W, 3]``, or gray ``[H, W]``) in one forward pass.

        ``whole_image=True`` scores the whole picture as one face (for pictures that already are
        face crops, like FER+ PNGs). ``fallback_whole_image=True`` does that only when no face is
        found. No face and no fallback -> an :class:`ImageResult` with no faces (never an exception).
        ``pipeline``: the face pipeline for this call instead of the predictor's own (e.g. a
        :class:`~ferkit.face.pipeline.TrackedFacePipeline` following the faces of a video).
        """
        from ferkit.face.align import whole_image_face
        from ferkit.face.pipeline import as_rgb

        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        if not whole_image:
            pipe = self.pipeline if pipeline is None else pipeline
            # scored in detection order (a followed pipeline's check indexes its faces so), then
            # numbered left to right
            scored = self.score_faces(rgb, pipe.detect(rgb)[: self.max_faces], pipe)
            if scored.faces or not fallback_whole_image:
                results = self._face_results(scored.faces, scored.crops[self.preprocessing], scored.probs,
                                             scored.identity, detected=True)
                return ImageResult(left_to_right(results), image_size=(w, h))
        wf = whole_image_face(rgb, self.preprocessing.input_size, self.preprocessing.grayscale)
        out = self.predict_tensor(crops_to_tensor([wf.crop]))
        ident = out.identity.float().cpu().numpy() if out.identity is not None else None
        return ImageResult(self._face_results([wf.face], [wf.crop], out.probabilities.double().cpu().numpy(), ident,
                                              detected=False), image_size=(w, h), whole_image=whole_image)

    def _face_results(self, faces: Sequence[DetectedFace], crops: Sequence[np.ndarray], probs: np.ndarray,
                      ident: Optional[np.ndarray], detected: bool) -> list[FaceResult]:
        return [FaceResult(box=tuple(int(v) for v in face.box),  # type: ignore[arg-type]
                           scores={c: float(p[j]) for j, c in enumerate(self.classes)},
                           label=self.classes[int(p.argmax())], detection_score=float(face.score), crop=crop,
                           identity=None if ident is None else ident[i], left_eye=face.left_eye,
                           right_eye=face.right_eye, detected=detected)
                for i, (face, crop, p) in enumerate(zip(faces, crops, probs))]

    def predict_file(self, path: Union[str, Path], whole_image: bool = False,
                     fallback_whole_image: bool = False) -> ImageResult:
        return self.predict_image(read_image(path), whole_image=whole_image,
                                  fallback_whole_image=fallback_whole_image)
