"""Weights the user can pick, the comparison list, and the inference worker's configuration.

Cards are read once per weights key (a dict here), never per frame: the comparison list is
filtered by the card's classes (only expression models can be compared), and the worker
reports the loaded handles and the identity choice once per model change.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

from PySide6.QtCore import QObject, Signal

from ferkit.models.weights import Preprocessing, Weights, get_weights, list_weights

from ferkit.data.classes import is_expression_classifier
from app.core.models import display_name, engine_text
from app.core.state import AppState, LoadedModels
from app.errors import plain_message
from app.workers import AnalyzerConfig, InferenceWorker

log = logging.getLogger("ferkit.app")


class ModelsController(QObject):
    #: the selectable weights changed (shipped list read, a checkpoint added)
    catalogue_changed = Signal()
    #: the worker loaded the configured models: the LoadedModels now in the state
    loaded = Signal(object)
    message = Signal(str, bool)  # text, is_error

    def __init__(self, state: AppState, worker: InferenceWorker, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.state = state
        self.worker = worker
        self._cards: dict[str, Optional[Weights]] = {}
        self._shipped = list_weights()
        #: preprocessings the explainers need aligned beside the models' own
        self.extra_preprocessing: set[Preprocessing] = set()
        worker.models_changed.connect(self._on_loaded)

    # ---- catalogue ------------------------------------------------------------------------------
    def card(self, key: str) -> Optional[Weights]:
        """The weights card of ``key``, read from disk the first time only (None when unreadable)."""
        if key not in self._cards:
            try:
                self._cards[key] = get_weights(key)
            except Exception as exc:  # a damaged card: not offered for comparison, reported when picked
                log.warning("weights card %s cannot be read: %s", key, exc)
                self._cards[key] = None
        return self._cards[key]

    def is_shipped(self, key: str) -> bool:
        return key in self._shipped

    def keys(self) -> list[str]:
        """Every selectable weights key: the shipped names, then loaded checkpoints."""
        return self._shipped + list(self.state.checkpoints)

    def is_expression(self, key: str) -> bool:
        """``key``'s card lists expression classes (decided from the card's classes, not from its name)."""
        card = self.card(key)
        return card is not None and is_expression_classifier(card.classes)

    def expression_keys(self) -> list[str]:
        """The keys whose card lists expression classes: the only ones the Model box offers and the
        Compare list ticks (an identity net's "classes" are people: deepid labels a face "07222 4 %")."""
        return [k for k in self.keys() if self.is_expression(k)]

    def why_not_offered(self, key: str) -> str:
        """Why ``key`` is not in the Model box, in words (empty when it is offered)."""
        if key in self.expression_keys():
            return ""
        if key not in self.keys():
            return f"'{display_name(key)}' is not installed"
        card = self.card(key)
        if card is None:
            return f"the weights card of '{display_name(key)}' cannot be read"
        return (f"'{display_name(key)}' is not an expression model (its {len(card.classes)} classes are "
                f"{', '.join(card.classes[:2])}…: an identity net, used for enrolment, not for expressions)")

    def comparable(self) -> list[str]:
        """Expression models other than the selected one; a ticked model no longer offered is unticked
        (e.g. an identity net ticked in a settings file of an earlier version)."""
        names = [k for k in self.expression_keys() if k != self.state.model]
        self.state.comparison = [k for k in self.state.comparison if k in names]
        return names

    def add_checkpoint(self, path: str) -> str:
        """A training checkpoint becomes selectable; returns its key (the resolved path)."""
        path = str(Path(path).resolve())
        if path not in self.state.checkpoints:
            self.state.checkpoints.append(path)
            self.catalogue_changed.emit()
            self.message.emit(f"Checkpoint {display_name(path)} can now be picked in the Model box.", False)
        return path

    def check_checkpoint(self, path: str) -> bool:
        """Whether ``path`` is usable weights of an expression model, said in words when not."""
        try:
            card = self._cards[str(Path(path).resolve())] = get_weights(path)
        except Exception as exc:
            self.message.emit(plain_message(exc, "That file cannot be used"), True)
            return False
        if not is_expression_classifier(card.classes):
            self.message.emit(f"{display_name(path)} is not an expression model (its classes are not expressions), "
                              "so it cannot be picked in the Model box.", True)
            return False
        return True

    # ---- selection --------------------------------------------------------------------------------
    def select(self, key: Optional[str]) -> None:
        if key == self.state.model:
            return
        self.state.choose_model(key, "chosen", chosen=True)
        self.state.comparison = [k for k in self.state.comparison if k != key]
        self.push()
        if key:
            self.message.emit(f"Loading {display_name(key)}…", False)

    def set_comparison(self, keys: list[str]) -> None:
        allowed = set(self.expression_keys())
        self.state.comparison = [k for k in keys if k in allowed and k != self.state.model]
        self.push()

    def set_extra_preprocessing(self, pps: set[Preprocessing]) -> bool:
        """Also align crops for ``pps``; True when that reconfigured the worker (a new report follows)."""
        if pps == self.extra_preprocessing:
            return False
        self.extra_preprocessing = set(pps)
        self.push()
        return True

    def push(self) -> None:
        """Hand the current choices to the inference worker (it loads models in its own thread)."""
        live = self.state.live
        self.worker.configure(AnalyzerConfig(
            primary=self.state.model, comparison=list(self.state.comparison), device=live.device,
            max_faces=live.max_faces, smoother=live.smoother, detector=live.detector,
            extra_preprocessing=set(self.extra_preprocessing)))

    def _on_loaded(self, info: dict) -> None:
        self.state.loaded = LoadedModels(info.get("primary"), list(info.get("comparison", [])),
                                         info.get("device", "auto"), info["identity"])
        primary = self.state.loaded.primary
        if primary is not None:
            self.message.emit(f"Model {primary.name} ready: {engine_text(primary, device=True)}.", False)
        self.loaded.emit(self.state.loaded)
