"""The live picture: the analysed frame with each tracked face's box, id, colour and label.

It paints the frame the results refer to (not a newer one), so boxes always sit on the faces
they were computed from. Labels are placed so none hides another (:mod:`app.core.layout`). A
source error is drawn over the picture (or in place of it), because that is where the user looks.
Drawing time is measured and reported as the "draw" stage.
"""
from __future__ import annotations

import time
from typing import Optional

from PySide6.QtCore import QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QFont, QImage, QPainter, QPen
from PySide6.QtWidgets import QSizePolicy, QWidget

from app.core.analyzer import FrameResult, TrackedFace
from app.core.layout import place_labels
from app.widgets.common import qcolour, to_qimage


def face_label(face: TrackedFace, primary: Optional[str], smoothed: bool = True) -> str:
    """``#2  happiness 81%  = Ada 0.83`` / ``unknown``: the identity part only when a decision was made."""
    text = f"#{face.track_id}" if not face.whole_image else "whole image"
    if primary and primary in face.scores:
        sc = face.scores[primary]
        vals = sc.smoothed if smoothed else sc.raw
        k = int(vals.argmax())
        text += f"  {sc.classes[k]} {vals[k] * 100:.0f}%"
    if face.match is not None:
        text += f"  = {face.match.name} ({face.match.similarity:.2f})" if face.match.name else "  unknown"
    return text


class VideoView(QWidget):
    face_clicked = Signal(int)  # track id

    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(320, 200)
        self.result: Optional[FrameResult] = None
        self._image: Optional[QImage] = None
        self.selected_id: Optional[int] = None
        self.show_smoothed = True
        self.placeholder = "Open a video, an image or a folder (Ctrl+O), drop one here, or start the camera (Ctrl+K)."
        self.draw_ms = 0.0
        #: a source error in words, drawn over the picture until the next source starts
        self.message = ""
        #: where the last paint put each face's label (picture coordinates of that paint)
        self.label_rects: list[QRectF] = []
        self.setAutoFillBackground(False)

    def set_message(self, text: str) -> None:
        self.message = text
        self.update()

    def set_result(self, result: Optional[FrameResult], selected_id: Optional[int] = None) -> None:
        t0 = time.perf_counter()
        self.result = result
        self._image = to_qimage(result.frame) if result is not None else None
        self.selected_id = selected_id
        self.repaint() if self.isVisible() else None
        self.draw_ms = (time.perf_counter() - t0) * 1e3

    def _frame_rect(self) -> QRectF:
        if self._image is None:
            return QRectF()
        iw, ih = self._image.width(), self._image.height()
        scale = min(self.width() / iw, self.height() / ih)
        w, h = iw * scale, ih * scale
        return QRectF((self.width() - w) / 2, (self.height() - h) / 2, w, h)

    def annotated_image(self) -> Optional[QImage]:
        """The frame at full resolution with boxes drawn (what 'Save annotated image' writes)."""
        if self._image is None or self.result is None:
            return None
        img = self._image.convertToFormat(QImage.Format.Format_RGB32)
        p = QPainter(img)
        self._draw_faces(p, QRectF(0, 0, img.width(), img.height()), 1.0)
        p.end()
        return img

    def paintEvent(self, _event) -> None:
        p = QPainter(self)
        p.fillRect(self.rect(), QColor(24, 24, 28))
        if self._image is None:
            p.setPen(QColor(255, 150, 130) if self.message else QColor(200, 200, 200))
            p.drawText(self.rect().adjusted(20, 20, -20, -20), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                       self.message or self.placeholder)
            p.end()
            return
        target = self._frame_rect()
        p.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
        p.drawImage(target, self._image)
        self._draw_faces(p, target, target.width() / self._image.width())
        if self.result is not None and self.result.note:
            p.setPen(QColor(255, 230, 120))
            p.drawText(target.adjusted(8, 8, -8, -8), Qt.AlignmentFlag.AlignTop | Qt.AlignmentFlag.AlignLeft,
                       self.result.note)
        if self.message:
            self._draw_message(p, target)
        p.end()

    def _draw_message(self, p: QPainter, target: QRectF) -> None:
        """The error as a wrapped banner across the bottom of the picture (never cut off)."""
        flags = Qt.AlignmentFlag.AlignLeft | Qt.TextFlag.TextWordWrap
        inner = target.adjusted(16, 0, -16, 0)
        height = p.fontMetrics().boundingRect(inner.toRect(), int(flags), self.message).height() + 16
        band = QRectF(target.left(), target.bottom() - height, target.width(), height)
        p.fillRect(band, QColor(120, 20, 20, 220))
        p.setPen(QColor(255, 255, 255))
        p.drawText(band.adjusted(16, 8, -16, -8), flags, self.message)

    def _draw_faces(self, p: QPainter, target: QRectF, scale: float) -> None:
        if self.result is None:
            return
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        font = QFont(self.font())
        font.setPointSizeF(max(8.0, 10.0 * min(1.5, max(0.8, scale * 1.2))))
        font.setBold(True)
        p.setFont(font)
        fm = p.fontMetrics()
        rects, texts = [], []
        for face in self.result.faces:
            x, y, w, h = face.box
            r = QRectF(target.x() + x * scale, target.y() + y * scale, w * scale, h * scale)
            colour = qcolour(face.colour)
            selected = face.track_id == self.selected_id
            p.setPen(QPen(colour, 4 if selected else 2, Qt.PenStyle.SolidLine if not face.whole_image else Qt.PenStyle.DashLine))
            p.drawRect(r)
            rects.append(r)
            texts.append(face_label(face, self.result.primary, self.show_smoothed))
        sizes = [(fm.horizontalAdvance(t) + 8.0, fm.height() + 4.0) for t in texts]
        places = place_labels([(r.x(), r.y(), r.width(), r.height()) for r in rects], sizes,
                              (target.x(), target.y(), target.width(), target.height()))
        self.label_rects = [QRectF(*place) for place in places]
        for face, text, box in zip(self.result.faces, texts, self.label_rects):
            colour = qcolour(face.colour)
            p.fillRect(box, colour)
            p.setPen(QColor(0, 0, 0) if colour.lightness() > 128 else QColor(255, 255, 255))
            p.drawText(QPointF(box.x() + 4, box.bottom() - fm.descent() - 2), text)

    def track_at(self, x: float, y: float) -> Optional[int]:
        if self.result is None or self._image is None:
            return None
        target = self._frame_rect()
        scale = target.width() / self._image.width()
        fx, fy = (x - target.x()) / scale, (y - target.y()) / scale
        for face in self.result.faces:
            bx, by, bw, bh = face.box
            if bx <= fx <= bx + bw and by <= fy <= by + bh:
                return face.track_id
        return None

    def mousePressEvent(self, event) -> None:
        tid = self.track_at(event.position().x(), event.position().y())
        if tid is not None:
            self.face_clicked.emit(tid)
        super().mousePressEvent(event)
