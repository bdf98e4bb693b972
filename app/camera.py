"""Camera frames through QtMultimedia (QMediaCaptureSession + QVideoSink), no OpenCV windows.

Frames arrive on the GUI thread as QVideoFrames; each is converted to an RGB array (a copy, so
no numpy array ever points into a buffer Qt may free) and put into the inference worker's
:class:`LatestSlot`, which drops stale frames when analysis is slower than the camera.
QtMultimedia needs PulseAudio's client library on Linux; without it (or without a camera) the
app says so and plays the sample video instead.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QImage

from app.workers import Frame, LatestSlot


@dataclass
class CameraInfo:
    id: bytes
    description: str
    resolutions: list[tuple[int, int]]
    device: object  # QCameraDevice


def multimedia_problem() -> Optional[str]:
    """Why cameras cannot be used here, in words, or None when QtMultimedia loads."""
    try:
        from PySide6 import QtMultimedia  # noqa: F401
    except ImportError as exc:
        return (f"Cameras are unavailable: Qt's multimedia module could not load ({exc}). "
                "On Linux install the libpulse0 package.")
    return None


def list_cameras() -> list[CameraInfo]:
    """Cameras Qt can see, each with its resolutions (largest first); [] when none or no QtMultimedia."""
    if multimedia_problem():
        return []
    from PySide6.QtMultimedia import QMediaDevices

    cams = []
    for dev in QMediaDevices.videoInputs():
        sizes = sorted({(f.resolution().width(), f.resolution().height()) for f in dev.videoFormats()},
                       key=lambda s: -s[0] * s[1])
        cams.append(CameraInfo(bytes(dev.id().data()), dev.description(), sizes, dev))
    return cams


def qimage_to_rgb(image: QImage) -> np.ndarray:
    """Deep copy of a QImage as an RGB uint8 array (respects the row padding)."""
    img = image.convertToFormat(QImage.Format.Format_RGB888)
    w, h, bpl = img.width(), img.height(), img.bytesPerLine()
    buf = np.frombuffer(img.constBits(), dtype=np.uint8, count=bpl * h).reshape(h, bpl)
    return buf[:, : w * 3].reshape(h, w, 3).copy()


class CameraSource(QObject):
    """One running camera feeding a LatestSlot."""

    failed = Signal(str)
    started = Signal(str)

    def __init__(self, camera: CameraInfo, slot: LatestSlot, resolution: Optional[tuple[int, int]] = None,
                 parent=None) -> None:
        super().__init__(parent)
        from PySide6.QtMultimedia import QCamera, QMediaCaptureSession, QVideoSink

        self.slot = slot
        self.info = camera
        self.paused = False
        self.index = 0
        self._camera = QCamera(camera.device)
        if resolution:
            for fmt in camera.device.videoFormats():
                if (fmt.resolution().width(), fmt.resolution().height()) == tuple(resolution):
                    self._camera.setCameraFormat(fmt)
                    break
        self._session = QMediaCaptureSession()
        self._sink = QVideoSink()
        self._session.setCamera(self._camera)
        self._session.setVideoSink(self._sink)
        self._sink.videoFrameChanged.connect(self._on_frame)
        self._camera.errorOccurred.connect(lambda _err, text: self.failed.emit(
            f"The camera '{camera.description}' reported an error: {text}"))

    def start(self) -> None:
        self._camera.start()
        self.started.emit(self.info.description)

    def stop(self) -> None:
        self._sink.videoFrameChanged.disconnect(self._on_frame)
        self._camera.stop()

    def _on_frame(self, frame) -> None:
        if self.paused or not frame.isValid():
            return
        t0 = time.perf_counter()
        image = frame.toImage()
        if image.isNull():
            return
        rgb = qimage_to_rgb(image)
        self.index += 1
        self.slot.put(Frame(rgb, self.index, t0, (time.perf_counter() - t0) * 1e3))
