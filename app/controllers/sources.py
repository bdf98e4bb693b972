"""Where frames come from: a video file, the camera, or still images; and what went wrong with them.

Every failure of a source ends in :attr:`SourcesController.failed` with one sentence, which the
window shows in its status bar *and* over the video area (where the user looks), and keeps in
the state until the next source starts. A video that ends early (damaged) is reported once and
not looped (:class:`app.core.sources.VideoDamaged`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from app.camera import CameraInfo, CameraSource, multimedia_problem
from app.core.analyzer import FrameResult
from app.core.sources import kind_of, sample_video
from app.core.state import CAMERA, IMAGE, VIDEO, AppState
from app.workers import InferenceWorker, LatestSlot, VideoCaptureWorker


class SourcesController(QObject):
    frame_ready = Signal(object)  # FrameResult of the live source (or the paused frame re-analysed)
    started = Signal(str)  # description of the new source ("video: clip.mp4")
    failed = Signal(str)  # the source error, in words
    #: the asked-for source is missing and another plays instead (no camera: the sample video), in words
    fell_back = Signal(str)
    message = Signal(str)  # plain information (playing, paused, end of video)
    images_requested = Signal(list)  # paths of images / folders to inspect

    def __init__(self, state: AppState, worker: InferenceWorker, slot: LatestSlot,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.worker = worker
        self.slot = slot
        self.capture: Optional[VideoCaptureWorker] = None
        self.camera: Optional[CameraSource] = None
        worker.result.connect(self._on_result)

    # ---- opening ------------------------------------------------------------------------------
    def open_path(self, path: Path) -> bool:
        """A video plays, an image or folder is inspected; anything else is an error in the window."""
        path = Path(path)
        if not path.exists():
            return self.fail(f"{path} does not exist.")
        kind = kind_of(path)
        if kind == "video":
            return self.play_video(path)
        if kind in ("image", "folder"):
            self.images_requested.emit([path])
            return True
        return self.fail(f"{path.name} is neither a video, an image nor a folder the app can open.")

    def play_video(self, path: Path, realtime: bool = True) -> bool:
        self.stop()
        path = Path(path)
        self._begin(VIDEO, path, f"video: {path.name}")
        self.capture = VideoCaptureWorker(path, self.slot, loop=self.state.source.loop, realtime=realtime)
        self.capture.failed.connect(self.fail)
        self.capture.opened.connect(lambda info: self.message.emit(
            f"Playing {Path(info['path']).name} ({info['fps']:.1f} fps, {info['frames']} frames)."))
        self.capture.ended.connect(lambda: self.message.emit("End of the video (tick View ▸ Loop video to repeat)."))
        self.capture.start()
        return True

    def start_camera(self, cameras: list[CameraInfo], index: int, resolution: Optional[tuple[int, int]]) -> bool:
        """The picked camera; without one, say so and play the sample video instead."""
        problem = multimedia_problem()
        if problem or not cameras:
            self.play_video(sample_video())
            self.state.source.description = "No camera — sample video"
            self.started.emit(self.state.source.description)
            # not a failure of what plays now: said beside the picture, never drawn over the face
            self.fell_back.emit(f"{problem or 'No camera was found'} — playing the sample video instead.")
            return False
        self.stop()
        cam = cameras[max(0, min(index, len(cameras) - 1))]
        self._begin(CAMERA, None, f"camera: {cam.description}")
        self.camera = CameraSource(cam, self.slot, resolution, self)
        self.camera.failed.connect(self.fail)
        self.camera.start()
        self.message.emit(f"Camera: {cam.description}" + (f" at {resolution[0]}×{resolution[1]}" if resolution else ""))
        return True

    def start_default(self, source: Optional[str], last: str, cameras: list[CameraInfo], index: int,
                      resolution: Optional[tuple[int, int]]) -> bool:
        """``source`` (command line) if given, else the last video or folder watched, else the camera."""
        if not source and last and last != "camera" and Path(last).exists() and kind_of(Path(last)) in ("video", "folder"):
            source = last
        if source and source != "camera":
            return self.open_path(Path(source))
        return self.start_camera(cameras, index, resolution)

    def begin_images(self, first: Path, count: int) -> None:
        """Still images replace the live source (called by the inspection controller)."""
        self.stop()
        self._begin(IMAGE, first, f"images: {count}")

    def _begin(self, mode: str, path: Optional[Path], description: str) -> None:
        self.state.source.start(mode, path, description)
        self.state.selected_id = None
        self.state.stats.reset()
        self.started.emit(description)

    # ---- running ------------------------------------------------------------------------------
    def fail(self, message: str) -> bool:
        self.state.source.error = message
        self.failed.emit(message)
        return False

    def stop(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture.deleteLater()
            self.capture = None
        if self.camera is not None:
            self.camera.stop()
            self.camera.deleteLater()
            self.camera = None
        self.slot.clear()
        self.state.source.paused = False

    def set_paused(self, paused: bool) -> None:
        self.state.source.paused = paused
        if self.capture is not None:
            (self.capture.paused.set if paused else self.capture.paused.clear)()
        if self.camera is not None:
            self.camera.paused = paused
        self.message.emit("Paused." if paused else "Playing.")

    def set_loop(self, on: bool) -> None:
        self.state.source.loop = on
        if self.capture is not None:
            self.capture.loop = on

    @property
    def frozen(self) -> bool:
        """The shown live frame will not be replaced by a new one (paused, or the video ended)."""
        running = self.capture is not None and self.capture.isRunning() or self.camera is not None
        return self.state.source.mode != IMAGE and (self.state.source.paused or not running)

    def reanalyse_shown(self) -> None:
        """Analyse the shown live frame again with the current models (paused, or a model ticked/changed)."""
        result = self.state.last_result
        if result is None or self.state.source.mode == IMAGE:
            return
        frame = result.frame
        self.worker.submit(lambda analyzer: analyzer.analyze(frame, track=False), self._on_result)

    def _on_result(self, result: FrameResult) -> None:
        if self.state.source.mode != IMAGE:  # else a live frame in flight when the user opened images
            self.frame_ready.emit(result)
