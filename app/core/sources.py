"""Where frames come from: video files (looping), still images and folders of images.

Video decoding uses ``cv2.VideoCapture`` inside the capture worker (never OpenCV windows); the
camera is read through QtMultimedia in :mod:`app.camera`. Every failure is a :class:`SourceError`
with a sentence a user can act on, never a traceback.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from ferkit.data.images import IMAGE_EXTENSIONS
from ferkit.paths import samples_dir

VIDEO_EXTENSIONS = {".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"}
SAMPLE_VIDEO = "expressions_pexels_640x360.mp4"
SAMPLE_IMAGE = "single_face.jpg"


class SourceError(Exception):
    """A source cannot be opened or read; the message is shown to the user as is."""


class VideoDamaged(SourceError):
    """The file ends before the frame count its header promises (truncated download, damaged copy)."""

    def __init__(self, path: Path, frame: int, expected: int) -> None:
        super().__init__(f"{Path(path).name} ends early / is damaged at frame {frame} of {expected}: the file is "
                         "incomplete or corrupt. It was played up to there once and is not looped.")
        self.frame = frame
        self.expected = expected


#: a healthy file may decode a frame or two fewer than its header says; more than this is damage
FRAME_COUNT_SLACK = 0.02


def sample_video() -> Path:
    return samples_dir() / SAMPLE_VIDEO


def sample_image() -> Path:
    return samples_dir() / SAMPLE_IMAGE


def kind_of(path: Path) -> str:
    """``video`` | ``image`` | ``folder`` | ``unknown``: how the app should open a path."""
    path = Path(path)
    if path.is_dir():
        return "folder"
    ext = path.suffix.lower()
    if ext in VIDEO_EXTENSIONS:
        return "video"
    if ext in IMAGE_EXTENSIONS:
        return "image"
    return "unknown"


def load_image(path: Path) -> np.ndarray:
    """RGB uint8 of an image file; SourceError in plain words when missing or not an image."""
    from ferkit.data.errors import DataError
    from ferkit.data.images import read_image

    path = Path(path)
    try:
        image = read_image(path, grayscale=False)
    except DataError:
        if not path.exists():
            raise SourceError(f"The file {path} does not exist.") from None
        raise SourceError(f"{path.name} could not be read as an image: the file is damaged or not a "
                          "picture format the app knows (PNG, JPEG, BMP, TIFF, GIF, WebP).") from None
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])


def folder_images(folder: Path) -> list[Path]:
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise SourceError(f"The folder {folder} holds no image files.")
    return files


class VideoFile:
    """Frames of a video file as RGB arrays; ``loop`` restarts at the end."""

    def __init__(self, path: Path, loop: bool = True) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise SourceError(f"The video {self.path} does not exist.")
        self._cap = cv2.VideoCapture(str(self.path))
        if not self._cap.isOpened():
            raise SourceError(f"{self.path.name} could not be opened as a video (damaged file or unknown codec).")
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 1.0 <= fps <= 240.0 else 25.0
        self.frame_count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.loop = loop
        self.index = -1
        self.decode_ms = 0.0

    def ends_early(self) -> bool:
        """Decoding stopped clearly before the header's frame count (checked when a read fails)."""
        expected = self.frame_count
        return expected > 0 and self.index + 1 < expected - max(2, int(expected * FRAME_COUNT_SLACK))

    def read(self) -> Optional[np.ndarray]:
        """Next RGB frame; ``None`` at the end (when not looping) or if the file cannot be decoded.

        Raises :class:`VideoDamaged` when decoding fails before the promised end: looping such a
        file would replay its first seconds for ever while the decoder complains on stderr.
        """
        t0 = time.perf_counter()
        ok, frame = self._cap.read()
        if not ok and self.index >= 0 and self.ends_early():
            raise VideoDamaged(self.path, self.index + 1, self.frame_count)
        if not ok and self.loop and self.index >= 0:
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            self.index = -1
            ok, frame = self._cap.read()
        if not ok or frame is None:
            return None
        self.index += 1
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        self.decode_ms = (time.perf_counter() - t0) * 1e3
        return rgb

    def close(self) -> None:
        self._cap.release()
