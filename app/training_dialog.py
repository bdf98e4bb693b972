"""The training dialog: pick a recipe, a dataset folder, device, epochs, output folder; watch jobs.

Data is validated with the recipe's own ``validate_data`` before anything starts, so a wrong
folder is a clear sentence here instead of a failed job minutes later. Closing the dialog only
hides it; the jobs belong to :class:`app.training.JobManager`.
"""
from __future__ import annotations

import shlex
import time
from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton,
                               QSpinBox, QSplitter, QVBoxLayout, QWidget)

from app.training import Job, JobManager
from app.widgets.common import Notice


def format_eta(seconds: Optional[float]) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class CurvesCanvas(QWidget):
    """Loss and accuracy curves of one job (matplotlib in Qt), redrawn at most twice a second."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(5, 2.4), tight_layout=True)
        self.canvas = FigureCanvasQTAgg(self.figure)
        self.ax_loss = self.figure.add_subplot(1, 2, 1)
        self.ax_acc = self.figure.add_subplot(1, 2, 2)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.addWidget(self.canvas)
        self._last = 0.0

    def plot(self, state, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        for ax in (self.ax_loss, self.ax_acc):
            ax.clear()
        steps = [(s, l, a) for s, l, a in state.step_curve]
        if steps:
            xs = [s for s, _, _ in steps]
            self.ax_loss.plot(xs, [l if l is not None else float("nan") for _, l, _ in steps], lw=1, label="train (running)")
            self.ax_acc.plot(xs, [a if a is not None else float("nan") for _, _, a in steps], lw=1, label="train (running)")
        if state.epoch_curve and state.steps:
            ex = [e * state.steps for e, *_ in state.epoch_curve]
            vals = [v for *_, v in state.epoch_curve]
            if any(v is not None for v in vals):
                self.ax_acc.plot(ex, [v if v is not None else float("nan") for v in vals], "o-", lw=1.5,
                                 label="validation")
        self.ax_loss.set_title("loss", fontsize=9)
        self.ax_acc.set_title("accuracy", fontsize=9)
        for ax in (self.ax_loss, self.ax_acc):
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.lines:
                ax.legend(fontsize=7)
        self.canvas.draw_idle()


class TrainingDialog(QDialog):
    job_started = Signal(int)

    def __init__(self, manager: JobManager, devices: list[str], parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Train a model")
        self.resize(900, 640)
        self.manager = manager
        outer = QVBoxLayout(self)
        split = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(split, 1)

        # -- new job form --
        form_box = QGroupBox("New job")
        form = QFormLayout(form_box)
        self.recipe = QComboBox()
        self.recipe_help = QLabel("")
        self.recipe_help.setWordWrap(True)
        form.addRow("Recipe", self.recipe)
        form.addRow("", self.recipe_help)
        self.data = QLineEdit()
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(self.data, "Dataset folder"))
        row = QHBoxLayout()
        row.addWidget(self.data, 1)
        row.addWidget(browse)
        form.addRow("Dataset folder", row)
        self.device = QComboBox()
        self.device.addItems(devices)
        form.addRow("Device", self.device)
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        form.addRow("Epochs", self.epochs)
        self.out = QLineEdit()
        browse2 = QPushButton("Browse…")
        browse2.clicked.connect(lambda: self._browse(self.out, "Output folder"))
        row2 = QHBoxLayout()
        row2.addWidget(self.out, 1)
        row2.addWidget(browse2)
        form.addRow("Output folder", row2)
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("recipe options, e.g. --batch-size 64 (ferkit train RECIPE --help)")
        form.addRow("Extra options", self.extra)
        self.start_button = QPushButton("Validate data and start")
        self.start_button.clicked.connect(self.start_job)
        form.addRow(self.start_button)
        self.message = Notice()
        form.addRow(self.message)
        split.addWidget(form_box)

        # -- jobs --
        jobs_box = QWidget()
        jl = QVBoxLayout(jobs_box)
        jl.addWidget(QLabel("Jobs (run one after another; they keep running when this dialog is closed):"))
        self.job_list = QListWidget()
        self.job_list.setMaximumHeight(110)
        self.job_list.currentRowChanged.connect(lambda _r: self._show_job(force=True))
        jl.addWidget(self.job_list)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)
        jl.addWidget(self.progress)
        self.status = QLabel("")
        jl.addWidget(self.status)
        buttons = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel (keeps checkpoint)")
        self.cancel_button.clicked.connect(self._cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(self._resume)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        buttons.addStretch(1)
        jl.addLayout(buttons)
        self.curves = CurvesCanvas()
        jl.addWidget(self.curves, 2)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        jl.addWidget(self.log_view, 1)
        split.addWidget(jobs_box)
        split.setSizes([330, 570])

        self.recipe.currentTextChanged.connect(self._recipe_changed)
        manager.job_added.connect(self._job_added)
        manager.job_updated.connect(self._job_updated)
        self._load_recipes()
        for i in range(len(manager.jobs)):
            self._job_added(i)

    # ---- form ------------------------------------------------------------------------------
    def _load_recipes(self) -> None:
        try:
            from ferkit.recipes.registry import list_recipes

            names = list_recipes()
        except Exception as exc:
            names = []
            self.message.say(f"The training recipes could not be loaded: {exc}")
        self.recipe.clear()
        self.recipe.addItems(names)
        if not names:
            self.message.say("No training recipes are installed with this copy of ferkit.")
            self.start_button.setEnabled(False)

    def _recipe_changed(self, name: str) -> None:
        if not name:
            return
        from ferkit.recipes.registry import get_recipe

        cls = get_recipe(name)
        self.recipe_help.setText(f"{cls.description}<br><i>Data:</i> {cls.data_help}")
        self.epochs.setValue(max(1, int(cls.default_epochs or 1)))
        if not self.out.text():
            self.out.setText(str(Path.cwd() / "runs" / name.replace("/", "-")))

    def _browse(self, edit: QLineEdit, title: str) -> None:
        path = QFileDialog.getExistingDirectory(self, title, edit.text() or str(Path.home()))
        if path:
            edit.setText(path)

    def validate(self) -> Optional[str]:
        """A plain sentence of what is wrong with the form, or None when a job can start."""
        from ferkit.data.errors import DataError
        from ferkit.recipes.registry import get_recipe

        name = self.recipe.currentText()
        if not name:
            return "Pick a recipe."
        data = self.data.text().strip()
        if not data:
            return "Choose the dataset folder."
        if not Path(data).is_dir():
            return f"The dataset folder {data} does not exist."
        if not self.out.text().strip():
            return "Choose an output folder for the checkpoint."
        cls = get_recipe(name)
        try:
            shlex.split(self.extra.text())
        except ValueError as exc:
            return f"The extra options cannot be read ({exc}); check the quotes."
        try:
            cls.validate_data(Path(data))
        except DataError as exc:
            return f"This folder does not fit the recipe: {exc}\nExpected: {cls.data_help}"
        except (OSError, ValueError) as exc:
            return f"This folder does not fit the recipe: {exc}\nExpected: {cls.data_help}"
        return None

    def start_job(self) -> Optional[int]:
        problem = self.validate()
        if problem:
            self.message.say(problem)
            return None
        self.message.say("")
        job = Job(self.recipe.currentText(), Path(self.data.text().strip()), Path(self.out.text().strip()),
                  int(self.epochs.value()), self.device.currentText(), extra=shlex.split(self.extra.text()))
        index = self.manager.add(job)
        self.job_list.setCurrentRow(index)
        self.job_started.emit(index)
        return index

    # ---- jobs ------------------------------------------------------------------------------
    def _job_added(self, index: int) -> None:
        job = self.manager.jobs[index]
        self.job_list.addItem(QListWidgetItem(self._job_text(job)))
        self.job_list.setCurrentRow(index)

    def _job_text(self, job: Job) -> str:
        st = job.state
        return f"[{st.status}] {job.title}  epoch {st.epoch}/{st.epochs or '?'}"

    def _job_updated(self, index: int) -> None:
        if index < self.job_list.count():
            self.job_list.item(index).setText(self._job_text(self.manager.jobs[index]))
        if index == self.job_list.currentRow():
            self._show_job()

    def current_job(self) -> Optional[Job]:
        row = self.job_list.currentRow()
        return self.manager.jobs[row] if 0 <= row < len(self.manager.jobs) else None

    def _show_job(self, force: bool = False) -> None:
        job = self.current_job()
        if job is None:
            return
        st = job.state
        self.progress.setValue(int(st.fraction * 1000))
        speed = f", {st.images_per_s:.0f} images/s" if st.images_per_s else ""
        text = f"{st.status}: epoch {st.epoch}/{st.epochs or '?'}"
        if st.status == "running" and st.steps:
            text += f", step {st.step}/{st.steps}"
        text += f", ETA {format_eta(st.eta_s)}{speed}"
        if st.checkpoint:
            text += f"\ncheckpoint: {st.checkpoint}"
        if st.status == "failed" and st.message:
            text += f"\n{st.message}"
        self.status.setText(text)
        self.cancel_button.setEnabled(st.status in ("queued", "running"))
        self.resume_button.setEnabled(st.status in ("interrupted", "failed", "completed"))
        lines = "\n".join(st.log)
        if self.log_view.toPlainText() != lines:
            self.log_view.setPlainText(lines)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        self.curves.plot(st, force=force or st.status != "running")

    def _cancel(self) -> None:
        row = self.job_list.currentRow()
        if row >= 0:
            self.manager.cancel(row)

    def _resume(self) -> None:
        row = self.job_list.currentRow()
        if row >= 0:
            self.manager.resume(row)
