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
    from app.core.sources import sample_video
    from app.main_window import MainWindow
    from ferkit.paths import samples_dir

    w = MainWindow()
    w.resize(1400, 820)
    w.show()
    saved: list[Path] = []
    state = w.state

    def shot(name: str, widget=None) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        (widget or w).grab().save(str(path))
        saved.append(path)

    def frames(n: int, timeout_s: float = 90.0) -> bool:
        seen = [0]
        w.result_shown.connect(lambda _r: seen.__setitem__(0, seen[0] + 1))
        return wait_until(app, lambda: seen[0] >= n, timeout_s)

    def named(result) -> bool:
        return any(f.match is not None and f.match.name == ENROLLED for f in result.faces)

    if not wait_until(app, lambda: state.loaded.primary is not None, 120):
        print("no model could be loaded: the screenshots show the panels' notices", file=sys.stderr)
    w.play_video(sample_video())
    frames(40)
    w.tabs.setCurrentWidget(w.scores_panel)
    frames(3)
    shot("01_live_scores")
    compare = [n for n in w.compare_panel.names() if n != w.current_model()][:1]
    if compare:
        w.set_comparison(compare)
        frames(8)
    w.tabs.setCurrentWidget(w.compare_panel)
    frames(3)
    shot("02_compare")
    # identity: enrol the woman now, then show her named on a later frame of the video
    w.tabs.setCurrentWidget(w.identity_panel)
    frames(2)
    w.enrol_selected(ENROLLED)
    if state.loaded.identity.active:
        hits: list = []
        w.result_shown.connect(lambda r: hits.append(r) if named(r) and r.frame_index > 60 else None)
        if not wait_until(app, lambda: bool(hits), 120):
            print("the enrolled woman was not named on a later frame within 2 minutes", file=sys.stderr)
        w.toggle_pause(True)
        frames(1, 5)
    shot("03_identity_enrolled")
    for name, panel in (("04_gates", w.gates_panel), ("05_synthesis", w.synth_panel)):
        w.toggle_pause(False)
        w.tabs.setCurrentWidget(panel)
        wait_until(app, lambda p=panel: p.data is not None, 60)
        frames(3)
        shot(name)
    # a stranger: the man of single_face.jpg is "unknown", never the enrolled name
    w.inspect([samples_dir() / "single_face.jpg"])
    wait_until(app, lambda: state.inspection.finished, 120)
    w.tabs.setCurrentWidget(w.identity_panel)
    w.show_inspected(str(samples_dir() / "single_face.jpg"))
    shot("06_identity_stranger")
    w.inspect([samples_dir() / "multi_face.jpg", samples_dir() / "single_face.jpg"])
    wait_until(app, lambda: state.inspection.finished, 120)
    w.show_inspected(str(samples_dir() / "multi_face.jpg"))
    w.tabs.setCurrentWidget(w.inspect_panel)
    shot("07_inspect")
    w.tabs.setCurrentWidget(w.live_panel)
    shot("08_live_settings")
    w.show_training()
    app.processEvents()
    shot("09_training_dialog", w.training_dialog)
    w.training_dialog.hide()
    w.show_about()
    app.processEvents()
    shot("11_about", w.about_dialog)
    w.about_dialog.hide()
    # no camera at 900x600: the notice sits above the picture, the face stays uncovered
    w.cameras = []
    w.resize(900, 600)
    w.tabs.setCurrentWidget(w.scores_panel)
    w.start_camera()
    frames(10)
    shot("12_no_camera_900x600")
    w.resize(640, 480)  # the smallest window: the Model box stays on the toolbar
    frames(5)
    shot("13_window_640x480")
    w.shutdown()
    # what `ferkit-app /nonexistent/clip.mp4` shows: a fresh window, the error where the video would be
    w = MainWindow()
    w.resize(1400, 820)
    w.show()
    wait_until(app, lambda: w.state.loaded.primary is not None, 120)
    w.start_default_source("/nonexistent/clip.mp4")
    shot("10_source_error")
    w.shutdown()
    for p in saved:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
