"""The main window's widgets, menus and toolbar, built in one place (the ``setupUi`` of Qt Designer).

Kept apart from :mod:`app.main_window` so the window's code is only the wiring between these
widgets and the controllers. The actions call the window's methods named in ``ACTIONS``.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional

from PySide6.QtCore import QStandardPaths, Qt
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import QComboBox, QLabel, QMainWindow, QSplitter, QTabWidget, QToolBar, QVBoxLayout, QWidget

from app.camera import CameraInfo
from app.widgets.common import Banner, ElidedLabel, MessageLabel
from app.widgets.explain_panels import GatesPanel, SynthesisPanel
from app.widgets.inspect_panel import InspectPanel
from app.widgets.panels import ComparisonPanel, IdentityPanel, LivePanel, ScoresPanel
from app.widgets.video_view import VideoView


def screenshot_path() -> Path:
    """A new file name in the user's Pictures folder (the home folder when there is none)."""
    folder = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or Path.home())
    folder.mkdir(parents=True, exist_ok=True)
    return folder / time.strftime("ferkit-%Y%m%d-%H%M%S.png")


def icon(name: str) -> QIcon:
    from ferkit.paths import resources_dir

    path = resources_dir() / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


#: attribute (or None), text, window method, shortcut, menu, icon, checkable, on the toolbar
ACTIONS = (
    ("act_open", "Open…", "open_dialog", QKeySequence.StandardKey.Open, "file", "open", False, True),
    (None, "Open folder…", "open_folder_dialog", "Ctrl+Shift+O", "file", None, False, False),
    (None, "Play sample video", "play_sample", "Ctrl+1", "file", None, False, False),
    (None, "Camera", "start_camera", "Ctrl+K", "file", "camera", False, True),
    ("act_pause", "Pause", "toggle_pause", "Space", "view", "pause", True, True),
    ("act_loop", "Loop video", "set_loop", "Ctrl+L", "view", None, True, False),
    (None, "Enrol face", "enrol_selected", "Ctrl+E", "tools", "enrol", False, True),
    (None, "Screenshot", "save_screenshot", "Ctrl+Shift+S", "view", "screenshot", False, True),
    (None, "Load checkpoint…", "load_checkpoint_dialog", None, "file", None, False, False),
    (None, "Train…", "show_training", "Ctrl+T", "tools", "train", False, True),
    (None, "Quit", "close", QKeySequence.StandardKey.Quit, "file", None, False, False),
    (None, "About ferkit…", "show_about", QKeySequence.StandardKey.HelpContents, "help", None, False, False),
)


class MainWindowUi:
    """Mixed into the main window: ``setup_ui`` creates every widget as an attribute of it."""

    def setup_ui(self: QMainWindow, devices: list[str], cameras: list[CameraInfo]) -> None:
        self.view = VideoView()
        self.tabs = QTabWidget()
        self.scores_panel, self.compare_panel, self.identity_panel = ScoresPanel(), ComparisonPanel(), IdentityPanel()
        self.gates_panel, self.synth_panel = GatesPanel(), SynthesisPanel()
        self.inspect_panel, self.live_panel = InspectPanel(), LivePanel(devices)
        for w, name in ((self.scores_panel, "Scores"), (self.compare_panel, "Compare"),
                        (self.identity_panel, "Identity"), (self.gates_panel, "Gates"),
                        (self.synth_panel, "Synthesis"), (self.inspect_panel, "Inspect"), (self.live_panel, "Live")):
            self.tabs.addTab(w, name)
        split = QSplitter(Qt.Orientation.Horizontal)
        left = QWidget()
        column = QVBoxLayout(left)
        column.setContentsMargins(0, 0, 0, 0)
        column.setSpacing(2)
        #: source notices that must not cover the picture (no camera: the sample plays instead)
        self.banner = Banner()
        column.addWidget(self.banner)
        column.addWidget(self.view, 1)
        split.addWidget(left)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([780, 480])
        # the panels' own minimum (~470 px) plus the video's made the window at least 790x557: a 640x480
        # screen could not hold it; below their comfortable size the panels squeeze instead
        self.tabs.setMinimumSize(260, 200)
        self.setCentralWidget(split)
        sb = self.statusBar()
        # every status-bar text elides with its whole text in the tooltip instead of being cut when narrow
        self.source_label, self.message_label = ElidedLabel("", min_width=120), MessageLabel()
        self.fps_label, self.device_label = QLabel("— fps"), QLabel("")
        #: per-stage times: elided in the middle so the start and the end-to-end latency stay readable
        self.latency_label = ElidedLabel("", Qt.TextElideMode.ElideMiddle, min_width=90, max_width=260)
        #: the selected model, why it is selected and its inference engine (app.widgets.model_picker fills it)
        self.model_label = ElidedLabel("", min_width=90, max_width=300)
        # one row of labels (QStatusBar's permanent widgets never shrink below their hint, so the message
        # alone was squeezed); fit_status_bar caps each label's share of the window's width
        for w, stretch in ((self.source_label, 0), (self.message_label, 1), (self.fps_label, 0),
                           (self.latency_label, 0), (self.model_label, 0), (self.device_label, 0)):
            sb.addWidget(w, stretch)
        tb = QToolBar("Main")
        tb.setObjectName("main_toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.addToolBar(tb)
        self.toolbar = tb
        menus = {k: self.menuBar().addMenu(t) for k, t in (("file", "&File"), ("view", "&View"), ("tools", "&Tools"),
                                                             ("help", "&Help"))}
        for attr, text, method, shortcut, menu, icon_name, checkable, on_toolbar in ACTIONS:
            a = QAction(icon(icon_name) if icon_name else QIcon(), text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.setCheckable(checkable)
            slot: Callable = getattr(self, method)
            a.triggered.connect((lambda on, f=slot: f(on)) if checkable else (lambda _on=False, f=slot: f()))
            if method == "close":
                menus[menu].addSeparator()
            menus[menu].addAction(a)
            if on_toolbar:
                tb.addAction(a)
            if attr:
                setattr(self, attr, a)
        tb.addSeparator()
        tb.addWidget(QLabel(" Model "))
        self.model_combo = QComboBox()
        self.model_combo.setMinimumWidth(160)
        self.model_combo.setToolTip("Weights of the model whose scores are shown (shipped and loaded checkpoints)")
        tb.addWidget(self.model_combo)
        tb.addWidget(QLabel(" Camera "))
        self.camera_combo, self.resolution_combo = QComboBox(), QComboBox()
        tb.addWidget(self.camera_combo)
        tb.addWidget(self.resolution_combo)
        self.camera_combo.currentIndexChanged.connect(lambda i: self._camera_picked(cameras, i))
        for cam in cameras:
            self.camera_combo.addItem(cam.description)
        if not cameras:
            self.camera_combo.addItem("no camera")
            self.camera_combo.setEnabled(False)
            self.resolution_combo.setEnabled(False)

    def fit_toolbar(self) -> None:
        """Icons only when the buttons' words would push the Model box into the toolbar's overflow menu.

        Why: at 640x480 the Model box (the one choice that changes every label) hid behind the ``»``
        button; the actions are also in the menus and keep their names as tooltips.
        """
        tb = self.toolbar
        if not hasattr(self, "_toolbar_text_width"):
            tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
            self._toolbar_text_width = tb.sizeHint().width()
        style = Qt.ToolButtonStyle.ToolButtonTextBesideIcon if self.width() >= self._toolbar_text_width \
            else Qt.ToolButtonStyle.ToolButtonIconOnly
        if tb.toolButtonStyle() != style:
            tb.setToolButtonStyle(style)

    #: the most of the window's width each status-bar label asks for (the message gets the rest)
    STATUS_SHARES = {"source_label": 0.15, "latency_label": 0.2, "model_label": 0.22}

    def fit_status_bar(self) -> None:
        """Each label asks for at most its share of the width, so the message always keeps room and the
        others elide (whole text in the tooltip) instead of one text being cut."""
        for name, share in self.STATUS_SHARES.items():
            label = getattr(self, name)
            label.max_width = max(label.min_width, int(self.width() * share))
            label.updateGeometry()

    def _camera_picked(self, cameras: list[CameraInfo], index: int) -> None:
        """The picked camera's resolutions, 640×480 preselected when it has it."""
        self.resolution_combo.clear()
        if 0 <= index < len(cameras):
            for w, h in cameras[index].resolutions:
                self.resolution_combo.addItem(f"{w}×{h}", (w, h))
            self.resolution_combo.setCurrentIndex(max(0, self.resolution_combo.findText("640×480")))

    def show_device(self, device: str) -> Optional[str]:
        """The device in the status bar; the reason in words when it cannot be used."""
        from ferkit.models.weights import resolve_device

        try:
            self.device_label.setText(f"device: {resolve_device(device)}" + (" (auto)" if device == "auto" else ""))
        except RuntimeError as exc:
            return str(exc)
        return None

    def show_live_stats(self, visible: bool) -> None:
        """fps and stage times belong to a live source; reset and hidden for still images."""
        self.fps_label.setText("— fps")
        self.latency_label.setText("")
        for w in (self.fps_label, self.latency_label):
            w.setVisible(visible)
