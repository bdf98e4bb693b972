"""Enrolled faces: add (from the shown frame or a picture file), remove, save.

A face is enrolled as its picture plus the feature of the identity weights in use
(:class:`app.core.identity.IdentityChoice`), computed in the inference worker; with no calibrated
identity feature the picture alone is kept and its feature is computed once one is installed.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from PySide6.QtCore import QObject, Signal

from app.core.analyzer import face_picture, identity_of_picture
from app.core.enrolment import EnrolmentStore
from app.core.sources import SourceError, load_image
from app.core.state import AppState
from app.errors import plain_message
from app.workers import InferenceWorker


def load_store(folder: Path) -> tuple[EnrolmentStore, str]:
    """The saved enrolments (an empty store and the reason when the file is damaged)."""
    try:
        return EnrolmentStore.load(folder), ""
    except ValueError as exc:
        return EnrolmentStore(folder), str(exc)


class EnrolmentController(QObject):
    changed = Signal(list)  # [(name, number of pictures)]
    message = Signal(str, bool)  # text, is_error

    def __init__(self, state: AppState, worker: InferenceWorker, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.worker = worker

    @property
    def store(self) -> EnrolmentStore:
        return self.state.enrolments

    def enrol_shown_face(self, name: str) -> bool:
        """The selected (else the largest) face of the shown frame, under ``name``."""
        face = self.state.selected_face()
        if face is None or face.whole_image:
            self.message.emit("There is no face to enrol: wait until a face is boxed, or click one.", True)
            return False
        identity = self.state.loaded.identity
        key = identity.key if identity.active and face.identity is not None else None
        self.add(name, face_picture(self.state.last_result.frame, face.box), key, face.identity if key else None)
        return True

    def enrol_picture(self, name: str, path: str) -> None:
        """The largest face of an image file (found and described in the worker)."""

        def job(analyzer) -> tuple[np.ndarray, Optional[str], Optional[np.ndarray]]:
            picture = load_image(Path(path))
            dets = list(analyzer.pipeline.detect(picture))
            if not dets:
                raise SourceError(f"No face was found in {Path(path).name}; pick a picture where the face is visible.")
            det = max(dets, key=lambda d: d.box[2] * d.box[3])
            pic = face_picture(picture, det.box)
            handle = analyzer.identity_handle
            if handle is None:
                return pic, None, None
            return pic, handle.key, identity_of_picture(analyzer, handle, pic)

        self.worker.submit(job, lambda out: self.add(name, *out),
                           lambda message: self.message.emit(message, True))

    def add(self, name: str, picture: np.ndarray, key: Optional[str], feature: Optional[np.ndarray]) -> None:
        self.store.add(name, picture, key, feature)
        self._save()
        self.publish()
        if feature is None:
            self.message.emit(f"Enrolled {name} (picture kept). There is no calibrated identity feature, so faces "
                              "are not compared with it yet.", False)
        else:
            self.message.emit(f"Enrolled {name}. Identity decisions now appear in the Identity tab and on the boxes.",
                              False)

    def remove(self, name: str) -> None:
        self.store.remove(name)
        self._save()
        self.publish()

    def clear(self) -> None:
        self.store.clear()
        self._save()
        self.publish()

    def publish(self) -> None:
        counts: dict[str, int] = {}
        for e in self.store.items():
            counts[e.name] = counts.get(e.name, 0) + 1
        self.changed.emit(list(counts.items()))

    def _save(self) -> None:
        try:
            self.store.save(self.state.enrolment_dir)
        except OSError as exc:
            self.message.emit(plain_message(exc, "The enrolments could not be saved"), True)
