"""The training dialog: pick a recipe, a dataset folder, device, epochs, output folder; watch jobs.

Data is validated with the recipe's own ``validate_data`` before anything starts, so a wrong
folder is a clear sentence here instead of a failed job minutes later. Closing the dialog only
hides it; the jobs belong to :class:`app.training.JobManager`.

What the dialog shows about a job (step x/y, ETA, where validation points sit) is the engine's
own numbers from its JSON events, never re-derived here. Recipe texts are plain text: they say
things like ``CK+48/<class>/S###.png``, which a rich-text label would swallow as a tag.
"""
from __future__ import annotations

import html
import os
import re
import shlex
import time
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QEvent, QRect, QSettings, QSize, QStandardPaths, Qt, QTimer, Signal
from PySide6.QtGui import QPainter, QPalette
from PySide6.QtWidgets import (QComboBox, QDialog, QFileDialog, QFormLayout, QGroupBox, QHBoxLayout, QLabel,
                               QLineEdit, QListWidget, QListWidgetItem, QPlainTextEdit, QProgressBar, QPushButton,
                               QSizePolicy, QSpinBox, QSplitter, QVBoxLayout, QWidget)

from app.training import Job, JobManager
from ferkit.training.progress import format_duration
from app.widgets.common import Notice


def runs_root() -> Path:
    """Where new runs go by default: ``<user data folder>/ferkit/runs``.

    Not the current directory (wherever the app happened to be started, often not writable
    or the source checkout). ``GenericDataLocation`` is the platform's per-user data folder
    (``~/.local/share``, ``~/Library/Application Support``, ``%LOCALAPPDATA%``) without the
    application's own name appended, so the folder reads the same whether the app was started
    as ``ferkit-app`` or from Python; Documents, then the home folder, are the fallbacks.
    """
    for kind in (QStandardPaths.StandardLocation.GenericDataLocation,
                 QStandardPaths.StandardLocation.DocumentsLocation):
        location = QStandardPaths.writableLocation(kind)
        if location:
            return Path(location) / "ferkit" / "runs"
    return Path.home() / "ferkit" / "runs"


def default_out_dir(recipe: str) -> Path:
    """The default run folder of ``recipe`` (its slashes would otherwise make nested folders)."""
    return runs_root() / recipe.replace("/", "-")


def suggested_data_dir(data_help: str) -> Optional[Path]:
    """The shared data folder a recipe names as its example (``e.g. ../shared/data/ckplus48``), when it exists.

    Every recipe's ``data_help`` names the folder of ``../shared/data`` it trains on; that is the
    recipe's own word on which dataset matches, so no table here has to follow new recipes.
    """
    from ferkit.paths import shared_data_dir

    m = re.search(r"\.\./shared/data/([^\s,;)]+)", data_help or "")
    if not m:
        return None
    path = shared_data_dir() / m.group(1).rstrip(".")
    return path if path.is_dir() else None


def device_choices(devices: list[str]) -> list[tuple[str, str]]:
    """(text shown, ``--device`` value) per device: which device will run and why.

    "auto" alone said nothing about the machine; the text now names the device auto picks, e.g.
    ``auto → cpu (no CUDA GPU found)``.
    """
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    out = []
    for d in devices:
        if d == "auto":
            text = f"auto → cuda ({gpu})" if gpu else "auto → cpu (no CUDA GPU found)"
        elif d.startswith("cuda"):
            text = f"{d} ({gpu})" if gpu else f"{d} (no CUDA GPU found: the job will fail)"
        else:
            text = d
        out.append((text, d))
    return out


def recipe_help_html(description: str, data_help: str) -> str:
    """The recipe's description and data layout as rich text, with the recipe's own text escaped."""
    text = html.escape(description or "")
    if data_help:
        text += ("<br>" if text else "") + "<i>Data:</i> " + html.escape(data_help)
    return text


class StatusLines(QLabel):
    """A fixed number of plain-text lines, each elided to the width; the full text is the tooltip.

    A status that grows a line (the "checkpoint: ..." line after the first epoch) or gets a long
    path must not resize the label: the Cancel/Resume buttons below it used to jump.
    """

    def __init__(self, lines: int = 2, parent: Optional[QWidget] = None) -> None:
        super().__init__(parent)
        self.lines = lines
        self.setTextFormat(Qt.TextFormat.PlainText)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self._fix_height()

    def _fix_height(self) -> None:
        m = self.contentsMargins()
        self.setFixedHeight(self.fontMetrics().lineSpacing() * self.lines + m.top() + m.bottom())

    def setText(self, text: str) -> None:  # noqa: N802 - Qt name
        super().setText(text)
        self.setToolTip(text)
        self.update()

    def sizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(200, self.height())

    def minimumSizeHint(self) -> QSize:  # noqa: N802 - Qt name
        return QSize(0, self.height())

    def changeEvent(self, event: QEvent) -> None:  # noqa: N802 - Qt name
        super().changeEvent(event)
        if event.type() == QEvent.Type.FontChange:
            self._fix_height()

    def paintEvent(self, _event) -> None:  # noqa: N802 - Qt name
        painter = QPainter(self)
        painter.setPen(self.palette().color(QPalette.ColorRole.WindowText))
        rect, fm = self.contentsRect(), self.fontMetrics()
        for i, line in enumerate(self.text().split("\n")[: self.lines]):
            row = QRect(rect.left(), rect.top() + i * fm.lineSpacing(), rect.width(), fm.lineSpacing())
            painter.drawText(row, int(Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter),
                             fm.elidedText(line, Qt.TextElideMode.ElideMiddle, rect.width()))
        painter.end()


def format_eta(seconds: Optional[float]) -> str:
    """``mm:ss`` or ``h:mm:ss``, as the engine's own log prints it; ``?`` without an estimate."""
    return format_duration(seconds)


class CurvesCanvas(QWidget):
    """Loss and accuracy curves of one job (matplotlib in Qt), redrawn at most twice a second.

    Both curves use the engine's ``global_step`` as x: the running train means from step events,
    validation at the ``global_step`` of each ``epoch`` event.
    """

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

    @staticmethod
    def validation_points(state) -> list[tuple[float, Optional[float]]]:
        """(global step, val accuracy) per epoch; from ``val_curve`` (engine positions) when kept."""
        points = getattr(state, "val_curve", None)
        if points is not None:
            return list(points)
        # a plain JobState: assume full epochs of the last known length
        return [(float(e * (state.steps or 1)), v) for e, *_, v in state.epoch_curve]

    def plot(self, state, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < 0.5:
            return
        self._last = now
        for ax in (self.ax_loss, self.ax_acc):
            ax.clear()
        history = list(getattr(state, "history", []) or [])
        if history:
            # epochs an earlier session trained (the run's curves.csv), at the end of each epoch
            per_epoch = float(state.steps or 1)
            hx = [e * per_epoch for e, *_ in history]
            self.ax_loss.plot(hx, [l if l is not None else float("nan") for _, l, _, _ in history], "s--", lw=1,
                              ms=3, label="earlier epochs (curves.csv)")
            self.ax_acc.plot(hx, [a if a is not None else float("nan") for _, _, a, _ in history], "s--", lw=1,
                             ms=3, label="earlier epochs (curves.csv)")
            if any(v is not None for *_, v in history):
                self.ax_acc.plot(hx, [v if v is not None else float("nan") for *_, v in history], "o:", lw=1,
                                 label="earlier validation")
        steps = [(s, l, a) for s, l, a in state.step_curve]
        if steps:
            xs = [s for s, _, _ in steps]
            self.ax_loss.plot(xs, [l if l is not None else float("nan") for _, l, _ in steps], lw=1, label="train (running)")
            self.ax_acc.plot(xs, [a if a is not None else float("nan") for _, _, a in steps], lw=1, label="train (running)")
        points = self.validation_points(state)
        if any(v is not None for _, v in points):
            self.ax_acc.plot([x for x, _ in points], [v if v is not None else float("nan") for _, v in points],
                             "o-", lw=1.5, label="validation")
        self.ax_loss.set_title("loss", fontsize=9)
        self.ax_acc.set_title("accuracy", fontsize=9)
        # earlier epochs alone, before the resumed run said its steps per epoch: they sit at epoch numbers
        x_label = "epoch" if history and not state.steps and not steps else "step"
        for ax in (self.ax_loss, self.ax_acc):
            ax.set_xlabel(x_label, fontsize=8)
            ax.tick_params(labelsize=7)
            if ax.lines:
                ax.legend(fontsize=7)
        self.canvas.draw_idle()


class TrainingDialog(QDialog):
    """New-job form on the left, the job queue with progress, curves and log on the right."""

    job_started = Signal(int)

    def __init__(self, manager: JobManager, devices: list[str], parent=None,
                 settings: Optional[QSettings] = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Train a model")
        self.resize(900, 640)
        self.manager = manager
        if settings is None:
            from app.settings import app_settings

            settings = app_settings()
        #: where the dataset folder last used for each recipe is kept
        self.settings = settings
        outer = QVBoxLayout(self)
        split = QSplitter(Qt.Orientation.Horizontal)
        outer.addWidget(split, 1)
        split.addWidget(self._build_form(devices))
        split.addWidget(self._build_jobs_view())
        split.setSizes([330, 570])
        self._start_timers()

        self.recipe.currentTextChanged.connect(self._recipe_changed)
        manager.job_added.connect(self._job_added)
        manager.job_updated.connect(self._job_updated)
        self._load_recipes()
        for i in range(len(manager.jobs)):
            self._job_added(i)
        self._update_buttons()
        self._refresh_threads_note()

    # ---- layout --------------------------------------------------------------------------------
    def _folder_row(self, field: QLineEdit, title: str) -> QHBoxLayout:
        """``field`` with a Browse… button beside it that opens a folder picker titled ``title``."""
        browse = QPushButton("Browse…")
        browse.clicked.connect(lambda: self._browse(field, title))
        row = QHBoxLayout()
        row.addWidget(field, 1)
        row.addWidget(browse)
        return row

    def _build_form(self, devices: list[str]) -> QGroupBox:
        """The new-job form: recipe and its help, dataset, device, threads, epochs, output, options, start."""
        form_box = QGroupBox("New job")
        form = QFormLayout(form_box)
        self.recipe = QComboBox()
        self.recipe_help = QLabel("")
        self.recipe_help.setTextFormat(Qt.TextFormat.RichText)  # built by recipe_help_html (escaped)
        self.recipe_help.setWordWrap(True)
        form.addRow("Recipe", self.recipe)
        form.addRow("", self.recipe_help)
        self.data = QLineEdit()
        #: the folder last filled in for the recipe (saved or suggested); replaced on a recipe change
        #: while the field still holds it
        self._auto_data = ""
        form.addRow("Dataset folder", self._folder_row(self.data, "Dataset folder"))
        self.device = QComboBox()
        for text, value in device_choices(devices):
            self.device.addItem(text, value)
        self.device.setToolTip("auto trains on a CUDA GPU when torch finds one, else on the CPU")
        form.addRow("Device", self.device)
        form.addRow("CPU threads", self._build_threads_row())
        self.epochs = QSpinBox()
        self.epochs.setRange(1, 10000)
        form.addRow("Epochs", self.epochs)
        self.out = QLineEdit()
        #: the folder last filled in from the recipe; while the field still holds it, the user
        #: has not chosen one and it follows the recipe
        self._auto_out = ""
        form.addRow("Output folder", self._folder_row(self.out, "Output folder"))
        self.extra = QLineEdit()
        self.extra.setPlaceholderText("recipe options, e.g. --batch-size 64 (ferkit train RECIPE --help)")
        form.addRow("Extra options", self.extra)
        self.start_button = QPushButton("Validate data and start")
        self.start_button.clicked.connect(self.start_job)
        form.addRow(self.start_button)
        self.message = Notice()
        self.message.setTextFormat(Qt.TextFormat.PlainText)  # quotes recipe data_help (<class>...)
        form.addRow(self.message)
        return form_box

    def _build_threads_row(self) -> QHBoxLayout:
        """The thread count (0 = auto) and a note saying what auto would pick now; needs :attr:`device`."""
        self.threads = QSpinBox()
        self.threads.setRange(0, max(1, os.cpu_count() or 1))
        self.threads.setSpecialValueText("auto")  # 0: the free cores, re-checked while it trains
        self.threads.setToolTip("CPU threads. auto: the cores other programs leave free, re-checked every few "
                                "seconds while it trains (with one of two cores busy, two threads trained 40x "
                                "slower than one). A number fixes the count (bit-identical reruns).")
        self.threads_note = QLabel("")
        self.threads_note.setTextFormat(Qt.TextFormat.PlainText)
        row_t = QHBoxLayout()
        row_t.addWidget(self.threads)
        row_t.addWidget(self.threads_note, 1)
        self.device.currentIndexChanged.connect(lambda _i: self._refresh_threads_note())
        self.threads.valueChanged.connect(lambda _v: self._refresh_threads_note())
        return row_t

    def _build_jobs_view(self) -> QWidget:
        """The job queue with its progress, status lines, cancel / resume, curves and log."""
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
        self.status = StatusLines(2)
        jl.addWidget(self.status)
        buttons = QHBoxLayout()
        self.cancel_button = QPushButton("Cancel (keeps checkpoint)")
        self.cancel_button.clicked.connect(self._cancel)
        self.resume_button = QPushButton("Resume")
        self.resume_button.clicked.connect(self._resume)
        buttons.addWidget(self.cancel_button)
        buttons.addWidget(self.resume_button)
        self.cancel_button.setEnabled(False)  # nothing to cancel or resume before a job exists
        self.resume_button.setEnabled(False)
        buttons.addStretch(1)
        jl.addLayout(buttons)
        self.curves = CurvesCanvas()
        jl.addWidget(self.curves, 2)
        self.log_view = QPlainTextEdit()
        self.log_view.setReadOnly(True)
        self.log_view.setMaximumBlockCount(2000)
        jl.addWidget(self.log_view, 1)
        return jobs_box

    def _start_timers(self) -> None:
        """The ETA tick (it counts down between events; none come while the engine evaluates) and the
        free-core probe behind the threads note (other programs' CPU use since the last look, non-blocking;
        it runs while the dialog is shown: closing only hides the dialog, and nobody reads the note then)."""
        self._tick = QTimer(self)
        self._tick.setInterval(1000)
        self._tick.timeout.connect(self._refresh_status)
        from ferkit.training.threads import CoreProbe

        self._probe = CoreProbe(count_own=True)  # the app's own work competes with a training job too
        self._busy_cores: Optional[int] = None
        self._cores_timer = QTimer(self)
        self._cores_timer.setInterval(2000)
        self._cores_timer.timeout.connect(self._measure_cores)

    def showEvent(self, event) -> None:
        super().showEvent(event)
        self._cores_timer.start()
        QTimer.singleShot(300, self, self._measure_cores)  # a first figure soon after it opens

    def hideEvent(self, event) -> None:
        self._cores_timer.stop()
        super().hideEvent(event)

    # ---- threads -------------------------------------------------------------------------------
    @property
    def device_value(self) -> str:
        """The ``--device`` value of the chosen entry (the combo shows a longer text)."""
        return str(self.device.currentData() or self.device.currentText())

    @property
    def threads_value(self) -> str:
        """``--threads``: "auto" or the count."""
        return "auto" if self.threads.value() == 0 else str(self.threads.value())

    def _measure_cores(self) -> None:
        from ferkit.training.threads import busy_cores

        other = self._probe.measure()
        if other is not None:
            self._busy_cores = busy_cores(other, self._busy_cores)
        self._refresh_threads_note()

    def _refresh_threads_note(self) -> None:
        """Say what auto would pick now, or that a GPU job does not use the setting."""
        import torch

        value = self.device_value
        if value.startswith("cuda") or (value == "auto" and torch.cuda.is_available()):
            self.threads_note.setText("(the GPU trains; threads matter little)")
            return
        cores = len(self._probe.cpus)
        if self.threads.value() != 0:
            self.threads_note.setText(f"fixed; this machine lets the job use {cores} core{'s' if cores != 1 else ''}")
            return
        if self._busy_cores is None:
            self.threads_note.setText("measuring the free cores…")
            return
        free = max(1, cores - self._busy_cores)
        self.threads_note.setText(f"{free} of {cores} core{'s' if cores != 1 else ''} free now → "
                                  f"{free} thread{'s' if free != 1 else ''}")

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
        self.recipe_help.setText(recipe_help_html(cls.description, cls.data_help))
        self.epochs.setValue(max(1, int(cls.default_epochs or 1)))
        data = self.data.text().strip()
        if not data or data == self._auto_data:  # not typed by the user: the recipe's folder
            self._auto_data = self.remembered_data(name, cls.data_help)
            self.data.setText(self._auto_data)
        current = self.out.text().strip()
        if not current or current == self._auto_out:  # not the user's choice: follow the recipe
            self._auto_out = str(default_out_dir(name))
            self.out.setText(self._auto_out)

    def remembered_data(self, recipe: str, data_help: str) -> str:
        """The dataset folder to offer for ``recipe``: the one last used with it, else the shared
        data folder its help names (``../shared/data/...``), else nothing."""
        last = str(self.settings.value(f"training/data/{recipe}", "") or "")
        if last and Path(last).is_dir():
            return last
        suggested = suggested_data_dir(data_help)
        return str(suggested) if suggested else ""

    @property
    def out_is_automatic(self) -> bool:
        """True while the output folder is the recipe's default (it then follows recipe changes)."""
        return self.out.text().strip() == self._auto_out

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
        data = Path(self.data.text().strip())
        job = Job(self.recipe.currentText(), data, Path(self.out.text().strip()),
                  int(self.epochs.value()), self.device_value, extra=shlex.split(self.extra.text()),
                  threads=self.threads_value)
        self.settings.setValue(f"training/data/{job.recipe}", str(data))
        self.settings.sync()
        self._auto_data = str(data)
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
        """The queue entry: status, recipe → folder, epochs done (one entry however often it was resumed)."""
        st = job.state
        return f"[{st.status}] {job.title}  epoch {st.epoch}/{st.epochs or '?'}"

    def _job_updated(self, index: int) -> None:
        if index < self.job_list.count():
            self.job_list.item(index).setText(self._job_text(self.manager.jobs[index]))
        if index == self.job_list.currentRow():
            self._show_job()
        else:
            self._update_buttons()  # another job may have freed (or taken) the selected job's folder

    def current_job(self) -> Optional[Job]:
        """The job selected in the queue (None before any job exists)."""
        row = self.job_list.currentRow()
        return self.manager.jobs[row] if 0 <= row < len(self.manager.jobs) else None

    def status_text(self, job: Job) -> str:
        """Two lines: where the job is (engine step counts and ETA), then the checkpoint or the error."""
        st = job.state
        speed = f", {st.images_per_s:.0f} images/s" if st.images_per_s and st.status == "running" else ""
        threads = st.threads_text() if hasattr(st, "threads_text") else ""
        if threads and st.status == "running":
            speed += f" on {threads}"
        text = f"{st.status}: epoch {st.epoch}/{st.epochs or '?'}"
        if st.status == "running" and st.step:
            # the epoch running is the one after those completed; steps is the engine's count
            text = f"{st.status}: epoch {st.epoch + 1}/{st.epochs or '?'}, step {st.step}/{st.steps or '?'}"
        eta = st.eta_now() if hasattr(st, "eta_now") else st.eta_s
        if st.status in ("running", "stopping"):
            text += f", ETA {format_eta(eta)}{speed}"
        if st.status == "failed" and st.message:
            text += f"\n{st.message}"
        elif st.checkpoint:
            text += f"\ncheckpoint: {st.checkpoint}"
        return text

    def _refresh_status(self) -> None:
        job = self.current_job()
        if job is None:
            self.status.setText("")
            self._tick.stop()
            return
        self.status.setText(self.status_text(job))
        if job.state.status == "running":
            if not self._tick.isActive():
                self._tick.start()
        else:
            self._tick.stop()

    def _update_buttons(self) -> None:
        """Cancel only while the selected job is queued or running; Resume only when it stopped before
        its last epoch, its folder holds a checkpoint and no other job is using that folder."""
        row = self.job_list.currentRow()
        job = self.current_job()
        self.cancel_button.setEnabled(job is not None and job.state.status in ("queued", "running"))
        can = job is not None and self.manager.can_resume(row)
        self.resume_button.setEnabled(can)
        if job is not None and job.state.status == "completed":
            tip = "This job has run all its epochs: nothing is left to resume (start a new job to train more)."
        elif can:
            tip = "Continue this job from its checkpoint; its curves and log go on in the same entry."
        else:
            tip = "Resume continues a stopped job from its checkpoint."
        self.resume_button.setToolTip(tip)

    def _show_job(self, force: bool = False) -> None:
        job = self.current_job()
        self._update_buttons()
        self._refresh_status()
        if job is None:
            return
        st = job.state
        self.progress.setValue(int(st.fraction * 1000))
        lines = "\n".join(st.log)
        if self.log_view.toPlainText() != lines:
            self.log_view.setPlainText(lines)
            self.log_view.verticalScrollBar().setValue(self.log_view.verticalScrollBar().maximum())
        self.curves.plot(st, force=force or st.status != "running")

    def _cancel(self) -> None:
        row = self.job_list.currentRow()
        if row >= 0 and self.cancel_button.isEnabled():
            self.manager.cancel(row)

    def _resume(self) -> None:
        row = self.job_list.currentRow()
        if row >= 0 and self.manager.can_resume(row):
            self.manager.resume(row)
