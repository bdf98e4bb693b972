"""Small shared widgets: numpy -> QImage (always copied), score bars, colour bar, notices."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PySide6.QtCore import QRectF, QSize, Qt
from PySide6.QtGui import QColor, QFont, QImage, QLinearGradient, QPainter, QPen
from PySide6.QtWidgets import QLabel, QSizePolicy, QVBoxLayout, QWidget


def to_qimage(array: np.ndarray) -> QImage:
    """RGB / gray uint8 array -> an independent QImage (``.copy()``: never a view of numpy memory)."""
    a = np.ascontiguousarray(array)
    if a.ndim == 3 and a.shape[2] == 1:
        a = np.ascontiguousarray(a[:, :, 0])
    h, w = a.shape[:2]
    if a.ndim == 2:
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_Grayscale8)
    else:
        img = QImage(a.data, w, h, a.strides[0], QImage.Format.Format_RGB888)
    return img.copy()


def qcolour(rgb: Sequence[int]) -> QColor:
    return QColor(int(rgb[0]), int(rgb[1]), int(rgb[2]))


class Notice(QLabel):
    """A plain-words notice shown in a panel when its feature is unavailable."""

    def __init__(self, text: str = "", parent=None) -> None:
        super().__init__(text, parent)
        self.setWordWrap(True)
        self.setObjectName("notice")
        self.setStyleSheet("QLabel#notice { background: #fff4d6; color: #5a4300; border: 1px solid #e0c36a;"
                           " border-radius: 4px; padding: 6px; }")
        self.setVisible(bool(text))

    def say(self, text: str) -> None:
        self.setText(text)
        self.setVisible(bool(text))


class ScoreBars(QWidget):
    """Horizontal probability bars, one per class, with the value printed; the top class bold.

    ``marks`` (optional) draws the unsmoothed value as a thin tick, so smoothing stays honest.
    """

    ROW = 18
    #: more classes than this (e.g. an identity net's subjects): show only the most likely ones
    MAX_ROWS = 10

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.classes: list[str] = []
        self.values = np.zeros(0)
        self.marks: Optional[np.ndarray] = None
        self.colour = QColor(70, 130, 220)
        self.title = ""
        self.highlight = False
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)

    def set_scores(self, classes: Sequence[str], values: Sequence[float], *, marks: Optional[Sequence[float]] = None,
                   colour: Optional[QColor] = None, title: str = "", highlight: bool = False) -> None:
        values = np.asarray(values, dtype=float)
        marks_arr = None if marks is None else np.asarray(marks, dtype=float)
        classes = list(classes)
        if len(classes) > self.MAX_ROWS:
            top = np.argsort(-values)[: self.MAX_ROWS]
            title = f"{title}  (top {self.MAX_ROWS} of {len(classes)} classes)"
            classes = [classes[i] for i in top]
            values = values[top]
            marks_arr = None if marks_arr is None else marks_arr[top]
        changed_rows = len(classes) != len(self.classes) or bool(title) != bool(self.title)
        self.classes = classes
        self.values = values
        self.marks = marks_arr
        if colour is not None:
            self.colour = colour
        self.title = title
        self.highlight = highlight
        if changed_rows:
            self.updateGeometry()
        self.update()

    def sizeHint(self) -> QSize:
        return QSize(260, self.ROW * (len(self.classes) + (1 if self.title else 0)) + 4)

    def minimumSizeHint(self) -> QSize:
        return QSize(160, self.sizeHint().height())

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        y = 0
        if self.title:
            font.setBold(True)
            p.setFont(font)
            p.setPen(QColor(20, 120, 40) if self.highlight else self.palette().windowText().color())
            p.drawText(QRectF(2, 0, self.width() - 4, self.ROW), Qt.AlignmentFlag.AlignVCenter, self.title)
            y += self.ROW
        label_w = 78
        value_w = 46
        bar_w = max(10, self.width() - label_w - value_w - 8)
        top = int(np.argmax(self.values)) if len(self.values) else -1
        for i, cls in enumerate(self.classes):
            v = float(self.values[i]) if i < len(self.values) else 0.0
            font.setBold(i == top)
            p.setFont(font)
            p.setPen(self.palette().windowText().color())
            p.drawText(QRectF(2, y, label_w - 4, self.ROW), Qt.AlignmentFlag.AlignVCenter, cls)
            p.fillRect(QRectF(label_w, y + 3, bar_w, self.ROW - 6), QColor(225, 225, 225))
            c = QColor(self.colour)
            if i != top:
                c.setAlpha(150)
            p.fillRect(QRectF(label_w, y + 3, bar_w * max(0.0, min(1.0, v)), self.ROW - 6), c)
            if self.marks is not None and i < len(self.marks):
                x = label_w + bar_w * max(0.0, min(1.0, float(self.marks[i])))
                p.setPen(QPen(QColor(30, 30, 30), 1.5))
                p.drawLine(int(x), y + 2, int(x), y + self.ROW - 2)
            p.setPen(self.palette().windowText().color())
            p.drawText(QRectF(label_w + bar_w + 4, y, value_w, self.ROW), Qt.AlignmentFlag.AlignVCenter,
                       f"{v * 100:5.1f}%")
            y += self.ROW
        p.end()


class ColourBar(QWidget):
    """Vertical colour bar of a lookup table with the value range printed at both ends."""

    def __init__(self, lut: np.ndarray, lo: float = 0.0, hi: float = 1.0, parent=None) -> None:
        super().__init__(parent)
        self.lut = lut
        self.lo, self.hi = lo, hi
        self.setFixedWidth(56)
        self.setMinimumHeight(120)

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        bar = QRectF(4, 16, 16, self.height() - 32)
        grad = QLinearGradient(bar.bottomLeft(), bar.topLeft())
        for i in range(0, 256, 16):
            grad.setColorAt(i / 255.0, qcolour(self.lut[i]))
        grad.setColorAt(1.0, qcolour(self.lut[255]))
        p.fillRect(bar, grad)
        p.setPen(self.palette().windowText().color())
        p.drawRect(bar)
        p.drawText(QRectF(22, 4, 34, 16), Qt.AlignmentFlag.AlignLeft, f"{self.hi:g}")
        p.drawText(QRectF(22, self.height() - 20, 34, 16), Qt.AlignmentFlag.AlignLeft, f"{self.lo:g}")
        p.drawText(QRectF(22, self.height() / 2 - 8, 34, 16), Qt.AlignmentFlag.AlignLeft, f"{(self.lo + self.hi) / 2:g}")
        p.end()


class ImageLabel(QLabel):
    """Shows an array scaled to fit, keeping the aspect ratio; clicking emits ``clicked``."""

    from PySide6.QtCore import Signal as _Signal

    clicked = _Signal()

    def __init__(self, parent=None, size: int = 160) -> None:
        super().__init__(parent)
        self.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.setMinimumSize(size, size)
        # Ignored: the pixmap follows the label's size, never the other way round (no resize loop)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Ignored)
        self._image: Optional[QImage] = None
        self.array: Optional[np.ndarray] = None

    def set_array(self, array: Optional[np.ndarray]) -> None:
        self.array = None if array is None else np.array(array, copy=True)
        self._image = None if array is None else to_qimage(array)
        self._rescale()

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._rescale()

    def _rescale(self) -> None:
        from PySide6.QtGui import QPixmap

        if self._image is None:
            self.setPixmap(QPixmap())
            return
        pm = QPixmap.fromImage(self._image).scaled(self.size() * 0.98, Qt.AspectRatioMode.KeepAspectRatio,
                                                    Qt.TransformationMode.SmoothTransformation)
        self.setPixmap(pm)

    def mousePressEvent(self, event) -> None:
        self.clicked.emit()
        super().mousePressEvent(event)


def panel_header(panel: QWidget) -> tuple[QVBoxLayout, "Notice", QLabel]:
    """The top of an explanation panel: a layout, the plain-words notice and a wrapping info line."""
    outer = QVBoxLayout(panel)
    notice = Notice()
    outer.addWidget(notice)
    info = QLabel("")
    info.setWordWrap(True)
    outer.addWidget(info)
    return outer, notice, info


class Banner(QWidget):
    """A dismissable notice *above* the video (never over the picture), fading out after a while.

    Why: drawn over the video, the no-camera notice covered the chin, mouth and box bottom of the
    face it was playing, and never went away. Here it sits in its own row above the picture, has a
    close button, and fades out after ``timeout_ms`` (the status bar keeps a short version).
    """

    def __init__(self, parent=None) -> None:
        from PySide6.QtCore import QPropertyAnimation, QTimer
        from PySide6.QtWidgets import QGraphicsOpacityEffect, QHBoxLayout, QToolButton

        super().__init__(parent)
        self.setObjectName("banner")
        self.setAttribute(Qt.WidgetAttribute.WA_StyledBackground, True)
        self.setStyleSheet("QWidget#banner { background: #fff4d6; border: 1px solid #e0c36a; border-radius: 4px; }"
                           " QLabel { color: #5a4300; }")
        row = QHBoxLayout(self)
        row.setContentsMargins(8, 4, 4, 4)
        self.label = QLabel("")
        self.label.setWordWrap(True)
        row.addWidget(self.label, 1)
        self.close_button = QToolButton()
        self.close_button.setText("✕")
        self.close_button.setToolTip("Dismiss")
        self.close_button.setAutoRaise(True)
        self.close_button.clicked.connect(self.dismiss)
        row.addWidget(self.close_button, 0, Qt.AlignmentFlag.AlignTop)
        self._effect = QGraphicsOpacityEffect(self)
        self._effect.setOpacity(1.0)
        self.setGraphicsEffect(self._effect)
        self._fade = QPropertyAnimation(self._effect, b"opacity", self)
        self._fade.setDuration(800)
        self._fade.setStartValue(1.0)
        self._fade.setEndValue(0.0)
        self._fade.finished.connect(self.dismiss)
        self._timer = QTimer(self, singleShot=True, timeout=self._fade.start)
        self.hide()

    def show_message(self, text: str, timeout_ms: int = 15000) -> None:
        """Show ``text`` until dismissed, or until it fades out after ``timeout_ms`` (0: stays)."""
        self._fade.stop()
        self._effect.setOpacity(1.0)
        self.label.setText(text)
        self.show()
        if timeout_ms > 0:
            self._timer.start(timeout_ms)

    def dismiss(self) -> None:
        self._timer.stop()
        self._fade.stop()
        self.hide()


class ElidedLabel(QLabel):
    """A status-bar label that shrinks by eliding (``…``) instead of being cut, whole text in its tooltip.

    Why: the status bar squeezed its permanent labels when the window was narrow, and Qt cut their
    text mid-word ("…identity 3.4 · dra"). This label asks for its whole text's width, accepts
    ``min_width``, elides with ``mode`` (the middle keeps both the start and the end of a stage list)
    and, unless a caller set its own tooltip, shows the whole text as the tooltip.
    """

    def __init__(self, text: str = "", mode: Qt.TextElideMode = Qt.TextElideMode.ElideRight, min_width: int = 60,
                 max_width: int = 10000, parent=None) -> None:
        super().__init__(parent)
        self.mode = mode
        self.min_width = min_width
        #: the most this label asks for, leaving the rest of the bar to the messages
        self.max_width = max_width
        self.full_text = ""
        self._own_tip = False
        self.setText(text)

    def setText(self, text: str) -> None:  # noqa: N802 - Qt's name, so every caller gets the eliding
        self.full_text = str(text)
        if not self._own_tip:
            super().setToolTip(self.full_text)
        self.updateGeometry()
        self._elide()

    def text(self) -> str:
        """The whole text (what the label says; :meth:`shown_text` is what fits on screen now)."""
        return self.full_text

    def shown_text(self) -> str:
        return super().text()

    def setToolTip(self, tip: str) -> None:  # noqa: N802
        self._own_tip = bool(tip)
        super().setToolTip(tip if tip else self.full_text)

    def text_width(self) -> int:
        return self.fontMetrics().horizontalAdvance(self.full_text) + 8

    def sizeHint(self) -> QSize:
        return QSize(min(self.text_width(), self.max_width), super().sizeHint().height())

    def minimumSizeHint(self) -> QSize:
        return QSize(min(self.min_width, self.text_width()), super().minimumSizeHint().height())

    def resizeEvent(self, event) -> None:
        super().resizeEvent(event)
        self._elide()

    def _elide(self) -> None:
        super().setText(self.fontMetrics().elidedText(self.full_text, self.mode, max(10, self.width() - 4)))


class MessageLabel(ElidedLabel):
    """The status-bar message: an :class:`ElidedLabel` that competes fairly for room and turns red on errors.

    Why not ``QStatusBar.showMessage``: its text is cut off silently where the permanent widgets
    begin, so a long error lost its end. Here the text ends in "…" when it does not fit, the
    tooltip holds all of it, and errors are red.
    """

    #: the most the message asks for, so the permanent labels keep their room on a narrow bar
    HINT_MAX = 420

    def __init__(self, parent=None) -> None:
        super().__init__("", min_width=120, max_width=self.HINT_MAX, parent=parent)
        self.error = False
        # Preferred with the text's width as its hint: a message competes fairly with the permanent
        # labels when the bar is narrow, instead of getting only what they leave
        self.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Preferred)

    def sizeHint(self) -> QSize:
        hint = super().sizeHint()
        return QSize(max(self.min_width, hint.width()), hint.height())

    def minimumSizeHint(self) -> QSize:
        return QSize(self.min_width, super().minimumSizeHint().height())

    def show_message(self, text: str, error: bool = False) -> None:
        self.error = error
        self.setStyleSheet("color: #b00020; font-weight: bold;" if error else "")
        self.setToolTip("")  # the whole message is the tooltip
        self.setText(text)
