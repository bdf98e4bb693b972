"""``python -m app.screenshots OUTDIR``: a PNG of the main window with each panel shown.

Renders offscreen (``widget.grab()``), so anyone can regenerate the pictures in the README or
check a build without a screen: the sample video with tracked faces and smoothed bars, the
comparison, identity (a face enrolled from the video), gates, synthesis, inspection (the
multi-face photo), live settings and the training dialog.
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

    def shot(name: str, widget=None) -> None:
        app.processEvents()
        path = out / f"{name}.png"
        (widget or w).grab().save(str(path))
        saved.append(path)

    def frames(n: int, timeout_s: float = 90.0) -> bool:
        seen = [0]
        w.result_shown.connect(lambda _r: seen.__setitem__(0, seen[0] + 1))
        return wait_until(app, lambda: seen[0] >= n, timeout_s)

    if not wait_until(app, lambda: w.handles.get("primary") is not None, 120):
        print("no model could be loaded: the screenshots show the panels' notices", file=sys.stderr)
    w.play_video(sample_video())
    frames(40)
    w.tabs.setCurrentWidget(w.scores_panel)
    frames(3)
    shot("01_live_scores")
    compare = [n for n in w.compare_panel_names() if n != w.current_model()][:1]
    if compare:
        w.set_comparison(compare)
        frames(8)
    w.tabs.setCurrentWidget(w.compare_panel)
    frames(3)
    shot("02_compare")
    w.tabs.setCurrentWidget(w.identity_panel)
    frames(2)
    if w.handles.get("primary") is not None and w.handles["primary"].has_identity:
        w.enrol_selected("person in the video")
        frames(5)
    shot("03_identity")
    for name, panel, data in (("04_gates", w.gates_panel, "data"), ("05_synthesis", w.synth_panel, "data")):
        w.tabs.setCurrentWidget(panel)
        wait_until(app, lambda p=panel: p.data is not None, 60)
        frames(3)
        shot(name)
    w.inspect([samples_dir() / "multi_face.jpg", samples_dir() / "single_face.jpg"])
    wait_until(app, lambda: len(w.inspected) >= 2, 120)
    w.show_inspected(str(samples_dir() / "multi_face.jpg"))
    w.tabs.setCurrentWidget(w.inspect_panel)
    shot("06_inspect")
    w.tabs.setCurrentWidget(w.live_panel)
    shot("07_live_settings")
    w.show_training()
    app.processEvents()
    shot("08_training_dialog", w.training_dialog)
    w.training_dialog.hide()
    w.shutdown()
    for p in saved:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
