"""The Model box and the Compare list, bound to the models controller.

The Model box offers every selectable weights entry; the Compare list only the expression models
(identity nets such as deepid are not "another opinion" on an expression) other than the
selected one. Both show the state; picking in either goes to the controller.
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QObject
from PySide6.QtWidgets import QComboBox

from app.controllers.models import ModelsController
from app.core.models import display_name
from app.widgets.panels import ComparisonPanel


class ModelPicker(QObject):
    def __init__(self, combo: QComboBox, compare: ComparisonPanel, models: ModelsController,
                 parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.combo, self.compare, self.models = combo, compare, models
        self.state = models.state
        combo.currentIndexChanged.connect(lambda _i: self._picked())
        compare.models_changed.connect(models.set_comparison)
        models.catalogue_changed.connect(self.fill)

    def fill(self) -> None:
        """Both lists from the controller's catalogue, showing the state's choices (no signals)."""
        self.combo.blockSignals(True)
        self.combo.clear()
        for key in self.models.keys():
            self.combo.addItem(key if self.models.is_shipped(key) else f"checkpoint: {display_name(key)}", key)
        if self.combo.count() == 0:
            self.combo.addItem("no weights installed", None)
        self.combo.setCurrentIndex(max(0, self.combo.findData(self.state.model)))
        self.combo.blockSignals(False)
        if self.state.model is None or self.combo.findData(self.state.model) < 0:
            self.state.model = self.combo.currentData()
        self.fill_comparison()

    def fill_comparison(self) -> None:
        names = self.models.comparable()
        self.compare.set_available(names, {k: display_name(k) for k in names}, self.state.comparison)

    def select(self, key: Optional[str]) -> None:
        self.combo.setCurrentIndex(max(0, self.combo.findData(key)))

    def set_comparison(self, keys: list[str]) -> None:
        self.models.set_comparison(list(keys))
        self.fill_comparison()

    def _picked(self) -> None:
        self.models.select(self.combo.currentData())
        self.fill_comparison()
