"""What the face pipeline returns (plain numpy, no mediapipe objects leak out)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, Sequence

import numpy as np


@dataclass
class DetectedFace:
    """One face in an image, in that image's pixel coordinates.

    ``box`` is ``(x, y, w, h)`` (ints, may extend past the image border); ``score`` the detector
    confidence. ``left_eye`` / ``right_eye`` are eye centres ``(x, y)`` as seen in the image:
    ``left_eye`` is the eye on the image's left (the person's right eye in a frontal view).
    ``landmarks`` is ``[K, 2]``: the 478 face-mesh points when the mesh ran, else the detector's
    6 key points (eyes, nose tip, mouth, ear tragions). ``source`` says what gave the eyes: ``mesh``,
    ``detector``, ``tracked`` (moved by optical flow from an earlier frame,
    :class:`~ferkit.face.pipeline.TrackedFacePipeline`) or ``whole-image`` (no eyes).
    """

    box: tuple[int, int, int, int]
    score: float
    landmarks: np.ndarray
    left_eye: Optional[tuple[float, float]]
    right_eye: Optional[tuple[float, float]]
    source: str = "mesh"

    def to_json(self) -> dict:
        return {"box": [int(v) for v in self.box], "score": float(self.score),
                "left_eye": None if self.left_eye is None else [float(v) for v in self.left_eye],
                "right_eye": None if self.right_eye is None else [float(v) for v in self.right_eye]}


@dataclass
class AlignedFace:
    """A detected face and its crop, ready for ``Preprocessing.normalize`` (uint8 ``[H, W, C]``).

    ``matrix`` is the 2x3 affine map from image to crop coordinates (None for a whole-image crop).
    """

    face: DetectedFace
    crop: np.ndarray
    matrix: Optional[np.ndarray] = field(default=None, repr=False)


class FacePath(Protocol):
    """What scores a frame's faces needs from a face pipeline; :meth:`ferkit.inference.Predictor.score_faces`
    takes any of them (:class:`~ferkit.face.pipeline.FacePipeline`, its tracked variant, the bench's
    jittered one), so the library, the app and the bench run one loop instead of three copies.
    """

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """The faces of ``image`` (RGB uint8), largest first or in the pipeline's own stable order."""

    def align(self, image: np.ndarray, face: DetectedFace, preprocessing: Any) -> np.ndarray:
        """The model-input crop (uint8 ``[H, W, C]``) of ``face`` per ``preprocessing``."""

    def check(self, image: np.ndarray, faces: list[DetectedFace],
              probabilities: np.ndarray) -> tuple[list[DetectedFace], list[int]]:
        """After scoring ``faces``: (faces, indices of those detected again, to align and score again)."""


def left_to_right(faces: Sequence[Any], box: Callable[[Any], Sequence[float]] = lambda f: f.box) -> list[Any]:
    """``faces`` in reading order, leftmost first: the numbering every output uses for the faces of
    one picture (predict's "face 1", synthesize's rows, the app's first track ids), so face 1 is
    the same face everywhere. Detection order (by confidence) changes with the detector's mood."""
    return sorted(faces, key=lambda f: (box(f)[0], box(f)[1]))
