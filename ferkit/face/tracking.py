"""Stable face ids across frames, per-face temporal smoothing of scores, and optical-flow following.

Live predictions flicker from frame to frame; users ask for the same person to keep the same id
(and colour) and for scores smoothed over a short window. Matching is greedy by IoU, with a
centroid-distance fallback for fast motion where boxes stop overlapping. Smoothing state lives
on the track, so two faces never blend their scores.

:class:`FlowFollower` moves detected faces (box, eyes, landmarks) from one frame to the next with
sparse optical flow, so the detector need not run on every frame (issue 14: detection + face mesh
took 12-22 ms of a live frame; following a face costs about a millisecond). It only needs OpenCV.
"""
from __future__ import annotations

import colorsys
from collections import deque
from dataclasses import dataclass, field, replace
from typing import Optional, Sequence

import cv2
import numpy as np

from ferkit.face.types import DetectedFace

Box = tuple[int, int, int, int]

SMOOTHING_MODES = ("off", "ema", "window")


def iou(a: Box, b: Box) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    ix = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    iy = max(0, min(ay + ah, by + bh) - max(ay, by))
    inter = ix * iy
    union = aw * ah + bw * bh - inter
    return float(inter / union) if union > 0 else 0.0


def track_colour(track_id: int) -> tuple[int, int, int]:
    """A distinct, saturated RGB colour per id (golden-ratio hue steps never repeat neighbours)."""
    hue = (track_id * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


@dataclass
class Smoother:
    """Exponential moving average or sliding-window mean of score vectors; ``off`` passes through."""

    mode: str = "ema"
    alpha: float = 0.35
    window: int = 8

    def __post_init__(self) -> None:
        if self.mode not in SMOOTHING_MODES:
            raise ValueError(f"smoothing mode must be one of {SMOOTHING_MODES}, not {self.mode!r}")
        if not 0.0 < self.alpha <= 1.0:
            raise ValueError("EMA alpha must be in (0, 1]")
        if self.window < 1:
            raise ValueError("smoothing window must be at least 1 frame")

    def new_state(self) -> "SmoothState":
        return SmoothState(self)


class SmoothState:
    """Smoothing memory of one (track, model) pair."""

    def __init__(self, smoother: Smoother) -> None:
        self.smoother = smoother
        self._ema: Optional[np.ndarray] = None
        self._window: deque[np.ndarray] = deque(maxlen=smoother.window)

    def update(self, scores: np.ndarray) -> np.ndarray:
        s = self.smoother
        scores = np.asarray(scores, dtype=np.float64)
        if s.mode == "off":
            return scores.copy()
        if s.mode == "ema":
            if self._ema is None or self._ema.shape != scores.shape:
                self._ema = scores.copy()
            else:
                self._ema = s.alpha * scores + (1.0 - s.alpha) * self._ema
            return self._ema.copy()
        if self._window and self._window[-1].shape != scores.shape:
            self._window.clear()
        self._window.append(scores)
        return np.mean(np.stack(self._window), axis=0)


@dataclass
class Track:
    id: int
    box: Box
    colour: tuple[int, int, int]
    age: int = 0
    missed: int = 0
    states: dict[str, SmoothState] = field(default_factory=dict)

    def smooth(self, key: str, scores: np.ndarray, smoother: Smoother) -> np.ndarray:
        state = self.states.get(key)
        if state is None or state.smoother is not smoother:
            state = self.states[key] = smoother.new_state()
        return state.update(scores)


class FaceTracker:
    """Assigns stable ids to per-frame detections.

    ``max_missed`` frames without a match drop a track (a face that leaves the picture gets a
    new id when it returns: we do not re-identify people here, the identity panel does that).
    """

    def __init__(self, iou_threshold: float = 0.3, max_missed: int = 12, smoother: Optional[Smoother] = None):
        self.iou_threshold = iou_threshold
        self.max_missed = max_missed
        self.smoother = smoother or Smoother()
        self.tracks: dict[int, Track] = {}
        self._next_id = 1

    def reset(self) -> None:
        self.tracks.clear()
        self._next_id = 1

    def set_smoother(self, smoother: Smoother) -> None:
        """New settings restart every track's smoothing memory (old averages used other rules)."""
        self.smoother = smoother
        for track in self.tracks.values():
            track.states.clear()

    def update(self, boxes: Sequence[Box]) -> list[Track]:
        """Match ``boxes`` to tracks; returns the track of each box, in the order of ``boxes``."""
        boxes = [tuple(int(v) for v in b) for b in boxes]
        live = list(self.tracks.values())
        pairs = []
        for ti, track in enumerate(live):
            for bi, box in enumerate(boxes):
                score = iou(track.box, box)
                if score >= self.iou_threshold:
                    pairs.append((score, ti, bi))
        assigned: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for _, ti, bi in sorted(pairs, reverse=True):
            if ti in used_tracks or bi in assigned:
                continue
            used_tracks.add(ti)
            assigned[bi] = live[ti]
        # fallback: centroid distance for boxes that moved too far to overlap
        for bi, box in enumerate(boxes):
            if bi in assigned:
                continue
            cx, cy = box[0] + box[2] / 2, box[1] + box[3] / 2
            best, best_d = None, None
            for ti, track in enumerate(live):
                if ti in used_tracks:
                    continue
                tx, ty = track.box[0] + track.box[2] / 2, track.box[1] + track.box[3] / 2
                d = ((cx - tx) ** 2 + (cy - ty) ** 2) ** 0.5
                if d <= 0.6 * max(track.box[2], track.box[3], box[2], box[3]) and (best_d is None or d < best_d):
                    best, best_d = ti, d
            if best is not None:
                used_tracks.add(best)
                assigned[bi] = live[best]
        # new faces take ids left to right (face 1 of a picture is its leftmost, as in ferkit predict)
        for bi in sorted((bi for bi in range(len(boxes)) if bi not in assigned), key=lambda bi: boxes[bi][:2]):
            track = assigned[bi] = Track(self._next_id, boxes[bi], track_colour(self._next_id))
            self.tracks[track.id] = track
            self._next_id += 1
        result: list[Track] = []
        for bi, box in enumerate(boxes):
            track = assigned[bi]
            track.box = box
            track.age += 1
            track.missed = 0
            result.append(track)
        matched_ids = {t.id for t in result}
        for tid in list(self.tracks):
            if tid not in matched_ids:
                self.tracks[tid].missed += 1
                if self.tracks[tid].missed > self.max_missed:
                    del self.tracks[tid]
        return result


# ---- optical-flow following ------------------------------------------------------------------------------
@dataclass
class _Followed:
    #: the face as it was detected (the key frame): every later frame is mapped from it
    key_face: DetectedFace
    #: float box (x, y, w, h) of the key frame: rounding to ints would drift
    key_box: np.ndarray
    #: feature points in the key frame and where they are now (the previous frame), ``[K, 2]`` float32
    key_points: np.ndarray
    points: np.ndarray
    #: how many points were seeded at the key frame
    seeded: int
    #: the face as last reported
    face: DetectedFace
    box: np.ndarray


#: the band around the eyes where followed points are seeded, in eye distances from the eye midpoint:
#: (left, right) = 1.0 each, up 0.6 (brows), down 0.8 (nose): the rigid part of a face that says
#: where the eyes are; mouth and cheeks move on their own with the expression (crying, laughing)
EYE_BAND = (1.0, 0.6, 0.8)


class FlowFollower:
    """Carries faces from frame to frame with pyramidal Lucas-Kanade optical flow.

    At :meth:`seed` each face gets up to ``max_points`` corner features in the band around its eyes
    (:data:`EYE_BAND`; inside its box when it has no eye points), a grid where the face has too
    little texture. :meth:`step` tracks them into the next frame and back (points whose round trip
    misses by more than ``fb_error`` of the face size are dropped) and fits, with RANSAC, the
    transform from the points' positions in the *key frame* (the last detection) to this frame:
    ``model="affine"`` (default; also takes the foreshortening of a turning head) or
    ``"similarity"`` (shift, rotation, scale). The box, the eye centres and the landmarks of the
    key frame are mapped by it. Fitting from the key frame, not frame to frame, keeps the fit errors
    of the frames in between from adding up: on the sample video the eye midpoint four frames after a
    detection is 1.3 % of the eye distance from the reference's (1.4 % frame to frame, whole-face
    points, similarity) and the eye distance 1.4 % (2.0 %) -- of which about 0.6 % is the face
    mesh's own frame-to-frame jitter, which no flow can follow.

    A face is *lost* when fewer than ``min_points`` or fewer than ``min_quality`` of its seeded
    points remain as inliers, or when its centre leaves the frame; :meth:`step` then returns None
    and the caller runs the detector again. Its ``quality`` (inliers / seeded) is the tracking
    confidence; its ``motion`` how far it moved since its key frame (:func:`key_frame_motion`).
    """

    def __init__(self, max_points: int = 40, min_points: int = 8, min_quality: float = 0.4,
                 fb_error: float = 0.01, window: int = 15, levels: int = 3, model: str = "affine") -> None:
        if model not in ("affine", "similarity"):
            raise ValueError(f"model must be affine or similarity, not {model!r}")
        self.max_points = max_points
        self.min_points = min_points
        self.min_quality = min_quality
        self.fb_error = fb_error
        self.window = (window, window)
        self.levels = levels
        self.model = model
        self._faces: list[_Followed] = []
        self._prev: Optional[np.ndarray] = None
        self._shape: Optional[tuple[int, int]] = None
        self.quality: list[float] = []
        self.motion: list[float] = []

    @property
    def active(self) -> bool:
        """Whether there are faces to follow from the previous frame."""
        return bool(self._faces) and self._prev is not None

    def reset(self) -> None:
        self._faces = []
        self._prev = None
        self._shape = None
        self.quality = []
        self.motion = []

    def _region(self, face: DetectedFace, box: np.ndarray) -> tuple[float, float, float, float]:
        """Where to seed points: the eye band, or the inner box when the face has no eye points."""
        x, y, w, h = box
        if face.left_eye is not None and face.right_eye is not None:
            le, re = np.asarray(face.left_eye, np.float64), np.asarray(face.right_eye, np.float64)
            d = float(np.hypot(*(re - le)))
            if d > 4.0:
                (mx, my), (side, up, down) = (le + re) / 2.0, EYE_BAND
                return mx - side * d, my - up * d, mx + side * d, my + down * d
        return x + 0.15 * w, y + 0.1 * h, x + 0.85 * w, y + 0.9 * h

    def _features(self, gray: np.ndarray, face: DetectedFace, box: np.ndarray) -> np.ndarray:
        fx0, fy0, fx1, fy1 = self._region(face, box)
        x0, x1 = int(max(0, fx0)), int(min(gray.shape[1], fx1))
        y0, y1 = int(max(0, fy0)), int(min(gray.shape[0], fy1))
        if x1 - x0 < 4 or y1 - y0 < 4:
            return np.zeros((0, 2), np.float32)
        side = max(box[2], box[3])
        pts = cv2.goodFeaturesToTrack(gray[y0:y1, x0:x1], self.max_points, 0.01, max(2.0, side / 14.0))
        pts = np.zeros((0, 2), np.float32) if pts is None else pts.reshape(-1, 2)
        if len(pts) < self.min_points * 2:  # too little texture: a regular grid still follows the motion
            gx, gy = np.meshgrid(np.linspace(0, x1 - x0 - 1, 6), np.linspace(0, y1 - y0 - 1, 6))
            pts = np.concatenate([pts, np.stack([gx.ravel(), gy.ravel()], 1)])
        return (pts + np.array([x0, y0])).astype(np.float32)

    def _new(self, gray: np.ndarray, face: DetectedFace) -> _Followed:
        box = np.array(face.box, dtype=np.float64)
        pts = self._features(gray, face, box)
        return _Followed(face, box, pts, pts.copy(), len(pts), face, box.copy())

    def seed(self, gray: np.ndarray, faces: Sequence[DetectedFace]) -> None:
        """Start following ``faces`` (just detected in ``gray``, a uint8 single-channel frame)."""
        self._prev = gray
        self._shape = gray.shape[:2]
        self._faces = [self._new(gray, f) for f in faces]
        self.quality = [1.0] * len(self._faces)
        self.motion = [0.0] * len(self._faces)

    def reseed(self, index: int, face: DetectedFace) -> None:
        """Face ``index`` was detected again in the current frame: follow it from there (a new key frame)."""
        if self._prev is None:
            raise RuntimeError("reseed() needs a frame: seed() first")
        self._faces[index] = self._new(self._prev, face)
        self.quality[index] = 1.0
        self.motion[index] = 0.0

    def step(self, gray: np.ndarray) -> Optional[list[DetectedFace]]:
        """The followed faces moved into ``gray`` (the next frame), or None when one is lost."""
        if not self.active or gray.shape[:2] != self._shape:
            return None
        cur = gray
        counts = [len(f.points) for f in self._faces]
        if min(counts) < self.min_points:
            return None
        p0 = np.concatenate([f.points for f in self._faces]).reshape(-1, 1, 2)
        lk = dict(winSize=self.window, maxLevel=self.levels,
                  criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 20, 0.03))
        p1, st1, _ = cv2.calcOpticalFlowPyrLK(self._prev, cur, p0, None, **lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(cur, self._prev, p1, None, **lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        ok_all = (st1.ravel() == 1) & (st2.ravel() == 1)
        h_img, w_img = gray.shape[:2]
        fit = cv2.estimateAffine2D if self.model == "affine" else cv2.estimateAffinePartial2D
        moved: list[DetectedFace] = []
        quality: list[float] = []
        motion: list[float] = []
        updates = []
        start = 0
        for f, n in zip(self._faces, counts):
            sl = slice(start, start + n)
            start += n
            side = float(max(f.key_box[2], f.key_box[3]))
            good = ok_all[sl] & (fb[sl] <= max(0.5, self.fb_error * side))
            a, b = f.key_points[good], p1[sl].reshape(-1, 2)[good]
            if len(a) < self.min_points:
                return None
            m, inliers = fit(a, b, method=cv2.RANSAC, ransacReprojThreshold=max(1.0, 0.02 * side),
                             maxIters=200, confidence=0.99)
            if m is None or inliers is None:
                return None
            keep = inliers.ravel().astype(bool)
            q = float(keep.sum()) / max(1, f.seeded)
            if keep.sum() < self.min_points or q < self.min_quality:
                return None
            scale = float(np.sqrt(abs(np.linalg.det(m[:, :2]))))
            kx, ky, kw, kh = f.key_box
            ncx, ncy = m @ np.array([kx + kw / 2.0, ky + kh / 2.0, 1.0])
            if not (0 <= ncx < w_img and 0 <= ncy < h_img):
                return None  # the face left the picture
            w, h = kw * scale, kh * scale
            box = np.array([ncx - w / 2.0, ncy - h / 2.0, w, h])

            def move(pt: Optional[tuple[float, float]]) -> Optional[tuple[float, float]]:
                if pt is None:
                    return None
                x, y = m @ np.array([pt[0], pt[1], 1.0])
                return float(x), float(y)

            key = f.key_face
            lm = key.landmarks
            if lm is not None and len(lm):
                lm = (np.asarray(lm, np.float64) @ m[:, :2].T + m[:, 2]).astype(np.float32)
            face = replace(key, box=tuple(int(round(v)) for v in box),  # type: ignore[arg-type]
                           left_eye=move(key.left_eye), right_eye=move(key.right_eye), landmarks=lm, source="tracked")
            updates.append((f, a[keep], b[keep].astype(np.float32), face, box))
            moved.append(face)
            quality.append(q)
            motion.append(key_frame_motion(m, key))
        for f, key_points, points, face, box in updates:  # only once every face was followed
            f.key_points, f.points, f.face, f.box = key_points, points, face, box
        self._prev = cur
        self.quality = quality
        self.motion = motion
        return moved


def key_frame_motion(transform: np.ndarray, key: DetectedFace) -> float:
    """How far ``transform`` (2x3, key frame -> this frame) moves the key face: the larger shift of
    its two eye centres in eye distances (of its box corners in box sides when it has no eyes).

    Why: a face that has not moved (a still image looped, a sitter holding still) is followed with
    no error, so its crop is the key frame's; detecting it again would only repeat the key frame's
    result at the cost of a detector and face-mesh run.
    """
    if key.left_eye is not None and key.right_eye is not None:
        pts = np.array([key.left_eye, key.right_eye], np.float64)
        scale = float(np.hypot(*(pts[1] - pts[0])))
    else:
        x, y, w, h = key.box
        pts = np.array([[x, y], [x + w, y + h]], np.float64)
        scale = float(max(w, h))
    shifted = pts @ transform[:, :2].T + transform[:, 2]
    return float(np.linalg.norm(shifted - pts, axis=1).max() / max(scale, 1e-6))

