"""Face detection + landmarks + alignment with mediapipe 0.10.21's solutions API (offline models).

Detection runs BlazeFace in both of its ranges: the short-range model (faces within ~2 m, webcam)
and the full-range model (up to ~5 m, group photos, where the short-range model misses faces:
on resources/samples/multi_face.jpg it finds 3 of the 5 people, the full-range model all 5).
``model_selection="auto"`` runs both and merges their boxes by non-maximum suppression.
Then face mesh (478 points with iris refinement) runs on an enlarged crop around each box, so small
faces in a big frame get the mesh's full resolution; the eye centres are the midpoints of the eye
corners (mesh points 33/133 and 362/263). If the mesh finds nothing in a crop, the detector's own
eye key points are used (``DetectedFace.source == "detector"``).

For video streams, :class:`TrackedFacePipeline` takes detection off the critical path (issue 14):
the detector (and face mesh, for the eyes) runs every few frames or when tracking confidence
drops, faces are followed by optical flow in between (:class:`~ferkit.face.tracking.FlowFollower`),
and the mesh runs on the other frames only for callers that ask for landmarks. Without any mesh
(``keyframe_mesh=False``) the detector's eye key points align the crops.

Mediapipe graphs are not thread-safe: a :class:`FacePipeline` binds to the first thread that uses
it; make one per thread (it is cheap) and ``close()`` it (or use ``with``).
"""
from __future__ import annotations

import threading
from dataclasses import replace
from typing import Any, Optional, Union

import cv2
import numpy as np

from ferkit.errors import UsageError
from ferkit.face.align import align_face, whole_image_face
from ferkit.face.types import AlignedFace, DetectedFace

#: mesh indices of the eye corners: image-left eye (person's right) and image-right eye
LEFT_EYE_CORNERS = (33, 133)
RIGHT_EYE_CORNERS = (362, 263)
#: the enlarged square around a detection box that face mesh sees, and its pixel size
MESH_CONTEXT = 1.9
MESH_INPUT = 256
#: images smaller than this (e.g. 48x48 FER crops) are upscaled to it and padded before detection:
#: BlazeFace misses faces that fill a tiny frame edge to edge
SMALL_SIDE = 192


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ax2, ay2, bx2, by2 = a[0] + a[2], a[1] + a[3], b[0] + b[2], b[1] + b[3]
    iw = max(0.0, min(ax2, bx2) - max(a[0], b[0]))
    ih = max(0.0, min(ay2, by2) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def as_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 gray / RGB / RGBA -> contiguous uint8 RGB (what mediapipe needs)."""
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 1:
        image = cv2.cvtColor(image[:, :, 0], cv2.COLOR_GRAY2RGB)
    elif image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_RGBA2RGB)
    elif image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 image, got shape {image.shape}")
    return np.ascontiguousarray(image)


class FacePipeline:
    """Find faces, their landmarks and model-ready crops in RGB uint8 images.

    ``max_faces``: keep at most this many (highest score first); ``min_confidence``: detector
    threshold; ``model_selection``: ``"auto"`` (both ranges), ``"near"`` / 0 or ``"far"`` / 1;
    ``landmarks=False`` skips face mesh (detector eye points only; faster, less precise).
    """

    def __init__(self, max_faces: int = 5, min_confidence: float = 0.5,
                 model_selection: Union[str, int] = "auto", landmarks: bool = True) -> None:
        sel = {"near": 0, "far": 1, "auto": None, 0: 0, 1: 1}
        if model_selection not in sel:
            raise UsageError(f"model_selection must be auto, near or far, not {model_selection!r}")
        self.max_faces = max_faces
        self.min_confidence = min_confidence
        self.ranges = [0, 1] if sel[model_selection] is None else [sel[model_selection]]
        self.use_mesh = landmarks
        self._detectors: dict[int, object] = {}
        self._mesh: Optional[object] = None
        self._thread: Optional[int] = None
        self._closed = False

    # ---- lifecycle --------------------------------------------------------------------------
    def _check_thread(self) -> None:
        if self._closed:
            raise RuntimeError("FacePipeline is closed")
        me = threading.get_ident()
        if self._thread is None:
            self._thread = me
        elif self._thread != me:
            raise RuntimeError("a FacePipeline is bound to the thread that first used it "
                               "(mediapipe graphs are not thread-safe): make one per thread")

    def _detector(self, model: int):
        if model not in self._detectors:
            import mediapipe as mp

            self._detectors[model] = mp.solutions.face_detection.FaceDetection(
                model_selection=model, min_detection_confidence=self.min_confidence)
        return self._detectors[model]

    def _face_mesh(self):
        if self._mesh is None:
            import mediapipe as mp

            self._mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3)
        return self._mesh

    def close(self) -> None:
        for det in self._detectors.values():
            det.close()
        if self._mesh is not None:
            self._mesh.close()
        self._detectors.clear()
        self._mesh = None
        self._closed = True

    def __enter__(self) -> "FacePipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- detection --------------------------------------------------------------------------
    def _raw_detections(self, rgb: np.ndarray) -> list[tuple[tuple[float, float, float, float], float, np.ndarray]]:
        h, w = rgb.shape[:2]
        found = []
        for model in self.ranges:
            result = self._detector(model).process(rgb)
            for det in result.detections or []:
                bb = det.location_data.relative_bounding_box
                box = (bb.xmin * w, bb.ymin * h, bb.width * w, bb.height * h)
                kps = np.array([[k.x * w, k.y * h] for k in det.location_data.relative_keypoints], np.float32)
                found.append((box, float(det.score[0]), kps))
        found.sort(key=lambda f: -f[1])
        kept: list[tuple[tuple[float, float, float, float], float, np.ndarray]] = []
        for f in found:
            if all(_iou(f[0], k[0]) < 0.3 for k in kept):
                kept.append(f)
        return kept[: self.max_faces]

    def _mesh_points(self, rgb: np.ndarray, box: tuple[float, float, float, float]) -> Optional[np.ndarray]:
        x, y, w, h = box
        side = max(w, h) * MESH_CONTEXT
        cx, cy = x + w / 2.0, y + h / 2.0
        s = MESH_INPUT / side
        m = np.array([[s, 0.0, MESH_INPUT / 2.0 - 0.5 - s * (cx - 0.5)],
                      [0.0, s, MESH_INPUT / 2.0 - 0.5 - s * (cy - 0.5)]])
        flags = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        crop = cv2.warpAffine(rgb, m, (MESH_INPUT, MESH_INPUT), flags=flags, borderMode=cv2.BORDER_CONSTANT)
        result = self._face_mesh().process(np.ascontiguousarray(crop))
        if not result.multi_face_landmarks:
            return None
        lm = result.multi_face_landmarks[0].landmark
        pts = np.array([[p.x * MESH_INPUT, p.y * MESH_INPUT] for p in lm], dtype=np.float64)
        # crop continuous -> image continuous: X = (U - c) / s + (cx) with c the crop centre
        pts = (pts - MESH_INPUT / 2.0) / s + np.array([cx, cy])
        # the mesh must describe the face that was detected, not a neighbour inside the context
        mx, my = pts.mean(axis=0)
        if not (x <= mx <= x + w and y <= my <= y + h):
            return None
        return pts.astype(np.float32)

    def detect(self, image: np.ndarray, landmarks: Optional[bool] = None) -> list[DetectedFace]:
        """All faces (at most ``max_faces``, best first); an empty list when there is none.

        ``landmarks``: run face mesh for the eyes and the 478 points (None: the pipeline's
        ``landmarks`` setting); False uses the detector's 6 key points.

        Images whose shorter side is below :data:`SMALL_SIDE` (face crops such as FER2013's 48x48)
        are upscaled to it and padded by half that on every side (edge replication) for detection;
        the results are mapped back to the original image's coordinates.
        """
        self._check_thread()
        mesh = self.use_mesh if landmarks is None else bool(landmarks)
        rgb = as_rgb(image)
        h, w = rgb.shape[:2]
        if min(h, w) >= SMALL_SIDE:
            return self._detect(rgb, mesh)
        k = SMALL_SIDE / min(h, w)
        big = cv2.resize(rgb, (max(1, round(w * k)), max(1, round(h * k))), interpolation=cv2.INTER_CUBIC)
        pad = SMALL_SIDE // 2
        padded = cv2.copyMakeBorder(big, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        kx, ky = big.shape[1] / w, big.shape[0] / h
        back = lambda x, y: ((x - pad) / kx, (y - pad) / ky)  # noqa: E731
        out = []
        for f in self._detect(padded, mesh):
            x0, y0 = back(f.box[0], f.box[1])
            box = (int(round(x0)), int(round(y0)), int(round(f.box[2] / kx)), int(round(f.box[3] / ky)))
            pts = f.landmarks.astype(np.float64)
            pts = np.stack([(pts[:, 0] - pad) / kx, (pts[:, 1] - pad) / ky], axis=1).astype(np.float32)
            out.append(DetectedFace(box=box, score=f.score, landmarks=pts,
                                    left_eye=back(*f.left_eye), right_eye=back(*f.right_eye),  # type: ignore[misc]
                                    source=f.source))
        return out

    def _detect(self, rgb: np.ndarray, mesh: bool) -> list[DetectedFace]:
        return [self._face(rgb, box, score, kps, mesh) for box, score, kps in self._raw_detections(rgb)]

    def _face(self, rgb: np.ndarray, box: tuple[float, float, float, float], score: float, kps: np.ndarray,
              mesh: bool) -> DetectedFace:
        """One raw detection as a :class:`DetectedFace`: face mesh in its (float) box, or the key points."""
        ibox = tuple(int(round(v)) for v in box)
        pts = self._mesh_points(rgb, box) if mesh else None
        if pts is not None:
            le = pts[list(LEFT_EYE_CORNERS)].mean(axis=0)
            re = pts[list(RIGHT_EYE_CORNERS)].mean(axis=0)
            source = "mesh"
        else:
            # detector key points: 0 = person's right eye (image left), 1 = person's left eye
            le, re, pts, source = kps[0], kps[1], kps, "detector"
        if le[0] > re[0]:  # strongly turned / upside-down face: keep "left" = image-left
            le, re = re, le
        return DetectedFace(box=ibox, score=score, landmarks=pts,  # type: ignore[arg-type]
                            left_eye=(float(le[0]), float(le[1])),
                            right_eye=(float(re[0]), float(re[1])), source=source)

    def redetect(self, image: np.ndarray, boxes: list[tuple[int, int, int, int]],
                 landmarks: Optional[bool] = None) -> list[Optional[DetectedFace]]:
        """The detector's face at each of ``boxes`` (best overlap, IoU >= 0.3; None where it found
        none), each exactly as :meth:`detect` gives it -- face mesh (``landmarks``) runs for those
        faces only, not for every face the detector found."""
        self._check_thread()
        mesh = self.use_mesh if landmarks is None else bool(landmarks)
        rgb = as_rgb(image)
        if min(rgb.shape[:2]) < SMALL_SIDE:  # the upscaled path: detect all, then pick
            found = self.detect(rgb, landmarks=mesh)
            raw = [(tuple(float(v) for v in f.box), f.score, f) for f in found]
        else:
            raw = self._raw_detections(rgb)  # type: ignore[assignment]
        out: list[Optional[DetectedFace]] = []
        used: set[int] = set()
        for want in boxes:
            overlaps = [(_iou(tuple(float(v) for v in want), r[0]), j) for j, r in enumerate(raw)  # type: ignore[arg-type]
                        if j not in used]
            best = max(overlaps, default=(0.0, -1))
            if best[0] < 0.3:
                out.append(None)
                continue
            used.add(best[1])
            box, score, extra = raw[best[1]]
            out.append(extra if isinstance(extra, DetectedFace) else self._face(rgb, box, score, extra, mesh))
        return out

    def add_landmarks(self, image: np.ndarray, face: DetectedFace) -> DetectedFace:
        """``face`` with face-mesh landmarks (478 points) and mesh eye centres, found in its box.

        For a face that was detected without the mesh or followed by optical flow, when a caller
        needs the landmarks after all; unchanged when the mesh finds no face there.
        """
        self._check_thread()
        rgb = as_rgb(image)
        pts = self._mesh_points(rgb, tuple(float(v) for v in face.box))  # type: ignore[arg-type]
        if pts is None:
            return face
        le, re = pts[list(LEFT_EYE_CORNERS)].mean(axis=0), pts[list(RIGHT_EYE_CORNERS)].mean(axis=0)
        if le[0] > re[0]:
            le, re = re, le
        return replace(face, landmarks=pts, left_eye=(float(le[0]), float(le[1])),
                       right_eye=(float(re[0]), float(re[1])), source="mesh")

    # ---- alignment --------------------------------------------------------------------------
    def align(self, image: np.ndarray, face: DetectedFace, preprocessing) -> np.ndarray:
        """The model-input crop of ``face`` per ``preprocessing`` (input_size, grayscale, alignment)."""
        return align_face(as_rgb(image), face, preprocessing.input_size, preprocessing.grayscale,
                          preprocessing.alignment).crop

    def check(self, image: np.ndarray, faces: list[DetectedFace],
              probabilities: Any) -> tuple[list[DetectedFace], list[int]]:
        """Nothing to detect again: this pipeline already detected every face on this frame
        (:meth:`TrackedFacePipeline.check` is the one that re-detects followed faces)."""
        return list(faces), []

    def process(self, image: np.ndarray, preprocessing, whole_image: bool = False) -> list[AlignedFace]:
        """Detect and crop every face; ``whole_image=True`` scores the image centre as one face
        instead (for pictures that already are face crops). No face -> empty list."""
        rgb = as_rgb(image)
        if whole_image:
            return [whole_image_face(rgb, preprocessing.input_size, preprocessing.grayscale)]
        return [align_face(rgb, f, preprocessing.input_size, preprocessing.grayscale, preprocessing.alignment)
                for f in self.detect(rgb)]


#: detector runs of :class:`TrackedFacePipeline` by default: every this many frames
DETECT_EVERY = 5
#: :meth:`TrackedFacePipeline.check`: a followed face whose top-2 scores are closer than this is
#: detected again on the same frame (on the sample video 0.1 re-detects about 9 % of the frames)
VERIFY_MARGIN = 0.1
#: ... unless it moved less than this many eye distances since its key frame (then its crop is the
#: key frame's to well under the face mesh's own ~0.6 % jitter)
VERIFY_MIN_MOTION = 0.005


class TrackedFacePipeline:
    """Faces of consecutive video frames with detection off the critical path.

    The detector (``model_selection``: both ranges by default, as :class:`FacePipeline`) runs on
    the first frame, every ``detect_every`` frames after, at once when a followed face is lost
    (its tracking confidence fell below the :class:`~ferkit.face.tracking.FlowFollower`'s floor,
    e.g. it turned away or left the picture), and on every frame while no face is followed (so a
    face that walks in is found at once). In between, faces are moved by optical flow: the crop
    follows the face, and a face that leaves stops being reported (its track then ends in a
    :class:`~ferkit.face.tracking.FaceTracker`).

    Eyes for alignment: with ``keyframe_mesh=True`` (default) face mesh runs on the detection
    frames only and its eye centres are followed by the flow in between (the crop style was
    calibrated on mesh eyes); with ``keyframe_mesh=False`` the detector's own eye key points are
    used and the mesh never runs (fastest: 8-10 ms a face saved on detection frames, but those
    points jitter by ~5 % of the eye distance, which moves the crop enough to flip the label of
    ambiguous frames: measured on the sample video with tfe-jl, 93.9 % of frames keep the label of
    mesh on every frame, against 97.0 % with mesh on the detection frames, where the reference
    itself keeps 97.7 % when its eye points move by 0.25 % of the eye distance; ``ferkit bench
    --only agreement``). ``detect(frame, landmarks=True)`` runs the mesh on this frame's faces for a
    caller that needs the 478 points (e.g. a landmarks panel) and follows its eyes from then on.

    Ambiguous labels (issue: agreement with detection on every frame): a followed crop is off the
    detected one by about 1 % of the eye distance (half of it the face mesh's own frame-to-frame
    jitter, which the detection frames carry and no flow can follow), harmless for a clear
    expression but enough to flip a label whose two best scores are close -- on the sample video
    (tfe-jl int8, detector every 5th frame) all 17 frames that disagreed with detection on every
    frame had a top-2 gap under 0.12 in the reference, 14 of them among its 53 frames under 0.1,
    and nearly all lay in the seconds where she cries; they did not cluster before a re-detection
    (6, 4, 2, 5 on the 1st to 4th followed frame). So after scoring a followed frame
    the caller runs :meth:`check`: faces whose top-2 gap is under ``verify_margin`` are detected
    again on this frame (detector + face mesh for those faces only), exactly as on a detection frame,
    and scored again; their flow restarts from there. 0 turns the check off. A face that has moved
    less than ``verify_min_motion`` eye distances since its key frame is not checked: its followed
    crop is the key frame's (a still image looped as a video re-detected all five faces of
    ``multi_face.jpg`` on every frame for nothing, 24 ms a frame).

    ``stats`` counts frames, detector runs, followed frames, losses (what the fast path saved) and
    ``verified``: faces detected again by :meth:`check`.
    Frames must come from one stream in order: call :meth:`reset` after a seek or a new source.
    The same ``align`` as :class:`FacePipeline`, so it is a drop-in ``pipeline`` for a Predictor.
    """

    def __init__(self, max_faces: int = 5, min_confidence: float = 0.5, model_selection: Union[str, int] = "auto",
                 detect_every: int = DETECT_EVERY, keyframe_mesh: bool = True,
                 follower: Optional[Any] = None, verify_margin: float = VERIFY_MARGIN,
                 verify_min_motion: float = VERIFY_MIN_MOTION) -> None:
        from ferkit.face.tracking import FlowFollower

        if detect_every < 1:
            raise UsageError(f"detect_every must be at least 1, got {detect_every}")
        self.detect_every = int(detect_every)
        self.max_faces = max_faces
        self.detector = FacePipeline(max_faces=max_faces, min_confidence=min_confidence,
                                     model_selection=model_selection, landmarks=keyframe_mesh)
        self.keyframe_mesh = keyframe_mesh
        self.follower = follower or FlowFollower()
        self.verify_margin = float(verify_margin)
        self.verify_min_motion = float(verify_min_motion)
        self._since_detection = 0
        self.stats = {"frames": 0, "detections": 0, "followed": 0, "lost": 0, "mesh": 0, "verified": 0}

    def reset(self) -> None:
        """Forget the followed faces: the next frame is detected afresh (new source, seek)."""
        self.follower.reset()
        self._since_detection = 0

    def close(self) -> None:
        self.detector.close()

    def __enter__(self) -> "TrackedFacePipeline":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def quality(self) -> list[float]:
        """Tracking confidence of each face of the last frame (1.0 on a detection frame)."""
        return list(self.follower.quality)

    def detect(self, image: np.ndarray, landmarks: bool = False) -> list[DetectedFace]:
        """The faces of this frame (the next of the stream): detected, or followed from the last one."""
        rgb = as_rgb(image)
        gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        self.stats["frames"] += 1
        faces: Optional[list[DetectedFace]] = None
        if self.follower.active and self._since_detection < self.detect_every - 1:
            faces = self.follower.step(gray)
            if faces is None:
                self.stats["lost"] += 1
            else:
                self.stats["followed"] += 1
                self._since_detection += 1
        if faces is None:
            faces = self.detector.detect(rgb)
            self.follower.seed(gray, faces)
            self._since_detection = 0
            self.stats["detections"] += 1
        if landmarks:
            for i, face in enumerate(faces):
                if face.source != "mesh":
                    faces[i] = self.detector.add_landmarks(rgb, face)
                    self.follower.reseed(i, faces[i])  # mesh-refined eyes of this frame
                    self.stats["mesh"] += 1
        return list(faces)

    def ambiguous(self, faces: list[DetectedFace], probabilities: Any) -> list[int]:
        """Indices of the followed faces (``source == "tracked"``) whose two best scores in
        ``probabilities`` (one row per face) are closer than ``verify_margin`` and that moved at
        least ``verify_min_motion`` since their key frame."""
        if self.verify_margin <= 0:
            return []
        motion = list(self.follower.motion)
        out = []
        for i, (face, p) in enumerate(zip(faces, probabilities)):
            top = np.sort(np.asarray(p, dtype=np.float64).ravel())
            moved = i >= len(motion) or motion[i] >= self.verify_min_motion
            if face.source == "tracked" and moved and len(top) >= 2 and top[-1] - top[-2] < self.verify_margin:
                out.append(i)
        return out

    def check(self, image: np.ndarray, faces: list[DetectedFace], probabilities: Any) -> tuple[list[DetectedFace], list[int]]:
        """After scoring this frame's ``faces`` (what :meth:`detect` just returned, in its order):
        the faces with :meth:`ambiguous` labels detected again on ``image`` (the same frame), as on a
        detection frame, and followed from there. Returns (faces, indices of the faces that changed:
        score those again); a face the detector does not find now keeps its followed crop."""
        indices = self.ambiguous(faces, probabilities)
        if not indices:
            return list(faces), []
        found = self.detector.redetect(image, [faces[i].box for i in indices])
        faces = list(faces)
        changed = []
        for i, face in zip(indices, found):
            if face is None:
                continue
            faces[i] = face
            self.follower.reseed(i, face)
            changed.append(i)
        self.stats["verified"] += len(changed)
        return faces, changed

    def align(self, image: np.ndarray, face: DetectedFace, preprocessing) -> np.ndarray:
        """The model-input crop of ``face``, exactly as :meth:`FacePipeline.align`."""
        return self.detector.align(image, face, preprocessing)

