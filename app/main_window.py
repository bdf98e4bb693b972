"""The main window: live view + panels, wired to the workers by signals only.

Nothing slow runs on the GUI thread: video decoding, face detection, inference, gates and
synthesis all live in workers (:mod:`app.workers`); the window only paints what they send and
turns user actions into worker configuration.
"""
from __future__ import annotations

import logging
import time
from collections import deque
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PySide6.QtCore import QSettings, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QIcon, QKeySequence
from PySide6.QtWidgets import (QComboBox, QFileDialog, QHBoxLayout, QInputDialog, QLabel, QMainWindow,
                               QMessageBox, QSplitter, QTabWidget, QToolBar, QWidget)

from ferkit.models.weights import get_weights, list_weights

from app.camera import CameraSource, list_cameras, multimedia_problem
from app.core.analyzer import FrameResult, face_picture, identity_of_picture
from app.core.enrolment import EnrolmentStore
from app.core.export import result_records, save_records
from app.core.models import ModelCache, configure_torch_threads, default_weights, display_name
from app.core.sources import SourceError, folder_images, kind_of, load_image, sample_video
from ferkit.face.tracking import Smoother
from app.errors import config_dir, plain_message
from app.training import JobManager
from app.widgets.explain_panels import GatesPanel, SynthesisPanel
from app.widgets.inspect_panel import InspectPanel
from app.widgets.panels import ComparisonPanel, IdentityPanel, LivePanel, ScoresPanel, pick_face
from app.widgets.video_view import VideoView
from app.workers import AnalyzerConfig, Frame, InferenceWorker, LatestSlot, LatestWinsWorker, VideoCaptureWorker

log = logging.getLogger("ferkit.app")

EXPLAINER = "fersnet"  # shipped FERSNet weights used by the gates/synthesis panels


def available_devices() -> list[str]:
    import torch

    return ["auto", "cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def app_settings() -> QSettings:
    """Settings in an ini file in the config folder (tests point ``FERKIT_APP_CONFIG`` elsewhere)."""
    return QSettings(str(config_dir() / "settings.ini"), QSettings.Format.IniFormat)


def icon(name: str) -> QIcon:
    from ferkit.paths import resources_dir

    path = resources_dir() / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


class MainWindow(QMainWindow):
    #: emitted after every displayed result (tests and the benchmark wait on it)
    result_shown = Signal(object)
    inspect_done = Signal(str)

    def __init__(self, *, device: Optional[str] = None, weights: Optional[str] = None) -> None:
        super().__init__()
        configure_torch_threads()
        self.setWindowTitle("ferkit — facial expression recognition")
        self.setWindowIcon(icon("ferkit"))
        self.resize(1280, 760)
        self.setAcceptDrops(True)
        self.settings = app_settings()
        self.cache = ModelCache()
        self.devices = available_devices()
        self.enrolment_dir = Path(str(self.settings.value("enrolments_path", str(config_dir() / "enrolments"))))
        self.enrolments = self._load_enrolments()
        self.slot = LatestSlot()
        self.worker = InferenceWorker(self.cache, self.enrolments, self.slot)
        self.capture: Optional[VideoCaptureWorker] = None
        self.camera: Optional[CameraSource] = None
        self.mode: Optional[str] = None  # "video" | "camera" | "image"
        self.source_path: Optional[Path] = None
        self.last_result: Optional[FrameResult] = None
        self.selected_id: Optional[int] = None
        self.handles: dict[str, Any] = {"primary": None, "comparison": []}
        self.inspected: dict[str, Any] = {}  # path -> FrameResult | error str
        self.inspect_order: list[str] = []
        self.shown_path: Optional[str] = None
        self.whole_image = False
        self._frame_times: deque[float] = deque(maxlen=60)
        self._timings: dict[str, deque] = {}
        self._last_stats = 0.0
        self.jobs = JobManager(self)
        self.jobs.checkpoint_ready.connect(self.add_checkpoint)
        self.training_dialog = None
        self.explain_interval = 0.3

        self._build_ui()
        self._build_actions()
        self._restore_settings(device, weights)

        self.worker.result.connect(self._on_result)
        self.worker.job_done.connect(self._on_job_done)
        self.worker.job_failed.connect(self._on_job_failed)
        self.worker.models_changed.connect(self._on_models_changed)
        self.worker.failed.connect(lambda m: self.notify(m, error=True))
        self.gates_worker = LatestWinsWorker(self._compute_gates, self.explain_interval)
        self.gates_worker.done.connect(self.gates_panel.set_data)
        self.gates_worker.failed.connect(self.gates_panel.say)
        self.synth_worker = LatestWinsWorker(self._compute_synthesis, self.explain_interval)
        self.synth_worker.done.connect(self.synth_panel.set_data)
        self.synth_worker.failed.connect(self.synth_panel.say)
        self._push_config()
        self.worker.start()
        self.gates_worker.start()
        self.synth_worker.start()

    # ================================================================== UI
    def _build_ui(self) -> None:
        self.view = VideoView()
        self.view.face_clicked.connect(self._select_face)
        self.tabs = QTabWidget()
        self.scores_panel = ScoresPanel()
        self.compare_panel = ComparisonPanel()
        self.identity_panel = IdentityPanel()
        self.gates_panel = GatesPanel()
        self.synth_panel = SynthesisPanel()
        self.inspect_panel = InspectPanel()
        self.live_panel = LivePanel(self.devices)
        for w, name in ((self.scores_panel, "Scores"), (self.compare_panel, "Compare"),
                        (self.identity_panel, "Identity"), (self.gates_panel, "Gates"),
                        (self.synth_panel, "Synthesis"), (self.inspect_panel, "Inspect"), (self.live_panel, "Live")):
            self.tabs.addTab(w, name)
        self.tabs.currentChanged.connect(lambda _i: self._refresh_panels())
        split = QSplitter(Qt.Orientation.Horizontal)
        split.addWidget(self.view)
        split.addWidget(self.tabs)
        split.setStretchFactor(0, 3)
        split.setStretchFactor(1, 2)
        split.setSizes([780, 480])
        self.setCentralWidget(split)

        self.compare_panel.models_changed.connect(lambda _m: self._push_config())
        self.identity_panel.enrol_face.connect(self.enrol_selected)
        self.identity_panel.enrol_image.connect(self.enrol_from_image)
        self.identity_panel.remove_name.connect(self._remove_enrolment)
        self.identity_panel.clear_all.connect(self._clear_enrolments)
        self.inspect_panel.open_requested.connect(self.open_dialog)
        self.inspect_panel.open_folder_requested.connect(self.open_folder_dialog)
        self.inspect_panel.image_selected.connect(self.show_inspected)
        self.inspect_panel.whole_image_changed.connect(self._whole_image_changed)
        self.inspect_panel.export_requested.connect(lambda: self.export_results())
        self.inspect_panel.save_annotated_requested.connect(lambda: self.save_annotated())
        self.live_panel.smoothing_changed.connect(lambda _s: self._push_config())
        self.live_panel.max_faces_changed.connect(lambda _n: self._push_config())
        self.live_panel.detector_changed.connect(lambda _d: self._push_config())
        self.live_panel.device_changed.connect(lambda _d: self._push_config())
        self.live_panel.explain_interval_changed.connect(self._set_explain_interval)

        sb = self.statusBar()
        self.source_label = QLabel("")
        sb.addWidget(self.source_label)
        self.fps_label = QLabel("— fps")
        self.latency_label = QLabel("")
        self.device_label = QLabel("")
        for w in (self.fps_label, self.latency_label, self.device_label):
            sb.addPermanentWidget(w)

    def _build_actions(self) -> None:
        tb = QToolBar("Main")
        tb.setObjectName("main_toolbar")
        tb.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.addToolBar(tb)
        menu_file = self.menuBar().addMenu("&File")
        menu_view = self.menuBar().addMenu("&View")
        menu_tools = self.menuBar().addMenu("&Tools")

        def action(text, slot, shortcut=None, menu=None, icon_name=None, checkable=False, toolbar=True) -> QAction:
            a = QAction(icon(icon_name) if icon_name else QIcon(), text, self)
            if shortcut:
                a.setShortcut(QKeySequence(shortcut))
            a.setCheckable(checkable)
            a.triggered.connect(slot)
            (menu or menu_file).addAction(a)
            if toolbar:
                tb.addAction(a)
            return a

        self.act_open = action("Open…", self.open_dialog, QKeySequence.StandardKey.Open, icon_name="open")
        self.act_open_folder = action("Open folder…", self.open_folder_dialog, "Ctrl+Shift+O", toolbar=False)
        self.act_sample = action("Play sample video", lambda: self.open_path(sample_video()), "Ctrl+1", toolbar=False)
        self.act_camera = action("Camera", self.start_camera, "Ctrl+K", icon_name="camera")
        self.act_pause = action("Pause", self.toggle_pause, "Space", menu=menu_view, icon_name="pause", checkable=True)
        self.act_loop = action("Loop video", self._loop_changed, "Ctrl+L", menu=menu_view, checkable=True, toolbar=False)
        self.act_enrol = action("Enrol face", lambda: self.enrol_selected(""), "Ctrl+E", menu=menu_tools,
                                icon_name="enrol")
        self.act_shot = action("Screenshot", lambda: self.save_screenshot(), "Ctrl+Shift+S", menu=menu_view,
                               icon_name="screenshot")
        self.act_ckpt = action("Load checkpoint…", self.load_checkpoint_dialog, None, toolbar=False)
        self.act_train = action("Train…", self.show_training, "Ctrl+T", menu=menu_tools, icon_name="train")
        menu_file.addSeparator()
        self.act_quit = action("Quit", self.close, QKeySequence.StandardKey.Quit, toolbar=False)
        tb.addSeparator()
        tb.addWidget(QLabel(" Model "))
        self.model_combo = QComboBox()
        self.model_combo.setMinimumWidth(160)
        self.model_combo.setToolTip("Weights of the model whose scores are shown (shipped and loaded checkpoints)")
        self.model_combo.currentIndexChanged.connect(lambda _i: self._model_picked())
        tb.addWidget(self.model_combo)
        tb.addWidget(QLabel(" Camera "))
        self.camera_combo = QComboBox()
        self.resolution_combo = QComboBox()
        tb.addWidget(self.camera_combo)
        tb.addWidget(self.resolution_combo)
        self.camera_combo.currentIndexChanged.connect(self._camera_picked)
        self.cameras = list_cameras()
        if self.cameras:
            for cam in self.cameras:
                self.camera_combo.addItem(cam.description)
        else:
            self.camera_combo.addItem("no camera")
            self.camera_combo.setEnabled(False)
            self.resolution_combo.setEnabled(False)

    def _camera_picked(self, index: int) -> None:
        self.resolution_combo.clear()
        if 0 <= index < len(self.cameras):
            for w, h in self.cameras[index].resolutions:
                self.resolution_combo.addItem(f"{w}×{h}", (w, h))
            i = self.resolution_combo.findText("640×480")
            if i >= 0:
                self.resolution_combo.setCurrentIndex(i)

    # ================================================================== settings
    def _restore_settings(self, device: Optional[str], weights: Optional[str]) -> None:
        s = self.settings
        saved = s.value("checkpoints", []) or []
        saved = [saved] if isinstance(saved, str) else list(saved)  # ini files return one item as a str
        self.checkpoints = [c for c in saved if Path(c).exists()]
        self._fill_models()
        want = weights or s.value("model") or default_weights()
        if want and Path(str(want)).suffix in {".pt", ".pth", ".ckpt"} and Path(str(want)).exists():
            self.add_checkpoint(str(want), select=False)
        self._select_model(want)
        lp = self.live_panel
        lp.mode.setCurrentText(str(s.value("smoothing/mode", "ema")))
        lp.alpha.setValue(float(s.value("smoothing/alpha", 0.35)))
        lp.window.setValue(int(s.value("smoothing/window", 8)))
        lp.max_faces.setValue(int(s.value("max_faces", 5)))
        i = lp.detector.findData(str(s.value("detector", "near")))
        lp.detector.setCurrentIndex(max(0, i))
        dev = device or str(s.value("device", "auto"))
        lp.device.setCurrentText(dev if dev in self.devices else "auto")
        lp.interval.setValue(float(s.value("explain_interval", 0.3)))
        self.explain_interval = lp.interval.value()
        self.act_loop.setChecked(str(s.value("loop", "true")).lower() == "true")
        comp = s.value("comparison", []) or []
        self._fill_comparison([comp] if isinstance(comp, str) else list(comp))

    def save_settings(self) -> None:
        s = self.settings
        s.setValue("model", self.current_model() or "")
        s.setValue("comparison", self.compare_panel.checked())
        s.setValue("checkpoints", self.checkpoints)
        sm = self.live_panel.smoother()
        s.setValue("smoothing/mode", sm.mode)
        s.setValue("smoothing/alpha", sm.alpha)
        s.setValue("smoothing/window", sm.window)
        s.setValue("max_faces", self.live_panel.max_faces.value())
        s.setValue("detector", self.live_panel.detector.currentData())
        s.setValue("device", self.live_panel.device.currentText())
        s.setValue("explain_interval", self.live_panel.interval.value())
        s.setValue("loop", self.act_loop.isChecked())
        s.setValue("enrolments_path", str(self.enrolment_dir))
        src = "camera" if self.mode == "camera" else str(self.source_path or "")
        if self.source_path is not None and self.source_path.name == sample_video().name:
            src = ""  # the fallback sample is not a choice worth restoring
        s.setValue("source", src)
        s.sync()

    # ================================================================== models
    def _fill_models(self) -> None:
        current = self.current_model()
        self.model_combo.blockSignals(True)
        self.model_combo.clear()
        for name in list_weights():
            self.model_combo.addItem(name, name)
        for path in self.checkpoints:
            self.model_combo.addItem(f"checkpoint: {display_name(path)}", path)
        if self.model_combo.count() == 0:
            self.model_combo.addItem("no weights installed", None)
        self.model_combo.blockSignals(False)
        if current:
            self._select_model(current, push=False)

    def _fill_comparison(self, checked: list[str]) -> None:
        names = list_weights() + list(self.checkpoints)
        self.compare_panel.set_available(names, {p: display_name(p) for p in names}, checked)

    def compare_panel_names(self) -> list[str]:
        return [self.compare_panel.list.item(i).data(Qt.ItemDataRole.UserRole)
                for i in range(self.compare_panel.list.count())]

    def set_comparison(self, keys: list[str]) -> None:
        """Tick exactly ``keys`` in the comparison list (and reconfigure the worker once)."""
        self._fill_comparison(list(keys))
        self._push_config()

    def _select_model(self, key: Optional[str], push: bool = True) -> None:
        i = self.model_combo.findData(key) if key else -1
        self.model_combo.blockSignals(True)
        self.model_combo.setCurrentIndex(max(0, i))
        self.model_combo.blockSignals(False)
        if push:
            self._push_config()

    def current_model(self) -> Optional[str]:
        return self.model_combo.currentData() if hasattr(self, "model_combo") else None

    def _model_picked(self) -> None:
        self._push_config()
        self.notify(f"Loading {self.model_combo.currentText()}…")

    def add_checkpoint(self, path: str, select: bool = False) -> None:
        """A training checkpoint becomes selectable (and, with ``select``, selected)."""
        path = str(Path(path).resolve())
        if path not in self.checkpoints:
            self.checkpoints.append(path)
            self._fill_models()
            self._fill_comparison(self.compare_panel.checked())
            self.notify(f"Checkpoint {display_name(path)} can now be picked in the Model box.")
        if select:
            self._select_model(path)

    def load_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a training checkpoint", str(Path.cwd()),
                                              "ferkit checkpoints (*.pt *.pth *.ckpt)")
        if not path:
            return
        try:
            get_weights(path)
        except Exception as exc:
            self.notify(plain_message(exc, "That file cannot be used"), error=True)
            return
        self.add_checkpoint(path, select=True)

    def explainer_key(self, feature: str) -> Optional[str]:
        """The model behind the gates / synthesis panels: the selected one if it can, else FERSNet."""
        primary = self.handles.get("primary")
        if primary is not None and getattr(primary, feature):
            return primary.key
        return EXPLAINER if EXPLAINER in list_weights() else None

    def _explainer_pp(self) -> set:
        pps = set()
        primary = self.handles.get("primary")
        if primary is not None and (primary.has_gates or primary.has_synthesis):
            pps.add(primary.preprocessing)
        elif EXPLAINER in list_weights():
            try:
                pps.add(get_weights(EXPLAINER).preprocessing)
            except Exception:  # a damaged card is reported when the panel tries to load it
                pass
        return pps

    def _push_config(self, reset_tracks: bool = False) -> None:
        dev = self.live_panel.device.currentText()
        cfg = AnalyzerConfig(primary=self.current_model(), comparison=self.compare_panel.checked(), device=dev,
                             max_faces=self.live_panel.max_faces.value(), smoother=self.live_panel.smoother(),
                             detector=self.live_panel.detector.currentData() or "near",
                             extra_preprocessing=self._explainer_pp(), reset_tracks=reset_tracks)
        self.worker.configure(cfg)
        try:
            from ferkit.models.weights import resolve_device

            self.device_label.setText(f"device: {resolve_device(dev)}" + (" (auto)" if dev == "auto" else ""))
        except RuntimeError as exc:
            self.notify(str(exc), error=True)

    def _on_models_changed(self, info: dict) -> None:
        self.handles = info
        primary = info.get("primary")
        if primary is None:
            self.scores_panel.set_model_text("No model loaded.")
            self.identity_panel.set_model(None, False, None)
        else:
            w = primary.weights
            acc = {k: v for k, v in (w.metrics or {}).items() if "accuracy" in k}
            acc_text = ", ".join(f"{k} {v * 100:.2f}%" if isinstance(v, float) and v <= 1 else f"{k} {v}"
                                 for k, v in list(acc.items())[:2])
            self.scores_panel.set_model_text(
                f"<b>{primary.name}</b> ({w.architecture}, {len(w.classes)} classes, {w.preprocessing.input_size}px "
                f"{'gray' if w.preprocessing.grayscale else 'RGB'}) on {primary.device}" +
                (f"<br>{acc_text}" if acc_text else "") +
                "<br>Bars: smoothed score; thin tick: this frame's raw score.")
            self.identity_panel.set_model(primary.name, primary.has_identity, primary.identity_threshold)
            self.view.identity_threshold = primary.identity_threshold
            self.notify(f"Model {primary.name} ready on {primary.device}.")
        self._update_explainer_notices()
        self._refresh_enrolled()
        self._push_config_pp_if_needed()
        if self.mode == "image":
            self._rerun_inspection()
        elif self.mode is None or (self.capture is None and self.camera is None and self.last_result is not None):
            self._reanalyse_last()

    def _push_config_pp_if_needed(self) -> None:
        if self._explainer_pp() != self.worker.config.extra_preprocessing:
            self._push_config()

    def _update_explainer_notices(self) -> None:
        for panel, feature, what in ((self.gates_panel, "has_gates", "ConvFLU gates"),
                                     (self.synth_panel, "has_synthesis", "synthesised faces")):
            key = self.explainer_key(feature)
            primary = self.handles.get("primary")
            if key is None:
                panel.say(f"No model here can show {what}: the selected model has none and the FERSNet weights "
                          f"('{EXPLAINER}') are not installed in resources/weights.")
            elif primary is not None and key != primary.key:
                panel.say(f"The selected model '{primary.name}' has no {what}; this panel uses the shipped "
                          f"FERSNet weights '{key}' on the same face.")
            else:
                panel.say("")

    # ================================================================== sources
    def stop_source(self) -> None:
        if self.capture is not None:
            self.capture.stop()
            self.capture.deleteLater()
            self.capture = None
        if self.camera is not None:
            self.camera.stop()
            self.camera.deleteLater()
            self.camera = None
        self.slot.clear()
        self.act_pause.setChecked(False)

    def open_path(self, path: Path) -> bool:
        path = Path(path)
        kind = kind_of(path)
        if not path.exists():
            self.notify(f"{path} does not exist.", error=True)
            return False
        if kind == "video":
            return self.play_video(path)
        if kind in ("image", "folder"):
            return self.inspect([path])
        self.notify(f"{path.name} is neither a video, an image nor a folder the app can open.", error=True)
        return False

    def play_video(self, path: Path, realtime: bool = True) -> bool:
        self.stop_source()
        self.mode = "video"
        self.source_path = Path(path)
        self._reset_tracking()
        self.capture = VideoCaptureWorker(path, self.slot, loop=self.act_loop.isChecked(), realtime=realtime)
        self.capture.failed.connect(lambda m: self.notify(m, error=True))
        self.capture.opened.connect(lambda info: self.notify(
            f"Playing {Path(info['path']).name} ({info['fps']:.1f} fps, {info['frames']} frames)."))
        self.capture.ended.connect(lambda: self.notify("End of the video (tick View ▸ Loop video to repeat)."))
        self.capture.start()
        self.source_label.setText(f"video: {Path(path).name}")
        self.setWindowTitle(f"ferkit — {Path(path).name}")
        return True

    def start_camera(self) -> bool:
        problem = multimedia_problem()
        if problem or not self.cameras:
            msg = problem or "No camera was found"
            self.notify(f"{msg} — playing the sample video instead.", error=True, timeout=0)
            self.play_video(sample_video())
            self.source_label.setText("<b>No camera found</b> — sample video")
            self.source_label.setToolTip(msg)
            return False
        self.stop_source()
        self.mode = "camera"
        self.source_path = None
        self._reset_tracking()
        cam = self.cameras[max(0, self.camera_combo.currentIndex())]
        res = self.resolution_combo.currentData()
        self.camera = CameraSource(cam, self.slot, res, self)
        self.camera.failed.connect(lambda m: self.notify(m, error=True))
        self.camera.start()
        self.notify(f"Camera: {cam.description}" + (f" at {res[0]}×{res[1]}" if res else ""))
        self.source_label.setText(f"camera: {cam.description}")
        self.setWindowTitle(f"ferkit — camera {cam.description}")
        return True

    def start_default_source(self, source: Optional[str] = None) -> None:
        """``--source`` if given, else the camera, else (no camera) the sample video, with a notice."""
        if not source:
            last = str(self.settings.value("source", "") or "")
            if last and last != "camera" and Path(last).exists() and kind_of(Path(last)) in ("video", "folder"):
                source = last  # reopen what the user watched last time
        if source and source != "camera":
            self.open_path(Path(source))
        else:
            self.start_camera()

    def toggle_pause(self) -> None:
        paused = self.act_pause.isChecked()
        if self.capture is not None:
            (self.capture.paused.set if paused else self.capture.paused.clear)()
        if self.camera is not None:
            self.camera.paused = paused
        self.notify("Paused." if paused else "Playing.")

    def _loop_changed(self) -> None:
        if self.capture is not None:
            self.capture.loop = self.act_loop.isChecked()

    def _reset_tracking(self) -> None:
        self.selected_id = None
        self._frame_times.clear()
        self._push_config(reset_tracks=True)  # a new source starts new ids and smoothing

    def open_dialog(self) -> None:
        paths, _ = QFileDialog.getOpenFileNames(
            self, "Open video or images", str(self.source_path.parent if self.source_path else Path.home()),
            "Videos and images (*.mp4 *.mov *.avi *.mkv *.webm *.png *.jpg *.jpeg *.bmp *.tif *.tiff *.webp *.gif *.pgm);;All files (*)")
        self._open_many([Path(p) for p in paths])

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images", str(Path.home()))
        if path:
            self.inspect([Path(path)])

    def _open_many(self, paths: list[Path]) -> None:
        if not paths:
            return
        videos = [p for p in paths if kind_of(p) == "video"]
        if videos:
            self.open_path(videos[0])
        else:
            self.inspect(paths)

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        paths = [Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()]
        self._open_many(paths)

    # ================================================================== inspection
    def inspect(self, paths: list[Path]) -> bool:
        files: list[Path] = []
        for p in paths:
            p = Path(p)
            if p.is_dir():
                try:
                    files += folder_images(p)
                except SourceError as exc:
                    self.notify(str(exc), error=True)
            elif p.exists():
                files.append(p)
            else:
                self.notify(f"{p} does not exist.", error=True)
        if not files:
            return False
        self.stop_source()
        self.mode = "image"
        self.source_path = files[0]
        self.inspected.clear()
        self.inspect_order = [str(f) for f in files]
        self.inspect_panel.set_files(files)
        self.tabs.setCurrentWidget(self.inspect_panel) if len(files) > 1 else None
        for f in files:
            self._submit_inspection(str(f))
        self.shown_path = str(files[0])
        self.inspect_panel.files.blockSignals(True)
        self.inspect_panel.files.setCurrentRow(0)
        self.inspect_panel.files.blockSignals(False)
        self.notify(f"Analysing {len(files)} image{'s' if len(files) != 1 else ''}…")
        self.source_label.setText(f"images: {len(files)}")
        self.setWindowTitle(f"ferkit — {files[0].name}" + (f" and {len(files) - 1} more" if len(files) > 1 else ""))
        return True

    def _submit_inspection(self, path: str) -> None:
        whole = self.whole_image

        def job(analyzer, path=path, whole=whole):
            return analyzer.analyze(load_image(Path(path)), whole_image_if_no_face=whole, track=False)

        self.worker.submit(("inspect", path), job)

    def _rerun_inspection(self) -> None:
        for path in self.inspect_order:
            self._submit_inspection(path)

    def _whole_image_changed(self, on: bool) -> None:
        self.whole_image = on
        if self.mode == "image":
            self._rerun_inspection()

    def show_inspected(self, path: str) -> None:
        self.shown_path = path
        entry = self.inspected.get(path)
        if isinstance(entry, FrameResult):
            self._display(entry)
            self.inspect_panel.show_result(path, entry)
        elif isinstance(entry, str):
            self.view.set_result(None)
            self.inspect_panel.show_result(path, None, entry)

    def _on_job_done(self, tag: Any, out: Any) -> None:
        kind = tag[0] if isinstance(tag, tuple) else tag
        if kind == "inspect":
            path = tag[1]
            if path not in self.inspect_order:
                return
            self.inspected[path] = out
            n = len(out.faces)
            self.inspect_panel.mark(path, True, "no face" if n == 0 else
                                    ("whole image" if out.faces[0].whole_image else f"{n} face{'s' if n != 1 else ''}"))
            if path == self.shown_path:
                self.show_inspected(path)
            if n == 0:
                self.notify(f"No face was found in {Path(path).name}. In the Inspect tab, tick 'score the whole "
                            "image' to score it anyway.")
            self.inspect_done.emit(path)
        elif kind == "enrol":
            name, picture, feature, key = out
            self._add_enrolment(name, picture, feature, key)
        elif kind == "reanalyse":
            self._display(out)

    def _on_job_failed(self, tag: Any, message: str) -> None:
        kind = tag[0] if isinstance(tag, tuple) else tag
        if kind == "inspect":
            path = tag[1]
            self.inspected[path] = message
            self.inspect_panel.mark(path, False, "could not be read")
            if path == self.shown_path:
                self.show_inspected(path)
            self.notify(message, error=True)
            self.inspect_done.emit(path)
        else:
            self.notify(message, error=True)

    def _reanalyse_last(self) -> None:
        if self.last_result is None:
            return
        frame = self.last_result.frame
        self.worker.submit(("reanalyse",), lambda an, f=frame: an.analyze(f, track=False))

    def export_results(self, path: Optional[str] = None) -> Optional[Path]:
        records = []
        for p in self.inspect_order:
            entry = self.inspected.get(p)
            if isinstance(entry, FrameResult):
                records += result_records(p, entry)
            elif isinstance(entry, str):
                records.append({"path": p, "face": None, "box": None, "detection_score": None, "whole_image": False,
                                "models": {}, "similarity": {}, "note": entry})
        if not records:
            self.notify("Nothing to export yet: open images first (Inspect tab).", error=True)
            return None
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export results", str(Path.home() / "ferkit-results.csv"),
                                                  "CSV (*.csv);;JSON (*.json)")
        if not path:
            return None
        try:
            out = save_records(records, Path(path))
        except OSError as exc:
            self.notify(plain_message(exc, "The results could not be written"), error=True)
            return None
        self.notify(f"Exported {len(records)} rows to {out}.")
        return out

    def save_annotated(self, path: Optional[str] = None) -> Optional[Path]:
        img = self.view.annotated_image()
        if img is None:
            self.notify("There is no analysed picture to save.", error=True)
            return None
        if not path:
            stem = Path(self.shown_path or "frame").stem
            path, _ = QFileDialog.getSaveFileName(self, "Save annotated image", str(Path.home() / f"{stem}-annotated.png"),
                                                  "PNG (*.png);;JPEG (*.jpg)")
        if not path:
            return None
        if not img.save(str(path)):
            self.notify(f"The image could not be written to {path}.", error=True)
            return None
        self.notify(f"Saved {path}.")
        return Path(path)

    # ================================================================== results
    def _on_result(self, result: FrameResult) -> None:
        if self.mode == "image":
            return  # a live frame that was in flight when the user switched to images
        self._display(result)
        now = time.perf_counter()
        self._frame_times.append(now)
        for k, v in result.timings_ms.items():
            self._timings.setdefault(k, deque(maxlen=30)).append(v)
        self._timings.setdefault("draw", deque(maxlen=30)).append(self.view.draw_ms)
        if result.captured_at:
            self._timings.setdefault("latency", deque(maxlen=30)).append((now - result.captured_at) * 1e3)
        if now - self._last_stats > 0.25:
            self._last_stats = now
            self._update_stats()

    def fps(self) -> float:
        t = self._frame_times
        return (len(t) - 1) / (t[-1] - t[0]) if len(t) >= 2 and t[-1] > t[0] else 0.0

    def stage_ms(self) -> dict[str, float]:
        return {k: float(np.mean(v)) for k, v in self._timings.items() if v}

    def _update_stats(self) -> None:
        self.fps_label.setText(f"{self.fps():.1f} fps")
        ms = self.stage_ms()
        parts = [f"{k} {ms[k]:.1f}" for k in ("capture", "detect", "align", "infer", "draw") if k in ms]
        lat = f" | end-to-end {ms['latency']:.0f} ms" if "latency" in ms else ""
        self.latency_label.setText("ms: " + " · ".join(parts) + lat + f" | dropped {self.slot.dropped}")

    def _display(self, result: FrameResult) -> None:
        self.last_result = result
        if self.selected_id is not None and all(f.track_id != self.selected_id for f in result.faces):
            self.selected_id = None
        self.view.set_result(result, self.selected_id)
        self._refresh_panels()
        self._submit_explainers(result)
        self.result_shown.emit(result)

    def _refresh_panels(self) -> None:
        result = self.last_result
        current = self.tabs.currentWidget()
        self.scores_panel.update_result(result, self.selected_id) if current is self.scores_panel else None
        if current is self.compare_panel:
            self.compare_panel.update_result(result, self.selected_id)
        if current is self.identity_panel:
            self.identity_panel.update_result(result, self.enrolments.names())

    def _select_face(self, track_id: int) -> None:
        self.selected_id = track_id
        if self.last_result is not None:
            self.view.set_result(self.last_result, track_id)
            self._refresh_panels()
            self._submit_explainers(self.last_result)

    # ================================================================== gates & synthesis
    def _submit_explainers(self, result: FrameResult) -> None:
        current = self.tabs.currentWidget()
        if current not in (self.gates_panel, self.synth_panel):
            return
        face = pick_face(result, self.selected_id)
        if face is None:
            return
        if current is self.gates_panel:
            key = self.explainer_key("has_gates")
            worker = self.gates_worker
        else:
            key = self.explainer_key("has_synthesis")
            worker = self.synth_worker
        if key is None:
            return
        try:
            pp = get_weights(key).preprocessing if key == EXPLAINER else self.handles["primary"].preprocessing
        except Exception:
            return
        crop = face.crops.get(pp)
        if crop is None:
            return  # the worker has not aligned for this model yet (config in flight)
        worker.submit({"key": key, "crop": crop, "track_id": face.track_id,
                       "device": self.live_panel.device.currentText()})

    def _compute_gates(self, p: dict) -> dict:
        from app.core.explain import gate_maps

        handle = self.cache.get(p["key"], p["device"])
        out = handle.forward_gates([p["crop"]])
        if not out.gates:
            raise RuntimeError(f"{handle.name} returned no gate maps")
        return {"model": handle.name, "track_id": p["track_id"], "crop": p["crop"], "maps": gate_maps(out.gates)}

    def _compute_synthesis(self, p: dict) -> dict:
        t0 = time.perf_counter()
        handle = self.cache.get(p["key"], p["device"])
        images = handle.synthesize(p["crop"], list(range(len(handle.classes))))
        return {"model": handle.name, "track_id": p["track_id"], "crop": p["crop"], "classes": handle.classes,
                "images": images, "ms": (time.perf_counter() - t0) * 1e3}

    def _set_explain_interval(self, seconds: float) -> None:
        self.explain_interval = seconds
        self.gates_worker.min_interval_s = seconds
        self.synth_worker.min_interval_s = seconds

    # ================================================================== enrolment
    def _load_enrolments(self) -> EnrolmentStore:
        try:
            return EnrolmentStore.load(self.enrolment_dir)
        except ValueError as exc:
            QTimer.singleShot(0, lambda: self.notify(str(exc), error=True))
            return EnrolmentStore(self.enrolment_dir)

    def _ask_name(self, name: str) -> Optional[str]:
        name = (name or "").strip() or self.identity_panel.name.text().strip()
        if name:
            return name
        text, ok = QInputDialog.getText(self, "Enrol", "Name of this person:")
        return text.strip() if ok and text.strip() else None

    def enrol_selected(self, name: str = "") -> bool:
        primary = self.handles.get("primary")
        if primary is None or not primary.has_identity:
            self.notify("The selected model has no identity feature; pick tfe-jl, netb-dal-mse or eifn to enrol faces.",
                        error=True)
            return False
        face = pick_face(self.last_result, self.selected_id)
        if face is None or face.identity is None or face.whole_image:
            self.notify("There is no face to enrol: wait until a face is boxed, or click one.", error=True)
            return False
        name = self._ask_name(name)
        if not name:
            return False
        self._add_enrolment(name, face_picture(self.last_result.frame, face.box), face.identity, primary.key)
        return True

    def enrol_from_image(self, name: str = "", path: Optional[str] = None) -> None:
        primary = self.handles.get("primary")
        if primary is None or not primary.has_identity:
            self.notify("The selected model has no identity feature, so faces cannot be enrolled with it.", error=True)
            return
        name = self._ask_name(name)
        if not name:
            return
        if not path:
            path, _ = QFileDialog.getOpenFileName(self, f"Picture of {name}", str(Path.home()),
                                                  "Images (*.png *.jpg *.jpeg *.bmp *.webp *.tif *.tiff)")
        if not path:
            return

        def job(analyzer, path=path, name=name):
            picture = load_image(Path(path))
            dets = list(analyzer.pipeline.detect(picture))
            if not dets:
                raise SourceError(f"No face was found in {Path(path).name}; pick a picture where the face is visible.")
            det = max(dets, key=lambda d: d.box[2] * d.box[3])
            pic = face_picture(picture, det.box)
            feature = identity_of_picture(analyzer, analyzer.primary, pic)
            return name, pic, feature, analyzer.primary.key

        self.worker.submit(("enrol", path), job)

    def _add_enrolment(self, name: str, picture: np.ndarray, feature: np.ndarray, key: str) -> None:
        self.enrolments.add(name, picture, key, feature)
        self._save_enrolments()
        self._refresh_enrolled()
        self.notify(f"Enrolled {name}. Similarities now appear in the Identity tab and on the boxes.")

    def _save_enrolments(self) -> None:
        try:
            self.enrolments.save(self.enrolment_dir)
        except OSError as exc:
            self.notify(plain_message(exc, "The enrolments could not be saved"), error=True)

    def _refresh_enrolled(self) -> None:
        counts: dict[str, int] = {}
        for e in self.enrolments.items():
            counts[e.name] = counts.get(e.name, 0) + 1
        self.identity_panel.set_enrolled(list(counts.items()))

    def _remove_enrolment(self, name: str) -> None:
        self.enrolments.remove(name)
        self._save_enrolments()
        self._refresh_enrolled()

    def _clear_enrolments(self) -> None:
        if self.enrolments.items() and QMessageBox.question(self, "Remove all", "Remove every enrolled face?") \
                != QMessageBox.StandardButton.Yes:
            return
        self.enrolments.clear()
        self._save_enrolments()
        self._refresh_enrolled()

    # ================================================================== misc
    def notify(self, message: str, error: bool = False, timeout: int = 8000) -> None:
        """Plain-words message in the status bar (errors stay longer and are logged)."""
        if error:
            log.warning(message)
        self.statusBar().showMessage(message, 0 if error and timeout == 0 else (15000 if error else timeout))
        self.last_message = message

    def save_screenshot(self, path: Optional[str] = None) -> Optional[Path]:
        if not path:
            from PySide6.QtCore import QStandardPaths

            folder = Path(QStandardPaths.writableLocation(QStandardPaths.StandardLocation.PicturesLocation) or Path.home())
            folder.mkdir(parents=True, exist_ok=True)
            path = str(folder / time.strftime("ferkit-%Y%m%d-%H%M%S.png"))
        if self.grab().save(str(path)):
            self.notify(f"Screenshot saved to {path}.")
            return Path(path)
        self.notify(f"The screenshot could not be written to {path}.", error=True)
        return None

    def show_training(self) -> None:
        from app.training_dialog import TrainingDialog

        if self.training_dialog is None:
            self.training_dialog = TrainingDialog(self.jobs, self.devices, self)
        self.training_dialog.show()
        self.training_dialog.raise_()

    def shutdown(self) -> None:
        """Stop every worker cooperatively (never terminate) and save settings."""
        self.save_settings()
        self.stop_source()
        for w in (self.gates_worker, self.synth_worker, self.worker):
            w.stop(10000)

    def closeEvent(self, event) -> None:
        running = self.jobs.running()
        if running:
            answer = QMessageBox.question(
                self, "Training is running",
                f"{len(running)} training job{'s are' if len(running) > 1 else ' is'} running. Stop "
                f"{'them' if len(running) > 1 else 'it'} and quit? The last checkpoint is kept and can be resumed.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.notify("Stopping training (saving the checkpoint)…")
            self.jobs.stop_all()
        self.shutdown()
        event.accept()
