"""The main window: widgets wired to the controllers; it holds no state of its own.

What the app works on lives in the Qt-free state model (:mod:`app.core.state`); the controllers
(:mod:`app.controllers`) change it and talk to the workers; this window builds the widgets,
connects their signals to the controllers and paints what the controllers report. Nothing slow
runs on the GUI thread.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Optional

from PySide6.QtCore import QTimer, Signal
from PySide6.QtWidgets import QFileDialog, QMainWindow, QMessageBox

from app.camera import list_cameras
from app.controllers.enrolment import EnrolmentController, load_store
from app.controllers.explainers import GATES, SYNTHESIS, ExplainersController
from app.controllers.inspection import InspectionController
from app.controllers.models import ModelsController
from app.controllers.sources import SourcesController
from app.core.analyzer import FrameResult
from app.core.models import ModelCache, available_devices, configure_torch_threads
from app.core.sources import kind_of, sample_video
from app.core.state import AppState, LoadedModels
from app.settings import app_settings, enrolment_dir, last_source, read_into, write_from
from app.training import JobManager
from app.widgets.main_ui import MainWindowUi, icon, screenshot_path
from app.widgets.model_picker import ModelPicker
from app.workers import InferenceWorker, LatestSlot

log = logging.getLogger("ferkit.app")

MEDIA_FILTER = ("Videos and images (*.mp4 *.mov *.avi *.mkv *.webm *.png *.jpg *.jpeg *.bmp *.tif *.tiff *.webp "
                "*.gif *.pgm);;All files (*)")


class MainWindow(QMainWindow, MainWindowUi):
    #: emitted after every displayed result (tests and the benchmark wait on it)
    result_shown = Signal(object)

    def __init__(self, *, device: Optional[str] = None, weights: Optional[str] = None) -> None:
        super().__init__()
        configure_torch_threads()
        self.setWindowTitle("ferkit — facial expression recognition")
        self.setWindowIcon(icon("ferkit"))
        self.resize(1280, 760)
        self.setAcceptDrops(True)
        self.settings = app_settings()
        self.devices = available_devices()
        store, store_problem = load_store(enrolment_dir(self.settings))
        self.state = AppState(store, enrolment_dir(self.settings))
        read_into(self.state, self.settings, self.devices, device, weights)
        self.cache = ModelCache()
        self.slot = LatestSlot()
        self.worker = InferenceWorker(self.cache, store, self.slot)
        self.models = ModelsController(self.state, self.worker, self)
        self.sources = SourcesController(self.state, self.worker, self.slot, self)
        self.inspection = InspectionController(self.state, self.worker, self.sources, self)
        self.enrolment = EnrolmentController(self.state, self.worker, self)
        self.explainers = ExplainersController(self.state, self.cache, self)
        self.jobs = JobManager(self)
        self.training_dialog = None
        self.about_dialog = None
        self.cameras = list_cameras()
        self.last_message = ""
        #: the no-camera banner was shown this session (it is shown once)
        self._fallback_shown = False
        self._last_stats = 0.0
        self._clear_timer = QTimer(self, singleShot=True, timeout=lambda: self.message_label.show_message(""))
        self.setup_ui(self.devices, self.cameras)
        self._show_state()
        self._wire()
        self.models.push()
        self.worker.start()
        self.explainers.start()
        if store_problem:
            QTimer.singleShot(0, lambda: self.notify(store_problem, error=True))

    def _show_state(self) -> None:
        """Widgets show the restored state (without re-triggering anything)."""
        self.live_panel.show_settings(self.state.live, self.state.explain_interval)
        self.act_loop.setChecked(self.state.source.loop)
        self.explainers.set_interval(self.state.explain_interval)
        self.models.message.connect(self.notify)  # before the picker: it may say a saved choice was refused
        self.picker = ModelPicker(self.model_combo, self.compare_panel, self.models, self.model_label, self)
        self.picker.fill()
        self._device_text()

    def _wire(self) -> None:
        self.view.face_clicked.connect(self._select_face)
        self.tabs.currentChanged.connect(lambda _i: self._refresh_panels())
        ip, inp, lp = self.identity_panel, self.inspect_panel, self.live_panel
        ip.enrol_face.connect(self.enrol_selected)
        ip.enrol_image.connect(self.enrol_from_image)
        ip.remove_name.connect(self.enrolment.remove)
        ip.clear_all.connect(self._clear_enrolments)
        ip.stop_capture.connect(self.enrolment.stop_capture)
        self.enrolment.capture_progress.connect(ip.show_capture)
        inp.open_requested.connect(self.open_dialog)
        inp.open_folder_requested.connect(self.open_folder_dialog)
        inp.image_selected.connect(self.show_inspected)
        inp.whole_image_changed.connect(self.inspection.set_whole_image)
        inp.export_requested.connect(lambda: self.export_results())
        inp.save_annotated_requested.connect(lambda: self.save_annotated())
        lp.smoothing_changed.connect(lambda sm: self._live_changed(smoother=sm))
        lp.max_faces_changed.connect(lambda n: self._live_changed(max_faces=n))
        lp.detector_changed.connect(lambda _d: self._live_changed(detector=lp.detector.currentData() or "near"))
        lp.device_changed.connect(lambda d: self._live_changed(device=d))
        lp.explain_interval_changed.connect(self.explainers.set_interval)
        self.models.loaded.connect(self._on_models_loaded)
        self.worker.failed.connect(lambda m: self.notify(m, error=True))
        self.sources.frame_ready.connect(self._on_frame)
        self.sources.started.connect(self._on_source_started)
        self.sources.failed.connect(self._on_source_failed)
        self.sources.fell_back.connect(self._on_source_fell_back)
        self.sources.message.connect(self.notify)
        self.sources.images_requested.connect(self.inspect)
        self.inspection.files_listed.connect(self._on_files_listed)
        self.inspection.entry_ready.connect(inp.mark)
        self.inspection.shown.connect(self._on_inspected_shown)
        self.inspection.finished.connect(lambda n: self.notify(f"Analysed {n} image{'s' if n != 1 else ''}."))
        self.inspection.message.connect(self.notify)
        self.enrolment.changed.connect(ip.set_enrolled)
        self.enrolment.changed.connect(lambda _names: self._on_gallery_changed())
        self.enrolment.message.connect(self.notify)
        self.explainers.gates_ready.connect(self.gates_panel.set_data)
        self.explainers.gates_failed.connect(self.gates_panel.say)
        self.explainers.synthesis_ready.connect(self.synth_panel.set_data)
        self.explainers.synthesis_failed.connect(self.synth_panel.say)
        self.explainers.notice.connect(lambda panel, text: (self.gates_panel if panel == GATES else self.synth_panel)
                                       .say(text))
        self.jobs.checkpoint_ready.connect(self.add_checkpoint)
        self.enrolment.publish()

    # ================================================================== models
    def current_model(self) -> Optional[str]:
        return self.state.model

    @property
    def handles(self) -> dict[str, Any]:
        """The loaded models (for the benchmark, the startup probe and tests)."""
        loaded = self.state.loaded
        return {"primary": loaded.primary, "comparison": loaded.comparison, "device": loaded.device}

    def set_comparison(self, keys: list[str]) -> None:
        self.picker.set_comparison(keys)

    def add_checkpoint(self, path: str, select: bool = False) -> None:
        key = self.models.add_checkpoint(path)
        if select and self.models.is_expression(key):  # an identity checkpoint is kept, never picked
            self._select_model(key)

    def _select_model(self, key: Optional[str]) -> None:
        self.picker.select(key)

    def load_checkpoint_dialog(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Load a training checkpoint", str(Path.cwd()),
                                              "ferkit checkpoints (*.pt *.pth *.ckpt)")
        if path and self.models.check_checkpoint(path):
            self.add_checkpoint(path, select=True)

    def _live_changed(self, **changes: Any) -> None:
        for k, v in changes.items():
            setattr(self.state.live, k, v)
        self.models.push()
        self._device_text()

    def _device_text(self) -> None:
        problem = self.show_device(self.state.live.device)
        if problem:
            self.notify(problem, error=True)

    def _on_models_loaded(self, loaded: LoadedModels) -> None:
        self.scores_panel.set_model(loaded.primary)
        self.identity_panel.set_identity(loaded.identity)
        self.enrolment.publish()
        if self.models.set_extra_preprocessing(self.explainers.on_models_loaded(loaded)):
            return  # reconfigured for the explainers' crops: the next report re-analyses
        if self.state.source.mode == "image":
            self.inspection.rerun()
        elif self.sources.frozen:
            self.sources.reanalyse_shown()  # paused or ended: the shown frame follows the new choice

    # ================================================================== sources
    def play_video(self, path: Path, realtime: bool = True) -> bool:
        return self.sources.play_video(Path(path), realtime)

    def start_camera(self) -> bool:
        return self.sources.start_camera(self.cameras, self.camera_combo.currentIndex(),
                                         self.resolution_combo.currentData())

    def start_default_source(self, source: Optional[str] = None) -> bool:
        return self.sources.start_default(source, last_source(self.settings), self.cameras,
                                          self.camera_combo.currentIndex(), self.resolution_combo.currentData())

    def stop_source(self) -> None:
        self.enrolment.stop_capture()  # a guided enrolment keeps the pictures it took
        self.sources.stop()
        self.act_pause.setChecked(False)

    def toggle_pause(self, paused: Optional[bool] = None) -> None:
        paused = self.act_pause.isChecked() if paused is None else paused
        if paused:
            self.enrolment.stop_capture()
        self.sources.set_paused(paused)

    def set_loop(self, on: bool) -> None:
        self.sources.set_loop(on)

    def play_sample(self) -> None:
        self.sources.open_path(sample_video())

    def _on_source_started(self, description: str) -> None:
        self.act_pause.setChecked(False)
        self.source_label.setText(description)
        self.source_label.setToolTip(description)
        self.setWindowTitle(f"ferkit — {description}")
        self.view.set_message("")
        self.show_live_stats(self.state.source.live)  # fps and latency mean nothing for still images
        self.enrolment.stop_capture()  # pictures of the last source's face stay theirs
        if self.state.source.live:
            self.worker.new_source()
            self.inspect_panel.show_result("", None)  # the Inspect tab's notice and rows were about an image

    def _on_source_fell_back(self, message: str) -> None:
        """No camera: a short line in the status bar; the whole reason once per session in the banner
        above the video (dismissable, fading out), never over the face being played."""
        self.notify("No camera — playing the sample video.", error=True)
        self.message_label.setToolTip(message)
        if not self._fallback_shown:
            self._fallback_shown = True
            self.banner.show_message(message)

    def _on_source_failed(self, message: str) -> None:
        self.notify(message, error=True)
        self.view.set_message(message)

    def open_dialog(self) -> None:
        folder = self.state.source.path.parent if self.state.source.path else Path.home()
        paths, _ = QFileDialog.getOpenFileNames(self, "Open video or images", str(folder), MEDIA_FILTER)
        self._open_many([Path(p) for p in paths])

    def open_folder_dialog(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of images", str(Path.home()))
        if path:
            self.inspect([Path(path)])

    def _open_many(self, paths: list[Path]) -> None:
        videos = [p for p in paths if kind_of(p) == "video"]
        if videos:
            self.sources.open_path(videos[0])
        elif paths:
            self.inspect(paths)

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self.fit_toolbar()
        self.fit_status_bar()

    def dragEnterEvent(self, event) -> None:
        if event.mimeData().hasUrls():
            event.acceptProposedAction()

    def dropEvent(self, event) -> None:
        self._open_many([Path(u.toLocalFile()) for u in event.mimeData().urls() if u.isLocalFile()])

    # ================================================================== inspection
    def inspect(self, paths: list[Path]) -> bool:
        return self.inspection.inspect(list(paths))

    def show_inspected(self, path: str) -> None:
        self.inspection.show(path)

    def _on_files_listed(self, files: list[Path]) -> None:
        self.inspect_panel.set_files(files)
        if len(files) > 1:
            self.tabs.setCurrentWidget(self.inspect_panel)

    def _on_inspected_shown(self, path: str, entry: Any) -> None:
        if isinstance(entry, FrameResult):
            self.view.set_message(self.state.source.error)
            self._display(entry)
            self.inspect_panel.show_result(path, entry)
        elif isinstance(entry, str):  # an unreadable file: its reason where the picture would be
            self.view.set_result(None)
            self.view.set_message(entry)
            self.inspect_panel.show_result(path, None, entry)

    def export_results(self, path: Optional[str] = None) -> Optional[Path]:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Export results", str(Path.home() / "ferkit-results.csv"),
                                                  "CSV (*.csv);;JSON (*.json)")
        return self.inspection.export(Path(path)) if path else None

    def save_annotated(self, path: Optional[str] = None) -> Optional[Path]:
        img = self.view.annotated_image()
        if img is None:
            self.notify("There is no analysed picture to save.", error=True)
            return None
        if not path:
            stem = Path(self.state.inspection.shown or "frame").stem
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
    def _on_frame(self, result: FrameResult) -> None:
        self._display(result)
        if not self.state.source.live or result.frame_index < 0:
            return  # a re-analysed paused frame has no capture timing
        self.enrolment.feed(result)
        now = time.perf_counter()
        self.state.stats.add(result, self.view.draw_ms, now)
        if now - self._last_stats > 0.25:
            self._last_stats = now
            self._update_stats()

    def _update_stats(self) -> None:
        self.fps_label.setText(f"{self.state.stats.fps():.1f} fps")
        self.latency_label.setText(self.state.stats.latency_text(self.worker.skipped))
        self.latency_label.setToolTip("skipped: frames of this source that went by while the analysis was still "
                                      "busy with the frame before (it is slower than the video). Frames during "
                                      "model loading and warm-up are not counted.")

    def _display(self, result: FrameResult) -> None:
        self.state.show(result)
        self.view.set_result(result, self.state.selected_id)
        self._refresh_panels()
        self.result_shown.emit(result)

    def _refresh_panels(self) -> None:
        result, selected, current = self.state.last_result, self.state.selected_id, self.tabs.currentWidget()
        if current is self.scores_panel:
            self.scores_panel.update_result(result, selected)
        elif current is self.compare_panel:
            self.compare_panel.update_result(result, selected)
        elif current is self.identity_panel:
            self.identity_panel.update_result(result, self.state.enrolments.names())
        elif current in (self.gates_panel, self.synth_panel):
            self.explainers.submit(GATES if current is self.gates_panel else SYNTHESIS, self.state.selected_face())

    def _select_face(self, track_id: int) -> None:
        self.state.selected_id = track_id
        if self.state.last_result is not None:
            self.view.set_result(self.state.last_result, track_id)
            self._refresh_panels()

    # ================================================================== enrolment
    def enrol_selected(self, name: str = "") -> bool:
        """On running live video, several pictures of the selected face over a few seconds; else this one."""
        if self.state.selected_face() is None:
            return self.enrolment.enrol_shown_face("")  # says there is no face
        name = self.identity_panel.ask_name(name)
        guided = self.state.source.live and not self.sources.frozen
        if guided:
            self.tabs.setCurrentWidget(self.identity_panel)  # where the progress is shown
        return bool(name) and self.enrolment.enrol_shown_face(name, guided=guided)

    def enrol_from_image(self, name: str = "", path: Optional[str] = None) -> None:
        """One or several picture files of one person (several photos are recognised far better than one)."""
        name = self.identity_panel.ask_name(name)
        paths = [path] if path else []
        if name and not path:
            paths, _ = QFileDialog.getOpenFileNames(self, f"Pictures of {name} (several: different days and poses)",
                                                    str(Path.home()),
                                                    "Images (*.png *.jpg *.jpeg *.bmp *.webp *.tif *.tiff)")
        if name and paths:
            self.enrolment.enrol_pictures(name, paths)

    def _on_gallery_changed(self) -> None:
        """Enrolments added or removed: every shown similarity and decision is recomputed now (boxes,
        Inspect rows, Identity table), not when the folder is opened again."""
        if not self.state.rematch_identities():
            return
        if self.state.last_result is not None:
            self.view.set_result(self.state.last_result, self.state.selected_id)
        shown = self.state.inspection.shown
        entry = self.state.inspection.results.get(shown) if shown else None
        if self.state.source.mode == "image" and isinstance(entry, FrameResult):
            self.inspect_panel.show_result(shown, entry)
        self._refresh_panels()

    def _clear_enrolments(self) -> None:
        if not self.state.enrolments.items() or QMessageBox.question(
                self, "Remove all", "Remove every enrolled face?") == QMessageBox.StandardButton.Yes:
            self.enrolment.clear()

    # ================================================================== misc
    def notify(self, message: str, error: bool = False, timeout: int = 8000) -> None:
        """Plain-words message in the status bar (errors stay longer and are logged). Routine news
        ("model ready", which under load can come just after an error) never hides an error on show."""
        if error:
            log.warning(message)
        elif self.message_label.error and self._clear_timer.isActive():
            log.info(message)
            return
        self.message_label.show_message(message, error)
        self._clear_timer.start(15000 if error else timeout)
        self.last_message = message

    def save_screenshot(self, path: Optional[str] = None) -> Optional[Path]:
        path = path or str(screenshot_path())
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

    def show_about(self) -> None:
        """Versions, the shipped weights with their cards' data, and the data's terms."""
        from app.widgets.about import AboutDialog

        if self.about_dialog is None:
            self.about_dialog = AboutDialog(self)
        self.about_dialog.show()
        self.about_dialog.raise_()

    def save_settings(self) -> None:
        write_from(self.state, self.settings)

    def shutdown(self) -> None:
        """Stop every worker cooperatively (never terminate) and save settings."""
        self.save_settings()
        self.stop_source()
        self.explainers.stop(10000)
        self.worker.stop(10000)

    def closeEvent(self, event) -> None:
        running = self.jobs.running()
        if running:
            n = len(running)
            answer = QMessageBox.question(
                self, "Training is running",
                f"{n} training job{'s are' if n > 1 else ' is'} running. Stop {'them' if n > 1 else 'it'} and quit? "
                "The last checkpoint is kept and can be resumed.",
                QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No)
            if answer != QMessageBox.StandardButton.Yes:
                event.ignore()
                return
            self.notify("Stopping training (saving the checkpoint)…")
            self.jobs.stop_all()
        self.shutdown()
        event.accept()
