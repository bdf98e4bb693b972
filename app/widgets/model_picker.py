"""The Model box, the Compare list and the model status label, bound to the models controller.

The Model box offers the expression models only (decided from each card's classes: an identity net
such as deepid would label a face with a CelebA subject number), each with its FER2013Valid accuracy
from its card and "fast" for the live model; the Compare list the same models other than the
selected one. A saved or requested choice that is not offered gives way to the default, said in the
status bar. The status label
says which model is selected, why (chosen, or the default for this machine) and which inference
engine runs it, with the engine's reason and file in its tooltip. All show the state; picking in
either list goes to the controller.
"""
from __future__ import annotations

from typing import Optional

from PySide6.QtCore import QObject, Qt
from PySide6.QtWidgets import QComboBox, QLabel

from app.controllers.models import ModelsController
from app.core.models import default_choice, display_name, model_status, picker_entry
from app.core.state import LoadedModels
from app.widgets.panels import ComparisonPanel


class ModelPicker(QObject):
    def __init__(self, combo: QComboBox, compare: ComparisonPanel, models: ModelsController,
                 label: Optional[QLabel] = None, parent: Optional[QObject] = None) -> None:
        super().__init__(parent)
        self.combo, self.compare, self.models, self.label = combo, compare, models, label
        self.state = models.state
        #: the worker has not reported on the selected model yet
        self.loading = True
        combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToContents)
        combo.currentIndexChanged.connect(lambda _i: self._picked())
        compare.models_changed.connect(models.set_comparison)
        models.catalogue_changed.connect(self.fill)
        models.loaded.connect(self._on_loaded)

    def fill(self) -> None:
        """Both lists from the controller's catalogue, showing the state's choices (no signals).

        A selected model no longer offered (a saved choice whose file is gone, an identity net saved
        by an earlier version) gives way to the machine's default, said as such in the status bar.
        """
        self.combo.blockSignals(True)
        self.combo.clear()
        for key in self.models.expression_keys():
            text, tip = picker_entry(key, self.models.card(key), self.models.is_shipped(key))
            self.combo.addItem(text, key)
            self.combo.setItemData(self.combo.count() - 1, tip, Qt.ItemDataRole.ToolTipRole)
        if self.combo.count() == 0:
            self.combo.addItem("no weights installed", None)
        if self.state.model is None or self.combo.findData(self.state.model) < 0:
            default = default_choice()
            offered = default.key is not None and self.combo.findData(default.key) >= 0
            key = default.key if offered else self.combo.itemData(0)
            rejected = self.state.model if self.state.model_chosen else None
            self.state.choose_model(key, default.reason if key == default.key else "first offered", chosen=False)
            if rejected and key:
                self.models.message.emit(f"The model choice cannot be used: {self.models.why_not_offered(rejected)}."
                                         f" Using {display_name(key)} ({self.state.model_reason}) instead.", True)
        self.combo.setCurrentIndex(max(0, self.combo.findData(self.state.model)))
        self.combo.blockSignals(False)
        self.fill_comparison()
        self.show_status()

    def fill_comparison(self) -> None:
        names = self.models.comparable()
        self.compare.set_available(names, {k: display_name(k) for k in names}, self.state.comparison)

    def select(self, key: Optional[str]) -> None:
        self.combo.setCurrentIndex(max(0, self.combo.findData(key)))

    def set_comparison(self, keys: list[str]) -> None:
        self.models.set_comparison(list(keys))
        self.fill_comparison()

    def show_status(self) -> None:
        """The label: selected model, why, engine (tooltip: the engine's reason and file)."""
        if self.label is None:
            return
        text, tip = model_status(self.state.model, self.state.model_reason, self.state.loaded.primary, self.loading)
        self.label.setText(text)
        self.label.setToolTip(tip)

    def _on_loaded(self, loaded: LoadedModels) -> None:
        # a report still on the previous model (an earlier configuration) leaves the new one loading
        self.loading = loaded.primary is not None and loaded.primary.key != self.state.model
        self.show_status()

    def _picked(self) -> None:
        before = self.state.model
        self.models.select(self.combo.currentData())
        self.loading = self.loading or self.state.model != before
        self.fill_comparison()
        self.show_status()
