"""``python -m app.screenshots OUTDIR``: a PNG of the main window with each panel shown.

Renders offscreen (``widget.grab()``), so anyone can regenerate the pictures in the README or
check a build without a screen: the sample video with tracked faces and smoothed bars, the
comparison, identity (the woman of the video enrolled from several live pictures, then named on a
later frame, and a stranger shown as "unknown" -- or, without a calibrated identity feature, the
panel saying so), gates, synthesis, inspection (the multi-face photo, labels covering no face), live
settings, the training dialog, Help ▸ About, the no-camera notice above the picture at 900x600, the
window at 640x480 and a source error shown in the window.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Callable, Optional


def wait_until(app, condition: Callable[[], bool], timeout_s: float = 60.0) -> bool:
    """Process Qt events until ``condition()`` holds (QtTest is not shipped in frozen builds)."""
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        app.processEvents()
        if condition():
            return True
        time.sleep(0.01)
    return False


ENROLLED = "woman in the video"


class _Camera:
    """The window being photographed, the folder the pictures go to, and the waits between them."""

    def __init__(self, app, window, out: Path) -> None:
        self.app = app
        self.window = window
        self.out = out
        self.saved: list[Path] = []

    def shot(self, name: str, widget=None) -> None:
        """Save ``widget`` (the window by default) as ``<out>/<name>.png`` once pending events are drawn."""
        self.app.processEvents()
        path = self.out / f"{name}.png"
        (widget or self.window).grab().save(str(path))
        self.saved.append(path)

    def frames(self, n: int, timeout_s: float = 90.0) -> bool:
        """Wait for ``n`` more analysed frames on screen, so bars and overlays have settled."""
        seen = [0]
        self.window.result_shown.connect(lambda _r: seen.__setitem__(0, seen[0] + 1))
        return wait_until(self.app, lambda: seen[0] >= n, timeout_s)


def _names_enrolled(result) -> bool:
    return any(f.match is not None and f.match.name == ENROLLED for f in result.faces)


def _shoot_live(cam: _Camera) -> None:
    """01-02: the sample video with the scores, then beside a second model."""
    from app.core.sources import sample_video

    w = cam.window
    w.play_video(sample_video())
    cam.frames(40)
    w.tabs.setCurrentWidget(w.scores_panel)
    cam.frames(3)
    cam.shot("01_live_scores")
    compare = [n for n in w.compare_panel.names() if n != w.current_model()][:1]
    if compare:
        w.set_comparison(compare)
        cam.frames(8)
    w.tabs.setCurrentWidget(w.compare_panel)
    cam.frames(3)
    cam.shot("02_compare")


def _shoot_enrolment(cam: _Camera) -> None:
    """03: enrol the woman of the video now, then show her named on a later frame (paused there)."""
    w = cam.window
    w.tabs.setCurrentWidget(w.identity_panel)
    cam.frames(2)
    w.enrol_selected(ENROLLED)
    if w.state.loaded.identity.active:
        hits: list = []
        w.result_shown.connect(lambda r: hits.append(r) if _names_enrolled(r) and r.frame_index > 60 else None)
        if not wait_until(cam.app, lambda: bool(hits), 120):
            print("the enrolled woman was not named on a later frame within 2 minutes", file=sys.stderr)
        w.toggle_pause(True)
        cam.frames(1, 5)
    cam.shot("03_identity_enrolled")


def _shoot_explainers(cam: _Camera) -> None:
    """04-05: the gate maps and the synthesis strip, each once its first result is in."""
    w = cam.window
    for name, panel in (("04_gates", w.gates_panel), ("05_synthesis", w.synth_panel)):
        w.toggle_pause(False)
        w.tabs.setCurrentWidget(panel)
        wait_until(cam.app, lambda p=panel: p.data is not None, 60)
        cam.frames(3)
        cam.shot(name)


def _shoot_inspection(cam: _Camera) -> None:
    """06-07: a stranger (the man of single_face.jpg) is "unknown", never the enrolled name; the multi-face photo."""
    from ferkit.paths import samples_dir

    w, state = cam.window, cam.window.state
    w.inspect([samples_dir() / "single_face.jpg"])
    wait_until(cam.app, lambda: state.inspection.finished, 120)
    w.tabs.setCurrentWidget(w.identity_panel)
    w.show_inspected(str(samples_dir() / "single_face.jpg"))
    cam.shot("06_identity_stranger")
    w.inspect([samples_dir() / "multi_face.jpg", samples_dir() / "single_face.jpg"])
    wait_until(cam.app, lambda: state.inspection.finished, 120)
    w.show_inspected(str(samples_dir() / "multi_face.jpg"))
    w.tabs.setCurrentWidget(w.inspect_panel)
    cam.shot("07_inspect")


def _shoot_settings_and_dialogs(cam: _Camera) -> None:
    """08, 09, 11: the live settings, the training dialog and Help > About."""
    w = cam.window
    w.tabs.setCurrentWidget(w.live_panel)
    cam.shot("08_live_settings")
    w.show_training()
    cam.app.processEvents()
    cam.shot("09_training_dialog", w.training_dialog)
    w.training_dialog.hide()
    w.show_about()
    cam.app.processEvents()
    cam.shot("11_about", w.about_dialog)
    w.about_dialog.hide()


def _shoot_small_windows(cam: _Camera) -> None:
    """12-13: no camera at 900x600 (the notice sits above the picture, the face stays uncovered);
    the smallest window, 640x480 (the Model box stays on the toolbar)."""
    w = cam.window
    w.cameras = []
    w.resize(900, 600)
    w.tabs.setCurrentWidget(w.scores_panel)
    w.start_camera()
    cam.frames(10)
    cam.shot("12_no_camera_900x600")
    w.resize(640, 480)
    cam.frames(5)
    cam.shot("13_window_640x480")


def _shoot_source_error(cam: _Camera) -> None:
    """10: what `ferkit-app /nonexistent/clip.mp4` shows: a fresh window, the error where the video would be."""
    from app.main_window import MainWindow

    w = cam.window = MainWindow()
    w.resize(1400, 820)
    w.show()
    wait_until(cam.app, lambda: w.state.loaded.primary is not None, 120)
    w.start_default_source("/nonexistent/clip.mp4")
    cam.shot("10_source_error")
    w.shutdown()


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip().splitlines()[0])
        return 0 if argv else 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([sys.argv[0]])
    from app.main_window import MainWindow

    w = MainWindow()
    w.resize(1400, 820)
    w.show()
    cam = _Camera(app, w, out)
    if not wait_until(app, lambda: w.state.loaded.primary is not None, 120):
        print("no model could be loaded: the screenshots show the panels' notices", file=sys.stderr)
    _shoot_live(cam)
    _shoot_enrolment(cam)
    _shoot_explainers(cam)
    _shoot_inspection(cam)
    _shoot_settings_and_dialogs(cam)
    _shoot_small_windows(cam)
    w.shutdown()
    _shoot_source_error(cam)
    for p in cam.saved:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
