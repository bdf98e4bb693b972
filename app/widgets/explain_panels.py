"""FERSNet panels: ConvFLU gate heatmaps and the expression-synthesis strip.

Both are fed by "latest wins" workers (see :mod:`app.workers`): the live view never waits for
them. When neither the selected model nor a shipped FERSNet can produce gates or faces, the
panel says so instead of disappearing.

Both panels render only from the plain dicts their workers send (``set_data``), so tests and
``python -m app.screenshots`` can drive them without a model. The pictures and numbers come from
:mod:`app.core.explain` (Qt-free); this module only lays them out and paints them.
"""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PySide6.QtCore import QRect, QRectF, QSize, Qt, Signal
from PySide6.QtGui import QImage, QPainter
from PySide6.QtWidgets import (QCheckBox, QComboBox, QDialog, QDialogButtonBox, QFileDialog, QGridLayout,
                               QHBoxLayout, QLabel, QSizePolicy, QSlider, QVBoxLayout, QWidget)

from app.core.explain import (CMAP_DIFFERENCE, CMAP_SEQUENTIAL, CONTRAST_MODES, DIRECTION_NAMES, GATE_NAMES,
                              colormap_lut, difference_maps, difference_overlay, difference_scale, parse_gate_keys,
                              range_words, render_gate, weights_info)
from app.widgets.common import ImageLabel, panel_header, qcolour, to_qimage

CMAP = CMAP_SEQUENTIAL  # kept for callers that imported it


class RangeColourBar(QWidget):
    """Vertical colour bar whose axis is labelled with *real* values, not colour positions.

    Why not :class:`app.widgets.common.ColourBar`: that one is fixed at construction; here the
    colour range changes with every map (per-map contrast) and the colormap with the contrast mode.
    The axis runs over the colour range *and* the data's real extent (``extent``): with a robust
    range the outermost values are drawn in the end colours, and the bar shows that plateau
    instead of pretending the colours reach the data's min and max. With a fixed 0–1 range a
    bracket beside the bar marks where the data actually lies. The printed labels (top, colour
    centre, bottom) are kept in :attr:`texts` so tests read what the user reads.
    """

    def __init__(self, lut: np.ndarray, lo: float = 0.0, hi: float = 1.0, caption: str = "", parent=None) -> None:
        super().__init__(parent)
        self.lut = lut
        self.lo, self.hi = lo, hi
        self.extent: Optional[tuple[float, float]] = None
        self.axis = (lo, hi)
        self.decimals = 3
        self.caption = caption
        self.texts: list[str] = []
        self.setFixedWidth(74)
        self.setMinimumHeight(120)
        self.set_range(lo, hi, caption=caption)

    def set_range(self, lo: float, hi: float, *, extent: Optional[tuple[float, float]] = None,
                  lut: Optional[np.ndarray] = None, caption: Optional[str] = None,
                  decimals: Optional[int] = None) -> None:
        """Colours run from ``lo`` to ``hi``; ``extent`` = the data's (min, max), if known."""
        self.lo, self.hi = float(lo), float(hi)
        self.extent = None if extent is None else (float(extent[0]), float(extent[1]))
        if lut is not None:
            self.lut = lut
        if caption is not None:
            self.caption = caption
        if decimals is not None:
            self.decimals = decimals
        lo_axis, hi_axis = self.lo, self.hi
        if self.extent is not None:
            lo_axis, hi_axis = min(lo_axis, self.extent[0]), max(hi_axis, self.extent[1])
        self.axis = (lo_axis, hi_axis)
        d = self.decimals
        self.texts = [f"{hi_axis:.{d}f}", f"{(self.lo + self.hi) / 2:.{d}f}", f"{lo_axis:.{d}f}"]
        tip = f"colours run from {self.lo:.{d}f} to {self.hi:.{d}f}"
        if self.extent is not None:
            tip += f"; this map's values lie in {self.extent[0]:.{d}f} … {self.extent[1]:.{d}f}"
        self.setToolTip(tip + (f" ({self.caption})" if self.caption else ""))
        self.update()

    def _y(self, value: float, bar: QRectF) -> float:
        lo, hi = self.axis
        return bar.bottom() - (value - lo) / max(hi - lo, 1e-12) * bar.height()

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        top = 18 if self.caption else 8
        bar = QRectF(8, top + 4, 14, self.height() - top - 12)
        lo, hi = self.axis
        rows = max(int(bar.height()), 1)
        for i in range(rows):  # one line per pixel row: a plateau beyond the colour range stays visible
            v = lo + (hi - lo) * (1.0 - (i + 0.5) / rows)
            t = (v - self.lo) / max(self.hi - self.lo, 1e-12)
            p.setPen(qcolour(self.lut[int(round(min(max(t, 0.0), 1.0) * 255))]))
            p.drawLine(int(bar.left()), int(bar.top()) + i, int(bar.right()), int(bar.top()) + i)
        pen = self.palette().windowText().color()
        p.setPen(pen)
        p.drawRect(bar)
        if self.extent is not None and (self.extent[0] > lo + 1e-9 or self.extent[1] < hi - 1e-9):
            y0, y1 = self._y(self.extent[0], bar), self._y(self.extent[1], bar)
            p.drawLine(3, int(y1), 3, int(y0))  # bracket: where the data lies on a wider axis
            p.drawLine(3, int(y1), 6, int(y1))
            p.drawLine(3, int(y0), 6, int(y0))
        if self.caption:
            p.drawText(QRectF(0, 0, self.width(), 16), Qt.AlignmentFlag.AlignLeft, self.caption)
        x, w = bar.right() + 3, self.width() - bar.right() - 3
        left = Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignVCenter
        top_text, mid_text, bottom_text = self.texts
        p.drawText(QRectF(x, bar.top() - 7, w, 14), left, top_text)
        y_mid = self._y((self.lo + self.hi) / 2, bar)
        if bar.top() + 14 < y_mid < bar.bottom() - 14:
            p.drawLine(int(bar.right()), int(y_mid), int(bar.right()) + 2, int(y_mid))
            p.drawText(QRectF(x, y_mid - 7, w, 14), left, mid_text)
        p.drawText(QRectF(x, bar.bottom() - 7, w, 14), left, bottom_text)
        p.end()


class PixelImage(QWidget):
    """An image drawn at a whole-number scale with nearest-neighbour pixels, nothing painted over it.

    Why not :class:`ImageLabel`: a synthesised face differs from its input by a few grey levels;
    smooth rescaling blurs exactly those, and any caption drawn on the picture would hide the
    mouth. Here every screen pixel of :meth:`image_rect` is an image pixel, which tests check.
    """

    clicked = Signal()

    def __init__(self, side: int = 96, parent=None) -> None:
        super().__init__(parent)
        self.side = side
        self.array: Optional[np.ndarray] = None
        self._image: Optional[QImage] = None
        self.setMinimumSize(side, side)
        self.setSizePolicy(QSizePolicy.Policy.Fixed, QSizePolicy.Policy.Fixed)
        self.setCursor(Qt.CursorShape.PointingHandCursor)

    def sizeHint(self) -> QSize:
        return QSize(self.side, self.side)

    def set_array(self, array: Optional[np.ndarray]) -> None:
        self.array = None if array is None else np.array(array, copy=True)
        self._image = None if array is None else to_qimage(self.array)
        self.update()

    def image_rect(self) -> QRect:
        """Where the image is drawn, in widget pixels (empty when there is none)."""
        if self._image is None:
            return QRect()
        iw, ih = self._image.width(), self._image.height()
        scale = min(self.width() / iw, self.height() / ih)
        scale = float(int(scale)) if scale >= 1 else scale  # whole pixels when enlarging
        w, h = max(1, int(iw * scale)), max(1, int(ih * scale))
        return QRect((self.width() - w) // 2, (self.height() - h) // 2, w, h)

    def paintEvent(self, _event) -> None:
        if self._image is None:
            return
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        p.drawImage(self.image_rect(), self._image)
        p.end()

    def mousePressEvent(self, event) -> None:
        self.clicked.emit()
        super().mousePressEvent(event)


def _weights_line(outer: QVBoxLayout) -> QLabel:
    """The line under a panel's header that names the weights which made what the panel shows."""
    label = QLabel("")
    label.setWordWrap(True)
    label.setTextFormat(Qt.TextFormat.RichText)
    outer.addWidget(label)
    return label


#: the gate selector's words (the key part stays the item's data)
GATE_CHOICES = {"r": "how much flows in (r)", "z": "how much is replaced (z)"}
#: what a map shows: the weights card's most selective channel of the gate, or the mean of all channels
CHANNEL_VIEWS = {"channel": "most selective channel (weights card)", "mean": "mean of all channels"}
#: the Show box's tooltip, and the one it gets for weights that name no selective channels
CHANNEL_VIEW_TIP = ("A gate has one map per channel. Single channels open over the eyes, brows or mouth and close "
                    "elsewhere; their mean over all channels cancels to a nearly flat map. The weights card names, "
                    "per gate, the channel that varies most over held-out faces.")
NO_CHANNELS_TIP = ("These weights name no selective channels (an older card or a checkpoint): the mean of all "
                   "channels is shown.")


class GatesPanel(QWidget):
    """One ConvFLU gate map, coloured so its structure shows, over the aligned face the model saw.

    Every map is named in words (never its key, ``r/fer<-fes/1``), and the caption on the map says
    how wide its real range is ("range 0.15: weak"): the per-map colour stretch would otherwise make a
    near-constant map look like structure.
    """

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer, self.notice, self.info = panel_header(self)
        self.weights_label = _weights_line(outer)
        pick = QGridLayout()
        self.gate = QComboBox()
        self.direction = QComboBox()
        self.level = QComboBox()
        self.contrast = QComboBox()
        self.view = QComboBox()
        for view, words in CHANNEL_VIEWS.items():
            self.view.addItem(words, view)
        self.view.setToolTip(CHANNEL_VIEW_TIP)
        for mode, words in CONTRAST_MODES.items():
            self.contrast.addItem(words, mode)
        self.contrast.setToolTip("How values map to colours. Gates sit in a narrow band around 0.4–0.5, so a "
                                 "fixed 0–1 scale shows a flat tint; the colour bar always prints the real values.")
        self.opacity = QSlider(Qt.Orientation.Horizontal)
        self.opacity.setRange(0, 100)
        self.opacity.setValue(55)
        self.opacity.setToolTip("Opacity of the gate map over the aligned face")
        # row, column, column span: the short gate / level names share a row, the long ones get one each
        for label, widget, r, c, span in (("Gate", self.gate, 0, 0, 1), ("Level", self.level, 0, 2, 1),
                                          ("Direction", self.direction, 1, 0, 3), ("Show", self.view, 2, 0, 3),
                                          ("Colours", self.contrast, 3, 0, 3), ("Map opacity", self.opacity, 4, 0, 3)):
            pick.addWidget(QLabel(label), r, c)
            pick.addWidget(widget, r, c + 1, 1, span)
            if isinstance(widget, QComboBox):
                widget.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
                widget.currentIndexChanged.connect(lambda _i: self._render_all())
        self.opacity.valueChanged.connect(lambda _v: self._render_all())
        pick.setColumnStretch(1, 1)
        pick.setColumnStretch(3, 1)
        outer.addLayout(pick)
        #: the shown map in words and how wide its real range is, right on top of the map
        self.map_title = QLabel("")
        self.map_title.setWordWrap(True)
        self.map_title.setTextFormat(Qt.TextFormat.RichText)
        outer.addWidget(self.map_title)
        row = QHBoxLayout()
        self.image = ImageLabel(size=150)  # a minimum: the map grows with the room the tab has
        row.addWidget(self.image, 1)
        self.colour_bar = RangeColourBar(colormap_lut(CMAP_SEQUENTIAL), 0.0, 1.0, caption="gate")
        row.addWidget(self.colour_bar)
        outer.addLayout(row, 3)
        self.stats = QLabel("")
        self.stats.setWordWrap(True)
        outer.addWidget(self.stats)
        self.grid_title = QLabel("")
        outer.addWidget(self.grid_title)
        self.grid_host = QWidget()
        self.grid = QGridLayout(self.grid_host)
        self.grid.setSpacing(2)
        outer.addWidget(self.grid_host, 2)
        self.thumbs: dict[str, ImageLabel] = {}
        self.data: Optional[dict[str, Any]] = None
        #: the picture now in :attr:`image` and what its colours mean (see ``render_gate``)
        self.rendered: Optional[dict[str, Any]] = None
        self._keys: list = []
        self._levels = 0
        self._weights: tuple[str, dict[str, Any]] = ("", {})

    def say(self, text: str) -> None:
        self.notice.say(text)

    # ---- options ------------------------------------------------------------------------
    def contrast_mode(self) -> str:
        return self.contrast.currentData() or "robust"

    def set_contrast(self, mode: str) -> None:
        """Select a colour-range mode of :data:`CONTRAST_MODES` (``robust``, ``centred``, ``fixed``)."""
        i = self.contrast.findData(mode)
        if i < 0:
            raise ValueError(f"unknown contrast mode {mode!r}; one of {list(CONTRAST_MODES)}")
        self.contrast.setCurrentIndex(i)

    def alpha(self) -> float:
        return self.opacity.value() / 100.0

    def channel_view(self) -> str:
        """``"channel"`` when the weights name selective channels and that view is chosen, else ``"mean"``."""
        has_channels = bool(self.data and self.data.get("channel_maps"))
        return "channel" if has_channels and self.view.currentData() == "channel" else "mean"

    def set_channel_view(self, view: str) -> None:
        """Select a view of :data:`CHANNEL_VIEWS` (``channel``, ``mean``)."""
        i = self.view.findData(view)
        if i < 0:
            raise ValueError(f"unknown gate view {view!r}; one of {list(CHANNEL_VIEWS)}")
        self.view.setCurrentIndex(i)

    def shown_maps(self) -> dict[str, np.ndarray]:
        """The maps of the current view (see :meth:`channel_view`)."""
        if self.data is None:
            return {}
        return self.data["channel_maps"] if self.channel_view() == "channel" else self.data.get("maps") or {}

    def select(self, gate: Optional[str] = None, direction: Optional[str] = None, level: Optional[str] = None) -> None:
        """Pick a map by its key parts (e.g. ``select("z", "fes<-fer", "2")``); ``None`` keeps a part."""
        for combo, value in ((self.gate, gate), (self.direction, direction), (self.level, level)):
            if value is not None:
                i = combo.findData(value)
                if i >= 0:
                    combo.setCurrentIndex(i)

    # ---- data ---------------------------------------------------------------------------
    def set_data(self, data: Optional[dict[str, Any]]) -> None:
        """``{"model", "track_id", "crop", "maps": {key: [H,W]}}`` from the gates worker, with
        ``"channel_maps"`` (same keys, one channel each) and ``"channels"`` (``{key: (channel, count)}``)
        when the weights card names selective channels.

        Optional ``"key"`` (weights name or checkpoint path) and ``"weights"`` (a
        :func:`app.core.explain.weights_info` dict) say which weights made the maps; without them
        the card of ``"model"`` is read once per model, never per frame.
        """
        self.data = data
        if not data or not data.get("maps"):
            return
        keys = parse_gate_keys(list(data["maps"]))
        if [k.key for k in keys] != [k.key for k in self._keys]:
            self._rebuild(keys, data["maps"])
        self.view.setEnabled(bool(data.get("channel_maps")))
        self.view.setToolTip(CHANNEL_VIEW_TIP if data.get("channel_maps") else NO_CHANNELS_TIP)
        self.weights_label.setText(_weights_for(self, data)["text"])
        self._render_all()

    def _describe(self) -> None:
        """The info line: which face, which model, and what the maps are (it follows the Show choice)."""
        what = ("the most selective channel of each gate" if self.channel_view() == "channel"
                else "the mean of each gate's channels")
        self.info.setText(f"{self.data['model']} on face #{self.data['track_id']}: ConvFLU gates ({what}) over the "
                          "aligned face the model saw. r = leaky gate (how much of the other stream leaks in), "
                          "z = memory gate (how much of this stream's features is replaced).")

    def _rebuild(self, keys: list, maps: dict[str, np.ndarray]) -> None:
        self._keys = keys
        level_size = {k.level: maps[k.key].shape for k in keys}
        self._levels = len({k.level for k in keys if k.level})
        for combo, values, words in (
                (self.gate, sorted({k.gate for k in keys}), lambda v: GATE_CHOICES.get(v, GATE_NAMES.get(v, v))),
                (self.direction, sorted({k.direction for k in keys}), lambda v: DIRECTION_NAMES.get(v, v)),
                (self.level, sorted({k.level for k in keys}, key=lambda v: (len(v), v)),
                 lambda v: f"{v} of {self._levels} ({level_size[v][1]}×{level_size[v][0]} map)" if v else v)):
            current = combo.currentData()
            combo.blockSignals(True)
            combo.clear()
            for v in values:
                combo.addItem(words(v), v)
            if current in values:
                combo.setCurrentIndex(values.index(current))
            combo.blockSignals(False)
        for t in self.thumbs.values():
            t.deleteLater()
        self.thumbs.clear()
        for i, k in enumerate(keys):
            thumb = ImageLabel(size=56)
            thumb.setToolTip(k.words(self._levels))
            thumb.clicked.connect(lambda k=k: self.select(k.gate, k.direction, k.level))
            self.grid.addWidget(thumb, i // 8, i % 8)
            self.thumbs[k.key] = thumb

    def current_key(self) -> Optional[str]:
        for k in self._keys:
            if (k.gate, k.direction, k.level) == (self.gate.currentData(), self.direction.currentData(),
                                                  self.level.currentData()):
                return k.key
        return None

    def _render_all(self) -> None:
        if self.data is None or not self.data.get("maps") or not self._keys:
            return
        self._describe()
        mode, alpha, maps = self.contrast_mode(), self.alpha(), self.shown_maps()
        for k in self._keys:
            if k.key not in maps:
                continue
            r = render_gate(self.data["crop"], maps[k.key], mode, alpha=alpha, size=96)
            self.thumbs[k.key].set_array(r["rgb"])
            self.thumbs[k.key].setToolTip(f"{k.words(self._levels)} — {range_words(r['min'], r['max'])}")
        self.grid_title.setText("All gates (click one): " + ("one 0–1 scale for all." if mode == "fixed" else
                                                             "each on its own colour range."))
        self._redraw()

    def _redraw(self) -> None:
        key = self.current_key()
        maps = self.shown_maps()
        if self.data is None or key is None or key not in maps:
            return
        heat = maps[key]
        r = render_gate(self.data["crop"], heat, self.contrast_mode(), alpha=self.alpha(), size=192)
        self.rendered = r
        self.image.set_array(r["rgb"])
        gate_key = next(k for k in self._keys if k.key == key)
        words = gate_key.words(self._levels)
        self.colour_bar.set_range(r["lo"], r["hi"], extent=(r["min"], r["max"]), lut=colormap_lut(r["cmap"]),
                                  caption="gate value")
        channel = (self.data.get("channels") or {}).get(key)
        which = (f" (channel {channel[0] + 1} of {channel[1]})" if self.channel_view() == "channel" and channel
                 else " (mean of all channels)")
        self.map_title.setText(f"{html.escape(words[:1].upper() + words[1:], quote=False)}{which}: "
                               f"<b>{range_words(r['min'], r['max'])}</b>")
        where = {"robust": "2nd–98th percentile of this map", "centred": "0.5 ± this map's 98th-percentile distance",
                 "fixed": "the whole 0–1 range"}[r["mode"]]
        stretched = "" if r["mode"] == "fixed" else ", so small differences look large"
        self.stats.setText(f"{heat.shape[1]}×{heat.shape[0]} map: values "
                           f"{r['min']:.3f} … {r['max']:.3f} (mean {r['mean']:.3f}). Colours span "
                           f"{r['lo']:.3f} … {r['hi']:.3f}: {where}{stretched}.")


def _weights_for(panel: QWidget, data: dict[str, Any]) -> dict[str, Any]:
    """The weights description of ``data`` (``data["weights"]`` when given), the card read once per model."""
    if isinstance(data.get("weights"), dict):
        return data["weights"]
    key = str(data.get("key") or data.get("model") or "")
    cached_key, cached = panel._weights
    if cached_key != key or not cached:
        panel._weights = (key, weights_info(key))
    return panel._weights[1]


class SynthesisPanel(QWidget):
    """The current face re-expressed as every class; click one to enlarge and save it.

    Captions sit above each picture and the change is printed below it, never on the face: the
    mouth is where the expressions differ. "Show difference" replaces each synthesised face by
    |synth − input| on one colour scale shared by the whole strip.
    """

    TILE = 96  # the model's input size; PixelImage draws whole-pixel multiples of the image

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        outer, self.notice, self.info = panel_header(self)
        self.weights_label = _weights_line(outer)
        self.show_diff = QCheckBox("Show difference |synthesised − input| (one colour scale for all tiles)")
        self.show_diff.setToolTip("Weak changes (a few grey levels) are invisible side by side; the difference "
                                  "shows where each target expression changes the face.")
        self.show_diff.toggled.connect(lambda _on: self._render())
        outer.addWidget(self.show_diff)
        row = QHBoxLayout()
        self.strip_host = QWidget()
        self.strip = QGridLayout(self.strip_host)
        self.strip.setAlignment(Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft)
        self.strip.setHorizontalSpacing(6)
        self.strip.setVerticalSpacing(8)
        row.addWidget(self.strip_host, 1)
        self.diff_bar = RangeColourBar(colormap_lut(CMAP_DIFFERENCE), 0.0, 1.0, caption="|Δ| grey")
        self.diff_bar.setVisible(False)
        row.addWidget(self.diff_bar)
        outer.addLayout(row)
        outer.addStretch(1)
        #: per tile: (picture, caption above it, change printed below it)
        self.tiles: list[tuple[PixelImage, QLabel, QLabel]] = []
        self.tile_widgets: list[QWidget] = []
        self.data: Optional[dict[str, Any]] = None
        self.diffs: Optional[np.ndarray] = None
        self.diff_hi = 1.0
        self._weights: tuple[str, dict[str, Any]] = ("", {})

    def say(self, text: str) -> None:
        self.notice.say(text)

    def set_show_difference(self, on: bool) -> None:
        self.show_diff.setChecked(on)

    def _ensure_tiles(self, n: int) -> None:
        while len(self.tiles) < n:
            tile = QWidget()
            box = QVBoxLayout(tile)
            box.setContentsMargins(2, 2, 2, 2)
            box.setSpacing(2)
            cap, img, note = QLabel(), PixelImage(self.TILE), QLabel()
            for label in (cap, note):
                label.setAlignment(Qt.AlignmentFlag.AlignCenter)
                label.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Fixed)
            box.addWidget(cap)
            box.addWidget(img, 0, Qt.AlignmentFlag.AlignHCenter)
            box.addWidget(note)
            i = len(self.tiles)
            self.strip.addWidget(tile, i // 4, i % 4)
            img.clicked.connect(lambda i=i: self.enlarge(i))
            self.tiles.append((img, cap, note))
            self.tile_widgets.append(tile)

    def set_data(self, data: Optional[dict[str, Any]]) -> None:
        """``{"model", "track_id", "crop", "classes", "images": uint8 [K,H,W,C], "ms"}``.

        Optional ``"key"`` / ``"weights"`` as for :meth:`GatesPanel.set_data`.
        """
        self.data = data
        if not data:
            return
        self.diffs = difference_maps(data["crop"], data["images"])
        self.diff_hi = difference_scale(self.diffs)
        self._ensure_tiles(len(data["classes"]) + 1)
        for i, (_img, _cap, _note) in enumerate(self.tiles):
            self.tile_widgets[i].setVisible(i <= len(data["classes"]))
        self.weights_label.setText(_weights_for(self, data)["text"])
        self.info.setText(f"{data['model']}: face #{data['track_id']} synthesised with every target expression "
                          f"({data['ms']:.0f} ms on its own worker; the latest face wins). Below each face: |Δ|, its "
                          "mean change from the input in grey levels (0–255). Click one to enlarge.")
        self._render()

    def shown(self, n: int) -> Optional[np.ndarray]:
        """The picture tile ``n`` shows now (0 = input)."""
        return None if n >= len(self.tiles) else self.tiles[n][0].array

    def _render(self) -> None:
        data = self.data
        if not data or self.diffs is None:
            return
        diff = self.show_diff.isChecked()
        crop = data["crop"]
        img, cap, note = self.tiles[0]
        img.set_array(crop)
        cap.setText("<b>input</b>")
        note.setText("reference")
        for i, cls in enumerate(data["classes"]):
            img, cap, note = self.tiles[i + 1]
            d = self.diffs[i]
            img.set_array(difference_overlay(crop, d, self.diff_hi) if diff else data["images"][i])
            cap.setText(cls)
            note.setText(f"|Δ| {d.mean():.1f}")
            img.setToolTip(f"{cls}: mean |synthesised − input| {d.mean():.2f} grey levels, max {d.max():.0f}")
        self.diff_bar.setVisible(diff)
        self.diff_bar.set_range(0.0, self.diff_hi, extent=(0.0, float(self.diffs.max()) if self.diffs.size else 0.0),
                                decimals=1)

    def enlarge(self, n: int) -> None:
        if self.data is None or self.shown(n) is None:
            return
        what = "difference to the input" if self.show_diff.isChecked() and n else "synthesised"
        title = "input face" if n == 0 else f"{what}: {self.data['classes'][n - 1]}"
        EnlargedDialog(np.array(self.shown(n)), title, self).exec()


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
        scaled = to_qimage(self.image).scaled(self.image.shape[1] * 2, self.image.shape[0] * 2,
                                              Qt.AspectRatioMode.KeepAspectRatio,
                                              Qt.TransformationMode.SmoothTransformation)
        if not scaled.save(str(path)):
            from PySide6.QtWidgets import QMessageBox

            QMessageBox.warning(self, "Not saved", f"The picture could not be written to {path}.")
            return None
        return Path(path)
