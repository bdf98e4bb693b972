"""Background workers: capture, detection + inference, and "latest wins" explainers.

Shape borrowed from superqt's thread workers: each worker runs in its own QThread, talks to the
GUI only through signals, and stops cooperatively through a flag checked between frames (never
``QThread.terminate()``). Frames travel through :class:`LatestSlot`, a bounded queue of one that
replaces an unread frame with the newer one: when inference is slower than the camera, stale
frames are dropped and latency stays one frame, instead of a backlog that grows for ever.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import QThread, Signal

from ferkit.face.tracking import Smoother

from app.core.analyzer import FrameAnalyzer, refresh_enrolments
from app.core.enrolment import EnrolmentStore
from app.core.identity import choose_identity
from app.core.models import ModelCache
from app.core.sources import SourceError, VideoFile
from app.errors import plain_message

log = logging.getLogger("ferkit.app")


@dataclass
class Frame:
    rgb: np.ndarray
    index: int
    captured_at: float  # perf_counter when it was read
    capture_ms: float = 0.0
    still: bool = False


class LatestSlot:
    """A queue of capacity one that keeps the newest item; counts what it dropped."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self._closed = False
        self.dropped = 0
        self.put_count = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self.put_count += 1
            self._cond.notify()

    def get(self, timeout: float = 0.05) -> Any:
        with self._cond:
            if self._item is None and not self._closed:
                self._cond.wait(timeout)
            item, self._item = self._item, None
            return item

    def clear(self) -> None:
        with self._cond:
            self._item = None

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()


class StoppableThread(QThread):
    """A QThread with a cooperative stop flag; ``stop()`` asks and waits, it never kills."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self._stop = threading.Event()

    def request_stop(self) -> None:
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self, timeout_ms: int = 5000) -> bool:
        self.request_stop()
        return self.wait(timeout_ms)


class VideoCaptureWorker(StoppableThread):
    """Decodes a video file with OpenCV at its own frame rate (or as fast as possible for benchmarks)."""

    opened = Signal(object)  # dict: path, fps, frames
    failed = Signal(str)
    ended = Signal()

    def __init__(self, path: Path, slot: LatestSlot, loop: bool = True, realtime: bool = True,
                 max_frames: Optional[int] = None, parent=None) -> None:
        super().__init__(parent)
        self.path = Path(path)
        self.slot = slot
        self.loop = loop
        self.realtime = realtime
        self.max_frames = max_frames
        self.paused = threading.Event()
        self.frames_read = 0
        #: in non-realtime mode, wait until the consumer took the previous frame (benchmarks)
        self.backpressure: Optional[Callable[[], bool]] = None

    def run(self) -> None:
        try:
            video = VideoFile(self.path, loop=self.loop)
        except SourceError as exc:
            self.failed.emit(str(exc))
            return
        self.opened.emit({"path": str(self.path), "fps": video.fps, "frames": video.frame_count})
        period = 1.0 / video.fps
        due = time.perf_counter()
        try:
            while not self.stopping:
                if self.paused.is_set():
                    time.sleep(0.02)
                    due = time.perf_counter()
                    continue
                if self.backpressure is not None:
                    while not self.stopping and not self.backpressure():
                        time.sleep(0.0005)
                video.loop = self.loop
                try:
                    rgb = video.read()
                except SourceError as exc:  # damaged mid-way: said once, never looped
                    self.failed.emit(str(exc))
                    return
                if rgb is None:
                    if video.index < 0:
                        self.failed.emit(f"{self.path.name} holds no readable frames.")
                    else:
                        self.ended.emit()
                    return
                self.frames_read += 1
                self.slot.put(Frame(rgb, video.index, time.perf_counter(), video.decode_ms))
                if self.max_frames is not None and self.frames_read >= self.max_frames:
                    self.ended.emit()
                    return
                if self.realtime:
                    due += period
                    delay = due - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                    elif delay < -period:
                        due = time.perf_counter()  # fell behind: restart the clock, never race to catch up
        finally:
            video.close()


@dataclass
class AnalyzerConfig:
    primary: Optional[str] = None
    comparison: list[str] = field(default_factory=list)
    device: str = "auto"
    max_faces: int = 5
    detector: str = "near"
    smoother: Smoother = field(default_factory=Smoother)
    extra_preprocessing: set = field(default_factory=set)


@dataclass
class Job:
    """Work for the inference thread and what to do with its outcome, on the GUI thread."""

    fn: Callable[[FrameAnalyzer], Any]
    on_done: Callable[[Any], None]
    on_failed: Optional[Callable[[str], None]] = None


class InferenceWorker(StoppableThread):
    """Owns the FacePipeline and models of the live view (one pipeline per thread).

    Live frames come through a :class:`LatestSlot` (stale ones dropped); still images and
    other jobs through a FIFO that is never dropped (inspection must score every file). Each job
    carries its own callbacks, called on the GUI thread (queued signals to this object, which lives
    there), so no one has to dispatch on what a result is.
    """

    result = Signal(object)  # FrameResult of a live frame
    _job_done = Signal(object, object)  # (Job, result), delivered to the job's own callback
    _job_failed = Signal(object, str)  # (Job, plain message)
    models_changed = Signal(object)  # dict: primary, comparison, device, identity (IdentityChoice)
    failed = Signal(str)

    def __init__(self, cache: ModelCache, enrolments: EnrolmentStore, slot: Optional[LatestSlot] = None,
                 parent=None) -> None:
        super().__init__(parent)
        self.cache = cache
        self.enrolments = enrolments
        self.slot = slot or LatestSlot()
        self._jobs: "queue.Queue[Job]" = queue.Queue()
        self._config_lock = threading.Lock()
        self._pending: Optional[AnalyzerConfig] = None
        self.config = AnalyzerConfig()
        self.processed = 0
        #: live frames the analysis skipped because it was still busy with the frame before (the status
        #: bar's "skipped" count). Frames that went by while it loaded models, ran other work (stills,
        #: re-scoring) or warmed up on its first frame were never due for analysis and are not counted
        #: (the slot's ``dropped`` counts those too: 33 of them in the first second of the sample video).
        #: A new source starts a new count.
        self.skipped = 0
        self._last_index: Optional[int] = None
        #: the previous live frame was analysed in steady state (its gap to the next one counts)
        self._steady = False
        #: a live frame has been analysed since the last model change or new source (no warm-up left)
        self._warm = False
        self.busy = False
        self._job_done.connect(self._deliver_done)
        self._job_failed.connect(self._deliver_failed)

    # ---- called from the GUI thread ----------------------------------------------------
    def configure(self, config: AnalyzerConfig) -> None:
        with self._config_lock:
            self._pending = config

    def submit(self, fn: Callable[[FrameAnalyzer], Any], on_done: Callable[[Any], None],
               on_failed: Optional[Callable[[str], None]] = None) -> None:
        """Run ``fn(analyzer)`` in this thread; then ``on_done(result)`` or ``on_failed(message)`` on the GUI thread.

        Without ``on_failed`` the message goes out through :attr:`failed` (the window's status bar).
        """
        self._jobs.put(Job(fn, on_done, on_failed))

    def new_source(self) -> None:
        """A new source numbers its faces from #1 and counts its skipped frames from 0 (queued, so it
        happens in this thread before the new source's first frame is analysed)."""
        self.submit(self._start_source_count, lambda _none: None)

    def _start_source_count(self, analyzer: FrameAnalyzer) -> None:
        analyzer.reset_tracking()
        self.skipped, self._last_index = 0, None

    def _deliver_done(self, job: Job, out: Any) -> None:
        job.on_done(out)

    def _deliver_failed(self, job: Job, message: str) -> None:
        (job.on_failed or self.failed.emit)(message)

    def idle(self) -> bool:
        return not self.busy and self.slot._item is None

    # ---- worker thread ------------------------------------------------------------------
    def count_skipped(self, frame: Frame) -> int:
        """Add the frames between the previous live frame and ``frame`` that the analysis skipped
        while keeping up (see :attr:`skipped`); returns how many were added."""
        last, self._last_index = self._last_index, frame.index
        if frame.still or last is None or frame.index <= last or not self._steady:
            return 0  # first frame, a loop or new source restarting the count, or not steady yet
        gap = frame.index - last - 1
        self.skipped += gap
        return gap

    def _apply_config(self, analyzer: Optional[FrameAnalyzer]) -> Optional[FrameAnalyzer]:
        with self._config_lock:
            cfg, self._pending = self._pending, None
        if cfg is None:
            return analyzer
        self._warm = self._steady = False  # models (re)loaded: the next frame warms up, nothing was due
        if analyzer is None or cfg.max_faces != self.config.max_faces or cfg.detector != analyzer.detector:
            if analyzer is not None:
                analyzer.close()
            analyzer = FrameAnalyzer(self.cache, max_faces=cfg.max_faces, device=cfg.device, detector=cfg.detector)
            analyzer.enrolments = self.enrolments
        analyzer.device = cfg.device
        analyzer.extra_preprocessing = set(cfg.extra_preprocessing)
        if cfg.smoother != analyzer.tracker.smoother:
            analyzer.set_smoother(cfg.smoother)
        primary_changed = cfg.primary != self.config.primary or cfg.device != self.config.device \
            or analyzer.primary is None
        self.config = cfg
        try:
            analyzer.set_models(cfg.primary, cfg.comparison)
        except Exception as exc:  # a damaged checkpoint, a missing file: say so, keep running
            log.exception("loading models failed")
            analyzer.primary, analyzer.comparison = None, []
            self.failed.emit(plain_message(exc, "The model could not be loaded"))
        if primary_changed:
            self._choose_identity(analyzer)
        self.models_changed.emit({"primary": analyzer.primary, "comparison": list(analyzer.comparison),
                                  "device": cfg.device, "identity": analyzer.identity})
        return analyzer

    def _choose_identity(self, analyzer: FrameAnalyzer) -> None:
        """The identity feature for "same person?" (cards read once per model change, here, not per frame)."""
        p = analyzer.primary
        choice = choose_identity(p.key if p else None, p.weights if p else None, bool(p and p.has_identity))
        try:
            analyzer.set_identity(choice)
            refresh_enrolments(analyzer)
        except Exception as exc:
            log.exception("loading the identity weights failed")
            analyzer.set_identity(type(choice)(reason=plain_message(exc, f"The identity weights '{choice.key}' "
                                                                         "could not be loaded")))

    def run(self) -> None:
        analyzer: Optional[FrameAnalyzer] = None
        try:
            analyzer = self._apply_config(None) if self._pending else None
            if analyzer is None:
                analyzer = FrameAnalyzer(self.cache, max_faces=self.config.max_faces, device=self.config.device,
                                         detector=self.config.detector)
                analyzer.enrolments = self.enrolments
            last_index = -1  # frame index of the last live frame
            while not self.stopping:
                analyzer = self._apply_config(analyzer)
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    job = None
                if job is not None:
                    self.busy = True
                    try:
                        out = job.fn(analyzer)
                    except Exception as exc:
                        log.exception("job failed")
                        self._job_failed.emit(job, plain_message(exc, "That could not be done"))
                    else:
                        self._job_done.emit(job, out)
                    finally:
                        self.busy = False
                        self._steady = False  # frames that went by meanwhile were not the live view's to analyse
                    continue
                frame: Optional[Frame] = self.slot.get(0.05)
                if frame is None:
                    continue
                if 0 <= frame.index < last_index:  # the video looped: its faces are numbered from #1 again
                    analyzer.reset_tracking()
                last_index = frame.index
                self.busy = True
                try:
                    self.count_skipped(frame)
                    res = analyzer.analyze(frame.rgb, frame_index=frame.index, captured_at=frame.captured_at,
                                           whole_image_if_no_face=frame.still)
                    res.timings_ms = {"capture": frame.capture_ms, **res.timings_ms}
                    self.processed += 1
                    self._steady, self._warm = self._warm, True
                    self.result.emit(res)
                except Exception as exc:
                    log.exception("analysis failed")
                    self.failed.emit(plain_message(exc, "A frame could not be analysed"))
                    self._stop.wait(0.5)
                finally:
                    self.busy = False
        except Exception as exc:  # pragma: no cover - reported, never raised into Qt
            log.error("inference worker stopped: %s", traceback.format_exc())
            self.failed.emit(plain_message(exc, "The analysis stopped"))
        finally:
            if analyzer is not None:
                analyzer.close()


class LatestWinsWorker(StoppableThread):
    """Runs ``fn(payload)`` on the newest submitted payload only (gates, synthesis).

    ``min_interval_s`` throttles how often it runs so an expensive explainer cannot starve the
    live pipeline on a small CPU; the live view never waits for it.
    """

    done = Signal(object)
    failed = Signal(str)

    def __init__(self, fn: Callable[[Any], Any], min_interval_s: float = 0.0, parent=None) -> None:
        super().__init__(parent)
        self.fn = fn
        self.min_interval_s = min_interval_s
        self.slot = LatestSlot()
        self.runs = 0
        self.last_ms = 0.0

    def submit(self, payload: Any) -> None:
        self.slot.put(payload)

    def run(self) -> None:
        last = 0.0
        while not self.stopping:
            wait = self.min_interval_s - (time.perf_counter() - last)
            if wait > 0:
                self._stop.wait(wait)
                continue
            payload = self.slot.get(0.05)
            if payload is None:
                continue
            last = time.perf_counter()
            try:
                out = self.fn(payload)
            except Exception as exc:
                log.exception("explainer failed")
                self.failed.emit(plain_message(exc, "This view could not be computed"))
                continue
            self.last_ms = (time.perf_counter() - last) * 1e3
            self.runs += 1
            self.done.emit(out)
