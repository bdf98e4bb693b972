"""Per-frame expression analysis of a whole video file, for researchers (py-feat's ``detect_video``).

Every analysed frame goes through the same :class:`~ferkit.inference.Predictor` as a still image
(detection, alignment, the weights' preprocessing and TTA), so a row here equals ``ferkit predict``
on that frame. Faces keep a track id across frames (:class:`~ferkit.face.tracking.FaceTracker`,
the tracker of the app), so a timeline can be drawn per person.

A damaged or truncated file is not an exception that loses the work: decoding stops at the last
readable frame, the rows so far are kept, and :attr:`VideoAnalysis.problem` says at which frame it
broke (compared with the frame count in the container's header).
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import numpy as np
import torch

from ferkit.data.images import VIDEO_SUFFIXES
from ferkit.errors import NotFoundError, UsageError, UserError

#: a file shorter than its header's frame count by more than this many frames is reported damaged
#: (containers often over-count by one or two)
FRAME_COUNT_SLACK = 2


class VideoOpenError(UserError, ValueError):
    """The file is missing or no frame of it can be decoded (a :class:`~ferkit.errors.UserError`)."""


@dataclass
class VideoRow:
    """One face in one analysed frame."""

    time_s: float
    frame: int
    track: int
    box: tuple[int, int, int, int]
    label: str
    scores: dict[str, float]
    #: cosine similarity of the face's identity feature to each enrolled person (``--enrol``)
    similarity: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"time_s": round(self.time_s, 4), "frame": self.frame, "track": self.track, "box": list(self.box),
                "label": self.label, "scores": {k: round(v, 6) for k, v in self.scores.items()},
                **({"similarity": {k: round(v, 4) for k, v in self.similarity.items()}} if self.similarity else {})}


@dataclass
class VideoAnalysis:
    path: str
    fps: float
    frames_read: int
    #: the container's frame count (may be 0 when the header does not say)
    frames_expected: int
    every: int
    classes: list[str]
    rows: list[VideoRow] = field(default_factory=list)
    #: None, or what went wrong ("video ends early at frame 97 of 472 (damaged or truncated)")
    problem: Optional[str] = None

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "fps": self.fps, "frames_read": self.frames_read,
                "frames_expected": self.frames_expected, "every": self.every, "classes": list(self.classes),
                "problem": self.problem, "rows": [r.to_json() for r in self.rows]}

    def to_csv(self) -> str:
        """One line per analysed frame and face: time, frame, track, box, label, one column per class."""
        enrolled = sorted({k for r in self.rows for k in r.similarity})
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["time_s", "frame", "track", "x", "y", "w", "h", "label", *self.classes,
                    *(f"similarity_{n}" for n in enrolled)])
        for r in self.rows:
            w.writerow([f"{r.time_s:.4f}", r.frame, r.track, *r.box, r.label,
                        *(f"{r.scores[c]:.6f}" for c in self.classes),
                        *(f"{r.similarity[n]:.4f}" if n in r.similarity else "" for n in enrolled)])
        return buf.getvalue()


def is_video(path: Union[str, Path]) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


def analyse_video(path: Union[str, Path], predictor: Any, every: int = 1,
                  enrolled: Optional[dict[str, np.ndarray]] = None,
                  progress: Optional[Callable[[int, int], None]] = None, whole_image: bool = False,
                  detect_every: int = 1) -> VideoAnalysis:
    """Analyse every ``every``-th frame of ``path`` with ``predictor`` (a :class:`Predictor`).

    ``enrolled``: name -> identity feature; each row then carries the cosine similarity of its
    face to every name. ``progress(frames_read, frames_expected)`` is called after each frame.
    ``whole_image``: score each whole frame as one face (videos of already-cropped faces).
    ``detect_every`` > 1: the face detector runs every that many analysed frames (or when a face
    is lost) and faces are followed by optical flow in between
    (:class:`~ferkit.face.pipeline.TrackedFacePipeline`); 1 detects on every frame, exactly as
    ``ferkit predict`` on a still image.
    Times come from the container's timestamps (variable frame rates stay right).
    """
    import cv2

    from ferkit.data.classes import canonical
    from ferkit.evaluation.verification import cosine_similarity
    from ferkit.face.tracking import FaceTracker

    if every < 1:
        raise UsageError(f"--every must be at least 1, got {every}")
    path = Path(path)
    if not path.is_file():
        raise NotFoundError(f"{path}: no such video file")
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise VideoOpenError(f"{path}: cannot be opened as a video (unknown format or damaged header)")
    fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0) or 25.0
    expected = max(0, int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0))  # some containers say -1 or guess
    # one spelling of each class whichever dataset the weights were trained on ("happy" -> "happiness"),
    # as the app and its exports name them
    names = {c: canonical(c) for c in predictor.classes}
    result = VideoAnalysis(str(path), fps, 0, expected, every, list(names.values()))
    if detect_every < 1:
        raise UsageError(f"--detect-every must be at least 1, got {detect_every}")
    tracker = FaceTracker(max_missed=max(2, 12 // every))
    followed = None
    if detect_every > 1 and not whole_image:
        from ferkit.face.pipeline import TrackedFacePipeline

        followed = TrackedFacePipeline(max_faces=predictor.max_faces, min_confidence=predictor.min_confidence,
                                       detect_every=detect_every)
    refs = {n: torch.as_tensor(np.asarray(v, dtype=np.float64).ravel())[None] for n, v in (enrolled or {}).items()}
    try:
        while True:
            ok, frame = cap.read()
            if not ok:
                break
            index = result.frames_read
            result.frames_read += 1
            if index % every == 0:
                msec = float(cap.get(cv2.CAP_PROP_POS_MSEC) or 0.0)
                time_s = msec / 1000.0 if msec > 0 or index == 0 else index / fps
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                faces = predictor.predict_image(rgb, whole_image=whole_image, pipeline=followed).faces
                tracks = tracker.update([f.box for f in faces])
                for face, track in zip(faces, tracks):
                    sims = {}
                    if refs and face.identity is not None:
                        feature = torch.as_tensor(np.asarray(face.identity, dtype=np.float64).ravel())[None]
                        sims = {n: float(cosine_similarity(feature, ref)) for n, ref in refs.items()}
                    result.rows.append(VideoRow(time_s, index, track.id, tuple(face.box),
                                                names.get(face.label, face.label),
                                                {names.get(k, k): v for k, v in face.scores.items()}, sims))
            if progress is not None:
                progress(result.frames_read, expected)
    finally:
        cap.release()
        if followed is not None:
            followed.close()
    if result.frames_read == 0:
        raise VideoOpenError(f"{path}: no frame could be decoded (damaged or not a video)")
    # containers whose header only estimates the count (webm, mkv) are not called damaged
    estimated = path.suffix.lower() in {".webm", ".mkv"}
    if expected and not estimated and result.frames_read < expected - FRAME_COUNT_SLACK:
        result.problem = (f"video ends early at frame {result.frames_read} of {expected} (damaged or truncated); "
                          f"the {len(result.rows)} rows up to there are kept")
    return result


def plot_timeline(analysis: VideoAnalysis, out: Union[str, Path], min_rows: int = 2) -> Path:
    """Each track's class probabilities over time (one panel per track), saved as a PNG."""
    import matplotlib.pyplot as plt

    fig = timeline_figure(analysis, min_rows)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")  # the canvas grows to hold the legend
    plt.close(fig)
    return out


def timeline_figure(analysis: VideoAnalysis, min_rows: int = 2) -> Any:
    """The matplotlib figure of :func:`plot_timeline` (tracks with fewer than ``min_rows`` rows left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tracks: dict[int, list[VideoRow]] = {}
    for r in analysis.rows:
        tracks.setdefault(r.track, []).append(r)
    shown = [t for t, rows in sorted(tracks.items()) if len(rows) >= min_rows] or sorted(tracks)
    n = max(1, len(shown))
    fig, axes = plt.subplots(n, 1, figsize=(10, 2.6 * n), squeeze=False, sharex=True)
    colours = plt.get_cmap("tab10")
    for ax, tid in zip(axes[:, 0], shown):
        rows = tracks[tid]
        t = [r.time_s for r in rows]
        for k, name in enumerate(analysis.classes):
            ax.plot(t, [r.scores[name] for r in rows], label=name, color=colours(k % 10), linewidth=1.4)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"track {tid}\nprobability")
        ax.grid(alpha=0.3)
    if not shown:
        axes[0, 0].text(0.5, 0.5, "no face found in the analysed frames", ha="center", va="center")
    axes[-1, 0].set_xlabel("time (s)")
    # outside the axes, right of the top panel: inside, it covered the curves (happiness from 10 to
    # 20 s on the sample video)
    if axes[0, 0].lines:
        axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, fontsize=8, ncol=1)
    title = f"{Path(analysis.path).name}: every {analysis.every} frame(s), {analysis.frames_read} frames"
    if analysis.problem:
        title += f"\n{analysis.problem}"
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
