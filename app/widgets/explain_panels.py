"""FERSNet panels: ConvFLU gate heatmaps and the expression-synthesis strip.

Both are fed by "latest wins" workers (see :mod:`app.workers`): the live view never waits for
them. When neither the selected model nor a shipped FERSNet can produce gates or faces, the
panel says so instead of disappearing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import numpy as np
from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGridLayout, QHBoxLayout,
                               QLabel, QVBoxLayout, QWidget)

from app.core.explain import GATE_NAMES, colormap_lut, overlay, parse_gate_keys
from app.widgets.common import ColourBar, ImageLabel, panel_header

CMAP = "inferno"


class GatesPanel(QWidget):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer, self.notice, self.info = panel_header(self)
        pick = QHBoxLayout()
        self.gate = QComboBox()
        self.direction = QComboBox()
        self.level = QComboBox()
        for label, combo in (("Gate", self.gate), ("Direction", self.direction), ("Level", self.level)):
            pick.addWidget(QLabel(label))
            pick.addWidget(combo, 1)
            combo.currentIndexChanged.connect(lambda _i: self._redraw())
        outer.addLayout(pick)
        row = QHBoxLayout()
        self.image = ImageLabel(size=200)
        row.addWidget(self.image, 1)
        row.addWidget(ColourBar(colormap_lut(CMAP), 0.0, 1.0))
        outer.addLayout(row, 3)
        self.stats = QLabel("")
        outer.addWidget(self.stats)
        outer.addWidget(QLabel("All gates (channel mean, same 0–1 scale):"))
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(2)
        outer.addWidget(self.grid_host, 2)
        self.thumbs: dict[str, ImageLabel] = {}
        self.data: Optional[dict[str, Any]] = None
        self._keys: list = []

    def say(self, text: str) -> None:
        self.notice.say(text)

    def set_data(self, data: Optional[dict[str, Any]]) -> None:
        """``{"model", "track_id", "crop", "maps": {key: [H,W]}}`` from the gates worker."""
        self.data = data
        if not data or not data.get("maps"):
            return
        keys = parse_gate_keys(list(data["maps"]))
        if [k.key for k in keys] != [k.key for k in self._keys]:
            self._keys = keys
            for combo, values in ((self.gate, sorted({k.gate for k in keys})),
                                  (self.direction, sorted({k.direction for k in keys})),
                                  (self.level, sorted({k.level for k in keys}, key=lambda v: (len(v), v)))):
                current = combo.currentData()
                combo.blockSignals(True)
                combo.clear()
                for v in values:
                    combo.addItem(GATE_NAMES.get(v, v) if combo is self.gate else v, v)
                if current in values:
                    combo.setCurrentIndex(values.index(current))
                combo.blockSignals(False)
            for t in self.thumbs.values():
                t.deleteLater()
            self.thumbs.clear()
            for i, k in enumerate(keys):
                thumb = ImageLabel(size=56)
                thumb.setToolTip(k.label)
                thumb.clicked.connect(lambda k=k: self._pick(k))
                self.grid.addWidget(thumb, i // 8, i % 8)
                self.thumbs[k.key] = thumb
        self.info.setText(f"{data['model']} on face #{data['track_id']}: ConvFLU gates, channel mean, overlaid on the "
                          "aligned face. r = leaky gate, z = memory gate; fer<-fes: into the recognition stream.")
        for k in self._keys:
            self.thumbs[k.key].set_array(overlay(data["crop"], data["maps"][k.key], cmap=CMAP, size=96))
        self._redraw()

    def _pick(self, key) -> None:
        for combo, value in ((self.gate, key.gate), (self.direction, key.direction), (self.level, key.level)):
            i = combo.findData(value)
            if i >= 0:
                combo.setCurrentIndex(i)

    def current_key(self) -> Optional[str]:
        for k in self._keys:
            if (k.gate, k.direction, k.level) == (self.gate.currentData(), self.direction.currentData(),
                                                  self.level.currentData()):
                return k.key
        return None

    def _redraw(self) -> None:
        key = self.current_key()
        if self.data is None or key is None:
            return
        heat = self.data["maps"][key]
        self.image.set_array(overlay(self.data["crop"], heat, cmap=CMAP, size=192))
        self.stats.setText(f"{key}: min {heat.min():.3f}  mean {heat.mean():.3f}  max {heat.max():.3f}  "
                           f"({heat.shape[1]}×{heat.shape[0]} map)")


class SynthesisPanel(QWidget):
    """The current face re-expressed as every class; click one to enlarge and save it."""

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer, self.notice, self.info = panel_header(self)
        self.strip_host = QWidget()
        self.strip = QGridLayout(self.strip_host)
        self.strip.setAlignment(Qt.AlignmentFlag.AlignTop)
        outer.addWidget(self.strip_host)
        outer.addStretch(1)
        self.tiles: list[tuple[ImageLabel, QLabel]] = []
        self.data: Optional[dict[str, Any]] = None

    def say(self, text: str) -> None:
        self.notice.say(text)

    def set_data(self, data: Optional[dict[str, Any]]) -> None:
        """``{"model", "track_id", "crop", "classes", "images": uint8 [K,H,W,C], "ms"}``."""
        self.data = data
        if not data:
            return
        images, classes = data["images"], data["classes"]
        while len(self.tiles) < len(classes) + 1:
            tile = QWidget()
            box = QVBoxLayout(tile)
            box.setContentsMargins(2, 2, 2, 2)
            box.setSpacing(1)
            img, cap = ImageLabel(size=104), QLabel()
            img.setFixedSize(104, 104)  # fixed: a pixmap that follows its label's size can oscillate in a grid
            cap.setAlignment(Qt.AlignmentFlag.AlignCenter)
            box.addWidget(img, 0, Qt.AlignmentFlag.AlignHCenter)
            box.addWidget(cap)
            n = len(self.tiles)
            self.strip.addWidget(tile, n // 4, n % 4)
            img.clicked.connect(lambda n=n: self.enlarge(n))
            self.tiles.append((img, cap))
        self.tiles[0][0].set_array(data["crop"])
        self.tiles[0][1].setText("<b>input</b>")
        for i, cls in enumerate(classes):
            self.tiles[i + 1][0].set_array(images[i])
            self.tiles[i + 1][1].setText(cls)
        self.info.setText(f"{data['model']}: face #{data['track_id']} synthesised with every target expression "
                          f"({data['ms']:.0f} ms on its own worker; the latest face wins). Click one to enlarge.")

    def enlarge(self, n: int) -> None:
        if self.data is None:
            return
        if n == 0:
            image, title = self.data["crop"], "input face"
        else:
            image, title = self.data["images"][n - 1], f"synthesised: {self.data['classes'][n - 1]}"
        EnlargedDialog(np.array(image), title, self).exec()


class EnlargedDialog(QDialog):
    def __init__(self, image: np.ndarray, title: str, parent=None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title)
        self.image = image
        layout = QVBoxLayout(self)
        label = ImageLabel(size=384)
        label.set_array(image)
        layout.addWidget(label, 1)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Save | QDialogButtonBox.StandardButton.Close)
        buttons.accepted.connect(self.save)
        buttons.rejected.connect(self.reject)
        layout.addWidget(buttons)

    def save(self, path: Optional[str] = None) -> Optional[Path]:
        if not path:
            path, _ = QFileDialog.getSaveFileName(self, "Save face", "synthesised.png", "PNG image (*.png)")
        if not path:
            return None
        from app.widgets.common import to_qimage

        scaled = to_qimage(self.image).scaled(self.image.shape[1] * 2, self.image.shape[0] * 2,
                                              Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation)
        if not scaled.save(str(path)):
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.warning(self, "Not saved", f"The picture could not be written to {path}.")
            return None
        return Path(path)
