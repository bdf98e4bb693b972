"""Side panels: scores, comparison, identity, live settings. Each shows what its model computes
and says plainly when the selected model cannot compute it."""
from __future__ import annotations

from collections import Counter
from typing import Any, Optional, Sequence

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QComboBox, QDoubleSpinBox, QFormLayout, QGridLayout,
                               QHBoxLayout, QInputDialog, QLabel, QLineEdit, QListWidget, QListWidgetItem, QPushButton,
                               QScrollArea, QSpinBox, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from app.core.analyzer import FrameResult, pick_face
from app.core.enrolment import enrolment_advice
from app.core.identity import NO_FEATURE, IdentityChoice, describe
from app.core.state import LiveSettings
from ferkit.data.classes import canonical
from ferkit.face.tracking import SMOOTHING_MODES, Smoother
from app.widgets.common import Notice, ScoreBars, qcolour


class _Scroll(QScrollArea):
    def __init__(self, inner: QWidget) -> None:
        super().__init__()
        self.setWidget(inner)
        self.setWidgetResizable(True)
        self.setFrameShape(QScrollArea.Shape.NoFrame)


class ScoresPanel(QWidget):
    """Smoothed score bars of the selected model for every tracked face (raw value as a tick)."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        self.header = QLabel("No model loaded yet.")
        self.header.setWordWrap(True)
        outer.addWidget(self.header)
        self.notice = Notice()
        outer.addWidget(self.notice)
        inner = QWidget()
        self.box = QVBoxLayout(inner)
        self.box.setAlignment(Qt.AlignmentFlag.AlignTop)
        outer.addWidget(_Scroll(inner), 1)
        self.bars: list[ScoreBars] = []

    def set_model(self, handle: Any) -> None:
        """Header: the loaded model (a ModelHandle, or None), its data, size and measured accuracy."""
        if handle is None:
            self.header.setText("No model loaded.")
            return
        w = handle.weights
        acc = [f"{k} {v * 100:.2f}%" if isinstance(v, float) and v <= 1 else f"{k} {v}"
               for k, v in (w.metrics or {}).items() if "accuracy" in k][:2]
        self.header.setText(
            f"<b>{handle.name}</b> ({w.architecture}, {len(w.classes)} classes, {w.preprocessing.input_size}px "
            f"{'gray' if w.preprocessing.grayscale else 'RGB'}) on {handle.device}" +
            (f"<br>{', '.join(acc)}" if acc else "") + "<br>Bars: smoothed score; thin tick: this frame's raw score.")

    def update_result(self, result: Optional[FrameResult], selected_id: Optional[int]) -> None:
        faces = [] if result is None or result.primary is None else \
            [f for f in result.faces if result.primary in f.scores]
        if result is not None and not result.faces:
            self.notice.say("No face in this frame." if not result.note else result.note)
        elif result is not None and result.primary is None:
            self.notice.say("No model is loaded: pick one in the Model box.")
        else:
            self.notice.say(result.note if result is not None else "")
        while len(self.bars) < len(faces):
            bars = ScoreBars()
            self.bars.append(bars)
            self.box.addWidget(bars)
        for i, bars in enumerate(self.bars):
            if i >= len(faces):
                bars.hide()
                continue
            face = faces[i]
            sc = face.scores[result.primary]
            title = ("whole image" if face.whole_image else f"face #{face.track_id}") + f" — {sc.label}"
            if face.track_id == selected_id:
                title += "  (selected)"
            bars.set_scores(sc.classes, sc.smoothed, marks=sc.raw, colour=qcolour(face.colour), title=title)
            bars.show()


class ComparisonPanel(QWidget):
    """Two or more models on the same face, side by side; agreement on the top label highlighted."""

    models_changed = Signal(list)

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        outer.addWidget(QLabel("Compare the selected model with (tick one or more):"))
        self.list = QListWidget()
        self.list.setMaximumHeight(110)
        self.list.itemChanged.connect(lambda _i: self.models_changed.emit(self.checked()))
        outer.addWidget(self.list)
        self.agreement = QLabel("")
        self.agreement.setWordWrap(True)
        outer.addWidget(self.agreement)
        self.notice = Notice()
        outer.addWidget(self.notice)
        inner = QWidget()
        self.grid = QGridLayout(inner)
        self.grid.setAlignment(Qt.AlignmentFlag.AlignTop)
        outer.addWidget(_Scroll(inner), 1)
        self.bars: list[ScoreBars] = []

    def set_available(self, names: Sequence[str], labels: Optional[dict[str, str]] = None,
                      checked: Sequence[str] = ()) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        for name in names:
            item = QListWidgetItem((labels or {}).get(name, name))
            item.setData(Qt.ItemDataRole.UserRole, name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if name in checked else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        self.list.blockSignals(False)

    def names(self) -> list[str]:
        """Every model offered for comparison (ticked or not)."""
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())]

    def checked(self) -> list[str]:
        return [self.list.item(i).data(Qt.ItemDataRole.UserRole) for i in range(self.list.count())
                if self.list.item(i).checkState() == Qt.CheckState.Checked]

    def update_result(self, result: Optional[FrameResult], selected_id: Optional[int]) -> None:
        face = pick_face(result, selected_id)
        models = list(face.scores) if face is not None else []
        if face is None:
            self.notice.say("No face to compare yet.")
        elif len(models) < 2:
            self.notice.say("Tick at least one more model above to compare it with the selected model.")
        else:
            self.notice.say("")
        labels = {m: canonical(face.scores[m].label) for m in models} if face else {}
        majority, count = (Counter(labels.values()).most_common(1)[0] if labels else ("", 0))
        if face is not None and len(models) >= 2:
            if count == len(models):
                self.agreement.setText(f"<b style='color:#167a2c'>All {len(models)} models agree: {majority}</b>"
                                       f" (face #{face.track_id})")
            else:
                parts = ", ".join(f"{m}: {lab}" for m, lab in labels.items())
                self.agreement.setText(f"<b style='color:#b35900'>Models disagree</b> on face #{face.track_id} — {parts}")
        else:
            self.agreement.setText("")
        while len(self.bars) < len(models):
            bars = ScoreBars()
            n = len(self.bars)
            self.grid.addWidget(bars, n // 2, n % 2)
            self.bars.append(bars)
        for i, bars in enumerate(self.bars):
            if i >= len(models):
                bars.hide()
                continue
            sc = face.scores[models[i]]
            agree = labels[models[i]] == majority and count > 1
            bars.set_scores(sc.classes, sc.smoothed, marks=sc.raw, title=f"{models[i]} — {sc.label}",
                            colour=QColor(40, 150, 70) if agree else QColor(220, 120, 30), highlight=agree)
            bars.show()


class IdentityPanel(QWidget):
    """Enrol faces under a name; each face's similarity to each name and the same-person decision.

    The panel always says which identity weights decide, their threshold and the false-accept
    rate it was set at, so a user can judge a "same person" (and see why there is none).
    """

    enrol_face = Signal(str)  # name; enrol the selected live face
    enrol_image = Signal(str)  # name; ask for an image file
    remove_name = Signal(str)
    clear_all = Signal()
    stop_capture = Signal()  # end a guided live capture now, enrolling the pictures taken

    DECISION = "decision"

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        self.notice = Notice()
        outer.addWidget(self.notice)
        self.threshold_label = QLabel("")
        self.threshold_label.setWordWrap(True)
        outer.addWidget(self.threshold_label)
        row = QHBoxLayout()
        self.name = QLineEdit()
        self.name.setPlaceholderText("name to enrol")
        row.addWidget(self.name, 1)
        self.enrol_button = QPushButton("Enrol selected face")
        self.enrol_button.setToolTip("Store the selected face under this name (Ctrl+E). On playing video or camera "
                                     "it takes several pictures over a few seconds (different moments and poses "
                                     "are recognised far better than one); on a paused frame, one picture.")
        self.enrol_button.clicked.connect(lambda: self.enrol_face.emit(self.name.text()))
        row.addWidget(self.enrol_button)
        self.image_button = QPushButton("From images…")
        self.image_button.clicked.connect(lambda: self.enrol_image.emit(self.name.text()))
        row.addWidget(self.image_button)
        outer.addLayout(row)
        capture_row = QHBoxLayout()
        #: a guided live capture's progress ("Taking pictures of Ada: 2 of 5 …")
        self.capture_label = QLabel("")
        self.capture_label.setWordWrap(True)
        capture_row.addWidget(self.capture_label, 1)
        self.capture_button = QPushButton("Enrol now")
        self.capture_button.setToolTip("Stop taking pictures and enrol the ones taken so far")
        self.capture_button.clicked.connect(self.stop_capture)
        capture_row.addWidget(self.capture_button)
        outer.addLayout(capture_row)
        self.show_capture("")
        outer.addWidget(QLabel("Enrolled:"))
        self.enrolled = QListWidget()
        self.enrolled.setMaximumHeight(100)
        outer.addWidget(self.enrolled)
        row2 = QHBoxLayout()
        rm = QPushButton("Remove selected")
        rm.clicked.connect(self._remove)
        row2.addWidget(rm)
        clr = QPushButton("Remove all")
        clr.clicked.connect(self.clear_all)
        row2.addWidget(clr)
        row2.addStretch(1)
        outer.addLayout(row2)
        #: what to expect from the pictures enrolled (the card's measured rates) and who needs more
        self.advice = QLabel("")
        self.advice.setWordWrap(True)
        outer.addWidget(self.advice)
        self.counts: list[tuple[str, int]] = []
        outer.addWidget(QLabel("Cosine similarity of each face to each enrolled name, and the decision:"))
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        outer.addWidget(self.table, 1)
        self.choice = IdentityChoice()

    def ask_name(self, name: str = "") -> Optional[str]:
        """``name``, else the typed one, else asked in a dialog (None when the user cancels)."""
        name = (name or "").strip() or self.name.text().strip()
        if name:
            return name
        text, ok = QInputDialog.getText(self, "Enrol", "Name of this person:")
        return text.strip() if ok and text.strip() else None

    def _remove(self) -> None:
        item = self.enrolled.currentItem()
        if item is not None:
            self.remove_name.emit(item.data(Qt.ItemDataRole.UserRole))

    def set_identity(self, choice: IdentityChoice) -> None:
        """Which identity feature decides (or why none does)."""
        self.choice = choice
        self.notice.say("" if choice.active else (choice.reason or NO_FEATURE))
        self.threshold_label.setText(describe(choice) if choice.active else "")
        self._advise()

    def set_enrolled(self, names_and_counts: Sequence[tuple[str, int]]) -> None:
        """The enrolled names with how many pictures each has; one picture is marked as too few."""
        self.counts = list(names_and_counts)
        self.enrolled.clear()
        for name, n in self.counts:
            item = QListWidgetItem(f"{name}  ({n} picture{'s' if n != 1 else ''}"
                                   + (" — enrol more for better recognition)" if n == 1 else ")"))
            item.setData(Qt.ItemDataRole.UserRole, name)
            if n == 1:
                item.setForeground(QColor(150, 90, 0))
            self.enrolled.addItem(item)
        self._advise()

    def _advise(self) -> None:
        c = self.choice
        self.advice.setText(enrolment_advice(self.counts, c.tar, c.far, c.enrolment_rates) if c.active else "")
        self.advice.setVisible(bool(self.advice.text()))

    def show_capture(self, text: str) -> None:
        """A guided capture's progress; "" hides it (none runs)."""
        self.capture_label.setText(text)
        self.capture_label.setVisible(bool(text))
        self.capture_button.setVisible(bool(text))
        self.enrol_button.setEnabled(not text)

    def _cell(self, r: int, c: int, text: str, match: bool) -> None:
        item = self.table.item(r, c)
        if item is None:
            item = QTableWidgetItem()
            self.table.setItem(r, c, item)
        item.setText(text)
        item.setBackground(QColor(200, 240, 205) if match else QColor(255, 255, 255))

    def update_result(self, result: Optional[FrameResult], names: Sequence[str]) -> None:
        faces = [f for f in (result.faces if result else []) if f.identity is not None]
        columns = list(names) + ([self.DECISION] if self.choice.active else [])
        self.table.setRowCount(len(faces))
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setVerticalHeaderLabels([f"face #{f.track_id}" for f in faces])
        threshold = self.choice.threshold if self.choice.active else None
        for r, face in enumerate(faces):
            for c, name in enumerate(names):
                sim = face.similarities.get(name)
                same = sim is not None and threshold is not None and sim >= threshold
                self._cell(r, c, "—" if sim is None else f"{sim:.3f}" + ("  ✓ same" if same else ""), same)
            if self.choice.active:
                match = face.match
                text = "—" if match is None else (f"{match.name} ({match.similarity:.3f} ≥ {threshold:.3f})"
                                                  if match.name else f"unknown ({match.similarity:.3f} < {threshold:.3f})")
                self._cell(r, len(names), text, match is not None and match.name is not None)
        self.table.resizeColumnsToContents()


class LivePanel(QWidget):
    """Smoothing, faces, device and explainer refresh settings."""

    smoothing_changed = Signal(object)  # Smoother
    max_faces_changed = Signal(int)
    detector_changed = Signal(str)
    device_changed = Signal(str)
    explain_interval_changed = Signal(float)

    def __init__(self, devices: Sequence[str], parent=None) -> None:
        super().__init__(parent)
        form = QFormLayout(self)
        self.mode = QComboBox()
        self.mode.addItems(list(SMOOTHING_MODES))
        self.mode.setToolTip("off: raw scores; ema: exponential moving average; window: mean of the last N frames")
        form.addRow("Smoothing", self.mode)
        self.alpha = QDoubleSpinBox()
        self.alpha.setRange(0.05, 1.0)
        self.alpha.setSingleStep(0.05)
        self.alpha.setValue(0.35)
        form.addRow("EMA weight of new frame", self.alpha)
        self.window = QSpinBox()
        self.window.setRange(1, 120)
        self.window.setValue(8)
        form.addRow("Window (frames)", self.window)
        self.max_faces = QSpinBox()
        self.max_faces.setRange(1, 20)
        self.max_faces.setValue(5)
        form.addRow("Faces at most", self.max_faces)
        self.detector = QComboBox()
        for key, text in (("near", "near range (webcam, close-ups)"), ("auto", "near + far range (groups, far faces)"),
                          ("fast", "fastest (no face mesh; rougher alignment)")):
            self.detector.addItem(text, key)
        self.detector.setToolTip("Face detector for live video and camera. Still images always use the full "
                                 "detector, as 'ferkit predict' does.")
        form.addRow("Live face detector", self.detector)
        self.device = QComboBox()
        self.device.addItems(list(devices))
        self.device.setToolTip("auto picks CUDA when a GPU is present, else CPU")
        form.addRow("Device", self.device)
        self.interval = QDoubleSpinBox()
        self.interval.setRange(0.0, 5.0)
        self.interval.setSingleStep(0.1)
        self.interval.setValue(0.3)
        self.interval.setSuffix(" s")
        self.interval.setToolTip("How often gates and synthesis refresh at most (they run on their own "
                                 "workers; a longer interval leaves more CPU to the live view)")
        form.addRow("Gates/synthesis refresh", self.interval)
        self.mode.currentTextChanged.connect(lambda _t: self._emit_smoother())
        self.alpha.valueChanged.connect(lambda _v: self._emit_smoother())
        self.window.valueChanged.connect(lambda _v: self._emit_smoother())
        self.max_faces.valueChanged.connect(self.max_faces_changed)
        self.device.currentTextChanged.connect(self.device_changed)
        self.interval.valueChanged.connect(self.explain_interval_changed)

    def smoother(self) -> Smoother:
        return Smoother(self.mode.currentText(), float(self.alpha.value()), int(self.window.value()))

    def show_settings(self, live: LiveSettings, explain_interval: float) -> None:
        """Show restored settings without emitting change signals (nothing is re-triggered)."""
        widgets = (self.mode, self.alpha, self.window, self.max_faces, self.detector, self.device, self.interval)
        for w in widgets:
            w.blockSignals(True)
        self.mode.setCurrentText(live.smoother.mode)
        self.alpha.setValue(live.smoother.alpha)
        self.window.setValue(live.smoother.window)
        self.max_faces.setValue(live.max_faces)
        self.detector.setCurrentIndex(max(0, self.detector.findData(live.detector)))
        self.device.setCurrentText(live.device)
        self.interval.setValue(explain_interval)
        for w in widgets:
            w.blockSignals(False)

    def _emit_smoother(self) -> None:
        self.smoothing_changed.emit(self.smoother())
