"""The live view's "skipped" count (issue 22 item 10): frames the analysis went past while it was
busy with the frame before, not the frames that went by while it warmed up or ran other work."""
from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("PySide6")
pytest.importorskip("pytestqt")


class GatedAnalyzer:
    """A FrameAnalyzer stand-in whose every frame waits for the test to let it finish."""

    instances: list["GatedAnalyzer"] = []

    def __init__(self, *_a, **_kw) -> None:
        self.enrolments = None
        self.entered: list[int] = []
        self.gate = threading.Semaphore(0)
        GatedAnalyzer.instances.append(self)

    def analyze(self, rgb, frame_index=-1, captured_at=None, whole_image_if_no_face=False):
        self.entered.append(frame_index)
        assert self.gate.acquire(timeout=20)
        return SimpleNamespace(timings_ms={}, faces=[])

    def close(self) -> None:
        pass


def wait(predicate, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.005)


def test_skipped_counts_only_frames_that_were_due(qtbot, monkeypatch) -> None:
    import app.workers as workers

    monkeypatch.setattr(workers, "FrameAnalyzer", GatedAnalyzer)
    GatedAnalyzer.instances.clear()
    slot = workers.LatestSlot()
    worker = workers.InferenceWorker(cache=None, enrolments=None, slot=slot)
    rgb = np.zeros((4, 4, 3), np.uint8)

    def put(*indices: int) -> None:
        for i in indices:
            slot.put(workers.Frame(rgb, i, time.perf_counter()))

    worker.start()
    try:
        wait(lambda: GatedAnalyzer.instances)
        an = GatedAnalyzer.instances[0]
        put(0)
        wait(lambda: an.entered == [0])
        put(1, 2, 3, 4, 5)  # arrive while the first frame warms the pipeline up: never due
        an.gate.release()
        wait(lambda: an.entered == [0, 5])
        assert worker.skipped == 0
        put(6, 7, 8)  # the analysis of frame 5 is slower than the video: 6 and 7 are skipped
        an.gate.release()
        wait(lambda: an.entered == [0, 5, 8])
        assert worker.skipped == 2
        job_running, job_done = threading.Event(), threading.Event()
        worker.submit(lambda _a: (job_running.set(), job_done.wait(20)), lambda _r: None)
        an.gate.release()  # frame 8 done; the worker turns to the job
        assert job_running.wait(20)
        put(9, 10, 11, 12)  # go by while the worker scores something else (a still): not skipped by the live view
        job_done.set()
        wait(lambda: an.entered == [0, 5, 8, 12])
        assert worker.skipped == 2
        put(13)
        an.gate.release()
        wait(lambda: an.entered[-1] == 13)
        assert worker.skipped == 2  # no gap
        assert slot.dropped == 4 + 2 + 3  # the slot still counts every replaced frame (what the worker did not see)
        an.reset_tracking = lambda: None
        worker.new_source()  # another video or the camera: its own count, from 0
        an.gate.release()  # frame 13 done; the worker turns to the new source's reset
        wait(lambda: worker.skipped == 0)
    finally:
        worker.request_stop()
        slot.close()
        for _ in range(5):
            an.gate.release()
        assert worker.wait(20000)


def test_latency_text_says_skipped() -> None:
    from app.core.state import LiveStats

    assert LiveStats().latency_text(3).endswith("| skipped 3")
