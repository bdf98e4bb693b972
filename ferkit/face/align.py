"""Eye-based face alignment: one similarity transform per face, named crop styles per training set.

A model trained on FER2013 crops must see live faces framed the way FER2013 framed them, or
accuracy drops for reasons that have nothing to do with the model. A crop style therefore fixes,
as fractions of the output side, where the midpoint between the eyes lands and how far apart the
eyes are; the transform rotates the face so the eyes are level, scales by the inter-ocular
distance and translates the eye midpoint into place. The same function, :func:`align_face`, makes
training crops (``ferkit prepare``) and live crops (``FacePipeline.process``).

Calibrated styles (how: ``python -m ferkit.face.calibrate``, see :mod:`ferkit.face.calibrate`):
each dataset's own crops were upscaled 4x, padded, run through :class:`FacePipeline` (face mesh
eye centres = midpoints of the eye corners, mesh points 33/133 and 362/263), and the mean eye
midpoint and mean inter-ocular distance recorded as fractions of the crop side. The numbers and
sample counts are in each style's ``note``.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ferkit.errors import UnknownNameError
from ferkit.face.types import AlignedFace, DetectedFace


@dataclass(frozen=True)
class CropStyle:
    """Where the eyes go in a square crop, as fractions of its side."""

    name: str
    #: eye midpoint (x, y)
    eye_center: tuple[float, float]
    #: distance between the two eye centres
    eye_distance: float
    note: str = ""


CROP_STYLES: dict[str, CropStyle] = {}


def register_crop_style(style: CropStyle) -> CropStyle:
    CROP_STYLES[style.name] = style
    return style


# ---- calibrated styles (numbers from ferkit.face.calibrate; see the notes) -----------------------
register_crop_style(CropStyle(
    "fer2013", eye_center=(0.5, 0.383), eye_distance=0.362,
    note="FER+ FER2013Train, 300 crops sampled, 48 -> 192 px: mesh found 287; mean (std) eye midpoint "
         "x 0.494 (0.069), y 0.383 (0.062), eye distance 0.362 (0.069), eye-line angle -0.3 (12.4) deg. "
         "x set to 0.5: the offset is within noise and training flips the images anyway."))
register_crop_style(CropStyle(
    "ckplus48", eye_center=(0.5, 0.405), eye_distance=0.362,
    note="CK+48, 300 crops sampled, 48 -> 192 px: mesh found 300; mean (std) eye midpoint "
         "x 0.498 (0.008), y 0.405 (0.011), eye distance 0.362 (0.023), angle -0.6 (2.3) deg."))
register_crop_style(CropStyle(
    "celeba", eye_center=(0.5, 0.419), eye_distance=0.255,
    note="identity/celeba_subset 128x128 crops, 300 sampled, 128 -> 192 px: mesh found 291; mean (std) "
         "eye midpoint x 0.503 (0.028), y 0.419 (0.056), eye distance 0.255 (0.034), angle -1.9 (6.8) deg."))


def get_crop_style(name: str) -> CropStyle:
    try:
        return CROP_STYLES[name]
    except KeyError:
        raise UnknownNameError(f"unknown crop style {name!r}; known: {', '.join(sorted(CROP_STYLES))}") from None


def alignment_matrix(left_eye: tuple[float, float], right_eye: tuple[float, float], style: CropStyle,
                     size: int) -> np.ndarray:
    """2x3 similarity transform (image -> crop pixel indices, as ``cv2.warpAffine`` takes it) that
    levels the eyes and frames them per ``style``. Eye points are continuous coordinates (pixel i
    spans [i, i+1), as mediapipe's normalised coordinates times the image size)."""
    le = np.asarray(left_eye, dtype=np.float64)
    re = np.asarray(right_eye, dtype=np.float64)
    delta = re - le
    dist = float(np.hypot(*delta))
    if dist < 1e-6:
        raise ValueError("eye centres coincide; cannot align")
    angle = np.arctan2(delta[1], delta[0])  # tilt of the eye line (y down)
    scale = style.eye_distance * size / dist
    c, s = np.cos(-angle) * scale, np.sin(-angle) * scale
    rot = np.array([[c, -s], [s, c]])  # rotate by -angle (levels the eyes), then scale
    mid = (le + re) / 2.0
    target = np.array(style.eye_center) * size
    # map pixel centres: crop pixel (u, v) has centre u + 0.5, image likewise
    t = (target - 0.5) - rot @ (mid - 0.5)
    return np.hstack([rot, t[:, None]]).astype(np.float64)


def _to_channels(image: np.ndarray, grayscale: bool) -> np.ndarray:
    if image.ndim == 2:
        return image[:, :, None] if grayscale else np.repeat(image[:, :, None], 3, axis=2)
    if grayscale:
        return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[:, :, None]
    return image


def warp_crop(rgb: np.ndarray, matrix: np.ndarray, size: int, grayscale: bool) -> np.ndarray:
    """Apply ``matrix`` (image -> crop); shrinks >2x go through an area resize first (no aliasing).

    Only the image region the crop covers is resized, so a small face in a big frame costs little.
    """
    scale = float(np.sqrt(abs(np.linalg.det(matrix[:, :2]))))
    m = matrix.astype(np.float64).copy()
    image = rgb
    if scale < 0.5:
        h, w = rgb.shape[:2]
        inv = cv2.invertAffineTransform(m)
        corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
        src = corners @ inv[:, :2].T + inv[:, 2]
        x0 = int(np.clip(np.floor(src[:, 0].min()) - 2, 0, w - 1))
        x1 = int(np.clip(np.ceil(src[:, 0].max()) + 3, x0 + 1, w))
        y0 = int(np.clip(np.floor(src[:, 1].min()) - 2, 0, h - 1))
        y1 = int(np.clip(np.ceil(src[:, 1].max()) + 3, y0 + 1, h))
        roi = rgb[y0:y1, x0:x1]
        f = min(1.0, 2.0 * scale)
        rw, rh = roi.shape[1], roi.shape[0]
        nw, nh = max(1, int(round(rw * f))), max(1, int(round(rh * f)))
        image = cv2.resize(roi, (nw, nh), interpolation=cv2.INTER_AREA)
        fx, fy = nw / rw, nh / rh
        # small pixel p (centre p + 0.5) sits at roi coordinate (p + 0.5) / f, i.e. roi pixel
        # (p + 0.5) / f - 0.5, i.e. image pixel that plus the roi offset
        pre = np.array([[1.0 / fx, 0.0, 0.5 / fx - 0.5 + x0], [0.0, 1.0 / fy, 0.5 / fy - 0.5 + y0]])
        m = np.hstack([m[:, :2] @ pre[:, :2], (m[:, :2] @ pre[:, 2] + m[:, 2])[:, None]])
    crop = cv2.warpAffine(image, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return np.ascontiguousarray(_to_channels(crop, grayscale))


def align_face(rgb: np.ndarray, face: DetectedFace, input_size: int, grayscale: bool,
               style: str = "fer2013") -> AlignedFace:
    """The crop of ``face`` for a model input: ``[input_size, input_size, 1 or 3]`` uint8.

    Uses the eye centres; a face without eyes (never from :class:`FacePipeline`) is cropped from
    its box instead.
    """
    if style in {"none", "box"} or face.left_eye is None or face.right_eye is None:
        return box_crop(rgb, face, input_size, grayscale)
    matrix = alignment_matrix(face.left_eye, face.right_eye, get_crop_style(style), input_size)
    return AlignedFace(face=face, crop=warp_crop(rgb, matrix, input_size, grayscale), matrix=matrix)


def box_crop(rgb: np.ndarray, face: DetectedFace, input_size: int, grayscale: bool) -> AlignedFace:
    """Square crop around the detection box (no rotation): the fallback without eye points."""
    x, y, w, h = face.box
    side = max(w, h)
    cx, cy = x + w / 2.0, y + h / 2.0
    scale = input_size / side
    matrix = np.array([[scale, 0.0, (input_size / 2.0 - 0.5) - scale * (cx - 0.5)],
                       [0.0, scale, (input_size / 2.0 - 0.5) - scale * (cy - 0.5)]])
    return AlignedFace(face=face, crop=warp_crop(rgb, matrix, input_size, grayscale), matrix=matrix)


def whole_image_face(rgb: np.ndarray, input_size: int, grayscale: bool) -> AlignedFace:
    """Treat the central square of the image as the face (for inputs that already are face crops,
    or when the user asks to score the whole image); ``score`` is 0 and ``source`` "whole-image"
    since nothing was detected (0, not NaN, so JSON output stays valid)."""
    h, w = rgb.shape[:2]
    side = min(h, w)
    x, y = (w - side) // 2, (h - side) // 2
    face = DetectedFace(box=(x, y, side, side), score=0.0, landmarks=np.zeros((0, 2), np.float32),
                        left_eye=None, right_eye=None, source="whole-image")
    return box_crop(rgb, face, input_size, grayscale)


def transform_points(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Image points ``[K, 2]`` -> crop points, both continuous (pixel i spans [i, i+1)).

    ``matrix`` acts on pixel indices (pixel centres), as ``cv2.warpAffine`` does, hence the half-pixel shifts.
    """
    pts = np.asarray(points, dtype=np.float64) - 0.5
    return pts @ matrix[:, :2].T + matrix[:, 2] + 0.5

