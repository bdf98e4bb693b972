"""One frame in, every face's boxes, ids, scores, identity feature and identity decision out.

Used by the live inference worker, the image inspector, the self-test and the benchmark, so the
numbers on screen are the numbers those report. Models run through the library's
:class:`ferkit.inference.Predictor` (its preprocessing, test-time augmentation and forward), never a
copy of them. Each stage is timed (detect, align, infer, identity) so the status bar can show where
the time goes. One analyzer (and so one ``FacePipeline``) per thread: mediapipe graphs are not
shared across threads.

Identity: the feature that decides "same person?" is the :class:`IdentityChoice` the worker was
configured with (the best calibrated identity weights, not necessarily the expression model); it
runs once per frame on all faces in one batch.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from ferkit.face.tracking import FaceTracker, Smoother, track_colour
from ferkit.inference import crops_to_tensor
from ferkit.models.outputs import ModelOutput
from ferkit.models.weights import Preprocessing

from app.core.enrolment import EnrolmentStore
from app.core.identity import IdentityChoice, IdentityMatch, rematch
from app.core.models import ModelCache, ModelHandle


@dataclass
class ModelScores:
    model: str
    classes: list[str]
    raw: np.ndarray  # probabilities of this frame
    smoothed: np.ndarray  # after the track's temporal smoothing (== raw when off / no tracking)

    @property
    def label(self) -> str:
        return self.classes[int(np.argmax(self.smoothed))]

    def as_dict(self, smoothed: bool = False) -> dict[str, float]:
        values = self.smoothed if smoothed else self.raw
        return {c: float(v) for c, v in zip(self.classes, values)}


@dataclass
class TrackedFace:
    """One followed face of an analysed frame: its track, every model's scores and the identity decision.

    Not :class:`ferkit.inference.FaceResult` (one model's answer for one face): the app adds tracking,
    several models and identity around the library's per-face result.
    """

    index: int
    track_id: int
    colour: tuple[int, int, int]
    box: tuple[int, int, int, int]
    det_score: float
    whole_image: bool = False
    #: the library's detection (landmarks, eyes) for re-aligning for another model
    detection: Any = None
    #: aligned uint8 crops keyed by the preprocessing that made them
    crops: dict[Preprocessing, np.ndarray] = field(default_factory=dict)
    #: scores per model display name; the primary model first
    scores: dict[str, ModelScores] = field(default_factory=dict)
    #: feature of the identity weights in use (``FrameResult.identity.key``); None without one
    identity: Optional[np.ndarray] = None
    similarities: dict[str, float] = field(default_factory=dict)
    #: the decision: a name at or above the threshold, "unknown" below; None when nothing is decided
    match: Optional[IdentityMatch] = None


@dataclass
class FrameResult:
    frame: np.ndarray  # RGB uint8 the results refer to
    faces: list[TrackedFace]
    primary: Optional[str]
    timings_ms: dict[str, float]
    frame_index: int = -1
    captured_at: float = 0.0  # time.perf_counter() when the frame was read
    note: str = ""
    #: the identity feature and threshold the faces' decisions were made with
    identity: IdentityChoice = field(default_factory=IdentityChoice)


def pick_face(result: Optional[FrameResult], selected_id: Optional[int]) -> Optional[TrackedFace]:
    """The selected track's face, else the largest face of the frame."""
    if result is None or not result.faces:
        return None
    for f in result.faces:
        if f.track_id == selected_id:
            return f
    return max(result.faces, key=lambda f: f.box[2] * f.box[3])


def whole_image_crop(rgb: np.ndarray, pp: Preprocessing) -> np.ndarray:
    """The whole picture as a model input ("score the whole image"), as ``ferkit predict`` does it."""
    from ferkit.face.align import whole_image_face

    return np.asarray(whole_image_face(rgb, pp.input_size, pp.grayscale).crop)


#: live face-detector choices -> FacePipeline options (measured CPU per 640x360 frame, 1 face:
#: auto 13.8 ms, near 8.3 ms, fast 1.8 ms)
DETECTORS: dict[str, dict] = {
    "auto": {"model_selection": "auto"},  # near + far range, face mesh: group photos, people far away
    "near": {"model_selection": "near"},  # within ~2 m (webcam, close-ups), face mesh
    "fast": {"model_selection": "near", "landmarks": False},  # detector eye points only
}


#: live video: the face detector runs on every this many frames (1 = every frame)
LIVE_DETECT_EVERY = 5
#: live video: a tracked face keeps its identity feature for this many frames before it is computed
#: again. A person does not change between frames, and the identity feature (an ensemble of nets) is
#: the costliest per-face step after detection; similarities and decisions are still made every frame.
IDENTITY_REFRESH_FRAMES = 5


class FrameAnalyzer:
    """Detect -> track -> align -> classify (primary + comparison models) -> identity similarity."""

    def __init__(self, cache: Optional[ModelCache] = None, *, max_faces: int = 5, min_confidence: float = 0.5,
                 device: str = "auto", track: bool = True, detector: str = "auto",
                 detect_every: int = LIVE_DETECT_EVERY) -> None:
        from ferkit.face.pipeline import FacePipeline, TrackedFacePipeline

        if detector not in DETECTORS:
            raise ValueError(f"detector must be one of {', '.join(DETECTORS)}, not {detector!r}")
        self.detector = detector
        options = DETECTORS[detector]
        #: live frames: the detector the user picked, run every ``detect_every`` frames (and when a
        #: face is lost), faces followed by optical flow in between -- detection is the largest stage
        #: of the live loop (``ferkit bench --only pipeline agreement`` measures speed and label
        #: agreement); still images: always the full detector on every image, exactly as ``ferkit
        #: predict`` (both ranges + face mesh) so their numbers agree and they never disturb the stream
        self.live_pipeline = TrackedFacePipeline(max_faces=max_faces, min_confidence=min_confidence,
                                                 model_selection=options["model_selection"],
                                                 keyframe_mesh=options.get("landmarks", True),
                                                 detect_every=detect_every)
        self.pipeline = FacePipeline(max_faces=max_faces, min_confidence=min_confidence)
        self.cache = cache or ModelCache()
        self.device = device
        self.tracker = FaceTracker() if track else None
        self.primary: Optional[ModelHandle] = None
        self.comparison: list[ModelHandle] = []
        self.enrolments: Optional[EnrolmentStore] = None
        self.identity = IdentityChoice()
        self.identity_handle: Optional[ModelHandle] = None
        #: extra preprocessings to align for (e.g. the FERSNet panels' input)
        self.extra_preprocessing: set[Preprocessing] = set()
        #: live frames analysed, and per track id the frame its identity feature was computed on and the feature
        self._live_frames = 0
        self._track_identity: dict[int, tuple[int, np.ndarray]] = {}

    # ---- configuration -------------------------------------------------------------------
    def set_models(self, primary: Optional[str], comparison: Sequence[str] = ()) -> None:
        self.primary = self.cache.get(primary, self.device) if primary else None
        self.comparison = [self.cache.get(k, self.device) for k in comparison if k and k != primary]

    def set_identity(self, choice: IdentityChoice) -> None:
        """Use ``choice``'s weights for identity features (loaded once here, in the worker thread)."""
        self.identity = choice
        self.identity_handle = self.cache.get(choice.key, self.device) if choice.active else None
        self._track_identity.clear()

    def set_smoother(self, smoother: Smoother) -> None:
        if self.tracker is not None:
            self.tracker.set_smoother(smoother)

    def handles(self) -> list[ModelHandle]:
        return ([self.primary] if self.primary else []) + list(self.comparison)

    # ---- analysis ---------------------------------------------------------------------------
    def analyze(self, rgb: np.ndarray, *, whole_image_if_no_face: bool = False, frame_index: int = -1,
                captured_at: float = 0.0, track: bool = True) -> FrameResult:
        """``track=False`` (still images): ids are 1..n in detection order and nothing is smoothed."""
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        pipe = self.live_pipeline if track else self.pipeline
        detections = list(pipe.detect(rgb))
        t1 = time.perf_counter()
        timings["detect"] = (t1 - t0) * 1e3
        whole = False
        note = ""
        if not detections and whole_image_if_no_face:
            whole = True
            note = "no face found: scores are of the whole image"
        if self.tracker is not None and track and not whole:
            tracks = self.tracker.update([d.box for d in detections])
        else:
            tracks = []
        faces: list[TrackedFace] = []
        if whole:
            from ferkit.face.align import whole_image_face

            box = tuple(int(v) for v in whole_image_face(rgb, 8, True).face.box)
            faces.append(TrackedFace(0, 0, track_colour(0), box, float("nan"), whole_image=True))
        for i, det in enumerate(detections):
            tid = tracks[i].id if tracks else i + 1
            colour = tracks[i].colour if tracks else track_colour(i + 1)
            faces.append(TrackedFace(i, tid, colour, tuple(int(v) for v in det.box), float(det.score), detection=det))
        # crops once per distinct preprocessing
        pps = {h.preprocessing for h in self.handles()} | set(self.extra_preprocessing)
        if self.identity_handle is not None:
            pps.add(self.identity_handle.preprocessing)
        primary_identity = None
        scored = None
        step: dict[str, float] = {}
        if faces and not whole and self.primary is not None:
            # the library's frame-scoring call (the one ferkit bench times): align for every model,
            # score with the primary, detect again the followed faces whose label is ambiguous
            scored = self.primary.predictor.score_faces(rgb, [f.detection for f in faces], pipe, also=pps,
                                                        timings=step)
            for i in scored.changed:
                found = scored.faces[i]
                faces[i].detection, faces[i].det_score = found, float(found.score)
                faces[i].box = tuple(int(v) for v in found.box)
            for k, face in enumerate(faces):
                face.crops = {pp: scored.crops[pp][k] for pp in pps}
            primary_identity = scored.identity
        else:
            for face in faces:
                for pp in pps:
                    face.crops[pp] = whole_image_crop(rgb, pp) if face.whole_image else \
                        np.asarray(pipe.align(rgb, face.detection, pp))
        t2 = time.perf_counter()
        timings["align"] = step["align"] * 1e3 if scored is not None else (t2 - t1) * 1e3
        if faces:
            for handle in self.handles():
                if handle is self.primary and scored is not None:
                    probs = scored.probs
                else:
                    out = predict(handle, [f.crops[handle.preprocessing] for f in faces])
                    probs = out.probabilities.double().cpu().numpy()
                    if handle is self.primary and out.identity is not None:
                        primary_identity = out.identity.float().cpu().numpy()
                for k, face in enumerate(faces):
                    raw = probs[k]
                    smoothed = raw
                    if tracks and self.tracker is not None:
                        smoothed = tracks[k].smooth(handle.key, raw, self.tracker.smoother)
                    face.scores[handle.name] = ModelScores(handle.name, handle.classes, raw, smoothed)
        t3 = time.perf_counter()
        timings["infer"] = (t3 - t1) * 1e3 - timings["align"]
        if tracks:
            self._live_frames += 1
        self._identify([f for f in faces if not f.whole_image], primary_identity, reuse=bool(tracks))
        timings["identity"] = (time.perf_counter() - t3) * 1e3
        return FrameResult(rgb, faces, self.primary.name if self.primary else None, timings,
                           frame_index=frame_index, captured_at=captured_at, note=note, identity=self.identity)

    def _identify(self, faces: list[TrackedFace], primary_identity: Optional[np.ndarray], reuse: bool = False) -> None:
        """Identity feature of every detected face, its similarities and the decision.

        ``reuse`` (tracked live frames): a face whose track got its feature fewer than
        :data:`IDENTITY_REFRESH_FRAMES` frames ago keeps it; the others are computed in one batch.
        """
        handle = self.identity_handle
        if handle is None or not faces:
            return
        if handle is self.primary and primary_identity is not None:
            features = list(primary_identity)  # the expression model's own calibrated feature: already computed
        else:
            recent = self._track_identity if reuse else {}
            fresh = [f for f in faces if f.track_id not in recent
                     or self._live_frames - recent[f.track_id][0] >= IDENTITY_REFRESH_FRAMES]
            if fresh:
                out = predict(handle, [f.crops[handle.preprocessing] for f in fresh])
                if out.identity is None:
                    return
                for face, feature in zip(fresh, out.identity.float().cpu().numpy()):
                    recent[face.track_id] = (self._live_frames, feature)
            features = [recent[f.track_id][1] for f in faces]
            if reuse:  # forget the tracks that are gone
                self._track_identity = {f.track_id: recent[f.track_id] for f in faces}
        for face, feature in zip(faces, features):
            face.identity = feature
        if self.enrolments is not None:  # the same matching a gallery change redoes (rematch)
            rematch(faces, self.enrolments, self.identity)

    def reset_tracking(self) -> None:
        """A new source or a seek: forget track ids and followed faces (the next frame is detected)."""
        if self.tracker is not None:
            self.tracker.reset()
        self.live_pipeline.reset()
        self._track_identity.clear()

    def close(self) -> None:
        for pipe in {id(self.pipeline): self.pipeline, id(self.live_pipeline): self.live_pipeline}.values():
            close = getattr(pipe, "close", None)
            if callable(close):
                close()


def face_picture(rgb: np.ndarray, box: Sequence[int], margin: float = 0.6, max_side: int = 320) -> np.ndarray:
    """The face with a margin around it (what enrolment stores so the face can be re-detected)."""
    h, w = rgb.shape[:2]
    x, y, bw, bh = (int(v) for v in box)
    mx, my = int(bw * margin), int(bh * margin)
    x0, y0 = max(0, x - mx), max(0, y - my)
    x1, y1 = min(w, x + bw + mx), min(h, y + bh + my)
    pic = rgb[y0:y1, x0:x1]
    side = max(pic.shape[:2])
    if side > max_side:
        scale = max_side / side
        pic = cv2.resize(pic, (max(1, int(pic.shape[1] * scale)), max(1, int(pic.shape[0] * scale))),
                         interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(pic)


def predict(handle: ModelHandle, crops: Sequence[np.ndarray]) -> ModelOutput:
    """Aligned uint8 crops through the handle's library Predictor (preprocessing, TTA and forward are its own)."""
    return handle.predictor.predict_tensor(crops_to_tensor([np.asarray(c) for c in crops]))


def identity_of_picture(analyzer: FrameAnalyzer, handle: ModelHandle, picture: np.ndarray) -> Optional[np.ndarray]:
    """Identity feature of the largest face in ``picture`` (the whole picture if none is found)."""
    if not handle.has_identity:
        return None
    dets = list(analyzer.pipeline.detect(picture))
    pp = handle.preprocessing
    if dets:
        det = max(dets, key=lambda d: d.box[2] * d.box[3])
        crop = np.asarray(analyzer.pipeline.align(picture, det, pp))
    else:
        crop = whole_image_crop(picture, pp)
    out = predict(handle, [crop])
    return None if out.identity is None else out.identity[0].detach().float().cpu().numpy()


def refresh_enrolments(analyzer: FrameAnalyzer) -> int:
    """Give every enrolment a feature of the identity weights in use (computed from its stored picture)."""
    handle = analyzer.identity_handle
    if analyzer.enrolments is None or handle is None or not handle.has_identity:
        return 0
    return analyzer.enrolments.fill(handle.key, lambda pic: identity_of_picture(analyzer, handle, pic))
