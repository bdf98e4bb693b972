"""Stable face ids across frames, and per-face temporal smoothing of scores.

Live predictions flicker from frame to frame; users ask for the same person to keep the same id
(and colour) and for scores smoothed over a short window. Matching is greedy by IoU, with a
centroid-distance fallback for fast motion where boxes stop overlapping. Smoothing state lives
on the track, so two faces never blend their scores.
"""
from __future__ import annotations

import colorsys
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

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
        result: list[Track] = []
        for bi, box in enumerate(boxes):
            track = assigned.get(bi)
            if track is None:
                track = Track(self._next_id, box, track_colour(self._next_id))
                self.tracks[track.id] = track
                self._next_id += 1
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
