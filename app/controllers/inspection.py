"""Still images: analyse every opened file (never dropped, unlike live frames), show one, export all.

Each file is one job on the inference worker with its own callback; results of an earlier batch
(or of a batch re-run because the model changed) are recognised by the batch's generation and
dropped. When the last file is done the controller says so, so "Analysing N images…" never
outlives the results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

from PySide6.QtCore import QObject, Signal

from app.controllers.sources import SourcesController
from app.core.analyzer import FrameResult
from app.core.export import empty_record, result_records, save_records
from app.core.identity import rematch
from app.core.sources import SourceError, folder_images, load_image
from app.core.state import IMAGE, AppState
from app.errors import plain_message
from app.workers import InferenceWorker


def summary(entry: Union[FrameResult, str]) -> tuple[bool, str]:
    """(readable, a few words) for the file list: "2 faces", "no face", "could not be read"."""
    if isinstance(entry, str):
        return False, "could not be read"
    n = len(entry.faces)
    if n == 0:
        return True, "no face"
    return True, "whole image" if entry.faces[0].whole_image else f"{n} face{'s' if n != 1 else ''}"


class InspectionController(QObject):
    files_listed = Signal(list)  # the opened files (Path), in order
    entry_ready = Signal(str, bool, str)  # path, readable, summary
    shown = Signal(str, object)  # path, FrameResult | error str | None (not analysed yet)
    finished = Signal(int)  # every file of the batch is done; how many
    message = Signal(str, bool)  # text, is_error
    #: one file is done (tests and the screenshots wait on it)
    inspect_done = Signal(str)

    def __init__(self, state: AppState, worker: InferenceWorker, sources: SourcesController,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.worker = worker
        self.sources = sources

    @property
    def ins(self):
        return self.state.inspection

    def inspect(self, paths: list[Path]) -> bool:
        files: list[Path] = []
        for p in map(Path, paths):
            if p.is_dir():
                try:
                    files += folder_images(p)
                except SourceError as exc:
                    self.sources.fail(str(exc))
            elif p.exists():
                files.append(p)
            else:
                self.sources.fail(f"{p} does not exist.")
        if not files:
            return False
        self.sources.begin_images(files[0], len(files))
        generation = self.ins.start([str(f) for f in files])
        self.files_listed.emit(files)
        for f in files:
            self._submit(str(f), generation)
        self.message.emit(f"Analysing {len(files)} image{'s' if len(files) != 1 else ''}…", False)
        return True

    def rerun(self) -> None:
        """Analyse the opened files again (model or whole-image choice changed)."""
        if self.state.source.mode != IMAGE or not self.ins.order:
            return
        generation = self.ins.rerun()
        for path in self.ins.order:
            self._submit(path, generation)

    def set_whole_image(self, on: bool) -> None:
        self.ins.whole_image = on
        self.rerun()

    def _submit(self, path: str, generation: int) -> None:
        whole = self.ins.whole_image

        def job(analyzer):
            return analyzer.analyze(load_image(Path(path)), whole_image_if_no_face=whole, track=False)

        self.worker.submit(job, lambda out: self._done(generation, path, out),
                           lambda message: self._done(generation, path, message))

    def _done(self, generation: int, path: str, entry: Union[FrameResult, str]) -> None:
        if not self.ins.record(generation, path, entry):
            return  # a result of an earlier batch
        if isinstance(entry, FrameResult):  # analysed before an enrolment that arrived meanwhile
            rematch(entry.faces, self.state.enrolments, entry.identity)
        ok, words = summary(entry)
        self.entry_ready.emit(path, ok, words)
        if path == self.ins.shown:
            self.show(path)
        if isinstance(entry, str):
            self.message.emit(entry, True)
        elif not entry.faces:
            self.message.emit(f"No face was found in {Path(path).name}. In the Inspect tab, tick 'score the whole "
                              "image' to score it anyway.", True)
        self.inspect_done.emit(path)
        if self.ins.finished:
            self.finished.emit(len(self.ins.order))

    def show(self, path: str) -> None:
        self.ins.shown = path
        entry = self.ins.results.get(path)
        if isinstance(entry, FrameResult):
            self.state.show(entry)
        self.shown.emit(path, entry)

    def export(self, path: Path) -> Optional[Path]:
        """Every analysed file to CSV or JSON (by the suffix); None and a message when nothing or failure."""
        records = []
        for p in self.ins.order:
            entry = self.ins.results.get(p)
            if isinstance(entry, FrameResult):
                records += result_records(p, entry)
            elif isinstance(entry, str):
                records.append(empty_record(p, entry))
        if not records:
            self.message.emit("Nothing to export yet: open images first (Inspect tab).", True)
            return None
        try:
            out = save_records(records, Path(path))
        except OSError as exc:
            self.message.emit(plain_message(exc, "The results could not be written"), True)
            return None
        self.message.emit(f"Exported {len(records)} rows to {out}.", False)
        return out
