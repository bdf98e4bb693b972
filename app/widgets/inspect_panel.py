"""Image inspection: a list of opened images, per-face results, export and annotated save."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (QAbstractItemView, QCheckBox, QHBoxLayout, QListWidget, QListWidgetItem,
                               QPushButton, QTableWidget, QTableWidgetItem, QVBoxLayout, QWidget)

from app.core.analyzer import FrameResult
from app.widgets.common import Notice


class InspectPanel(QWidget):
    open_requested = Signal()
    open_folder_requested = Signal()
    image_selected = Signal(str)
    whole_image_changed = Signal(bool)
    export_requested = Signal()
    save_annotated_requested = Signal()

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer = QVBoxLayout(self)
        row = QHBoxLayout()
        for text, sig in (("Open images…", self.open_requested), ("Open folder…", self.open_folder_requested)):
            b = QPushButton(text)
            b.clicked.connect(sig)
            row.addWidget(b)
        outer.addLayout(row)
        self.whole = QCheckBox("When no face is found, score the whole image")
        self.whole.toggled.connect(self.whole_image_changed)
        outer.addWidget(self.whole)
        self.notice = Notice()
        outer.addWidget(self.notice)
        self.files = QListWidget()
        self.files.currentItemChanged.connect(self._selected)
        outer.addWidget(self.files, 1)
        self.table = QTableWidget(0, 5)
        self.table.setHorizontalHeaderLabels(["face", "label", "top score", "box", "identity"])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        outer.addWidget(self.table, 1)
        row2 = QHBoxLayout()
        self.export_button = QPushButton("Export all results (CSV/JSON)…")
        self.export_button.clicked.connect(self.export_requested)
        row2.addWidget(self.export_button)
        self.save_button = QPushButton("Save annotated image…")
        self.save_button.clicked.connect(self.save_annotated_requested)
        row2.addWidget(self.save_button)
        outer.addLayout(row2)
        self.status: dict[str, str] = {}

    def set_files(self, paths: list[Path]) -> None:
        self.files.blockSignals(True)
        self.files.clear()
        for p in paths:
            item = QListWidgetItem(f"… {p.name}")
            item.setData(Qt.ItemDataRole.UserRole, str(p))
            item.setToolTip(str(p))
            self.files.addItem(item)
        self.files.setCurrentRow(0)  # the first file is shown first (its result arrives by itself)
        self.files.blockSignals(False)

    def _item(self, path: str) -> Optional[QListWidgetItem]:
        for i in range(self.files.count()):
            if self.files.item(i).data(Qt.ItemDataRole.UserRole) == path:
                return self.files.item(i)
        return None

    def mark(self, path: str, ok: bool, text: str) -> None:
        item = self._item(path)
        if item is not None:
            item.setText(("✓ " if ok else "✗ ") + Path(path).name + (f" — {text}" if text else ""))
            item.setForeground(QColor(0, 0, 0) if ok else QColor(170, 30, 30))

    def _selected(self, item: Optional[QListWidgetItem], _prev) -> None:
        if item is not None:
            self.image_selected.emit(item.data(Qt.ItemDataRole.UserRole))

    def select_first(self) -> None:
        if self.files.count():
            self.files.setCurrentRow(0)

    def show_result(self, path: str, result: Optional[FrameResult], error: str = "") -> None:
        self.table.setRowCount(0)
        if error:
            self.notice.say(error)
            return
        if result is None:
            self.notice.say("")
            return
        if not result.faces:
            self.notice.say(f"No face was found in {Path(path).name}. Tick 'score the whole image' above to "
                            "score it anyway.")
            return
        self.notice.say(result.note)
        self.table.setRowCount(len(result.faces))
        for r, face in enumerate(result.faces):
            sc = face.scores.get(result.primary) if result.primary else None
            match = face.match  # a name only at or above the calibrated threshold, else "unknown"
            values = ["whole image" if face.whole_image else f"#{face.track_id}",
                      "" if sc is None else sc.classes[int(sc.raw.argmax())],
                      "" if sc is None else f"{sc.raw.max() * 100:.1f}%",
                      "{} {} {}×{}".format(*face.box),
                      "" if match is None else f"{match.label} ({match.similarity:.3f})"]
            for c, v in enumerate(values):
                self.table.setItem(r, c, QTableWidgetItem(v))
