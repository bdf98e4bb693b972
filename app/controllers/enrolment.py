"""Enrolled faces: add (from live video, the shown frame or a picture file), remove, save.

A face is enrolled as its picture plus the feature of the identity weights in use
(:class:`app.core.identity.IdentityChoice`), computed in the inference worker; with no calibrated
identity feature the picture alone is kept and its feature is computed once one is installed.

Enrolling on running live video is guided: several pictures of the tracked face are taken at
different moments (:class:`app.core.enrolment.GuidedCapture`), because one picture misses most of a
person's other photos (LFW, ``scripts/enrolment_lfw.py``: about the card's true-accept rate with one,
far more with five). A paused frame or a still image gives one picture, and the panel suggests more.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
from PySide6.QtCore import QObject, Signal

from app.core.analyzer import FrameResult, face_picture
from app.core.enrolment import GUIDED_PICTURES, EnrolmentStore, GuidedCapture, picture_enrolment
from app.core.sources import SourceError, load_image
from app.core.state import AppState
from app.errors import plain_message
from app.workers import InferenceWorker

log = logging.getLogger(__name__)


def load_store(folder: Path) -> tuple[EnrolmentStore, str]:
    """The saved enrolments (an empty store and the reason when the file is damaged)."""
    try:
        return EnrolmentStore.load(folder), ""
    except ValueError as exc:
        return EnrolmentStore(folder), str(exc)


class EnrolmentController(QObject):
    changed = Signal(list)  # [(name, number of pictures)]
    message = Signal(str, bool)  # text, is_error
    #: a guided live capture's progress in words ("" when none runs)
    capture_progress = Signal(str)

    def __init__(self, state: AppState, worker: InferenceWorker, parent: Optional[QObject] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(parent)
        self.state = state
        self.worker = worker
        self.clock = clock
        #: the guided live capture under way (None when none)
        self.capture: Optional[GuidedCapture] = None

    @property
    def store(self) -> EnrolmentStore:
        return self.state.enrolments

    def enrol_shown_face(self, name: str, guided: bool = False, wanted: int = GUIDED_PICTURES) -> bool:
        """The selected (else the largest) face of the shown frame, under ``name``.

        ``guided`` (running live video): start taking ``wanted`` pictures of that tracked face over
        the next seconds (:meth:`feed`); otherwise enrol this one picture now.
        """
        face = self.state.selected_face()
        if face is None or face.whole_image:
            self.message.emit("There is no face to enrol: wait until a face is boxed, or click one.", True)
            return False
        if guided:
            self.capture = GuidedCapture(name, face.track_id, self.clock(), wanted=wanted)
            self.feed(self.state.last_result)
            if self.capture is not None:
                self.capture_progress.emit(self.capture.progress())
            return True
        key, feature = self._identity_of(face)
        self.add(name, face_picture(self.state.last_result.frame, face.box), key, feature)
        return True

    def _identity_of(self, face: Any) -> tuple[Optional[str], Optional[np.ndarray]]:
        """(identity weights key, feature) of a shown face; (None, None) without an active identity feature."""
        identity = self.state.loaded.identity
        key = identity.key if identity.active and face.identity is not None else None
        return key, face.identity if key else None

    # ---- guided live capture -------------------------------------------------------------------
    def feed(self, result: Optional[FrameResult]) -> None:
        """A live frame was shown: the capture takes its picture of the tracked face when due, and ends
        (enrolling what it took) when complete, out of time, or the face is gone."""
        cap = self.capture
        if cap is None or result is None:
            return
        now = self.clock()
        face = next((f for f in result.faces if f.track_id == cap.track_id and not f.whole_image), None)
        if face is not None:  # the picture is cut only when the capture takes one, not on every frame
            key, feature = self._identity_of(face)
            if cap.offer(lambda: face_picture(result.frame, face.box), key, feature, now):
                self.capture_progress.emit(cap.progress())
        if cap.finished(now):
            self.stop_capture()

    def stop_capture(self) -> int:
        """End the guided capture now and enrol the pictures it took; returns how many."""
        cap, self.capture = self.capture, None
        self.capture_progress.emit("")
        if cap is None:
            return 0
        if not cap.pictures:
            self.message.emit(f"No picture of {cap.name} was taken: keep the face in view and try again.", True)
            return 0
        for picture, key, feature in cap.pictures:
            self.store.add(cap.name, picture, key, feature)
        self._saved_and_said(cap.name, len(cap.pictures), any(f is None for _p, _k, f in cap.pictures))
        return len(cap.pictures)

    # ---- still pictures ------------------------------------------------------------------------
    def enrol_pictures(self, name: str, paths: list[str]) -> None:
        """The largest face of each image file, found and described in the worker as one job; then one
        save and one message. A file without a face (or not an image) is named, the others are kept."""
        paths = [Path(p) for p in paths]

        def describe(analyzer: Any) -> tuple[list[tuple], list[str]]:
            taken, refused = [], []
            for path in paths:
                try:
                    taken.append(picture_enrolment(analyzer, load_image(path), path.name))
                except SourceError as exc:  # no face, not an image: the user's to fix, in words
                    refused.append(str(exc))
                except Exception as exc:  # noqa: BLE001 - one broken file must not lose the others
                    log.exception("enrolling %s failed", path)
                    refused.append(plain_message(exc, f"{path.name} could not be enrolled"))
            return taken, refused

        self.worker.submit(describe, lambda out: self._add_pictures(name, *out),
                           lambda message: self.message.emit(message, True))

    def _add_pictures(self, name: str, taken: list[tuple], refused: list[str]) -> None:
        """One message for the whole batch: the refused files first (as an error), then what was enrolled."""
        for picture, key, feature in taken:
            self.store.add(name, picture, key, feature)
        said = []
        if taken:
            said.append(self._saved_and_said(name, len(taken), any(f is None for _p, _k, f in taken),
                                             emit=not refused))
        if refused:
            self.message.emit(" ".join(refused + said), True)

    def add(self, name: str, picture: np.ndarray, key: Optional[str], feature: Optional[np.ndarray]) -> None:
        self.store.add(name, picture, key, feature)
        self._saved_and_said(name, 1, feature is None)

    def _saved_and_said(self, name: str, added: int, without_feature: bool, emit: bool = True) -> str:
        """Save, publish and say what was enrolled (returns the words; ``emit=False`` leaves saying them
        to the caller, which adds them to an error about the files that were refused)."""
        self._save()
        self.publish()
        total = dict(self.store.counts()).get(name, added)
        pictures = f"{added} picture{'s' if added != 1 else ''}" + (f", {total} in all" if total != added else "")
        if without_feature:
            text = (f"Enrolled {name} ({pictures} kept). There is no calibrated identity feature, so "
                    "faces are not compared with it yet.")
        elif total == 1:
            text = (f"Enrolled {name} from one picture: enrol a few more (different moments, poses) "
                    "so more of their photos are recognised — see the Identity tab.")
        else:
            text = f"Enrolled {name} ({pictures}). Identity decisions appear in the Identity tab and on the boxes."
        if emit:
            self.message.emit(text, False)
        return text

    def remove(self, name: str) -> None:
        self.store.remove(name)
        self._save()
        self.publish()

    def clear(self) -> None:
        self.store.clear()
        self._save()
        self.publish()

    def publish(self) -> None:
        self.changed.emit(self.store.counts())

    def _save(self) -> None:
        try:
            self.store.save(self.state.enrolment_dir)
        except OSError as exc:
            self.message.emit(plain_message(exc, "The enrolments could not be saved"), True)
